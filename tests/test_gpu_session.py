"""benchmarks/gpu_session.sh rehearsed on the CPU (DEVICE=cpu: the CIFAR-10 benchmark's --tiny run, the
quantizer benchmark with few repetitions): every result it promises lands in OUT, within its budget."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

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
