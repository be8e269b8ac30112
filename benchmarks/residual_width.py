"""How narrow can the residual stream be? Value widths and integer/PyTorch agreement per residual fraction.

Compiles one ResNet checkpoint (``lcq compile``) once per ``--residual-frac-bits F`` (the other
options at their defaults) and, for each F, records the network plan's value widths
(:func:`compiler.network.plan_network`, lanes 1: the widest residual-stream tensor, the value
memory's width, depth and bits) and runs the integer reference on the first ``--images`` test
images against the float64 PyTorch fake-quantized model, as ``lcq eval`` does
(:func:`compiler.agreement.compare`): top-1 of both, images whose top-1 differs, activation codes
that differ. The PyTorch model does not depend on F, so it runs once per batch and every F's
integer reference is compared with that one run. Also records the largest ``|value|`` the residual
stream actually reached on these images (its bits), next to the static bound that sets the width.

Run:  nice python benchmarks/residual_width.py --checkpoint runs/r20-w3a3-3/checkpoint.pt \\
          --data-dir /work/shared/datasets/cifar10-jpeg [--images 500] [--frac-bits 0 1 2 ... 8] [--threads 2]
Writes benchmarks/results/residual-width.json (or --json-out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from compiler.graph import FRAC_BITS, signed_bits
from compiler.lower import CompileOptions, as_compiled, compile_checkpoint, load_model
from compiler.network import plan_network
from compiler.reference import run
from lcq_train.arguments import IntRange, output_file, positive_int
from lcq_train.atomic import save_json
from lcq_train.layers import QAct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from repeats import refuse_repeats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def width_row(compiled) -> dict:
    """Value widths of ``compiled``'s network plan (lanes 1)."""
    plan = plan_network(compiled, 1)
    residual = [t for t in plan.tensors.values() if t.role == "residual"]
    values = plan.memories["values"]
    return {"residual_bits": max(t.bits for t in residual),
            "residual_bits_by_tensor": {t.name: t.bits for t in residual},
            "values_width": values.width, "values_depth": values.depth, "values_bits": values.bits,
            "codes_bits": plan.memories["codes"].bits, "total_bits": plan.total_bits,
            "logits_bits": plan.tensors[compiled.logits].bits}


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/r20-w3a3-3/checkpoint.pt", help="an lcq train checkpoint (ResNet)")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory or archive (default: $LCQ_DATA_DIR/...)")
    p.add_argument("--images", type=positive_int, default=500, metavar="N", help="first N test images")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per batch")
    p.add_argument("--frac-bits", type=IntRange(*FRAC_BITS), nargs="+", default=list(range(9)), metavar="F",
                   help="residual fraction bits to compile with")
    p.add_argument("--threads", type=positive_int, metavar="T", help="torch CPU threads (default: torch's)")
    p.add_argument("--json-out", type=output_file, metavar="FILE",
                   default=str(ROOT / "benchmarks" / "results" / "residual-width.json"))
    args = p.parse_args(argv)
    refuse_repeats(p, "--frac-bits", args.frac_bits, "fraction")     # (compiled once, but a row each)
    if not Path(args.checkpoint).is_file():
        p.error(f"no checkpoint at --checkpoint {args.checkpoint}: pass the checkpoint.pt of an lcq train run")
    if args.threads:
        torch.set_num_threads(args.threads)
    from lcq_train.data import load_dataset

    command = shlex.join(["python", "benchmarks/residual_width.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.perf_counter()
    compiled = {}
    for f in args.frac_bits:
        compiled[f] = compile_checkpoint(args.checkpoint, CompileOptions(residual_frac_bits=f))
    compile_s = time.perf_counter() - t0
    first = compiled[args.frac_bits[0]]
    data = load_dataset(first.source["dataset"], args.data_dir)
    images, labels = data.test_x.numpy()[:args.images], data.test_y.numpy()[:args.images]

    model = as_compiled(load_model(args.checkpoint)[0])
    captured: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda m, inp, out, name=name: captured.__setitem__(name, m.codes(inp[0]).numpy()))
             for name, m in model.named_modules() if isinstance(m, QAct)]
    stats = {f: {"correct": 0, "disagreements": 0, "codes_compared": 0, "codes_mismatched": 0,
                 "observed_residual_max": 0, "observed_values_max": 0, "seconds": 0.0} for f in args.frac_bits}
    torch_correct, torch_s = 0, 0.0
    residual_names = {f: [t.name for t in plan_network(c).tensors.values() if t.role == "residual"]
                      for f, c in compiled.items()}
    try:
        for start in range(0, len(images), args.batch_size):
            x, y = images[start:start + args.batch_size], labels[start:start + args.batch_size]
            captured.clear()
            t1 = time.perf_counter()
            torch_pred = model(torch.from_numpy(x).double() / 255.0).argmax(1).numpy()
            torch_s += time.perf_counter() - t1
            torch_correct += int((torch_pred == y).sum())
            for f, c in compiled.items():
                t1 = time.perf_counter()
                tensors = run(c, x)
                s = stats[f]
                s["seconds"] += time.perf_counter() - t1
                pred = tensors[c.logits].reshape(len(x), -1).argmax(1)
                s["correct"] += int((pred == y).sum())
                s["disagreements"] += int((pred != torch_pred).sum())
                for name, codes in captured.items():
                    s["codes_compared"] += codes.size
                    s["codes_mismatched"] += int((tensors[name].reshape(codes.shape) != codes).sum())
                s["observed_residual_max"] = max(s["observed_residual_max"],
                                                 *(int(np.abs(tensors[n]).max()) for n in residual_names[f]))
                s["observed_values_max"] = max(s["observed_values_max"], *(int(np.abs(tensors[n]).max())
                                               for n in c.scales))
            print(f"\r{min(start + args.batch_size, len(images))}/{len(images)} images", end="", file=sys.stderr,
                  flush=True)
    finally:
        for h in hooks:
            h.remove()
    print(file=sys.stderr)

    n = len(images)
    rows = []
    for f in args.frac_bits:
        s = stats[f]
        rows.append({"residual_frac_bits": f, **width_row(compiled[f]),
                     "observed_residual_bits": signed_bits(s["observed_residual_max"]),
                     "observed_values_bits": signed_bits(s["observed_values_max"]),
                     "images": n, "top1": 100.0 * s["correct"] / n, "torch_top1": 100.0 * torch_correct / n,
                     "disagreements": s["disagreements"], "agreement": (n - s["disagreements"]) / n,
                     "codes_compared": s["codes_compared"], "codes_mismatched": s["codes_mismatched"],
                     "integer_seconds": s["seconds"]})
    agreeing = [r["residual_frac_bits"] for r in rows if r["disagreements"] == 0]
    # The fewest fraction bits from which on every larger setting measured agrees too.
    settled = [f for f in agreeing if all(r["disagreements"] == 0 for r in rows if r["residual_frac_bits"] >= f)]
    lines = [f"Command: `{command}`; first {n} {first.source['dataset']} test images; checkpoint "
             f"{first.source['checkpoint']} (trained top-1 {first.source['test_top1']})", "",
             "| residual frac bits | residual stream bits (bound) | value memory width | value memory Kbit (lanes 1) | "
             "total data memory Kbit | residual bits reached | integer top-1 | PyTorch top-1 | top-1 differ | "
             "codes differ / compared |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['residual_frac_bits']} | {r['residual_bits']} | {r['values_width']} | "
                     f"{r['values_bits'] / 1000:,.0f} | {r['total_bits'] / 1000:,.0f} | "
                     f"{r['observed_residual_bits']} | "
                     f"{r['top1']:.2f} | {r['torch_top1']:.2f} | {r['disagreements']} / {n} | "
                     f"{r['codes_mismatched']:,} / {r['codes_compared']:,} |")
    fewest = min(settled) if settled else None
    lines += ["", f"fewest residual fraction bits with no top-1 difference here (and none above): {fewest}"
              + (f" -> residual stream {rows[args.frac_bits.index(fewest)]['residual_bits']} bits" if settled else "")]
    print("\n".join(lines))
    save_json({"benchmark": "residual_width", "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_sha256": first.source["sha256"],
               "trained_top1": first.source["test_top1"], "dataset": first.source["dataset"], "images": n,
               "options": {k: v for k, v in vars(args).items()},
               "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "platform": platform.platform(), "python": platform.python_version()},
               "versions": {pkg: version(pkg) for pkg in ("torch", "numpy", "pillow")},
               "git": git_state("compiler", "lcq_train"),
               "seconds": {"compile": compile_s, "torch": torch_s, "total": time.perf_counter() - t0},
               "fewest_agreeing_frac_bits": fewest, "rows": rows}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
