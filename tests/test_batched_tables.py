"""A model's LCQ tables built in batches once per forward (lcq_train.batched_tables), here forced onto CPU
tensors, against each quantizer's own host-path call: in float64, where both compute the gradients' sums
exactly enough to compare to 1e-10 (tests/test_quant_device.py compares the float32 sums)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcq_train import batched_tables, quant_device, quantizer
from lcq_train.plan import QuantPlan, quantize_model
from lcq_train.quant import lcq_quantize
from lcq_train.quant_device import segment_sums
from lcq_train.quantizer import Quantizer
from lcq_train.train import TrainConfig, build_quantized_model, train


def _step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return model(x).detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _own_cnn(shape, plan):
    """A plain torch CNN, quantized as a user's own model is (traced by quantize_model)."""
    layers = nn.Sequential(nn.Conv2d(shape[0], 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                           nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(8 * (shape[1] - 6) ** 2, 10))
    return quantize_model(layers, plan)


@pytest.mark.parametrize("name,shape,plan", [
    ("resnet20", (3, 32, 32), QuantPlan("lcq", 3, 3)),
    ("cnn", (1, 28, 28), QuantPlan("lcq", 3, 4, K=4, outer_bits=(6, 8), edge_bits=6)),
    ("own", (1, 10, 10), QuantPlan("lcq", 4, 2)),
])
def test_a_forward_builds_each_kind_of_tables_once_and_quantizes_as_each_call_alone(monkeypatch, name, shape, plan):
    torch.manual_seed(0)
    model = (_own_cnn(shape, plan) if name == "own" else build_quantized_model(name, shape, 10, plan)).double().train()
    for q in model.modules():
        if isinstance(q, Quantizer) and q.method == "lcq":
            q.theta.data.normal_(0.0, 0.7)
    x, y = torch.rand(4, *shape, dtype=torch.float64), torch.randint(0, 10, (4,))
    host = _step(copy.deepcopy(model), x, y)

    builds, applied, calls = [], [], []
    monkeypatch.setattr(batched_tables, "_on_device", lambda q: True)
    monkeypatch.setattr(batched_tables, "build_tables",
                        lambda *a: builds.append(a[3:5]) or quant_device.build_tables(*a))
    monkeypatch.setattr(quantizer, "apply_tables", lambda x, t: applied.append(t) or quant_device.apply_tables(x, t))
    lcq = [q for q in model.modules() if isinstance(q, Quantizer) and q.method == "lcq"]
    for q in lcq:
        q.register_forward_pre_hook(lambda module, args: calls.append(module))
    batched = _step(model, x, y)
    kinds = {(q.spec.bits, q.signed) for q in lcq}
    assert kinds and len(builds) == 2 * len(kinds)             # one build per kind in each of the two forwards
    assert len(applied) == len(calls) == 2 * len(lcq)          # every call with its row of the batch
    assert all(q.tables is None for q in model.modules() if isinstance(q, Quantizer))   # dropped after the forward
    torch.testing.assert_close(batched[0], host[0], atol=0, rtol=0)
    for n, g in host[1].items():
        quantizer_param = n.endswith(("alpha", "theta"))
        tol = 1e-10 if quantizer_param else 0.0
        torch.testing.assert_close(batched[1][n], g, rtol=tol, atol=tol * g.abs().max().item(), msg=n)


def test_stale_tables_are_not_used(monkeypatch):
    """A quantizer called on its own after its parameters changed builds its tables anew."""
    model = build_quantized_model("cnn", (1, 28, 28), 10, QuantPlan("lcq", 3, 3))
    monkeypatch.setattr(batched_tables, "_on_device", lambda q: True)
    q = next(m for m in model.modules() if isinstance(m, Quantizer) and m.method == "lcq" and not m.signed)
    applied = []
    monkeypatch.setattr(quantizer, "apply_tables", lambda x, t: applied.append(t) or quant_device.apply_tables(x, t))
    batched_tables._build(model, ())
    x = torch.rand(100) * 4
    fresh = q(x)
    assert len(applied) == 1
    with torch.no_grad():
        q.theta.add_(torch.linspace(-1, 1, q.theta.numel()))
    assert not q.tables.fits(x, q.alpha, q.theta)
    changed = q(x)
    assert len(applied) == 1                                    # the stale tables were not used
    torch.testing.assert_close(changed, lcq_quantize(x, q.alpha, q.theta, 3, 8, False), atol=0, rtol=0)
    assert not torch.equal(fresh, changed)
    q.theta = torch.nn.Parameter(q.theta.detach().clone())     # replaced: the tables were built from another
    batched_tables._build(model, ())
    q.theta = torch.nn.Parameter(q.theta.detach().clone())
    q(x)
    assert len(applied) == 1


def test_a_forward_that_raises_leaves_no_tables(monkeypatch):
    """(calibrate.reestimate_bn ends forwards early by raising from a hook.)"""
    model = build_quantized_model("cnn", (1, 28, 28), 10, QuantPlan("lcq", 3, 3))
    monkeypatch.setattr(batched_tables, "_on_device", lambda q: True)
    lcq = [m for m in model.modules() if isinstance(m, Quantizer) and m.method == "lcq"]
    seen = []

    def stop(module, args):
        seen.append(module.tables is not None)
        raise RuntimeError("stop")

    lcq[-1].register_forward_pre_hook(stop)
    with pytest.raises(RuntimeError, match="stop"):
        model(torch.rand(2, 1, 28, 28))
    assert seen == [True] and all(q.tables is None for q in lcq)
    copy.deepcopy(model)                                         # nothing of that forward's graph is held


def test_frozen_quantizers_are_batched_apart_and_do_no_gradient_work(monkeypatch):
    model = build_quantized_model("cnn", (1, 28, 28), 10, QuantPlan("lcq", 3, 3))
    lcq = [m for m in model.modules() if isinstance(m, Quantizer) and m.method == "lcq"]
    frozen = [q for q in lcq if not q.signed][:1]               # one of a kind whose others learn
    for q in frozen:
        q.alpha.requires_grad_(False)
        q.theta.requires_grad_(False)
    monkeypatch.setattr(batched_tables, "_on_device", lambda q: True)
    sums = []
    monkeypatch.setattr(quant_device, "segment_sums", lambda *a: sums.append(a[0].numel()) or segment_sums(*a))
    F.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.randint(0, 10, (4,))).backward()
    assert frozen and len(sums) == len(lcq) - len(frozen)       # the per-segment sums of the learning ones only
    assert all(q.theta.grad is None for q in frozen) and all(q.theta.grad is not None for q in lcq if q.signed)


def test_training_on_the_batched_path_follows_the_host_path(monkeypatch, tmp_path):
    """The trainer end to end (steps, BN re-estimation, evaluation): two epochs of the digits CNN at LCQ
    W2/A2 give the same losses and accuracies with the batched tables as on the host path, up to float32
    summation order."""
    def run(out):
        return train(TrainConfig(model="cnn", dataset="digits", plan=QuantPlan("lcq", 2, 2), epochs=2, batch_size=64,
                                 device="cpu", out=str(out), progress=False))

    host = run(tmp_path / "host")
    applied = []
    monkeypatch.setattr(batched_tables, "_on_device", lambda q: True)
    monkeypatch.setattr(quantizer, "apply_tables", lambda x, t: applied.append(t) or quant_device.apply_tables(x, t))
    batched = run(tmp_path / "batched")
    assert applied
    for h, b in zip(host["epochs"], batched["epochs"], strict=True):
        assert b["test_top1"] == h["test_top1"]
        assert b["train_loss"] == pytest.approx(h["train_loss"], rel=1e-5)
    assert batched["test_top1"] == host["test_top1"]
