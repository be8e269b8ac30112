"""Speed of the LCQ quantizer against the uniform one, alone and inside a training step, and its gradient precision.

Four measurements, the timings each the median over repetitions after warm-up:

1. Quantizer: forward + backward of ``lcq_quantize`` and ``uniform_quantize``
   on the same tensor (gradients to x, alpha and, for LCQ, theta, of
   ``(y * g).sum()`` for a fixed random g) at 2/3/4 bits, outer_bits 8, K 16,
   on every tensor ResNet-20 quantizes with LCQ at batch 128: the signed
   weights (LWN-normalized, ~N(0, 1)) of every convolution between the first
   and the last layer and the unsigned activations (post-ReLU) feeding them.
   The project's aim is LCQ/uniform <= 1.5 on each. Off the CPU also per
   call of n on the same tensor, with the n tables built in one batch as a
   model's forward builds them there (``lcq_train/batched_tables.py``),
   against n uniform calls; n is ResNet-20's count of LCQ quantizers of the
   kind (20 weights, 18 activations).
2. Training step: forward + backward + SGD step of resnet20 on random
   (3, 32, 32) data and of the small cnn on random (1, 28, 28) data, batch 128,
   full precision vs uniform vs LCQ at W3/A3 and W2/A2. The aim is an LCQ step
   <= 1.25x a uniform one.
3. Precision: the alpha and theta gradients of LCQ in float32 against the same
   computation in float64, on 2M elements (elements that float32 and float64
   put in different segments get no gradient), and the backward's per-segment
   sums of grad and grad * v against float64 sums of the same float32 terms,
   next to a plain float32 ``index_add`` per segment.
4. Kernels: the operations each quantizer call (forward, backward; the same
   tensors as 1.) and each ResNet-20 training step (the step of 2. at W3/A3,
   after the first) queue on an accelerator, counted on torch's "meta" device, which runs the
   device code path (``lcq_train/quant_device.py``) without computing: every
   dispatched operation but views and uninitialized allocations. On a GPU,
   where ResNet-20's small tensors cost about one launch each, these counts
   bound how close LCQ can come to uniform; they do not depend on the machine.

They run in the order 2, 1, 3, 4. An interrupt (SIGINT, as ``timeout -s INT``
sends) ends the part it hits: the JSON still holds the parts before it and
names that part (``interrupted_in``), and the exit status is 130; an interrupt in the
first part leaves the JSON file as it was (nothing measured to write).

Each timing has the wall-clock median (what the aims are about) and the
median of the process's CPU time (``time.process_time``, CPU only), which a
busy machine disturbs less. Every row names the device and the thread count.

Run:  python benchmarks/quantizer_speed.py [--device cpu] [--threads 1] [--reps 20] [--steps 10]
Writes benchmarks/results/quantizer_speed.json (one ``--part`` alone: quantizer_<part>.json; or --json-out) and
prints markdown tables.
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
from torch.utils._python_dispatch import TorchDispatchMode

from lcq_train.arguments import default_device, device_problem, output_file
from lcq_train.checkpoint import save_json
from lcq_train.plan import QuantPlan
from lcq_train.quant import level_scale, lcq_quantize, uniform_quantize
from lcq_train.quant_device import apply_tables, build_tables
from lcq_train.quantizer import Quantizer
from lcq_train.train import build_quantized_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402

OUTER_BITS = 8
K = 16
BITS = (2, 3, 4)
BATCH = 128
QUANTIZER_AIM = 1.5
TRAINING_AIM = 1.25
# label -> (signed, alpha, sample): weights are LWN-normalized (~N(0, 1)), activations post-ReLU.
KINDS = {
    "weights": (True, 3.0, lambda shape: torch.randn(shape)),
    "activations": (False, 4.0, lambda shape: 2.0 * torch.randn(shape).relu()),
}
# (model, input shape); batch 128, 10 classes.
MODELS = (("resnet20", (3, 32, 32)), ("cnn", (1, 28, 28)))
PLANS = (("fp", 32), ("uniform", 3), ("lcq", 3), ("uniform", 2), ("lcq", 2))
PRECISION_ELEMENTS = 1 << 21
RESULTS = Path(__file__).resolve().parent / "results"


def resnet20_tensors() -> list[tuple[str, tuple[int, ...]]]:
    """(label, shape) of every distinct tensor that ResNet-20 (batch 128, W3/A3) quantizes with LCQ."""
    model = build_quantized_model("resnet20", (3, 32, 32), 10, QuantPlan("lcq", 3, 3))
    seen: dict = {}

    def record(module, args):
        seen.setdefault(("weights" if module.signed else "activations", tuple(args[0].shape)), None)

    for m in model.modules():
        if isinstance(m, Quantizer) and m.method == "lcq":
            m.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.rand(BATCH, 3, 32, 32))
    order = {"weights": 0, "activations": 1}
    return sorted(seen, key=lambda item: (order[item[0]], item[1]))


def resnet20_quantizer_counts() -> dict[str, int]:
    """How many LCQ quantizers ResNet-20 (W3/A3) has of each kind: {"weights": n, "activations": n}."""
    model = build_quantized_model("resnet20", (3, 32, 32), 10, QuantPlan("lcq", 3, 3))
    lcq = [m for m in model.modules() if isinstance(m, Quantizer) and m.method == "lcq"]
    return {"weights": sum(q.signed for q in lcq), "activations": sum(not q.signed for q in lcq)}


def time_ms(fns: dict, warmup: int, reps: int, device: torch.device) -> tuple[dict, dict]:
    """Wall-clock and process CPU milliseconds of ``reps`` calls of each of ``fns`` after ``warmup`` untimed ones.

    The calls are interleaved (one of each per repetition) so that a change of
    machine load during the measurement hits all of them alike.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(1e3 * (time.perf_counter() - t0))
            cpu[name].append(1e3 * (time.process_time() - c0))
    return wall, cpu


def where(device: torch.device) -> dict:
    """The device and CPU thread count a number is for."""
    return {"device": str(device), "threads": torch.get_num_threads()}


def bench_quantizers(args, device: torch.device) -> list[dict]:
    """Per tensor and width: one call of each quantizer alone; off the CPU also, per call, n calls with the
    tables of the n built in one batch, as a model's forward quantizes there (lcq_train.batched_tables),
    against n uniform calls (n: ResNet-20's quantizers of that kind, here all on the same tensor)."""
    rows = []
    counts = resnet20_quantizer_counts()
    for label, shape in resnet20_tensors():
        signed, alpha0, sample = KINDS[label]
        x = sample(shape).to(device).requires_grad_()
        g = torch.randn(shape, device=device)
        alpha = torch.tensor(alpha0, device=device, requires_grad=True)
        theta = (0.5 * torch.randn(K)).to(device).requires_grad_()
        reps = args.reps if x.numel() >= 1 << 18 else 10 * args.reps   # small tensors: more, cheaper repetitions
        for bits in BITS:
            def uniform():
                y = uniform_quantize(x, alpha, bits, OUTER_BITS, signed)
                torch.autograd.grad((y * g).sum(), (x, alpha))

            def lcq():
                y = lcq_quantize(x, alpha, theta, bits, OUTER_BITS, signed)
                torch.autograd.grad((y * g).sum(), (x, alpha, theta))

            fns = {"uniform": uniform, "lcq": lcq}
            n = counts[label]
            if device.type != "cpu":
                alphas = [alpha.detach().clone().requires_grad_() for _ in range(n)]
                thetas = [theta.detach().clone().requires_grad_() for _ in range(n)]
                s, s_outer = level_scale(bits, signed), level_scale(OUTER_BITS, signed)

                def uniform_n():
                    loss = sum((uniform_quantize(x, a, bits, OUTER_BITS, signed) * g).sum() for a in alphas)
                    torch.autograd.grad(loss, (x, *alphas))

                def lcq_batched():
                    tables = build_tables(alphas, thetas, s, s_outer, signed, torch.float32)
                    loss = sum((apply_tables(x, t) * g).sum() for t in tables)
                    torch.autograd.grad(loss, (x, *alphas, *thetas))

                fns.update(uniform_n=uniform_n, lcq_batched=lcq_batched)
            wall, cpu = time_ms(fns, args.warmup, reps, device)
            ms = {m: statistics.median(wall[m]) for m in fns}
            u, c = ms["uniform"], ms["lcq"]
            uc, cc = (statistics.median(cpu[m]) for m in ("uniform", "lcq"))
            row = {"tensor": label, "shape": list(shape), "signed": signed, "bits": bits, **where(device),
                   "reps": reps, "uniform_ms": u, "lcq_ms": c, "ratio": c / u,
                   "uniform_cpu_ms": uc, "lcq_cpu_ms": cc, "cpu_ratio": cc / uc,
                   "uniform_samples_ms": wall["uniform"], "lcq_samples_ms": wall["lcq"]}
            line = f"  {label} {'x'.join(map(str, shape))} {bits}-bit: uniform {u:.3f} ms, LCQ {c:.3f} ms ({c / u:.2f}x"
            if "lcq_batched" in ms:
                ub, cb = ms["uniform_n"] / n, ms["lcq_batched"] / n
                row.update(batch=n, uniform_per_call_of_n_ms=ub, lcq_per_call_in_batch_ms=cb, batched_ratio=cb / ub)
                line += f"; per call of {n}, tables in a batch: uniform {ub:.3f} ms, LCQ {cb:.3f} ms, {cb / ub:.2f}x"
            rows.append(row)
            print(line + f"; CPU time {cc / uc:.2f}x)", flush=True)
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
        wall, cpu = time_ms(steps, args.warmup, args.steps, device)
        ms = {plan: statistics.median(s) for plan, s in wall.items()}
        cpu_ms = {plan: statistics.median(s) for plan, s in cpu.items()}
        for (method, bits), s in wall.items():
            uniform = ("uniform", bits) if method != "fp" else None
            rows.append({"model": name, "input_shape": list(input_shape), "batch": BATCH, "method": method,
                         "wbits": bits, "abits": bits, **where(device),
                         "ms_per_step": ms[method, bits], "ratio_vs_fp": ms[method, bits] / ms["fp", 32],
                         "ratio_vs_uniform": ms[method, bits] / ms[uniform] if uniform else None,
                         "cpu_ms_per_step": cpu_ms[method, bits],
                         "cpu_ratio_vs_uniform": cpu_ms[method, bits] / cpu_ms[uniform] if uniform else None,
                         "samples_ms": s})
    return rows


class KernelCount(TorchDispatchMode):
    """Counts the operations dispatched inside its block that launch work on a device: all but views
    (``detach``, ``slice``, ``view`` ...) and allocations left uninitialized."""

    NOT_KERNELS = {"empty", "empty_like", "empty_strided", "new_empty", "promote_types", "result_type", "lift_fresh"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in self.NOT_KERNELS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _count(forward, backward) -> dict:
    """Kernels of ``forward()`` and of ``backward(its output)``, on the second of two runs (the first puts
    a shape's constant tables on the device)."""
    for _ in range(2):
        with KernelCount() as f:
            out = forward()
        with KernelCount() as b:
            backward(out)
    return {"forward": f.count, "backward": b.count}


def bench_kernels() -> dict:
    """Kernels per quantizer call (forward, backward) on each ResNet-20 tensor, alone and with its tables
    built in a batch (the call's own part: the search, the lookup, the per-segment sums), of a batch of
    tables of each kind of ResNet-20 (W3/A3), and per ResNet-20 training step (fp, uniform and LCQ at
    W3/A3), counted on the meta device (:class:`KernelCount`)."""
    meta = torch.device("meta")
    calls = []
    for label, shape in resnet20_tensors():
        signed = KINDS[label][0]
        for bits in BITS:
            x = torch.empty(shape, device=meta, requires_grad=True)
            alpha = torch.empty((), device=meta, requires_grad=True)
            theta = torch.empty(K, device=meta, requires_grad=True)
            s, s_outer = level_scale(bits, signed), level_scale(OUTER_BITS, signed)
            tables = build_tables([alpha], [theta], s, s_outer, signed, torch.float32)[0]
            row = {"tensor": label, "shape": list(shape), "bits": bits,
                   "uniform": _count(lambda: uniform_quantize(x, alpha, bits, OUTER_BITS, signed),
                                     lambda y: torch.autograd.grad(y, (x, alpha), torch.empty_like(y))),
                   "lcq": _count(lambda: lcq_quantize(x, alpha, theta, bits, OUTER_BITS, signed),
                                 lambda y: torch.autograd.grad(y, (x, alpha, theta), torch.empty_like(y))),
                   "lcq_batched": _count(lambda: apply_tables(x, tables),
                                         lambda y: torch.autograd.grad(y, (x, tables.handle), torch.empty_like(y)))}
            row["ratio"] = sum(row["lcq"].values()) / sum(row["uniform"].values())
            row["batched_ratio"] = sum(row["lcq_batched"].values()) / sum(row["uniform"].values())
            calls.append(row)
    batches = []
    for label, n in resnet20_quantizer_counts().items():
        signed, bits = KINDS[label][0], 3
        alphas = [torch.empty((), device=meta, requires_grad=True) for _ in range(n)]
        thetas = [torch.empty(K, device=meta, requires_grad=True) for _ in range(n)]

        def build():
            return [t.handle for t in build_tables(alphas, thetas, level_scale(bits, signed),
                                                   level_scale(OUTER_BITS, signed), signed, torch.float32)]

        counts = _count(build, lambda handles: torch.autograd.grad(handles, alphas + thetas,
                                                                   [torch.empty_like(h) for h in handles]))
        batches.append({"tensor": label, "quantizers": n, "bits": bits, **counts})
    steps = {}
    x, y = torch.empty(BATCH, 3, 32, 32, device=meta), torch.empty(BATCH, dtype=torch.long, device=meta)
    for method, bits in (("fp", 32), ("uniform", 3), ("lcq", 3)):
        step = training_step("resnet20", (3, 32, 32), method, bits, x, y, 0, meta)
        step()                                                  # the first puts the constant tables on the device
        with KernelCount() as counted:
            step()
        steps[f"{method}-w{bits}a{bits}" if method != "fp" else "fp"] = counted.count
    return {"calls": calls, "resnet20_batches": batches, "resnet20_step": steps,
            "step_lcq_vs_uniform": steps["lcq-w3a3"] / steps["uniform-w3a3"]}


def bench_precision(args, device: torch.device) -> list[dict]:
    """Relative errors of the float32 LCQ gradients and per-segment sums against float64 (max over entries of
    |error| / max |float64 value| for theta; per segment |error| / |float64 sum| for the sums)."""
    from lcq_train.quant import _search, _segments, _Tables   # the backward's own steps
    from lcq_train.quant_device import segment_sums

    rows = []
    for label, (signed, alpha0, sample) in KINDS.items():
        g = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)
        x = sample((PRECISION_ELEMENTS,)).to(device)
        grad = torch.randn(PRECISION_ELEMENTS, generator=g).to(device)
        theta = (0.5 * torch.randn(K, generator=g)).to(device)
        for bits in (3, 4):
            s = level_scale(bits, signed)
            v = (x.abs() if signed else x) / alpha0
            v64 = (x.double().abs() if signed else x.double()) / alpha0
            same = torch.bucketize(v, _segments(theta, s, torch.float32)[0], right=True) == \
                torch.bucketize(v64, _segments(theta, s, torch.float64)[0], right=True)
            w = torch.where(same, grad, 0.0)
            result = {}
            for dtype in (torch.float32, torch.float64):
                a = torch.tensor(alpha0, dtype=dtype, device=device, requires_grad=True)
                th = theta.to(dtype, copy=True).requires_grad_()
                y = lcq_quantize(x.to(dtype), a, th, bits, OUTER_BITS, signed)
                result[dtype] = [t.double() for t in torch.autograd.grad((y * w.to(dtype)).sum(), (a, th))]
            (a32, t32), (a64, t64) = result[torch.float32], result[torch.float64]
            # The per-segment sums alone: the backward's, and one float32 index_add accumulator per segment.
            with torch.no_grad():
                tables = _Tables(theta, s, torch.float32)
            seg = _search(tables, v)
            if signed:
                seg.add_(x < 0, alpha=tables.key.size + 1)
            bins = (2 if signed else 1) * (tables.key.size + 1)
            index = seg.long()
            terms = (grad, grad * v)
            exact = torch.stack([torch.zeros(bins, dtype=torch.float64, device=device).index_add_(0, index, t.double())
                                 for t in terms]).cpu()
            chunked = segment_sums(seg, *terms, bins).cpu()
            plain = torch.stack([torch.zeros(bins, device=device).index_add_(0, index, t) for t in terms])
            plain = plain.cpu().double()
            used = exact != 0

            def sums_error(sums):
                return ((sums - exact).abs()[used] / exact.abs()[used]).max().item()

            rows.append({"tensor": label, "signed": signed, "bits": bits, "elements": PRECISION_ELEMENTS,
                         **where(device), "elements_in_other_segment_in_float64": int((~same).sum()),
                         "alpha_grad_rel_error": ((a32 - a64).abs() / a64.abs()).item(),
                         "theta_grad_rel_error": ((t32 - t64).abs().max() / t64.abs().max()).item(),
                         "theta_grad_max_entry_rel_error": ((t32 - t64).abs() / t64.abs()).max().item(),
                         "segment_sums_rel_error": sums_error(chunked),
                         "index_add_segment_sums_rel_error": sums_error(plain)})
            r = rows[-1]
            print(f"  {label} {bits}-bit: alpha {r['alpha_grad_rel_error']:.1e}, "
                  f"theta {r['theta_grad_rel_error']:.1e}, segment sums {r['segment_sums_rel_error']:.1e} "
                  f"(index_add {r['index_add_segment_sums_rel_error']:.1e})", flush=True)
    return rows


def summary(results: dict) -> dict:
    out: dict = {}
    if results["quantizer"]:
        worst = max(results["quantizer"], key=lambda r: r["ratio"])
        out["quantizer"] = {"aim": QUANTIZER_AIM, "max_ratio": worst["ratio"],
                            "worst": {k: worst[k] for k in ("tensor", "shape", "bits", "uniform_ms", "lcq_ms")},
                            "max_cpu_ratio": max(r["cpu_ratio"] for r in results["quantizer"]),
                            "met": worst["ratio"] <= QUANTIZER_AIM}
        if all("batched_ratio" in r for r in results["quantizer"]):
            batched = max(r["batched_ratio"] for r in results["quantizer"])
            out["quantizer"].update(max_batched_ratio=batched, met_in_batches=batched <= QUANTIZER_AIM)
    if results["training"]:
        lcq = [r for r in results["training"] if r["model"] == "resnet20" and r["method"] == "lcq"]
        out["training"] = {"aim": TRAINING_AIM, "model": "resnet20",
                           "lcq_vs_uniform": {f"W{r['wbits']}/A{r['abits']}": r["ratio_vs_uniform"] for r in lcq},
                           "met": all(r["ratio_vs_uniform"] <= TRAINING_AIM for r in lcq)}
    if results["kernels"]:
        out["kernels"] = {"max_call_ratio": max(r["ratio"] for r in results["kernels"]["calls"]),
                          "max_batched_call_ratio": max(r["batched_ratio"] for r in results["kernels"]["calls"]),
                          "step_lcq_vs_uniform": results["kernels"]["step_lcq_vs_uniform"]}
    if results["precision"]:
        keys = ("alpha_grad_rel_error", "theta_grad_rel_error", "segment_sums_rel_error")
        worst = {key: max(r[key] for r in results["precision"]) for key in keys}
        out["precision"] = {"aim": 1e-5, **worst, "met": max(worst.values()) <= 1e-5}
    return out


def quantizer_table(rows: list[dict]) -> str:
    lines = [f"Quantizer forward+backward (outer_bits {OUTER_BITS}, K {K}; median ms)", "",
             "| tensor | shape | bits | uniform ms | LCQ ms | LCQ/uniform |", "|---|---|---|---|---|---|"]
    batched = all("batched_ratio" in r for r in rows)
    if batched:
        lines[2] += " per call of n, tables in a batch: uniform ms | LCQ ms | LCQ/uniform |"
        lines[3] += "---|---|---|"
    for r in rows:
        kind = f"{r['tensor']} ({'signed' if r['signed'] else 'unsigned'})"
        shape = "x".join(map(str, r["shape"]))
        line = (f"| {kind} | {shape} | {r['bits']} | {r['uniform_ms']:.3f} | {r['lcq_ms']:.3f} | "
                f"{r['ratio']:.2f}x |")
        if batched:
            line += (f" {r['uniform_per_call_of_n_ms']:.3f} | {r['lcq_per_call_in_batch_ms']:.3f} | "
                     f"{r['batched_ratio']:.2f}x |")
        lines.append(line)
    lines += ["", "(The models never use signed 2-bit LCQ: ternary weights fall back to uniform.)"]
    if batched:
        n = {r["tensor"]: r["batch"] for r in rows}
        lines += ["(n: ResNet-20's LCQ quantizers of the kind, " + ", ".join(f"{v} {k}" for k, v in n.items())
                  + ", here all on the one tensor; off the CPU a model's forward builds their tables in one batch.)"]
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


def precision_table(rows: list[dict]) -> str:
    lines = [f"LCQ gradients in float32 against float64 ({PRECISION_ELEMENTS:,} elements; relative error)", "",
             "| tensor | bits | alpha | theta | per-segment sums | same sums by index_add |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tensor']} | {r['bits']} | {r['alpha_grad_rel_error']:.1e} | "
                     f"{r['theta_grad_rel_error']:.1e} | {r['segment_sums_rel_error']:.1e} | "
                     f"{r['index_add_segment_sums_rel_error']:.1e} |")
    return "\n".join(lines)


def kernel_table(kernels: dict) -> str:
    lines = ["Kernels queued on an accelerator (counted on the meta device; forward + backward)", "",
             "| tensor | shape | bits | uniform | LCQ alone | LCQ/uniform | LCQ, tables in a batch | LCQ/uniform |",
             "|---|---|---|---|---|---|---|---|"]
    for r in kernels["calls"]:
        u, c, b = r["uniform"], r["lcq"], r["lcq_batched"]
        lines.append(f"| {r['tensor']} | {'x'.join(map(str, r['shape']))} | {r['bits']} | "
                     f"{u['forward']} + {u['backward']} | {c['forward']} + {c['backward']} | {r['ratio']:.2f}x | "
                     f"{b['forward']} + {b['backward']} | {r['batched_ratio']:.2f}x |")
    batches = kernels["resnet20_batches"]
    lines += ["", "ResNet-20's batches of tables (W3/A3): " + ", ".join(
        f"{b['quantizers']} {b['tensor']} quantizers {b['forward']} + {b['backward']}" for b in batches)]
    steps = kernels["resnet20_step"]
    lines += ["", f"ResNet-20 training step (batch {BATCH}, forward + backward + SGD): "
              + ", ".join(f"{name} {n}" for name, n in steps.items())
              + f"; LCQ/uniform {kernels['step_lcq_vs_uniform']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--reps", type=int, default=20,
                        help="timed repetitions per quantizer measurement (ten times as many below 256K elements)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls / steps before timing")
    parser.add_argument("--part", choices=("all", "quantizer", "training", "precision", "kernels"), default="all")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        help="results file (default: benchmarks/results/quantizer_speed.json; one part alone: "
                             "quantizer_<part>.json, not to replace the others)")
    args = parser.parse_args(argv)
    if min(args.reps, args.steps) < 1 or args.warmup < 0:
        parser.error("--reps and --steps must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if device_problem(args.device):
        parser.error(f"--device {args.device}: {device_problem(args.device)}")
    args.json_out = args.json_out or str(RESULTS / ("quantizer_speed.json" if args.part == "all"
                                                    else f"quantizer_{args.part}.json"))

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"load average {load_start[0]:.2f}", flush=True)
    results: dict = {"quantizer": [], "training": [], "precision": [], "kernels": None}
    # the training steps first (the aim that matters most, and quick); an interrupt (SIGINT, e.g. from
    # `timeout -s INT`) ends the part it hits, and what finished before it is still written
    parts = {"training": (lambda: bench_training(args, device), training_table),
             "quantizer": (lambda: bench_quantizers(args, device), quantizer_table),
             "precision": (lambda: bench_precision(args, device), precision_table),
             "kernels": (bench_kernels, kernel_table)}
    interrupted = None
    for name, (bench, table) in parts.items():
        if args.part not in ("all", name):
            continue
        try:
            results[name] = bench()
        except KeyboardInterrupt:
            interrupted = name
            print(f"\ninterrupted in the {name} part: writing the parts before it", flush=True)
            break
        print("\n" + table(results[name]), flush=True)
    load_end = os.getloadavg()
    print(f"\nload average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    if interrupted is not None and interrupted == next(n for n in parts if args.part in ("all", n)):
        print(f"nothing measured: {args.json_out} left as it was")     # (not replaced by an empty file)
        return 130

    gpu = ({"status": "measured", "device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else
           {"status": "pending", "reason": "measured on the CPU" + ("" if torch.cuda.is_available() else
                                                                  "; this machine has no CUDA device")})
    save_json({"benchmark": "quantizer_speed", "argv": sys.argv[1:], "options": vars(args),
               "torch": torch.__version__, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "git": git_state("lcq_train"),
               "loadavg_1m": {"start": load_start[0], "end": load_end[0]},
               "loadavg_5m": {"start": load_start[1], "end": load_end[1]},
               "gpu": gpu, "outer_bits": OUTER_BITS, "K": K, "interrupted_in": interrupted, "summary": summary(results),
               **results}, args.json_out)
    print(f"wrote {args.json_out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
