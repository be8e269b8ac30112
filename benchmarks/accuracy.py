"""Accuracy table: full precision vs uniform vs LCQ at W2/A2, W3/A3 and W4/A4, mean ± std over seeds.

Trains the full-precision model once (``OUT/fp``, the first seed), then for each bit-width b and each
seed fine-tunes a uniform Wb/Ab and an LCQ Wb/Ab model from that FP checkpoint with the same recipe
(epochs, learning rates, clip initialization, BN re-estimation) in ``OUT/clip-C-bn-N/seed-S/uniform-wbab``
and ``.../lcq-wbab`` (one folder per recipe, sharing the FP run), and reports test top-1 after the final
epoch in eval mode (mean ± sample std over the seeds, and each seed's), the best epoch's, and the gap to
FP. ``--jobs`` runs that many trainings side by side (one CPU thread each). Resumable: re-running the
same command skips finished runs and resumes interrupted ones from their checkpoints. A table can be filled
in over several invocations (``--bits 2``, later ``--bits 3``): the rows of other widths in the results file
are kept where it holds the same recipe and the same FP result (a fresh FP run on the same seed, threads and
torch gives the same), so the runs behind them need not be on disk; invocations side by side on one results
file read, merge and write it in turn, under its lock.

Run:  python benchmarks/accuracy.py --dataset digits [--model cnn] [--fp-epochs 30] [--epochs 30] [--bits 2 3 4]
      [--seeds 0 1 2] [--clip-init fixed|mse] [--bn-batches N] [--jobs 2]
Writes benchmarks/results/accuracy-<dataset>-<model>[-<recipe>].json (or --json-out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

from lcq_train.arguments import default_device, learning_rate, output_file, quantizer_rate
from lcq_train.calibrate import CLIP_INITS
from lcq_train.checkpoint import save_json
from lcq_train.runs import WorkerDied, saved_metrics, train_or_resume, training_pool
from lcq_train.data import DATASETS
from lcq_train.models import MODELS
from lcq_train.plan import QuantPlan
from lcq_train.quantizer import BITS
from lcq_train.train import PAPER_RECIPE, SEED, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from result_fields import is_count, is_number, is_percentage, read_results, results_lock  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--fp-epochs", type=int, default=30, metavar="N", help="full-precision training epochs")
    p.add_argument("--epochs", type=int, default=30, metavar="N", help="quantized fine-tuning epochs")
    p.add_argument("--bits", type=BITS, nargs="+", default=[2, 3, 4], metavar="B", help="W/A bit-widths")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=learning_rate, help="weight learning rate of every run (default: the trainer's, "
                   "0.1 fp / 0.04 quantized)")
    p.add_argument("--q-lr", type=quantizer_rate,
                   help=f"quantizer learning rate (default: the trainer's, {TrainConfig.q_lr})")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2], metavar="S",
                   help="seeds of the quantized runs (the FP run uses the first)")
    p.add_argument("--methods", nargs="+", choices=("uniform", "lcq"), default=["uniform", "lcq"])
    p.add_argument("--clip-init", choices=CLIP_INITS, default=TrainConfig.clip_init,
                   help="initial clips of the quantized runs (lcq train --clip-init)")
    p.add_argument("--bn-batches", type=int, default=TrainConfig.bn_batches, metavar="N",
                   help="BN statistics re-estimated on N batches after the last epoch (lcq train --bn-batches)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="trainings side by side, one thread each")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/accuracy/<dataset>-<model>)")
    p.add_argument("--json-out", type=output_file, metavar="FILE",
                   help="results file (default: benchmarks/results/accuracy-<dataset>-<model>[-clip<C>-bn<N>].json; "
                        "no suffix for the paper's recipe, --clip-init fixed --bn-batches 0)")
    args = p.parse_args(argv)
    if min(args.fp_epochs, args.epochs, args.batch_size, args.jobs) < 1:
        p.error("--fp-epochs, --epochs, --batch-size and --jobs must be >= 1")
    if args.bn_batches < 0:
        p.error("--bn-batches must be >= 0")
    for name in ("bits", "seeds", "methods"):
        if len(set(getattr(args, name))) != len(getattr(args, name)):
            p.error(f"--{name} must not repeat a value")
    paper = {"clip_init": args.clip_init, "bn_batches": args.bn_batches} == PAPER_RECIPE
    label = "" if paper else f"-clip{args.clip_init}-bn{args.bn_batches}"     # (files named as the paper's first)
    args.out = args.out or f"runs/accuracy/{args.dataset}-{args.model}"
    args.json_out = args.json_out or str(
        Path(__file__).resolve().parent / "results" / f"accuracy-{args.dataset}-{args.model}{label}.json")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line (every option spelled out) that reproduces this table."""
    cmd = ["python", "benchmarks/accuracy.py", "--dataset", args.dataset, "--model", args.model,
           "--fp-epochs", str(args.fp_epochs), "--epochs", str(args.epochs), "--bits", *map(str, args.bits),
           "--batch-size", str(args.batch_size), "--seeds", *map(str, args.seeds), "--methods", *args.methods,
           "--clip-init", args.clip_init, "--bn-batches", str(args.bn_batches), "--jobs", str(args.jobs),
           "--out", args.out]
    for flag, value in (("--data-dir", args.data_dir), ("--lr", args.lr), ("--q-lr", args.q_lr),
                        ("--device", args.device)):
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd)


def run_configs(args: argparse.Namespace) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every run, FP first; quantized runs (label ``method-wbab/seed-S``) start from the
    FP checkpoint."""
    out = Path(args.out)
    common = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir, "batch_size": args.batch_size,
              "device": args.device, "progress": False, "lr": args.lr}
    if args.q_lr is not None:
        common["q_lr"] = args.q_lr
    runs = [("fp", TrainConfig(plan=QuantPlan("fp"), epochs=args.fp_epochs, out=str(out / "fp"), seed=args.seeds[0],
                               **common))]
    recipe_dir = f"clip-{args.clip_init}-bn-{args.bn_batches}"       # the recipes share the FP run
    for b in args.bits:
        for method in args.methods:
            for seed in args.seeds:
                name = f"{method}-w{b}a{b}"
                runs.append((f"{name}/seed-{seed}", TrainConfig(
                    plan=QuantPlan(method, b, b), epochs=args.epochs, out=str(out / recipe_dir / f"seed-{seed}" / name),
                    init=str(out / "fp" / "checkpoint.pt"), seed=seed, clip_init=args.clip_init,
                    bn_batches=args.bn_batches, **common)))
    return runs


def make_rows(runs: list[tuple[str, TrainConfig]], results: list[dict]) -> list[dict]:
    """One row per method and bit-width: final and best top-1 as mean ± std over its seeds, and each seed's
    (with the CPU threads it trained on: results depend on them)."""
    groups: dict[str, list[tuple[TrainConfig, dict]]] = {}
    for (label, cfg), metrics in zip(runs, results):
        groups.setdefault(label.split("/")[0], []).append((cfg, metrics))
    fp_top1 = results[0]["test_top1"]
    rows = []
    for name, members in groups.items():
        cfg = members[0][0]
        plan, finals = cfg.plan, [m["test_top1"] for _, m in members]
        bests = [m["best_test_top1"] for _, m in members]
        before = [m["epochs"][-1].get("test_top1_before_bn") for _, m in members]
        rows.append({"run": name, "method": plan.method,
                     "wbits": None if plan.method == "fp" else plan.wbits,
                     "abits": None if plan.method == "fp" else plan.abits,
                     "seeds": [c.seed for c, _ in members], "test_top1": finals, "best_test_top1": bests,
                     "test_top1_mean": statistics.mean(finals),
                     "test_top1_std": statistics.stdev(finals) if len(finals) > 1 else None,
                     "best_test_top1_mean": statistics.mean(bests),
                     "test_top1_before_bn": before if any(b is not None for b in before) else None,
                     "gap_to_fp": statistics.mean(finals) - fp_top1, "epochs": len(members[0][1]["epochs"]),
                     "weight_lr": cfg.weight_lr(), "q_lr": cfg.q_lr, "clip_init": cfg.clip_init,
                     "bn_batches": cfg.bn_batches, "out": [c.out for c, _ in members],
                     "torch_threads": [m.get("environment", {}).get("torch_threads") for _, m in members]})
    return rows


def recipe(args: argparse.Namespace, runs: list[tuple[str, TrainConfig]]) -> dict:
    """The settings shared by the runs: trainer options, quantization plan (less method and bits), lrs."""
    fp, quant = runs[0][1], runs[1][1]
    per_run = ("plan", "epochs", "lr", "out", "init", "resume", "progress", "seed")
    plan = {k: v for k, v in quant.plan.to_dict().items() if k not in ("method", "wbits", "abits")}
    return {**{k: v for k, v in quant.to_dict().items() if k not in per_run},
            "fp_epochs": fp.epochs, "epochs": quant.epochs, "bits": args.bits, "seeds": args.seeds,
            "fp_weight_lr": fp.weight_lr(), "quant_weight_lr": quant.weight_lr(), "plan": plan}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Command: `{reproduce_command(args)}`", "",
             f"{args.dataset}, {args.model}: test top-1 (%) after the final epoch, eval mode; quantized runs: mean ± "
             f"std over seeds {', '.join(map(str, args.seeds))}; clip init {args.clip_init}, BN re-estimated on "
             f"{args.bn_batches} batches", "",
             "| method | W/A | top-1 final | per seed | best epoch (mean) | gap to FP | epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        wa = "32/32" if r["method"] == "fp" else f"{r['wbits']}/{r['abits']}"
        gap = "-" if r["method"] == "fp" else f"{r['gap_to_fp']:+.2f}"
        std = "" if r["test_top1_std"] is None else f" ± {r['test_top1_std']:.2f}"
        lines.append(f"| {r['method']} | {wa} | {r['test_top1_mean']:.2f}{std} | "
                     f"{' '.join(f'{v:.2f}' for v in r['test_top1'])} | {r['best_test_top1_mean']:.2f} | {gap} | "
                     f"{r['epochs']} |")
    lines += ["", "First/last layers 8-bit uniform, input 8-bit; quantized runs fine-tuned from the FP checkpoint "
              f"(seed {args.seeds[0]})."]
    if 2 in args.bits:
        lines.append("LCQ W2/A2: signed 2-bit (ternary) weights fall back to uniform; activations use LCQ.")
    return "\n".join(lines)


def comparable(settings: dict, device: str) -> dict:
    """``settings`` (less ``bits``) as two invocations of one recipe compare them: the data directory resolved
    (``../shared/datasets/mnist`` and its absolute path are one directory) and the device the runs used (``device``:
    ``--device`` or, without it, the default it resolved to)."""
    ours = {k: v for k, v in settings.items() if k != "bits"}
    if ours.get("data_dir"):
        ours["data_dir"] = str(Path(ours["data_dir"]).resolve())
    return {**ours, "device": device}


def carried_rows(path: str, settings: dict, rows: list[dict], device: str) -> tuple[list[dict], str]:
    """Rows of ``path`` (an earlier results file) for widths and methods this run did not train, where that file
    holds the same recipe (``settings`` but its ``bits``, :func:`comparable`; ``device``: the one these runs used)
    and the same FP result: a table filled in over several invocations. Returns those rows and a line saying what
    was kept or why nothing was; ValueError (:func:`earlier_results`) where the file is not one this script
    wrote."""
    earlier = earlier_results(path)
    if earlier is None:
        return [], ""
    theirs, their_rows = comparable(earlier["settings"], earlier["device"]), earlier["rows"]
    their_fp = next(r["test_top1"] for r in their_rows if r["method"] == "fp")
    their_threads = earlier["cpu_threads"] if earlier["options"]["jobs"] == 1 else 1
    ours = comparable(settings, device)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        return [], f"replacing {path}: its recipe differs ({', '.join(differ)})"
    if their_fp != rows[0]["test_top1"]:
        return [], f"replacing {path}: its FP run scored {their_fp}, this one {rows[0]['test_top1']}"
    done = {r["run"] for r in rows}
    kept = [r for r in their_rows if r["run"] not in done]
    for r in kept:      # (a file written before rows named their threads: one run at a time, the file's threads)
        r.setdefault("torch_threads", [their_threads] * len(r["seeds"]))
    return kept, f"kept {', '.join(r['run'] for r in kept)} from {path} (same recipe and FP run)" if kept else ""


def earlier_results(path: str) -> dict | None:
    """The results file an earlier invocation wrote at ``path`` (None: there is none), checked in every field
    :func:`carried_rows` reads or keeps; ValueError naming the file, the field and the fix where it is not one
    this script wrote (cut short, or edited by hand): replacing it would drop its rows."""
    fix = "restore it, or give another --json-out (or delete it) to start a new table"
    data = read_results(path, f"it is not a results file of accuracy.py: {fix}")
    if data is None:
        return None
    problem = results_problem(data)
    if problem:
        raise ValueError(f"{path}: {problem}; it is not a results file of accuracy.py: {fix}")
    return data


def results_problem(data) -> str | None:
    """What makes ``data`` other than a results file of this script in the fields a later invocation reads (its
    settings, device, threads, and every row's values, which must be of the settings' seeds and epochs and whose
    means, std and gap must follow from the per-seed values); None when nothing does."""
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return "it has no 'settings' object"
    settings = data["settings"]
    seeds = settings.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(is_count(s) for s in seeds) \
            or not is_count(settings.get("fp_epochs")) or not is_count(settings.get("epochs")):
        return "its settings have no 'seeds', 'fp_epochs' and 'epochs'"
    if not isinstance(data.get("device"), str) or not is_count(data.get("cpu_threads")) \
            or not isinstance(data.get("options"), dict) or not is_count(data["options"].get("jobs")):
        return "it has no 'device', 'cpu_threads' and 'options.jobs'"
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in rows):
        return "its 'rows' is not a list of rows"
    names = [r["run"] for r in rows]
    if len(set(names)) != len(names):
        return "a row's run is in it twice"
    fp = [r for r in rows if r.get("method") == "fp"]
    if len(fp) != 1:
        return f"it has {len(fp)} FP rows, not 1"
    for row in fp + [r for r in rows if r is not fp[0]]:     # (the FP row first: the others' gap is to it)
        problem = _row_problem(row, settings, fp[0])
        if problem:
            return f"row {row['run']!r} {problem}"
    return None


def _row_problem(row: dict, settings: dict, fp: dict) -> str | None:
    method = row.get("method")
    if method not in ("fp", "uniform", "lcq"):
        return f"has method {method!r}, not fp, uniform or lcq"
    widths = (row.get("wbits"), row.get("abits"))
    if not (widths == (None, None) if method == "fp" else all(is_count(b) for b in widths)):
        return f"has wbits/abits {widths}, not {'None' if method == 'fp' else 'integers'}"
    seeds = settings["seeds"][:1] if method == "fp" else settings["seeds"]
    if row.get("seeds") != seeds:
        return f"is of seeds {row.get('seeds')!r}, not {seeds} as its settings say"
    epochs = settings["fp_epochs" if method == "fp" else "epochs"]
    if row.get("epochs") != epochs:
        return f"has {row.get('epochs')!r} epochs, not {epochs} as its settings say"
    for key in ("test_top1", "best_test_top1"):
        values = row.get(key)
        if not isinstance(values, list) or len(values) != len(seeds) or not all(is_percentage(v) for v in values):
            return f"has {key} {values!r}, not a percentage per seed"
    finals, threads = row["test_top1"], row.get("torch_threads")
    derived = {"test_top1_mean": statistics.mean(finals),
               "test_top1_std": statistics.stdev(finals) if len(finals) > 1 else None,
               "best_test_top1_mean": statistics.mean(row["best_test_top1"]),
               "gap_to_fp": statistics.mean(finals) - statistics.mean(fp["test_top1"])}
    for key, value in derived.items():
        if not (row.get(key) is None if value is None else is_number(row.get(key)) and math.isclose(
                row[key], value, rel_tol=1e-9, abs_tol=1e-9)):
            return f"has {key} {row.get(key)!r}, not the {key.removeprefix('test_top1_')} of its per-seed values"
    if threads is not None and (not isinstance(threads, list) or len(threads) != len(seeds)
                                or not all(t is None or is_count(t) for t in threads)):
        return f"has torch_threads {threads!r}, not a thread count per seed"
    return None


def merged(rows: list[dict], kept: list[dict]) -> list[dict]:
    """``rows`` and ``kept`` in table order: FP, then by width, uniform before LCQ."""
    order = {"fp": 0, "uniform": 1, "lcq": 2}
    return sorted(rows + kept, key=lambda r: (r["method"] != "fp", r["wbits"] or 0, order[r["method"]]))


def report(i: int, n: int, run: tuple[str, TrainConfig], metrics: dict, _seconds: float, note: str) -> dict:
    label, cfg = run
    print(f"[{i}/{n}] {label}: test top-1 {metrics['test_top1']:.2f}% (best {metrics['best_test_top1']:.2f}%), "
          f"{len(metrics['epochs'])} epochs; {note} -> {cfg.out}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = run_configs(args)
    try:
        earlier_results(args.json_out)  # refuse a damaged results file and a mismatched --out before any training
        for _, cfg in runs:
            saved_metrics(cfg)
        results = [report(1, len(runs), runs[0], *train_or_resume(runs[0][1]))]     # FP first: the others need it
        rest = list(enumerate(runs[1:], 2))
        if args.jobs == 1:
            results += [report(i, len(runs), run, *train_or_resume(run[1])) for i, run in rest]
        else:
            with training_pool(args.jobs) as pool:
                futures = [pool.submit(train_or_resume, run[1]) for _, run in rest]
                results += [report(i, len(runs), run, *f.result()) for (i, run), f in zip(rest, futures)]
        rows, settings = make_rows(runs, results), recipe(args, runs)
        with results_lock(args.json_out):          # (one filling the file side by side waits: both keep their rows)
            write_results(args, rows, settings, args.device or default_device())
    except (ValueError, FileNotFoundError, FileExistsError, TimeoutError, WorkerDied) as e:  # (WorkerDied: killed)
        print(f"accuracy.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"accuracy.py: interrupted; re-run `{reproduce_command(args)}` to resume", file=sys.stderr)
        return 130
    print(f"\nwrote {args.json_out}")
    return 0


def write_results(args: argparse.Namespace, rows: list[dict], settings: dict, device: str) -> None:
    """Print the table of ``rows`` and of the rows :func:`carried_rows` keeps of the results file, and write them
    all there (under its lock: :func:`main`)."""
    kept, note = carried_rows(args.json_out, settings, rows, device)
    if kept:   # the table and its command cover every width and method in the file
        rows = merged(rows, kept)
        args.bits = settings["bits"] = sorted({r["wbits"] for r in rows if r["method"] != "fp"})
        args.methods = [m for m in ("uniform", "lcq") if any(r["method"] == m for r in rows)]
    print("\n" + table(rows, args))
    if note:
        print(note)
    save_json({"benchmark": "accuracy", "command": reproduce_command(args), "argv": sys.argv[1:],
               "options": vars(args), "torch": torch.__version__, "device": device,
               "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "git": git_state("lcq_train"),
               "settings": settings, "rows": rows}, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
