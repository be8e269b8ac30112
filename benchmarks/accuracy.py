"""Accuracy table: full precision vs uniform vs LCQ at W2/A2, W3/A3 and W4/A4.

Trains the full-precision model once (``OUT/fp``), then for each bit-width b
fine-tunes a uniform Wb/Ab and an LCQ Wb/Ab model from the FP checkpoint with
the same recipe (epochs, learning rates, seed) in ``OUT/uniform-wbab`` and
``OUT/lcq-wbab``, and reports test top-1 (final and best epoch) and the gap
to FP. Resumable: re-running the same command skips finished runs and resumes
interrupted ones from their checkpoints.

Run:  python benchmarks/accuracy.py --dataset digits [--model cnn] [--fp-epochs 30] [--epochs 30] [--bits 2 3 4]
Writes benchmarks/results/accuracy-<dataset>-<model>.json (or --json-out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from lcq_train.checkpoint import save_json
from lcq_train.runs import saved_metrics, train_or_resume
from lcq_train.data import DATASETS
from lcq_train.models import MODELS
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig

# Settings a finished or interrupted run must share with the requested one to be reused.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--fp-epochs", type=int, default=30, metavar="N", help="full-precision training epochs")
    p.add_argument("--epochs", type=int, default=30, metavar="N", help="quantized fine-tuning epochs")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4], metavar="B", help="W/A bit-widths")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, help="weight learning rate of every run (default: the trainer's, "
                   "0.1 fp / 0.04 quantized)")
    p.add_argument("--q-lr", type=float, help=f"quantizer learning rate (default: the trainer's, {TrainConfig.q_lr})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/accuracy/<dataset>-<model>)")
    p.add_argument("--json-out", metavar="FILE",
                   help="results file (default: benchmarks/results/accuracy-<dataset>-<model>.json)")
    args = p.parse_args(argv)
    if min(args.fp_epochs, args.epochs, args.batch_size) < 1:
        p.error("--fp-epochs, --epochs and --batch-size must be >= 1")
    if len(set(args.bits)) != len(args.bits):
        p.error("--bits must not repeat a bit-width")
    args.out = args.out or f"runs/accuracy/{args.dataset}-{args.model}"
    args.json_out = args.json_out or str(
        Path(__file__).resolve().parent / "results" / f"accuracy-{args.dataset}-{args.model}.json")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line (every option spelled out) that reproduces this table."""
    cmd = ["python", "benchmarks/accuracy.py", "--dataset", args.dataset, "--model", args.model,
           "--fp-epochs", str(args.fp_epochs), "--epochs", str(args.epochs), "--bits", *map(str, args.bits),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--out", args.out]
    for flag, value in (("--data-dir", args.data_dir), ("--lr", args.lr), ("--q-lr", args.q_lr),
                        ("--device", args.device)):
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd)


def run_configs(args: argparse.Namespace) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every run, FP first; quantized runs start from the FP checkpoint."""
    out = Path(args.out)
    common = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir, "batch_size": args.batch_size,
              "seed": args.seed, "device": args.device, "progress": False, "lr": args.lr}
    if args.q_lr is not None:
        common["q_lr"] = args.q_lr
    runs = [("fp", TrainConfig(plan=QuantPlan("fp"), epochs=args.fp_epochs, out=str(out / "fp"), **common))]
    for b in args.bits:
        for method in ("uniform", "lcq"):
            name = f"{method}-w{b}a{b}"
            runs.append((name, TrainConfig(plan=QuantPlan(method, b, b), epochs=args.epochs, out=str(out / name),
                                           init=str(out / "fp" / "checkpoint.pt"), **common)))
    return runs


def make_row(label: str, cfg: TrainConfig, metrics: dict, fp_top1: float) -> dict:
    plan = cfg.plan
    return {"run": label, "method": plan.method,
            "wbits": None if plan.method == "fp" else plan.wbits, "abits": None if plan.method == "fp" else plan.abits,
            "test_top1": metrics["test_top1"], "best_test_top1": metrics["best_test_top1"],
            "gap_to_fp": metrics["test_top1"] - fp_top1, "epochs": len(metrics["epochs"]),
            "weight_lr": cfg.weight_lr(), "q_lr": cfg.q_lr, "out": cfg.out}


def recipe(args: argparse.Namespace, runs: list[tuple[str, TrainConfig]]) -> dict:
    """The settings shared by the runs: trainer options, quantization plan (less method and bits), lrs."""
    fp, quant = runs[0][1], runs[1][1]
    per_run = ("plan", "epochs", "lr", "out", "init", "resume", "progress")
    plan = {k: v for k, v in quant.plan.to_dict().items() if k not in ("method", "wbits", "abits")}
    return {**{k: v for k, v in quant.to_dict().items() if k not in per_run},
            "fp_epochs": fp.epochs, "epochs": quant.epochs, "bits": args.bits,
            "fp_weight_lr": fp.weight_lr(), "quant_weight_lr": quant.weight_lr(), "plan": plan}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Command: `{reproduce_command(args)}`", "",
             f"{args.dataset}, {args.model}: test top-1 (%)", "",
             "| method | W/A | top-1 (final) | best top-1 | gap to FP (final) | epochs |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        wa = "32/32" if r["method"] == "fp" else f"{r['wbits']}/{r['abits']}"
        gap = "-" if r["method"] == "fp" else f"{r['gap_to_fp']:+.2f}"
        lines.append(f"| {r['method']} | {wa} | {r['test_top1']:.2f} | {r['best_test_top1']:.2f} | {gap} | "
                     f"{r['epochs']} |")
    lines += ["", "First/last layers 8-bit uniform, input 8-bit; quantized runs fine-tuned from the FP checkpoint."]
    if 2 in args.bits:
        lines.append("LCQ W2/A2: signed 2-bit (ternary) weights fall back to uniform; activations use LCQ.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = run_configs(args)
    try:
        for _, cfg in runs:  # refuse a mismatched --out before spending any training time
            saved_metrics(cfg)
        results = []
        for i, (label, cfg) in enumerate(runs, 1):
            metrics, _, note = train_or_resume(cfg)
            results.append(metrics)
            print(f"[{i}/{len(runs)}] {label}: test top-1 {metrics['test_top1']:.2f}% "
                  f"(best {metrics['best_test_top1']:.2f}%), {len(metrics['epochs'])} epochs; {note} -> {cfg.out}",
                  flush=True)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"accuracy.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"accuracy.py: interrupted; re-run `{reproduce_command(args)}` to resume", file=sys.stderr)
        return 130

    fp_top1 = results[0]["test_top1"]
    rows = [make_row(label, cfg, metrics, fp_top1) for (label, cfg), metrics in zip(runs, results)]
    print("\n" + table(rows, args))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    save_json({"benchmark": "accuracy", "command": reproduce_command(args), "argv": sys.argv[1:],
               "options": vars(args), "torch": torch.__version__, "device": device,
               "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "settings": recipe(args, runs),
               "rows": rows}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
