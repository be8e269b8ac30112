"""lcq_train.runs.training_pool: runs side by side in spawned workers, stopped at once by an interrupt or a stop
signal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lcq_train.runs import training_pool

REPO = Path(__file__).resolve().parent.parent


def test_the_pool_runs_its_jobs_in_other_processes():
    with training_pool(2) as pool:
        pids = {pool.submit(os.getpid).result(timeout=120) for _ in range(4)}
    assert os.getpid() not in pids


def test_an_interrupt_cancels_the_queued_runs_and_stops_those_under_way():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with training_pool(2) as pool:
            futures = [pool.submit(time.sleep, 120) for _ in range(4)]
            while not futures[0].running():           # handed to the workers (spawning them takes seconds)
                assert time.monotonic() - started < 120
                time.sleep(0.1)
            raise KeyboardInterrupt
    assert time.monotonic() - started < 60            # not the 240 s of sleeping the workers were given
    assert futures[3].cancelled()                      # queued: never started


# The parent of the pool: it prints its workers' ids once one of them is in its run (a run that makes the file
# sys.argv[1], then sleeps), and waits on that run.
PARENT = """
import os, sys, time
from lcq_train.runs import training_pool
with training_pool(2) as pool:
    pool.submit(os.getpid).result(timeout=120)
    started = sys.argv[1]
    running = pool.submit(exec, f"open({started!r}, 'w').close(); import time; time.sleep(600)")
    deadline = time.monotonic() + 120
    while not os.path.exists(started):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.01)
    print(*pool._processes, flush=True)
    running.result()
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie); on a system without /proc, whether it exists."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_stop_signal_to_the_parent_stops_the_workers(sig, tmp_path):
    """SIGTERM or SIGHUP to the process using the pool (alone, not its group): the workers are stopped with it
    (with the signals' default action they went on running with PPID 1). SIGKILL (kill -9, the out-of-memory
    killer), which no handler sees: they trained the runs queued to them, then waited forever with PPID 1."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "started")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                                  str(REPO), os.environ.get("PYTHONPATH")]))})
    workers = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers, "the pool did not start"                # and a worker sleeps in its run
        parent.send_signal(sig)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), f"workers outlived their parent's {sig.name}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


def test_a_saved_run_whose_config_is_not_one_is_refused_naming_its_file(tmp_path):
    import json

    from lcq_train.runs import saved_metrics
    from lcq_train.train import TrainConfig

    (tmp_path / "metrics.json").write_text(json.dumps({"config": {"model": "cnn", "epochs": 0}, "epochs": []}))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'metrics.json'}: its config is invalid \(a training config "
                                         r"has the keys .*\); it is not a run lcq train wrote"):
        saved_metrics(TrainConfig(out=str(tmp_path)))


@pytest.mark.parametrize("setting", [{"weight_decay": 1e-3}, {"momentum": 0.5}, {"warmup_epochs": 2},
                                     {"augment": False}])
def test_a_saved_run_of_another_optimizer_setting_is_not_taken_for_this_one(tmp_path, setting):
    """A benchmark must not reuse (skip or resume) a run trained with another weight decay, momentum, warm-up or
    augmentation, which lcq train --resume itself refuses (train.RECIPE)."""
    import json

    from lcq_train.runs import saved_metrics
    from lcq_train.train import TrainConfig

    (tmp_path / "metrics.json").write_text(json.dumps({"config": TrainConfig(out=str(tmp_path)).to_dict(),
                                                       "epochs": []}))
    assert saved_metrics(TrainConfig(out=str(tmp_path))) is not None
    name = next(iter(setting))
    with pytest.raises(ValueError, match=rf"holds a run with other settings \({name}: "):
        saved_metrics(TrainConfig(out=str(tmp_path), **setting))


def test_a_worker_killed_under_a_run_is_said_with_the_way_to_resume():
    """A worker ended by SIGKILL (the system's out-of-memory killer) broke the pool: the benchmarks ended in
    concurrent.futures' BrokenProcessPool traceback. It is now WorkerDied, naming what happened and the fix."""
    from lcq_train.runs import WorkerDied

    with pytest.raises(WorkerDied, match=r"a training worker process ended abruptly .* re-run the same command to "
                                         r"resume"):
        with training_pool(2) as pool:
            pid = pool.submit(os.getpid).result(timeout=120)
            pool.submit(os.kill, pid, signal.SIGKILL).result(timeout=120)


@pytest.mark.parametrize("name", ["accuracy", "ablations"])
def test_a_benchmark_whose_worker_died_says_so_without_a_traceback(tmp_path, monkeypatch, capsys, name):
    """benchmarks/accuracy.py and ablations.py --jobs 2 with a worker killed: the error line and exit 2, no
    traceback (its runs resume on the next call)."""
    from contextlib import contextmanager

    from helpers import load_benchmark

    from lcq_train.runs import WorkerDied

    bench = load_benchmark(name)
    metrics = {"test_top1": 90.0, "best_test_top1": 90.0, "epochs": [{"test_top1": 90.0}]}
    monkeypatch.setattr(bench, "train_or_resume", lambda cfg: (metrics, 0.0, "faked"))

    class Pool:                 # as training_pool's runs end when a worker is killed
        def submit(self, *args):
            raise WorkerDied("a training worker process ended abruptly (killed)")

    @contextmanager
    def killed(jobs):
        yield Pool()

    monkeypatch.setattr(bench, "training_pool", killed)
    argv = ["--fp-epochs", "1", "--epochs", "1", "--seeds", "0", "--jobs", "2", "--out", str(tmp_path / "runs"),
            "--json-out", str(tmp_path / "table.json")]
    if name == "accuracy":
        argv += ["--bits", "2"]
    assert bench.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"{name}.py: error: a training worker process ended abruptly")


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_finished_run_killed_before_its_metrics_json_gets_it_and_is_not_said_resumed(tmp_path, epochs):
    """A run killed between its last checkpoint and its metrics.json: train_or_resume skipped a 1-epoch one, taking
    the checkpoint's history, and never wrote its metrics.json (outer_widths_hw.py, which reads them, found no run);
    a longer one, whose metrics.json was an epoch behind, was said "resumed after epoch 1" with nothing trained.
    Now the metrics.json is rewritten from the checkpoint (lcq train --resume's repair) and the run said done."""
    import json

    from lcq_train.checkpoint import load_checkpoint
    from lcq_train.runs import train_or_resume
    from lcq_train.train import TrainConfig, train

    cfg = dict(model="cnn", dataset="digits", epochs=epochs, batch_size=256, bn_batches=0, progress=False,
               out=str(tmp_path / "run"))
    train(TrainConfig(**cfg))
    history = tmp_path / "run" / "metrics.json"
    saved = json.loads(history.read_text())
    if epochs == 1:
        history.unlink()
    else:
        history.write_text(json.dumps({**saved, "epochs": saved["epochs"][:1], "test_top1": saved["epochs"][0][
            "test_top1"], "best_test_top1": saved["epochs"][0]["test_top1"]}))
    metrics, seconds, note = train_or_resume(TrainConfig(**cfg))
    assert note.startswith("done earlier") and seconds == 0.0 and metrics["epochs"] == saved["epochs"]
    assert json.loads(history.read_text()) == load_checkpoint(tmp_path / "run" / "checkpoint.pt")["metrics"]


def test_a_damaged_metrics_json_is_rebuilt_from_the_checkpoint_as_lcq_train_resume_does(tmp_path):
    """A run's metrics.json cut short (empty) stopped a benchmark ("restore it or delete it") while lcq train
    --resume rebuilds it from the checkpoint; the benchmarks now do as lcq train --resume does, saying so in their
    line of the run, and refuse the file only where there is no checkpoint to rebuild it from."""
    import json

    from lcq_train.checkpoint import load_checkpoint
    from lcq_train.runs import saved_metrics, train_or_resume
    from lcq_train.train import TrainConfig, train

    cfg = dict(model="cnn", dataset="digits", epochs=1, batch_size=256, bn_batches=0, progress=False,
               out=str(tmp_path / "run"))
    train(TrainConfig(**cfg))
    history, checkpoint = tmp_path / "run" / "metrics.json", tmp_path / "run" / "checkpoint.pt"
    history.write_text("")
    assert saved_metrics(TrainConfig(**cfg)) == load_checkpoint(checkpoint)["metrics"]
    metrics, seconds, note = train_or_resume(TrainConfig(**cfg))
    assert note == "done earlier, skipped; its metrics.json was damaged: rebuilt from its checkpoint" and seconds == 0
    assert json.loads(history.read_text()) == load_checkpoint(checkpoint)["metrics"] == metrics
    assert train_or_resume(TrainConfig(**cfg))[2] == "done earlier, skipped"
    history.write_text("")
    checkpoint.unlink()                                 # nothing to rebuild it from: refused, naming the file
    with pytest.raises(ValueError, match=rf"^{history}: .*no checkpoint.pt beside it holds the history: restore it, "
                                         "or delete the run and train it again"):
        saved_metrics(TrainConfig(**cfg))


def test_a_lock_whose_holder_has_not_written_its_pid_names_another_process(tmp_path):
    """A lock taken by a process that has not yet written its pid was said to be held by 'pid another process'."""
    import fcntl

    from lcq_train.run_lock import file_lock, run_lock

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(FileExistsError, match=r"is in use by another lcq train \(another process\); wait"):
            with run_lock(tmp_path / "run"):
                pass
        waited = []
        with pytest.raises(TimeoutError, match=r"^the run is held by another process for over 0.1 s"):
            with file_lock(tmp_path / "run" / ".lock", wait_s=0.1, what="the run", waiting=waited.append):
                pass
        assert waited == ["another process"]
    finally:
        os.close(fd)
