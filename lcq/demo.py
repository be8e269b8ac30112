"""``lcq demo``: the whole flow on the embedded default (8x8 digits), one stage after another.

FP pretraining, LCQ fine-tuning, compiling to the integer model, checking the integer
reference against the PyTorch model, running test images through the generated Verilog
in cocotb, and building a bitstream for ``--board``. Every option (the board name, the
bit-widths, epochs, seed and image count) is checked before anything runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from boards.boards import BOARDS, get_board
from boards.build import BuildError
from boards.cli import build_model
from boards.report import format_table
from compiler import format as model_format
from compiler.agreement import compare
from compiler.lower import compile_checkpoint, load_model
from compiler.report import report
from hw.engine_params import EngineParams
from lcq_train.arguments import DefaultsHelpFormatter, nonnegative_int, positive_int
from lcq_train.data import load_dataset
from lcq_train.plan import QuantPlan
from lcq_train.quantizer import BITS
from lcq_train.train import SEED, TrainConfig, train
from sim.engine_run import engine_build, simulate_model
from sim.runner import SIMULATORS, available_simulators, unavailable_reason


def add_parsers(sub) -> dict:
    """Register ``demo`` on ``sub`` (argparse subparsers); returns {verb: handler}."""
    demo = sub.add_parser("demo", help="the main job on the embedded default (8x8 digits)",
                          formatter_class=DefaultsHelpFormatter)
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="where the runs, the model and the builds go")
    demo.add_argument("--wbits", type=BITS, default=3, metavar="B", help=f"weight bits ({BITS.describe()})")
    demo.add_argument("--abits", type=BITS, default=3, metavar="B", help=f"activation bits ({BITS.describe()})")
    demo.add_argument("--fp-epochs", type=positive_int, default=30, metavar="N",
                      help="full-precision pretraining epochs, N >= 1")
    demo.add_argument("--epochs", type=positive_int, default=30, metavar="N", help="LCQ fine-tuning epochs, N >= 1")
    demo.add_argument("--seed", type=SEED, default=0, help=f"random seed of both trainings, {SEED.describe()}")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                      help="progress bars and per-epoch lines")
    demo.add_argument("--sim-images", type=nonnegative_int, default=10, metavar="N",
                      help="test images to run through the generated Verilog in cocotb, N >= 0 (0: skip)")
    demo.add_argument("--board", default="icebreaker", choices=[*BOARDS, "none"], metavar="NAME",
                      help=f"board to build a bitstream for: {', '.join(BOARDS)}, or 'none' to skip")
    return {"demo": cmd_demo}


def cmd_demo(args) -> int:
    """Run the demo of the module docstring; 0, or 1 when the board build fails (after the table of the stages
    that ran)."""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:                    # a file there or above it, no permission: said before anything runs
        raise ValueError(f"cannot make the demo directory {out} ({e.strerror}): give a directory that can be made "
                         "or written with --out DIR") from None
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
    board_report = failed = None
    if args.board != "none":
        print(f"== bitstream for {args.board}", flush=True)
        try:
            board_report = build_model(compiled_path, get_board(args.board), out=out / args.board)
        except BuildError as e:         # said after the results of the stages that ran
            failed = e
    print("\n| stage | test top-1 |\n|---|---|")
    for label, top1 in results:
        print(f"| {label} | {top1:.2f}% |")
    print("\n" + "\n".join(notes))
    if failed is not None:
        sys.stdout.flush()
        print(f"lcq demo: error: {failed}", file=sys.stderr)
        return 1
    if board_report is not None:
        print("\n" + format_table(board_report))
        print(f"\nbitstream: {board_report['bitstream']} (flash: lcq flash --board {args.board} "
              f"--bitstream {board_report['bitstream']})")
    return 0


def _demo_simulation(compiled, compiled_path: Path, data, n: int, out: Path, results: list) -> str:
    """Run ``n`` test images through the generated Verilog (cocotb, Verilator or Icarus); add the
    accuracy to ``results``; return a line on the comparison with the integer reference."""
    simulators = available_simulators()
    if not simulators:
        return ("cocotb simulation skipped: no simulator ("
                + "; ".join(f"{sim}: {unavailable_reason(sim)}" for sim in SIMULATORS) + ")")
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
