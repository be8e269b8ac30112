"""``lcq generate``: the hardware verb of the ``lcq`` command.

``lcq generate MODEL -o core.v [--rows R --cols C]`` writes the Verilog of the whole-network core
(:class:`hw.network.NetworkCore`, top module ``lcq_network``) sized for MODEL, and a JSON file beside
it (the parameters, load targets, port widths and memory sizes). ``--mode layers [--resident
none|weights|all]`` writes the layer engine instead (top module ``lcq_engine``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compiler import format as model_format
from lcq_train.arguments import DefaultsHelpFormatter, IntRange, output_file, refuse_overwriting

from .engine_params import MAX_ARRAY
from .residency import RESIDENCY

DEFAULT_ROWS = DEFAULT_COLS = 8
# The type of every --rows and --cols (lcq generate, sim, build) and of a build report's array.
ARRAY_SIZE = IntRange(1, MAX_ARRAY)
# The type of every --multiply-cols and of a build report's (0: every column multiplies).
MULTIPLY_COLS = IntRange(0, MAX_ARRAY)


def array_args(p: argparse.ArgumentParser) -> None:
    """The compiled model and the array size: the arguments of every verb that sizes an engine."""
    p.add_argument("model", metavar="MODEL", help="compiled model file (lcq compile)")
    p.add_argument("--rows", type=ARRAY_SIZE, default=DEFAULT_ROWS, metavar="R",
                   help=f"PE array rows (reduction), {ARRAY_SIZE.describe()}")
    p.add_argument("--cols", type=ARRAY_SIZE, default=DEFAULT_COLS, metavar="C",
                   help=f"PE array columns (output channels), {ARRAY_SIZE.describe()}")
    p.add_argument("--multiply-cols", type=MULTIPLY_COLS, default=0, metavar="M",
                   help=f"network mode: only the PEs of the first M columns multiply (the 8-bit edge layers run in "
                        f"channel tiles of M), {MULTIPLY_COLS.describe()}, at most --cols; 0: every column")


def engine_params(args, model):
    """The :class:`hw.engine_params.EngineParams` of ``args`` (rows, cols, resident) for ``model``: the layer
    engine's, which multiplies in every column (``--multiply-cols`` is refused)."""
    from .engine_params import EngineParams

    if getattr(args, "multiply_cols", None):
        raise ValueError("--multiply-cols is for the whole-network core (network mode): the layer engine's PEs "
                         "multiply in every column")
    return EngineParams.for_model(model, args.rows, args.cols, resident=getattr(args, "resident", "none"))


def add_parsers(sub) -> dict:
    """Register the hardware verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = DefaultsHelpFormatter

    p = sub.add_parser("generate", help="write the accelerator's Verilog for a compiled model", formatter_class=fmt)
    array_args(p)
    p.add_argument("-o", "--output", metavar="FILE", type=output_file, default="build/core.v",
                   help="Verilog file to write")
    p.add_argument("--mode", choices=("network", "layers"), default="network",
                   help="the whole network on the chip (image in, logits out), or the layer engine (one layer "
                        "per start, the host between layers)")
    p.add_argument("--resident", choices=RESIDENCY, default="none",
                   help="layer mode: size buffers to hold every layer's weights, or all its constants, at once")
    return {"generate": cmd_generate}


def _check_output(output: str, model: str) -> None:
    """The Verilog file ``-o`` names (a file: :func:`lcq_train.arguments.output_file`), checked before the core is
    elaborated: not a ``.json`` file (the parameters go beside it with that suffix and would replace it), its
    ``.json`` not a directory, and neither of them the model file."""
    out = Path(output)
    if out.suffix == ".json":
        raise ValueError(f"-o {output}: the parameters are written beside the Verilog with its .json suffix and "
                         f"would replace it; name a Verilog file, e.g. -o {out.with_suffix('.v')}")
    if out.with_suffix(".json").is_dir():
        raise ValueError(f"-o {output}: the parameters go beside it in {out.with_suffix('.json')}, which is a "
                         "directory; name another Verilog file")
    for path in (out, out.with_suffix(".json")):
        refuse_overwriting(path, model, "model", output)


def _write_pair(out: Path, verilog: str, info: dict) -> None:
    """The Verilog at ``out`` and its parameters (indented JSON) beside it with the ``.json`` suffix, both or
    neither (:class:`lcq_train.atomic.AtomicFiles`): a failed write leaves any previous pair as it was."""
    from lcq_train.atomic import AtomicFiles

    with AtomicFiles() as files:
        files.write(out, lambda f: f.write(verilog.encode()))
        files.write(out.with_suffix(".json"), lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
        files.commit()


def cmd_generate(args) -> int:
    _check_output(args.output, args.model)
    if args.mode == "network" and args.resident != "none":
        raise ValueError("--resident is for the layer engine (--mode layers): the whole-network core keeps every "
                         "layer's weights and constants on the chip")
    model = model_format.load(args.model)
    if args.mode == "network":
        return _generate_network(args, model)
    from amaranth.back import verilog

    from .engine import LayerEngine

    params = engine_params(args, model)
    engine = LayerEngine(params)
    text = verilog.convert(engine, name="lcq_engine")
    out = Path(args.output)
    signature = engine.signature
    info = {"model": str(args.model), "top": "lcq_engine", "resident": args.resident, "params": params.describe(),
            "target_bits": list(params.target_bits),
            "ports": {"load__payload": {name: field.width for name, field in signature.load_layout},
                      "out__payload": signature.out_bits, "out_bits_per_column": params.out_bits},
            "memory_bits": params.memory_bits()}
    _write_pair(out, text, info)
    print(f"wrote {out} ({len(text):,} bytes, top module lcq_engine) and {out.with_suffix('.json')}")
    print(f"{params.rows} x {params.cols} PEs, {params.wbits}-bit LUT weights, {params.abits}-bit codes, "
          f"{'with' if params.multiply else 'no'} multipliers, {params.acc_bits}-bit accumulators; "
          f"buffers {sum(params.memory_bits().values()):,} bits")
    return 0


def _generate_network(args, model) -> int:
    from amaranth.back import verilog

    from .network import NetworkCore
    from .network_params import NetworkParams

    params = NetworkParams.for_model(model, args.rows, args.cols, multiply_cols=args.multiply_cols)
    core = NetworkCore(params)
    text = verilog.convert(core, name="lcq_network")
    out = Path(args.output)
    load = core.signature.members["load"].signature.members["payload"].shape
    info = {"model": str(args.model), "top": "lcq_network", "mode": "network", "params": params.describe(),
            "target_bits": list(params.target_bits),
            "ports": {"load__payload": {name: field.width for name, field in load},
                      "out__payload": params.value_bits},
            "memory_bits": params.memory_bits()}
    _write_pair(out, text, info)
    bits = params.memory_bits()
    print(f"wrote {out} ({len(text):,} bytes, top module lcq_network) and {out.with_suffix('.json')}")
    print(f"whole network on a {args.rows} x {args.cols} array: code memory {params.engine.act_depth:,} words, value "
          f"memory {params.value_depth:,} x {params.value_bits} bits, program {params.program_depth} words; memories "
          f"{sum(bits.values()):,} bits in all")
    return 0
