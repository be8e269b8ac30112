"""The fit estimate before synthesis (boards.fit) against the routed builds recorded in benchmarks/results.

Every build record with nextpnr's counts (board_builds.json, outer_widths_hw.json, the builds of
icebreaker-*.json) whose core can be rebuilt from what it records: a layer engine from its parameters
(``engine.params``), a whole-network core from its engine's and vector unit's parameters and widths
(``network``) with the input image of its model (tests/data or benchmarks/results/models). For each, today's
``boards.fit`` estimate of those parameters on that board, resource by resource against the build's counts:
block RAM (``EBR``: iCE40 EBR, ECP5 DP16KD), ``SPRAM`` and ``DSP`` (SB_MAC16, MULT18X18D), which the estimate
counts, and ``LUT4`` (logic cells, TRELLIS_COMB), which it estimates (estimate / actual; ``lcq build`` accepts
an estimate up to ``logic_share`` of the part's). ``current``: the core today's code builds for the record's
model and array has the recorded parameters (a record whose core differs was built by an older version; its
counts are of that core). ``then``: the estimate the build itself recorded, which decided whether it was tried
(a failed placement estimated to fit, unless forced, is a build the estimate should have refused).
Records without parameters (older builds) count only in ``then``.

Run:  python benchmarks/fit_accuracy.py [--json-out FILE]   (a few seconds; no synthesis)
Writes benchmarks/results/fit_accuracy.json (or --json-out): one row per record and the summary printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from board_builds import environment  # noqa: E402

from lcq_train.arguments import output_file  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL_DIRS = (ROOT / "tests" / "data", RESULTS / "models")
COUNTED = ("EBR", "SPRAM", "DSP")       # what the estimate counts exactly
RESOURCES = (*COUNTED, "LUT4")


def build_records(results: Path = RESULTS) -> list[tuple[str, dict]]:
    """``(source, record)`` of every recorded build with resources: ``board_builds.json#i``,
    ``outer_widths_hw.json#i``, ``icebreaker-*.json#i`` (its ``builds[i].report``, with the build's commit)."""
    out = []
    for name in ("board_builds.json", "outer_widths_hw.json"):
        path = results / name
        if path.is_file():
            out += [(f"{name}#{i}", r) for i, r in enumerate(json.loads(path.read_text()))]
    for path in sorted(results.glob("icebreaker-*.json")):
        for i, build in enumerate(json.loads(path.read_text()).get("builds", [])):
            out.append((f"{path.name}#{i}", {**build["report"], "commit": build.get("commit")}))
    return [(source, r) for source, r in out if isinstance(r.get("resources"), dict)]


def record_commit(record: dict) -> str | None:
    """The commit a record's build ran at (its environment's, else the ``commit`` its file gave it)."""
    return (record.get("environment") or {}).get("git", {}).get("commit") or record.get("commit")


def model_path(name: str | None) -> Path | None:
    """The compiled model ``name`` (a file name) in tests/data or benchmarks/results/models, None where neither
    holds it."""
    for folder in MODEL_DIRS:
        if name and (folder / Path(name).name).is_file():
            return folder / Path(name).name
    return None


def rebuilt(record: dict, models: dict):
    """``(kind, params, current)`` of the core ``record`` names: ``"engine"`` and its
    :class:`~hw.engine_params.EngineParams`, or ``"network"`` and its :class:`~hw.network_params.NetworkParams`;
    ``current``: whether today's code builds those for the record's model and array (None where the model is not
    here). ``models``: the caller's cache, across records, of the models loaded (by path) and of today's network
    cores (by model, array and multiplying columns: many records name the same; 156 of them 17 cores, each made in
    ~70 ms). ValueError naming what is missing where the record cannot be rebuilt."""
    from compiler.format import load
    from hw.engine_params import EngineParams
    from hw.network_params import NetworkParams
    from hw.vector_params import VectorParams

    def model():
        path = model_path(record.get("model"))
        if path is None:
            return None
        if path not in models:
            models[path] = load(path)
        return models[path]

    network = record.get("network")
    if isinstance(network, dict):
        m = model()
        if m is None:
            raise ValueError(f"its model {record.get('model')} is in neither tests/data nor benchmarks/results/models")
        key = ("network", model_path(record.get("model")), network["rows"], network["cols"],
               network.get("multiply_cols", 0))
        if key not in models:
            models[key] = NetworkParams.for_model(m, network["rows"], network["cols"],
                                                  multiply_cols=network.get("multiply_cols", 0))
        today = models[key]
        try:
            engine, vector = EngineParams.from_dict(network["engine"]), VectorParams.from_dict(network["vector"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"its network parameters are of an older version: {str(e)[:80]}") from None
        # The record names every width of the core but the input image's (the model's own).
        params = replace(today, engine=engine, vector=vector, image_base=0,
                         **{f: network[f] for f in ("value_bits", "value_depth", "program_depth", "input_bits")})
        return "network", params, params == replace(today, image_base=0)
    engine = record.get("engine") or {}
    if isinstance(engine.get("params"), dict):
        try:
            params = EngineParams.from_dict(engine["params"])
        except ValueError as e:
            raise ValueError(f"its engine parameters are of an older version: {str(e)[:80]}") from None
        m = model()
        current = None if m is None else params == EngineParams.for_model(m, params.rows, params.cols,
                                                                         resident=engine.get("resident", "none"))
        return "engine", params, current
    raise ValueError("it records no engine or network parameters (an older build)")


def logic_limit(board, kind: str) -> int:
    """The LUT4s ``lcq build`` accepts for a core of ``kind`` on ``board`` (:func:`boards.fit.logic_limit`)."""
    from boards.fit import logic_limit as limit

    return limit(board, network=kind == "network")


def audit(records: list[tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    """``(rows, skipped)``: a row per record rebuilt (:func:`rebuilt`) with today's estimate, the recorded counts
    and what differs; ``skipped``: ``{"source", "why"}`` of the others."""
    from boards.boards import get_board
    from boards.fit import estimate, network_estimate

    rows, skipped, models = [], [], {}
    for source, r in records:
        actual = {name: r["resources"].get(name, {}).get("used", 0) for name in RESOURCES}
        engine, network = r.get("engine") or {}, r.get("network") or {}
        board = get_board(r["board"])
        row = {"source": source, "commit": (record_commit(r) or "")[:7] or None, "time": r.get("time"),
               "board": r["board"], "model": r.get("model"), "mode": r.get("mode", "layers"),
               "rows": engine.get("rows", network.get("rows")), "cols": engine.get("cols", network.get("cols")),
               "multiply_cols": r.get("multiply_cols", network.get("multiply_cols")),
               "resident": engine.get("resident"), "status": r.get("status", "ok"),
               "routed": r.get("routed", r.get("status", "ok") == "ok"), "reached": r.get("reached"),
               "forced": bool(r.get("force")),
               "actual": actual, "then": engine.get("estimate"), "record": r}
        kind = "network" if row["mode"] == "network" else "engine"
        row["logic_limit"] = logic_limit(board, kind)
        try:
            kind, params, current = rebuilt(r, models)
        except ValueError as e:
            skipped.append({**row, "why": str(e)})
            continue
        use = network_estimate(board, params) if kind == "network" else estimate(board, params)
        row.update({"current": current, "estimate": {name: use[name] for name in RESOURCES},
                    "differs": [name for name in COUNTED if use[name] != actual[name]],
                    "lut4_ratio": round(use["LUT4"] / actual["LUT4"], 3) if actual["LUT4"] else None})
        rows.append(row)
    return rows, skipped


def configuration(record: dict) -> tuple:
    """What a record built: board, model, mode, array, multiplying columns, residency."""
    engine, network = record.get("engine") or {}, record.get("network") or {}
    return (record["board"], Path(record.get("model") or "").name, record.get("mode", "layers"),
            engine.get("rows", network.get("rows")), engine.get("cols", network.get("cols")),
            record.get("multiply_cols", network.get("multiply_cols")), engine.get("resident"))


def newest_records(records: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The newest of ``records`` (by the record's time, else its order) of each :func:`configuration`."""
    newest = {}
    for source, record in records:
        key = configuration(record)
        if key not in newest or (record.get("time") or "") >= (newest[key][1].get("time") or ""):
            newest[key] = (source, record)
    return list(newest.values())


def newest_per_configuration(rows: list[dict]) -> list[dict]:
    """The rows of :func:`newest_records`'s records."""
    newest = {source for source, _ in newest_records([(row["source"], row["record"]) for row in rows])}
    return [row for row in rows if row["source"] in newest]


def summary(rows: list[dict], skipped: list[dict]) -> dict:
    """Counts of the audit: rows matching each counted resource (all, newest of each configuration), the LUT4
    ratio's spread per family and mode, placed builds the estimate's logic limit would refuse, placed builds whose
    ratio is under ``logic_share`` (an estimate at the limit would have been over the part), and builds that
    failed in placement (not forced past the estimate) though their own estimate (``then``) said they fit."""
    from boards.boards import get_board

    newest = newest_per_configuration(rows)
    ratios = {}
    for row in rows:
        if row["routed"] and row["lut4_ratio"] is not None:
            ratios.setdefault(f"{get_board(row['board']).family} {row['mode']}", []).append(row["lut4_ratio"])
    placed_over = [row["source"] for row in rows if row["routed"] and row["estimate"]["LUT4"] > row["logic_limit"]]
    # An estimate at the limit (logic_share of the part) is over the part where estimate / actual < logic_share.
    short_share = [f"{row['source']} ({row['board']} {row['mode']} at {row['commit']}: {row['lut4_ratio']})"
                   for row in rows if row["routed"] and row["lut4_ratio"] is not None
                   and row["lut4_ratio"] < row["logic_limit"] / get_board(row["board"]).resources["LUT4"]]
    failed_fitting = [f"{row['source']} ({row['board']}, {row['rows']} x {row['cols']}: {row['then']['LUT4']:,} "
                      f"estimated, {row['actual']['LUT4']:,} packed, {row['logic_limit']:,} accepted)"
                      for row in rows + skipped
                      if row["status"] == "failed" and row["reached"] == "placement" and not row["forced"]
                      and isinstance(row["then"], dict) and row["then"].get("LUT4", 0) <= row["logic_limit"]]
    return {"records": len(rows) + len(skipped), "rebuilt": len(rows), "skipped": len(skipped),
            "current": sum(1 for row in rows if row["current"]),
            "matching": {name: sum(1 for row in rows if name not in row["differs"]) for name in COUNTED},
            "newest_configurations": len(newest),
            "newest_matching": {name: sum(1 for row in newest if name not in row["differs"]) for name in COUNTED},
            "newest_differing": [{"source": row["source"], "board": row["board"], "model": row["model"],
                                  "array": f"{row['rows']} x {row['cols']}", "current": row["current"],
                                  **{name: [row["estimate"][name], row["actual"][name]] for name in row["differs"]}}
                                 for row in newest if row["differs"]],
            "lut4_ratio": {group: {"builds": len(values), "min": min(values), "median": statistics.median(values),
                                   "max": max(values)} for group, values in sorted(ratios.items())},
            "placed_over_logic_limit": placed_over, "ratio_under_logic_share": short_share,
            "failed_estimated_to_fit": failed_fitting}


def print_table(rows: list[dict], total: dict) -> None:
    """The newest row of each configuration as a table (estimate / actual), then the summary."""
    print("| record | commit | board | model | mode | array | status | current | EBR | SPRAM | DSP | LUT4 "
          "(est / actual) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sorted(newest_per_configuration(rows), key=lambda row: row["source"]):
        e, a = row["estimate"], row["actual"]
        cells = [f"{e[name]} / {a[name]}" + (" *" if name in row["differs"] else "") for name in COUNTED]
        print(f"| {row['source']} | {row['commit']} | {row['board']} | {row['model']} | {row['mode']} | "
              f"{row['rows']} x {row['cols']} | {row['status']} | {row['current']} | " + " | ".join(cells)
              + f" | {e['LUT4']:,} / {a['LUT4']:,} ({row['lut4_ratio']}) |")
    print(f"\n{total['records']} records with resources, {total['rebuilt']} rebuilt ({total['current']} as "
          f"today's code builds them), {total['skipped']} without parameters; "
          f"{total['newest_configurations']} configurations (newest record of each).")
    for name in COUNTED:
        print(f"{name}: estimate = actual in {total['matching'][name]} of {total['rebuilt']} records, "
              f"{total['newest_matching'][name]} of {total['newest_configurations']} configurations")
    for group, spread in total["lut4_ratio"].items():
        print(f"LUT4 estimate / actual, {group} ({spread['builds']} placed builds): min {spread['min']}, "
              f"median {spread['median']}, max {spread['max']}")
    print(f"placed builds whose estimate is over the logic limit: {total['placed_over_logic_limit'] or 'none'}")
    print(f"placed builds whose estimate / actual is under logic_share ({len(total['ratio_under_logic_share'])}; "
          "at the limit their count would pass the part):", *total["ratio_under_logic_share"] or ["none"], sep="\n  ")
    print("failed in placement though estimated to fit (not forced):", *total["failed_estimated_to_fit"] or ["none"],
          sep="\n  ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json-out", type=output_file, default=str(RESULTS / "fit_accuracy.json"),
                        help="results file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows, skipped = audit(build_records())
    total = summary(rows, skipped)
    print_table(rows, total)
    rows, skipped = ([{k: v for k, v in row.items() if k != "record"} for row in table] for table in (rows, skipped))
    save_json({"benchmark": "fit_accuracy", "summary": total, "rows": rows, "skipped": skipped,
               "seconds": round(time.perf_counter() - t0, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "environment": environment()}, Path(args.json_out))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
