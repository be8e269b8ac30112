"""benchmarks/link_throughput.py's bounds and test-set choice: pure functions, no simulation."""

import importlib.util
from pathlib import Path

import pytest

from compiler import format as model_format

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def _benchmark():
    spec = importlib.util.spec_from_file_location("link_throughput", REPO / "benchmarks" / "link_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bounds_link_and_compute_and_the_fraction_of_the_lower():
    bounds = _benchmark().bounds
    # 3 Mbaud 8N1: 300,000 bytes/s over 84 + 66 bytes (request-reply: both directions count) = 2,000 images/s;
    # 45 MHz over 378,496 MACs on 8 x 16 PEs (2,957 cycles) = 15,218 images/s.
    b = bounds(45e6, 3_000_000, 84, 66, 378_496, 8, 16, images_per_s=1_000)
    assert b["link_bound_images_per_s"] == pytest.approx(2_000)
    assert b["compute_bound_images_per_s"] == pytest.approx(45e6 * 128 / 378_496)
    assert b["fraction_of_lower_bound"] == pytest.approx(0.5)
    # ResNet-20 on 8 x 8 at 45 MHz: 3,072 pixel bytes at 3 Mbaud are ~97 images/s, the array ~70: compute bound.
    b = bounds(45e6, 3_000_000, 3_072, 0, 40_813_184, 8, 8, images_per_s=35)
    assert b["link_bound_images_per_s"] == pytest.approx(300_000 / 3_072)
    assert b["fraction_of_lower_bound"] == pytest.approx(35 / b["compute_bound_images_per_s"])
    assert "fraction_of_lower_bound" not in bounds(45e6, 3_000_000, 1, 1, 1, 1, 1)


def test_dataset_of_the_bundled_models():
    dataset_of = _benchmark().dataset_of
    assert dataset_of(model_format.load(DATA / "digits-cnn-lcq-w3a3.lcq")) == "digits"
    assert dataset_of(model_format.load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")) == "cifar10"
