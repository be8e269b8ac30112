"""The host runtime against the simulated board accelerator: a trained digits CNN classifies
test images over the link protocol, equal to the integer reference image for image.

The DUT is the generated Verilog of ``boards.top.AcceleratorCore`` (layer engine + link
bridge) in cocotb; the host side (``LinkHost``, ``BoardRunner``) is the code ``lcq run``
uses. The UART itself is tested bit by bit in ``tests/test_link.py``.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from compiler.format import load  # noqa: E402
from compiler.reference import predict  # noqa: E402
from hw.engine_params import EngineParams  # noqa: E402
from sim.runner import build, run_test, unavailable_reason, verilog_of  # noqa: E402

pytestmark = pytest.mark.sim

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"
BUILD_ROOT = Path(os.environ.get("LCQ_SIM_BUILD", Path(__file__).resolve().parents[1] / "build" / "sim"))


def digits_test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    from lcq_train.data import load_dataset

    data = load_dataset("digits")
    return data.test_x[:n].numpy(), data.test_y[:n].numpy()


@pytest.mark.parametrize("resident, corrupt, byte_cycles",
                         [("all", 1_000, 3), pytest.param("none", -1, 1, marks=pytest.mark.slow)],
                         ids=["resident-corrupted-byte", "layer-by-layer"])
def test_host_runtime_on_simulated_board_equals_reference(resident, corrupt, byte_cycles, tmp_path):
    """Resident constants (one byte of them corrupted on the way in: the bridge NACKs the
    frame, the host sends it again), then images, a byte each way every 3 cycles; or every
    layer's constants sent again for every image (``slow``), as on boards whose buffers hold
    one layer."""
    reason = unavailable_reason("verilator")
    if reason is not None:
        pytest.skip(f"verilator simulation skipped: {reason}")
    from boards.top import AcceleratorCore
    from boards.traffic import image_traffic

    model = load(DIGITS)
    params = EngineParams.for_model(model, 2, 4, resident=resident)
    images, labels = digits_test_images(3)
    build_dir = BUILD_ROOT / f"verilator-board-digits-2x4-{resident}"
    source = verilog_of(AcceleratorCore(params, timeout_cycles=2_000), "board", build_dir)
    built = build("verilator", [source], "board", build_dir)
    results = tmp_path / "results.json"
    run_test(built, "sim.board_cocotb", tmp_path, data={
        "model": str(DIGITS), "params": params.describe(), "resident": resident, "images": images.tolist(),
        "corrupt": corrupt, "byte_cycles": byte_cycles, "results": str(results)})
    out = json.loads(results.read_text())
    got = np.array(out["logits"])
    assert (got == predict(model, images)).all()
    assert len(got) == 3
    assert out["retried"] == (corrupt >= 0)
    # The bytes and requests the simulated device exchanged are the protocol's count.
    traffic = image_traffic(model, params, resident, max_payload=512)
    assert out["images"]["requests"] == 3 * traffic["requests"]
    assert out["images"]["bytes_to_device"] == 3 * traffic["bytes_to_device"]
    assert out["images"]["bytes_from_device"] == 3 * traffic["bytes_from_device"]
