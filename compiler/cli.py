"""``lcq compile``, ``lcq eval`` and ``lcq report``: the compiler's verbs of the ``lcq`` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from . import format as model_format
from .report import format_table, report


def add_parsers(sub) -> dict:
    """Register the compiler verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("compile", help="compile a trained checkpoint to an integer model file", formatter_class=fmt)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt of `lcq train` (uniform or lcq)")
    p.add_argument("-o", "--output", metavar="MODEL", required=True, help="compiled model file to write")
    p.add_argument("--residual-frac-bits", type=int, default=8, metavar="F",
                   help="fraction bits of the residual stream below its finest accumulator scale")
    p.add_argument("--pool-frac-bits", type=int, default=8, metavar="F", help="fraction bits of BN+ReLU before pooling")
    p.add_argument("--logit-frac-bits", type=int, default=8, metavar="F", help="fraction bits of the logits")
    p.add_argument("--max-lut-entries", type=int, default=1024, metavar="N",
                   help="layers with larger LUTs (8-bit edge layers) multiply levels instead")

    p = sub.add_parser("eval", help="top-1 of the integer reference and its agreement with the PyTorch model",
                       formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file")
    p.add_argument("--data", "--data-dir", dest="data_dir", metavar="DIR",
                   help="dataset directory (not needed for digits); the dataset is the one the model was trained on")
    p.add_argument("--checkpoint", metavar="CHECKPOINT",
                   help="checkpoint to compare with (default: the one the model was compiled from)")
    p.add_argument("--images", type=int, metavar="N", help="evaluate the first N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    p = sub.add_parser("report", help="per-layer bit-widths, MACs, weight and LUT bytes", formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return {"compile": cmd_compile, "eval": cmd_eval, "report": cmd_report}


def cmd_compile(args) -> int:
    from .lower import CompileOptions, compile_checkpoint

    options = CompileOptions(args.residual_frac_bits, args.pool_frac_bits, args.logit_frac_bits, args.max_lut_entries)
    compiled = compile_checkpoint(args.checkpoint, options)
    model_format.save(compiled, args.output)
    rep = report(compiled)
    print(format_table(rep))
    print(f"\nwrote {args.output} ({Path(args.output).stat().st_size:,} bytes on disk)")
    return 0


def cmd_report(args) -> int:
    rep = report(model_format.load(args.model))
    print(json.dumps(rep) if args.json else format_table(rep))
    return 0


def cmd_eval(args) -> int:
    from lcq_train.data import load_dataset

    from .agreement import compare
    from .lower import load_model

    compiled = model_format.load(args.model)
    source = compiled.source
    checkpoint = args.checkpoint or source.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"the checkpoint {checkpoint!r} that {args.model} was compiled from is not there; "
                                "pass it with --checkpoint CHECKPOINT")
    if args.checkpoint is None and hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest() != source.get("sha256"):
        raise ValueError(f"{checkpoint} changed after {args.model} was compiled from it; recompile with "
                         f"`lcq compile {checkpoint} -o {args.model}`")
    if args.images is not None and args.images < 1:
        raise ValueError(f"--images must be at least 1, not {args.images}")
    data = load_dataset(source["dataset"], args.data_dir)
    images, labels = data.test_x.numpy(), data.test_y.numpy()
    if args.images is not None:
        images, labels = images[:args.images], labels[:args.images]
    model, _ = load_model(checkpoint)
    t0 = time.perf_counter()
    show = None if args.json else (lambda r: print(f"\r{r.images}/{len(images)} images", end="", file=sys.stderr))
    result = compare(compiled, model, images, labels, args.batch_size, show).to_dict()
    result["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result))
        return 0
    print(file=sys.stderr)
    print(f"{result['images']} {source['dataset']} test images: integer top-1 {result['top1']:.2f}%, "
          f"PyTorch fake-quant (float64) top-1 {result['torch_top1']:.2f}%")
    print(f"top-1 agreement {100 * result['agreement']:.3f}% ({result['disagreements']} images differ)")
    print("\n| activation codes | compared | mismatched |\n|---|---|---|")
    for name, c in result["code_mismatches"].items():
        print(f"| {name} | {c['compared']:,} | {c['mismatched']:,} |")
    return 0
