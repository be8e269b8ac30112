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
    assert not worker.is_alive() and codes == [-15]
    with pytest.raises(tool_run.ToolsStopped, match="not started, the benchmark is stopping"):
        tool_run.run_tool(forever, cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=600)


# A tool that ends cleanly on SIGTERM (writing "stopped" to its file), as a tool that removes its temporary files does.
GRACEFUL = ("import pathlib, signal, sys, time\n"
            "def stop(*_):\n"
            "    pathlib.Path(sys.argv[1]).write_text('stopped')\n"
            "    sys.exit(1)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "pathlib.Path(sys.argv[1]).write_text('ready')\n"
            "time.sleep(600)\n")


def test_a_tool_past_its_timeout_is_sent_sigterm_first(tmp_path):
    """As boards.process_group.stop_group stops a build's tool: SIGTERM, then SIGKILL after a grace period."""
    tool_run = load_benchmark("tool_run", "tool_run_under_test")
    marker = tmp_path / "marker"
    with pytest.raises(subprocess.TimeoutExpired):
        tool_run.run_tool([sys.executable, "-c", GRACEFUL, str(marker)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                          timeout=3)
    assert marker.read_text() == "stopped"
