"""The host runtime against the simulated board accelerator: a trained digits CNN classifies
test images over the link protocol, equal to the integer reference image for image.

The DUT is the generated Verilog of ``boards.top.NetworkAcceleratorCore`` (network mode: the
whole-network core + link bridge) or ``boards.top.AcceleratorCore`` (layers mode: layer engine +
link bridge) in cocotb; the host side (``LinkHost``, ``NetworkRunner`` / ``BoardRunner``) is the
code ``lcq run`` uses. The UART itself is tested bit by bit in ``tests/test_link.py``.
"""

import functools
import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from compiler.format import load  # noqa: E402
from compiler.reference import predict  # noqa: E402
from hw.engine_params import EngineParams  # noqa: E402
from sim.runner import build, run_test, verilog_of  # noqa: E402
from simulators import BUILD_ROOT, require_simulators  # noqa: E402

pytestmark = pytest.mark.sim

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"


def digits_test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    from lcq_train.data import load_dataset

    data = load_dataset("digits")
    return data.test_x[:n].numpy(), data.test_y[:n].numpy()


def run_board(resident: str, tmp_path, *, byte_cycles: int, images: int = 3, **faults) -> tuple:
    """The digits CNN on a simulated 2 x 4 board core with ``resident`` constants, ``images`` test
    images: (model, params, images, the testbench's results); the logits equal the reference unless the run
    ended in an error (``reset_after`` set)."""
    require_simulators("verilator")
    from boards.top import AcceleratorCore

    model = load(DIGITS)
    params = EngineParams.for_model(model, 2, 4, resident=resident)
    test_images, _ = digits_test_images(images)
    build_dir = BUILD_ROOT / f"verilator-board-digits-2x4-{resident}"
    source = verilog_of(AcceleratorCore(params, timeout_cycles=2_000), "board", build_dir)
    built = build("verilator", [source], "board", build_dir)
    results = tmp_path / "results.json"
    run_test(built, "sim.board_cocotb", tmp_path, data={
        "model": str(DIGITS), "params": params.describe(), "resident": resident, "images": test_images.tolist(),
        "byte_cycles": byte_cycles, "results": str(results), **faults})
    out = json.loads(results.read_text())
    if "reset_after" not in faults:
        assert len(out["logits"]) == images and (np.array(out["logits"]) == predict(model, test_images)).all()
    return model, params, test_images, out


# Resident weights: two images (the second shows that nothing loaded once is sent again; a third cost a
# quarter of the run). Layer by layer: three.
@pytest.mark.parametrize("resident, byte_cycles, images", [
    ("weights", 3, 2), pytest.param("none", 1, 3, marks=pytest.mark.slow)], ids=["resident-weights", "layer-by-layer"])
def test_host_runtime_on_simulated_board_equals_reference(resident, byte_cycles, images, tmp_path):
    """Every layer's weights loaded once, then images, a byte each way every 3 cycles; or
    every layer's constants sent again for every image (``slow``), as on boards whose
    buffers hold one layer. The bytes and requests exchanged are the protocol's count."""
    from boards.traffic import image_traffic

    model, params, _, out = run_board(resident, tmp_path, byte_cycles=byte_cycles, images=images)
    assert out["retried"] == out["repeated"] == 0
    traffic = image_traffic(model, params, resident, max_payload=512)
    assert out["images"]["requests"] == images * traffic["requests"]
    assert out["images"]["bytes_to_device"] == images * traffic["bytes_to_device"]
    assert out["images"]["bytes_from_device"] == images * traffic["bytes_from_device"]
    assert out["loading"]["bytes_to_device"] == traffic["loading"]["bytes_to_device"] + 6    # and a PING


# About 3 minutes; the host's recovery is also tested against a fake port and the bridge in tests/test_link.py.
@pytest.mark.slow
def test_host_runtime_recovers_from_corrupted_bytes_both_ways(tmp_path):
    """All constants resident. A byte of them corrupted on the way in: the bridge NACKs the
    frame and the host sends it again. A byte of an ACK corrupted on the way back: the host
    resyncs and sends that LOAD again. A byte of the first image's outputs corrupted: the
    host resyncs and runs that layer again. The logits still equal the reference."""
    from boards.traffic import image_traffic

    model = load(DIGITS)
    traffic = image_traffic(model, EngineParams.for_model(model, 2, 4, resident="all"), "all", max_payload=512)
    # Reply byte 41: an ACK of the constants; then one in the middle of the first image's replies (past the
    # INFO reply and every ACK of the constants), almost all of which are OUT frames.
    in_image = traffic["loading"]["bytes_from_device"] + traffic["bytes_from_device"] // 2
    _, _, _, out = run_board("all", tmp_path, byte_cycles=1, corrupt=1_000, corrupt_replies=[41, in_image])
    assert out["retried"] == 2 and out["repeated"] == 1


def network_board_params(model):
    """The network core of :func:`run_network_board`: a 2 x 4 array, only its first column multiplying (as ECP5
    builds have a quarter of the columns)."""
    from hw.network_params import NetworkParams

    return NetworkParams.for_model(model, 2, 4, multiply_cols=1)


@functools.lru_cache(maxsize=None)
def network_board_build():
    """The Verilator build of :func:`network_board_params`'s board core (``NetworkAcceleratorCore``), elaborated
    and built once for the tests of this file that run it: (params, build)."""
    from boards.top import NetworkAcceleratorCore

    model = load(DIGITS)
    params = network_board_params(model)
    build_dir = BUILD_ROOT / "verilator-board-network-digits-2x4-m1"
    source = verilog_of(NetworkAcceleratorCore(params, model.num_classes, timeout_cycles=2_000), "board", build_dir)
    return params, build("verilator", [source], "board", build_dir)


def run_network_board(tmp_path, *, byte_cycles: int, images: int = 3, **faults) -> tuple:
    """The digits CNN on a simulated board of :func:`network_board_params` in network mode (the whole network on
    the chip; the testbench takes the core's parameters as generated, not recomputed from rows and cols):
    (model, params, images, the testbench's results), checked as :func:`run_board`'s."""
    require_simulators("verilator")
    model = load(DIGITS)
    params, built = network_board_build()
    test_images, _ = digits_test_images(images)
    results = tmp_path / "results.json"
    run_test(built, "sim.board_cocotb", tmp_path, data={
        "model": str(DIGITS), "mode": "network", "rows": 2, "cols": 4, "params": params.describe(),
        "images": test_images.tolist(), "byte_cycles": byte_cycles, "results": str(results), **faults})
    out = json.loads(results.read_text())
    if "reset_after" not in faults:
        assert len(out["logits"]) == images and (np.array(out["logits"]) == predict(model, test_images)).all()
    return model, params, test_images, out


def test_network_mode_board_equals_reference_and_the_traffic_count(tmp_path):
    """Network mode: the constants and program loaded once, then per image its pixels (staged while the image
    before runs), the RESULT of the image before and a RUN of 0 words starting it, a byte each way every 3
    cycles; the logits equal the integer reference and the bytes and requests on the line are
    :func:`boards.traffic.network_image_traffic`'s count. Two images: the second is staged while the first runs
    and fetches its RESULT (a third image would repeat that, at a third of the run)."""
    from boards.traffic import network_image_traffic

    model, params, _, out = run_network_board(tmp_path, byte_cycles=3, images=2)
    assert out["retried"] == out["repeated"] == 0
    traffic = network_image_traffic(model, params, max_payload=512)
    for name in ("requests", "bytes_to_device", "bytes_from_device"):
        assert out["images"][name] == 2 * traffic[name], name
    assert out["loading"]["bytes_to_device"] == traffic["loading"]["bytes_to_device"] + 6    # and a PING
    assert out["loading"]["requests"] == traffic["loading"]["requests"] + 1


@pytest.mark.slow
def test_network_mode_board_recovers_from_corrupted_bytes_both_ways(tmp_path):
    """A byte of the constants corrupted on the way in (the frame is NACKed and sent again) and a byte of
    the first image's RESULT reply corrupted on the way back (the host resyncs, settles the core and runs that
    image again, the blocking way)."""
    from boards.traffic import network_image_traffic, network_info
    from hw.protocol import DONE_FORMAT, FRAME_BYTES

    model = load(DIGITS)
    params = network_board_params(model)
    loading = network_image_traffic(model, params, 512)["loading"]["bytes_from_device"]     # the SESSION's ACK first
    # Reply frames' bytes: INFO (12 targets), ACK, NACK, DONE.
    info, ack, nack = FRAME_BYTES + len(network_info(model, params, 512).encode()), FRAME_BYTES, FRAME_BYTES + 2
    done = FRAME_BYTES + struct.calcsize(DONE_FORMAT)
    # An ACK of the constants; then the first logit byte of the first image's OUT frame (its RESULT's), after
    # the INFO, the constants' ACKs, the NACK, the resync's INFO, the LOAD sent again, the image's ACK, its
    # start's DONE and the second image's ACK.
    replies = [info + 10 * ack + 2, info + loading + nack + info + ack + ack + done + ack + 8]
    _, _, _, out = run_network_board(tmp_path, byte_cycles=1, images=2, corrupt=1_000, corrupt_replies=replies)
    assert out["retried"] == 2 and out["repeated"] == 1


def test_network_mode_board_resends_a_load_whose_length_was_damaged(tmp_path):
    """A bit of the second constants LOAD's length byte flipped on the way in: the bridge refuses the frame
    with NACK LENGTH (it tests the length before the checksum), and the host sends it again, as for a
    checksum (before, the host took LENGTH as final and the run ended)."""
    from boards.traffic import network_info
    from hw.network_program import load_beats
    from hw.protocol import FRAME_BYTES, SESSION_BYTES, encode_loads

    model = load(DIGITS)
    params = network_board_params(model)
    first = encode_loads(load_beats(model, params), network_info(model, params, 512))[0]
    # After the PING, the SESSION and the first LOAD: sync, type, LEN lo.
    len_hi = FRAME_BYTES + FRAME_BYTES + SESSION_BYTES + FRAME_BYTES + len(first) + 3
    _, _, _, out = run_network_board(tmp_path, byte_cycles=1, images=2, corrupt=len_hi)
    assert out["retried"] == 1 and out["repeated"] == 0


@pytest.mark.parametrize("mode", ["network", pytest.param("layers", marks=pytest.mark.slow)])
def test_a_board_reset_mid_run_ends_the_run_in_board_reset(mode, tmp_path):
    """The board's reset pulsed after the first image's logits arrived (the DUT's ``rst``, as its button: the core's
    state and the bridge's session cleared, INFO unchanged): the host's next DONE (network mode: the second image's
    start; layers mode: its first layer's RUN) states session 0, and the run ends in a BoardReset naming the reset
    and the fix, not in logits computed without the model."""
    if mode == "network":
        _, _, _, out = run_network_board(tmp_path, byte_cycles=1, images=2, reset_after=1)
    else:
        _, _, _, out = run_board("weights", tmp_path, byte_cycles=1, images=2, reset_after=1)
    assert out["logits"] == [] and out["error"]["type"] == "BoardReset", out
    assert "states session 0x00," in out["error"]["message"]
    assert "the board was reset or reconfigured" in out["error"]["message"]
    assert out["done_cycles"] and len(out["done_cycles"]) == 1     # the first image's logits came, then the reset


# A device that sends back each byte it receives (the board core's byte-stream ports, nothing behind them).
ECHO_VERILOG = """module echo(input clk, input rst, input rx_valid, input [7:0] rx_data, input rx_error,
            output reg tx_valid, input tx_ready, output reg [7:0] tx_data);
  always @(posedge clk)
    if (rst) tx_valid <= 0;
    else if (tx_valid && tx_ready) tx_valid <= 0;
    else if (rx_valid) begin tx_valid <= 1; tx_data <= rx_data; end
endmodule
"""


@pytest.mark.parametrize("byte_cycles", [1, 3])
def test_a_simulated_port_read_past_its_timeout_ends_at_its_timeout_at_once(byte_cycles, tmp_path):
    """``sim.board_cocotb.SimPort``: a read of a byte the device never sends returns short at the first of its
    checks (every ``byte_cycles`` cycles from its start) at which its timeout (200,000 cycles) has passed, as when
    the port stepped through every byte slot: waiting once across the slots in which nothing passes, it neither
    stops short of the timeout nor runs past it (nor waits for a change that never comes: the run has a
    deadline)."""
    from lcq_train.atomic import write_text_if_changed

    require_simulators("verilator")
    build_dir = BUILD_ROOT / "verilator-board-port-echo"
    build_dir.mkdir(parents=True, exist_ok=True)
    write_text_if_changed(build_dir / "echo.v", ECHO_VERILOG)
    built = build("verilator", [build_dir / "echo.v"], "echo", build_dir)
    results, read_timeout = tmp_path / "results.json", 200_000
    run_test(built, "sim.board_port_cocotb", tmp_path, timeout=120,
             data={"byte_cycles": byte_cycles, "read_timeout_cycles": read_timeout, "results": str(results)})
    out = json.loads(results.read_text())
    timeout = read_timeout + byte_cycles        # SimPort's: the read timeout plus the awaited byte's time
    checks = -(-timeout // byte_cycles)
    assert out["echo"] == [0x5A] and out["short"] == []
    assert out["cycles"] == checks * byte_cycles and out["ns"] == checks * byte_cycles * 10, out
