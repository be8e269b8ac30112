"""Integer reference vs PyTorch fake-quant on whole test sets, for every quantized run of an accuracy grid.

For each ``checkpoint.pt`` of a quantized run anywhere under ``RUNS`` (``benchmarks/accuracy.py`` writes
``RUNS/clip-C-bn-N/seed-S/<run>/``; a row is named by that path below ``RUNS``), compiles it (``lcq compile``),
evaluates the integer reference and the float64 PyTorch model on the test set (``lcq eval``), and reports top-1 of
both, top-1 agreement, activation-code mismatches, model size and the reference's speed.

Run:  python benchmarks/integer_agreement.py --runs runs/accuracy/mnist-cnn [--data-dir DIR] [--images N]
Writes benchmarks/results/integer-agreement-<runs dir name>.json (-first<N>.json with --images N; or --json-out)
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from compiler import format as model_format
from compiler.agreement import compare
from compiler.lower import compile_checkpoint, load_model
from compiler.report import report
from lcq_train.arguments import output_file
from lcq_train.checkpoint import load_checkpoint, save_json
from lcq_train.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402


def default_json_out(runs_dir: Path, images: int | None) -> str:
    """``benchmarks/results/integer-agreement-<runs dir name>.json`` for whole test sets; ``...-first<N>.json``
    for ``--images N``, so that a quick check does not replace the whole test set's results."""
    part = "" if images is None else f"-first{images}"
    return str(Path(__file__).resolve().parent / "results" / f"integer-agreement-{runs_dir.name}{part}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, metavar="DIR",
                   help="directory of runs: every checkpoint.pt below it, at any depth (accuracy.py's --out)")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--images", type=int, metavar="N", help="first N test images (default: all)")
    p.add_argument("--json-out", type=output_file, metavar="FILE")
    args = p.parse_args(argv)
    if args.images is not None and args.images < 1:
        p.error("--images must be >= 1 (leave it out for all test images)")
    runs_dir = Path(args.runs)
    json_out = args.json_out or default_json_out(runs_dir, args.images)
    runs = sorted(p.parent for p in runs_dir.rglob("checkpoint.pt") if p.is_file()) if runs_dir.is_dir() else []
    try:        # (a checkpoint cut short or a stray file: CheckpointError names it and the fix)
        runs = [d for d in runs if load_checkpoint(d / "checkpoint.pt")["plan"]["method"] != "fp"]
    except (ValueError, OSError) as e:
        print(f"integer_agreement.py: error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"integer_agreement.py: error: no quantized runs with checkpoint.pt under {runs_dir}; "
              "run benchmarks/accuracy.py first", file=sys.stderr)
        return 2
    compiled_runs = []

    def name(run_dir: Path) -> str:
        return run_dir.relative_to(runs_dir).as_posix()

    for run_dir in runs:        # (all compiled before anything is written: a run the compiler refuses stops us here)
        checkpoint = run_dir / "checkpoint.pt"
        try:
            compiled_runs.append((run_dir, checkpoint, compile_checkpoint(checkpoint)))
        except (ValueError, OSError) as e:
            message = str(e) if str(checkpoint) in str(e) else f"{checkpoint}: {e}"
            print(f"integer_agreement.py: error: {message} (run {name(run_dir)} does not compile: retrain it with "
                  "benchmarks/accuracy.py, or move it out of --runs)", file=sys.stderr)
            return 2
    rows, data = [], None
    for run_dir, checkpoint, compiled in compiled_runs:
        model_path = run_dir / "model.lcq"
        model_format.save(compiled, model_path)
        if data is None:
            data = load_dataset(compiled.source["dataset"], args.data_dir)
        x, y = data.test_x.numpy(), data.test_y.numpy()
        if args.images is not None:
            x, y = x[:args.images], y[:args.images]
        t0 = time.perf_counter()
        result = compare(compiled, load_model(checkpoint)[0], x, y).to_dict()
        seconds = time.perf_counter() - t0
        rep = report(compiled)
        plan = compiled.source["plan"]
        first = compiled.convs[0].input
        rows.append({"run": name(run_dir), "method": plan["method"], "wbits": plan["wbits"], "abits": plan["abits"],
                     "trained_top1": compiled.source["test_top1"], **result, "seconds_both_paths": seconds,
                     "first_layer_codes_equal": result["code_mismatches"][first]["mismatched"] == 0,
                     "total_bytes": rep["total_bytes"], "total_bytes_without_luts": rep["total_bytes_without_luts"],
                     "model_file": str(model_path)})
        r = rows[-1]
        print(f"{name(run_dir)}: integer top-1 {r['top1']:.2f}%, agreement {100 * r['agreement']:.3f}% "
              f"({r['disagreements']} differ), {seconds:.1f} s", flush=True)

    command = shlex.join(["python", "benchmarks/integer_agreement.py", *sys.argv[1:]]) if argv is None else ""
    lines = [f"Command: `{command}`", "",
             "| run | W/A | trained top-1 (float32) | integer top-1 | fake-quant top-1 (float64) | agreement | "
             "images differ | codes differ / compared | bytes (with LUTs) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        codes = r["code_mismatches"].values()
        lines.append(f"| {r['run']} | {r['wbits']}/{r['abits']} | {r['trained_top1']:.2f} | {r['top1']:.2f} | "
                     f"{r['torch_top1']:.2f} | {100 * r['agreement']:.3f}% | {r['disagreements']} / {r['images']} | "
                     f"{sum(c['mismatched'] for c in codes):,} / {sum(c['compared'] for c in codes):,} | "
                     f"{r['total_bytes']:,} |")
    print("\n" + "\n".join(lines))
    save_json({"benchmark": "integer_agreement", "command": command, "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "git": git_state("lcq_train", "compiler"), "rows": rows}, json_out)
    print(f"\nwrote {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
