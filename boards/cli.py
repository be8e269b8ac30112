"""``lcq build``, ``lcq flash`` and ``lcq run``: the board verbs of the ``lcq`` command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from hw.cli import ARRAY_SIZE, MULTIPLY_COLS
from hw.residency import RESIDENCY
from lcq_train.arguments import (DefaultsHelpFormatter, FloatRange, counted, nonnegative_int, positive_float,
                                 positive_int)
from lcq_train.json_text import parse_json

from .boards import BOARDS, PLL_OUTPUT_MHZ, PLL_TOLERANCE, get_board
from .build import PLACERS, ROUTERS, file_sha256
from .flash import FLASH_TIMEOUT_S

MODES = ("network", "layers")   # `lcq build --mode`, the default first (hw.protocol.LinkMode's labels)
# `lcq build --timeout`'s default: ten times the slowest build measured here (ULX3S-85F ResNet-20 core, ~700 s),
# so that a hung tool ends the build in hours, not never.
BUILD_TIMEOUT_S = 7200.0
# `lcq run --timeout`'s default (a board answers within milliseconds), and with the report of an `lcq board-sim`
# ("simulated": true): the ACK of a 2 KB LOAD frame (ECP5) comes about 7 s after the frame is written at the ~60k
# cycles per second of the simulator's -O2 model on a busy machine (400k cycles at 60 MHz, 3 Mbaud).
READ_TIMEOUT_S = 2.0
SIMULATED_READ_TIMEOUT_S = 15.0


def add_parsers(sub) -> dict:
    """Register the board verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = DefaultsHelpFormatter
    boards = ", ".join(BOARDS)
    p = sub.add_parser("build", help="build the accelerator for a compiled model into a bitstream, with a "
                                     "timing and resource report", formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file (`lcq compile`)")
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--mhz", type=positive_float, metavar="F", help="target clock in MHz, > 0 (default: the board's)")
    p.add_argument("--rows", type=ARRAY_SIZE, metavar="R",
                   help=f"PE array rows, {ARRAY_SIZE.describe()} (default: chosen for the board)")
    p.add_argument("--cols", type=ARRAY_SIZE, metavar="C",
                   help=f"PE array columns, {ARRAY_SIZE.describe()} (default: chosen for the board)")
    p.add_argument("--mode", choices=MODES, default="network",
                   help="network: the whole network on the chip (image in, logits out); layers: the layer engine, "
                        "one convolution per request, the rest on the host")
    p.add_argument("--multiply-cols", type=MULTIPLY_COLS, metavar="M",
                   help="network mode: only the PEs of the first M columns multiply (the 8-bit edge layers run in "
                        "channel tiles of M; the other PEs only select, a third of the logic where PEs multiply in "
                        f"logic cells), {MULTIPLY_COLS.describe()}; 0: every column (default: a quarter of the "
                        "columns on ECP5 boards, whose PEs multiply in logic cells; every column on iCE40 boards)")
    p.add_argument("-o", "--output", metavar="DIR", help="build directory (default: build/<board>)")
    p.add_argument("--timeout", type=positive_float, default=BUILD_TIMEOUT_S, metavar="S",
                   help="stop the build (both attempts, elaboration included) after S seconds, > 0, naming the "
                        "stage it stopped in (default: %(default)g, 2 hours, ten times the slowest build measured)")
    p.add_argument("--seed", type=nonnegative_int, metavar="N",
                   help="nextpnr's placement seed, an integer >= 0, placed alone (default: --placements)")
    p.add_argument("--placements", type=positive_int, metavar="N",
                   help="place and route N times side by side, seeds 1 to N, and keep the fastest, N >= 1 "
                        "(default: 2 on ECP5 boards, at most one per core; 1 on iCE40, nextpnr's own seed)")
    p.add_argument("--placer", choices=PLACERS, help="nextpnr's placer (default: static on ECP5 boards, heap on "
                                                     "iCE40)")
    p.add_argument("--router", choices=ROUTERS, help="nextpnr's router (default: router2 on ECP5 boards, router1 on "
                                                     "iCE40)")
    p.add_argument("--force", action="store_true",
                   help="network mode: build the --rows x --cols core even where the fit estimate refuses it, to "
                        "see what Yosys and nextpnr say (a part too small fails in placement, naming the resource)")
    p.add_argument("--estimate", action="store_true",
                   help="print the fit estimate and the estimated images a second of every array tried and the one "
                        "chosen, then stop: no synthesis (network mode)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = sub.add_parser("flash", help="program a board with a built bitstream", formatter_class=fmt)
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--bitstream", metavar="PATH",
                   help="bitstream to program (default: the one in build/<board>/report.json)")
    p.add_argument("--sram", action="store_true",
                   help="configure the FPGA only (lost at power-off) instead of writing its flash")
    p.add_argument("--timeout", type=positive_float, default=FLASH_TIMEOUT_S, metavar="S",
                   help="stop the programmer after S seconds, > 0")

    p = sub.add_parser("run", help="classify test images or image files on a flashed board over its serial link",
                       formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file the board was built for")
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--port", required=True, metavar="PORT", help="serial port of the board, e.g. /dev/ttyUSB1")
    p.add_argument("--data", "--data-dir", dest="data_dir", metavar="DIR", help="dataset directory (not for digits)")
    p.add_argument("--inputs", metavar="NPZ", help="images (uint8, N x C x H x W) and labels (N integer classes) "
                                                  "from this .npz (numpy.savez(NPZ, images=..., labels=...)) instead "
                                                  "of the model's test set; needs numpy only, not the trainer's torch")
    p.add_argument("--image", nargs="+", dest="image_files", metavar="IMAGE",
                   help="classify these PNG or JPEG files (or directories of them) instead, as `lcq predict` "
                        "reads them (the model's grey or RGB, the middle cropped to its aspect ratio and resized), "
                        "a line each with the board's classes")
    p.add_argument("--images", type=positive_int, default=100, metavar="N", help="first N test images, N >= 1")
    p.add_argument("--report", metavar="FILE", help="the build's report.json (default: build/<board>/report.json): "
                                                     "clock, array and residency of the flashed design")
    p.add_argument("--timeout", type=positive_float, metavar="S",
                   help=f"serial read timeout in seconds, > 0 (default: {READ_TIMEOUT_S:g}; "
                        f"{SIMULATED_READ_TIMEOUT_S:g} with the report of an `lcq board-sim`, hundreds of times "
                        "slower than the board)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return {"build": cmd_build, "flash": cmd_flash, "run": cmd_run}


def cmd_build(args) -> int:
    from .build import BuildError
    from .report import format_table
    from .stages import BuildTimeout

    if args.seed is not None and args.placements not in (None, 1):
        print(f"lcq build: error: --seed {args.seed} places once and --placements {args.placements} tries seeds 1 to "
              f"{args.placements}: give one of them", file=sys.stderr)
        return 2
    board, out = get_board(args.board), Path(args.output or Path("build") / args.board)
    lo, hi = PLL_OUTPUT_MHZ[board.family]
    if args.mhz is not None and not lo <= args.mhz <= hi:
        raise ValueError(f"--mhz {args.mhz:g}: the {board.name}'s PLL makes {lo}..{hi} MHz; ask for a clock in that "
                         "range")
    if args.estimate:
        return print_estimate(args, board)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"-o {out} is a file: name the build directory (default: build/{board.name})")
    try:
        result = build_model(args.model, board, args.mhz, args.rows, args.cols, out, mode=args.mode, seed=args.seed,
                             placer=args.placer, router=args.router, placements=args.placements, timeout=args.timeout,
                             force=args.force, multiply_cols=args.multiply_cols)
    except BuildTimeout as e:
        print(f"lcq build: error: --timeout {args.timeout:g} s: {e}; give a longer --timeout if the tool was only "
              f"slow", file=sys.stderr)
        return 1
    except BuildError as e:
        print(f"lcq build: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lcq build: interrupted (Ctrl-C): the tools were stopped, no bitstream was made", file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def print_estimate(args, board) -> int:
    """``lcq build --estimate``: the arrays tried for the whole-network core, as :func:`boards.report.format_arrays`
    prints them (or one JSON object with ``--json``), and the one :func:`boards.fit.network_for_board` chooses;
    exit status 1 where none fits."""
    from compiler import format as model_format

    from .boards import uart_baud
    from .fit import FitError, describe_pace, logic_limit, network_arrays, network_for_board
    from .report import format_arrays

    if args.mode != "network":
        raise ValueError("--estimate is for the whole-network core (--mode network); the layer engine's choice is "
                         "printed as its build starts")
    model = model_format.load(args.model)
    clock_hz = (args.mhz or board.default_mhz) * 1e6
    limits = {name: board.resources.get(name, 0) for name in ("LUT4", "EBR", "SPRAM", "DSP")}
    limits["LUT4"] = logic_limit(board, network=True)
    result = {"model": str(args.model), "board": board.name, "device": board.device, "clock_mhz": clock_hz / 1e6,
              "baud": uart_baud(board, clock_hz), "limits": limits, "chosen": None, "error": None,
              "arrays": network_arrays(model, board, args.rows, args.cols, args.multiply_cols, clock_hz)}
    try:
        network = network_for_board(model, board, args.rows, args.cols, args.force, args.multiply_cols, clock_hz)
        result["chosen"] = {"rows": network.params.engine.rows, "cols": network.params.engine.cols,
                            "why": describe_pace(network, chosen=not (args.rows and args.cols))}
    except FitError as e:
        result["error"] = str(e)
    print(json.dumps(result) if args.json else format_arrays(result))
    return 0 if result["chosen"] else 1


def build_model(model_path, board, mhz: float | None = None, rows: int | None = None, cols: int | None = None,
                out: Path | None = None, mode: str = "layers", *, seed: int | None = None,
                placer: str | None = None, router: str | None = None, placements: int | None = None,
                timeout: float | None = BUILD_TIMEOUT_S,
                force: bool = False, multiply_cols: int | None = None) -> dict:
    """Bitstream of the accelerator for the compiled model at ``model_path`` on ``board`` in ``mode``
    (``"network"``: the whole-network core; ``"layers"``: the layer engine), in ``out`` (default
    ``build/<board>``), with nextpnr's ``seed``, ``placer``, ``router`` and ``placements``
    (:func:`boards.build.build`). Without
    ``mhz``, at the board's default clock and, where timing does not close there, once more at the
    Fmax reached. Returns the report (also in ``out/report.json``; ``mode``, and ``network`` or
    ``engine``: what ``lcq run`` needs to talk to the board); raises :class:`boards.build.BuildError`
    when a tool fails and :class:`boards.stages.BuildTimeout` when the whole call (elaboration and both
    attempts) outlasts ``timeout`` seconds (default :data:`BUILD_TIMEOUT_S`; None: no limit); ``force``: past
    the fit estimate (:func:`boards.top.accelerator_top`); FileExistsError where another build holds ``out``
    (:func:`lcq_train.run_lock.run_lock`). ``mode`` defaults to ``"layers"``, what the callers
    of this function (``lcq demo``, ``benchmarks/board_builds.py``) built before network mode existed;
    ``lcq build`` passes its ``--mode`` (default ``network``)."""
    from compiler import format as model_format

    from hw.residency import DESCRIPTION
    from lcq_train.run_lock import run_lock

    from .build import build, write_json
    from .fit import describe_pace
    from .report import missed_target
    from .top import accelerator_top

    deadline = None if timeout is None else time.monotonic() + timeout
    model = model_format.load(model_path)
    factory = accelerator_top(model, board, rows, cols, mode=mode, force=force, multiply_cols=multiply_cols, mhz=mhz)
    engine = factory.engine
    out = Path(out or Path("build") / board.name)
    if mode == "network":
        params = factory.params
        what = f"the whole-network core on a {params.engine.rows} x {params.engine.cols} array"
    else:
        what = f"a {engine.params.rows} x {engine.params.cols} engine ({DESCRIPTION[engine.resident]})"
    # One build at a time in a directory: another would remove and rewrite this one's bitstream under it.
    with run_lock(out, user="lcq build", option="-o"):
        print(f"building {what} for {board.name} ({board.device})...", file=sys.stderr, flush=True)
        if mode == "network":
            print(describe_pace(factory.network, chosen=not (rows and cols)), file=sys.stderr, flush=True)
        # report.json is written once, of the last attempt, complete: the first attempt's bitstream is gone once the
        # second starts, and a report of it left by a second attempt that fails would describe a missing file.
        options = dict(seed=seed, placer=placer, router=router, placements=placements, deadline=deadline,
                       write_report=False)
        result = build(factory, board, mhz, out, **options).to_dict()
        attempts = [{"pll_mhz": result["pll_mhz"], "fmax_mhz": result["fmax_mhz"]}]
        if mhz is None and result["fmax_mhz"] < result["pll_mhz"]:
            slower = closing_frequency(board, result["fmax_mhz"])
            miss = missed_target(result)
            print(f"Fmax {result['fmax_mhz']} MHz < {result['pll_mhz']} MHz"
                  + (f" (the path that misses it: {miss})" if miss else "") + f": building again at {slower} MHz",
                  file=sys.stderr, flush=True)
            result = build(factory, board, slower, out, **options).to_dict()
            attempts.append({"pll_mhz": result["pll_mhz"], "fmax_mhz": result["fmax_mhz"]})
        result.update(timing_met=result["fmax_mhz"] >= result["pll_mhz"], attempts=attempts, model=str(model_path),
                      mode=mode)
        if mode == "network":
            result["network"] = network_report(model, factory.network)
        else:
            result["engine"] = {"rows": engine.params.rows, "cols": engine.params.cols, "resident": engine.resident,
                                "estimate": engine.estimate, "params": engine.params.describe()}
        write_json(out / "report.json", result)
    return result


def network_report(model, network) -> dict:
    """What a build report records of a whole-network core (a :class:`boards.fit.BoardNetwork`): ``rows``,
    ``cols`` and ``multiply_cols`` (``lcq run`` recomputes the core with ``NetworkParams.for_model(model, rows,
    cols, multiply_cols=multiply_cols)``, which is deterministic), and, to read, the fit estimate, its link
    parameters, the engine's and vector unit's parameters, the bits of each memory and the pace estimated for it
    (:func:`boards.fit.image_pace`, images a second computing and on the link)."""
    params = network.params
    return {"estimate": network.estimate, "rows": params.engine.rows, "cols": params.engine.cols,
            "multiply_cols": params.engine.multiply_cols, "classes": model.num_classes,
            "addr_bits": params.addr_bits, "value_bits": params.value_bits, "target_bits": list(params.target_bits),
            "value_depth": params.value_depth, "program_depth": params.program_depth,
            "input_bits": params.input_bits, "engine": params.engine.describe(),
            "vector": params.vector.describe(), "memory_bits": params.memory_bits(), "pace": network.pace}


# What a network report records of the core, compared by `lcq run` with the core recomputed for its model.
NETWORK_FIELDS = ("classes", "value_depth", "program_depth", "input_bits", "value_bits", "addr_bits", "target_bits",
                  "engine", "vector")


def check_report_core(report_path, built: dict, what: str, recorded: dict, expected: dict, model_path, board,
                      build_args: str = "") -> None:
    """ValueError where the core that the report ``built`` records (``recorded``: fields, some of them dicts of
    parameters) is not ``expected``, the one ``lcq run`` recomputes for the model at ``model_path``: the board was
    built for another model (or by another version), whose buffers this model's constants and program would overrun
    or leave short while the link's widths, which the board's INFO states, agree. The error names ``what`` (the
    core), the first field that differs, the report's model and the fix. Fields that a report of an older build
    lacks are not compared."""
    expected = json.loads(json.dumps(expected))
    for field, need in expected.items():
        if field not in recorded:
            continue
        pairs = [(field, recorded[field], need)]
        if isinstance(need, dict) and isinstance(recorded[field], dict):
            pairs = [(f"{field}.{key}", recorded[field][key], value) for key, value in need.items()
                     if key in recorded[field]]
        for name, have, value in pairs:
            if have != value:
                source = f" ({built['model']})" if isinstance(built.get("model"), str) else ""
                raise ValueError(f"{report_path} is of a {what} for another model: its {name} is {have!r}, "
                                 f"{model_path} needs {value!r}: pass the model the board was built for{source}, or "
                                 f"build and flash for this one (`lcq build {model_path} --board {board.name}"
                                 f"{build_args}`, `lcq flash --board {board.name}`)")


# The clocks (MHz) `lcq build` writes as pll_mhz: what a PLL of the boards' families makes.
PLL_MHZ = FloatRange(min(lo for lo, _ in PLL_OUTPUT_MHZ.values()) * (1 - PLL_TOLERANCE),
                     max(hi for _, hi in PLL_OUTPUT_MHZ.values()) * (1 + PLL_TOLERANCE))


class Sha256:
    """The rule of a SHA-256 digest as :func:`boards.build.file_sha256` writes it: 64 hexadecimal digits."""

    @staticmethod
    def accepts(value) -> bool:
        return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())

    @staticmethod
    def describe() -> str:
        return "64 hexadecimal digits (a SHA-256)"


# What `lcq run` and `lcq flash` read of a build's report.json: (dotted field, rule of its value, what it is).
REPORT_FIELDS = {
    "board": (tuple(BOARDS), "the board the design was built for"),
    "pll_mhz": (PLL_MHZ, "the clock of the flashed design, which sets the baud rate"),
    "mode": (MODES, "what the flashed design runs: the whole network or one layer at a time"),
    "network.rows": (ARRAY_SIZE, "the PE array rows of the flashed network core"),
    "network.cols": (ARRAY_SIZE, "the PE array columns of the flashed network core"),
    "network.multiply_cols": (MULTIPLY_COLS, "the PE array columns that multiply in the flashed network core"),
    "engine.rows": (ARRAY_SIZE, "the PE array rows of the flashed engine"),
    "engine.cols": (ARRAY_SIZE, "the PE array columns of the flashed engine"),
    "engine.resident": (RESIDENCY, "what the flashed engine keeps loaded"),
    "bitstream": (str, "the bitstream file"),
    "bitstream_sha256": (Sha256, "the SHA-256 of the bitstream file as the build wrote it"),
}


REPORT_ADVICE = "pass the report.json that `lcq build` wrote for the flashed design (--report FILE), or build again"


def read_report(path, fields, advice: str = REPORT_ADVICE) -> dict:
    """The build report at ``path`` with each of ``fields`` (keys of :data:`REPORT_FIELDS`) present and
    valid; a ValueError naming the file, the field and what to do (``advice``: ``lcq run``'s by default)
    otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the build report {path} ({e}): {advice}") from None
    try:
        report = parse_json(text)
    except ValueError as e:
        raise ValueError(f"{path} is not a build report: {e}; {advice}") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not a build report: it holds a JSON {type(report).__name__}, not an "
                         f"object; {advice}")
    for field in fields:
        rule, meaning = REPORT_FIELDS[field]
        value = report
        for part in field.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{path} is not a build report of `lcq build`: field {field!r} ({meaning}) is "
                                 f"missing; {advice}")
            value = value[part]
        if rule is str:
            ok, allowed = isinstance(value, str) and bool(value), "a non-empty string"
        elif isinstance(rule, tuple):
            ok, allowed = value in rule, f"one of {', '.join(map(repr, rule))}"
        else:
            ok, allowed = rule.accepts(value), rule.describe()
        if not ok:
            raise ValueError(f"{path}: field {field!r} ({meaning}) must be {allowed}, not {value!r}; {advice}")
    return report


def cmd_run(args) -> int:
    from compiler import format as model_format
    from compiler.reference import predict
    from hw.protocol import LinkError

    from .boards import uart_baud
    from .fit import engine_for_board
    from .link_host import LinkHost, SerialPort
    from .runtime import BoardRunner, NetworkRunner

    board = get_board(args.board)
    report_path = Path(args.report or Path("build") / board.name / "report.json")
    if report_path.is_dir():        # (the build directory, say: its report.json is what to pass)
        inside = report_path / "report.json"
        given = "--report " if args.report else ""
        raise FileNotFoundError(f"{given}{report_path} is a directory, not a build report; " + (
            f"pass its report.json: --report {inside}" if inside.is_file() else
            "pass the report.json that `lcq build` wrote for the flashed design"))
    if report_path.exists() and not report_path.is_file():     # (reading a named pipe waits for a writer)
        raise FileNotFoundError(f"{report_path} is not a regular file (a named pipe or a device), not a build report: "
                                "pass the report.json that `lcq build` wrote for the flashed design")
    if not report_path.is_file():
        raise FileNotFoundError(f"no build report {report_path}: build and flash first (`lcq build MODEL --board "
                                f"{board.name}`, `lcq flash --board {board.name}`) or pass --report FILE (for a "
                                f"simulated board, `lcq board-sim` writes one in its build directory and prints it "
                                f"in its `lcq run` command)")
    # A report without a mode is of a build before network mode existed: layers mode.
    mode = read_report(report_path, ("mode",))["mode"] if "mode" in read_report(report_path, ()) else "layers"
    array = ("network.rows", "network.cols") if mode == "network" else ("engine.rows", "engine.cols",
                                                                        "engine.resident")
    # A network report without multiply_cols is of a build before PEs multiplied in some columns only: in all.
    if mode == "network" and "multiply_cols" in read_report(report_path, ("network.rows",))["network"]:
        array += ("network.multiply_cols",)
    built = read_report(report_path, ("pll_mhz", *array, "board"))
    if built["board"] != board.name:
        raise ValueError(f"{report_path} is the report of a build for the {built['board']}, not for --board "
                         f"{board.name}: pass --board {built['board']}, or the report of the {board.name}'s build "
                         "with --report FILE")
    lo, hi = PLL_OUTPUT_MHZ[board.family]
    if not lo * (1 - PLL_TOLERANCE) <= built["pll_mhz"] <= hi * (1 + PLL_TOLERANCE):
        raise ValueError(f"{report_path}: field 'pll_mhz' ({built['pll_mhz']}) is outside the {lo}..{hi} MHz that "
                         f"the {board.name}'s PLL makes; {REPORT_ADVICE}")
    positive_int.check(args.images, "--images")
    if args.timeout is None:
        args.timeout = SIMULATED_READ_TIMEOUT_S if built.get("simulated") is True else READ_TIMEOUT_S
    positive_float.check(args.timeout, "--timeout")
    model = model_format.load(args.model)
    if mode == "network":
        from hw.network_params import NetworkParams

        network = built["network"]
        if network.get("multiply_cols", 0) > network["cols"]:
            raise ValueError(f"{report_path}: field 'network.multiply_cols' ({network['multiply_cols']}) exceeds "
                             f"'network.cols' ({network['cols']}); {REPORT_ADVICE}")
        params = NetworkParams.for_model(model, network["rows"], network["cols"],
                                         multiply_cols=network.get("multiply_cols", 0))
        report = network_report(model, SimpleNamespace(params=params, estimate=None, pace=None))
        check_report_core(report_path, built, f"{params.engine.rows} x {params.engine.cols} whole-network core",
                          network, {field: report[field] for field in NETWORK_FIELDS}, args.model, board)
    else:
        engine = engine_for_board(model, board, built["engine"]["rows"], built["engine"]["cols"])
        if engine.resident != built["engine"]["resident"]:
            from hw.residency import DESCRIPTION

            source = f" ({built['model']})" if isinstance(built.get("model"), str) else ""
            raise ValueError(f"{report_path} is of a {engine.params.rows} x {engine.params.cols} engine with "
                             f"{DESCRIPTION[built['engine']['resident']]}, but {args.model} on it needs "
                             f"{DESCRIPTION[engine.resident]}: pass the model the board was built for{source}, or "
                             f"build and flash for this one (`lcq build {args.model} --board {board.name} --mode "
                             f"layers`, `lcq flash --board {board.name}`)")
        check_report_core(report_path, built, f"{engine.params.rows} x {engine.params.cols} engine", built["engine"],
                          {"params": engine.params.describe()}, args.model, board, " --mode layers")
    if args.image_files and args.inputs:
        raise ValueError("--image and --inputs both name the images to run: give one of them")
    files = None
    if args.image_files:
        from compiler.image_predictions import read_images
        from lcq_train.image_file import image_files

        files = image_files(args.image_files)
        (images, notes), labels = read_images(model, files), None
    else:
        images, labels = _test_images(args, model)
    baud = uart_baud(board, built["pll_mhz"] * 1e6)
    # Progress on a terminal only (as the trainer's): in a log, carriage returns join its lines into one.
    show_progress = None if args.json or not sys.stderr.isatty() else (
        lambda i, n: print(f"\r{i}/{n} images", end="", file=sys.stderr, flush=True))
    end_progress = "\n" if show_progress else ""
    try:
        with SerialPort(args.port, baud, timeout=args.timeout) as port:
            host = LinkHost(port)
            if mode == "network":
                runner = NetworkRunner(host, model, params)
            else:
                runner = BoardRunner(host, model, engine.params, engine.resident)
            result = runner.classify(images, labels, show_progress)
    except LinkError as e:
        print(f"{end_progress}lcq run: error: {e}\nlcq run: the link was --port {args.port} at {baud:,} baud (the "
              f"{board.name}'s UART at the {built['pll_mhz']:g} MHz clock of {report_path}), --timeout "
              f"{args.timeout:g} s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{end_progress}lcq run: interrupted (Ctrl-C): the port was closed; no results", file=sys.stderr)
        return 130
    reference = predict(model, images).argmax(axis=1)
    repeated = "images_repeated" if mode == "network" else "layers_repeated"
    out = {"board": board.name, "port": args.port, "mode": mode, "baud": baud, "images": len(images),
           "accuracy": result.accuracy, "images_per_second": result.images_per_second,
           "seconds": result.seconds, "load_seconds": result.load_seconds, "frames_resent": host.retried,
           repeated: runner.repeated,
           "equal_to_reference": int((result.predictions == reference).sum())}
    if files:
        from compiler.image_predictions import describe, prediction

        out["predictions"] = [prediction(model, path, logits, note, min(3, model.num_classes))
                              for path, logits, note in zip(files, result.logits, notes)]
    if args.json:
        print(json.dumps(out))
    else:
        print(end_progress, end="", file=sys.stderr)
        for record in out.get("predictions", ()):
            print(describe(record))
        n = out["images"]
        top1 = "" if out["accuracy"] is None else f", top-1 {out['accuracy']:.2f}%"
        print(f"{board.name}: {counted(n, 'image')}{top1}, "
              f"{out['images_per_second']:.2f} images/s at {baud:,} baud (constants loaded in "
              f"{out['load_seconds']:.2f} s, {counted(host.retried, 'frame')} resent, "
              f"{counted(runner.repeated, 'image run' if mode == 'network' else 'layer run')} repeated); "
              f"{out['equal_to_reference']} of {counted(n, 'prediction equals', 'predictions equal')} the integer "
              "reference")
    return 0 if out["equal_to_reference"] == out["images"] else 1


def _test_images(args, model) -> tuple:
    """The first ``--images`` images and labels of ``--inputs`` or, without it, of the model's test set."""
    if args.inputs is None:
        from lcq_train.data import load_dataset_for

        data = load_dataset_for(model.source.get("dataset", "digits"), args.data_dir, model.input.shape,
                                model.source.get("classes"))
        return data.test_x[:args.images].numpy(), data.test_y[:args.images].numpy()
    from .inputs import read_inputs

    return read_inputs(args.inputs, args.images, model.input.shape, model.num_classes)


def closing_frequency(board, fmax_mhz: float) -> float:
    """The PLL frequency (in 0.25 MHz steps, at most 97% of ``fmax_mhz``, that the board's PLL
    makes) with the fastest host link (:func:`boards.boards.uart_baud`), the fastest of those:
    the link, not the clock, bounds images per second. Frequencies below 80% of the fastest
    one are not considered."""
    from .boards import uart_baud
    from .clock import pll_plan

    top = int(fmax_mhz * 0.97 * 4) / 4
    best = None
    for step in range(int(top * 4), 3, -1):
        mhz = step / 4
        if best is not None and mhz < 0.8 * best[1]:
            break
        try:
            if pll_plan(board, mhz).achieved_hz / 1e6 > fmax_mhz:
                continue
            baud = uart_baud(board, mhz * 1e6)
        except ValueError:
            continue
        if best is None or baud > best[0]:
            best = (baud, mhz)
    if best is None:
        raise ValueError(f"no PLL frequency below {fmax_mhz} MHz on {board.name}")
    return best[1]


def check_recorded_bitstream(report: Path, board, bitstream: str | None = None) -> str:
    """The bitstream the build report ``report`` records (``bitstream``: that one only, when the report records
    it), checked: a ValueError when the report is of a build for another board, or when the file on disk is not
    the one the build wrote (its SHA-256 differs: a build stopped while writing it). ``bitstream`` when the report
    records another file."""
    built = read_report(report, ("bitstream", "bitstream_sha256", "board"),
                        f"build again with `lcq build MODEL --board {board.name}`, which writes it anew")
    recorded = built["bitstream"]
    if bitstream is not None and Path(recorded).name != Path(bitstream).name:
        return bitstream
    bitstream = recorded if bitstream is None else bitstream
    if built["board"] != board.name:
        raise ValueError(f"{report} is the report of a build for the {built['board']}, not for --board "
                         f"{board.name}: build for the {board.name} with `lcq build MODEL --board {board.name}`, "
                         f"or pass the --board it was built for")
    if Path(bitstream).is_file() and file_sha256(bitstream) != built["bitstream_sha256"].lower():
        raise ValueError(f"{bitstream} is not the bitstream {report} records (its SHA-256 differs): a build was "
                         f"stopped while writing it, or it changed since. Build again with `lcq build MODEL "
                         f"--board {board.name}`")
    return bitstream


def cmd_flash(args) -> int:
    from .flash import BitstreamRefused, FlashError, flash

    board = get_board(args.board)
    bitstream = args.bitstream
    if bitstream is None:
        report = Path("build") / board.name / "report.json"
        if not report.is_file():
            raise FileNotFoundError(f"no {report}: build first with `lcq build MODEL --board {board.name}` "
                                    f"or pass --bitstream PATH")
        bitstream = check_recorded_bitstream(report, board)
    elif (Path(bitstream).parent / "report.json").is_file():
        bitstream = check_recorded_bitstream(Path(bitstream).parent / "report.json", board, bitstream)
    try:
        print(flash(board, bitstream, args.sram, args.timeout))
    except BitstreamRefused:        # refused input (status 2, said by lcq.cli), not a failed programmer
        raise
    except FlashError as e:
        print(f"lcq flash: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lcq flash: interrupted (Ctrl-C): the programmer was stopped; flash again", file=sys.stderr)
        return 130
    print(f"programmed {board.name} with {bitstream}", file=sys.stderr)
    return 0
