"""``lcq generate`` and ``lcq sim``: the hardware verbs of the ``lcq`` command.

- ``lcq generate MODEL -o engine.v [--rows R --cols C] [--resident none|weights|all]`` writes the layer
  engine's Verilog sized for MODEL, and ``engine.json`` beside it (the parameters, port
  widths and buffer sizes).
- ``lcq sim MODEL [--layer N] [--simulator icarus|verilator] [--images N] [--json]`` runs
  the generated Verilog in cocotb on test images (the model's dataset, or ``--random``),
  every convolution on the engine (or only layer N, fed by the reference), and compares
  every output with the integer reference: cycles, MACs per cycle and mismatches per
  layer. Layer numbers are the rows of ``lcq report`` (0 = first convolution).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from compiler import format as model_format

from .residency import RESIDENCY

DEFAULT_ROWS = DEFAULT_COLS = 8


def add_parsers(sub) -> dict:
    """Register the hardware verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def array_args(p):
        p.add_argument("model", metavar="MODEL", help="compiled model file (lcq compile)")
        p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="PE array rows (reduction)")
        p.add_argument("--cols", type=int, default=DEFAULT_COLS, help="PE array columns (output channels)")

    p = sub.add_parser("generate", help="write the layer engine's Verilog for a compiled model", formatter_class=fmt)
    array_args(p)
    p.add_argument("-o", "--output", metavar="FILE", default="build/engine.v", help="Verilog file to write")
    p.add_argument("--resident", choices=RESIDENCY, default="none",
                   help="size buffers to hold every layer's weights, or all its constants, at once")

    p = sub.add_parser("sim", help="run the generated Verilog in cocotb against the integer reference",
                       formatter_class=fmt)
    array_args(p)
    p.add_argument("--layer", type=int, metavar="N", help="only layer N on the engine (default: the whole model)")
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator")
    p.add_argument("--images", type=int, default=1, metavar="N", help="test images to run")
    p.add_argument("--data", "--data-dir", dest="data_dir", metavar="DIR",
                   help="dataset directory (not needed for digits or --random)")
    p.add_argument("--random", action="store_true", help="random uint8 images instead of the test set")
    p.add_argument("--stall", type=float, default=0.0, metavar="P", help="probability of a load stall per cycle")
    p.add_argument("--backpressure", type=float, default=0.0, metavar="P",
                   help="probability that the output is not ready in a cycle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-dir", metavar="DIR", help="simulation build directory (default: build/sim/...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return {"generate": cmd_generate, "sim": cmd_sim}


def _params(args, model):
    from .engine_params import EngineParams

    return EngineParams.for_model(model, args.rows, args.cols, resident=getattr(args, "resident", "none"))


def cmd_generate(args) -> int:
    from amaranth.back import verilog

    from lcq_train.atomic import atomic_write, save_json

    from .engine import LayerEngine

    model = model_format.load(args.model)
    params = _params(args, model)
    engine = LayerEngine(params)
    text = verilog.convert(engine, name="lcq_engine")
    out = Path(args.output)
    atomic_write(out, lambda f: f.write(text.encode()))
    info = {"model": str(args.model), "top": "lcq_engine", "resident": args.resident, "params": params.describe(),
            "target_bits": list(params.target_bits),
            "ports": {"load_addr": params.addr_bits, "load_data": params.data_bits, "load_target": 3,
                      "out_data": params.cols * params.out_bits, "out_bits_per_column": params.out_bits},
            "memory_bits": params.memory_bits()}
    save_json(info, out.with_suffix(".json"))
    print(f"wrote {out} ({len(text):,} bytes, top module lcq_engine) and {out.with_suffix('.json')}")
    print(f"{params.rows} x {params.cols} PEs, {params.wbits}-bit LUT weights, {params.abits}-bit codes, "
          f"{'with' if params.multiply else 'no'} multipliers, {params.acc_bits}-bit accumulators; "
          f"buffers {sum(params.memory_bits().values()):,} bits")
    return 0


def _images(args, model) -> np.ndarray:
    if args.images < 1:
        raise ValueError(f"--images must be at least 1, not {args.images}")
    if args.random:
        rng = np.random.default_rng(args.seed)
        return rng.integers(0, 256, size=(args.images, *model.input.shape), dtype=np.uint8)
    from lcq_train.data import load_dataset

    data = load_dataset(model.source.get("dataset", "digits"), args.data_dir)
    return np.ascontiguousarray(data.test_x[:args.images].numpy())


def cmd_sim(args) -> int:
    from sim.engine_run import engine_build, simulate_model
    from sim.runner import unavailable_reason

    model = model_format.load(args.model)
    convs = model.convs
    on_engine = upto = None
    if args.layer is not None:
        if not 0 <= args.layer < len(convs):
            raise ValueError(f"--layer {args.layer} does not exist: the model has layers 0..{len(convs) - 1} "
                             f"(see `lcq report {args.model}`)")
        upto = next(i for i, n in enumerate(model.nodes) if n is convs[args.layer])
        on_engine = {upto}
    reason = unavailable_reason(args.simulator)
    if reason is not None:
        raise ValueError(f"cannot simulate with {args.simulator}: {reason}")
    params = _params(args, model)
    images = _images(args, model)
    build_dir = Path(args.build_dir or f"build/sim/{Path(args.model).stem}-{params.rows}x{params.cols}-{args.simulator}")
    t0 = time.perf_counter()
    built = engine_build(args.simulator, params, build_dir)
    t1 = time.perf_counter()
    report = simulate_model(built, params, args.model, model, images, build_dir / "run", on_engine=on_engine,
                            upto=upto, stall=args.stall, backpressure=args.backpressure, seed=args.seed)
    result = report.as_dict()
    result.update(build_seconds=round(t1 - t0, 2), run_seconds=round(time.perf_counter() - t1, 2))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0 if result["mismatches"] == 0 else 1


def format_table(result: dict) -> str:
    rc = result["rows"] * result["cols"]
    lines = [f"{result['simulator']}: {result['images']} image(s) on a {result['rows']} x {result['cols']} engine",
             "", "| layer | name | cycles | computing | MACs | MACs/cycle | of R*C | lower bound | mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        bound = -(-r["macs"] // rc)
        lines.append(f"| {r['index']} | {r['name']} | {r['cycles']:,} | {r['compute_cycles']:,} | {r['macs']:,} | "
                     f"{r['macs_per_cycle']:.2f} | "
                     f"{100 * r['utilization']:.1f}% | {bound:,} | {r['mismatches']} |")
    lines.append(f"\n{result['mismatches']} outputs differ from the integer reference")
    lines += [r["first_mismatch"] for r in result["layers"] if r["first_mismatch"]]
    return "\n".join(lines)
