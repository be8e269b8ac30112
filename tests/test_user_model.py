"""Bring your own network: quantize_model on plain PyTorch models, `lcq train --model FILE.py:FACTORY`."""

import copy
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from compiler.agreement import compare
from compiler.capture import capture
from compiler.format import load
from compiler.lower import compile_model
from lcq.cli import main
from lcq_train import QuantPlan, apply_plan, model_from_checkpoint, quantize_model, quantizer_parameters
from lcq_train.checkpoint import load_checkpoint
from lcq_train.data import load_dataset
from lcq_train.factory import build_user_model
from lcq_train.layers import QAct, QConv2d, QLinear
from lcq_train.models import build_model
from lcq_train.plan import INPUT_BITS, layer_bits
from lcq_train.quantizer import Quantizer, QuantSpec
import lcq_train.train as train_mod
from lcq_train.train import TrainConfig, build_quantized_model, evaluate, train

from helpers import images, randomize

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import user_models as um  # noqa: E402

PLAN = QuantPlan("lcq", 3, 3, layer_bits={"conv2": (4, 4)})


def _digits_slice(name, data_dir=None):
    """The first 256 training and 128 test images of digits: tiny runs."""
    d = load_dataset(name, data_dir)
    return dataclasses.replace(d, train_x=d.train_x[:256], train_y=d.train_y[:256], test_x=d.test_x[:128],
                               test_y=d.test_y[:128])


@pytest.fixture(scope="module", autouse=True)
def tiny_data():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "load_dataset", _digits_slice)
        yield


def _reference_apply_plan(model, plan):
    """apply_plan as it was before quantize_model (frozen copy): the built-in models must not change."""
    if plan.method == "fp":
        return model
    bits = layer_bits(model, plan)
    pairs = model.quant_layers()
    modules = dict(model.named_modules())
    act_bits = {}
    for i, (name, act_name) in enumerate(pairs):
        wbits, abits = bits[name]
        edge = i in (0, len(pairs) - 1)
        method = "uniform" if edge else plan.method
        modules[name].wq = Quantizer(QuantSpec(method, wbits, plan.outer_bits, plan.K, plan.alpha_w),
                                     signed=True, weight_norm=True)
        if act_name in act_bits:
            continue
        act_bits[act_name] = abits
        if i == 0:
            spec = QuantSpec("uniform", INPUT_BITS, plan.outer_bits, plan.K, alpha=1.0, learn_alpha=False)
        else:
            spec = QuantSpec(method, abits, plan.outer_bits, plan.K, plan.alpha_a)
        parent_name, _, attr = act_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, QAct(spec))
    return model


def _quantizers(model):
    return [(n, type(m).__name__, m.spec, m.signed, m.method)
            for n, m in model.named_modules() if isinstance(m, Quantizer)]


@pytest.mark.parametrize("name,shape,plan", [
    ("cnn", (1, 8, 8), PLAN), ("cnn", (1, 8, 8), QuantPlan("uniform", 2, 4)), ("cnn", (1, 8, 8), QuantPlan("fp")),
    ("resnet20", (3, 32, 32), QuantPlan("lcq", 2, 3, layer_bits={"blocks.4.conv1": (4, 4)}))])
def test_builtin_models_unchanged_through_quantize_model(name, shape, plan, randomize):
    torch.manual_seed(0)
    old = _reference_apply_plan(build_model(name, shape, 10), plan)
    torch.manual_seed(0)
    fresh = build_model(name, shape, 10)
    new = quantize_model(fresh, plan)
    assert new is fresh and type(new) is type(old) and apply_plan(fresh, plan) is fresh
    assert _quantizers(new) == _quantizers(old)
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    randomize(old, 1)
    new.load_state_dict(old.state_dict())
    new.eval()
    x = torch.rand(3, *shape)
    torch.testing.assert_close(new(x), old(x), atol=0, rtol=0)


def _act_map(builtin, traced):
    """{built-in activation quantizer name: traced one}, matched through the layers they feed."""
    b, t = dict(builtin.quant_layers()), dict(traced.quant_layers())
    assert set(b) == set(t)
    return {b[layer]: t[layer] for layer in b}


@pytest.mark.parametrize("name,shape,plain", [
    ("cnn", (1, 8, 8), lambda: um.PlainCNN(10, 1)), ("resnet20", (3, 32, 32), lambda: um.PlainPreActResNet(20, 10, 3))])
def test_traced_plain_twin_equals_builtin_model(name, shape, plain, randomize):
    """The same network written with plain torch.nn and traced gets the built-in model's quantizers."""
    plan = QuantPlan("lcq", 3, 3, layer_bits={"conv2": (4, 4)} if name == "cnn" else {"blocks.4.conv2": (4, 4)})
    builtin = randomize(apply_plan(build_model(name, shape, 10), plan), 2)
    traced = quantize_model(plain(), plan)
    assert layer_bits(traced, plan) == layer_bits(builtin, plan)
    acts = _act_map(builtin, traced)
    assert len(set(acts.values())) == len(acts)            # shared where the built-in shares (shortcut + conv1)
    assert traced.image_input() == acts[builtin.quant_layers()[0][1]]
    for b_act, t_act in acts.items():
        bq, tq = builtin.get_submodule(b_act), traced.get_submodule(t_act)
        assert (bq.spec, bq.signed, bq.method) == (tq.spec, tq.signed, tq.method)
    state = {}
    for key, value in builtin.state_dict().items():
        act = next((a for a in acts if key.startswith(a + ".")), None)
        state[acts[act] + key[len(act):] if act else key] = value
    traced.load_state_dict(state)                          # strict: parameter for parameter the same
    traced.eval()
    x = torch.rand(3, *shape)
    torch.testing.assert_close(traced(x), builtin(x), atol=0, rtol=0)


def test_quantize_model_follows_the_papers_rules():
    torch.manual_seed(0)
    fp = um.vgg_res(10, 1)
    conv0 = fp.features[0]
    weight = conv0.weight
    model = quantize_model(fp, method="lcq", wbits=3, abits=3, layer_bits={"block2.conv1": (4, 4)})
    pairs = model.quant_layers()
    assert [layer for layer, _ in pairs] == ["features.0", "features.3", "block1.conv1", "block1.conv2",
                                             "block1.shortcut.0", "block2.conv1", "block2.conv2", "fc"]
    acts = dict(pairs)
    assert acts["block1.conv1"] == acts["block1.shortcut.0"]          # one code tensor for conv and shortcut
    assert model.image_input() == acts["features.0"]
    # Same layer objects (pretrained weights kept), now quantized; original names in the state dict.
    assert model.get_submodule("features.0") is conv0 and conv0.weight is weight and isinstance(conv0, QConv2d)
    assert isinstance(model.fc, QLinear) and set(fp.state_dict()) <= set(model.state_dict())
    bits = {layer: (model.get_submodule(layer).wq.spec.bits, model.get_submodule(act).spec.bits)
            for layer, act in pairs}
    assert bits["features.0"] == (8, 8) and bits["fc"] == (8, 8) and bits["block2.conv1"] == (4, 4)
    assert bits["block1.conv2"] == (3, 3)
    assert model.get_submodule("features.0").wq.method == "uniform" and model.fc.wq.method == "uniform"
    assert model.block1.conv2.wq.method == "lcq" and model.block1.conv2.wq.weight_norm
    image = model.get_submodule(model.image_input())
    assert image.spec.bits == INPUT_BITS and image.alpha.item() == 1.0 and not image.alpha.requires_grad
    assert not any(model.get_submodule(act).signed for _, act in pairs)   # all after ReLU (or the image)
    # Trainable in one's own loop.
    params = quantizer_parameters(model)
    assert params and all(p.requires_grad for p in params)
    loss = model(torch.rand(4, 1, 8, 8)).square().mean()
    loss.backward()
    assert weight.grad is not None and model.block1.conv2.wq.theta.grad is not None


def test_signed_inputs_get_signed_quantizers():
    model = quantize_model(um.Normalized(), method="uniform", wbits=4, abits=4)
    q = {act: model.get_submodule(act) for _, act in model.quant_layers()}
    assert model.image_input() is None                     # the first conv sees the normalized image
    assert q["act_conv"].signed and q["act_conv"].spec.bits == 8 and q["act_conv"].alpha.requires_grad
    assert not q["act_fc1"].signed and q["act_fc1"].spec.bits == 4      # relu, then mean
    assert q["act_fc2"].signed                                           # fc1's output, no ReLU
    model(torch.rand(2, 1, 8, 8)).sum().backward()


def test_cli_trains_a_model_with_signed_activation_quantizers(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", f"{DATA}/user_models.py:Normalized", "--method", "lcq", "--epochs", "1",
                 "--out", str(out), "--no-progress", "--no-compile-check"]) == 0    # (its normalization: no compile)
    shares = json.loads((out / "metrics.json").read_text())["start_code_shares"]
    assert len(shares["act_conv"]) == len(shares["act_fc2"]) == 255 and len(shares["act_fc1"]) == 8   # -127..127


class _ShiftedRelu(nn.Module):
    """relu(conv(x)) combined with a parameter or a negative constant: values below zero reach the fc."""

    def __init__(self, combine):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64, 10)
        self.shift = nn.Parameter(torch.full((1, 4, 1, 1), -1.0))
        self.combine = combine

    def forward(self, x):
        return self.fc(self.combine(self, torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("combine", [lambda m, x: x + m.shift, lambda m, x: x * m.shift, lambda m, x: x * -1.0,
                                     lambda m, x: torch.sub(x, 2 * x), lambda m, x: x.add(-0.5)])
def test_relu_combined_with_a_parameter_or_negative_constant_is_signed(combine):
    model = quantize_model(_ShiftedRelu(combine), method="uniform", wbits=4, abits=4)
    assert model.act_fc.signed
    x = torch.rand(2, 1, 8, 8)
    assert (model.act_fc(combine(model, torch.relu(model.conv(x)))) < 0).any()


class _TwoStems(nn.Module):
    """Two convolutions read the image (an inception-like stem): the second is an inner layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.fc(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1).flatten(1))


def test_layers_sharing_the_image_quantizer_need_no_equal_abits():
    model = quantize_model(_TwoStems(), method="lcq", wbits=3, abits=3)       # the image is 8 bits for both
    assert model.quant_layers() == [("a", "act_a"), ("b", "act_a"), ("fc", "act_fc")]
    assert model.act_a.spec.bits == INPUT_BITS and model.b.wq.spec.bits == 3
    # Without an image quantizer (a normalized image) the first layer's input is no 8-bit image.
    model = quantize_model(um.Normalized(), method="uniform", wbits=4, abits=4, edge_bits=4, outer_bits=4,
                           layer_bits={"fc2": (4, 4, 4, 4)})
    assert model.image_input() is None and model.act_conv.spec.bits == 4


def test_fp_plan_gives_the_quantizable_fp_network():
    torch.manual_seed(0)
    fp = um.vgg_res(10, 1).eval()
    x = torch.rand(2, 1, 8, 8)
    expected = fp(x)
    model = quantize_model(fp, method="fp")
    assert not quantizer_parameters(model) and isinstance(model.fc, QLinear)
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


class _ShapeBranch(nn.Module):
    """A forward that branches on the size of its feature map (``side`` None), or on the side it is built for."""

    def __init__(self, side=None):
        super().__init__()
        self.side = side
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if (x.shape[-1] if self.side is None else self.side) > 4:
            x = F.max_pool2d(x, 2)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_a_branch_on_a_shape_says_where_and_to_compute_the_size_from_the_input_size():
    shape = (r"its forward branches on a tensor's shape at .*test_user_model\.py:\d+ \(if \(x\.shape\[-1\] .*\), "
             r"which torch\.fx cannot trace: compute the size from the module's known input size \(in __init__\)")
    with pytest.raises(ValueError, match=rf"^cannot quantize _ShapeBranch: {shape}"):
        quantize_model(_ShapeBranch())
    with pytest.raises(ValueError, match=rf"^cannot compile a _ShapeBranch: {shape}"):
        capture(_ShapeBranch(), "_ShapeBranch")
    with pytest.raises(ValueError, match=r"cannot quantize Branchy: torch\.fx cannot trace its forward \(TraceError: "
                                         r".*\); its forward must not branch on tensor values"):
        quantize_model(um.Branchy())                    # a branch on values: no shape advice
    net = randomize(quantize_model(_ShapeBranch(side=8), method="lcq", wbits=3, abits=3), 1)
    compiled = compile_model(net, (1, 8, 8))
    assert [n.op for n in compiled.nodes] == ["input", "conv", "maxpool", "conv", "pool", "conv"]
    x = images(20, (1, 8, 8), seed=2)
    result = compare(compiled, net, x, np.zeros(len(x), dtype=np.int64))
    assert result.disagreements == 0 and not any(m for _, m in result.codes.values())


def test_what_cannot_be_quantized_is_a_clear_error():
    with pytest.raises(ValueError, match="no torch.nn.Conv2d or torch.nn.Linear"):
        quantize_model(um.NoLayers())
    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        quantize_model(um.Branchy())
    with pytest.raises(ValueError, match="calls linear directly"):
        quantize_model(um.Functional())
    with pytest.raises(ValueError, match="Conv1d, which the accelerator does not run"):
        quantize_model(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2)))
    with pytest.raises(ValueError, match="called more than once"):
        lin = nn.Linear(4, 4)
        quantize_model(nn.Sequential(lin, nn.ReLU(), lin))
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        quantize_model("resnet20")
    fp = um.vgg_res(10, 1)
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['conv9'\].*'features.0', 'features.3', 'block1.conv1'"):
        quantize_model(fp, layer_bits={"conv9": (4, 4)})
    with pytest.raises(ValueError, match="same activation bits"):
        quantize_model(fp, layer_bits={"block1.conv1": (3, 4)})
    assert type(fp.features[0]) is nn.Conv2d            # a refused model is left as it was


def test_factory_reference_errors(tmp_path):
    plan = QuantPlan("lcq", 3, 3)
    build = lambda ref: build_quantized_model(ref, (1, 8, 8), 10, plan, allow_factory=True)  # noqa: E731
    with pytest.raises(ValueError, match="a checkpoint alone never does"):
        build_quantized_model(f"{DATA}/user_models.py:vgg_res", (1, 8, 8), 10, plan)
    with pytest.raises(ValueError, match="there is no file"):
        build(f"{tmp_path}/gone.py:vgg_res")
    with pytest.raises(ValueError, match="there is no module 'no_such_module_xyz'"):
        build("no_such_module_xyz.nets:vgg")
    with pytest.raises(ValueError, match=r"has no 'nope' \(its callables: .*'PlainCNN'"):
        build(f"{DATA}/user_models.py:nope")
    with pytest.raises(ValueError, match="returned a str, not a torch.nn.Module"):
        build(f"{DATA}/user_models.py:not_a_model")
    with pytest.raises(ValueError, match="cannot be called as wrong_signature"):
        build(f"{DATA}/user_models.py:wrong_signature")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="importing it raised RuntimeError: boom"):
        build(f"{broken}:f")
    with pytest.raises(ValueError, match="factory reference MODULE:FACTORY"):
        TrainConfig(model="resnet21")
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet21", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("factory, shape, classes, says", [
    ("no_parameters", (1, 8, 8), 10, None),
    ("classes_only", (1, 8, 8), 7, None),
    ("keywords", (2, 8, 8), 3, None),
    ("no_parameters", (1, 8, 8), 5, r"gives logits of shape \(2, 10\) for 2 images; the dataset has 5 classes"),
    ("classes_only", (3, 8, 8), 10, r"fails on 2 images of shape \(3, 8, 8\) \(the dataset's\), in training mode: "
                                    r"RuntimeError: .*; its layers must fit in_channels=3"),
])
def test_a_factory_gets_the_arguments_it_names(factory, shape, classes, says):
    """num_classes=, in_channels= and input_shape= as the factory's parameters name them (all with **kwargs, none
    for kuangliu's ResNet18()); what it builds is checked against the dataset either way."""
    build = lambda: build_quantized_model(f"{DATA}/user_models.py:{factory}", shape, classes,  # noqa: E731
                                          QuantPlan("lcq", 3, 3), allow_factory=True)
    if says is not None:
        with pytest.raises(ValueError, match=says):
            build()
        return
    model = build()
    with torch.no_grad():
        assert model.eval()(torch.rand(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("factory,says", [
    ("with_features", r"returns a tuple in training mode and in eval mode, not a tensor of logits: its forward must "
                      r"return the logits alone, of shape \(N, 10\)"),
    ("aux_in_training", r"returns a tuple in training mode, not a tensor of logits: its forward must return the "
                        r"logits alone, of shape \(N, 10\)"),
    ("five_classes", r"gives logits of shape \(2, 5\) for 2 images; the dataset has 10 classes: its output must be "
                     r"of shape \(N, 10\) \(a last layer of num_classes outputs\)"),
    ("conv_logits", r"gives logits of shape \(2, 10, 1, 1\) for 2 images; .* \(N, 10\) .*flatten them "
                    r"\(torch\.flatten\(x, 1\)\)"),
    ("rgb_only", r"fails on 2 images of shape \(1, 8, 8\) \(the dataset's\), in training mode: RuntimeError: Given "
                 r"groups=1, weight of size \[8, 3, 3, 3\].*; its layers must fit in_channels=1 and 8x8 float32 "
                 r"images"),
])
def test_a_network_that_does_not_give_the_datasets_logits_is_refused_before_training(factory, says, tmp_path, capsys):
    """What lcq train's loss needs: a tensor of shape (N, num_classes) for N images of the dataset's shape, in
    training and eval mode. Otherwise the error names the factory and the fix, before any epoch (not a traceback
    from the loss)."""
    ref = f"{DATA}/user_models.py:{factory}"
    out = tmp_path / "run"
    assert main(["train", "--model", ref, "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"the network that {re.escape(repr(ref))} builds {says}", err), err
    assert not (out / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match=says):
        build_quantized_model(ref, (1, 8, 8), 10, QuantPlan("fp"), allow_factory=True)


def test_the_logits_check_leaves_the_network_and_the_generator_as_they_were(tmp_path):
    """The check runs the network in training mode too: its BN statistics and torch's generator (a dropout's
    draws) are as they were after it."""
    nets = tmp_path / "dropout.py"
    nets.write_text("from torch import nn\n\n"
                    "def net(num_classes, in_channels):\n"
                    "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
                    "                         nn.Dropout(0.5), nn.Linear(4 * 64, num_classes))\n")
    torch.manual_seed(0)
    nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64, 10)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_user_model(f"{nets}:net", (1, 8, 8), 10)
    assert torch.equal(torch.rand(3), expected)                    # no random draws (its dropout's) consumed
    net = build_user_model(f"{DATA}/user_models.py:vgg_res", (1, 8, 8), 10)
    assert all(not m.running_mean.any() and int(m.num_batches_tracked) == 0
               for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_a_factory_that_raises_is_an_error_naming_it_and_the_line(tmp_path, capsys):
    """The factory's own assertion, or torch refusing a layer it builds (padding='same' with a stride): lcq train
    says which factory raised what, and where in its file, not a traceback (nor torch's message alone)."""
    nets = tmp_path / "raising.py"
    nets.write_text("from torch import nn\n\n"
                    "def rgb(num_classes, in_channels):\n"
                    "    assert in_channels == 3, 'needs RGB images'\n\n"
                    "def strided_same(num_classes, in_channels):\n"
                    "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding='same'))\n")
    for factory, line, raised in (("rgb", 4, "AssertionError: needs RGB images"),
                                  ("strided_same", 7, "ValueError: padding='same' is not supported for strided "
                                                      "convolutions")):
        ref = f"{nets}:{factory}"
        out = tmp_path / factory
        assert main(["train", "--model", ref, "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"the model factory {ref!r} raised {raised} at {nets}:{line}, called as {factory}(num_classes=10, " \
               "in_channels=1)" in err, err
        assert not (out / "checkpoint.pt").exists()


def test_a_zero_initialized_layer_is_refused_before_training(tmp_path, capsys):
    nets = tmp_path / "zero.py"
    nets.write_text("from torch import nn\n\n"
                    "def net(num_classes, in_channels):\n"
                    "    m = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
                    "                      nn.Linear(4 * 64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n"
                    "    nn.init.zeros_(m[3].weight)\n"
                    "    return m\n")
    out = tmp_path / "run"
    args = ["train", "--model", f"{nets}:net", "--method", "lcq", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "layer '3'" in err and "standard deviation 0" in err and "NaN" in err and "--init" in err
    assert not (out / "checkpoint.pt").exists()
    assert main([*args[:4], "fp", *args[5:]]) == 0          # full precision has no weight quantizer


_SOFTSHRINK = ("import torch.nn.functional as F\nfrom torch import nn\n\n"
               "class Net(nn.Module):\n"
               "    def __init__(self, num_classes):\n"
               "        super().__init__()\n"
               "        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, num_classes)\n\n"
               "    def forward(self, x):\n"
               "        return self.fc(F.softshrink(self.conv(x)).amax((2, 3)))\n\n"
               "def net(num_classes, in_channels):\n"
               "    return Net(num_classes)\n")


@pytest.mark.parametrize("method", ["lcq", "uniform", "fp"])
def test_a_network_the_compiler_refuses_is_refused_before_the_first_epoch(method, tmp_path, capsys):
    nets = tmp_path / "softshrink.py"
    nets.write_text(_SOFTSHRINK)
    out = tmp_path / "run"
    args = ["train", "--model", f"{nets}:net", "--method", method, "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcq train: error: `lcq compile` would refuse this network after training (checked before "
                          "the first epoch): cannot compile a ")
    assert f"softshrink at {nets}:10 " in err and "use nn.ReLU" in err and "pass --no-compile-check" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    assert main([*args, "--no-compile-check"]) == 0 and (out / "checkpoint.pt").is_file()


def test_board_says_before_training_whether_the_whole_network_fits(tmp_path, capsys):
    """`lcq train --board`: the array `lcq build --estimate` then picks for the trained, compiled network is the one
    said before the first epoch; a network too large for the board is a warning naming what is over, and trains."""
    out = tmp_path / "cnn"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--board", "icebreaker"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith("lcq train: the whole network fits icebreaker (iCE40UP5K) by the estimate before "
                           "synthesis: 1 x 1, the fastest array that fits: about ")
    model = tmp_path / "cnn.lcq"
    assert main(["compile", str(out / "checkpoint.pt"), "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["build", str(model), "--board", "icebreaker", "--estimate", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)["chosen"]
    assert said.split(": ", 2)[2].startswith(f"{chosen['rows']} x {chosen['cols']}, ")

    lenet = f"{DATA}/compile_models.py:lenet"
    assert main(["train", "--model", lenet, "--epochs", "1", "--out", str(tmp_path / "lenet"), "--no-progress",
                 "--board", "icebreaker"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lcq train: warning: the whole network does not fit icebreaker (iCE40UP5K) with any array "
                          "tried; the smallest: 1 x 1 whole-network core on icebreaker (iCE40UP5K): needs about ")
    assert (tmp_path / "lenet" / "checkpoint.pt").is_file()


def test_board_needs_the_compile_check(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "x"), "--board", "icebreaker", "--no-compile-check"])
    assert e.value.code == 2
    assert "lcq train: error: --board estimates the network the compile check lowers; give it without " \
           "--no-compile-check" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_compile_check_leaves_the_run_as_it_was(tmp_path):
    """An FP run's check draws its layers afresh on a copy, and the run's random numbers (its dropout's, here)
    are untouched: the same seed trains to the same metrics with the check and without it."""
    runs = []
    for check in ("--compile-check", "--no-compile-check"):
        out = tmp_path / check
        assert main(["train", "--model", f"{DATA}/user_models.py:per_rank_dropout", "--method", "fp", "--epochs", "1",
                     "--batch-size", "256", "--out", str(out), "--no-progress", check]) == 0
        runs.append(json.loads((out / "metrics.json").read_text())["epochs"])
        for epoch in runs[-1]:
            epoch.pop("time_s")
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """One LCQ epoch of the VGG/residual net from a copy of tests/data/user_models.py, by `lcq train`."""
    root = tmp_path_factory.mktemp("user")
    nets = root / "nets.py"
    shutil.copy(DATA / "user_models.py", nets)
    ref = f"{nets}:vgg_res"
    out = root / "run"
    args = ["train", "--model", ref, "--method", "lcq", "--wbits", "3", "--abits", "3", "--layer-bits",
            "block2.conv1=4/4", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return ref, out, args


def test_cli_trains_a_user_model_and_records_the_factory(user_run):
    ref, out, _ = user_run
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["model"] == ref and Path(ref.rpartition(":")[0]).is_absolute()
    assert state["layers"]["features.0"] == [8, 8] and state["layers"]["block2.conv1"] == [4, 4]
    assert state["layers"]["block1.conv2"] == [3, 3] and "act_block1_conv1.theta" in state["model"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == ref and len(metrics["epochs"]) == 1
    # Rebuilt from the record only when the caller confirms the reference.
    with pytest.raises(ValueError, match="pass factory="):
        model_from_checkpoint(out / "checkpoint.pt")
    with pytest.raises(ValueError, match="not of 'cnn'"):
        model_from_checkpoint(out / "checkpoint.pt", factory="cnn")
    model = model_from_checkpoint(out / "checkpoint.pt", factory=ref)
    data = _digits_slice("digits")
    assert evaluate(model, data.test_x, data.test_y)["top1"] == pytest.approx(state["metrics"]["test_top1"])
    del state["model"]["fc.weight"]
    with pytest.raises(ValueError, match="no longer fits the weights saved in the checkpoint"):
        model_from_checkpoint(state, factory=ref)
    with pytest.raises(ValueError, match="user model factory"):     # a recorded reference alone imports nothing
        build_quantized_model(ref, state["input_shape"], state["num_classes"], QuantPlan.from_dict(state["plan"]))


def test_cli_compiles_a_user_model_with_an_identity_shortcut(user_run, tmp_path, capsys):
    """VGGRes's second block adds ReLU outputs (an identity shortcut: block1's ReLU goes into its addition):
    `lcq compile` writes nothing until the factory is confirmed, then compiles it, and `lcq eval` agrees."""
    ref, out, _ = user_run
    model = tmp_path / "m.lcq"
    assert main(["compile", str(out / "checkpoint.pt"), "-o", str(model)]) == 2
    assert f"pass --model {ref} " in capsys.readouterr().err and not model.exists()
    assert main(["compile", str(out / "checkpoint.pt"), "-o", str(model), "--model", ref]) == 0
    assert [(n.name, n.relu) for n in load(model).nodes if n.op == "add"] == [("block1.add", True),
                                                                               ("block2.add", False)]
    capsys.readouterr()
    assert main(["eval", str(model), "--model", ref, "--images", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"] == 1.0 and all(c["mismatched"] == 0 for c in result["code_mismatches"].values())


def test_cli_plots_a_user_model_once_the_factory_is_confirmed(user_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ref, out, _ = user_run
    plots = tmp_path / "plots"
    assert main(["plot", str(out), "--out", str(plots), "--images", "0"]) == 2
    assert f"pass --model {ref} " in capsys.readouterr().err and not list(plots.glob("*quantizer*"))
    assert main(["plot", str(out), "--out", str(plots), "--images", "0", "--model", ref]) == 0
    assert any("quantizer" in p.name for p in plots.iterdir()), sorted(p.name for p in plots.iterdir())


def test_cli_resume_of_a_user_model(user_run, tmp_path, capsys):
    ref, out, args = user_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), "--no-progress"]) == 2
    assert f"pass --model {ref} to confirm" in capsys.readouterr().err
    assert main(["train", "--resume", "--model", ref, "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["model"] == ref and state["layers"]["block2.conv1"] == [4, 4]
    assert main(["train", "--resume", "--model", f"{DATA}/user_models.py:vgg_res", "--epochs", "3", "--out", str(run),
                 "--no-progress"]) == 2
    assert "--model" in capsys.readouterr().err
    # The factory's file is gone: a clear error, for resume and for rebuilding.
    Path(ref.rpartition(":")[0]).rename(tmp_path / "moved.py")
    try:
        assert main(["train", "--resume", "--model", ref, "--epochs", "3", "--out", str(run), "--no-progress"]) == 2
        assert "cannot import the model factory" in capsys.readouterr().err
        with pytest.raises(ValueError, match="cannot import the model factory .* recorded in"):
            model_from_checkpoint(run / "checkpoint.pt", factory=ref)
    finally:
        (tmp_path / "moved.py").rename(ref.rpartition(":")[0])


def test_module_reference_fp_then_lcq_init(tmp_path, monkeypatch):
    """MODULE:FACTORY (importable), the factory asking for input_shape, FP pretraining then --init."""
    monkeypatch.syspath_prepend(str(DATA))
    ref = "user_models:vgg_res_shape"
    fp = train(TrainConfig(model=ref, plan=QuantPlan("fp"), epochs=1, batch_size=64, out=str(tmp_path / "fp"),
                           progress=False))
    assert fp["config"]["model"] == ref
    lcq = train(TrainConfig(model=ref, plan=QuantPlan("lcq", 3, 3), epochs=1, batch_size=64, init=str(tmp_path / "fp"
                            / "checkpoint.pt"), out=str(tmp_path / "lcq"), progress=False))
    assert lcq["layers"]["fc"] == [8, 8]


class _ReadAfterInPlace(nn.Module):
    """A tensor changed in place and read again afterwards: by ``s += b`` (``kind`` "iadd"), ``.add_``, an
    ``nn.ReLU(inplace=True)``, ``F.relu(inplace=True)`` or ``.relu_()``; eager PyTorch's later reads see the
    new values."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.stem, self.a, self.b, self.c = (nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1) for i in range(4))
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        s, b = self.a(x), self.b(x)
        if self.kind == "iadd":
            t = s
            t += b                              # s changes too
            y = torch.relu(t)
        elif self.kind == "add_":
            y = torch.relu(s.add_(b))
        elif self.kind == "module":
            y = self.relu(s)
        elif self.kind == "function":
            y = F.relu(s, inplace=True)
        else:
            y = s.relu_()
        return self.fc(torch.relu(self.c(y) + s).mean((2, 3)))


@pytest.mark.parametrize("kind", ["iadd", "add_", "module", "function", "method"])
def test_a_tensor_read_after_an_in_place_change_reads_the_new_values(kind):
    torch.manual_seed(0)
    fp = _ReadAfterInPlace(kind).eval()
    x = torch.rand(4, 1, 8, 8)
    expected = fp(x)
    model = quantize_model(fp, method="fp")
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


class _InPlaceThroughAlias(nn.Module):
    """``nn.Identity`` returns its input: ReLU(inplace=True) on ``x`` changes ``shortcut`` too. So may
    ``x.to(memory_format=...)`` (``how`` "to"): it returns ``x`` itself where ``x`` has that layout already."""

    def __init__(self, how="Identity"):
        super().__init__()
        self.how = how
        self.stem, self.conv = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut, self.relu, self.fc = nn.Identity(), nn.ReLU(inplace=True), nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        shortcut = self.shortcut(x) if self.how == "Identity" else x.to(memory_format=torch.channels_last)
        return self.fc(torch.relu(self.conv(self.relu(x)) + shortcut).mean((2, 3)))


@pytest.mark.parametrize("how,alias", [("Identity", "shortcut"), ("to", "to")])
def test_an_in_place_change_read_through_an_alias_is_refused(how, alias):
    with pytest.raises(ValueError, match=r"cannot quantize _InPlaceThroughAlias: layer 'relu' \(ReLU\) at "
                                         r".*test_user_model\.py:\d+ .* changes 'stem' in place, which 'add' "
                                         rf"reads afterwards through '{alias}'.*inplace=False"):
        quantize_model(_InPlaceThroughAlias(how))


class _MadeInForward(nn.Module):
    """Builds an ``nn.ReLU`` in forward, where torch.fx finds no name for it."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(nn.ReLU()(self.conv(x)).mean((2, 3)))


def test_a_module_made_in_forward_is_refused_with_where_to_make_it():
    with pytest.raises(ValueError, match=r"^cannot quantize _MadeInForward: torch\.fx cannot trace its forward "
                                         r"\(NameError: module is not installed as a submodule\); its forward calls a "
                                         r"module it creates there: create it in __init__ \(self\.relu = "
                                         r"nn\.ReLU\(\)\) and call that, or call the function \(torch\.relu\)$"):
        quantize_model(_MadeInForward())


class _FunctionalDropout(nn.Module):
    """``F.dropout(x, p, self.training)``: torch.fx records ``self.training`` as the bool it is when traced."""

    def __init__(self, always=False):
        super().__init__()
        self.always = always
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(F.dropout(torch.relu(self.conv(x)).mean((2, 3)), 0.3, True if self.always else self.training))


@pytest.mark.parametrize("training", [True, False])
def test_functional_dropout_that_follows_the_mode_becomes_a_dropout_module_in_either_mode(training):
    quantized = quantize_model(_FunctionalDropout().train(training))
    dropouts = [m for m in quantized.modules() if isinstance(m, nn.Dropout)]
    assert [(type(m), m.p) for m in dropouts] == [(nn.Dropout, 0.3)] and quantized.training == training


@pytest.mark.parametrize("training", [True, False])
def test_functional_dropout_always_on_is_refused_in_either_mode(training):
    with pytest.raises(ValueError, match=r"cannot quantize _FunctionalDropout: forward calls dropout as a function "
                                         r"at .*test_user_model\.py:\d+ \(.*\) \(training=True\); torch\.fx fixes .* "
                                         r"would drop out in evaluation too; use a torch\.nn\.Dropout"):
        quantize_model(_FunctionalDropout(always=True).train(training))


class _ScaledResidual(nn.Module):
    """A residual added with ``alpha``: ``torch.add(y, x, alpha=2)`` or ``y.add(x, alpha=2)`` is ``y + 2 * x``."""

    def __init__(self, method: bool, alpha=2):
        super().__init__()
        self.method, self.alpha = method, alpha
        self.conv0, self.bn0 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        y = self.bn1(self.conv1(x))
        y = y.add(x, alpha=self.alpha) if self.method else torch.add(y, x, alpha=self.alpha)
        return self.fc(F.relu(y).mean((2, 3)))


@pytest.mark.parametrize("method", [False, True])
def test_a_residual_added_with_alpha_is_refused_saying_what_to_write(method):
    """The integer additions add two tensors of one scale: ``alpha`` other than 1 cannot be lowered exactly. The
    trainer refuses it before training (it trained, and the compiler refused it after), naming alpha and what to
    write instead, and so does the compiler for a traced graph that holds one; alpha 1 is the plain sum, which
    compiles exactly."""
    with pytest.raises(ValueError, match=r"cannot quantize _ScaledResidual: forward adds alpha=2 times its second "
                                         r"operand at .*test_user_model\.py:\d+ \(.*\); the accelerator's integer "
                                         r"additions add two tensors unscaled: write x \+ y"):
        quantize_model(_ScaledResidual(method), QuantPlan("lcq", 3, 3))
    plain = randomize(quantize_model(_ScaledResidual(method, alpha=1), QuantPlan("lcq", 3, 3)), 0)
    scaled = copy.deepcopy(plain)
    for node in scaled.graph.nodes:                     # (the traced sum, given alpha 2 after the trainer's check)
        if node.target in (torch.add, "add"):
            node.kwargs = {**node.kwargs, "alpha": 2}
    scaled.recompile()
    call = r"method \.add\(\)" if method else r"function torch\.add"
    with pytest.raises(ValueError, match=rf"{call} at .*test_user_model\.py:\d+ \(.*\) adds alpha=2 times its "
                                         r"second operand, which the integer additions do not scale: write x \+ y"):
        compile_model(scaled, (1, 8, 8))
    x = images(20, (1, 8, 8), seed=1)
    result = compare(compile_model(plain, (1, 8, 8)), plain, x, np.zeros(20, dtype=np.int64))
    assert result.disagreements == 0


class _ConvHeadWithBN(nn.Module):
    """Logits from a 1x1 conv to the classes, then BatchNorm2d, then flatten (``bn=False``: no BN)."""

    def __init__(self, bn: bool = True):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 10, 1)
        self.bn_head = nn.BatchNorm2d(10) if bn else nn.Identity()
        self.flat = nn.Flatten()

    def forward(self, x):
        x = self.pool(F.relu(self.bn0(self.conv0(x))))
        return self.flat(self.bn_head(self.head(x)))


def test_a_bn_on_the_logits_is_named_with_the_fix():
    """A conv head, BN, flatten: the refusal named the Flatten as the network's output that is not a layer's; it
    now names the BN after the last layer and what to do. Without the BN the same network compiles exactly."""
    model = randomize(quantize_model(_ConvHeadWithBN(), QuantPlan("lcq", 3, 3)), 0)
    with pytest.raises(ValueError, match=r"layer 'bn_head' \(BatchNorm2d\) at .*test_user_model\.py:\d+ \(.*\) "
                                         r"normalizes the logits of the last layer 'head'.*: drop it and retrain "
                                         r"\(the layer's bias"):
        compile_model(model, (1, 8, 8))
    plain = randomize(quantize_model(_ConvHeadWithBN(bn=False), QuantPlan("lcq", 3, 3)), 0)
    result = compare(compile_model(plain, (1, 8, 8)), plain, images(20, (1, 8, 8), seed=1), np.zeros(20, np.int64))
    assert result.disagreements == 0


def test_lazy_modules_of_a_factory_are_built_as_the_eager_ones_would_be():
    """The factory's network is run once (the logits check), which gives lazy modules their sizes: a
    LazyBatchNorm2d came out of it with the running statistics of those two random images (an eager BatchNorm2d's
    are restored); it now starts from a fresh BN's, as the eager network does."""
    model = build_user_model(f"{DATA / 'user_models.py'}:lazy", (1, 8, 8), 10)
    assert [type(m).__name__ for m in model][:2] == ["Conv2d", "BatchNorm2d"] and type(model[-1]) is nn.Linear
    for bn in (model[1], model[4]):
        assert torch.equal(bn.running_mean, torch.zeros(bn.num_features))
        assert torch.equal(bn.running_var, torch.ones(bn.num_features)) and int(bn.num_batches_tracked) == 0


def test_lazy_modules_unsized_are_refused_naming_the_size_to_give():
    """quantize_model on a network whose lazy layers have not run yet: refused naming each and the size to give
    (a LazyBatchNorm2d too: it was taken, and compile_model folded its uninitialized statistics)."""
    with pytest.raises(ValueError, match=r"'0' is a LazyConv2d, whose weights do not exist before its first forward: "
                                         r"give its in_channels \(torch\.nn\.Conv2d\(in_channels, \.\.\.\)\), or run "
                                         r"the network on an image first; '1' is a LazyBatchNorm2d, whose parameters "
                                         r"do not exist before its first forward: give its sizes, or run the network "
                                         r"on an image first; .*'8' is a LazyLinear, .*give its "
                                         r"in_features \(torch\.nn\.Linear\(in_features, \.\.\.\)\)"):
        quantize_model(um.lazy(10, 1), QuantPlan("lcq", 3, 3))


def test_cli_trains_compiles_and_evaluates_a_user_model_of_lazy_modules(tmp_path, capsys):
    """`lcq train --model FILE:lazy`, `lcq compile` and `lcq eval`: the integer model agrees with the trained one."""
    ref, out, model = f"{DATA / 'user_models.py'}:lazy", tmp_path / "run", tmp_path / "m.lcq"
    assert main(["train", "--model", ref, "--method", "lcq", "--wbits", "3", "--abits", "3", "--epochs", "1",
                 "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    assert main(["compile", str(out / "checkpoint.pt"), "-o", str(model), "--model", ref]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), "--model", ref, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"] == 1.0 and all(c["mismatched"] == 0 for c in result["code_mismatches"].values())
