"""``lcq build`` and ``lcq flash``: the board verbs of the ``lcq`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .boards import BOARDS, get_board


def add_parsers(sub) -> dict:
    """Register the board verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    boards = ", ".join(BOARDS)
    p = sub.add_parser("build", help="build the accelerator for a compiled model into a bitstream, with a "
                                     "timing and resource report", formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file (`lcq compile`)")
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--mhz", type=float, metavar="F", help="target clock (default: the board's)")
    p.add_argument("--rows", type=int, metavar="R", help="PE array rows (default: chosen for the board)")
    p.add_argument("--cols", type=int, metavar="C", help="PE array columns (default: chosen for the board)")
    p.add_argument("-o", "--output", metavar="DIR", help="build directory (default: build/<board>)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = sub.add_parser("flash", help="program a board with a built bitstream", formatter_class=fmt)
    p.add_argument("--board", required=True, metavar="NAME", choices=BOARDS, help=f"one of: {boards}")
    p.add_argument("--bitstream", metavar="PATH",
                   help="bitstream to program (default: the one in build/<board>/report.json)")
    p.add_argument("--sram", action="store_true",
                   help="configure the FPGA only (lost at power-off) instead of writing its flash")
    return {"build": cmd_build, "flash": cmd_flash}


def cmd_build(args) -> int:
    from compiler import format as model_format

    from .build import BuildError, build
    from .report import format_table
    from .top import accelerator_top  # -> factory(platform, clk_hz) -> Elaboratable; checks the fit

    board = get_board(args.board)
    factory = accelerator_top(model_format.load(args.model), board, args.rows, args.cols)
    print(f"building for {board.name} ({board.device})...", file=sys.stderr)
    try:
        result = build(factory, board, args.mhz, args.output or Path("build") / board.name).to_dict()
    except BuildError as e:
        print(f"lcq build: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_flash(args) -> int:
    from .flash import FlashError, flash

    board = get_board(args.board)
    bitstream = args.bitstream
    if bitstream is None:
        report = Path("build") / board.name / "report.json"
        if not report.is_file():
            raise FileNotFoundError(f"no {report}: build first with `lcq build MODEL --board {board.name}` "
                                    f"or pass --bitstream PATH")
        bitstream = json.loads(report.read_text())["bitstream"]
    try:
        print(flash(board, bitstream, args.sram))
    except FlashError as e:
        print(f"lcq flash: error: {e}", file=sys.stderr)
        return 1
    print(f"programmed {board.name} with {bitstream}", file=sys.stderr)
    return 0
