"""``lcq compile``, ``lcq eval`` and ``lcq report``: the compiler's verbs of the ``lcq`` command."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from lcq_train.arguments import (DefaultsHelpFormatter, IntRange, counted, output_file, positive_int,
                                refuse_overwriting)
from lcq_train.factory import MODEL

from . import format as model_format
from .graph import FRAC_BITS, INT64_LIMIT
from .network import MAX_LANES
from .report import format_table, report

# The type of `lcq report --lanes` (code lanes per word of the network plan's code memory).
LANES = IntRange(1, MAX_LANES)
# The types of `lcq compile`'s options: the ranges the model file's loader applies to them (compiler.graph).
FRAC = IntRange(*FRAC_BITS)
LUT_ENTRIES = IntRange(1, INT64_LIMIT)


def add_parsers(sub) -> dict:
    """Register the compiler verbs on ``sub`` (argparse subparsers); returns {verb: handler}."""
    fmt = DefaultsHelpFormatter
    p = sub.add_parser("compile", help="compile a trained checkpoint to an integer model file", formatter_class=fmt)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt of `lcq train` (uniform or lcq)")
    p.add_argument("-o", "--output", metavar="MODEL", required=True, type=output_file,
                   help="compiled model file to write")
    p.add_argument("--residual-frac-bits", type=FRAC, default=8, metavar="F",
                   help=f"fraction bits of the residual stream below its finest accumulator scale, {FRAC.describe()}")
    p.add_argument("--pool-frac-bits", type=FRAC, default=8, metavar="F",
                   help=f"fraction bits of BN+ReLU before pooling, {FRAC.describe()}")
    p.add_argument("--logit-frac-bits", type=FRAC, default=8, metavar="F",
                   help=f"fraction bits of the logits, {FRAC.describe()}")
    p.add_argument("--max-lut-entries", type=LUT_ENTRIES, default=1024, metavar="N",
                   help="layers with larger LUTs (8-bit edge layers) multiply levels instead, "
                        f"{LUT_ENTRIES.describe()}")
    _model_option(p)

    p = sub.add_parser("eval", help="top-1 of the integer reference and its agreement with the PyTorch model",
                       formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file")
    p.add_argument("--data", "--data-dir", dest="data_dir", metavar="DIR",
                   help="dataset directory (not needed for digits); the dataset is the one the model was trained on")
    p.add_argument("--checkpoint", metavar="CHECKPOINT",
                   help="where the checkpoint the model was compiled from is now (default: the absolute path the "
                        "model records); it must be that checkpoint (same digest)")
    p.add_argument("--images", type=positive_int, metavar="N", help="evaluate the first N test images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per batch of both models")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _model_option(p)

    p = sub.add_parser("report", help="per-layer bit-widths, MACs, weight and LUT bytes; the on-chip data memories "
                       "of the whole network", formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file")
    p.add_argument("--lanes", type=LANES, default=1, metavar="R",
                   help=f"codes per word of the network's code memory (the PE array's rows R), {LANES.describe()}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = sub.add_parser("predict", help="classify image files with the integer reference (what the chip computes)",
                       formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="compiled model file")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="PNG or JPEG files, or directories of them (their .png, .jpg and .jpeg files, in name "
                        "order); each is converted to the model's grey or RGB and, where its size is not the "
                        "model's, its middle cropped to the model's aspect ratio and resized")
    p.add_argument("--top", type=positive_int, default=3, metavar="K", help="classes listed per image, best first")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a line")
    return {"compile": cmd_compile, "eval": cmd_eval, "report": cmd_report, "predict": cmd_predict}


def _model_option(p) -> None:
    p.add_argument("--model", dest="factory", metavar="MODULE:FACTORY", type=MODEL,
                   help="for a checkpoint of your own network: the factory reference it records (its --model of "
                        "lcq train), which confirms that its code may be imported and RUN to rebuild the network "
                        "(a checkpoint alone never imports code)")


def cmd_compile(args) -> int:
    from lcq_train.weight_codes import UnsettledWeightWarning

    from .lower import CompileOptions, compile_checkpoint

    options = CompileOptions(args.residual_frac_bits, args.pool_frac_bits, args.logit_frac_bits, args.max_lut_entries)
    refuse_overwriting(args.output, args.checkpoint, "checkpoint", args.output)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", UnsettledWeightWarning)
        compiled = compile_checkpoint(args.checkpoint, options, args.factory)
    for warning in seen:                # this one said as the command's own; any other as Python shows it
        if issubclass(warning.category, UnsettledWeightWarning):
            print(f"lcq compile: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    model_format.save(compiled, args.output)
    rep = report(compiled)
    print(format_table(rep))
    print(f"\nwrote {args.output} ({Path(args.output).stat().st_size:,} bytes on disk)")
    return 0


def cmd_report(args) -> int:
    rep = report(model_format.load(args.model), lanes=args.lanes)
    print(json.dumps(rep) if args.json else format_table(rep))
    return 0


def cmd_predict(args) -> int:
    """Each image file's classes by the integer reference: one line (or JSON object) per image."""
    from lcq_train.image_file import image_files

    from .image_predictions import describe, prediction, read_images
    from .reference import predict

    model = model_format.load(args.model)
    paths = image_files(args.images)
    images, notes = read_images(model, paths)
    for path, logits, note in zip(paths, predict(model, images), notes):
        record = prediction(model, path, logits, note, min(args.top, model.num_classes))
        print(json.dumps(record) if args.json else describe(record))
    return 0


MAX_CLASS_ROWS = 20     # lcq eval's per-class table, up to this many classes (all in --json)


def _recorded_path(recorded: str, model: str) -> Path:
    """The checkpoint path a model records: absolute (this compiler), or, from older compilers,
    relative to the working directory of the compile, tried here and beside the model file."""
    path = Path(recorded)
    if path.is_absolute() or path.is_file():
        return path
    beside = Path(model).parent / path
    return beside if beside.is_file() else path


def cmd_eval(args) -> int:
    """The model's integer top-1 and its agreement with the checkpoint it was compiled from (same digest), on the
    test set of the dataset that checkpoint was trained on (a model file naming another is refused)."""
    from lcq_train.checkpoint import load_checkpoint
    from lcq_train.data import load_dataset_for

    from .agreement import compare, unmatched_codes
    from .image_predictions import class_of, named
    from .lower import quantized_model

    compiled = model_format.load(args.model)
    source = compiled.source
    if not source:
        raise ValueError(f"{args.model} does not record the checkpoint it was compiled from; recompile it with "
                         f"`lcq compile CHECKPOINT -o {args.model}`")
    recorded = source["checkpoint"]
    checkpoint = Path(args.checkpoint) if args.checkpoint else _recorded_path(recorded, args.model)
    if not checkpoint.exists():
        if args.checkpoint:
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
        raise FileNotFoundError(f"the checkpoint {recorded} that {args.model} was compiled from is not there; "
                                "pass where it is now with --checkpoint CHECKPOINT")
    state = load_checkpoint(checkpoint)        # its own digest and fields; the model is built once it is the one
    if state["sha256"] != source["sha256"]:
        digests = f"its SHA-256 is {state['sha256'][:16]}..., the model records {source['sha256'][:16]}..."
        if args.checkpoint:
            recompile = (f", or recompile the model from this one: `lcq compile {checkpoint} -o {args.model}`"
                         if state["plan"]["method"] != "fp" else " (this one is full-precision: it compiles to no model)")
            raise ValueError(f"--checkpoint {checkpoint} is not the checkpoint {args.model} was compiled from "
                             f"({recorded}; {digests}), so the two cannot be compared. Pass that one{recompile}")
        raise ValueError(f"{checkpoint} is not the checkpoint {args.model} was compiled from: it changed since "
                         f"({digests}). Recompile: `lcq compile {checkpoint} -o {args.model}`, or pass the "
                         "original with --checkpoint")
    dataset = state["config"]["dataset"]   # the checkpoint's (digest-checked), not what the model file says
    if source["dataset"] != dataset:
        raise ValueError(f"{args.model} names the dataset {source['dataset']!r} (source.dataset), but the checkpoint "
                         f"{checkpoint} it was compiled from was trained on {dataset!r}: the model file was edited "
                         f"since `lcq compile`. Recompile it: `lcq compile {checkpoint} -o {args.model}`")
    model = quantized_model(state, checkpoint, args.factory)
    unmatched = unmatched_codes(compiled, model)
    if unmatched:
        raise ValueError(f"{args.model} names the codes tensor {unmatched[0]!r}, which is no activation quantizer of "
                         f"the network of {checkpoint}, so its codes could not be compared: the model file was edited "
                         f"since `lcq compile`. Recompile it: `lcq compile {checkpoint} -o {args.model}`")
    data = load_dataset_for(dataset, args.data_dir, state["input_shape"], state.get("classes"))
    images, labels = data.test_x.numpy(), data.test_y.numpy()
    if args.images is not None:
        if args.images > len(images):
            raise ValueError(f"--images {args.images}: the {dataset} test set has {len(images)} images; "
                             "pass at most that many, or leave --images out for all of them")
        images, labels = images[:args.images], labels[:args.images]
    t0 = time.perf_counter()
    # Progress on a terminal only (as lcq run's): in a log, carriage returns join its lines into one.
    show = None if args.json or not sys.stderr.isatty() else (
        lambda r: print(f"\r{r.images}/{len(images)} images", end="", file=sys.stderr, flush=True))
    result = compare(compiled, model, images, labels, args.batch_size, show).to_dict()
    result["seconds"] = time.perf_counter() - t0
    for row in result["per_class"]:
        row["name"] = class_of(compiled.source, row["class"])
    if args.json:
        print(json.dumps(result))
        return 0
    if show is not None:
        print(file=sys.stderr)
    print(f"{counted(result['images'], dataset + ' test image')}: integer top-1 {result['top1']:.2f}%, "
          f"PyTorch fake-quant (float64) top-1 {result['torch_top1']:.2f}%")
    print(f"top-1 agreement {100 * result['agreement']:.3f}% "
          f"({counted(result['disagreements'], 'image differs', 'images differ')})")
    print("\n| activation codes | compared | mismatched |\n|---|---|---|")
    for name, c in result["code_mismatches"].items():
        print(f"| {name} | {c['compared']:,} | {c['mismatched']:,} |")
    if len(result["per_class"]) <= MAX_CLASS_ROWS:
        print("\n| class | test images | integer top-1 |\n|---|---:|---:|")
        for row in result["per_class"]:
            print(f"| {named(row['name'], row['class'])} | {row['images']:,} | {row['top1']:.2f}% |")
    return 0
