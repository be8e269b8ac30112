"""benchmarks/gpu_session.sh rehearsed on the CPU (DEVICE=cpu): every result it promises lands in OUT, within its
budget. TASK=cifar10: the CIFAR-10 benchmark's --tiny run and the quantizer benchmark with few repetitions;
TASK=ablations: the ablations' outer-width table on ResNet-20, one seed, one epoch each, on a small random
CIFAR-10 in python batches."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import make_cifar_python

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason=f"the CIFAR-10 copy {DATA} is absent")
def test_cpu_rehearsal_writes_every_result(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "PYTHON": sys.executable, "RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(DATA), "7", "400"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=450)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "cifar10-resnet20-seed7.json", "cifar10-resnet20-short-seed7.tar.gz", "cifar10.log", "gpu-tests.log",
        "machine.txt", "quantizer_speed-cpu.json", "quantizer_speed.log"]
    assert "skipped" in (out / "gpu-tests.log").read_text()          # no CUDA here: said, not passed
    result = json.loads((out / "cifar10-resnet20-seed7.json").read_text())
    assert result["complete"] is True and result["seeds"]["per_run"]["lcq-w3a3-clipmse-bn50"] == 7
    with tarfile.open(out / "cifar10-resnet20-short-seed7.tar.gz") as tar:
        names = tar.getnames()
    assert "cifar10-resnet20-short-seed7/lcq-w3a3-clipmse-bn50/checkpoint.pt" in names
    speed = json.loads((out / "quantizer_speed-cpu.json").read_text())
    assert speed["device"] == "cpu" and speed["summary"]["precision"]["met"] is True


@pytest.mark.slow
def test_cpu_rehearsal_of_the_ablations_records_every_run_and_packs_what_the_next_call_needs(tmp_path):
    data, out, runs = tmp_path / "cifar", tmp_path / "out", tmp_path / "runs"
    make_cifar_python(data, n=20)                    # 100 training and 20 test images of random pixels
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "TASK": "ablations", "PYTHON": sys.executable,
           "RUNS": str(runs)}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(data), "0", "500"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "ablations-cifar10-runs.tar.gz", "ablations-cifar10.json", "ablations.log", "gpu-tests.log", "machine.txt"]
    result = json.loads((out / "ablations-cifar10.json").read_text())
    outer = ["w3a3-o8-8", "w3a3-o6-6", "w3a3-o4-4", "w3a3-o8-4", "w3a3-o4-8"]
    assert sorted(result["results"]["0"]) == sorted(["fp", *outer])
    assert result["settings"]["model"] == "resnet20" and result["tables"]["outer"]["6/6"]["sizes"]["lut_bytes"] > 0
    with tarfile.open(out / "ablations-cifar10-runs.tar.gz") as tar:
        names = tar.getnames()
    assert "ablations-cifar10/seed0/fp/checkpoint.pt" in names       # every run starts from it
    assert not [n for n in names if any(label in n for label in outer)]    # recorded: not needed again


def test_an_unknown_task_is_refused(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "TASK": "cifar100"}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", "data"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "TASK must be cifar10 or ablations, not cifar100" in proc.stderr


def test_every_python_and_tar_step_has_a_deadline():
    """As the script's header says, every step has its deadline: each line that runs Python or tar (outside the
    comments and the packing script it feeds Python) runs under `timeout`."""
    lines = (REPO / "benchmarks" / "gpu_session.sh").read_text().split("<<'PACK'")
    script = lines[0] + "".join(part.split("\nPACK\n", 1)[1] for part in lines[1:])
    steps = [line.strip() for line in script.splitlines()
             if not line.lstrip().startswith("#") and re.search(r"(^|\s)(\$PY|\"\$PY\"|tar)\s", line)]
    assert len(steps) == 8 and all(step.startswith("timeout ") for step in steps), steps


@pytest.mark.parametrize("task, scripts", [
    ("cifar10", ["-m pytest", "benchmarks/cifar10_resnet20.py", "benchmarks/quantizer_speed.py"]),
    ("ablations", ["-m pytest", "benchmarks/ablations.py", "- "]),
])
def test_an_interpreter_whose_path_has_a_space_runs_every_step(tmp_path, task, scripts):
    """PYTHON (a virtual environment's python under a folder named with a space) was split at the space by the
    unquoted $PY: every step failed with 'No such file or directory' and nothing ran. A stand-in interpreter
    records each call."""
    folder = tmp_path / "my venv" / "bin"
    folder.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    fake = folder / "python"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> '{calls}'\ncat > /dev/null\nexit 0\n")
    fake.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "TASK": task, "PYTHON": str(fake),
           "RUNS": str(tmp_path / "runs")}
    (tmp_path / "runs" / "cifar10-resnet20-short-seed0").mkdir(parents=True)     # (for tar to pack)
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path / "data"), "0", "60"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert "No such file or directory" not in proc.stderr, proc.stderr
    called = calls.read_text().splitlines() if calls.exists() else []
    assert all(any(line.startswith(s) for line in called) for s in ["-c import torch", *scripts]), called


def test_ablations_that_made_no_runs_pack_nothing_and_say_so(tmp_path):
    """ablations.py stopped before its first run (data missing): the packing step ended in FileNotFoundError's
    traceback and left an empty archive in OUT, for the next call to unpack. A stand-in interpreter fails every
    step but the packing script, which the real one runs."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = - ]; then exec '{sys.executable}' \"$@\"; fi\nexit 1\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "TASK": "ablations", "PYTHON": str(fake),
           "RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path / "data"), "0", "60"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"nothing to pack: {tmp_path / 'runs' / 'ablations-cifar10'} was not made" in proc.stderr
    assert not list(out.glob("*.tar.gz")) and proc.returncode != 0
