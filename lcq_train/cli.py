"""The ``lcq`` command line: ``lcq train``, ``lcq demo``, the compiler's ``compile``, ``eval``, ``report``,
the hardware's ``generate``, ``sim`` and the boards' ``build``, ``flash``, ``run``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import DATASETS, DatasetError
from .models import MODELS
from .plan import QuantPlan, parse_layer_bits
from .quantizer import METHODS


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model: full precision, uniform baseline or LCQ",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="JSON file of option values (keys as the long options, "
                   "with _ for -; command-line options win), e.g. {\"wbits\": 3, \"layer_bits\": {\"conv1\": [4, 4]}}")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory (not needed for digits)")
    p.add_argument("--method", choices=METHODS, default="lcq")
    p.add_argument("--wbits", type=int, default=3, metavar="B", help="weight bits of inner layers")
    p.add_argument("--abits", type=int, default=3, metavar="B", help="activation bits of inner layers")
    p.add_argument("--layer-bits", action="append", default=[], metavar="NAME=W/A",
                   help="per-layer override, repeatable (e.g. blocks.0.conv1=4/3)")
    p.add_argument("--edge-bits", type=int, default=8, metavar="B", help="bits of the first and last layers")
    p.add_argument("--outer-bits", type=int, default=8, metavar="B", help="b' of the outer re-quantization (0: none)")
    p.add_argument("--K", type=int, default=16, help="compander intervals")
    p.add_argument("--alpha-w", type=float, default=3.0, help="initial weight clip (in units of sigma_w)")
    p.add_argument("--alpha-a", type=float, default=8.0, help="initial activation clip")
    p.add_argument("--init", metavar="CHECKPOINT", help="start from this checkpoint (e.g. the FP pretrained one)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="weight learning rate (default 0.1 fp, 0.04 quantized)")
    p.add_argument("--q-lr", type=float, default=0.02, help="quantizer (alpha, theta) learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on for 32x32 RGB data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", metavar="DIR", default="runs/train", help="writes DIR/checkpoint.pt and DIR/metrics.json")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/checkpoint.pt")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar and per-epoch lines")
    return p


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.config:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"lcq train: cannot read --config {args.config}: {e}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"lcq train: unknown key(s) {unknown} in {args.config}; valid keys: {sorted(known - {'help', 'config'})}")
        if isinstance(values.get("layer_bits"), dict):
            values["layer_bits"] = [f"{k}={v[0]}/{v[1]}" for k, v in values["layer_bits"].items()]
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def train_config(args: argparse.Namespace):
    """TrainConfig from parsed ``lcq train`` arguments (raises ValueError on bad values)."""
    from .train import TrainConfig

    plan = QuantPlan(method=args.method, wbits=args.wbits, abits=args.abits,
                     outer_bits=args.outer_bits or None, K=args.K, alpha_w=args.alpha_w, alpha_a=args.alpha_a,
                     edge_bits=args.edge_bits, layer_bits=parse_layer_bits(args.layer_bits))
    return TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, plan=plan,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, q_lr=args.q_lr,
                       weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, augment=args.augment,
                       init=args.init, seed=args.seed, device=args.device, out=args.out, resume=args.resume,
                       progress=args.progress)


def _cmd_train(args) -> int:
    from .train import train

    metrics = train(train_config(args))
    if "test_top1" in metrics:
        print(f"test top-1: {metrics['test_top1']:.2f}%  ({args.out}/checkpoint.pt, {args.out}/metrics.json)")
    return 0


def _cmd_demo(args) -> int:
    """The main job on the embedded default, 8x8 digits: FP pretraining, LCQ fine-tuning, compiling
    to the integer model, checking the integer reference against the PyTorch model, running test
    images through the generated Verilog in cocotb, and building a bitstream for ``--board``."""
    from compiler import format as model_format
    from compiler.agreement import compare
    from compiler.lower import compile_checkpoint, load_model
    from compiler.report import report

    from .data import load_dataset
    from .train import TrainConfig, train

    out = Path(args.out)
    runs = [("full precision", QuantPlan("fp"), None, args.fp_epochs),
            (f"LCQ W{args.wbits}/A{args.abits}", QuantPlan("lcq", args.wbits, args.abits), out / "fp" / "checkpoint.pt",
             args.epochs)]
    results = []
    for (label, plan, init, epochs), name in zip(runs, ("fp", "lcq")):
        run_dir = out / name
        print(f"== train {label} (small CNN, digits) -> {run_dir}", flush=True)
        cfg = TrainConfig(model="cnn", dataset="digits", plan=plan, epochs=epochs, batch_size=64,
                          init=str(init) if init else None, out=str(run_dir),
                          resume=(run_dir / "checkpoint.pt").exists(), progress=args.progress, seed=args.seed)
        results.append((label, train(cfg)["test_top1"]))
    compiled_path = out / "model.lcq"
    print(f"== compile {out / 'lcq' / 'checkpoint.pt'} -> {compiled_path}", flush=True)
    compiled = compile_checkpoint(out / "lcq" / "checkpoint.pt")
    model_format.save(compiled, compiled_path)
    rep = report(compiled)
    print(f"{len(rep['layers'])} layers, {rep['total_bytes']:,} bytes of weights and LUTs, {rep['macs']:,} MACs per image")
    print("== integer reference vs PyTorch fake-quant on the test set", flush=True)
    data = load_dataset("digits")
    agreement = compare(compiled, load_model(out / "lcq" / "checkpoint.pt")[0], data.test_x.numpy(),
                        data.test_y.numpy()).to_dict()
    results.append((f"LCQ W{args.wbits}/A{args.abits}, integer reference ({compiled_path})", agreement["top1"]))
    mismatched = sum(c["mismatched"] for c in agreement["code_mismatches"].values())
    notes = [f"integer vs PyTorch: top-1 agreement {100 * agreement['agreement']:.2f}% "
             f"({agreement['disagreements']} of {agreement['images']} images differ), {mismatched} activation codes differ"]
    if args.sim_images > 0:
        notes.append(_demo_simulation(compiled, compiled_path, data, args.sim_images, out, results))
    board_report = None
    if args.board != "none":
        from boards.boards import get_board
        from boards.build import BuildError
        from boards.cli import build_model

        print(f"== bitstream for {args.board}", flush=True)
        try:
            board_report = build_model(compiled_path, get_board(args.board), out=out / args.board)
        except BuildError as e:
            print(f"lcq demo: error: {e}", file=sys.stderr)
            return 1
    print("\n| stage | test top-1 |\n|---|---|")
    for label, top1 in results:
        print(f"| {label} | {top1:.2f}% |")
    print("\n" + "\n".join(notes))
    if board_report is not None:
        from boards.report import format_table

        print("\n" + format_table(board_report))
        print(f"\nbitstream: {board_report['bitstream']} (flash: lcq flash --board {args.board} "
              f"--bitstream {board_report['bitstream']})")
    return 0


def _demo_simulation(compiled, compiled_path: Path, data, n: int, out: Path, results: list) -> str:
    """Run ``n`` test images through the generated Verilog (cocotb, Verilator or Icarus); add the
    accuracy to ``results``; return a line on the comparison with the integer reference."""
    from hw.engine_params import EngineParams
    from sim.engine_run import engine_build, simulate_model
    from sim.runner import available_simulators

    simulators = available_simulators()
    if not simulators:
        return "cocotb simulation skipped: no simulator (pip install -e '.[hw]'; apt-get install iverilog)"
    sim = simulators[-1]
    params = EngineParams.for_model(compiled, 4, 4)
    images, labels = data.test_x[:n].numpy(), data.test_y[:n].numpy()
    print(f"== {sim}: {n} test images through the generated Verilog of a 4 x 4 engine", flush=True)
    report = simulate_model(engine_build(sim, params, out / "sim"), params, compiled_path, compiled, images,
                            out / "sim" / "run")
    top1 = float((report.logits.argmax(axis=1) == labels).mean() * 100)
    results.append((f"cocotb + {sim}, generated Verilog ({n} images)", top1))
    cycles = sum(layer.compute_cycles for layer in report.layers)
    return (f"{sim} simulation: {report.mismatches} of {sum(r.outputs for r in report.layers):,} layer outputs differ "
            f"from the integer reference; {cycles / n:,.0f} cycles per image on a 4 x 4 array")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lcq", description="LCQ: train low-bit CNNs and map them to FPGA LUT-MAC arrays")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = _train_parser(sub)
    demo = sub.add_parser("demo", help="the main job on the embedded default (8x8 digits)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", metavar="DIR", default="runs/demo")
    demo.add_argument("--wbits", type=int, default=3, metavar="B")
    demo.add_argument("--abits", type=int, default=3, metavar="B")
    demo.add_argument("--fp-epochs", type=int, default=30, metavar="N")
    demo.add_argument("--epochs", type=int, default=30, metavar="N", help="LCQ fine-tuning epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    demo.add_argument("--sim-images", type=int, default=10, metavar="N",
                      help="test images to run through the generated Verilog in cocotb (0: skip)")
    demo.add_argument("--board", default="icebreaker", help="board to build a bitstream for ('none': skip)")

    from boards.cli import add_parsers as add_board_parsers
    from compiler.cli import add_parsers
    from hw.cli import add_parsers as add_hw_parsers

    commands = {"train": _cmd_train, "demo": _cmd_demo, **add_parsers(sub), **add_hw_parsers(sub),
                **add_board_parsers(sub)}
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    name = args.command
    if name == "train":
        args = _apply_config_file(train_parser, argv[argv.index("train") + 1:])
    try:
        return commands[name](args)
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lcq {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
