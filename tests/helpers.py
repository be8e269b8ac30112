"""Plain helper functions shared by the tests: random small models and images, a model file's members, a
live pickle payload, CIFAR-10 python batches of random images, a benchmark script as a module, whether a
process runs, a deadline for a block that could wait forever (:func:`within`).

:mod:`conftest` exposes the model and image helpers as fixtures (a test or fixture asks for
``small_cnn``, say); code that cannot take fixtures (module-level caches, Hypothesis tests) imports
them from here.
"""

import contextlib
import importlib.util
import json
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lcq_train.layers import QAct
from lcq_train.models.cnn import SmallCNN
from lcq_train.plan import QuantPlan, apply_plan


def randomize(model: nn.Module, seed: int, act_alpha: float = 2.0) -> nn.Module:
    """Random BN statistics (negative and zero scales included), compander slopes and clip values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(c, generator=g) * 3 - 1)
                m.weight[0] = 0.0                      # a constant channel
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            if getattr(m, "theta", None) is not None:
                m.theta.normal_(0, 0.7, generator=g)
            if isinstance(m, QAct) and m.method != "fp" and m.alpha.requires_grad:
                m.alpha.fill_(act_alpha * (0.5 + torch.rand(1, generator=g).item()))
    return model.eval()


class SharedFeatures(nn.Module):
    """An auxiliary head reads the pooled features before the classifier does (its output unused): their activation
    quantizer is the head's (LCQ under method lcq), though the classifier, an edge layer, is uniform, and the
    compiler leaves the head out."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.aux, self.fc = nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        self.aux(h)
        return self.fc(h)


def images(n: int, shape, seed: int) -> np.ndarray:
    """Random uint8 images plus an all-zero and an all-255 one."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    x[0] = 0
    x[-1] = 255
    return x


def small_cnn(shape, plan: QuantPlan, seed: int, widths=(4, 6, 8), act_alpha: float = 2.0) -> SmallCNN:
    """A :class:`SmallCNN` for ``shape`` quantized by ``plan``, with seeded weights and :func:`randomize`."""
    torch.manual_seed(seed)
    return randomize(apply_plan(SmallCNN(shape, 10, widths), plan), seed, act_alpha)


def sim_in_verilator(model, tmp_path, capsys, images: int, rows: int, cols: int, mode: str = "network") -> dict:
    """``lcq sim`` of compiled ``model`` (saved under ``tmp_path``) on ``images`` random images in Verilator, on a
    ``rows`` x ``cols`` array in ``mode``: its JSON report, after checking that the command succeeded. The test is
    skipped, saying why, where Verilator is missing. The file is named after ``tmp_path`` (one per test), as the
    simulation's build directory is after the file: tests run side by side must not share one."""
    import pytest

    from compiler.format import save
    from lcq.cli import main
    from sim.runner import unavailable_reason

    reason = unavailable_reason("verilator")
    if reason is not None:
        pytest.skip(f"verilator simulation skipped: {reason}")
    path = tmp_path / f"{tmp_path.name}.lcq"
    save(model, path)
    capsys.readouterr()
    assert main(["sim", str(path), "--random", "--images", str(images), "--simulator", "verilator",
                 "--rows", str(rows), "--cols", str(cols), "--mode", mode, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def members(path) -> tuple[dict, dict[str, np.ndarray]]:
    """A compiled-model file's manifest and its arrays by key, as :func:`compiler.format.write_members` takes
    them (to write an edited copy)."""
    with np.load(path) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    return json.loads(bytes(arrays.pop("manifest.json")).decode()), arrays


def build_as_for_the_ecp5(monkeypatch) -> None:
    """Make the hardware elaborated in simulation (no platform) take the ECP5's form: every block RAM word that
    :func:`hw.memories.slow_block_ram` registers, registered; data registers without reset
    (:func:`hw.delay.reset_less_data`); multiplying PEs that multiply in logic cells (:func:`hw.pe.multiply_in_logic`);
    the value memory's reads two cycles and its writes a cycle later (:func:`hw.column_memory.value_read_latency`);
    blocks with reset copies of their own (:func:`hw.reset_tree.reset_tree`). Each ``hw`` module that imported
    any of them is patched."""
    import importlib

    for name in ("column_memory", "engine", "link", "network", "pe", "requantize", "reset_tree", "thresholds",
                 "vector"):
        module = importlib.import_module(f"hw.{name}")
        for function in ("slow_block_ram", "reset_less_data", "multiply_in_logic", "reset_tree"):
            if hasattr(module, function):
                monkeypatch.setattr(module, function, lambda platform: True)


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it (anywhere code may run) writes ``code ran`` to ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def one_epoch_history(config: dict, layers: dict) -> dict:
    """A training history (``metrics``) of one epoch at 10% top-1, as ``lcq train`` writes it, for checkpoints
    that tests build by hand."""
    row = {"epoch": 1, "train_loss": 2.0, "train_top1": 10.0, "test_loss": 2.0, "test_top1": 10.0, "lr": 0.1,
           "time_s": 0.1}
    return {"config": config, "layers": layers, "params": 1, "epochs": [row], "test_top1": 10.0,
            "best_test_top1": 10.0}


CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))


def make_cifar_python(root, n=2, label_names=None, seed=0):
    """CIFAR-10 python batches (``n`` images each) in ``root``; returns expected (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = {}, {}
    for batch in CIFAR_TRAIN_BATCHES + ["test_batch"]:
        xs[batch] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        ys[batch] = [int(v) for v in rng.integers(0, 10, n)]
        write_pickle(root / batch, {b"batch_label": batch.encode(), b"data": xs[batch], b"labels": ys[batch]})
    if label_names is not None:
        write_pickle(root / "batches.meta", {b"label_names": label_names, b"num_vis": 3072})
    train_x = np.concatenate([xs[b] for b in CIFAR_TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([ys[b] for b in CIFAR_TRAIN_BATCHES])
    return train_x, train_y, xs["test_batch"].reshape(-1, 3, 32, 32), np.array(ys["test_batch"])


def load_benchmark(name: str, as_name: str | None = None):
    """A fresh copy of ``benchmarks/NAME.py`` as a module named ``as_name`` (default NAME)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(as_name or name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # (a dataclass of the module looks its module up there)
    spec.loader.exec_module(module)
    return module


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is no zombie; Linux's /proc)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def ends_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pid)


class Hang(BaseException):
    """A block ran past the deadline of :func:`within` (a BaseException: no ``except Exception`` hides it)."""


@contextlib.contextmanager
def within(seconds: float, what: str):
    """Raise :class:`Hang` naming ``what`` in the block after ``seconds``: SIGALRM interrupts a blocking open or
    read (of a named pipe, say), so that a test of a wait fails instead of hanging the suite. Main thread of a
    POSIX process only (elsewhere the test is skipped: it would have no deadline)."""
    import pytest

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        pytest.skip("a deadline needs SIGALRM in the main thread")

    def expire(signum, frame):
        raise Hang(f"{what} did not end within {seconds:g} s: it waits forever")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def default_signals() -> None:
    """``preexec_fn`` of a child that a test signals: SIGINT, SIGHUP and SIGTERM at their default actions there,
    whatever this test run inherited (``nohup`` ignores SIGHUP, a shell's background job SIGINT, and a Python
    child would keep ignoring them): the child is then what a user's Ctrl-C, hangup or kill reaches."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
