"""A training step never waits for the accelerator. The trainer's step (model, quantizers, loss, SGD,
scheduler) and its batches run on the "meta" device, whose tensors hold no values, so any read back to
the host (``.item()``, ``.cpu()``, ``.tolist()``, numpy, a data-dependent shape) raises here; and after
the first step (which puts each quantizer shape's constant tables on the device, once) no step copies
anything from the host either. On a GPU either would stall every step until the queued work is done (36
quantizers in ResNet-20). Where a CUDA GPU is present the same steps run on it under torch's sync debug
mode set to raise."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lcq_train.loader import batches
from lcq_train.plan import QuantPlan, quantizer_parameters
from lcq_train.train import _lr_lambda, build_quantized_model, train_step

PLANS = {
    "fp": QuantPlan("fp"),
    "uniform-w2a2": QuantPlan("uniform", wbits=2, abits=2),
    "lcq-w3a3": QuantPlan("lcq", wbits=3, abits=3),
    "lcq-w4a4-standardize": QuantPlan("lcq", wbits=4, abits=4, weight_norm="standardize"),
    "lcq-w2a2-K4": QuantPlan("lcq", wbits=2, abits=2, K=4),
}
DEVICES = ["meta", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")])]


def _devices(tree) -> set[str]:
    return {t.device.type for t in tree_leaves(tree) if isinstance(t, torch.Tensor)}


class HostToDevice(TorchFunctionMode):
    """Records each tensor made on a device from host data (``torch.tensor(..., device=)`` and the like)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("tensor", "as_tensor", "new_tensor") and _devices(out) - {"cpu"}:
            self.made.append(func.__name__)
        return out


class Crossings(TorchDispatchMode):
    """Records each operation in which a CPU tensor meets a device tensor (a copy either way)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = _devices((args, kwargs)) | _devices(out)
        if "cpu" in devices and len(devices) > 1:
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,shape", [("resnet20", (3, 32, 32)), ("cnn", (1, 28, 28))])
@pytest.mark.parametrize("label", PLANS)
def test_a_training_step_moves_nothing_between_host_and_device(model, shape, label, device):
    net = build_quantized_model(model, shape, 10, PLANS[label]).to(device).train()
    q_ids = {id(p) for p in quantizer_parameters(net)}
    groups = [{"params": [p for p in net.parameters() if id(p) not in q_ids and p.requires_grad], "lr": 0.1}]
    if q_ids:
        groups.append({"params": quantizer_parameters(net), "lr": 0.01, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(10, 2))
    if device == "meta":
        x = torch.empty(24, *shape, dtype=torch.uint8, device=device)
        y = torch.empty(24, dtype=torch.long, device=device)
    else:
        x = torch.randint(0, 256, (24, *shape), dtype=torch.uint8, device=device)
        y = torch.randint(0, 10, (24,), device=device)
    # the batches' order and augmentation draws go to the device once per epoch, before the first step
    first, *rest = batches(x, y, 8, shuffle=True, seed=1, augment=shape[1] == 32)
    train_step(net, optimizer, scheduler, *first)
    made, crossings = HostToDevice(), Crossings()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with made, crossings:
            for xb, yb in rest:
                loss, correct = train_step(net, optimizer, scheduler, xb, yb)
                assert loss.device.type == correct.device.type == device and loss.shape == correct.shape == ()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert len(rest) == 2
    assert not made.made and not crossings.ops, (made.made, crossings.ops)
    # every learnable parameter, the quantizers' included, has its gradient, on the device
    assert all(p.grad is not None and p.grad.device.type == device for p in net.parameters() if p.requires_grad)
