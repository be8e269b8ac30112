"""A fake Yosys/nextpnr/packer toolchain for the tests of the build stages: Python scripts put in place of the YoWASP
tools through the variables ``boards.build.toolchain_env`` reads (the ``fake_tools`` fixture of :mod:`conftest`),
and checks that a killed tool's process is gone."""

import os
import sys
import textwrap
import time
from pathlib import Path

# One fake for every tool: writes the lines of $FAKE_LOG_<TOOL> (a file) to its own log (-l / --log),
# its argv to <tool>.argv, the files it is asked for (--report: $FAKE_REPORT's content; --textcfg, --asc,
# icepack's output, --bit), then, with $FAKE_SLEEP_<TOOL>, starts a `sleep` child (its pid in
# <tool>.child) and sleeps; $FAKE_ERROR_<TOOL> is a line it prints last, $FAKE_EXIT_<TOOL> its exit status. Run
# with `--seed N`, the variables <VAR>_SEED_N take the place of <VAR> (unset: none; $FAKE_REPORT_SEED_N unset:
# $FAKE_REPORT), and it writes <tool>.seedN.argv and <tool>.seedN.child too.
FAKE = textwrap.dedent("""\
    import os, subprocess, sys, time
    from pathlib import Path
    tool = Path(sys.argv[0]).name
    key = tool.upper().replace("-", "_")
    args = sys.argv[1:]
    Path(tool + ".argv").write_text(repr(args))
    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None
    seeded = "_SEED_" + value("--seed") if value("--seed") else ""
    if seeded:
        Path(tool + ".seed" + value("--seed") + ".argv").write_text(repr(args))
    log = value("-l") or value("--log")
    if log and os.environ.get("FAKE_LOG_" + key + seeded):
        with open(log, "w") as f:
            for line in Path(os.environ["FAKE_LOG_" + key + seeded]).read_text().splitlines():
                f.write(line + "\\n")
                f.flush()
    if value("--report"):
        report = os.environ.get("FAKE_REPORT" + seeded) or os.environ["FAKE_REPORT"]
        Path(value("--report")).write_text(Path(report).read_text())
    for out in (value("--textcfg"), value("--asc"), value("--bit")):
        if out:
            Path(out).write_text("fake")
    if tool == "icepack":
        Path(args[-1]).write_bytes(bytes(20000))
    print(tool, "ran")
    if os.environ.get("FAKE_SLEEP_" + key + seeded):
        child = subprocess.Popen(["sleep", "60"])
        Path(tool + ".child").write_text(str(child.pid))
        if seeded:
            Path(tool + ".seed" + value("--seed") + ".child").write_text(str(child.pid))
        time.sleep(float(os.environ["FAKE_SLEEP_" + key + seeded]))
    if os.environ.get("FAKE_ERROR_" + key + seeded):
        print(os.environ["FAKE_ERROR_" + key + seeded])
    sys.exit(int(os.environ.get("FAKE_EXIT_" + key + seeded, "0")))
""")
TOOLS = {"YOSYS": "yosys", "NEXTPNR_ECP5": "nextpnr-ecp5", "NEXTPNR_ICE40": "nextpnr-ice40",
         "ECPPACK": "ecppack", "ICEPACK": "icepack"}


def install(tmp_path, monkeypatch):
    """The fake tool installed under each tool's name in tmp_path/bin and named by the tool variables;
    returns a function setting a tool's log text (and other FAKE_* variables)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for var, tool in TOOLS.items():
        exe = bindir / tool
        exe.write_text(f"#!{sys.executable}\n{FAKE}")
        exe.chmod(0o755)
        monkeypatch.setenv(var, str(exe))

    def set_log(tool, text):
        path = tmp_path / f"{tool}.log-lines"
        path.write_text(text)
        monkeypatch.setenv("FAKE_LOG_" + tool.upper().replace("-", "_"), str(path))
    return set_log


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by its parent) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def gone_soon(pid: int, seconds: float = 5.0) -> bool:
    """Whether ``pid`` is gone within ``seconds``: a killed process dies when the kernel next runs it, which on
    a loaded machine can be a moment after the signal."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_written(path: Path, seconds: float = 10.0, poll: float = 0.01) -> None:
    """Wait until ``path`` exists and holds text (a tool's pid file), or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(poll)


# Python source that slows boards.process_group's reaper as on a loaded machine: a second to start, and one to be
# told the group; for scripts killed as soon as their tool runs (the tool must not run until the reaper watches it).
SLOW_REAPER = """import time
import boards.process_group as pg
start = pg.Reaper.__init__
pg.Reaper.__init__ = lambda self: (time.sleep(1), start(self))[1]
watch = pg.Reaper.watch
pg.Reaper.watch = lambda self, pgid: (time.sleep(1), watch(self, pgid))[1]
"""
