"""The fit estimate (boards.fit) against the counts of routed builds recorded in benchmarks/results: block RAM,
SPRAM and DSPs, which the estimate counts exactly, equal the recorded ones (no build is run here)."""

from pathlib import Path

from boards.boards import BOARDS
from boards.fit import network_estimate
from compiler.format import load
from hw.network_params import NetworkParams

ROOT = Path(__file__).resolve().parent.parent


def test_the_link_bridge_multiplier_is_counted_on_the_ecp5():
    """ResNet-20's 35-bit logits are 5 bytes an OUT word, not a power of two: the bridge's frame length (words
    times 5, hw.link) takes a MULT18X18D beside the requantize unit's 4 (board_builds.json, eda2dd9: 5)."""
    resnet20 = load(ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq")
    params = NetworkParams.for_model(resnet20, 8, 16, multiply_cols=4)
    assert network_estimate(BOARDS["ulx3s-85f"], params)["DSP"] == 5
    digits = load(ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq")      # 30-bit logits: 4 bytes, a shift
    assert network_estimate(BOARDS["ulx3s-85f"], NetworkParams.for_model(digits, 8, 8, multiply_cols=2))["DSP"] == 4

