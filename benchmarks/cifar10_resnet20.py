"""The paper's headline table on one GPU: CIFAR-10 pre-activation ResNet-20, FP vs uniform vs LCQ.

Trains the full-precision ResNet-20 once (``OUT/fp``), then fine-tunes uniform and LCQ at W2/A2, W3/A3
and W4/A4 from that checkpoint (``OUT/uniform-wbab``, ``OUT/lcq-wbab``), the quantized runs side by side
on the one device (``--jobs`` of them at a time, default all of them on a GPU). Every run is ``lcq train``
itself, run in its own process (the command is in ``OUT/<run>.log``); each holds the whole data set on
its device (``lcq_train.train`` moves the uint8 images there once and batches and augments them there).

Schedules: ``short`` (default) FP 40 epochs, then each quantized run 15 epochs, sized to finish within
9 minutes of wall time on one H200 (see ``SCHEDULES``); ``paper`` FP 200 epochs, then 300 epochs per
quantized run (the paper's 300, batch 128, lr 0.04 / 0.02). ``--fp-epochs`` and ``--epochs`` override.
``--tiny``: the same pipeline on CPU, FP, uniform and LCQ W3/A3, 2 + 2 epochs on 200 training and 100 test
images (its test).

Run:  python benchmarks/cifar10_resnet20.py --device cuda [--schedule short|paper] [--data-dir DIR]
Writes benchmarks/results/cifar10-resnet20.json (or --json-out; with --tiny, OUT/result.json) and
prints a table beside the paper's LCQ and APoT numbers. Re-running the same command reuses finished
runs in OUT and resumes interrupted ones. A run that fails (its ``lcq train`` exits non-zero, or its checkpoint
is damaged) is recorded FAILED with the reason, and the others go on.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lcq_train.arguments import given_options, output_file  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402
from lcq_train.checkpoint import CheckpointError  # noqa: E402
from lcq_train.runs import rebuild_metrics, saved_history  # noqa: E402
from lcq_train.stop_signals import signals_held, stop_signals  # noqa: E402
from lcq_train.train import PAPER_RECIPE, SEED, TrainConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402

DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "cifar10-resnet20.json"

# (FP epochs, quantized epochs). "short", as measured on an H200 (benchmarks/README.md): FP 4.0 s/epoch, so
# 40 epochs 174 s; uniform 16.6 s/epoch with six runs side by side, so 15 epochs ~260 s; LCQ on the device
# path (lcq_train/quant_device.py, tables built in batches: fewer kernels per step than uniform) not yet timed
# there: at uniform's cost the whole ~450 s of the 540 s budget.
SCHEDULES = {"short": (40, 15), "paper": (200, 300)}
TINY = {"fp_epochs": 2, "epochs": 2, "limit": 200, "test_limit": 100, "batch_size": 100, "bits": [3], "device": "cpu"}
BUDGET_S = 540.0          # the 9 minutes the short schedule is sized for
STOP_S = 30.0             # how long an interrupted run may take to stop after SIGTERM before it is killed

# Yamamoto, CVPR 2021, Table 1 (CIFAR-10, pre-activation ResNet-20, top-1 %).
PAPER_FP = 93.4
PAPER_LCQ = {2: 91.8, 3: 92.8, 4: 93.2}
PAPER_APOT = {2: 91.0, 3: 92.2, 4: 92.3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="short",
                   help="short: FP 40 + 15 epochs per quantized run (9 minutes on one H200); paper: FP 200 + 300")
    p.add_argument("--fp-epochs", type=int, metavar="N", help="FP epochs (default: the schedule's)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs of each quantized run (default: the schedule's)")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4], metavar="B", help="W/A bit-widths")
    p.add_argument("--methods", nargs="+", choices=("uniform", "lcq"), default=["uniform", "lcq"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--clip-init", choices=("fixed", "mse"), default=TrainConfig.clip_init,
                   help="initial clips of the quantized runs (lcq train --clip-init; fixed: the paper's)")
    p.add_argument("--bn-batches", type=int, default=TrainConfig.bn_batches, metavar="N",
                   help="BN statistics re-estimated after the last epoch (lcq train --bn-batches; 0: the paper's)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of every run")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available); every run shares it")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="quantized runs side by side (default: all of them on a GPU, 2 on the CPU)")
    p.add_argument("--data-dir", metavar="DIR", default=str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.exists() else None,
                   help="CIFAR-10 (python batches, image folders or a .tar.gz of them; else $LCQ_DATA_DIR/cifar10)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="train on N training images only, the same number of each class (a smoke test)")
    p.add_argument("--test-limit", type=int, metavar="N", help="test on N test images only, as --limit")
    p.add_argument("--tiny", action="store_true",
                   help=f"CPU smoke test: FP, uniform and LCQ at W{TINY['bits'][0]}/A{TINY['bits'][0]}, "
                        f"{TINY['fp_epochs']} + {TINY['epochs']} epochs on {TINY['limit']} training and "
                        f"{TINY['test_limit']} test images, batch {TINY['batch_size']} (options given win)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: tabulate the runs OUT holds, unfinished ones with their epochs so far")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/cifar10-resnet20-<schedule>, "
                   "runs/cifar10-resnet20-tiny with --tiny)")
    p.add_argument("--json-out", type=output_file, metavar="FILE",
                   help=f"results file (default: {DEFAULT_JSON.relative_to(REPO)}; with --tiny OUT/result.json)")
    args = p.parse_args(argv)
    given = given_options(p, argv)
    if args.tiny:
        for key, value in TINY.items():
            if key not in given:
                setattr(args, key, value)
    fp_epochs, epochs = SCHEDULES[args.schedule]
    args.fp_epochs = fp_epochs if args.fp_epochs is None else args.fp_epochs
    args.epochs = epochs if args.epochs is None else args.epochs
    if args.bn_batches < 0:
        p.error("--bn-batches must be >= 0")
    for name in ("fp_epochs", "epochs", "batch_size", "jobs", "limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if len(set(args.bits)) != len(args.bits) or not all(2 <= b <= 8 for b in args.bits):
        p.error("--bits must be distinct bit-widths in 2..8")
    from lcq_train.arguments import default_device, device_problem

    args.device = args.device or default_device()

    if device_problem(args.device):
        p.error(f"--device {args.device}: {device_problem(args.device)}")
    if args.jobs is None:
        args.jobs = len(args.bits) * len(args.methods) if args.device.startswith("cuda") else 2
    # CPU threads of each run (OMP_NUM_THREADS, unless set): one on the CPU, else the cores shared out
    args.run_threads = 1 if args.device == "cpu" else max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    label = "tiny" if args.tiny else args.schedule
    args.out = str(Path(args.out or f"runs/cifar10-resnet20-{label}").resolve())
    args.json_out = args.json_out or str(Path(args.out) / "result.json" if args.tiny else DEFAULT_JSON)
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    cmd = ["python", "benchmarks/cifar10_resnet20.py", "--schedule", args.schedule, "--fp-epochs", str(args.fp_epochs),
           "--epochs", str(args.epochs), "--bits", *map(str, args.bits), "--methods", *args.methods,
           "--batch-size", str(args.batch_size), "--clip-init", args.clip_init, "--bn-batches", str(args.bn_batches),
           "--seed", str(args.seed), "--device", args.device,
           "--jobs", str(args.jobs), "--out", args.out] + (["--report"] if args.report else [])
    for flag, value in (("--data-dir", args.data_dir), ("--limit", args.limit), ("--test-limit", args.test_limit)):
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd)


# --------------------------------------------------------------------------- data


def prepare_data(args: argparse.Namespace) -> dict:
    """Load CIFAR-10 once (this fills lcq_train's decoded-image cache, so that every run loads the .npz);
    with --limit/--test-limit write the slice as CIFAR-10 python batches in OUT/data-slice-L-T, the data
    directory the runs then read (a directory per slice: a run records it, and a finished run is reused only
    for the same one). Returns what the JSON records about the data."""
    from lcq_train.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset("cifar10", args.data_dir)
    info = {"source": args.data_dir or os.environ.get("LCQ_DATA_DIR"), "load_s": round(time.perf_counter() - t0, 2),
            "train_images": int(data.train_x.shape[0]), "test_images": int(data.test_x.shape[0])}
    args.run_data_dir = args.data_dir
    if args.limit is None and args.test_limit is None:
        return info
    train_x, train_y = _stratified(data.train_x.numpy(), data.train_y.numpy(), args.limit)
    test_x, test_y = _stratified(data.test_x.numpy(), data.test_y.numpy(), args.test_limit)
    root = Path(args.out) / f"data-slice-{args.limit or 'all'}-{args.test_limit or 'all'}"
    root.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train_y)), 5)
    for i, idx in enumerate(parts, 1):
        _write_batch(root / f"data_batch_{i}", train_x[idx], train_y[idx])
    _write_batch(root / "test_batch", test_x, test_y)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in data.classes]}, f)
    args.run_data_dir = str(root)
    info.update({"slice_dir": str(root), "train_images": int(len(train_y)), "test_images": int(len(test_y))})
    return info


def _stratified(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images taking the classes in turn (the loaders sort image folders by class), in
    data-set order; all of them when ``n`` is None."""
    if n is None or n >= len(y):
        return x, y
    rank = np.empty(len(y), dtype=np.int64)          # position of each image within its class
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    keep = np.sort(np.lexsort((np.arange(len(y)), rank))[:n])
    return x[keep], y[keep]


def _write_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": np.ascontiguousarray(x.reshape(len(x), -1)), b"labels": y.astype(np.int64).tolist()}, f)


# --------------------------------------------------------------------------- runs


def run_specs(args: argparse.Namespace) -> list[dict]:
    """FP first, then every (method, bits), each with its ``lcq train`` arguments."""
    out = Path(args.out)
    common = ["--model", "resnet20", "--dataset", "cifar10", "--batch-size", str(args.batch_size),
              "--seed", str(args.seed), "--device", args.device]
    if args.run_data_dir:
        common += ["--data-dir", args.run_data_dir]
    specs = [{"run": "fp", "method": "fp", "wbits": None, "abits": None, "epochs": args.fp_epochs,
              "out": str(out / "fp"), "argv": ["--method", "fp", "--epochs", str(args.fp_epochs)] + common}]
    fp_ckpt = str(out / "fp" / "checkpoint.pt")
    recipe = {"clip_init": args.clip_init, "bn_batches": args.bn_batches}
    tuned = f"-clip{args.clip_init}-bn{args.bn_batches}" if recipe != PAPER_RECIPE else ""  # (the paper's: no suffix)
    for b in args.bits:
        for method in args.methods:
            name = f"{method}-w{b}a{b}{tuned}"
            specs.append({"run": name, "method": method, "wbits": b, "abits": b, "epochs": args.epochs,
                          "out": str(out / name), **recipe,
                          "argv": ["--method", method, "--wbits", str(b), "--abits", str(b), "--init", fp_ckpt,
                                   "--epochs", str(args.epochs), "--clip-init", args.clip_init,
                                   "--bn-batches", str(args.bn_batches)] + common})
    for spec in specs:
        spec["argv"] += ["--out", spec["out"]]
        spec.update(seed=args.seed, batch_size=args.batch_size, data_dir=args.run_data_dir)
        spec.setdefault("clip_init", PAPER_RECIPE["clip_init"])
        spec.setdefault("bn_batches", PAPER_RECIPE["bn_batches"])
    return specs


def finished_metrics(spec: dict) -> dict | None:
    """The metrics of a finished run of the same settings in the spec's directory, else None. A finished run whose
    metrics.json is missing, damaged or behind its checkpoint (killed between writing the two) is one: the file is
    rebuilt from the checkpoint, as lcq train --resume would (which then refuses to train it, exit 2), and said."""
    metrics, why = _saved(spec)
    if metrics is None or len(metrics.get("epochs", [])) < spec["epochs"]:
        return None
    if why:
        metrics = rebuild_metrics(spec["out"])
        print(f"  {spec['run']}: its metrics.json was {why}: rebuilt from its checkpoint", flush=True)
    return metrics


def saved_metrics(spec: dict) -> dict | None:
    """The metrics of a run of the same settings in the spec's directory, finished or not, else None (a
    metrics.json missing, damaged or behind: the checkpoint's, :func:`lcq_train.runs.saved_history`)."""
    return _saved(spec)[0]


def _saved(spec: dict) -> tuple[dict | None, str | None]:
    """:func:`saved_metrics`, and why its metrics.json must be rebuilt from its checkpoint (None: it need not)."""
    metrics, why = saved_history(spec["out"], spec["epochs"])
    if metrics is None:
        return None, None
    cfg = metrics["config"]
    plan = cfg.get("plan", {})
    cfg = {**PAPER_RECIPE, **cfg}                         # (a run from before these settings: the paper's values)
    same = plan.get("method") == spec["method"] \
        and all(cfg.get(k) == spec[k] for k in ("epochs", "seed", "batch_size", "clip_init", "bn_batches")) \
        and os.path.abspath(cfg.get("data_dir") or "") == os.path.abspath(spec["data_dir"] or "") \
        and (spec["method"] == "fp" or (plan.get("wbits"), plan.get("abits")) == (spec["wbits"], spec["abits"]))
    return (metrics, why) if same and metrics.get("epochs") else (None, None)


def damaged(spec: dict, e: CheckpointError) -> None:
    """Record the run whose checkpoint is damaged as failed, naming the file and the fix (it is not started:
    ``lcq train --resume`` would refuse it)."""
    spec.update(status="failed", error=f"{e} (or delete {spec['out']} to train the run again)")
    print(f"  {spec['run']}: FAILED: {spec['error']}", flush=True)


def start(spec: dict, args: argparse.Namespace) -> subprocess.Popen:
    argv = list(spec["argv"])
    if (Path(spec["out"]) / "checkpoint.pt").is_file():
        argv.append("--resume")       # lcq train refuses it if the saved run has other settings
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", str(args.run_threads))
    log = open(Path(args.out) / f"{spec['run']}.log", "w")
    log.write("$ lcq train " + shlex.join(argv) + "\n")
    log.flush()
    spec["command"] = "lcq train " + shlex.join(argv)
    spec["t0"] = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--lcq-train", *argv],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    proc.log = log
    return proc


def finish(spec: dict, proc: subprocess.Popen) -> dict:
    proc.log.close()
    spec["wall_s"] = round(time.perf_counter() - spec.pop("t0"), 2)
    spec["returncode"] = proc.returncode
    metrics = finished_metrics(spec) if proc.returncode == 0 else None
    if metrics is None:
        tail = (Path(spec["out"]).parent / f"{spec['run']}.log").read_text().splitlines()[-5:]
        spec["status"] = "failed"
        spec["error"] = "\n".join(tail)
        print(f"  {spec['run']}: FAILED (exit {proc.returncode}); last lines of its log:\n    " + "\n    ".join(tail),
              flush=True)
        return spec
    return record(spec, metrics, "trained")


def record(spec: dict, metrics: dict, status: str) -> dict:
    times = [r["time_s"] for r in metrics["epochs"]]
    if len(times) < spec["epochs"]:
        status = f"partial: {len(times)} of {spec['epochs']} epochs"
    spec.update({"status": status, "test_top1": metrics["test_top1"], "best_test_top1": metrics["best_test_top1"],
                 "train_top1": metrics["epochs"][-1]["train_top1"], "epochs_done": len(metrics["epochs"]),
                 "epoch_s_median": round(statistics.median(times), 3), "epoch_s_sum": round(sum(times), 2),
                 "device": metrics["config"].get("device"), "environment": metrics.get("environment")})
    print(f"  {spec['run']}: test top-1 {spec['test_top1']:.2f}% (final epoch, eval mode; best "
          f"{spec['best_test_top1']:.2f}%), {status}" + (f" in {spec['wall_s']:.1f} s" if "wall_s" in spec else ""),
          flush=True)
    return spec


def report_saved(specs: list[dict]) -> None:
    """Every run as OUT holds it, finished or not (``--report``: no training)."""
    for spec in specs:
        try:
            metrics = saved_metrics(spec)
        except CheckpointError as e:
            damaged(spec, e)
            continue
        if metrics is None:
            spec.update(status="missing", error=f"no run of these settings in {spec['out']}")
            print(f"  {spec['run']}: missing", flush=True)
        else:
            record(spec, metrics, "done earlier, reported")


def run_all(specs: list[dict], args: argparse.Namespace, t_start: float) -> None:
    """FP alone, then the quantized runs, at most ``args.jobs`` at a time. An interrupt, SIGTERM or SIGHUP
    (:func:`~lcq_train.stop_signals.stop_signals`) stops the runs under way (SIGTERM, SIGKILL after
    :data:`STOP_S`); the wait for them has no deadline of its own: their epochs bound it, and a caller that
    wants less stops this script (``gpu_session.sh`` runs it under ``timeout``)."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    phases = [specs[:1], specs[1:]]
    for phase_no, phase in enumerate(phases):
        if phase_no == 1 and specs[0].get("status") == "failed":
            for spec in phase:
                spec.update(status="skipped", error="the FP run failed")
            return
        queue, running = [], []
        for spec in phase:
            try:
                metrics = finished_metrics(spec)
            except CheckpointError as e:
                damaged(spec, e)
                continue
            if metrics is not None:
                record(spec, metrics, "done earlier, reused")
            else:
                queue.append(spec)
        if queue:
            print(f"[{time.perf_counter() - t_start:6.1f} s] {'FP pretraining' if phase_no == 0 else 'quantized runs'}: "
                  f"{', '.join(s['run'] for s in queue)}" + (f" ({min(args.jobs, len(queue))} side by side)"
                                                             if phase_no else ""), flush=True)
        try:
            with stop_signals():
                while queue or running:
                    while queue and len(running) < (1 if phase_no == 0 else args.jobs):
                        spec = queue.pop(0)
                        with signals_held():           # (a signal between the start and the record would orphan it)
                            running.append((spec, start(spec, args)))
                    time.sleep(0.2)
                    for item in [r for r in running if r[1].poll() is not None]:
                        running.remove(item)
                        finish(*item)
        finally:
            for _, proc in running:       # interrupted: stop our own runs (they resume on the next call)
                proc.terminate()
            for _, proc in running:
                try:
                    proc.wait(timeout=STOP_S)
                except subprocess.TimeoutExpired:      # deaf to SIGTERM: killed (it resumes from its last epoch)
                    proc.kill()
                    proc.wait()
                proc.log.close()


# --------------------------------------------------------------------------- report


def machine(args: argparse.Namespace) -> dict:
    info = {"device": args.device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads_runs": int(os.environ.get("OMP_NUM_THREADS", args.run_threads)),
            "host": platform.node()}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(args.device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update({"device_name": props.name, "device_memory_gib": round(props.total_memory / 2**30, 1)})
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def paper_numbers(spec: dict) -> tuple[float | None, float | None]:
    if spec["method"] == "fp":
        return PAPER_FP, None
    return PAPER_LCQ.get(spec["wbits"]), PAPER_APOT.get(spec["wbits"])


def table(specs: list[dict], args: argparse.Namespace, total_s: float) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"      # noqa: E731
    devices = ("trained on " + (", ".join(sorted({str(s["device"]) for s in specs if s.get("device")})) or "nothing yet")
               if args.report else args.device)
    lines = [f"Command: `{reproduce_command(args)}`", "",
             f"CIFAR-10, pre-activation ResNet-20, schedule {schedule_text(args)}; {devices}; "
             f"{total_s:.0f} s wall in all"
             + (f" (the short schedule is sized for {BUDGET_S:.0f} s)" if sized_for_budget(args) else ""), "",
             "| run | W/A | epochs | top-1 final (eval) | best epoch | wall s | paper LCQ | paper APoT |",
             "|---|---|---|---|---|---|---|---|"]
    for s in specs:
        wa = "32/32" if s["method"] == "fp" else f"{s['wbits']}/{s['abits']}"
        lcq, apot = paper_numbers(s)
        top1 = fmt(s.get("test_top1")) if s.get("status") not in ("failed", "skipped", "missing") else s["status"]
        if s.get("status", "").startswith("partial"):
            top1 += f" ({s['status']})"
        lines.append(f"| {s['method']} | {wa} | {s['epochs']} | {top1} | {fmt(s.get('best_test_top1'))} | "
                     f"{fmt(s.get('wall_s'))} | {fmt(lcq) if s['method'] != 'uniform' else '-'} | {fmt(apot)} |")
    lines += ["", "Paper: Yamamoto, CVPR 2021, 300 epochs per quantized run (FP 93.4); first/last layers 8-bit; "
              "W2 weights are ternary (uniform) for both methods."]
    if args.limit or args.test_limit:
        lines.append(f"A SLICE of the data ({args.limit or 'all'} train / {args.test_limit or 'all'} test images): "
                     "a smoke test, not comparable with the paper.")
    elif (args.fp_epochs, args.epochs) != SCHEDULES["paper"]:
        lines.append("A short schedule: not comparable with the paper's 300 epochs; the gaps between methods are "
                     "what it shows.")
    return "\n".join(lines)


def sized_for_budget(args: argparse.Namespace) -> bool:
    """The short schedule as sized for BUDGET_S: its epochs, all six runs, the whole data set, a GPU."""
    return ((args.fp_epochs, args.epochs) == SCHEDULES["short"] and not (args.limit or args.test_limit)
            and len(args.bits) * len(args.methods) == 6 and args.device.startswith("cuda"))


def schedule_text(args: argparse.Namespace) -> str:
    return (f"{args.schedule if (args.fp_epochs, args.epochs) == SCHEDULES[args.schedule] else 'custom'}: FP "
            f"{args.fp_epochs} epochs, then {len(args.bits) * len(args.methods)} quantized runs x {args.epochs} epochs "
            f"from the FP checkpoint, {args.jobs} side by side")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--lcq-train"]:
        return lcq_train(argv[1:])
    args = parse_args(argv)
    t_start = time.perf_counter()
    print(f"schedule {schedule_text(args)}; device {args.device}; out {args.out}", flush=True)
    try:
        data = prepare_data(args)
        specs = run_specs(args)
        report_saved(specs) if args.report else run_all(specs, args, t_start)
    except KeyboardInterrupt:
        print(f"cifar10_resnet20.py: interrupted; re-run `{reproduce_command(args)}` to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"cifar10_resnet20.py: error: {e}", file=sys.stderr)
        return 2
    total_s = time.perf_counter() - t_start
    print("\n" + table(specs, args, total_s))
    ok = all(s["status"] in ("trained", "done earlier, reused", "done earlier, reported") for s in specs)
    fp_top1 = specs[0].get("test_top1")
    rows = []
    for s in specs:
        lcq, apot = paper_numbers(s)
        row = {k: s.get(k) for k in ("run", "method", "wbits", "abits", "epochs", "seed", "status", "test_top1",
                                     "best_test_top1", "train_top1", "epochs_done", "wall_s", "epoch_s_median",
                                     "epoch_s_sum", "out", "command", "error", "device", "environment")}
        row.update(gap_to_fp=None if s.get("test_top1") is None or fp_top1 is None or s is specs[0]
                   else round(s["test_top1"] - fp_top1, 2),
                   paper_lcq_top1=lcq if s["method"] != "uniform" else None, paper_apot_top1=apot)
        rows.append(row)
    save_json({"benchmark": "cifar10-resnet20", "complete": ok, "command": reproduce_command(args),
               "mode": "report of the runs in OUT (nothing trained; machine: where the report ran)" if args.report
               else "train",
               "argv": argv, "schedule": {"name": args.schedule, "fp_epochs": args.fp_epochs, "epochs": args.epochs,
                                          "bits": args.bits, "methods": args.methods, "batch_size": args.batch_size,
                                          "jobs_side_by_side": args.jobs, "fp_weight_lr": 0.1, "quant_weight_lr": 0.04,
                                          "q_lr": 0.02, "clip_init": args.clip_init,
                                          "bn_batches": args.bn_batches, "text": schedule_text(args)},
               "seeds": {"seed": args.seed, "per_run": {s["run"]: args.seed for s in specs}},
               "machine": machine(args), "git": git_state("lcq_train"), "data": data,
               "wall_s_total": round(total_s, 2),
               "budget_s": BUDGET_S if sized_for_budget(args) else None,
               "top1_note": "test top-1 (%) after the final epoch, model in eval mode (BN running statistics)",
               "paper": {"fp": PAPER_FP, "lcq": PAPER_LCQ, "apot": PAPER_APOT}, "rows": rows}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0 if ok else 1


def lcq_train(argv: list[str]) -> int:
    """``lcq train ARGV`` with the trainer's verb alone (not importing the other stages' verbs)."""
    from lcq_train.cli import add_parsers, apply_config_file

    parser = argparse.ArgumentParser(prog="lcq")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = add_parsers(sub)
    args = apply_config_file(sub.choices["train"], argv)
    try:
        return handlers["train"](args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lcq train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:      # Ctrl-C, or SIGTERM/SIGHUP (lcq_train.stop_signals.Stopped): as lcq says it
        print(f"lcq train: {str(e) or 'interrupted (Ctrl-C)'}; files are written whole or not at all", file=sys.stderr)
        return getattr(e, "exit_status", 130)


if __name__ == "__main__":
    sys.exit(main())
