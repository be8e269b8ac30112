"""benchmarks/cifar10_resnet20.py --tiny: the GPU benchmark's whole pipeline on CPU, on a slice of CIFAR-10."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark, running

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "cifar10_resnet20.py"
# (LCQ_TEST_CIFAR10: another copy, as a worktree outside the checkout beside shared/ needs)
DATA = Path(os.environ.get("LCQ_TEST_CIFAR10") or REPO.parent / "shared" / "datasets" / "cifar10-jpeg")
PAPER = ("--clip-init", "fixed", "--bn-batches", "0")        # the paper's recipe: run names without a suffix
# half of --tiny's slice (200 / 100): every class still in it, each run's epochs half as long
SLICE = ("--limit", "100", "--test-limit", "50")


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    """The benchmark's main(argv) in this process (each run still ``lcq train`` in its own): exit status, stdout,
    stderr."""
    rc = load_benchmark("cifar10_resnet20").main(["--tiny", *SLICE, "--data-dir", str(DATA), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The paper recipe's tiny benchmark (FP, uniform and LCQ W3/A3) on :data:`SLICE`, run once for this file as
    a command: ``(stdout, its result file, restore)``; ``restore()`` puts the run directory back as that run left
    it and returns it, at the path the runs were trained at (their checkpoints record it)."""
    root = tmp_path_factory.mktemp("cifar10-tiny")
    out, result, pristine = root / "runs", root / "result.json", root / "pristine"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", *SLICE, *PAPER, "--data-dir", str(DATA), "--out",
                           str(out), "--json-out", str(result)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shutil.copytree(out, pristine)

    def restore() -> Path:
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        return out

    return proc.stdout, result, restore


@pytest.mark.skipif(not DATA.exists(), reason=f"the CIFAR-10 copy {DATA} is absent")
def test_tiny_run_writes_the_table_and_json(tiny, capsys):
    stdout, result, restore = tiny
    out = restore()
    assert "| lcq | 3/3 | 2 |" in stdout and "92.80" in stdout     # beside the paper's number
    data = json.loads(result.read_text())
    assert data["benchmark"] == "cifar10-resnet20" and data["complete"] is True
    assert data["schedule"]["fp_epochs"] == 2 and data["schedule"]["epochs"] == 2 and data["schedule"]["bits"] == [3]
    assert data["data"]["train_images"] == 100 and data["data"]["test_images"] == 50
    assert {"device", "device_name", "torch", "cuda", "torch_threads", "cpu_count"} <= set(data["machine"])
    assert data["seeds"]["per_run"] == {"fp": 0, "uniform-w3a3": 0, "lcq-w3a3": 0}
    assert data["paper"]["lcq"]["3"] == 92.8 and data["paper"]["apot"]["3"] == 92.2
    rows = {r["run"]: r for r in data["rows"]}
    assert list(rows) == ["fp", "uniform-w3a3", "lcq-w3a3"]
    for name, row in rows.items():
        assert row["status"] == "trained" and row["epochs"] == 2
        assert 0.0 <= row["test_top1"] <= 100.0 and row["wall_s"] > 0
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert row["test_top1"] == metrics["epochs"][-1]["test_top1"]   # the final epoch, not the best
        assert (out / name / "checkpoint.pt").is_file() and (out / f"{name}.log").read_text().startswith("$ lcq train")
    assert rows["lcq-w3a3"]["paper_lcq_top1"] == 92.8 and rows["uniform-w3a3"]["paper_lcq_top1"] is None
    from lcq_train.data import load_dataset

    sliced = load_dataset("cifar10", out / "data-slice-100-50")    # the slice takes every class, equally
    assert sliced.train_y.bincount().tolist() == [10] * 10 and sliced.test_y.bincount().tolist() == [5] * 10
    # re-running reuses the finished runs
    rc, stdout, stderr = bench(capsys, *PAPER, "--out", str(out), "--json-out", str(result))
    assert rc == 0 and stdout.count("done earlier, reused") == 3, stdout[-2000:] + stderr[-2000:]
    assert rows["lcq-w3a3"]["environment"]["torch"] and rows["lcq-w3a3"]["device"] == "cpu"
    # --report tabulates what OUT holds without training: an interrupted run with its epochs so far
    metrics_path = out / "lcq-w3a3" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["epochs"] = metrics["epochs"][:1]                            # as the trainer writes it after epoch 1
    metrics["test_top1"] = metrics["best_test_top1"] = metrics["epochs"][0]["test_top1"]
    metrics_path.write_text(json.dumps(metrics))
    (out / "lcq-w3a3" / "checkpoint.pt").unlink()     # (its 2-epoch one would be taken: metrics.json behind it)
    rc, stdout, stderr = bench(capsys, "--report", *PAPER, "--out", str(out), "--json-out", str(result))
    assert rc == 1, stdout[-2000:] + stderr[-2000:]                       # not complete
    assert "(partial: 1 of 2 epochs)" in stdout and "trained on cpu" in stdout
    report = json.loads(result.read_text())
    assert report["complete"] is False and report["mode"].startswith("report")
    rows = {r["run"]: r for r in report["rows"]}
    assert rows["lcq-w3a3"]["status"] == "partial: 1 of 2 epochs" and rows["lcq-w3a3"]["epochs_done"] == 1
    assert rows["fp"]["status"] == "done earlier, reported" and not (out / "lcq-w3a3.log").read_text().count("resum")
    # another recipe: its own runs beside the paper's, from the same FP run (one epoch, BN re-estimated on one
    # batch, the fixed clips, which lcq train takes only when told: its own default is mse, ~20 s on ResNet-20)
    rc, stdout, stderr = bench(capsys, "--methods", "lcq", "--epochs", "1", "--clip-init", "fixed", "--bn-batches", "1",
                               "--out", str(out), "--json-out", str(result))
    assert rc == 0, stdout[-2000:] + stderr[-2000:]
    assert stdout.count("done earlier, reused") == 1                        # the FP run
    rows = {r["run"]: r for r in json.loads(result.read_text())["rows"]}
    assert list(rows) == ["fp", "lcq-w3a3-clipfixed-bn1"] and rows["lcq-w3a3-clipfixed-bn1"]["status"] == "trained"
    metrics = json.loads((out / "lcq-w3a3-clipfixed-bn1" / "metrics.json").read_text())
    assert (metrics["config"]["clip_init"], metrics["config"]["bn_batches"]) == ("fixed", 1)
    assert "test_top1_before_bn" in metrics["epochs"][-1]



@pytest.mark.skipif(not DATA.exists(), reason=f"the CIFAR-10 copy {DATA} is absent")
def test_a_finished_run_killed_before_its_metrics_json_is_reused_not_failed(tmp_path, tiny, capsys):
    """A run killed after its last checkpoint but before its metrics.json was started again with lcq train --resume,
    which rebuilt the file, then said "already finished ... nothing to train" (exit 2): the run was recorded FAILED
    and the result incomplete. A finished checkpoint is now taken as the run done: its metrics.json (missing, or
    damaged) rebuilt from it, said in one line, and the run reused without starting lcq train."""
    out, result = tiny[2](), tmp_path / "result.json"          # the tiny benchmark's runs, trained
    trained = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("fp", "lcq-w3a3")}
    (out / "lcq-w3a3" / "metrics.json").unlink()               # killed between its last checkpoint and metrics.json
    (out / "fp" / "metrics.json").write_text("")              # cut short
    rc, stdout, stderr = bench(capsys, "--methods", "lcq", *PAPER, "--out", str(out), "--json-out", str(result))
    assert rc == 0, stdout[-2000:] + stderr[-2000:]
    assert "  fp: its metrics.json was damaged: rebuilt from its checkpoint" in stdout
    assert "  lcq-w3a3: its metrics.json was missing: rebuilt from its checkpoint" in stdout
    assert stdout.count("done earlier, reused") == 2 and "FAILED" not in stdout
    assert json.loads(result.read_text())["complete"] is True
    for name, metrics in trained.items():
        assert json.loads((out / name / "metrics.json").read_text()) == metrics
        assert "--resume" not in (out / f"{name}.log").read_text()          # no lcq train started again

@pytest.mark.skipif(not DATA.exists(), reason=f"the CIFAR-10 copy {DATA} is absent")
def test_a_damaged_checkpoint_fails_its_run_and_the_others_go_on(tmp_path, tiny, capsys):
    """A run whose checkpoint is damaged (here cut short, its metrics.json gone) stopped the whole benchmark with
    an error naming the file, found only once the FP run had trained, with no results written; a run that fails
    otherwise is recorded FAILED and the others go on. The damaged run is now FAILED (not started), its reason
    naming the file and the fix, the other runs trained, and the results written (incomplete, exit 1); --report
    records it the same way."""
    out, result = tiny[2](), tmp_path / "result.json"          # the tiny benchmark's runs, trained
    argv = [*PAPER, "--out", str(out), "--json-out", str(result)]
    shutil.rmtree(out / "uniform-w3a3")                                    # a run still to train (the others go on)
    checkpoint = out / "lcq-w3a3" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])                  # cut short
    (out / "lcq-w3a3" / "metrics.json").unlink()                           # (so that the checkpoint is read)
    log = (out / "lcq-w3a3.log").read_text()
    rc, stdout, stderr = bench(capsys, *argv)
    assert rc == 1, stdout[-2000:] + stderr[-2000:]                                 # not complete
    assert f"  lcq-w3a3: FAILED: {checkpoint} is truncated" in stdout, stdout
    data = json.loads(result.read_text())
    rows = {r["run"]: r for r in data["rows"]}
    assert data["complete"] is False and list(rows) == ["fp", "uniform-w3a3", "lcq-w3a3"]
    assert rows["fp"]["status"] == "done earlier, reused" and rows["uniform-w3a3"]["status"] == "trained"
    error = rows["lcq-w3a3"]["error"]
    assert rows["lcq-w3a3"]["status"] == "failed" and str(checkpoint) in error, error
    assert "restore it from a copy" in error and f"delete {out / 'lcq-w3a3'}" in error, error
    assert (out / "lcq-w3a3.log").read_text() == log                      # no lcq train started on it
    rc, stdout, stderr = bench(capsys, *argv, "--report")
    assert rc == 1, stdout[-2000:] + stderr[-2000:]
    assert f"  lcq-w3a3: FAILED: {checkpoint} is truncated" in stdout, stdout
    rows = {r["run"]: r for r in json.loads(result.read_text())["rows"]}
    assert rows["lcq-w3a3"]["status"] == "failed" and rows["lcq-w3a3"]["error"] == error
    assert rows["uniform-w3a3"]["status"] == "done earlier, reported"


DRIVER = """
import argparse, importlib.util, os, subprocess, sys, time
spec = importlib.util.spec_from_file_location("cifar10_resnet20", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

def start(spec, args):                  # a run that trains for ever
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc.log = open(os.devnull, "w")
    print("run", proc.pid, flush=True)
    return proc

bench.start = start
bench.run_all([{"run": "fp", "out": os.path.join(sys.argv[2], "fp"), "epochs": 1}],
              argparse.Namespace(out=sys.argv[2], jobs=1), time.perf_counter())
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_the_runs_under_way(tmp_path, sig):
    """SIGTERM or SIGHUP to the benchmark alone: its `lcq train` children are stopped with it (with the signals'
    default action they went on running with PPID 1)."""
    import signal
    import time

    sig = getattr(signal, sig)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(SCRIPT), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    run = None
    try:
        run = int(next(line for line in driver.stdout if line.startswith("run ")).split()[1])
        driver.send_signal(sig)
        driver.wait(timeout=20)         # the run stopped by SIGTERM, not killed after STOP_S (30 s)
        deadline = time.monotonic() + 10
        while running(run) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(run), f"a run outlived the benchmark's {sig.name}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        if run is not None and running(run):
            os.kill(run, signal.SIGKILL)


def test_a_run_started_while_stop_signals_are_held_still_stops_on_sigterm(tmp_path):
    """run_all starts each `lcq train` within signals_held(): the run must not inherit the signals held (as a
    blocked mask, it did), or the SIGTERM that stops it waits for the SIGKILL 30 s later."""
    import signal
    import time

    from lcq_train.stop_signals import signals_held, stop_signals

    with stop_signals(), signals_held():
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--lcq-train", "--dataset", "digits", "--method", "fp",
                                 "--epochs", "1000", "--no-progress", "--out", str(tmp_path / "run")], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first epoch"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()


def test_tiny_keeps_the_options_given_even_at_their_defaults(tmp_path):
    """--tiny sets its own bits, batch size, ... "(options given win)": an option given at its default value
    (--bits 2 3 4, --batch-size 128) was taken for one not given and silently replaced by --tiny's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cifar10_resnet20", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--tiny", "--bits", "2", "3", "4", "--batch-size", "128", "--out", str(tmp_path)])
    assert args.bits == [2, 3, 4] and args.batch_size == 128
    assert (args.fp_epochs, args.epochs, args.limit, args.device) == (2, 2, 200, "cpu")     # the rest: --tiny's
    args = bench.parse_args(["--bits", "3", "--out", str(tmp_path)])
    assert args.bits == [3] and args.batch_size == 128 and args.limit is None and args.schedule == "short"


def test_the_result_records_the_git_state(tmp_path, monkeypatch):
    """A seed's result file (cifar10_seeds.py averages them, one per GPU session) named the machine and versions
    but not the commit nor the files modified under lcq_train/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cifar10_resnet20", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def no_data(args):
        args.run_data_dir = None
        return {"source": None, "train_images": 50000, "test_images": 10000}

    monkeypatch.setattr(bench, "prepare_data", no_data)
    result = tmp_path / "result.json"
    assert bench.main(["--report", "--device", "cpu", "--out", str(tmp_path / "runs"), "--json-out", str(result)]) == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    git = json.loads(result.read_text())["git"]
    assert git["commit"] == head and isinstance(git["modified"], list)
