"""benchmarks/pe_cost.py: a Yosys run past --synth-timeout is killed with its process group and recorded."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ends_within, running

pytest.importorskip("amaranth", reason="the PE designs need amaranth: pip install -e '.[hw]'")

REPO = Path(__file__).resolve().parent.parent

HANGING_YOSYS = """#!/bin/sh
sleep 600 &
echo $! > {child}
wait
"""


def test_a_synthesis_past_its_deadline_is_killed_and_recorded(tmp_path):
    child = tmp_path / "child.pid"
    yosys = tmp_path / "yosys"
    yosys.write_text(HANGING_YOSYS.format(child=child))
    yosys.chmod(0o755)
    out = tmp_path / "pe_cost.json"
    try:
        proc = subprocess.run([sys.executable, "benchmarks/pe_cost.py", "--sizes", "pe", "--bits", "2", "--variants",
                               "rom", "--jobs", "1", "--synth-timeout", "2", "--build-dir", str(tmp_path / "build"),
                               "--json-out", str(out)], cwd=REPO, env={**os.environ, "YOSYS": str(yosys)},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        result = json.loads(out.read_text())["results"][0]
        assert result["synth_error"] == "timeout: no synthesis in 2 s (raise --synth-timeout)"
        assert result["ice40"]["pnr"] == [{"skipped": result["synth_error"]}] and result["ecp5"]["cells"] is None
        assert "| pe | 2/2 | rom | - | - |" in proc.stdout and "no synthesis in 2 s" in proc.stdout
        assert ends_within(int(child.read_text()), 5), "Yosys's own child outlived it"
    finally:
        if child.exists() and running(int(child.read_text())):
            os.kill(int(child.read_text()), signal.SIGKILL)



FAILING_YOSYS = """#!/bin/sh
echo "ERROR: Module top.dut: no such cell type" > yosys.log
exit 1
"""


@pytest.mark.parametrize("yosys", ["failing", "missing"])
def test_a_failed_synthesis_stops_with_a_message_not_a_traceback(tmp_path, yosys):
    exe = tmp_path / "yosys"
    if yosys == "failing":
        exe.write_text(FAILING_YOSYS)
        exe.chmod(0o755)
    out = tmp_path / "pe_cost.json"
    proc = subprocess.run([sys.executable, "benchmarks/pe_cost.py", "--sizes", "pe", "--bits", "2", "--variants",
                           "rom", "--jobs", "1", "--build-dir", str(tmp_path / "build"), "--json-out", str(out)],
                          cwd=REPO, env={**os.environ, "YOSYS": str(exe)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    log = tmp_path / "build" / "pe-w2a2-rom" / "yosys.log"
    said = ("pe_cost: error: rom pe W2: yosys: ERROR: Module top.dut: no such cell type (its log: "
            f"{log}); no results written" if yosys == "failing" else
            f"pe_cost: error: rom pe W2: cannot run {exe} (")
    assert said in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("argv, said", [
    (["--sizes", "4by4"], "size must be 'pe' or RxC (e.g. 4x4), not '4by4'"),
    (["--sizes", "0x4"], "size must be 'pe' or RxC (e.g. 4x4), not '0x4'"),
    (["--sizes", "4x4", "4x4"], "--sizes, --bits and --variants must not repeat a value"),
    (["--bits", "2", "2"], "--sizes, --bits and --variants must not repeat a value"),
])
def test_bad_sizes_are_refused_with_a_message_not_a_traceback(tmp_path, argv, said):
    """A --sizes that is not 'pe' or RxC crashed with argparse.ArgumentTypeError's traceback; a size (width,
    variant) given twice built the same design twice, into one directory, side by side."""
    proc = subprocess.run([sys.executable, "benchmarks/pe_cost.py", *argv, "--build-dir", str(tmp_path / "build"),
                           "--json-out", str(tmp_path / "pe_cost.json")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "YOSYS": str(tmp_path / "no-yosys")}, timeout=120)   # (none runs)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and said in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "build").exists()
