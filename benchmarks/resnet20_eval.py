"""ResNet-20 on CIFAR-10 through the integer reference: the committed model's recipe, trained, compiled, evaluated.

Trains two runs with the trainer's defaults (``lcq train``): full precision for ``--fp-epochs``
(``OUT/r20-fpN``), then LCQ W3/A3 for ``--epochs`` from it (``OUT/r20-w3a3-M``); a finished run
with the same recipe is reused, an interrupted one resumed. Compiles the LCQ checkpoint (``lcq
compile`` -> ``OUT/r20-w3a3-M/model.lcq``) and, on the first ``--images`` CIFAR-10 test images,
runs what ``lcq eval`` runs: integer-reference top-1, the PyTorch fake-quantized model's top-1
(float64), top-1 agreement and the activation codes that differ; ``lcq report`` gives the bytes of
weights and LUTs and the MACs per image.

The committed model ``tests/data/cifar10-resnet20-lcq-w3a3.lcq`` is this script's compiled model
at its default epochs (CPU, 2 threads; its ``source`` records the checkpoint's digest, the
checkpoint is not in the repository). The script also runs the integer reference of that committed
file on the same images (needs only the file and the dataset) and says whether the retrained
compiled model equals it field for field (CPU training is reproducible only with the same torch
build, thread count and CPU vector instructions, ``machine.cpu_capability``: on another machine
the first epoch already differs). ``--no-train`` does that part alone.

Run:  python benchmarks/resnet20_eval.py --data-dir ../shared/datasets/cifar10-jpeg [--images 1000] [--threads 2]
Writes benchmarks/results/resnet20-eval.json (or --json-out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from compiler import format as model_format
from compiler.reference import predict
from compiler.report import report
from lcq_train.arguments import output_file, positive_int
from lcq_train.atomic import save_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq"
# Settings a saved run must share with the requested one to be reused.
_RECIPE_KEYS = ("model", "dataset", "plan", "epochs", "batch_size", "lr", "q_lr", "weight_decay", "momentum",
                "warmup_epochs", "augment", "init", "seed")


def model_differences(a, b, path: str = "") -> list[str]:
    """Paths of the fields in which two compiled models (or parts of them) differ; ``source`` ignored."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        if type(a) is not type(b):
            return [f"{path or 'model'}: {type(a).__name__} vs {type(b).__name__}"]
        out = []
        for f in dataclasses.fields(a):
            if f.name != "source":
                out += model_differences(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}".lstrip("."))
        return out
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return [f"{path}: shape {a.shape} vs {b.shape}"]
        n = int((a != b).sum())
        return [f"{path}: {n} of {a.size} entries"] if n else []
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            name = getattr(x, "name", None)
            out += model_differences(x, y, f"{path}[{name or i}]")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in one" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += model_differences(a[k], b[k], f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def _setting(key: str, value):
    """A recipe setting as it bears on training: an FP plan's bit-widths do not (``lcq train --method fp``
    records its --wbits/--abits defaults, ``QuantPlan("fp")`` 32)."""
    if key == "plan" and isinstance(value, dict) and value.get("method") == "fp":
        return {k: v for k, v in value.items() if k not in ("wbits", "abits")}
    return value


def train_run(cfg) -> tuple[dict, str]:
    """Train, resume or reuse the run of ``cfg``; returns its metrics and what was done."""
    from lcq_train.checkpoint import load_checkpoint
    from lcq_train.train import train

    out = Path(cfg.out)
    metrics = None
    if (out / "checkpoint.pt").is_file():
        metrics = load_checkpoint(out / "checkpoint.pt")["metrics"]
        saved, wanted = metrics["config"], cfg.to_dict()
        differ = [k for k in _RECIPE_KEYS if _setting(k, saved.get(k)) != _setting(k, wanted[k])]
        if differ:
            raise SystemExit(f"resnet20_eval.py: error: {out} holds a run with other settings ({', '.join(differ)}: "
                             f"{[saved.get(k) for k in differ]} there, {[wanted[k] for k in differ]} asked); "
                             "choose another --out or delete it")
        if len(metrics["epochs"]) >= cfg.epochs:
            return metrics, "done earlier, reused"
    cfg.resume = metrics is not None
    note = f"resumed after epoch {len(metrics['epochs'])}" if cfg.resume else "trained"
    return train(cfg), note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 directory or .tar.gz (default: $LCQ_DATA_DIR/cifar10)")
    p.add_argument("--images", type=int, default=1000, metavar="N", help="first N test images (0: all)")
    p.add_argument("--fp-epochs", type=int, default=12, metavar="N", help="full-precision training epochs")
    p.add_argument("--epochs", type=int, default=3, metavar="N", help="LCQ W3/A3 fine-tuning epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, metavar="T", help="torch CPU threads (default: torch's)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", default="runs",
                   help="runs go to OUT/r20-fpN and OUT/r20-w3a3-M (N, M: the epochs)")
    p.add_argument("--committed", metavar="MODEL", default=str(COMMITTED.relative_to(ROOT)),
                   help="committed compiled model to evaluate and compare with")
    p.add_argument("--no-train", action="store_true",
                   help="only the committed model: integer top-1, bytes and MACs (no training, no checkpoint)")
    p.add_argument("--json-out", type=output_file, metavar="FILE",
                   default=str(ROOT / "benchmarks" / "results" / "resnet20-eval.json"))
    args = p.parse_args(argv)
    if args.images < 0 or min(args.fp_epochs, args.epochs) < 1:
        p.error("--images must be >= 0, --fp-epochs and --epochs >= 1")
    committed_path = Path(args.committed)
    try:
        committed, committed_error = model_format.load(committed_path), None
    except (OSError, ValueError) as e:   # not there, or of another format version
        committed, committed_error = None, e
        if args.no_train:
            p.error(f"--no-train evaluates the committed model only, and it cannot be loaded: {e} (the default "
                    f"path is relative: run from the repository root, or pass --committed MODEL)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from lcq_train.data import load_dataset

    command = shlex.join(["python", "benchmarks/resnet20_eval.py", *(sys.argv[1:] if argv is None else argv)])
    data = load_dataset("cifar10", args.data_dir)
    images, labels = data.test_x.numpy(), data.test_y.numpy()
    if args.images:
        images, labels = images[:args.images], labels[:args.images]
    n = len(images)

    result = {
        "benchmark": "resnet20_eval", "command": command, "options": vars(args),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": {pkg: version(pkg) for pkg in ("torch", "numpy", "pillow")},
        "git": git_state("lcq_train", "compiler"), "images": n,
        "committed": {"model": str(committed_path)},
    }
    c = result["committed"]
    if committed is None:
        c["error"] = str(committed_error)
        print(f"{committed_path}: not evaluated: {committed_error}", flush=True)
    if committed is not None:
        t0 = time.perf_counter()
        committed_pred = predict(committed, images).argmax(axis=1)
        rep = report(committed)
        c.update(file_sha256=hashlib.sha256(committed_path.read_bytes()).hexdigest(), source=committed.source,
                 integer_top1=100.0 * float((committed_pred == labels).mean()),
                 integer_seconds=time.perf_counter() - t0, total_bytes=rep["total_bytes"],
                 total_bytes_without_luts=rep["total_bytes_without_luts"], macs_per_image=rep["macs"])
        print(f"{committed_path}: integer top-1 {c['integer_top1']:.2f}% on the first {n} test images "
              f"({c['integer_seconds']:.0f} s); {c['total_bytes']:,} bytes of weights and LUTs, "
              f"{c['macs_per_image']:,} MACs per image", flush=True)

    if not args.no_train:
        from compiler.agreement import compare
        from compiler.lower import compile_checkpoint, load_model
        from lcq_train.plan import QuantPlan
        from lcq_train.train import TrainConfig

        out = Path(args.out)
        common = {"model": "resnet20", "dataset": "cifar10", "data_dir": args.data_dir, "seed": args.seed,
                  "device": args.device, "progress": False}
        fp_out = out / f"r20-fp{args.fp_epochs}"
        fp_cfg = TrainConfig(plan=QuantPlan("fp"), epochs=args.fp_epochs, out=str(fp_out), **common)
        lcq_cfg = TrainConfig(plan=QuantPlan("lcq", 3, 3), epochs=args.epochs,
                              out=str(out / f"r20-w3a3-{args.epochs}"), init=str(fp_out / "checkpoint.pt"), **common)
        runs = {}
        for name, cfg in (("fp", fp_cfg), ("lcq_w3a3", lcq_cfg)):
            t0 = time.perf_counter()
            metrics, note = train_run(cfg)
            runs[name] = {"out": cfg.out, "note": note, "test_top1": metrics["test_top1"],
                          "epochs": metrics["epochs"], "seconds": time.perf_counter() - t0}
            print(f"{cfg.out}: {note}, test top-1 {metrics['test_top1']:.2f}%", flush=True)
        checkpoint = Path(lcq_cfg.out) / "checkpoint.pt"
        compiled = compile_checkpoint(checkpoint)
        model_path = Path(lcq_cfg.out) / "model.lcq"
        model_format.save(compiled, model_path)
        t0 = time.perf_counter()
        agreement = compare(compiled, load_model(checkpoint)[0], images, labels).to_dict()
        agreement["seconds"] = time.perf_counter() - t0
        rep = report(compiled)
        codes = agreement["code_mismatches"].values()
        retrained_pred = predict(compiled, images).argmax(axis=1)
        result.update(train=runs, model=str(model_path), checkpoint_sha256=compiled.source["sha256"], eval=agreement,
                      codes_compared=sum(x["compared"] for x in codes), codes_mismatched=sum(x["mismatched"] for x in codes),
                      total_bytes=rep["total_bytes"], total_bytes_without_luts=rep["total_bytes_without_luts"],
                      macs_per_image=rep["macs"], layers=rep["layers"])
        if committed is not None:
            differences = model_differences(compiled, committed)
            c.update(equal_to_retrained=not differences, differences=differences[:50],
                     differences_count=len(differences),
                     predictions_equal_to_retrained=int((retrained_pred == committed_pred).sum()))

    head = ["model", "FP top-1", "LCQ W3/A3 top-1 (training)", "integer top-1", "PyTorch top-1 (float64)",
            "top-1 agreement", "codes differ / compared", "eval s", "bytes (weights + LUTs)", "MACs per image"]
    lines = [f"Command: `{command}`; first {n} CIFAR-10 test images", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if "eval" in result:
        e = result["eval"]
        lines.append("| " + " | ".join([
            result["model"], f"{runs['fp']['test_top1']:.2f}", f"{runs['lcq_w3a3']['test_top1']:.2f}",
            f"{e['top1']:.2f}", f"{e['torch_top1']:.2f}",
            f"{100 * e['agreement']:.2f}% ({e['disagreements']} of {e['images']} differ)",
            f"{result['codes_mismatched']:,} / {result['codes_compared']:,}", f"{e['seconds']:.0f}",
            f"{result['total_bytes']:,}", f"{result['macs_per_image']:,}"]) + " |")
    if committed is not None:
        lines.append("| " + " | ".join([
            f"{committed_path} (committed)", "-", f"{c['source'].get('test_top1', float('nan')):.2f} (recorded in "
            "the file)", f"{c['integer_top1']:.2f}", "- (checkpoint not committed)", "-", "-",
            f"{c['integer_seconds']:.0f}", f"{c['total_bytes']:,}", f"{c['macs_per_image']:,}"]) + " |")
    print("\n" + "\n".join(lines))
    if "eval" in result and committed is not None:
        same = c["equal_to_retrained"]
        print(f"\nretrained compiled model {'equals' if same else 'differs from'} {committed_path}"
              + ("" if same else f" ({c['differences_count']} fields differ, e.g. {c['differences'][:3]})")
              + f"; integer predictions equal on {c['predictions_equal_to_retrained']} of {n} images")
    save_json(result, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
