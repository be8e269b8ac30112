"""The paper's ablations (Sec. 4.5): intervals K, LWN against standardization, outer widths, on a small CNN
(the CPU) or on CIFAR-10 ResNet-20 (``--model resnet20 --schedule short``, a GPU).

Three tables, each over ``--seeds`` (at least 3 for a result; mean ± sample std of the final test top-1):

1. top-1 against the compander intervals K in {1, 2, 4, 8, 16} at W2/A2 and W3/A3 (K = 1 is the
   uniform quantizer; at W2 the weights are ternary, so W2/A2 varies the activation quantizers only);
2. limited weight normalization (LWN, eq. 13) against the conventional standardization of APoT
   (``--weight-norm standardize``: no rescaling by sigma_w) at W2/A2, W3/A3 and W4/A4;
3. outer widths b'_w/b'_a in {8/8, 6/6, 4/4, 8/4, 4/8} at W3/A3 (the inner layers; the 8-bit edge
   layers keep 8/8): top-1, and the LUT bytes per layer and in total of the compiled model
   (``lcq report``) against the paper's formula ``2^-3 (b'_w + b'_a) m`` bytes (m = s_w * s_a
   entries per LUT); each compiled model is also checked against PyTorch (top-1 agreement).

Per seed, one full-precision run, then every quantized run fine-tuned from it with the same recipe
(LCQ, K = 16, LWN, b' = 8 unless the table varies it; ``--clip-init`` and ``--bn-batches`` as ``lcq train``'s
defaults, ``--clip-init fixed --bn-batches 0`` being the paper's); a run that two tables share (W3/A3 K = 16
LWN 8/8) is trained once. ``--jobs N`` trains N runs side by side, one CPU thread each. ``--bits 2`` runs tables
1 and 2 at W2/A2 alone (another invocation the other widths, into the same results file). Resumable: finished
runs are skipped, interrupted ones resumed; and every finished run is recorded in the results file at once,
which a later invocation with the same settings reads back, so the tables can be filled in over several
sessions without the run directories (a seed's FP run is trained again only where runs of that seed remain,
and must score as recorded: the same seed, threads and torch give the same), or by invocations side by side
(other seeds, tables or --bits, one --json-out): each write re-reads the file under its lock and keeps the others' runs.

Run:  python benchmarks/ablations.py --dataset mnist --data-dir ../shared/datasets/mnist --schedule full --jobs 2
      python benchmarks/ablations.py --dataset digits --schedule quick --seeds 0 --epochs 1 --fp-epochs 1
      python benchmarks/ablations.py --dataset cifar10 --model resnet20 --data-dir DIR --schedule short \
          --device cuda --jobs 6          # on one GPU, over several calls: benchmarks/gpu_session.sh TASK=ablations
Writes benchmarks/results/ablations-<dataset>.json (atomically; or --json-out) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import numpy as np
import torch

from lcq_train.arguments import default_device, output_file
from lcq_train.calibrate import CLIP_INITS
from lcq_train.checkpoint import save_json
from lcq_train.data import DATASETS, DatasetError, load_dataset
from lcq_train.models import MODELS, build_model
from lcq_train.plan import QuantPlan
from lcq_train.runs import WorkerDied, saved_metrics, train_or_resume, training_pool
from lcq_train.train import SEED, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from result_fields import is_count, is_number, is_percentage, read_results, results_lock  # noqa: E402

KS = (1, 2, 4, 8, 16)
K_BITS = (2, 3)
NORM_BITS = (2, 3, 4)
NORMS = ("lwn", "standardize")
OUTERS = ((8, 8), (6, 6), (4, 4), (8, 4), (4, 8))
OUTER_BITS_AT = 3
# (fp epochs, quantized epochs) per schedule and dataset; "short" is CIFAR-10's on a GPU, the schedule of
# benchmarks/cifar10_resnet20.py (benchmarks/gpu_session.sh runs it with TASK=ablations)
SCHEDULES = {
    "quick": {"digits": (3, 2), "mnist": (1, 1), "fashion-mnist": (1, 1), "cifar10": (1, 1)},
    "short": {"cifar10": (40, 15)},
    "full": {"digits": (30, 30), "mnist": (15, 10), "fashion-mnist": (15, 10), "cifar10": (300, 300)},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--schedule", choices=tuple(SCHEDULES), default="quick",
                   help="epochs per run: " + "; ".join(f"{k}: " + ", ".join(f"{d} {f}+{q}" for d, (f, q) in v.items())
                                                       for k, v in SCHEDULES.items()) + " (fp + quantized)")
    p.add_argument("--fp-epochs", type=int, metavar="N", help="override the schedule's full-precision epochs")
    p.add_argument("--epochs", type=int, metavar="N", help="override the schedule's quantized epochs")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2], metavar="S",
                   help="one run of every configuration per seed (3 or more for mean ± std)")
    p.add_argument("--tables", nargs="+", choices=("K", "norm", "outer"), default=["K", "norm", "outer"])
    p.add_argument("--bits", type=int, nargs="+", choices=NORM_BITS, metavar="B",
                   help=f"tables 1 and 2 at W_B/A_B for these B only (default: K at {', '.join(map(str, K_BITS))}, "
                        f"norm at {', '.join(map(str, NORM_BITS))}); table 3 is at W{OUTER_BITS_AT}/A{OUTER_BITS_AT} "
                        "whatever this says")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="torch CPU threads (with --jobs 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="trainings side by side, one thread each")
    p.add_argument("--clip-init", choices=CLIP_INITS, default=TrainConfig.clip_init,
                   help="initial clips of the quantized runs (lcq train --clip-init; fixed: the paper's)")
    p.add_argument("--bn-batches", type=int, default=TrainConfig.bn_batches, metavar="N",
                   help="BN statistics re-estimated on N batches after the last epoch (lcq train --bn-batches; "
                        "0: the paper's)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--eval-images", type=int, default=256, metavar="N",
                   help="test images on which each compiled outer-width model is compared with PyTorch")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/ablations/<dataset>-<model>-<schedule>)")
    p.add_argument("--json-out", type=output_file, metavar="FILE", help="results file (default: "
                   "benchmarks/results/ablations-<dataset>.json)")
    args = p.parse_args(argv)
    if args.dataset not in SCHEDULES[args.schedule]:
        p.error(f"--schedule {args.schedule} is for {', '.join(SCHEDULES[args.schedule])} only; for "
                f"{args.dataset} use --schedule quick or full")
    fp_epochs, epochs = SCHEDULES[args.schedule][args.dataset]
    args.fp_epochs = args.fp_epochs if args.fp_epochs is not None else fp_epochs
    args.epochs = args.epochs if args.epochs is not None else epochs
    if min(args.fp_epochs, args.epochs, args.batch_size, args.threads, args.jobs) < 1 or args.eval_images < 0:
        p.error("--fp-epochs, --epochs, --batch-size, --threads and --jobs must be >= 1, --eval-images >= 0")
    if args.bn_batches < 0:
        p.error("--bn-batches must be >= 0")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error("--seeds must be distinct non-negative integers")
    if args.bits is not None:
        if len(set(args.bits)) != len(args.bits):
            p.error("--bits must be distinct")
        for table, widths in (("K", K_BITS), ("norm", NORM_BITS)):
            if table in args.tables and not set(args.bits) & set(widths):
                p.error(f"--bits {' '.join(map(str, args.bits))} leaves table {table} no width: it is at "
                        f"{', '.join(map(str, widths))}; add one of them, or leave {table} out of --tables")
    args.out = args.out or f"runs/ablations/{args.dataset}-{args.model}-{args.schedule}"
    args.json_out = args.json_out or str(Path(__file__).resolve().parent / "results" / f"ablations-{args.dataset}.json")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    cmd = ["python", "benchmarks/ablations.py", "--dataset", args.dataset, "--model", args.model,
           "--schedule", args.schedule, "--fp-epochs", str(args.fp_epochs), "--epochs", str(args.epochs),
           "--seeds", *map(str, args.seeds), "--tables", *args.tables,
           *(["--bits", *map(str, args.bits)] if args.bits is not None else []), "--threads", str(args.threads),
           "--jobs", str(args.jobs), "--clip-init", args.clip_init, "--bn-batches", str(args.bn_batches),
           "--batch-size", str(args.batch_size), "--eval-images", str(args.eval_images), "--out", args.out]
    for flag, value in (("--data-dir", args.data_dir), ("--device", args.device)):
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd)


def edge_layers(args: argparse.Namespace, data) -> tuple[str, str]:
    """Names of the first and last quantized layers (8-bit edges: they keep outer widths 8/8)."""
    names = [name for name, _ in build_model(args.model, data.input_shape, data.num_classes).quant_layers()]
    return names[0], names[-1]


def outer_plan(ow: int, oa: int, edges: tuple[str, str]) -> QuantPlan:
    """W3/A3 with inner outer widths ``ow/oa``; the 8-bit edge layers keep 8/8 (their own widths)."""
    b = OUTER_BITS_AT
    layer_bits = {} if (ow, oa) == (8, 8) else {name: (8, 8, 8, 8) for name in edges}
    return QuantPlan("lcq", b, b, outer_bits=(ow, oa), layer_bits=layer_bits)


def widths(args: argparse.Namespace, table_bits: tuple[int, ...]) -> list[int]:
    """The widths B (W_B/A_B) of a table at ``table_bits`` that ``--bits`` keeps (all where it is not given)."""
    return [b for b in table_bits if args.bits is None or b in args.bits]


def plans(args: argparse.Namespace, edges: tuple[str, str]) -> dict[str, QuantPlan]:
    """label -> plan of every distinct quantized run the tables need (a shared run once)."""
    out: dict[str, QuantPlan] = {}

    def add(label: str, plan: QuantPlan) -> None:
        for other, p in out.items():
            if p == plan:
                return
        out[label] = plan

    if "K" in args.tables:
        for b in widths(args, K_BITS):
            for K in KS:
                add(f"w{b}a{b}-K{K}", QuantPlan("lcq", b, b, K=K))
    if "norm" in args.tables:
        for b in widths(args, NORM_BITS):
            for norm in NORMS:
                add(f"w{b}a{b}-{norm}", QuantPlan("lcq", b, b, weight_norm=norm))
    if "outer" in args.tables:
        for ow, oa in OUTERS:
            add(f"w{OUTER_BITS_AT}a{OUTER_BITS_AT}-o{ow}-{oa}", outer_plan(ow, oa, edges))
    return out


def label_of(runs: dict[str, QuantPlan], plan: QuantPlan) -> str:
    return next(label for label, p in runs.items() if p == plan)


def compiled_sizes(checkpoint: Path, eval_images: int, data) -> dict:
    """LUT bytes per LUT layer and in total (``lcq report``) against the paper's formula, and agreement."""
    from compiler.agreement import compare
    from compiler.lower import compile_checkpoint, load_model
    from compiler.report import report

    compiled = compile_checkpoint(checkpoint)
    rep = report(compiled)
    layers = []
    for r in rep["layers"]:
        if r["mac"] != "lut":
            continue
        formula = r["lut_entries"] * (r["outer_wbits"] + r["outer_abits"]) / 8    # 2^-3 (b'_w + b'_a) m
        layers.append({"name": r["name"], "outer": f"{r['outer_wbits']}/{r['outer_abits']}",
                       "entries": r["lut_entries"], "entry_bits": r["lut_entry_bits"],
                       "bits_needed": r["lut_bits_needed"], "lut_bytes": r["lut_bytes"], "formula_bytes": formula})
    out = {"layers": layers, "lut_bytes": rep["lut_bytes"], "formula_bytes": sum(x["formula_bytes"] for x in layers),
           "total_bytes": rep["total_bytes"]}
    if eval_images:
        model, _ = load_model(checkpoint)
        n = min(eval_images, len(data.test_y))
        agreement = compare(compiled, model, data.test_x[:n].numpy(), data.test_y[:n].numpy()).to_dict()
        out["agreement"] = {"images": agreement["images"], "agreement": agreement["agreement"],
                            "integer_top1": agreement["top1"], "torch_top1": agreement["torch_top1"]}
    return out


def per_layer(values: list[tuple[str, int]], names: bool = True) -> str:
    """A table cell of one number per layer: ``conv1 42, conv2 42`` (``42, 42`` without names), or
    ``42 in each of the 20 layers`` where they are all the same and there are more than three."""
    numbers = {v for _, v in values}
    if len(values) > 3 and len(numbers) == 1:
        return f"{numbers.pop()} in each of the {len(values)} layers"
    return ", ".join(f"{name} {v}" if names else str(v) for name, v in values)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarize(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def tables(args: argparse.Namespace, runs: dict[str, QuantPlan], results: dict,
           edges: tuple[str, str]) -> tuple[str, dict]:
    """Markdown tables and their JSON form from ``results[seed][label]`` = {top1, sizes?}."""
    seeds = [s for s in args.seeds if s in results]

    def top1(label: str) -> list[float]:
        return [results[s][label]["test_top1"] for s in seeds if label in results[s]]

    def cell(values: list[float]) -> str:      # mean ± std, and how many seeds where not all have run
        return mean_std(values) + (f" (n={len(values)})" if 1 < len(values) < len(seeds) else "")

    lines, data = [f"Command: `{reproduce_command(args)}`", "",
                   f"{args.dataset}, {args.model}; final test top-1 (%), mean ± std over seeds {seeds}; "
                   f"FP {args.fp_epochs} epochs, every quantized run {args.epochs} epochs from the seed's FP run "
                   f"(FP top-1 {cell(top1('fp'))}); clip init {args.clip_init}, BN re-estimated on "
                   f"{args.bn_batches} batches. First and last layers 8-bit uniform with LWN and b' = 8.",
                   ""], {}
    if "K" in args.tables:
        lines += ["Table 1: compander intervals K (LCQ, LWN, b' = 8; K = 1 is the uniform quantizer)", "",
                  "| K | " + " | ".join(f"W{b}/A{b}" for b in widths(args, K_BITS)) + " |",
                  "|---|" + "---|" * len(widths(args, K_BITS))]
        data["K"] = {}
        for K in KS:
            cells = []
            for b in widths(args, K_BITS):
                label = label_of(runs, QuantPlan("lcq", b, b, K=K))
                data["K"][f"w{b}a{b}-K{K}"] = summarize(top1(label))
                cells.append(cell(top1(label)))
            lines.append(f"| {K} | " + " | ".join(cells) + " |")
        lines += ["", "Paper (CIFAR-10 ResNet-20, Fig. 6): a roughly steady gain with K up to 16.", ""]
    if "norm" in args.tables:
        lines += ["Table 2: LWN against standardization (LCQ, K = 16, b' = 8)", "",
                  "| W/A | LWN | standardize | LWN - standardize |", "|---|---|---|---|"]
        data["norm"] = {}
        for b in widths(args, NORM_BITS):
            pair = [label_of(runs, QuantPlan("lcq", b, b, weight_norm=norm)) for norm in NORMS]
            lwn, std = top1(pair[0]), top1(pair[1])
            diff = [results[s][pair[0]]["test_top1"] - results[s][pair[1]]["test_top1"] for s in seeds
                    if pair[0] in results[s] and pair[1] in results[s]]       # per seed, where both have run
            data["norm"][f"w{b}a{b}"] = {"lwn": summarize(lwn), "standardize": summarize(std),
                                         "difference": summarize(diff)}
            lines.append(f"| {b}/{b} | {cell(lwn)} | {cell(std)} | {cell(diff)} |")
        lines += ["", "Paper (Table 6, CIFAR-10 ResNet-20): a large gain of LWN at 2 bits, small at 3 and 4.", ""]
    if "outer" in args.tables:
        b = OUTER_BITS_AT
        lines += [f"Table 3: outer widths b'_w/b'_a of the inner layers at W{b}/A{b} (LCQ, K = 16, LWN; edge "
                  "layers 8/8). LUT bytes from the compiled model (`lcq report`: ceil(m (b'_w + b'_a) / 8) per "
                  "layer) against the paper's 2^-3 (b'_w + b'_a) m", "",
                  "| b'_w/b'_a | top-1 | LUT bytes per LUT layer | LUT bytes total | paper formula total | "
                  "LUT bits needed | agreement with PyTorch |", "|---|---|---|---|---|---|---|"]
        data["outer"] = {}
        for ow, oa in OUTERS:
            plan_label = label_of(runs, outer_plan(ow, oa, edges))
            sizes = [results[s][plan_label]["sizes"] for s in seeds
                     if plan_label in results[s] and "sizes" in results[s][plan_label]]
            entry = {"top1": summarize(top1(plan_label)), "sizes": sizes[0] if sizes else None,
                     "agreement": [x.get("agreement") for x in sizes]}
            data["outer"][f"{ow}/{oa}"] = entry
            if sizes:
                sz = sizes[0]
                per = per_layer([(x["name"], x["lut_bytes"]) for x in sz["layers"]])
                needed = per_layer([(x["name"], x["bits_needed"]) for x in sz["layers"]], names=False)
                agree = [x["agreement"]["agreement"] for x in sizes if x.get("agreement")]
                agree_text = f"{100 * min(agree):.1f}% (min over seeds)" if agree else "-"
                lines.append(f"| {ow}/{oa} | {cell(top1(plan_label))} | {per} | {sz['lut_bytes']} | "
                             f"{sz['formula_bytes']:g} | {needed} | {agree_text} |")
            else:
                lines.append(f"| {ow}/{oa} | {cell(top1(plan_label))} | - | - | - | - | - |")
        lines += ["", "Paper (Table 7, CIFAR-10): no loss from 8 down to 6 bits, a loss at 4; LUT memory "
                      "2^-3 (b'_w + b'_a) m bytes.", ""]
    return "\n".join(lines), data


def settings(args: argparse.Namespace) -> dict:
    """What every recorded result depends on besides its seed and plan (a results file with other settings is
    replaced, not extended)."""
    return {"dataset": args.dataset, "model": args.model, "fp_epochs": args.fp_epochs, "epochs": args.epochs,
            "batch_size": args.batch_size, "eval_images": args.eval_images,
            "recipe": {"clip_init": args.clip_init, "bn_batches": args.bn_batches},
            "device": args.device or default_device(),
            "threads_per_run": 1 if args.jobs > 1 else args.threads, "torch": torch.__version__}


def recorded_results(path: str, ours: dict, runs: dict[str, QuantPlan]) -> tuple[dict[int, dict], dict, str]:
    """``results[seed][label]`` of an earlier results file at ``path`` with the same :func:`settings`, of every
    seed it holds, for the labels with the same plan as in ``runs`` and those ``runs`` does not have (other
    tables': kept in the file, not retrained); the recorded plans of the latter (label -> plan dict); and a line
    saying what was kept or why nothing was (a file of other settings is replaced). ValueError naming the file
    and the fix where it is not one this script wrote (cut short, or a field edited): replacing it would drop
    its recorded runs."""
    fix = "restore it, or give another --json-out (or delete it) to start over"
    earlier = read_results(path, f"it is not a results file of ablations.py: {fix}")
    if earlier is None:
        return {}, {}, ""
    if isinstance(earlier, dict) and earlier.get("benchmark") == "ablations" and "settings" not in earlier:
        return {}, {}, f"replacing {path}: written by an older ablations.py, with no settings to extend"
    problem = results_problem(earlier)
    if problem:
        raise ValueError(f"{path}: {problem}; it is not a results file of ablations.py: {fix}")
    theirs, their_runs = earlier["settings"], earlier["runs"]
    their_results = {int(seed): rows for seed, rows in earlier["results"].items()}
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        return {}, {}, f"replacing {path}: its settings differ ({', '.join(differ)})"
    for seed, rows in their_results.items():
        for label, row in rows.items():
            want = ours["fp_epochs"] if label == "fp" else ours["epochs"]
            if row["epochs"] != want:
                raise ValueError(f"{path}: seed {seed}'s run {label!r} has {row['epochs']} epochs, not {want} as its "
                                 f"settings say: {fix}")
    others = {label: plan for label, plan in their_runs.items() if label not in runs}
    same = {"fp"} | set(others) | {label for label, plan in runs.items() if their_runs.get(label) == plan.to_dict()}
    kept = {seed: {label: row for label, row in rows.items() if label in same} for seed, rows in their_results.items()}
    count = sum(len(rows) for rows in kept.values())
    return kept, others, f"read {count} recorded runs from {path}" if count else ""


def results_problem(data) -> str | None:
    """What makes ``data`` other than a results file of this script, in the fields a later invocation reads back
    (settings, plans, and per seed and run its top-1s, epochs and compiled sizes); None when nothing does."""
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return "it has no 'settings' object"
    if not isinstance(data.get("runs"), dict) or not all(isinstance(p, dict) for p in data["runs"].values()):
        return "its 'runs' is not an object of plans"
    if not isinstance(data.get("results"), dict):
        return "its 'results' is not an object of seeds"
    for seed, rows in data["results"].items():
        if not (seed.isdigit() and str(int(seed)) == seed):
            return f"seed {seed!r} is not a seed (0, 1, ...)"
        if not isinstance(rows, dict):
            return f"seed {seed}'s runs are not an object"
        for label, row in rows.items():
            what = f"seed {seed}'s run {label!r}"
            if not isinstance(row, dict):
                return f"{what} is not an object"
            for key in ("test_top1", "best_test_top1"):
                if not is_percentage(row.get(key)):
                    return f"{what} has {key} {row.get(key)!r}, not a percentage"
            if not is_count(row.get("epochs")):
                return f"{what} has epochs {row.get('epochs')!r}, not a count"
            if "sizes" in row and not _sizes(row["sizes"]):
                return f"{what} has 'sizes' that are not a compiled model's (layers, lut_bytes, formula_bytes)"
    return None


def _sizes(sizes) -> bool:
    """Whether ``sizes`` holds what :func:`tables` reads of a :func:`compiled_sizes` record."""
    return isinstance(sizes, dict) and is_count(sizes.get("lut_bytes")) and is_number(sizes.get("formula_bytes")) \
        and isinstance(sizes.get("layers"), list) \
        and all(isinstance(x, dict) and isinstance(x.get("name"), str) and is_count(x.get("lut_bytes"))
                and is_count(x.get("bits_needed")) for x in sizes["layers"]) \
        and (sizes.get("agreement") is None or isinstance(sizes["agreement"], dict)
             and is_number(sizes["agreement"].get("agreement")) and 0.0 <= sizes["agreement"]["agreement"] <= 1.0)


def run_all(items: list[tuple[int, str, TrainConfig]], jobs: int, done) -> None:
    """Train (or resume, or skip) every ``(seed, label, config)`` of ``items``, a seed's FP run (where listed)
    before its other runs, ``jobs`` side by side (one thread each; in this process where 1); ``done(item,
    metrics, seconds, note)`` as each finishes, False from it for an FP run: that seed's other runs are dropped."""
    if jobs == 1:
        dropped = set()
        for item in items:
            if item[0] not in dropped and done(item, *train_or_resume(item[2])) is False:
                dropped.add(item[0])
        return
    fp_seeds = {seed for seed, label, _ in items if label == "fp"}
    after_fp = {seed: [i for i in items if i[0] == seed and i[1] != "fp"] for seed in fp_seeds}
    with training_pool(jobs) as pool:
        pending = {pool.submit(train_or_resume, item[2]): item for item in items
                   if item[1] == "fp" or item[0] not in fp_seeds}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                item = pending.pop(future)
                if done(item, *future.result()) is not False and item[1] == "fp":
                    pending.update({pool.submit(train_or_resume, i[2]): i for i in after_fp[item[0]]})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DatasetError as e:
        where = f" in {args.data_dir}" if args.data_dir else ""
        note = " (Fashion-MNIST is not among the shared datasets: pass its directory with --data-dir)" \
            if args.dataset == "fashion-mnist" else ""
        print(f"ablations.py: error: {args.dataset} is absent{where}{note}: {e}", file=sys.stderr)
        return 2
    edges = edge_layers(args, data)
    runs = plans(args, edges)
    compiled_labels = ({label_of(runs, outer_plan(ow, oa, edges)) for ow, oa in OUTERS}
                       if "outer" in args.tables else set())
    out = Path(args.out)
    common = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
              "batch_size": args.batch_size, "device": args.device, "progress": False,
              "clip_init": args.clip_init, "bn_batches": args.bn_batches}
    configs = []
    for seed in args.seeds:
        fp = TrainConfig(plan=QuantPlan("fp"), epochs=args.fp_epochs, seed=seed, out=str(out / f"seed{seed}" / "fp"),
                         **common)
        configs.append((seed, "fp", fp))
        for label, plan in runs.items():
            configs.append((seed, label, TrainConfig(plan=plan, epochs=args.epochs, seed=seed,
                                                     out=str(out / f"seed{seed}" / label),
                                                     init=str(Path(fp.out) / "checkpoint.pt"), **common)))
    ours = settings(args)
    try:
        recorded, other_runs, note = recorded_results(args.json_out, ours, runs)
    except ValueError as e:
        print(f"ablations.py: error: {e}", file=sys.stderr)
        return 2
    if note:
        print(note, flush=True)
    # (the recorded runs of other seeds and tables stay in the file; the tables are of args.seeds and runs)
    results = {seed: dict(recorded.get(seed, {})) for seed in sorted(set(args.seeds) | set(recorded))}
    # Runs not recorded yet, and the FP run of each seed that has one (its checkpoint starts the others).
    open_seeds = {seed for seed, label, _ in configs if label not in results[seed]}
    to_do = [(seed, label, cfg) for seed, label, cfg in configs
             if label not in results[seed] or label == "fp" and seed in open_seeds]
    timing = {"fp_seconds": 0.0, "fp_epochs": 0, "quant_seconds": 0.0, "quant_epochs": 0, "compile_seconds": 0.0}
    t_start = time.perf_counter()
    git = git_state("lcq_train", "compiler")       # (and each run recorded now: the commit it was trained at)
    produced: set[tuple[int, str]] = set()         # (seed, label) of the runs this invocation recorded

    def save() -> str:
        """Write the results file, under its lock: the runs recorded there since this invocation read it (by
        another filling the same file side by side: other seeds or tables) merged with the ones it produced."""
        nonlocal other_runs
        with results_lock(args.json_out):
            recorded, other_runs, _ = recorded_results(args.json_out, ours, runs)
            for seed, rows in recorded.items():
                for label, row in rows.items():
                    if (seed, label) not in produced:
                        results.setdefault(seed, {})[label] = row
            return write(*tables(args, runs, results, edges))

    def write(text: str, table_data: dict) -> str:
        save_json({"benchmark": "ablations", "command": reproduce_command(args), "argv": sys.argv[1:],
                   "options": vars(args), "settings": ours,
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__, "lcq": _version("lcq-accel")},
                   "device": ours["device"], "threads": ours["threads_per_run"], "cpu_count": os.cpu_count(),
                   "git": git,
                   "seconds": time.perf_counter() - t_start, "timing": timing,
                   "full_estimate": full_estimate(args, runs, timing),
                   "runs": {**other_runs, **{label: plan.to_dict() for label, plan in runs.items()}},
                   "results": {str(s): r for s, r in results.items() if r}, "tables": table_data, "markdown": text},
                  args.json_out)
        return text

    finished, errors = [], []

    def done(item, metrics: dict, seconds: float, note: str) -> bool:
        seed, label, cfg = item
        if seconds:
            kind = "fp" if label == "fp" else "quant"
            timing[f"{kind}_seconds"] += seconds
            timing[f"{kind}_epochs"] += cfg.epochs
        row = {"test_top1": metrics["test_top1"], "best_test_top1": metrics["best_test_top1"],
               "epochs": len(metrics["epochs"]), "out": cfg.out, "git_commit": git["commit"]}
        if label == "fp" and label in results[seed] and results[seed][label]["test_top1"] != row["test_top1"]:
            errors.append(f"seed {seed}'s FP run scored {row['test_top1']}, {args.json_out} recorded "
                          f"{results[seed][label]['test_top1']}: its runs of seed {seed} started from another FP "
                          "model; give another --json-out (or delete that file) to start over")
            return False
        if label in compiled_labels:
            t0 = time.perf_counter()
            row["sizes"] = compiled_sizes(Path(cfg.out) / "checkpoint.pt", args.eval_images, data)
            timing["compile_seconds"] += time.perf_counter() - t0
        results[seed][label] = row
        produced.add((seed, label))
        save()
        finished.append(item)
        print(f"[{len(finished)}/{len(to_do)}] seed {seed} {label}: test top-1 {metrics['test_top1']:.2f}%; {note}",
              flush=True)
        return True

    try:
        for _, _, cfg in to_do:     # refuse a mismatched --out before spending any training time
            saved_metrics(cfg)
        run_all(to_do, args.jobs, done)
        if errors:
            raise ValueError("; ".join(errors))
        text = save()
    except (ValueError, FileNotFoundError, FileExistsError, TimeoutError, WorkerDied) as e:  # (WorkerDied: killed)
        print(f"ablations.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ablations.py: interrupted; re-run `{reproduce_command(args)}` to resume", file=sys.stderr)
        return 130
    print("\n" + text)
    estimate = full_estimate(args, runs, timing)
    if estimate:
        print(estimate["text"])
    print(f"\nwrote {args.json_out}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def full_estimate(args: argparse.Namespace, runs: dict, timing: dict) -> dict | None:
    """Wall-clock hours of the full schedule on 3 seeds, from this run's measured seconds per epoch and its
    ``--jobs`` (None: nothing trained)."""
    if not timing["fp_epochs"] and not timing["quant_epochs"]:
        return None
    fp_rate = timing["fp_seconds"] / max(timing["fp_epochs"], 1)
    q_rate = timing["quant_seconds"] / max(timing["quant_epochs"], 1) if timing["quant_epochs"] else fp_rate
    fp_rate = fp_rate if timing["fp_epochs"] else q_rate
    fp_epochs, epochs = SCHEDULES["full"][args.dataset]
    seeds = max(3, len(args.seeds))
    compile_rate = timing["compile_seconds"] / max(1, len(args.seeds))
    seconds = seeds * (fp_epochs * fp_rate + len(runs) * epochs * q_rate + compile_rate) / args.jobs
    how = f"{args.jobs} runs side by side" if args.jobs > 1 else f"{args.threads} threads"
    text = (f"estimated full schedule ({args.dataset}: FP {fp_epochs} + {len(runs)} runs x {epochs} epochs, "
            f"{seeds} seeds, {how}) from this run's {fp_rate:.1f} s/FP epoch and {q_rate:.1f} "
            f"s/quantized epoch: {seconds / 3600:.1f} h")
    return {"seconds": seconds, "hours": seconds / 3600, "seeds": seeds, "runs_per_seed": len(runs) + 1,
            "fp_seconds_per_epoch": fp_rate, "quant_seconds_per_epoch": q_rate,
            "text": text if math.isfinite(seconds) else "no estimate"}


if __name__ == "__main__":
    sys.exit(main())
