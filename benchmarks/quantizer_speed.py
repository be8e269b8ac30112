"""Speed of the LCQ quantizer against the uniform one, alone and inside a training step.

Two measurements, each the median over repetitions after warm-up:

1. Quantizer: forward + backward of ``lcq_quantize`` and ``uniform_quantize``
   on the same tensor (gradients to x, alpha and, for LCQ, theta, of
   ``(y * g).sum()`` for a fixed random g) at 2/3/4 bits, outer_bits 8, K 16,
   for signed weights (64, 64, 3, 3) and unsigned activations (128, 16, 32, 32)
   and (128, 64, 8, 8). The project's aim is LCQ/uniform <= 1.5.
2. Training step: forward + backward + SGD step of resnet20 on random
   (3, 32, 32) data and of the small cnn on random (1, 28, 28) data, batch 128,
   full precision vs uniform vs LCQ at W3/A3 and W2/A2.

Run:  python benchmarks/quantizer_speed.py [--device cpu] [--reps 20] [--steps 10]
Writes benchmarks/results/quantizer_speed.json (or --json-out) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcq_train.checkpoint import save_json
from lcq_train.plan import QuantPlan
from lcq_train.quant import lcq_quantize, uniform_quantize
from lcq_train.train import build_quantized_model

OUTER_BITS = 8
K = 16
BITS = (2, 3, 4)
# (label, shape, signed, alpha, sample): weights are LWN-normalized (~N(0, 1)), activations post-ReLU.
TENSORS = (
    ("weights", (64, 64, 3, 3), True, 3.0, lambda shape: torch.randn(shape)),
    ("activations", (128, 16, 32, 32), False, 4.0, lambda shape: 2.0 * torch.randn(shape).relu()),
    ("activations", (128, 64, 8, 8), False, 4.0, lambda shape: 2.0 * torch.randn(shape).relu()),
)
# (model, input shape); batch 128, 10 classes.
MODELS = (("resnet20", (3, 32, 32)), ("cnn", (1, 28, 28)))
PLANS = (("fp", 32), ("uniform", 3), ("lcq", 3), ("uniform", 2), ("lcq", 2))
BATCH = 128


def time_ms(fns: dict, warmup: int, reps: int, device: torch.device) -> dict:
    """Wall-clock milliseconds of ``reps`` calls of each of ``fns`` after ``warmup`` untimed ones.

    The calls are interleaved (one of each per repetition) so that a change of
    machine load during the measurement hits all of them alike.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            samples[name].append(1e3 * (time.perf_counter() - t0))
    return samples


def bench_quantizers(args, device: torch.device) -> list[dict]:
    rows = []
    for label, shape, signed, alpha0, sample in TENSORS:
        x = sample(shape).to(device).requires_grad_()
        g = torch.randn(shape, device=device)
        alpha = torch.tensor(alpha0, device=device, requires_grad=True)
        theta = (0.5 * torch.randn(K)).to(device).requires_grad_()
        for bits in BITS:
            def uniform():
                y = uniform_quantize(x, alpha, bits, OUTER_BITS, signed)
                torch.autograd.grad((y * g).sum(), (x, alpha))

            def lcq():
                y = lcq_quantize(x, alpha, theta, bits, OUTER_BITS, signed)
                torch.autograd.grad((y * g).sum(), (x, alpha, theta))

            samples = time_ms({"uniform": uniform, "lcq": lcq}, args.warmup, args.reps, device)
            u, c = (statistics.median(samples[m]) for m in ("uniform", "lcq"))
            rows.append({"tensor": label, "shape": list(shape), "signed": signed, "bits": bits,
                         "uniform_ms": u, "lcq_ms": c, "ratio": c / u,
                         "uniform_samples_ms": samples["uniform"], "lcq_samples_ms": samples["lcq"]})
    return rows


def training_step(name: str, input_shape, method: str, bits: int, x, y, seed: int, device: torch.device):
    """A closure running one SGD training step of ``name`` under ``QuantPlan(method, bits, bits)``."""
    torch.manual_seed(seed)
    model = build_quantized_model(name, input_shape, 10, QuantPlan(method, bits, bits)).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(args, device: torch.device) -> list[dict]:
    rows = []
    for name, input_shape in MODELS:
        x = torch.rand((BATCH, *input_shape), device=device)
        y = torch.randint(0, 10, (BATCH,), device=device)
        steps = {(method, bits): training_step(name, input_shape, method, bits, x, y, args.seed, device)
                 for method, bits in PLANS}
        samples = time_ms(steps, args.warmup, args.steps, device)
        fp_ms = statistics.median(samples[("fp", 32)])
        for (method, bits), s in samples.items():
            ms = statistics.median(s)
            rows.append({"model": name, "input_shape": list(input_shape), "batch": BATCH, "method": method,
                         "wbits": bits, "abits": bits, "ms_per_step": ms, "ratio_vs_fp": ms / fp_ms,
                         "samples_ms": s})
    return rows


def quantizer_table(rows: list[dict]) -> str:
    lines = [f"Quantizer forward+backward (outer_bits {OUTER_BITS}, K {K}; median ms)", "",
             "| tensor | shape | bits | uniform ms | LCQ ms | LCQ/uniform |", "|---|---|---|---|---|---|"]
    for r in rows:
        kind = f"{r['tensor']} ({'signed' if r['signed'] else 'unsigned'})"
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"| {kind} | {shape} | {r['bits']} | {r['uniform_ms']:.3f} | {r['lcq_ms']:.3f} | "
                     f"{r['ratio']:.2f}x |")
    lines += ["", "(The models never use signed 2-bit LCQ: ternary weights fall back to uniform.)"]
    return "\n".join(lines)


def training_table(rows: list[dict]) -> str:
    lines = [f"Training step forward+backward+SGD (batch {BATCH}; median ms)", "",
             "| model | input | method | W/A | ms/step | vs fp |", "|---|---|---|---|---|---|"]
    for r in rows:
        wa = "32/32" if r["method"] == "fp" else f"{r['wbits']}/{r['abits']}"
        shape = "x".join(map(str, r["input_shape"]))
        lines.append(f"| {r['model']} | {shape} | {r['method']} | {wa} | {r['ms_per_step']:.1f} | "
                     f"{r['ratio_vs_fp']:.2f}x |")
    lines += ["", "(First/last layers 8-bit uniform; LCQ W2 keeps uniform ternary weights, LCQ activations.)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per quantizer measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls / steps before timing")
    parser.add_argument("--part", choices=("all", "quantizer", "training"), default="all")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "quantizer_speed.json"))
    args = parser.parse_args(argv)
    if min(args.reps, args.steps) < 1 or args.warmup < 0:
        parser.error("--reps and --steps must be >= 1 and --warmup >= 0")

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    results: dict = {"quantizer": [], "training": []}
    if args.part in ("all", "quantizer"):
        results["quantizer"] = bench_quantizers(args, device)
        print("\n" + quantizer_table(results["quantizer"]), flush=True)
    if args.part in ("all", "training"):
        results["training"] = bench_training(args, device)
        print("\n" + training_table(results["training"]), flush=True)

    save_json({"benchmark": "quantizer_speed", "argv": sys.argv[1:], "options": vars(args),
               "torch": torch.__version__, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "loadavg_1m": {"start": load_start[0], "end": os.getloadavg()[0]},
               "outer_bits": OUTER_BITS, "K": K, **results}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
