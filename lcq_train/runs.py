"""A training run kept in its output directory, for scripts that run many (the benchmarks).

:func:`train_or_resume` skips a run that is done, resumes one that was started with the same recipe
(:data:`RECIPE_KEYS` of its :class:`~lcq_train.train.TrainConfig`) and trains one that was not;
:func:`saved_metrics` refuses a directory that holds a run of another recipe, so that a script can
check every directory before it spends any training time; :func:`training_pool` runs several side by side.
A run's metrics.json is taken as ``lcq train --resume`` takes it (:func:`saved_history`): missing, damaged or
behind its checkpoint, it is rebuilt from the checkpoint, and refused only where there is none.
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
from .atomic import save_json
from .metrics import MetricsError, read_metrics
from .run_lock import run_lock
from .stop_signals import stop_signals
from .train import TrainConfig, train

# train.RECIPE, and the epochs, but for ``init`` (the FP run's path, which moves with a benchmark's --out)
RECIPE_KEYS = ("model", "dataset", "plan", "epochs", "batch_size", "lr", "q_lr", "weight_decay", "momentum",
               "warmup_epochs", "augment", "seed", "clip_init", "bn_batches")


def saved_history(out: str | Path, epochs: int) -> tuple[dict | None, str | None]:
    """The history of the run saved in ``out`` (None: none was started there), as ``lcq train --resume`` takes it,
    and why its metrics.json must be rebuilt from its checkpoint.pt (None: it need not): its metrics.json's, or its
    checkpoint's where that file is missing, damaged (cut short, edited) or behind it short of ``epochs`` epochs (a
    run killed between writing the two). MetricsError (a ValueError naming the file and the fix) for a damaged
    metrics.json with no checkpoint to rebuild it from; the checkpoint's CheckpointError where that is damaged."""
    out = Path(out)
    path, ckpt = out / "metrics.json", out / "checkpoint.pt"
    metrics, why = None, "missing"
    if path.is_file():
        try:
            metrics = read_metrics(path)
        except MetricsError:
            if not ckpt.is_file():
                raise
            why = "damaged"
        else:
            if len(metrics["epochs"]) >= epochs or not ckpt.is_file():
                return metrics, None
            why = "behind its checkpoint"
    elif not ckpt.is_file():
        return None, None
    saved = load_checkpoint(ckpt)["metrics"]
    if metrics is not None and len(saved["epochs"]) <= len(metrics["epochs"]):
        return metrics, None                    # (a run under way, as far as its checkpoint)
    return saved, why


def rebuild_metrics(out: str | Path) -> dict:
    """Rewrite the metrics.json of the run in ``out`` from its checkpoint, as ``lcq train --resume`` does, holding
    the run's lock (FileExistsError where a training holds it); the history written."""
    out = Path(out)
    with run_lock(out):
        metrics = load_checkpoint(out / "checkpoint.pt")["metrics"]
        save_json(metrics, out / "metrics.json")
    return metrics


def saved_metrics(cfg: TrainConfig) -> dict | None:
    """Metrics of the run saved in ``cfg.out`` (None: none was started there; :func:`saved_history`); ValueError
    naming the settings that differ if that run used another recipe, or the file if its config is not one."""
    return _saved(cfg)[0]


def _saved(cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """:func:`saved_metrics`, and why its metrics.json must be rebuilt (:func:`saved_history`)."""
    out = Path(cfg.out)
    metrics, why = saved_history(out, cfg.epochs)
    if metrics is None:
        return None, None
    source = out / ("checkpoint.pt" if why else "metrics.json")
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
    return metrics, why


def train_or_resume(cfg: TrainConfig) -> tuple[dict, float, str]:
    """Train, resume or skip the run of ``cfg``: (its metrics, seconds spent now, a note on what was done).
    A finished run whose metrics.json is missing, damaged or behind its checkpoint (killed between writing the
    two) is resumed, which rewrites it from the checkpoint and trains nothing; the note says so."""
    metrics, why = _saved(cfg)
    out = Path(cfg.out)
    if metrics is not None and len(metrics["epochs"]) >= cfg.epochs and why is None:
        return metrics, 0.0, "done earlier, skipped"
    rebuilt = f"; its metrics.json was {why}: rebuilt from its checkpoint" if why else ""
    cfg.resume = (out / "checkpoint.pt").is_file()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"] if cfg.resume else 0
    t0 = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - t0
    if done >= cfg.epochs:          # (0 s: no epoch's time, which ablations.py's estimate counts)
        return metrics, 0.0, "done earlier, skipped" + rebuilt
    return metrics, seconds, f"{f'resumed after epoch {done}' if done else 'trained'} in {seconds:.1f} s{rebuilt}"


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
