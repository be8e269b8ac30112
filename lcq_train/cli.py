"""``lcq train``, ``lcq plot`` and ``lcq export-onnx``: the trainer's verbs of the ``lcq`` command (:mod:`lcq.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import (DefaultsHelpFormatter, decay_rate, given_options, learning_rate, nonnegative_float,
                        nonnegative_int, output_file, positive_int, quantizer_rate, refuse_overwriting, torch_device)
from .calibrate import CLIP_INITS
from .data import DATASETS
from .factory import MODEL, is_factory
from .json_text import parse_json
from .models import MODELS
from .plan import OUTER_BITS_OPTION, QuantPlan, parse_layer_bits
from .quantizer import BITS, CLIP, INTERVALS, METHODS, WEIGHT_NORMS
from .train import SEED


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model: full precision, uniform baseline or LCQ",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="JSON file of option values (keys as the long options, "
                   "with _ for -; command-line options win), e.g. {\"wbits\": 3, \"layer_bits\": {\"conv1\": [4, 4]}}")
    p.add_argument("--model", type=MODEL, default="cnn", metavar="{" + ",".join(MODELS) + "} or MODULE:FACTORY",
                   help="a built-in model, or your own network: MODULE:FACTORY or FILE.py:FACTORY names a callable "
                        "that gets num_classes=, in_channels= (and input_shape=(C, H, W) if it has that parameter) "
                        "and returns a full-precision torch.nn.Module, quantized per the plan. IMPORTING IT RUNS "
                        "THAT CODE. The checkpoint records the reference; --resume of such a run needs the same "
                        "--model again (a checkpoint alone never imports code)")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits is built in (8x8 images); the others load from --data-dir; folder: your own "
                        "images, DIR/train/<class>/*.png (or .jpg) and DIR/test/<class>/*.png, or a .tar.gz of "
                        "them, all of one size (sides up to 256), grey or RGB; the folder names are the classes")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--method", choices=METHODS, default="lcq",
                   help="fp = full precision; uniform = the uniform quantizer (the baseline); lcq = learnable "
                        "companding quantization")
    p.add_argument("--wbits", type=BITS, default=3, metavar="B", help=f"weight bits of inner layers ({BITS.describe()})")
    p.add_argument("--abits", type=BITS, default=3, metavar="B", help="activation bits of inner layers")
    p.add_argument("--layer-bits", action="append", default=[], metavar="NAME=W/A[:BW/BA]",
                   help="per-layer override, repeatable (e.g. blocks.0.conv1=4/3), optionally with the layer's own "
                        "outer widths b'_w/b'_a (e.g. blocks.0.conv1=3/3:6/4)")
    p.add_argument("--edge-bits", type=BITS, default=8, metavar="B", help="bits of the first and last layers")
    p.add_argument("--outer-bits", type=OUTER_BITS_OPTION, default=8, metavar="B|BW/BA",
                   help="b' of the outer re-quantization: one width for weights and activations (8), or b'_w/b'_a "
                        "(6/4); 0: none. Each at least the inner layers' bits, at most 16; the 8-bit edge layers and "
                        "the input image keep at least their own bits")
    p.add_argument("--weight-norm", choices=WEIGHT_NORMS, default="lwn",
                   help="weight normalization of the inner layers: lwn = limited weight normalization (the paper's, "
                        "sigma_w * Q((w - mu_w) / sigma_w)); standardize = the conventional one (APoT), "
                        "Q((w - mu_w) / sigma_w) without rescaling")
    p.add_argument("--K", type=INTERVALS, default=16, help=f"compander intervals ({INTERVALS.describe()})")
    p.add_argument("--alpha-w", type=CLIP, default=3.0, help="initial weight clip (in units of sigma_w)")
    p.add_argument("--alpha-a", type=CLIP, default=8.0, help="initial activation clip")
    p.add_argument("--init", metavar="WEIGHTS", help="start from these weights: an lcq checkpoint (e.g. the FP "
                   "pretrained one), or your network's own, a state dict saved by torch.save(model.state_dict(), "
                   "PATH) or a safetensors file (read without running code)")
    p.add_argument("--init-skip", metavar="LAYER", action="append", default=[],
                   help="leave LAYER's weights out of --init: they keep their fresh initialization (a new "
                        "classifier for your classes: --init-skip fc); repeat for more layers")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="epochs of the run (with --resume: omit to finish the saved run, more to extend it)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training images per step")
    p.add_argument("--lr", type=learning_rate, default=None, help="weight learning rate (default 0.1 fp, 0.04 quantized)")
    p.add_argument("--q-lr", type=quantizer_rate, default=0.02, help="quantizer (alpha, theta) learning rate")
    p.add_argument("--weight-decay", type=decay_rate, default=1e-4, help="SGD weight decay, in [0, 1]")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=0.0,
                   help="epochs of linear learning-rate warm-up before the cosine decay, at most --epochs")
    p.add_argument("--clip-init", choices=CLIP_INITS, default="mse",
                   help="initial clip values: mse = per quantizer, the clip whose uniform quantizer has the least "
                        "squared error on what it quantizes in the --init model (4 training batches; without "
                        "--init: fixed); fixed = --alpha-w/--alpha-a (the paper's)")
    p.add_argument("--bn-batches", type=nonnegative_int, default=50, metavar="N",
                   help="after the last epoch, re-estimate the BN statistics on N training batches (at most an "
                        "epoch's), layer after layer, with the quantizers frozen (0: none, the paper's)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on for cifar10, off for the others)")
    p.add_argument("--seed", type=SEED, default=0, help=f"random seed: initialization, data order, augmentation "
                   f"({SEED.describe()})")
    p.add_argument("--device", type=torch_device, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", default="runs/train",
                   help="a new or empty directory: writes DIR/checkpoint.pt and DIR/metrics.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUT/checkpoint.pt: options not given keep the saved run's values, "
                        "options given must equal them (--epochs may be larger, to extend the run)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar and per-epoch lines")
    p.add_argument("--compile-check", action=argparse.BooleanOptionalAction, default=True,
                   help="before the first epoch of a new run, lower the network as `lcq compile` will after the "
                        "last, and stop if the compiler refuses it (an operation it cannot run, say); "
                        "--no-compile-check trains it anyway")
    return p


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the ``train`` parser with the values of its ``--config`` file as defaults.

    Each value of the file is held to its option's rule (argparse stops with the key named).
    ``given`` of the result is the set of options set on the command line or in the file:
    with ``--resume``, :func:`train_config` takes the others from the saved run."""
    args = parser.parse_args(argv)
    values = _config_values(parser, args.config) if args.config else {}
    if values:
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    args.given = frozenset(values) | _given_on_command_line(parser, argv)
    return args


def _given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options set on the command line (:func:`~lcq_train.arguments.given_options`); stops naming a layer
    that ``--layer-bits`` gives twice there (a ``--config`` file's entry for a layer is overridden by the
    command line's, silently: that is the rule)."""
    given = given_options(parser, argv)
    names = [item.partition("=")[0].strip() for item in given.get("layer_bits", [])]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        parser.error(f"--layer-bits gives {', '.join(twice)} more than once; give each layer once")
    return set(given)


def _config_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The option values of ``--config`` file ``path``, each checked by its option's rule."""
    if Path(path).exists() and not Path(path).is_file():       # (a FIFO or a device would block the read)
        parser.error(f"cannot read --config {path}: it is not a regular file")
    try:
        values = parse_json(Path(path).read_text())
    except (OSError, ValueError) as e:
        parser.error(f"cannot read --config {path}: {e}")
    if not isinstance(values, dict):
        parser.error(f"--config {path} must hold a JSON object of option values, not a {type(values).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"unknown key(s) {unknown} in --config {path}; valid keys: {sorted(actions)}")
    for key, value in values.items():
        problem = _config_problem(actions[key], value)
        if problem:
            parser.error(f"--config {path}: key {key!r} {problem}")
        if key == "layer_bits" and isinstance(value, dict):
            values[key] = [f"{name}={pair[0]}/{pair[1]}" + (f":{pair[2]}/{pair[3]}" if len(pair) == 4 else "")
                           for name, pair in value.items()]
    return values


def _config_problem(action: argparse.Action, value) -> str | None:
    """Why ``value`` from a config file breaks the rule of ``action``'s option (None: it does not)."""
    if action.dest == "init_skip":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else \
            f'must be a list of layer names ["fc", ...], not {value!r}'
    if action.dest == "layer_bits":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return None
        if not isinstance(value, dict):
            return (f'must be an object {{"LAYER": [WBITS, ABITS] or [WBITS, ABITS, BW, BA], ...}} or a list of '
                    f'"LAYER=W/A[:BW/BA]" strings, not {value!r}')
        for name, pair in value.items():
            if not isinstance(pair, list) or len(pair) not in (2, 4) or not all(BITS.accepts(b) for b in pair[:2]):
                return (f"must give layer {name!r} [WBITS, ABITS], each {BITS.describe()}, or [WBITS, ABITS, BW, BA] "
                        f"(outer widths), not {pair!r}")
            try:
                QuantPlan(layer_bits={name: pair})
            except ValueError as e:
                return str(e)
        return None
    if value is None and action.default is None:
        return None
    if action.choices is not None:
        return None if isinstance(value, str) and value in action.choices else \
            f"must be one of {list(action.choices)}, not {value!r}"
    if action.nargs == 0:               # a switch: --resume, --progress/--no-progress, --augment/--no-augment
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if hasattr(action.type, "check"):
        try:
            action.type.check(value, "")
        except ValueError as e:
            return str(e).strip()
        return None
    return None if isinstance(value, str) else f"must be a string, not {value!r}"


def train_config(args: argparse.Namespace):
    """TrainConfig from parsed ``lcq train`` arguments (raises ValueError on bad values).

    With ``--resume``, the options not in ``args.given`` take the values of the run saved in
    OUT/checkpoint.pt, so that ``lcq train --resume --out DIR`` continues it as it was started;
    the options given must equal the saved ones (ValueError lists those that do not)."""
    from .train import TrainConfig, check_continues

    outer = OUTER_BITS_OPTION.check(args.outer_bits)      # (a --config file's value is not parsed by argparse)
    plan = {"method": args.method, "wbits": args.wbits, "abits": args.abits,
            "outer_bits": list(outer) if isinstance(outer, tuple) else outer,
            "K": args.K, "alpha_w": args.alpha_w, "alpha_a": args.alpha_a, "edge_bits": args.edge_bits,
            "layer_bits": {k: list(v) for k, v in parse_layer_bits(args.layer_bits).items()},
            "weight_norm": args.weight_norm}
    asked = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir, "plan": plan,
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "q_lr": args.q_lr,
             "weight_decay": args.weight_decay, "momentum": TrainConfig.momentum, "warmup_epochs": args.warmup_epochs,
             "augment": args.augment, "clip_init": args.clip_init, "bn_batches": args.bn_batches,
             "init": str(Path(args.init).absolute()) if args.init else None,      # (a resume from elsewhere: the same)
             "init_skip": list(args.init_skip),
             "seed": args.seed, "device": args.device, "out": args.out,
             "resume": args.resume, "progress": args.progress}
    given = getattr(args, "given", None)
    checkpoint = Path(args.out) / "checkpoint.pt"
    if not args.resume or given is None or not checkpoint.is_file():
        return TrainConfig.from_dict(asked)
    from .checkpoint import load_checkpoint

    saved = TrainConfig.from_dict(load_checkpoint(checkpoint)["config"]).to_dict()   # (fields added since: defaults)
    if is_factory(saved["model"]) and "model" not in given:
        raise ValueError(f"{checkpoint} holds a run of the user model {saved['model']!r}; continuing it imports and "
                         f"runs that code, which a checkpoint alone never does: pass --model {saved['model']} to "
                         "confirm")
    check_continues(checkpoint, saved, TrainConfig.from_dict(asked).to_dict(), given)   # (both by one rule)
    merged = {name: asked[name] if name in given or name in ("out", "resume", "progress") else saved[name]
              for name in asked if name != "plan"}
    merged["plan"] = {name: plan[name] if name in given else saved["plan"][name] for name in plan}
    return TrainConfig.from_dict(merged)


def cmd_train(args) -> int:
    """``lcq train``; SIGTERM and SIGHUP end it as Ctrl-C does (:mod:`lcq_train.stop_signals`), with its way on.
    ``args.check_model``, where set, checks a new run's network before it trains (:func:`train.train`'s
    ``check_model``: the ``lcq`` command sets the compiler's where ``--compile-check``)."""
    from .stop_signals import stop_signals
    from .train import process_rank, train

    with stop_signals():
        metrics = train(train_config(args), finished_ok=False, check_model=getattr(args, "check_model", None))
    if "test_top1" in metrics and process_rank() == 0:          # (other processes evaluate nothing)
        print(f"test top-1: {metrics['test_top1']:.2f}%  ({args.out}/checkpoint.pt, {args.out}/metrics.json)")
    return 0


_FACTORY_HELP = ("for a checkpoint of your own network: the factory reference it records (its --model of lcq "
                 "train), which confirms that its code may be imported and RUN to rebuild the network (a "
                 "checkpoint alone never imports code)")


def _plot_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plot", help="PNGs of a run: learned companders and quantizer levels, training curves, "
                       "activation-code histograms (needs the plot extra: matplotlib)",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of an lcq train run (or its checkpoint)")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN_DIR/plots)")
    p.add_argument("--data-dir", metavar="DIR", help="the run's data set, for the activation codes (default: the "
                   "run's own --data-dir)")
    p.add_argument("--images", type=nonnegative_int, default=512, metavar="N",
                   help="training images for the activation-code histograms, N >= 0 (0: none)")
    p.add_argument("--seed", type=SEED, default=0, help="which training images")
    p.add_argument("--model", dest="factory", metavar="MODULE:FACTORY", type=MODEL, help=_FACTORY_HELP)
    return p


def cmd_plot(args) -> int:
    import sys

    from .plot import plot_run

    try:
        written = plot_run(args.run_dir, args.out, data_dir=args.data_dir, images=args.images, seed=args.seed,
                           factory=args.factory)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        print(f"lcq plot: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # a run that cannot be read or drawn, a PNG that cannot be written
        print(f"lcq plot: error: {e}; no PNG written, any previous ones are left as they were", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _export_onnx_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export-onnx", help="the fake-quantized model of a checkpoint as an ONNX file (standard "
                       "operators; each activation quantizer as its thresholds and level table; needs onnx)",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt of `lcq train`")
    p.add_argument("-o", "--output", metavar="FILE", type=output_file, required=True,
                   help="ONNX file to write (e.g. model.onnx)")
    p.add_argument("--model", dest="factory", metavar="MODULE:FACTORY", type=MODEL, help=_FACTORY_HELP)
    return p


def cmd_export_onnx(args) -> int:
    import sys

    from .checkpoint import load_checkpoint
    from .factory import model_from_checkpoint
    from .onnx_export import export_onnx

    refuse_overwriting(args.output, args.checkpoint, "checkpoint", args.output)
    state = load_checkpoint(args.checkpoint)
    try:
        model = model_from_checkpoint(state, args.factory, option="--model")
    except ValueError as e:
        raise ValueError(f"{args.checkpoint}: {e}") from None
    try:
        summary = export_onnx(model, args.output, tuple(state["input_shape"]))
    except ModuleNotFoundError as e:
        if e.name != "onnx":
            raise
        print(f"lcq export-onnx: error: {e}", file=sys.stderr)
        return 2
    for name, q in summary["activation_quantizers"].items():
        outer = q["outer_bits"] if q["outer_bits"] is not None else "none"
        print(f"{name}: {q['method']} {q['bits']} bits (b' {outer}{', signed' if q['signed'] else ''}), "
              f"{len(q['table'])} levels")
    operators = ", ".join(f"{op} {n}" for op, n in sorted(summary["operators"].items()))
    print(f"wrote {args.output}: {summary['nodes']} nodes ({operators}), {len(summary['activation_quantizers'])} "
          f"activation quantizers as level tables, {len(summary['weight_quantizers'])} quantized weight tensors, "
          f"{summary['bytes']:,} bytes")
    return 0


def add_parsers(sub) -> dict:
    """Register the trainer's verbs on ``sub`` (argparse subparsers); returns {verb: handler}. The
    ``--config`` file of ``lcq train`` is applied by :func:`apply_config_file`."""
    _train_parser(sub)
    _plot_parser(sub)
    _export_onnx_parser(sub)
    return {"train": cmd_train, "plot": cmd_plot, "export-onnx": cmd_export_onnx}
