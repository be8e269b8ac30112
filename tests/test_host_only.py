"""The host side of the link runs without Amaranth and without the trainer: ``lcq run`` on a
machine with only numpy and pyserial. Checked in a fresh interpreter where importing the
third-party packages of the other stages (and, for the host modules, the trainer) fails."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"

# Not installed on a host that only talks to a board.
THIRD_PARTY = ("amaranth", "amaranth_boards", "torch", "sklearn", "PIL", "cocotb")

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""

RUN = BLOCKER + """
import json
import boards.link_host, boards.runtime, boards.traffic, hw.protocol
from compiler.reference import predict
from lcq.cli import main

class Port:
    def __init__(self, path, baud, timeout):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        pass

class Runner:
    def __init__(self, host, model, params, resident=None):
        self.model, self.repeated = model, 0
    def classify(self, images, labels, progress):
        return boards.runtime.RunResult(predict(self.model, images), 0.5, labels, load_seconds=0.25)

boards.link_host.SerialPort = Port
boards.runtime.BoardRunner = boards.runtime.NetworkRunner = Runner
code = main(sys.argv[2:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"code": code, "loaded": loaded}))
"""


def _python(script: str, blocked, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter in which importing any package of ``blocked`` fails."""
    return subprocess.run([sys.executable, "-c", script, ",".join(blocked), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_host_modules_import_without_amaranth_or_trainer():
    script = BLOCKER + ("import boards.fit, boards.link_host, boards.runtime, boards.traffic, hw.program, hw.protocol, "
                        "hw.network_params, hw.network_program")
    result = _python(script, (*THIRD_PARTY, "lcq_train"))
    assert result.returncode == 0, result.stderr


def test_gateware_really_is_blocked():
    """The blocker works: the gateware needs Amaranth."""
    result = _python(BLOCKER + "import hw.link", THIRD_PARTY)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


REPORTS = {"layers": {"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"}},
           "network": {"pll_mhz": 24.0, "mode": "network", "network": {"rows": 2, "cols": 4}}}


@pytest.mark.parametrize("mode", REPORTS)
def test_lcq_run_with_numpy_inputs_needs_neither_amaranth_nor_torch(tmp_path, mode):
    from compiler.format import load

    model = load(DIGITS)
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=rng.integers(0, 256, size=(4, *model.input.shape), dtype=np.uint8),
             labels=np.arange(4))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORTS[mode]))
    result = _python(RUN, THIRD_PARTY, "run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1",
                     "--inputs", str(inputs), "--report", str(report), "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    out, status = json.loads(lines[-2]), json.loads(lines[-1])
    assert status == {"code": 0, "loaded": []}
    assert out["images"] == out["equal_to_reference"] == 4 and out["mode"] == mode


def test_lcq_run_inputs_are_checked(tmp_path, capsys):
    from lcq.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 3, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"}}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/null", "--inputs", str(bad),
                 "--report", str(report)]) == 2
    assert "images must be uint8 of shape (N, 1, 8, 8)" in capsys.readouterr().err
