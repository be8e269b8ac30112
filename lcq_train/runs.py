"""A training run kept in its output directory, for scripts that run many (the benchmarks).

:func:`train_or_resume` skips a run that is done, resumes one that was started with the same recipe
(:data:`RECIPE_KEYS` of its :class:`~lcq_train.train.TrainConfig`) and trains one that was not;
:func:`saved_metrics` refuses a directory that holds a run of another recipe, so that a script can
check every directory before it spends any training time; :func:`training_pool` runs several side by side.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .metrics import read_metrics
from .stop_signals import stop_signals
from .train import TrainConfig, train

# train.RECIPE, and the epochs, but for ``init`` (the FP run's path, which moves with a benchmark's --out)
RECIPE_KEYS = ("model", "dataset", "plan", "epochs", "batch_size", "lr", "q_lr", "weight_decay", "momentum",
               "warmup_epochs", "augment", "seed", "clip_init", "bn_batches")


def saved_metrics(cfg: TrainConfig) -> dict | None:
    """Metrics of the run saved in ``cfg.out`` (None: none was started there); ValueError naming the
    settings that differ if that run used another recipe, or the file if its config is not one."""
    out = Path(cfg.out)
    if (out / "metrics.json").is_file():
        source = out / "metrics.json"
        metrics = read_metrics(source)
    elif (out / "checkpoint.pt").is_file():
        source = out / "checkpoint.pt"
        metrics = load_checkpoint(source)["metrics"]
    else:
        return None
    try:
        saved = TrainConfig.from_dict(metrics["config"]).to_dict()     # checked, and in today's form
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: its config is invalid ({e}); it is not a run lcq train wrote: restore it, or "
                         "delete it or choose another --out") from None
    wanted = cfg.to_dict()
    differ = [k for k in RECIPE_KEYS if saved.get(k) != wanted[k]]
    if differ:
        raise ValueError(f"{out} holds a run with other settings ({', '.join(differ)}: "
                         f"{[saved.get(k) for k in differ]} there, {[wanted[k] for k in differ]} asked); "
                         "choose another --out or delete it")
    return metrics


def train_or_resume(cfg: TrainConfig) -> tuple[dict, float, str]:
    """Train, resume or skip the run of ``cfg``: (its metrics, seconds spent now, a note on what was done).
    A finished run whose metrics.json is missing or behind its checkpoint (killed between writing the two) is
    resumed, which rewrites it from the checkpoint and trains nothing."""
    metrics = saved_metrics(cfg)
    out = Path(cfg.out)
    if metrics is not None and len(metrics["epochs"]) >= cfg.epochs and (out / "metrics.json").is_file():
        return metrics, 0.0, "done earlier, skipped"
    cfg.resume = (out / "checkpoint.pt").is_file()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"] if cfg.resume else 0
    t0 = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - t0
    if done >= cfg.epochs:          # (0 s: no epoch's time, which ablations.py's estimate counts)
        return metrics, 0.0, "done earlier, skipped (its metrics.json rewritten from its checkpoint)"
    return metrics, seconds, f"{f'resumed after epoch {done}' if done else 'trained'} in {seconds:.1f} s"


PR_SET_PDEATHSIG = 1      # Linux prctl: the signal a process gets when the thread that started it ends


def _start_worker(parent: int) -> None:
    """A :func:`training_pool` worker's start: one torch thread, and, on Linux, SIGTERM when its parent ``parent``
    ends, however it ends: killed outright, it stops no worker, and they would train the runs queued to them,
    then wait forever with PPID 1. (The signal comes when the parent's thread that started the worker ends: the
    pool is used from one thread, the main one of the benchmarks.)"""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:              # it ended before that: no signal will come
            os._exit(128 + signal.SIGTERM)


class WorkerDied(RuntimeError):
    """A worker of :func:`training_pool` ended abruptly (killed) during a run; the message says how to resume."""


@contextmanager
def training_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``with training_pool(jobs) as pool``: ``jobs`` worker processes for :func:`train_or_resume`, one torch
    thread each. Started by spawning, not forking: a forked child cannot use CUDA once its parent has (a
    run trained in the parent, or ``torch.cuda.is_available()``), so that runs on a GPU can go side by
    side too. When the block ends in an exception (an interrupt, a refused run) the queued runs are
    cancelled and the workers stopped at once, each run under way resuming later from its last epoch's
    checkpoint (written atomically); a worker that caught the interrupt itself would otherwise go on
    to the next queued run. SIGTERM and SIGHUP raise :class:`~lcq_train.stop_signals.Stopped` (a
    ``KeyboardInterrupt``) within the block, so that they stop the workers too instead of leaving them
    running with PPID 1. Waiting on a run needs no deadline of its own: its epochs bound it, and one who
    wants less sends SIGTERM (``timeout``). A parent killed outright (SIGKILL), which runs no cleanup, takes the
    workers with it on Linux (:func:`_start_worker`). A worker that ends abruptly (SIGKILL, the system's out-of-memory
    killer) stops the others as well, and raises :class:`WorkerDied` (concurrent.futures says only that its
    pool is broken)."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    try:
        with stop_signals():
            yield pool
    except BaseException as e:
        for process in list((pool._processes or {}).values()):     # (Python 3.14: pool.terminate_workers())
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, BrokenProcessPool):
            raise WorkerDied("a training worker process ended abruptly (killed: by a signal, or by the system when "
                             "memory ran out), and the other runs were stopped with it; each run keeps its last "
                             "finished epoch in its checkpoint: re-run the same command to resume (with fewer --jobs "
                             "if memory ran out)") from None
        raise
    pool.shutdown(wait=True)
