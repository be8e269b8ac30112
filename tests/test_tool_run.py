"""benchmarks/tool_run.py: the FPGA tools a benchmark runs from worker threads stop when its main thread stops."""

import subprocess
import sys
import threading
import time

import pytest
from helpers import load_benchmark


def test_stop_tools_kills_the_tools_of_other_threads_and_starts_no_more(tmp_path):
    tool_run = load_benchmark("tool_run", "tool_run_under_test")   # (a fresh copy: stop_tools stops one for good)
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
