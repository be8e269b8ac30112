"""The paper's CIFAR-10 table over seeds: mean ± std of per-seed results of ``cifar10_resnet20.py``.

Each lent GPU session runs one seed (``gpu_session.sh``, ``cifar10_resnet20.py --seed N``), writing one
result file; this combines them into the table the README shows, beside the paper's LCQ and APoT:

    python benchmarks/cifar10_seeds.py benchmarks/results/cifar10-resnet20-seed*.json

The files must share the schedule, recipe and data (else an error names the file and the field); each
seed counts once. A run enters a cell only where it finished all its epochs; the cell says how many seeds
it averages (``n=2``) where that is fewer than the files given. Writes ``--json-out`` (default
``benchmarks/results/cifar10-resnet20-seeds.json``) atomically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcq_train.arguments import output_file  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "cifar10-resnet20-seeds.json"
SAME = ("name", "fp_epochs", "epochs", "bits", "methods", "batch_size", "clip_init", "bn_batches")
FINISHED = ("trained", "done earlier, reused", "done earlier, reported")


def read(path: Path) -> dict:
    """One seed's result file, checked for what the table reads; ValueError naming the file otherwise."""
    if not path.exists() and any(c in str(path) for c in "*?["):     # a shell pattern that matched nothing
        raise ValueError(f"{path}: no file matches this pattern (no seed's result file yet? each comes from one GPU "
                         "session, `bash benchmarks/gpu_session.sh`, committed as "
                         "benchmarks/results/cifar10-resnet20-seedN.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable result file of cifar10_resnet20.py ({e})") from None
    if not isinstance(data, dict) or data.get("benchmark") != "cifar10-resnet20":
        raise ValueError(f"{path}: not a result file of cifar10_resnet20.py (its 'benchmark' is not "
                         "'cifar10-resnet20')")
    seed = data.get("seeds", {}).get("seed") if isinstance(data.get("seeds"), dict) else None
    rows = data.get("rows")
    if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(rows, list) \
            or not isinstance(data.get("schedule"), dict) or not isinstance(data.get("data"), dict):
        raise ValueError(f"{path}: a cifar10_resnet20.py result needs 'seeds.seed', 'schedule', 'data' and 'rows'")
    for row in rows:
        if not _is_row(row):
            raise ValueError(f"{path}: a row is not a run of cifar10_resnet20.py (run, status, method fp/uniform/lcq, "
                             f"wbits and abits integers (None for fp), test_top1 and paper numbers 0..100 or None): "
                             f"{row!r}")
    names = [row["run"] for row in rows]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise ValueError(f"{path}: run {twice!r} is in it twice: each run of a seed counts once (restore the file "
                         "cifar10_resnet20.py wrote)")
    return data


def _is_row(row) -> bool:
    """Whether ``row`` has the fields of a run that :func:`combine` and :func:`table` read, of their types."""
    def percentage(v) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 100.0)

    def width(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return isinstance(row, dict) and isinstance(row.get("run"), str) and isinstance(row.get("status"), str) \
        and row.get("method") in ("fp", "uniform", "lcq") \
        and (row["method"] == "fp" and row.get("wbits") is None and row.get("abits") is None
             or row["method"] != "fp" and width(row.get("wbits")) and width(row.get("abits"))) \
        and all(percentage(row.get(k)) for k in ("test_top1", "paper_lcq_top1", "paper_apot_top1"))


def combine(paths: list[Path]) -> dict:
    """{"seeds", "schedule", "data", "runs": [{run, method, wbits, abits, seeds, top1, mean, std, paper...}],
    "files"} from the result files at ``paths``."""
    results = [read(p) for p in paths]
    first, first_path = results[0], paths[0]
    for data, path in zip(results[1:], paths[1:]):
        for key in SAME:
            if data["schedule"].get(key) != first["schedule"].get(key):
                raise ValueError(f"{path}: its schedule's {key!r} is {data['schedule'].get(key)!r}, "
                                 f"{first_path}'s {first['schedule'].get(key)!r}: only runs of one schedule and "
                                 "recipe average")
        for key in ("train_images", "test_images"):
            if data["data"].get(key) != first["data"].get(key):
                raise ValueError(f"{path}: trained on {data['data'].get(key)!r} {key.replace('_', ' ')}, "
                                 f"{first_path} on {first['data'].get(key)!r}")
    seeds = [d["seeds"]["seed"] for d in results]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed {next(s for s in seeds if seeds.count(s) > 1)} is given twice: each seed counts once")
    runs: dict[str, dict] = {}
    where: dict[str, Path] = {}
    for data, path in zip(results, paths):
        for row in data["rows"]:
            entry = runs.get(row["run"])
            if entry is not None and (row["method"], row["wbits"], row["abits"]) != \
                    (entry["method"], entry["wbits"], entry["abits"]):
                raise ValueError(f"{path}: its run {row['run']!r} is {_what(row)}, {where[row['run']]}'s "
                                 f"{_what(entry)}: one run name is one method and width")
            where.setdefault(row["run"], path)
            entry = runs.setdefault(row["run"], {k: row.get(k) for k in ("run", "method", "wbits", "abits")}
                                    | {"paper_lcq_top1": row.get("paper_lcq_top1"),
                                       "paper_apot_top1": row.get("paper_apot_top1"), "seeds": [], "top1": [],
                                       "not_finished": []})
            if row["status"] in FINISHED and row.get("test_top1") is not None:
                entry["seeds"].append(data["seeds"]["seed"])
                entry["top1"].append(row["test_top1"])
            else:
                entry["not_finished"].append({"seed": data["seeds"]["seed"], "status": row["status"],
                                              "file": str(path)})
    for entry in runs.values():
        top1 = entry["top1"]
        entry["mean"] = round(statistics.fmean(top1), 2) if top1 else None
        entry["std"] = round(statistics.stdev(top1), 2) if len(top1) > 1 else None
    return {"seeds": sorted(seeds), "schedule": first["schedule"], "data": first["data"],
            "runs": list(runs.values()),
            "files": [{"path": str(p), "seed": d["seeds"]["seed"], "machine": d.get("machine"),
                       "complete": d.get("complete")} for p, d in zip(paths, results)]}


def _what(row: dict) -> str:
    return row["method"] + ("" if row["method"] == "fp" else f" W{row['wbits']}/A{row['abits']}")


def table(combined: dict) -> str:
    n = len(combined["seeds"])
    fmt = lambda v: "-" if v is None else f"{v:.2f}"      # noqa: E731
    lines = [f"CIFAR-10, pre-activation ResNet-20, {combined['schedule'].get('text', combined['schedule'])}; "
             f"{combined['data'].get('train_images')} training / {combined['data'].get('test_images')} test images; "
             f"seeds {', '.join(map(str, combined['seeds']))}; test top-1 (%) after the final epoch, eval mode, "
             "mean ± std over seeds", "",
             "| run | W/A | top-1 | paper LCQ | paper APoT |", "|---|---|---|---|---|"]
    for r in combined["runs"]:
        wa = "32/32" if r["method"] == "fp" else f"{r['wbits']}/{r['abits']}"
        if not r["top1"]:
            cell = "not finished"
        else:
            cell = fmt(r["mean"]) + (f" ± {r['std']:.2f}" if r["std"] is not None else "")
            if len(r["top1"]) < n:
                cell += f" (n={len(r['top1'])})"
        lines.append(f"| {r['method']} | {wa} | {cell} | {fmt(r['paper_lcq_top1'])} | {fmt(r['paper_apot_top1'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="result files of cifar10_resnet20.py")
    p.add_argument("--json-out", type=output_file, default=DEFAULT_JSON, metavar="FILE")
    args = p.parse_args(argv)
    try:
        combined = combine(args.files)
    except ValueError as e:
        print(f"cifar10_seeds.py: error: {e}", file=sys.stderr)
        return 2
    text = table(combined)
    print(text)
    save_json({"benchmark": "cifar10-resnet20-seeds", "argv": sys.argv[1:] if argv is None else argv,
               **combined, "markdown": text}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
