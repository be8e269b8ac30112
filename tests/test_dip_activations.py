"""SiLU, GELU, Mish and hardswish, which dip below zero before they rise (:data:`compiler.curves.DIPS`): the plan
quantizes their output unsigned (the dip clipped), and the compiler takes that quantizer's thresholds back through
their rising part, exact code for code; a threshold inside the dip (a BN after one, a signed quantizer) is refused
with the fix."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.curves import DIPS, Curve
from compiler.lower import compile_model
from helpers import images, randomize
from lcq_train.layers import QAct
from lcq_train.plan import quantize_model
from lcq_train.quantizer import QuantSpec

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


@pytest.mark.parametrize("kind", list(DIPS))
def test_each_threshold_goes_back_to_the_least_input_that_reaches_it(kind):
    f, low = DIPS[kind]
    t = np.array([[1e-300, 1e-9, 0.01, 0.2784, 0.5, 1.0, 2.999, 3.0, 7.5, 1e4]])
    v = Curve("dip", kind, (kind,)).inverse(t)[0]
    reached = f(torch.from_numpy(v)).numpy()
    below = f(torch.from_numpy(np.nextafter(v, -np.inf))).numpy()
    assert np.all(v > 0) and np.all(reached >= t[0]) and np.all(below < t[0])
    assert f(torch.linspace(-6, 0, 60001, dtype=torch.float64)).min() >= low          # the least value it takes
    assert Curve("dip", kind, (kind,)).inverse(np.array([[low, -1.0, -np.inf]])).tolist() == [[-np.inf] * 3]
    with pytest.raises(ValueError, match=rf"threshold -0.01 inside its dip \(it falls to {low:.4f}"):
        Curve("dip", kind, (kind,)).inverse(np.array([[-0.01, 0.5]]))


class _Block(nn.Module):
    """conv -> BN -> the activation -> (max pooling) twice, then a linear layer."""

    def __init__(self, first, second):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), first
        self.conv2, self.bn2, self.second = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), second
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.second(self.bn2(self.conv2(x))), 2)
        return self.fc(torch.flatten(x, 1))


FORMS = {"SiLU": (nn.SiLU(), F.silu), "GELU": (nn.GELU(), F.gelu),
         "GELU-tanh": (nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
         "Mish": (nn.Mish(), F.mish), "Hardswish": (nn.Hardswish(), F.hardswish)}


@pytest.mark.parametrize("name", list(FORMS))
def test_a_network_of_each_is_exact_code_for_code_with_its_dip_in_use(name):
    module, function = FORMS[name]
    torch.manual_seed(0)
    net = randomize(quantize_model(_Block(module, function), method="lcq", wbits=3, abits=3), seed=1)
    assert not net.act_conv2.signed and not net.act_fc.signed             # the dip clipped
    seen = {}
    hooks = [getattr(net, q).register_forward_hook(lambda m, inp, out, q=q: seen.__setitem__(q, (inp[0], out)))
             for q in ("act_conv2", "act_fc")]
    x = images(64, (1, 8, 8), seed=2)
    result = compare(compile_model(net, (1, 8, 8)), net, x, np.zeros(64, dtype=np.int64))
    for hook in hooks:
        hook.remove()
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    for q, (inp, out) in seen.items():          # inputs in the dip (code 0) and above it (codes above 0)
        assert (inp < 0).any() and (out > 0).any(), q


def test_a_bn_after_one_is_refused_naming_the_fix():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 10))
    net = randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(Unsupported, match=r"follows SiLU, which dips below zero before it rises: .* put the BN "
                                          r"before the activation \(conv -> BN -> SiLU\)"):
        compile_model(net, (1, 8, 8))


@pytest.mark.parametrize("alpha, exact", [(8.0, True), (0.5, False)])
def test_a_signed_quantizer_after_one_compiles_while_its_negative_codes_stay_out_of_the_dip(alpha, exact):
    """A signed quantizer (not the plan's) after SiLU: where its first negative threshold lies below SiLU's least
    value (-0.278) no input gets a negative code, and it compiles exactly; where that threshold is inside the dip
    it is refused, naming it."""
    torch.manual_seed(0)
    net = randomize(quantize_model(_Block(nn.SiLU(), F.silu), method="lcq", wbits=3, abits=3), seed=1)
    net.act_conv2 = QAct(QuantSpec("lcq", 3, 8, alpha=alpha), signed=True)
    if exact:
        result = compare(compile_model(net, (1, 8, 8)), net, images(32, (1, 8, 8), seed=2), np.zeros(32, np.int64))
        assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    else:
        with pytest.raises(ValueError, match=r"SiLU: the quantizer after it has a threshold -0.08\d* inside its dip"):
            compile_model(net, (1, 8, 8))


def test_an_efficientnet_style_network_without_squeeze_excitation_is_exact():
    """tests/data/compile_models.py's SwishNet: SiLU stem, an inverted residual block (hardswish, GELU), Mish and
    GELU blocks with max pooling; quantized by the plan, every code equal."""
    torch.manual_seed(0)
    net = randomize(quantize_model(cm.swish_net(10, 1), method="lcq", wbits=3, abits=3), seed=1)
    result = compare(compile_model(net, (1, 8, 8)), net, images(64, (1, 8, 8), seed=2), np.zeros(64, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    assert len(result.codes) == 8


class _PreActBlock(nn.Module):
    """A pre-activation residual block with SiLU: BN, SiLU, conv twice, added to the input (or its 1x1 conv)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.silu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(F.silu(self.bn2(self.conv1(out)))) + shortcut


class _PreActSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(_PreActBlock(8, 8, 1), _PreActBlock(8, 16, 2))
        self.bn, self.fc = nn.BatchNorm2d(16), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.silu(self.bn(self.blocks(self.conv(x)))), 1))


def test_a_pre_activation_resnet_with_silu_is_exact():
    """The residual stream carries the sums (no activation on it), each branch BN -> SiLU -> conv: exact."""
    torch.manual_seed(0)
    net = randomize(quantize_model(_PreActSiLU(), method="lcq", wbits=3, abits=3), seed=1)
    result = compare(compile_model(net, (1, 8, 8)), net, images(64, (1, 8, 8), seed=2), np.zeros(64, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    assert len(result.codes) == 6


def test_a_checkpoint_whose_quantizer_was_signed_there_is_refused(tmp_path):
    """A run an earlier lcq trained (with --no-compile-check) quantized SiLU's output signed: 7 codes of 3 bits
    where this lcq builds 8. Loading its checkpoint, to compile it or to resume the run, says so instead of
    quietly quantizing another network."""
    from lcq_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from lcq_train.factory import model_from_checkpoint
    from lcq_train.plan import QuantPlan
    from lcq_train.train import TrainConfig, train

    ref = f"{Path(__file__).parent / 'data' / 'compile_models.py'}:swish_net"
    train(TrainConfig(model=ref, dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=1, out=str(tmp_path),
                      progress=False))
    path = tmp_path / "checkpoint.pt"
    model_from_checkpoint(path, ref)                                     # as this lcq trained it
    state = load_checkpoint(path)
    assert len(state["metrics"]["start_code_shares"]["act_depthwise_0"]) == 8
    state["metrics"]["start_code_shares"]["act_depthwise_0"] = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    save_checkpoint(state, tmp_path / "earlier.pt")
    with pytest.raises(ValueError, match=r"earlier\.pt: its activation quantizer 'act_depthwise_0' had 7 codes when "
                                         r"training started, and this lcq builds it unsigned with 8: .* retrain"):
        model_from_checkpoint(tmp_path / "earlier.pt", ref)
    save_checkpoint(state, path)                     # the run itself, as the earlier lcq would have left it
    with pytest.raises(CheckpointError, match=rf"{path}: its activation quantizer 'act_depthwise_0' had 7 codes"):
        train(TrainConfig(model=ref, dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=2, out=str(tmp_path),
                          progress=False, resume=True))


class _Swish(nn.Module):
    """SiLU written out, as EfficientNet-PyTorch's and YOLOv5's ``Swish`` modules write it."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling, self.conv, self.sigmoid = spelling, nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = {"x * torch.sigmoid(x)": lambda: x * torch.sigmoid(x), "x.sigmoid() * x": lambda: x.sigmoid() * x,
             "x * self.sigmoid(x)": lambda: x * self.sigmoid(x), "F.silu(x)": lambda: F.silu(x)}[self.spelling]()
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("spelling", ["x * torch.sigmoid(x)", "x.sigmoid() * x", "x * self.sigmoid(x)"])
def test_silu_written_out_is_refused_naming_f_silu_which_compiles(spelling):
    net = randomize(quantize_model(_Swish(spelling), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(Unsupported, match=r"is not supported: x \* sigmoid\(x\) is SiLU: write F\.silu\(x\) or "
                                          r"nn\.SiLU\(\), which compile"):
        compile_model(net, (1, 8, 8))
    fixed = randomize(quantize_model(_Swish("F.silu(x)"), method="lcq", wbits=3, abits=3), seed=0)
    result = compare(compile_model(fixed, (1, 8, 8)), fixed, images(16, (1, 8, 8), seed=1), np.zeros(16, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _Head(nn.Module):
    """EfficientNet's and MobileNetV3's head: a 1 x 1 conv, BN and an activation, globally averaged (spelled as
    ``pool`` says), then the classifier (a linear layer, or a 1 x 1 conv flattened)."""

    def __init__(self, act, pool, classifier="linear"):
        super().__init__()
        self.act, self.pool_spelling, self.classifier = act, pool, classifier
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head, self.bn2 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "AdaptiveAvgPool2d(1)" else nn.AvgPool2d(8)
        self.fc = nn.Linear(16, 10) if classifier == "linear" else nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = F.silu(self.bn(self.conv(x)))
        x = self.act(self.bn2(self.head(x)))
        x = {"x.mean((2, 3))": lambda: x.mean((2, 3)), "F.adaptive_avg_pool2d(x, 1)": lambda: F.adaptive_avg_pool2d(
            x, 1)}.get(self.pool_spelling, lambda: self.pool(x))()
        return self.fc(torch.flatten(x, 1)) if self.classifier == "linear" else torch.flatten(self.fc(x), 1)


@pytest.mark.parametrize("act, pool, classifier", [
    (nn.SiLU(), "AdaptiveAvgPool2d(1)", "linear"), (nn.Hardswish(), "x.mean((2, 3))", "linear"),
    (nn.GELU(), "F.adaptive_avg_pool2d(x, 1)", "linear"), (nn.SiLU(), "AvgPool2d(8)", "linear"),
    (nn.Tanh(), "AdaptiveAvgPool2d(1)", "linear"), (nn.SiLU(), "AdaptiveAvgPool2d(1)", "1x1 conv")])
def test_the_global_average_of_an_activation_is_quantized_before_it_and_exact(act, pool, classifier):
    """The classifier's quantizer stands before the pooling (the plan's rule: no pooling unit applies a curve
    position by position), and the classifier runs as the 8 x 8 conv over the codes, its weights at every tap and
    its scale 1/64: every code and logit class equal to PyTorch's (a signed quantizer after tanh too)."""
    torch.manual_seed(0)
    net = randomize(quantize_model(_Head(act, pool, classifier), method="lcq", wbits=3, abits=3), seed=1)
    pooling = next(n for n in net.graph.nodes if n.op == "call_module" and n.target == "act_fc").users
    assert len(pooling) == 1 and next(iter(pooling)).name not in ("fc", "flatten")          # before the pooling
    compiled = compile_model(net, (1, 8, 8))
    fc = next(n for n in compiled.convs if n.name == "fc")
    assert (fc.kernel, fc.in_shape[1:], fc.out_shape) == (8, (8, 8), (10, 1, 1))
    result = compare(compiled, net, images(64, (1, 8, 8), seed=2), np.zeros(64, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


def test_a_sigmoid_averaged_into_the_classifier_is_exact():
    """tests/data/compile_models.py's Gated (conv, sigmoid, F.adaptive_avg_pool2d(x, 1), flatten, linear), refused
    before the plan quantized the sigmoid's output ahead of the pooling."""
    torch.manual_seed(0)
    net = randomize(quantize_model(cm.Gated(10, 1), method="lcq", wbits=3, abits=3), seed=1)
    result = compare(compile_model(net, (1, 8, 8)), net, images(32, (1, 8, 8), seed=2), np.zeros(32, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _SharedSiLU(nn.Module):
    """SiLU's output read by a conv directly and by the classifier through a global average pooling."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.fc, self.fc2 = nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x):
        y = F.silu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3))) + self.fc2(torch.relu(self.conv2(y)).mean((2, 3)))


def test_one_quantizer_serves_a_direct_and_an_averaging_reader():
    """The conv reads the SiLU's codes, the classifier their average: one quantizer, before the pooling; the other
    classifier's quantizer (after a ReLU) stays after its pooling."""
    net = quantize_model(_SharedSiLU(), method="lcq", wbits=3, abits=3)
    pairs = dict(net.quant_layers())
    assert pairs["conv2"] == pairs["fc"] and pairs["fc2"] != pairs["fc"]
    node = {n.name: n for n in net.graph.nodes}
    assert node[pairs["fc"]].args[0].target is F.silu and node[pairs["fc2"]].args[0].target == "mean"


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.fc2 = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x):
        pooled = F.silu(self.conv(x)).mean((2, 3))
        return self.fc(pooled) + self.fc2(pooled)


def test_two_layers_reading_one_average_share_its_quantizer():
    net = quantize_model(_TwoHeads(), method="lcq", wbits=3, abits=3, edge_bits=3)    # (sharing: the same bits)
    pairs = dict(net.quant_layers())
    assert pairs["fc"] == pairs["fc2"]
    assert [n.name for n in net.graph.nodes if n.op == "call_module" and n.target.startswith("act_")] == \
        ["act_conv", pairs["fc"]]


class _SqueezeExcitation(nn.Module):
    """A conv block with a squeeze-excitation gate, as SENet (kuangliu: F.adaptive_avg_pool2d, 1x1 convs,
    .sigmoid()) or torchvision's SqueezeExcitation (AdaptiveAvgPool2d, ReLU, Hardsigmoid, ``scale * input``) write
    it; ``"product"``: a product of two branches that is no gate."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.other, self.gate = nn.Conv2d(1, 8, 3, padding=1), nn.Hardsigmoid()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        image = x
        x = F.relu(self.bn(self.conv(x)))
        if self.spelling == "kuangliu":
            x = x * self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, (1, 1))))).sigmoid()
        elif self.spelling == "torchvision":
            scale = self.gate(self.fc2(F.relu(self.fc1(self.pool(x)))))
            x = scale * x
        else:
            x = x * torch.sigmoid(self.other(image))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.mark.parametrize("spelling", ["kuangliu", "torchvision"])
def test_a_squeeze_excitation_gate_is_refused_naming_the_fix(spelling):
    net = randomize(quantize_model(_SqueezeExcitation(spelling), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(Unsupported, match=r"is not supported: x times a gate computed from x's global average is a "
                                          r"squeeze-excitation block, a product of two tensors, .*leave the SE blocks "
                                          r"out \(as EfficientNet-lite"):
        compile_model(net, (1, 8, 8))


def test_a_product_of_two_branches_keeps_the_products_hint():
    net = randomize(quantize_model(_SqueezeExcitation("product"), method="lcq", wbits=3, abits=3), seed=0)
    with pytest.raises(Unsupported, match=r"is not supported: the accelerator multiplies a tensor only by a constant "
                                          r".* it has no product or quotient of two tensors"):
        compile_model(net, (1, 8, 8))


_SPELLINGS = {
    **{f"nn.{type(m).__name__}{'' if not args else args}": (lambda m=m: m) for m, args in [
        (nn.ReLU(), ""), (nn.ReLU6(), ""), (nn.Hardtanh(), ""), (nn.Hardtanh(0.0, 6.0), "(0, 6)"),
        (nn.Hardtanh(-2.0, 2.0), "(-2, 2)"), (nn.Hardtanh(0.5, 2.0), "(0.5, 2)"), (nn.LeakyReLU(0.1), ""),
        (nn.PReLU(), ""), (nn.Sigmoid(), ""), (nn.Tanh(), ""), (nn.Softsign(), ""), (nn.Hardsigmoid(), ""),
        (nn.ELU(), ""), (nn.CELU(), ""), (nn.SELU(), ""), (nn.Softplus(), ""), (nn.SiLU(), ""), (nn.Mish(), ""),
        (nn.Hardswish(), ""), (nn.GELU(), ""), (nn.GELU("tanh"), "(tanh)")]},
    "F.relu": lambda: F.relu, "torch.relu": lambda: torch.relu, "F.relu6": lambda: F.relu6,
    "F.hardtanh": lambda: F.hardtanh, "F.hardtanh(x, 0, 6)": lambda: lambda x: F.hardtanh(x, 0.0, 6.0),
    "F.hardtanh(x, -3, 3)": lambda: lambda x: F.hardtanh(x, -3.0, 3.0),
    "x.clamp(0, 6)": lambda: lambda x: x.clamp(0, 6), "x.clamp(min=0)": lambda: lambda x: x.clamp(min=0),
    "x.clamp(-1, 1)": lambda: lambda x: x.clamp(-1, 1),
    "torch.clamp(x, max=1)": lambda: lambda x: torch.clamp(x, max=1),
    "torch.sigmoid": lambda: torch.sigmoid, "x.sigmoid()": lambda: lambda x: x.sigmoid(),
    "torch.tanh": lambda: torch.tanh,
    "x.tanh()": lambda: lambda x: x.tanh(), "F.elu": lambda: F.elu, "F.celu": lambda: F.celu, "F.selu": lambda: F.selu,
    "F.softplus": lambda: F.softplus, "F.softsign": lambda: F.softsign, "F.leaky_relu": lambda: F.leaky_relu,
    "F.hardsigmoid": lambda: F.hardsigmoid, "F.silu": lambda: F.silu, "F.gelu": lambda: F.gelu,
    "F.mish": lambda: F.mish, "F.hardswish": lambda: F.hardswish,
}


class _Activated(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv, self.activation = nn.Conv2d(1, 4, 3, padding=1), activation

    def forward(self, x):
        return self.activation(self.conv(x))


@pytest.mark.parametrize("spelling", _SPELLINGS)
def test_the_plans_curves_are_the_compilers(spelling):
    """The plan puts a quantizer before the average pooling of exactly the activations the compiler lowers as curves
    (lcq_train.graph.curve_activation against compiler.capture.operation): one it missed (hardtanh(-1, 1), a clamp
    from -1) had its quantizer after the pooling, which the compiler then refused."""
    from compiler.capture import operation
    from lcq_train.graph import curve_activation, trace

    net = _Activated(_SPELLINGS[spelling]())
    graph, modules = trace(net), dict(net.named_modules())
    (node,) = [n for n in graph.nodes if n.op != "placeholder" and n.op != "output" and n.target != "conv"]
    assert curve_activation(node, modules) == (operation(node, modules, "net").kind == "curve"), spelling
    assert operation(node, modules, "net").kind in ("curve", "relu", "clip")


@pytest.mark.parametrize("activation", [nn.Hardtanh(), nn.Hardtanh(0.5, 2.0)])
def test_a_hardtanh_from_below_zero_before_global_pooling_compiles(activation):
    net = randomize(quantize_model(_HardtanhHead(activation), method="lcq", wbits=3, abits=3), seed=0)
    result = compare(compile_model(net, (1, 8, 8)), net, images(8, (1, 8, 8), seed=1), np.zeros(8, np.int64))
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())


class _HardtanhHead(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv, self.bn, self.activation, self.fc = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), \
            activation, nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.activation(self.bn(self.conv(x))), 1), 1))
