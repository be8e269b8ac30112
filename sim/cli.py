"""``lcq sim`` and ``lcq board-sim``: the simulation verbs of the ``lcq`` command.

``lcq board-sim`` (:mod:`sim.board_pty`) runs a board's whole design behind a pseudo-terminal serial port
for ``lcq run``; the rest of this docstring is ``lcq sim``.

``lcq sim MODEL [--layer N | --mode layers] [--board NAME] [--netlist ice40|ecp5 [--x-init]]
[--simulator icarus|verilator] [--images N] [--timeout S] [--json]`` runs the
generated Verilog in cocotb on test images (the model's dataset, or ``--random``) and compares
with the integer reference.

- Network mode (the default, :mod:`sim.network_run`): the whole model on the whole-network core
  (:class:`hw.network.NetworkCore`), loaded once, then per image only the pixels in and the logits
  out; per image the cycles, MACs per cycle and mismatches of the logits and of every step's
  output tensor (probed in the data memories as the core writes them), per step its cycles.
- Layer mode (``--layer N``, the debug path, :mod:`sim.engine_run`): layer N alone on the layer
  engine, fed by the reference; cycles, MACs per cycle and mismatches of that layer. Layer
  numbers are the rows of ``lcq report`` (0 = first convolution).

- ``--mode layers`` without ``--layer``: every layer on the layer engine, image by image.
- Board and netlist (:mod:`sim.netlist`): ``--board NAME`` simulates the core ``lcq build`` builds for that
  board (array and residency as :mod:`boards.fit` picks them, ``--rows``/``--cols`` constraining it;
  elaborated with the board's platform: SPRAM weights on the UP5K, logic multipliers on ECP5);
  ``--netlist ice40|ecp5`` simulates that core's post-synthesis netlist (Yosys, cached in
  ``build/netlist``) with the vendor cell models, in the same testbench (default board: icebreaker or
  ulx3s-85f); ``--x-init`` (Icarus, with ``--netlist``) starts the cells' flip-flops and RAMs at X. The JSON
  report then adds ``board``, ``netlist`` (the family or null), ``netlist_cells`` ({cell type: count}),
  ``synth_seconds`` (Yosys's run, when the netlist was made), ``netlist_cached`` and ``x_init``.

One ``lcq sim`` at a time works in a build directory (:func:`lcq_train.run_lock.run_lock`): a second one there
is refused at once. Each simulator command (a build step, the run) gets ``--timeout`` seconds and is killed with its
process group past them (:mod:`sim.runner`); ``--stall`` and ``--backpressure`` are below 1,
where the core would never finish. The exit status is 1 on any mismatch; SIGTERM or SIGHUP stops the
simulation (its simulator killed) with the shell's status for the signal (143, 129).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from compiler import format as model_format
from hw.cli import DEFAULT_COLS, DEFAULT_ROWS, array_args, engine_params
from lcq_train.arguments import (DefaultsHelpFormatter, FloatRange, IntRange, counted, nonnegative_int,
                                 positive_float, positive_int)
from lcq_train.run_lock import run_lock
from lcq_train.stop_signals import Stopped, stop_signals

from .board_pty import add_parsers as board_sim_parsers
from .engine_run import engine_build, simulate_model
from .network_run import network_build, simulate_network
from .netlist import FAMILIES, NetlistError
from .runner import DEFAULT_TIMEOUT_S, SimulationFailed, check_build_dir, deadline, unavailable_reason


class StallProbability(FloatRange):
    """A per-cycle probability in [0, 1): at 1 the load stream would stall (or the output
    stay unready) on every cycle and the simulation would never end."""

    def __init__(self):
        super().__init__(0.0, 1.0)

    def describe(self) -> str:
        return "a number in [0, 1)"

    def accepts(self, value) -> bool:
        return super().accepts(value) and value < 1.0


STALL = StallProbability()
SEED = IntRange(0, 2**32 - 1)       # numpy's generator and cocotb's seed
MAX_RANDOM_IMAGES = 10_000          # --random --images: the largest test set's size (CIFAR-10)
MAX_RANDOM_PIXELS = MAX_RANDOM_IMAGES * 3 * 32 * 32     # and its pixels: a bound for a model of larger images


def add_parsers(sub) -> dict:
    """Register the simulation verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = DefaultsHelpFormatter
    p = sub.add_parser("sim", help="run the generated Verilog in cocotb against the integer reference",
                       description="Run the generated Verilog in cocotb against the integer reference. By default "
                                   "the whole network runs on the network core (image in, logits out; every "
                                   "step's output probed and compared); --layer N is the debug path: one layer "
                                   "alone on the layer engine.",
                       formatter_class=fmt)
    array_args(p)
    p.set_defaults(rows=None, cols=None, multiply_cols=None)
    for action in p._actions:
        if action.dest in ("rows", "cols"):
            action.help += (f" (default: {DEFAULT_ROWS if action.dest == 'rows' else DEFAULT_COLS}; with --board "
                            f"or --netlist, as `lcq build` picks for the board)")
        elif action.dest == "multiply_cols":
            action.help += " (default: 0; with --board or --netlist, as `lcq build` picks for the board)"
    p.add_argument("--layer", type=nonnegative_int, metavar="N",
                   help="debug path: only layer N, on the layer engine, fed by the reference (default: network "
                        "mode, the whole model on the network core); N >= 0, a row of `lcq report`")
    p.add_argument("--mode", choices=("network", "layers"),
                   help="network: the whole model on the network core; layers: the layer engine (every layer, "
                        "or --layer N) (default: network, layers with --layer)")
    from boards.boards import BOARDS

    p.add_argument("--board", metavar="NAME", choices=BOARDS,
                   help=f"simulate the core `lcq build` builds for this board (its array, residency and "
                        f"platform primitives), one of: {', '.join(BOARDS)}; with --netlist default icebreaker "
                        f"(ice40) or ulx3s-85f (ecp5)")
    p.add_argument("--netlist", choices=FAMILIES,
                   help="simulate the board core's post-synthesis netlist (Yosys synth_ice40/synth_ecp5, cached "
                        "in build/netlist) with Yosys's cell models, in the same testbench")
    p.add_argument("--x-init", action="store_true",
                   help="with --netlist and --simulator icarus: the cell models' flip-flops and RAMs start at X "
                        "(a design that depends on power-up values then fails)")
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator",
                   help="verilator compiles the design (fast runs); icarus interprets it (quick to start)")
    p.add_argument("--images", type=positive_int, default=1, metavar="N",
                   help=f"test images to run, N >= 1 (at most the test set's; with --random, {MAX_RANDOM_IMAGES})")
    p.add_argument("--data", "--data-dir", dest="data_dir", metavar="DIR",
                   help="dataset directory (not needed for digits or --random)")
    p.add_argument("--random", action="store_true", help="random uint8 images instead of the test set")
    p.add_argument("--stall", type=STALL, default=0.0, metavar="P",
                   help="probability of a load (and image) stream stall per cycle, in [0, 1)")
    p.add_argument("--backpressure", type=STALL, default=0.0, metavar="P",
                   help="probability that the output is not ready in a cycle, in [0, 1)")
    p.add_argument("--seed", type=SEED, default=0, help=f"random seed, {SEED.describe()}")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="seconds each simulator command (build step, run) may take before it is killed")
    p.add_argument("--build-dir", metavar="DIR", help="simulation build directory (default: build/sim/...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return {"sim": cmd_sim, **board_sim_parsers(sub)}


def _images(args, model) -> np.ndarray:
    positive_int.check(args.images, "--images")
    if args.random:
        if args.images > MAX_RANDOM_IMAGES:
            raise ValueError(f"--images {args.images} with --random: at most {MAX_RANDOM_IMAGES} random images a run "
                             "(the largest test set's size)")
        pixels = int(np.prod(model.input.shape))
        if args.images * pixels > MAX_RANDOM_PIXELS:
            most = MAX_RANDOM_PIXELS // pixels
            raise ValueError(f"--images {args.images} with --random: at most {most or 'no'} random "
                             f"images of this model's {' x '.join(map(str, model.input.shape))} input a run (at "
                             f"most {MAX_RANDOM_PIXELS:,} random pixels, the largest test set's)")
        rng = np.random.default_rng(args.seed)
        return rng.integers(0, 256, size=(args.images, *model.input.shape), dtype=np.uint8)
    from lcq_train.data import load_dataset_for

    dataset = model.source.get("dataset", "digits")
    data = load_dataset_for(dataset, args.data_dir, model.input.shape, model.source.get("classes"))
    if args.images > len(data.test_x):
        raise ValueError(f"--images {args.images}: the {dataset} test set has {len(data.test_x)} images; pass at "
                         f"most that many, or --random for random images")
    return np.ascontiguousarray(data.test_x[:args.images].numpy())


def cmd_sim(args) -> int:
    model = model_format.load(args.model)
    convs = model.convs
    on_engine = upto = None
    if args.layer is not None:
        if not 0 <= args.layer < len(convs):
            raise ValueError(f"--layer {args.layer} does not exist: the model has layers 0..{len(convs) - 1} "
                             f"(see `lcq report {args.model}`)")
        if args.mode == "network":
            raise ValueError("--layer N runs one layer on the layer engine: it needs --mode layers (or no --mode)")
        upto = next(i for i, n in enumerate(model.nodes) if n is convs[args.layer])
        on_engine = {upto}
    network = args.layer is None and args.mode != "layers"
    netlist, x_init = getattr(args, "netlist", None), getattr(args, "x_init", False)
    if x_init and netlist is None:
        raise ValueError("--x-init starts the cell models of a netlist at X: it needs --netlist ice40|ecp5")
    if x_init and args.simulator != "icarus":
        raise ValueError(f"--x-init needs --simulator icarus: {args.simulator} has two-state logic (no X), so "
                         f"flip-flops and RAMs cannot start unknown there")
    core = board = None
    resident = "none"
    if netlist is not None or getattr(args, "board", None) is not None:
        from . import netlist as netlists

        board = netlists.board_for(netlist, args.board)
        if netlist is not None and netlists.unavailable_reason() is not None:
            raise NetlistError(f"cannot make a netlist: {netlists.unavailable_reason()}")
        try:
            core = netlists.board_core(model, board, "network" if network else "layers", args.rows, args.cols,
                                       args.multiply_cols)
        except ValueError as e:     # boards.fit.FitError
            hint = "; or simulate the layer engine the layers-mode build has: --mode layers" if network else ""
            raise ValueError(f"{e}{hint}") from None
        params, resident = core.params, core.resident
        rows, cols = (params.engine.rows, params.engine.cols) if network else (params.rows, params.cols)
    else:
        args.rows = DEFAULT_ROWS if args.rows is None else args.rows
        args.cols = DEFAULT_COLS if args.cols is None else args.cols
        if network:
            from hw.network_params import NetworkParams

            params = NetworkParams.for_model(model, args.rows, args.cols, multiply_cols=args.multiply_cols or 0)
            rows, cols = params.engine.rows, params.engine.cols
        else:
            params = engine_params(args, model)
            rows, cols = params.rows, params.cols
    reason = unavailable_reason(args.simulator)      # after the checks of the arguments, which need no tool
    if reason is not None:
        raise ValueError(f"cannot simulate with {args.simulator}: {reason}")
    images = _images(args, model)
    kind = "-network" if network else ""
    if network and params.engine.multiply_cols:
        kind += f"-multiply{params.engine.multiply_cols}"
    where = "" if board is None else f"-{board.name}" + (f"-net-{netlist}" if netlist else "") + (
        "-xinit" if x_init else "")
    build_dir = Path(args.build_dir or
                     f"build/sim/{Path(args.model).stem}{kind}-{rows}x{cols}{where}-{args.simulator}")
    check_build_dir(args.simulator, build_dir)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot make the simulation build directory {build_dir} ({e.strerror}): give a "
                         f"directory that can be made or written with --build-dir DIR") from None
    STALL.check(args.stall, "--stall")
    STALL.check(args.backpressure, "--backpressure")
    synthesized = None
    t0 = t1 = time.perf_counter()
    try:
        # One run at a time in a build directory: another's build, data or results file would be taken as ours.
        with run_lock(build_dir, user="lcq sim", option="--build-dir"), stop_signals(), \
                deadline(getattr(args, "timeout", DEFAULT_TIMEOUT_S)):
            if core is not None:
                from . import netlist as netlists

                source = netlists.core_verilog(core, build_dir)
                if netlist is not None:
                    synthesized = netlists.synthesize(source, core.top, netlist)
                    built = netlists.netlist_build(args.simulator, synthesized, build_dir, x_init=x_init)
                else:
                    built = netlists.rtl_build(args.simulator, source, core, build_dir)
            elif network:
                built = network_build(args.simulator, params, build_dir)
            else:
                built = engine_build(args.simulator, params, build_dir)
            t1 = time.perf_counter()
            if network:
                report = simulate_network(built, params, args.model, model, images, build_dir / "run",
                                          stall=args.stall, backpressure=args.backpressure, seed=args.seed)
            else:
                report = simulate_model(built, params, args.model, model, images, build_dir / "run",
                                        on_engine=on_engine, upto=upto, resident=resident, stall=args.stall,
                                        backpressure=args.backpressure, seed=args.seed)
    except SimulationFailed as e:
        print(f"lcq sim: error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:     # SIGTERM, SIGHUP: the simulator's process group was killed on the way out
        print(f"lcq sim: {e}; its simulator was stopped", file=sys.stderr)
        return e.exit_status
    result = report.as_dict()
    result.setdefault("mode", "layer")
    result.update(build_seconds=round(t1 - t0, 2), run_seconds=round(time.perf_counter() - t1, 2))
    if board is not None:
        result.update(board=board.name, resident=resident, netlist=netlist, x_init=x_init)
    if synthesized is not None:
        result.update(netlist_cells=synthesized.cells, synth_seconds=synthesized.seconds,
                      netlist_cached=synthesized.cached, netlist_path=str(synthesized.path))
    if args.json:
        print(json.dumps(result))
    else:
        table = format_network_table(result) if network else format_table(result)
        print(format_netlist_line(result) + "\n" + table if board is not None else table)
    return 0 if result["mismatches"] == 0 else 1


def format_netlist_line(result: dict) -> str:
    """One line naming the board, and the netlist (family, cells, synthesis time) where one ran."""
    if result.get("netlist") is None:
        return f"board {result['board']}: the core `lcq build` builds (RTL)"
    cells = result["netlist_cells"]
    top = ", ".join(f"{n} {name}" for name, n in sorted(cells.items(), key=lambda c: -c[1])[:6])
    made = "cached; synthesized" if result["netlist_cached"] else "synthesized"
    return (f"board {result['board']}: {result['netlist']} netlist{' (cells start at X)' if result['x_init'] else ''}"
            f", {sum(cells.values()):,} cells ({top}), {made} in {result['synth_seconds']:.1f} s")


def format_network_table(result: dict) -> str:
    """Network mode: one row per step (cycles and MACs summed over the images), the logits, per image."""
    rc = result["rows"] * result["cols"]
    pairs = ", write-back in pairs" if result["write_pairs"] else ""
    if result["multiply_cols"]:
        n = result["multiply_cols"]
        pairs += f", multiplying in the first {'column' if n == 1 else f'{n} columns'}"
    lines = [f"{result['simulator']}: {counted(result['images'], 'image')} on the network core, {result['rows']} x "
             f"{result['cols']} array{pairs}; {result['bytes_in_per_image']} bytes in, "
             f"{result['bytes_out_per_image']} bytes out per image",
             "", "| step | kind | name | cycles | MACs | MACs/cycle | of R*C | outputs | mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["steps"]:
        rate = f"{s['macs_per_cycle']:.2f} | {100 * s['utilization']:.1f}%" if s["macs"] else "- | -"
        lines.append(f"| {s['index']} | {s['kind']} | {s['name']} | {s['cycles']:,} | {s['macs']:,} | {rate} | "
                     f"{s['outputs']:,} | {s['mismatches']} |")
    logits = result["logits"]
    received = sum(len(values) for values in logits["values"])
    lines.append(f"| | logits | out stream | | | | | {received:,} | {logits['mismatches']} |")
    lines.append("")
    for im in result["per_image"]:
        lines.append(f"image {im['image']}: {im['cycles']:,} cycles, {result['macs_per_image']:,} MACs, "
                     f"{im['macs_per_cycle']:.2f} MACs/cycle ({100 * im['utilization']:.1f}% of {rc}), "
                     f"{counted(im['mismatches'], 'mismatch', 'mismatches')} ({im['logit_mismatches']} in the logits)")
    if any(s["utilization"] > 1 for s in result["steps"]):
        lines.append("(MACs count a grouped or depthwise conv as the dense conv it is compiled to, whose zero blocks "
                     "the array skips: such a step does more than R*C of them a cycle)")
    lines.append(f"\n{counted(result['mismatches'], 'value differs', 'values differ')} from the integer reference")
    if logits["first_mismatch"]:
        lines.append(logits["first_mismatch"])
    lines += [s["first_mismatch"] for s in result["steps"] if s["first_mismatch"]]
    return "\n".join(lines)


def format_table(result: dict) -> str:
    rc = result["rows"] * result["cols"]
    lines = [f"{result['simulator']}: {counted(result['images'], 'image')} on a {result['rows']} x {result['cols']} "
             "engine",
             "", "| layer | name | cycles | computing | MACs | MACs/cycle | of R*C | lower bound | mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        bound = -(-r["macs"] // rc)
        lines.append(f"| {r['index']} | {r['name']} | {r['cycles']:,} | {r['compute_cycles']:,} | {r['macs']:,} | "
                     f"{r['macs_per_cycle']:.2f} | "
                     f"{100 * r['utilization']:.1f}% | {bound:,} | {r['mismatches']} |")
    lines.append(f"\n{counted(result['mismatches'], 'output differs', 'outputs differ')} from the integer reference")
    lines += [r["first_mismatch"] for r in result["layers"] if r["first_mismatch"]]
    return "\n".join(lines)
