"""The real serial path: ``lcq run`` through pyserial against ``lcq board-sim``, a simulated board that the
operating system sees as a serial device (a pseudo-terminal bridged bit by bit to the UART pins of the
board's own top in Verilator, at the board's baud rate).

``lcq board-sim`` runs in a subprocess as a user runs it (the digits CNN's whole network on the ULX3S-12F:
the array ``lcq build`` picks for it (4 x 4) at the board's 60 MHz, 3 Mbaud), waited for (with a deadline)
until its device path exists, and is stopped with SIGTERM at the end. The quick test pings it through
pyserial with a byte corrupted each way; the ``slow`` one (about 3 minutes with the Verilator build
cached, 5 without) is the whole path: the unmodified ``lcq run`` classifying images with a byte corrupted
each way, then, on the same board (its constants still loaded), the host runtime through
:class:`boards.link_host.SerialPort` for the logits themselves, which ``lcq run`` does not print.
"""

import contextlib

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")
pytest.importorskip("serial", reason="the serial path needs pyserial: pip install -e '.[hw]'")

from compiler.format import load  # noqa: E402
from compiler.reference import predict  # noqa: E402
from simulators import BUILD_ROOT, require_simulators  # noqa: E402

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"
BOARD = "ulx3s-12f"
BUILD_S = 900           # the first Verilator build of the board's top (about 2 minutes on 2 busy cores)
RUN_S = 600             # the whole exchange; the board stops by itself after it
# The port timeout of `lcq run`: the simulation is about 600x slower than the board, so the ACK of a
# 2 KB LOAD frame takes seconds, not milliseconds.
PORT_TIMEOUT_S = 15
LCQ = [sys.executable, "-m", "lcq.cli"]
CORRUPT_TO_BOARD = 1000     # a byte of the first constants LOAD frame: the bridge NACKs it, the host resends


def first_logit_byte(model) -> int:
    """Index of the first logit byte of the first image's OUT frame among the bytes the board sends, when
    the constants' first LOAD frame was NACKed once: INFO, NACK, the constants' ACKs, the first image's pixels'
    ACKs, the DONE of its start, the second image's pixels' ACKs (staged while the first runs), then the OUT
    frame of the first image's RESULT."""
    from boards.boards import LINK_PAYLOAD, get_board
    from boards.fit import network_for_board
    from boards.traffic import network_image_traffic, network_info
    from hw.protocol import DONE_FORMAT, FRAME_BYTES, OUT_HEAD_BYTES

    board = get_board(BOARD)
    params = network_for_board(model, board).params
    payload = LINK_PAYLOAD[board.family]
    traffic = network_image_traffic(model, params, payload)
    info = FRAME_BYTES + len(network_info(model, params, payload).encode())
    nack = FRAME_BYTES + 2
    pixel_acks = FRAME_BYTES * (traffic["requests"] - 2)       # each image: its LOAD frames, RESULT and start
    start_done = FRAME_BYTES + struct.calcsize(DONE_FORMAT)
    return (info + nack + traffic["loading"]["bytes_from_device"] + pixel_acks + start_done + pixel_acks
            + FRAME_BYTES + OUT_HEAD_BYTES)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float, log: Path) -> str:
    """The first line of ``path`` once it exists; fails when ``proc`` ends first or ``seconds`` pass."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            pytest.fail(f"lcq board-sim ended (exit {proc.returncode}) before its port existed:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no port from lcq board-sim within {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


def status_when(build_dir: Path, ready, seconds: float = 10) -> dict:
    """The board's ``status.json`` once ``ready(status)`` (it is rewritten every 0.25 s), or as it is
    after ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        status = json.loads((build_dir / "status.json").read_text())
        if ready(status) or time.monotonic() > end:
            return status
        time.sleep(0.1)


@contextlib.contextmanager
def board_sim(tmp_path, *extra: str):
    """``(port, build directory)`` of an ``lcq board-sim`` of the digits CNN on :data:`BOARD` with ``extra``
    arguments, running for the block (at most :data:`RUN_S` seconds)."""
    require_simulators("verilator")
    build_dir = BUILD_ROOT / f"board-sim-digits-{BOARD}-network"
    port_file, log = tmp_path / "port", tmp_path / "board-sim.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(LCQ + ["board-sim", str(DIGITS), "--board", BOARD, "--seconds", str(RUN_S),
                                       "--port-file", str(port_file), "--build-dir", str(build_dir), *extra],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_for(port_file, proc, BUILD_S, log)
        assert port.startswith("/dev/")
        yield port, build_dir
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (lcq board-sim then kills its simulator's process group and exits with the shell's status for
    SIGTERM, 143), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            raise


def test_ping_through_a_serial_device_recovers_a_corrupted_byte_each_way(tmp_path):
    """Through pyserial on the pseudo-terminal: the first PING is corrupted on its way in (the bridge NACKs
    it), the INFO answering the second on its way out (its checksum fails); the host resynchronizes once and
    the third PING's INFO states the network core that ``lcq board-sim``'s report describes: every byte the host
    expects of that core (:func:`boards.traffic.network_info`), its build digest included."""
    from boards.boards import get_board
    from boards.fit import network_for_board
    from boards.link_host import LinkHost, SerialPort
    from boards.traffic import network_info
    from hw.network_params import build_digest
    from hw.protocol import FRAME_BYTES, LinkMode

    # The first PING's checksum (bytes 4, 5), and a payload byte of the INFO after the NACK (8 bytes).
    to_board, from_board = 4, FRAME_BYTES + 2 + 6
    with board_sim(tmp_path, "--corrupt-to-board", str(to_board), "--corrupt-from-board", str(from_board),
                   "--quick-build") as (port, build_dir):      # (a few frames: the -O0 build, in half the time)
        report = json.loads((build_dir / "report.json").read_text())
        assert report["simulated"] and report["mode"] == "network" and report["pll_mhz"] == 60.0
        with SerialPort(port, 3_000_000, timeout=3) as serial_port:
            host = LinkHost(serial_port)
            info = host.info
        status = status_when(build_dir, lambda s: s["corrupted_from_board"])
    assert host.resyncs == 1
    assert (info.mode, info.rows, info.cols, info.classes, info.max_payload) == (
        LinkMode.NETWORK, report["network"]["rows"], report["network"]["cols"], 10, 2048)
    model = load(DIGITS)
    params = network_for_board(model, get_board(BOARD)).params     # what lcq board-sim builds by default
    assert info == network_info(model, params, 2048) and info.build == build_digest(params) != 0
    assert status["corrupted_to_board"] == [to_board] and status["corrupted_from_board"] == [from_board]
    assert status["framing_errors"] == 0
    user_cflags = (build_dir / "Vtop.mk").read_text().split("VM_USER_CFLAGS = \\\n")[1].split("\n\n")[0]
    assert user_cflags.split() == ["-O0", "\\"], user_cflags          # --quick-build: the test benches' -O0


@pytest.mark.slow
def test_lcq_run_through_a_serial_device_recovers_a_corrupted_byte_each_way(tmp_path):
    """``lcq run`` classifies 2 test images through pyserial on the simulated board's pseudo-terminal, equal
    to the integer reference, although a byte to the board (in a constants LOAD: NACKed, resent) and a byte
    from it (in the first image's logits: the host resynchronizes and runs that image again) were corrupted
    on the line; then 3 images through ``SerialPort`` give logits equal to ``compiler.reference.predict``."""
    from boards.link_host import LinkHost, SerialPort
    from boards.runtime import NetworkRunner
    from hw.network_params import NetworkParams
    from lcq_train.data import load_dataset

    model = load(DIGITS)
    corrupt_from_board = first_logit_byte(model)
    with board_sim(tmp_path, "--corrupt-to-board", str(CORRUPT_TO_BOARD),
                   "--corrupt-from-board", str(corrupt_from_board)) as (port, build_dir):
        run = subprocess.run(LCQ + ["run", str(DIGITS), "--board", BOARD, "--port", port, "--images", "2",
                                    "--report", str(build_dir / "report.json"), "--timeout", str(PORT_TIMEOUT_S),
                                    "--json"], cwd=ROOT, capture_output=True, text=True, timeout=RUN_S)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout)
        assert out["mode"] == "network" and out["baud"] == 3_000_000 and out["images"] == 2
        assert out["equal_to_reference"] == 2
        assert out["frames_resent"] >= 1 and out["images_repeated"] >= 1    # the NACKed LOAD, the image run again
        status = status_when(build_dir, lambda s: s["corrupted_from_board"])
        assert status["corrupted_to_board"] == [CORRUPT_TO_BOARD]
        assert status["corrupted_from_board"] == [corrupt_from_board]
        assert status["framing_errors"] == 0

        # The same board, its constants still loaded (assumed so: a new session, no model sent): the logits
        # themselves, through pyserial.
        data = load_dataset("digits")
        images = data.test_x[2:5].numpy()
        report = json.loads((build_dir / "report.json").read_text())
        network = report["network"]     # the core as `lcq run` rebuilds it from the report (boards.cli.cmd_run)
        params = NetworkParams.for_model(model, network["rows"], network["cols"],
                                         multiply_cols=network.get("multiply_cols", 0))
        with SerialPort(port, out["baud"], timeout=PORT_TIMEOUT_S) as serial_port:
            runner = NetworkRunner(LinkHost(serial_port), model, params)
            runner.assume_loaded()
            result = runner.classify(images)
        assert (result.logits == predict(model, images)).all()
        assert np.array_equal(result.predictions, predict(model, images).argmax(axis=1))


def test_the_port_files_go_when_the_board_stops(tmp_path, monkeypatch):
    """A stopped board (Ctrl-C, SIGTERM, --seconds passed) left ``port`` and ``--port-file`` naming its
    pseudo-terminal, which the system then gives to the next program that opens one (a terminal): a script
    waiting for the port file, or an ``lcq run --port $(cat port)``, would take it for a live board. Both are
    removed when the board stops; a port file that another board has since rewritten is left alone."""
    import sim.board_pty
    from boards.boards import get_board

    port_file = tmp_path / "announce" / "port"
    board = sim.board_pty.BoardSim(DIGITS, get_board("icebreaker"), build_dir=tmp_path / "board",
                                   port_file=port_file)
    board.make_build_dir()
    board.check_port_file()
    announced = []

    def running(built, testbench, test_dir, *, data, timeout):     # the testbench: the pty, then Ctrl-C
        Path(data["port_file"]).write_text("/dev/pts/77\n")
        end = time.monotonic() + 10
        while not announced and time.monotonic() < end:
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(sim.board_pty, "run_test", running)
    with pytest.raises(KeyboardInterrupt):
        board.run(5, announced.append)
    assert announced == ["/dev/pts/77"]
    assert not port_file.exists() and not board.own_port_file.exists()

    def overwritten(built, testbench, test_dir, *, data, timeout):
        Path(data["port_file"]).write_text("/dev/pts/77\n")
        end = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < end:
            time.sleep(0.01)
        port_file.write_text("/dev/pts/78\n")                         # (another board's, on the same file)

    monkeypatch.setattr(sim.board_pty, "run_test", overwritten)
    board.run(5)
    assert port_file.read_text() == "/dev/pts/78\n" and not board.own_port_file.exists()


def test_ctrl_c_of_board_sim_says_that_it_stopped(tmp_path, capsys):
    """Ctrl-C of a running ``lcq board-sim`` raises a KeyboardInterrupt with no text; it printed
    ``lcq board-sim: `` and nothing after it. It now says that the board stopped, as SIGTERM's ``stopped by
    SIGTERM`` does, with the shell's status 130."""
    from types import SimpleNamespace

    import sim.board_pty
    from boards.boards import get_board
    from lcq_train.stop_signals import Stopped

    def running(seconds, on_port):
        on_port("/dev/pts/77")
        raise stop

    fake = SimpleNamespace(build=lambda: None, report={"network": {"rows": 1, "cols": 1}}, clk_hz=36e6,
                           baud=3_000_000, build_dir=tmp_path, run=running)
    args = SimpleNamespace(mode="network", model=str(DIGITS), seconds=5.0)
    for stop, status, said in ((KeyboardInterrupt(), 130, "lcq board-sim: stopped (Ctrl-C)"),
                               (Stopped(signal.SIGTERM), 143, "lcq board-sim: stopped by SIGTERM")):
        assert sim.board_pty._build_and_run(fake, get_board("ulx3s-12f"), args) == status
        assert capsys.readouterr().err.splitlines()[-1] == said


def test_board_sim_takes_the_multiply_cols_of_lcq_build(tmp_path):
    """`lcq build --multiply-cols M` builds a core that multiplies in M columns; `lcq board-sim`, which says it
    simulates the design `lcq build` builds, had no --multiply-cols, so such a build could not be simulated (its
    report, passed to `lcq run`, was refused against the simulated board's core). It now takes it, 0 (every
    column) included, and leaves the board's default without it."""
    import argparse

    import sim.board_pty
    from boards.boards import get_board

    board, parser = get_board("ulx3s-85f"), argparse.ArgumentParser()
    sim.board_pty.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["board-sim", str(DIGITS), "--board", board.name, "--rows", "2", "--cols", "4",
                              "--multiply-cols", "0"])
    assert args.multiply_cols == 0
    for given, expected in ((None, 1), (0, 0), (2, 2)):
        made = sim.board_pty.BoardSim(DIGITS, board, rows=2, cols=4, multiply_cols=given, build_dir=tmp_path)
        assert made.factory.network.params.engine.multiply_cols == expected


def test_board_sim_says_when_its_seconds_have_passed(tmp_path, capsys):
    """A board that stopped by itself after --seconds exited 0 without a word, its port gone: an `lcq run` on it
    then failed with nothing on board-sim's side to say why. It now says that --seconds passed and the board
    stopped."""
    from types import SimpleNamespace

    import sim.board_pty
    from boards.boards import get_board

    fake = SimpleNamespace(build=lambda: None, report={"network": {"rows": 1, "cols": 1}}, clk_hz=36e6,
                           baud=3_000_000, build_dir=tmp_path, run=lambda seconds, on_port: on_port("/dev/pts/77"))
    args = SimpleNamespace(mode="network", model=str(DIGITS), seconds=15.0)
    assert sim.board_pty._build_and_run(fake, get_board("icebreaker"), args) == 0
    assert capsys.readouterr().err.splitlines()[-1] == ("lcq board-sim: stopped: --seconds 15 passed (start it "
                                                        "again for more, with a larger --seconds)")
