"""Stochastic depth (timm's DropPath, torchvision's StochasticDepth: a parameter-free module whose forward reads
``self.training``): traced as one call, so that the quantized model drops paths in training and not in eval mode
as eager PyTorch does, and compiled as the identity it is at inference; one that changes its input in eval mode is
refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.lower import compile_model
from lcq_train.plan import quantize_model

from helpers import images, randomize


class DropPath(nn.Module):
    """timm's DropPath as it is written (drop_path inlined)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        random_tensor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor


class HalvedInEval(nn.Module):
    """Reads self.training, but halves its input in eval mode: no identity."""

    def forward(self, x):
        return x if self.training else x / 2


class Net(nn.Module):
    def __init__(self, path: nn.Module):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.path = path
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.path(self.b2(self.c2(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_drop_path_drops_in_training_only_and_compiles_as_the_identity():
    torch.manual_seed(0)
    net = randomize(quantize_model(Net(DropPath(0.5)), method="lcq", wbits=3, abits=3), seed=0)
    assert any(n.op == "call_module" and n.target == "path" for n in net.graph.nodes)     # one call, not its branch
    x = torch.from_numpy(images(64, (1, 8, 8), seed=1)).float() / 255
    net.train()
    with torch.no_grad():
        first, second = net(x), net(x)
    assert not torch.equal(first, second)           # paths dropped at random
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    result = compare(compile_model(net, (1, 8, 8)), net, images(16, (1, 8, 8), seed=1), np.zeros(16, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


def test_a_module_that_changes_its_input_in_eval_mode_is_refused():
    net = randomize(quantize_model(Net(HalvedInEval()), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(Unsupported, match=r"layer 'path' \(HalvedInEval\) .*reads self\.training and does not return "
                                          r"its input in eval mode"):
        compile_model(net, (1, 8, 8))


def drop_connect(x, p, training):
    """EfficientNet-PyTorch's drop connect, a function its blocks call where ``self.training``."""
    if not training:
        return x
    keep = 1 - p
    mask = keep + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device)
    return x / keep * torch.floor(mask)


class InlineDropConnect(Net):
    """A block with parameters whose forward drops connections in training itself (EfficientNet-PyTorch's way)."""

    def __init__(self):
        super().__init__(nn.Identity())

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(x))
        if self.training:
            y = drop_connect(y, 0.2, self.training)
        x = F.relu(x + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_forward_that_branches_on_the_mode_is_refused_naming_where(mode):
    """One graph serves both modes: traced in training, the drop connect ran in eval mode too; traced in eval, it
    was never trained with. Either way the first operation of the training path is named, with the fix."""
    net = InlineDropConnect().train(mode == "train")
    with pytest.raises(ValueError, match=r"cannot quantize InlineDropConnect: its forward takes another path in "
                                         r"training than in eval mode \(first at .*test_stochastic_depth\.py:\d+ "
                                         r"\(mask = keep \+ torch\.rand\(.*\)\)\), and the quantized model is one "
                                         r"graph for both: .*in a module of its own without parameters, as timm's "
                                         r"DropPath"):
        quantize_model(net, method="lcq", wbits=3, abits=3)
