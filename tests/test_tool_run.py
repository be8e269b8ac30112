"""benchmarks/tool_run.py: the FPGA tools a benchmark runs from worker threads stop when its main thread stops."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_toolchain import SLOW_REAPER
from helpers import ends_within, load_benchmark, running


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


# A benchmark (its tools run by run_tool) whose reaper is slowed as on a loaded machine: a second to start, and one
# to be told the group; its tool writes its pid to argv[1] and sleeps.
SLOW_REAPER_BENCHMARK = "import sys\nsys.path.insert(0, \"benchmarks\")\n" + SLOW_REAPER + """
from tool_run import run_tool
tool = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
run_tool([sys.executable, "-c", tool, sys.argv[1]], cwd=".", stdout=None, timeout=600)
"""


def test_a_benchmark_killed_as_its_tool_starts_leaves_no_tool(tmp_path):
    """The tool runs only once a reaper watches its group: a benchmark killed (SIGKILL) as soon as its tool runs,
    before a slow reaper was told the group, leaves no tool behind."""
    pid_file = tmp_path / "tool.pid"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_REAPER_BENCHMARK, str(pid_file)],
                            cwd=Path(__file__).resolve().parent.parent)
    pid = None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the tool did not start"
            time.sleep(0.01)
        pid = int(pid_file.read_text())
        proc.kill()
        proc.wait(timeout=30)
        assert ends_within(pid, 10), "the tool outlived the benchmark"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_missing_tool_raises_an_os_error(tmp_path):
    """As subprocess.Popen did: the benchmarks turn it into "cannot run ..." (pe_cost's ToolFailed)."""
    tool_run = load_benchmark("tool_run", "tool_run_under_test")
    with pytest.raises(OSError, match="no-such-tool"):
        tool_run.run_tool([str(tmp_path / "no-such-tool")], cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=60)
