"""The CNNs people copy from tutorials (tests/data/tutorial_models.py), as written: quantized, given random
quantizer parameters, compiled, and the integer model agreeing with PyTorch; those the accelerator cannot run
refused, naming the operation and the fix."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.lower import compile_model
from compiler.reference import run
from lcq_train.factory import build_user_model
from lcq_train.plan import quantize_model

from helpers import images, randomize

sys.path.insert(0, str(Path(__file__).parent / "data"))
import tutorial_models as tm  # noqa: E402

CIFAR, MNIST, BLITZ = (3, 32, 32), (1, 28, 28), (1, 32, 32)
LOWERED = {
    "cifar10 tutorial Net": (tm.Net, CIFAR),
    "cifar10 tutorial Net, x.view(-1, 16 * 5 * 5)": (tm.NetView, CIFAR),
    "neural networks tutorial LeNet": (tm.LeNetBlitz, BLITZ),
    "examples/mnist Net (log_softmax)": (lambda: tm.MnistNet(8, 16, 32), MNIST),
    "examples/mnist Net of 2018, dropout a module (log_softmax)": (tm.MnistNet2018Module, MNIST),
    "examples/mnist Net of 2018, F.dropout(x, training=self.training)": (tm.MnistNet2018, MNIST),
    "quickstart NeuralNetwork (MLP)": (tm.NeuralNetwork, MNIST),
    "d2l.ai LeNet: sigmoids, AvgPool2d(2, 2) read by 5 x 5 convs and a flattening linear layer": (tm.d2l_lenet, MNIST),
    "Keras-style Sequential": (tm.keras_sequential, MNIST),
    "Keras-style Sequential, global average pooling": (tm.keras_global_pool, MNIST),
    "Keras-style Sequential, BatchNorm after each ReLU": (tm.keras_bn_after_relu, MNIST),
    "Keras-style Sequential, nn.Softmax(dim=-1)": (tm.keras_softmax, MNIST),
    "ReLU6, view(x.size(0), -1), F.softmax": (tm.ReLU6Net, MNIST),
    "torchvision AlexNet/VGG head, AdaptiveAvgPool2d((4, 4)) of a 4 x 4 map": (tm.AdaptiveHead, (3, 16, 16)),
    "kuangliu/pytorch-cifar VGG11, AvgPool2d(kernel_size=1, stride=1)": (lambda: tm.VGG("VGG11"), CIFAR),
    "kuangliu/pytorch-cifar ResNet18, nn.Sequential() shortcuts, out += ...": (tm.ResNet18, CIFAR),
    "akamaster/pytorch_resnet_cifar10 resnet20, option-A shortcuts, F.avg_pool2d(out, out.size()[3])":
        (tm.resnet20, CIFAR),
    "kuangliu/pytorch-cifar PreActResNet18, the residual stream averaged (no BN or ReLU after the last block)":
        (tm.PreActResNet18, CIFAR),
    "kuangliu/pytorch-cifar densenet_cifar, 58 joins, transitions averaging a 1x1 conv's output":
        (tm.densenet_cifar, CIFAR),
    "torchvision InceptionV3's blocks A to E, pool branches averaging max-pooled joins": (tm.MiniInception3, CIFAR),
}


def _quantized(net: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(quantize_model(net, method="lcq", wbits=3, abits=3), seed=seed)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for log_softmax")   # the 2018 example's, as written
@pytest.mark.parametrize("name", LOWERED)
def test_a_tutorial_model_compiles_and_agrees_with_pytorch(name):
    factory, shape = LOWERED[name]
    model = _quantized(factory())
    compiled = compile_model(model, shape)
    assert compiled.num_classes == 10
    result = compare(compiled, model, images(6, shape, seed=1), np.zeros(6, dtype=np.int64))
    assert result.images == 6 and result.disagreements == 0
    assert result.codes and all(mismatched == 0 for _, mismatched in result.codes.values()), result.codes


def _pre_softmax(model: nn.Module, last: str, x: torch.Tensor) -> np.ndarray:
    """The output of layer ``last`` of ``model`` (float64) for ``x``: the logits before the softmax."""
    seen = {}
    handle = dict(model.named_modules())[last].register_forward_hook(lambda m, i, out: seen.setdefault("y", out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["y"].numpy()


@pytest.mark.parametrize("factory, last", [(lambda: tm.MnistNet(8, 16, 32), "fc2"), (tm.keras_softmax, "4"),
                                           (tm.ReLU6Net, "fc")])
def test_a_final_softmax_is_left_out_and_the_compiled_logits_are_those_before_it(factory, last):
    model = _quantized(factory())
    compiled = compile_model(model, MNIST)
    x = images(6, MNIST, seed=3)
    logits = run(compiled, x)["logits"].reshape(6, -1) * compiled.scales["logits"]
    expected = _pre_softmax(model.double().eval(), last, torch.from_numpy(x).double() / 255.0)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=4 * compiled.scales["logits"])
    assert (logits.argmax(1) == expected.argmax(1)).all()


class _Probabilities(nn.Module):
    """A softmax where the compiler cannot leave it out: ``where`` "hidden" (on a hidden layer's output), "dim 0"
    (over the batch), "conv logits, dim -1" (over the last dimension of a conv's (N, C, 1, 1) logits)."""

    def __init__(self, where):
        super().__init__()
        self.where = where
        self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 8), nn.Linear(8, 10)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1)
        if self.where == "hidden":
            return self.fc2(F.softmax(self.fc1(torch.flatten(x, 1)), dim=1))
        if self.where == "dim 0":
            return F.log_softmax(self.fc2(torch.flatten(x, 1)), dim=0)
        return self.head(x).softmax(-1)


@pytest.mark.parametrize("where, says", [
    ("hidden", r"function torch\.nn\.functional\.softmax at .*test_tutorial_models\.py:\d+ \(.*\) is not the "
               r"network's last operation; a softmax or log-softmax compiles only on the logits"),
    ("dim 0", r"function torch\.nn\.functional\.log_softmax at .* normalizes dimension 0 of the \(N, classes\) "
              r"logits, not their classes: softmax over dim=1"),
    ("conv logits, dim -1", r"method \.softmax\(\) at .* normalizes dimension -1 of the \(N, C, 1, 1\) logits"),
])
def test_a_softmax_that_changes_the_top_class_is_refused(where, says):
    with pytest.raises(Unsupported, match=rf"^cannot compile a _Probabilities: {says}"):
        compile_model(quantize_model(_Probabilities(where), method="lcq", wbits=3, abits=3), (1, 8, 8))


class AlwaysDropout(tm.MnistNet2018):
    """examples/mnist's Net with F.dropout(x) as some ports write it: training=True whatever the model's mode."""

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.dropout(F.relu(self.fc1(x.view(-1, 320)))))


class SizeNumber(tm.MnistNet2018):
    """A number made of a tensor's size, as kuangliu's ShuffleNetV2 splits its channels (int(x.size(1) * ratio))."""

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        c = int(x.size(1) * 0.5)
        return self.fc2(F.relu(self.fc1(torch.cat([x[:, :c], x[:, c:]], 1).view(-1, 320))))


@pytest.mark.parametrize("net, says", [
    (SizeNumber, r"cannot quantize SizeNumber: torch\.fx cannot trace its forward \(TypeError: int\(\) argument must "
                 r"be .*not 'Proxy'\); its forward makes a Python number of a tensor's size \(int\(x\.size\(1\) \* "
                 r"ratio\), as kuangliu's ShuffleNetV2 splits its channels\), .*compute the number in __init__"),
    (AlwaysDropout, r"cannot quantize AlwaysDropout: forward calls dropout as a function at .*test_tutorial_models"
                    r"\.py:\d+ .*\(training=True\); .* would drop out in evaluation too; use a torch\.nn\.Dropout "
                    r"module, which follows train\(\) and eval\(\)"),
    (tm.LeNetBlitzFlatFeatures, r"cannot quantize LeNetBlitzFlatFeatures: torch\.fx cannot trace its forward "
                                r"\(TraceError: Proxy object cannot be iterated.*\); its forward loops over a "
                                r"tensor or its size \(for s in x\.size\(\)\[1:\] in a num_flat_features method\), "
                                r"which the trace leaves unknown: flatten with torch\.flatten\(x, 1\)"),
])
def test_a_tutorial_model_that_cannot_be_traced_as_written_is_refused_naming_the_fix(net, says):
    with pytest.raises(ValueError, match=says):
        quantize_model(net(), method="lcq", wbits=3, abits=3)


def test_an_adaptive_pooling_to_another_size_than_the_maps_is_refused_naming_the_fix():
    model = quantize_model(tm.AdaptiveHead(), method="lcq", wbits=3, abits=3)
    with pytest.raises(Unsupported, match=r"layer 'avgpool' \(AdaptiveAvgPool2d\) at .* \(a 8x8 map to 4x4\) is not "
                                          r"supported: only output size 1, or the map's own size \(the identity\), "
                                          r"compiles"):
        compile_model(model, (3, 32, 32))


@pytest.mark.parametrize("name, normalize", [("examples/mnist Net (log_softmax)", torch.log_softmax),
                                             ("Keras-style Sequential, nn.Softmax(dim=-1)", torch.softmax),
                                             ("ReLU6, view(x.size(0), -1), F.softmax", torch.softmax)])
def test_training_sees_the_logits_before_a_final_softmax(name, normalize):
    """lcq train's loss (cross-entropy) applies log-softmax itself: the quantized model leaves a final softmax or
    log-softmax out (lcq_train.graph), so its output is the logits, which the tutorial's normalization turns into
    the tutorial model's output; a softmax that is not the last operation stays."""
    factory, shape = LOWERED[name]
    torch.manual_seed(0)
    model = factory().eval()
    original = copy.deepcopy(model)
    quantized = quantize_model(model, method="fp").eval()
    x = torch.rand(4, *shape)
    with torch.no_grad():
        logits, expected = quantized(x), original(x)
    assert torch.allclose(normalize(logits, 1), expected, atol=1e-6)
    assert not torch.allclose(logits, expected, atol=1e-3)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(F.softmax(self.fc1(x), dim=1))

    inner = quantize_model(Inner(), method="fp")
    assert any(n.target is F.softmax for n in inner.graph.nodes)


@pytest.mark.parametrize("shape, classes", [(CIFAR, 10), (BLITZ, 4)])
def test_the_cifar10_tutorial_net_is_a_factory_that_lcq_train_can_build(shape, classes):
    ref = f"{Path(__file__).parent / 'data' / 'tutorial_models.py'}:tutorial_net"
    net = build_user_model(ref, shape, classes)
    assert type(net).__name__ == "Net"
    assert (net.conv1.in_channels, net.fc3.out_features) == (shape[0], classes)
    assert [tuple(p.shape) for p in net.parameters()][2:-2] == [tuple(p.shape) for p in tm.Net().parameters()][2:-2]


def test_a_functional_dropout_that_follows_the_mode_becomes_a_dropout_module():
    """examples/mnist's Net of 2018 calls F.dropout(x, training=self.training), which a trace fixes at the mode it is
    traced in; traced in both modes it follows them, so the quantized model holds an nn.Dropout in its place: it
    drops out in training and is the identity in evaluation, as the tutorial's model."""
    torch.manual_seed(0)
    model = tm.MnistNet2018().eval()
    original = copy.deepcopy(model)
    quantized = quantize_model(model, method="fp")
    dropouts = [m for m in quantized.modules() if type(m) is nn.Dropout]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5
    assert not any(n.op == "call_function" and n.target is F.dropout for n in quantized.graph.nodes)
    x = torch.rand(8, *MNIST)
    with torch.no_grad():
        assert torch.allclose(torch.log_softmax(quantized.eval()(x), 1), original(x), atol=1e-6)
        quantized.train()
        assert not torch.equal(quantized(x), quantized(x))


class AdaptiveMaxHead(tm.AdaptiveHead):
    """The AlexNet-style head with AdaptiveMaxPool2d((4, 4)), or F.adaptive_max_pool2d(x, 4) (``function``)."""

    def __init__(self, function=False):
        super().__init__()
        self.function = function
        self.avgpool = nn.AdaptiveMaxPool2d((4, 4))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_max_pool2d(x, 4) if self.function else self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


@pytest.mark.parametrize("function", [False, True])
def test_an_adaptive_max_pooling_to_the_maps_size_is_the_identity(function):
    """AdaptiveMaxPool2d((4, 4)) or F.adaptive_max_pool2d(x, 4) of a 4 x 4 map: each window one element, the
    identity; of an 8 x 8 map refused, naming both sizes and MaxPool2d."""
    torch.manual_seed(0)
    model = randomize(quantize_model(AdaptiveMaxHead(function), method="lcq", wbits=3, abits=3), seed=0)
    compiled = compile_model(model, (3, 16, 16))
    x = images(16, (3, 16, 16), seed=2)
    result = compare(compiled, model, x, np.zeros(16, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())
    with pytest.raises(Unsupported, match=r"\(a 8x8 map to 4x4\) is not supported: only the global maximum compiles "
                                          r"as it is .* or a pooling to the map's own size \(the identity\): for "
                                          r"output size n use MaxPool2d\(k\)"):
        compile_model(model, (3, 32, 32))
