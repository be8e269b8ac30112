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

