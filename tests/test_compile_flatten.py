"""A map flattened into a linear layer (LeNet's head): compiled as the convolution as large as the map; the image
flattened into one (an MLP): the vector of its pixels; exact, bit-exact on the chip; and the flattened maps the
accelerator cannot run, refused."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boards.boards import BOARDS
from boards.fit import FitError, network_for_board
from compiler.agreement import compare
from compiler.capture import Unsupported
from compiler.graph import ConvNode
from compiler.lower import CompileOptions, compile_model
from hw.network_params import NetworkParams
from lcq_train.plan import quantize_model

from helpers import images, randomize, sim_in_verilator

sys.path.insert(0, str(Path(__file__).parent / "data"))
import compile_models as cm  # noqa: E402


class MLP(nn.Module):
    """The image (``pixels`` of them) flattened into three linear layers."""

    def __init__(self, pixels=64):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(pixels, 32), nn.Linear(32, 24), nn.Linear(24, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))


class NonSquare(nn.Module):
    """A conv's 4 x 8 x 6 map flattened into a linear layer."""

    def __init__(self, side=(8, 6)):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * side[0] * side[1], 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class Unflattened(nn.Module):
    """A linear layer on a conv's 4-D output (PyTorch applies it to the last dimension, the width)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x))).mean((1, 2))


class AvgLeNet(nn.Module):
    """The classic LeNet-5: average pooling (AvgPool2d(2)) before the flatten."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class JoinedFlat(nn.Module):
    """Two branches' maps, each flattened, joined into one linear layer: the flattened join of the maps."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1, stride=2), nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        joined = torch.cat([torch.flatten(F.relu(self.a(x)), 1), torch.flatten(F.relu(self.b(x)), 1)], 1)
        return self.fc2(F.relu(self.fc1(joined)))


NETS = {"lenet": lambda: cm.lenet(10, 1), "mlp": MLP, "joined": JoinedFlat}


def _lenet(layer_bits=()):
    torch.manual_seed(0)
    return randomize(quantize_model(cm.lenet(10, 1), method="lcq", wbits=3, abits=3, layer_bits=dict(layer_bits)),
                     seed=0)


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name, net in NETS.items():
        torch.manual_seed(0)
        model = randomize(quantize_model(net(), method="lcq", wbits=3, abits=3), seed=0)
        out[name] = model, compile_model(model, (1, 8, 8))
    return out


@pytest.mark.parametrize("name, side, channels", [("lenet", 4, 16), ("joined", 4, 8)])
def test_the_linear_layer_on_a_flattened_map_is_the_convolution_as_large_as_the_map(compiled, name, side, channels):
    model, c = compiled[name]
    fc1 = next(n for n in c.convs if n.name == "fc1")
    assert isinstance(fc1, ConvNode) and fc1.kind == "conv" and fc1.in_shape == (channels, side, side)
    assert (fc1.kernel, fc1.stride, fc1.padding, fc1.out_shape) == (side, 1, 0, (32, 1, 1))
    # the weight codes are the linear layer's, (out, C * H * W) read as (out, C, H, W)
    codes = model.fc1.wq.codes(model.fc1.weight.double()).numpy()
    np.testing.assert_array_equal(fc1.weight_codes.reshape(32, -1), codes)
    result = compare(c, model, images(64, (1, 8, 8), seed=2), np.zeros(64, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 8, 6), (3, 40, 40)])
def test_a_flattened_image_is_the_vector_of_its_pixels(shape, tmp_path):
    """An MLP's image flattened into its first linear layer: the input node's codes are the (C * H * W, 1, 1)
    vector (``flat``), which fc1 reads as a 1 x 1 layer, every row of the array busy (as an H x W convolution over
    a one-channel image only one row of it would be), whatever the image's sides; PyTorch agrees code for code,
    and the flag survives the file (written only where set)."""
    from compiler.format import load, save

    pixels = int(np.prod(shape))
    torch.manual_seed(0)
    model = randomize(quantize_model(MLP(pixels), method="lcq", wbits=3, abits=3), seed=0)
    c = compile_model(model, shape)
    fc1 = next(n for n in c.convs if n.name == "fc1")
    assert c.input.flat and c.input.shape == shape and c.input.tensor_shape == (pixels, 1, 1)
    assert (fc1.kind, fc1.in_shape, fc1.kernel) == ("linear", (pixels, 1, 1), 1)
    np.testing.assert_array_equal(fc1.weight_codes.reshape(32, -1), model.fc1.wq.codes(model.fc1.weight.double()))
    result = compare(c, model, images(32, shape, seed=2), np.zeros(32, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())
    save(c, tmp_path / "mlp.lcq")
    assert load(tmp_path / "mlp.lcq").input.flat
    lenet = compile_model(_lenet(), (1, 8, 8))
    save(lenet, tmp_path / "lenet.lcq")
    assert not lenet.input.flat and not load(tmp_path / "lenet.lcq").input.flat


def test_an_average_pooled_map_flattens_into_a_linear_layer():
    torch.manual_seed(0)
    model = randomize(quantize_model(AvgLeNet(), method="lcq", wbits=3, abits=3), seed=0)
    c = compile_model(model, (1, 8, 8))
    fc1 = next(n for n in c.convs if n.name == "fc1")
    assert (fc1.kind, fc1.in_shape, fc1.kernel, fc1.out_shape) == ("conv", (16, 2, 2), 2, (32, 1, 1))
    result = compare(c, model, images(64, (1, 8, 8), seed=2), np.zeros(64, dtype=np.int64))
    assert result.disagreements == 0 and all(mismatched == 0 for _, mismatched in result.codes.values())


@pytest.mark.parametrize("net, shape, says", [
    (NonSquare, (1, 8, 6), r"layer 'fc' \(QLinear\) .*reads a flattened 4x8x6 map; the accelerator runs it "
                           r"as a 8x6 convolution over the map, whose kernel must be square and at most 32 wide"),
    (lambda: cm.lenet(10, 1), (1, 16, 16), r"layer 'fc1' .*expects 256 inputs, its input has 1024 \(16x8x8\)"),
    (Unflattened, (1, 8, 8), r"layer 'fc' \(QLinear\) .*reads a 4x8x8 map, not flattened; a linear layer reads a "
                             r"vector: flatten the map first"),
])
def test_flattened_maps_the_accelerator_cannot_run_are_refused(net, shape, says):
    model = quantize_model(net(), method="lcq", wbits=3, abits=3)
    with pytest.raises(Unsupported, match=says):
        compile_model(model, shape)


def test_a_map_wider_than_a_kernel_is_refused():
    with pytest.raises(Unsupported, match=r"reads a flattened 4x40x40 map; .* at most 32 wide: make the map square "
                                          r"\(and smaller"):
        compile_model(quantize_model(NonSquare((40, 40)), method="lcq", wbits=3, abits=3), (1, 40, 40))


@pytest.mark.sim
# By default LeNet (~10 s; fc1's 8-bit codes searched, hw.progression); with -m slow the MLP and the flattened join
@pytest.mark.parametrize("name", ["lenet"] + [pytest.param(name, marks=pytest.mark.slow) for name in ("mlp", "joined")])
def test_flattened_heads_run_bit_exact_on_the_network_core(compiled, name, tmp_path, capsys):
    """LeNet's flattened 16 x 4 x 4 map and the MLP's flattened image (its pixels a vector of 64 channels, in 32
    words of the 2 x 2 core's code memory) through the whole-network core in Verilator: every step and the logits
    equal the integer reference."""
    result = sim_in_verilator(compiled[name][1], tmp_path, capsys, images=2, rows=2, cols=2)
    assert result["mismatches"] == 0 and result["images"] == 2


@pytest.mark.sim
def test_lenet_runs_bit_exact_on_the_layer_engine(compiled, tmp_path, capsys):
    """LeNet on the layer engine over the link (each layer's constants loaded with it): fc1's 8-bit codes come
    back from the thresholds unit's search, every layer's output equal to the integer reference."""
    result = sim_in_verilator(compiled["lenet"][1], tmp_path, capsys, images=1, rows=2, cols=2, mode="layers")
    assert result["mismatches"] == 0 and result["images"] == 1


# --------------------------------------------------------------------------- on a board


def test_a_last_layer_reading_8_bit_codes_from_a_layer_fits_a_board():
    """LeNet's fc2, the last layer, reads 8-bit codes (the paper's rule) that fc1's output stage writes: a uniform
    quantizer's, searched as a progression (hw.progression), not 255 thresholds a channel: it fits the ULX3S-12F.
    Where a layer writes 8-bit codes of a learned quantizer (fc1 reading 8-bit LCQ codes through a max pooling),
    the refusal names the layer and the width that fits."""
    assert network_for_board(compile_model(_lenet(), (1, 8, 8)), BOARDS["ulx3s-12f"]).estimate["EBR"] <= 32
    with pytest.raises(FitError, match=r"layer 'conv2' writes 8-bit codes, the input of 'fc1', whose thresholds are "
                                       r"no arithmetic progression .* every output stage lists 255 thresholds a "
                                       r"channel: train 'fc1' to read the inner width \(lcq train \.\.\. "
                                       r"--layer-bits fc1=3/3\)"):
        network_for_board(compile_model(_lenet({"fc1": (3, 8)}), (1, 8, 8)), BOARDS["ulx3s-85f"])


def test_a_lut_layer_of_weights_wider_than_the_pes_take_names_both_fixes():
    """fc2 at 8-bit weights and 3-bit codes has 127 x 7 = 889 products, within --max-lut-entries 1024, so it compiles
    as a LUT layer; the PEs' LUTs take weights of 2..4 bits. Compiled with --max-lut-entries 888 it multiplies."""
    model = _lenet({"fc2": (8, 3)})
    with pytest.raises(ValueError, match=r"layer 'fc2' selects from a LUT of 889 products of 8-bit weights and 3-bit "
                                         r"activations .*compile it as a multiplying layer \(lcq compile "
                                         r"--max-lut-entries 888\), or train its weights at 4 bits or fewer "
                                         r"\(--layer-bits fc2=4/3\)"):
        NetworkParams.for_model(compile_model(model, (1, 8, 8)), 2, 2)
    compiled = compile_model(model, (1, 8, 8), CompileOptions(max_lut_entries=888))
    assert next(n for n in compiled.convs if n.name == "fc2").mac == "multiply"
    assert network_for_board(compiled, BOARDS["ulx3s-85f"]).estimate["EBR"] <= 208
