"""Read a build's timing and utilization (nextpnr's ``--report`` JSON, Yosys' log) and print them.

:func:`parse_nextpnr` maps nextpnr's cell names onto the board table's resource names
(``LUT4``, ``FF``, ``EBR``, ``SPRAM``, ``DSP``, ``PLL``, ``IO``); :func:`format_table` prints
a build report (``boards.build.BuildResult.to_dict()``) as a markdown table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .boards import Board

# nextpnr's utilization entries behind each of our resource names. iCE40 logic cells pair a
# LUT4 with an FF, so the iCE40 FF count comes from Yosys' statistics instead. IO's available
# count is nextpnr's: the die's pads, more than a package bonds out.
NEXTPNR_NAMES = {
    "ice40": {"LUT4": "ICESTORM_LC", "EBR": "ICESTORM_RAM", "SPRAM": "ICESTORM_SPRAM", "DSP": "ICESTORM_DSP",
              "PLL": "ICESTORM_PLL", "IO": "SB_IO"},
    "ecp5": {"LUT4": "TRELLIS_COMB", "FF": "TRELLIS_FF", "EBR": "DP16KD", "DSP": "MULT18X18D", "PLL": "EHXPLLL",
             "IO": "TRELLIS_IO"},
}


def parse_nextpnr(report: dict, family: str) -> tuple[float | None, dict]:
    """``(fmax_mhz, resources)`` of a nextpnr ``--report`` object: the slowest clock's achieved
    Fmax (``None`` without clocked logic) and {our name: {"used", "available"}} as nextpnr counts."""
    achieved = [c["achieved"] for c in report.get("fmax", {}).values() if "achieved" in c]
    util = report["utilization"]
    resources = {ours: {"used": util[theirs]["used"], "available": util[theirs]["available"]}
                 for ours, theirs in NEXTPNR_NAMES[family].items() if theirs in util}
    return (round(min(achieved), 2) if achieved else None), resources


def yosys_ff_count(log: str) -> int:
    """Flip-flops (``SB_DFF*`` / ``TRELLIS_FF`` cells) in the last statistics block of a Yosys log."""
    stats = log.rsplit("Printing statistics", 1)
    if len(stats) < 2:
        raise ValueError("no 'Printing statistics' block in the Yosys log; was synthesis run with -l?")
    block = stats[1].split("=== design hierarchy ===")[0]
    return sum(int(n) for n in re.findall(r"^\s*(\d+)\s+(?:SB_DFF\w*|TRELLIS_FF)\s*$", block, re.M))


def parse_build(build_dir, name: str, board: Board, nextpnr_report: str = "nextpnr-report.json") -> tuple:
    """``(fmax_mhz, resources)`` of the build of ``name`` in ``build_dir``, ``available`` taken from
    the board table where it has the resource (nextpnr counts the 12F as the 25F die)."""
    build_dir = Path(build_dir)
    fmax, found = parse_nextpnr(json.loads((build_dir / nextpnr_report).read_text()), board.family)
    if board.family == "ice40":
        found["FF"] = {"used": yosys_ff_count((build_dir / f"{name}.rpt").read_text()), "available": 0}
    table = {res: {"used": found.pop(res)["used"], "available": count}
             for res, count in board.resources.items() if res in found}
    return fmax, {**table, **found}


def format_table(report: dict) -> str:
    """A build report as text: board, Fmax vs the PLL clock, bitstream, then a resource table."""
    fmax = report["fmax_mhz"]
    met = "no clocked logic" if fmax is None else ("met" if fmax >= report["pll_mhz"] else "NOT met")
    lines = [f"{report['board']} ({report['device']}): Fmax {fmax} MHz, clock {report['pll_mhz']:g} MHz "
             f"(asked {report['target_mhz']:g}): timing {met}",
             f"bitstream {report['bitstream']} ({report['seconds']:g} s)", "",
             "| resource | used | available | % |", "|---|---:|---:|---:|"]
    for name, r in report["resources"].items():
        share = f"{100 * r['used'] / r['available']:.1f}" if r["available"] else "-"
        lines.append(f"| {name} | {r['used']:,} | {r['available']:,} | {share} |")
    return "\n".join(lines)
