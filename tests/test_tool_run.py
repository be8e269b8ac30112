"""benchmarks/tool_run.py: the FPGA tools a benchmark runs from worker threads stop when its main thread stops."""

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_tool_run():
    """A fresh copy of the module (stop_tools stops it for good)."""
    spec = importlib.util.spec_from_file_location("tool_run_under_test", REPO / "benchmarks" / "tool_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stop_tools_kills_the_tools_of_other_threads_and_starts_no_more(tmp_path):
    tool_run = load_tool_run()
    forever = [sys.executable, "-c", "import time; time.sleep(600)"]
    codes = []
    worker = threading.Thread(target=lambda: codes.append(
        tool_run.run_tool(forever, cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=600)))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not tool_run._running:
            assert time.monotonic() < deadline, "the tool did not start"
            time.sleep(0.05)
    finally:
        tool_run.stop_tools()
    worker.join(timeout=30)
    assert not worker.is_alive() and codes == [-9]
    with pytest.raises(tool_run.ToolsStopped, match="not started, the benchmark is stopping"):
        tool_run.run_tool(forever, cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=600)
