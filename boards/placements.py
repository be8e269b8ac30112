"""Placement and routing with nextpnr: one seed, or several side by side with the fastest kept.

On a nearly full part the Fmax of one netlist moves with nextpnr's placement seed by more than most changes to the
design gain: the ULX3S-85F ResNet-20 core reached 79.58 MHz with ``--seed 1`` (0607e00) and 102.28 MHz with
``--seed 2`` (bb17852), board_builds.json. nextpnr's YoWASP build runs on one thread, so on a machine with two
cores a second placement costs no wall-clock time.

:func:`place_and_route` runs nextpnr's stage (a :class:`boards.stages.Stage`) in rounds: a round of ``width`` 1
runs it on this thread with its own output names; a wider one runs one placement per seed, each on a thread of its
own with its outputs (log, report, textual configuration or .asc) named ``<stem>.seed<N><suffix>`` and its tool
output in ``build.seed<N>.log``, and keeps the placement of the highest Fmax, whose outputs then take the stage's
own names (the others' logs and reports stay, for reading). A placement still running :data:`PATIENCE` of the first
routed one's time after that one routed is stopped (outcome "stopped"): a router that converges slowly would
otherwise hold the build (the ULX3S-85F ResNet-20 core at 67755e1: seed 1 routed in 15 minutes, seed 2 still had
771 wires overused after 22). Where no placement of a round routes because a router
stalled or a placement could not be completed (:data:`RETRIED`), the next round tries the next seeds, at most
:data:`ROUNDS` rounds in all, unless a seed was asked for.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from .report import parse_nextpnr, read_nextpnr
from .stages import (PLACEMENT_FAILURE, STOP_POLL_SECONDS, BuildError, BuildTimeout, FailedPlacement, RouterStall,
                     Stage, run_stages, stop_signals_raise)

ROUNDS = 3                     # rounds of placements where each fails as RETRIED says, unless a seed was asked for
PATIENCE = 0.25                # share of the first routed placement's time that the others get after it
RETRIED = (RouterStall, FailedPlacement)
OUTPUT_FLAGS = ("--log", "--report", "--textcfg", "--asc")   # nextpnr's flags before the files it writes
BULKY_FLAGS = ("--textcfg", "--asc")                          # outputs of the placements not kept that are removed
OUTCOMES = {RouterStall: "router stall", FailedPlacement: "placement failed", BuildTimeout: "timeout"}


@dataclass
class Placement:
    """One nextpnr run: its ``seed`` (None: nextpnr's own), ``outcome`` ("routed", "router stall", "placement
    failed", "timeout", "stopped" (:data:`PATIENCE`) or "failed"), ``fmax_mhz`` (None unless routed), ``seconds``
    and the ``error`` it raised."""

    seed: int | None
    outcome: str
    fmax_mhz: float | None
    seconds: float
    error: BuildError | None = None

    def to_dict(self) -> dict:
        return {"seed": self.seed, "outcome": self.outcome, "fmax_mhz": self.fmax_mhz, "seconds": self.seconds}


@dataclass
class Placed:
    """What :func:`place_and_route` did: ``seed`` (the kept placement's), ``seconds`` ({stage name: wall-clock
    seconds of every round}) and ``placements`` (every :class:`Placement`, in the order their seeds were tried)."""

    seed: int | None
    seconds: dict
    placements: list


def seed_rounds(seed: int | None, width: int) -> list[list[int | None]]:
    """The seeds of each round: ``[[seed]]`` where one was asked for; with ``width`` 1, nextpnr's own and then
    seeds 2, 3, ... one a round; wider, seeds 1 to ``width``, then the next ``width``, ..."""
    if seed is not None:
        return [[seed]]
    if width == 1:
        return [[None], *([s] for s in range(2, ROUNDS + 1))]
    return [list(range(1 + r * width, 1 + (r + 1) * width)) for r in range(ROUNDS)]


def renamed(path: str, seed: int) -> str:
    """``path`` as the placement of ``seed`` names it: ``top.tim`` -> ``top.seed2.tim``."""
    p = PurePosixPath(path)
    return str(p.with_name(f"{p.stem}.seed{seed}{p.suffix}"))


def outputs(stage: Stage, flags=OUTPUT_FLAGS) -> list[str]:
    """The files ``stage``'s argv names after ``flags``."""
    return [stage.argv[i + 1] for i, a in enumerate(stage.argv[:-1]) if a in flags]


def seeded(stage: Stage, seed: int | None, rename: bool = False) -> Stage:
    """``stage`` with ``--seed seed`` (None: unchanged) and, where ``rename``, its outputs :func:`renamed`."""
    argv = list(stage.argv)
    if rename:
        argv = [renamed(a, seed) if i and argv[i - 1] in OUTPUT_FLAGS else a for i, a in enumerate(argv)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    log = renamed(stage.log, seed) if rename and stage.log else stage.log
    return replace(stage, argv=tuple(argv), log=log)


def place_and_route(stage: Stage, build_dir, env: dict, *, seed: int | None, width: int, family: str, what: str,
                    deadline: float | None, every: float | None, stall_seconds: float | None) -> Placed:
    """Run nextpnr's ``stage`` in ``build_dir`` with ``env`` (:func:`boards.stages.run_stages` with ``what``,
    ``deadline``, ``every`` and ``stall_seconds``) as the module says, ``width`` placements a round (``seed``
    asked for: that one alone), and keep the fastest; ``family`` reads the reports' Fmax. Raises the error of
    the first placement of the last round where none routed (a :class:`BuildError`; one not in :data:`RETRIED`
    at once)."""
    build_dir = Path(build_dir)
    rounds, seconds, tried = seed_rounds(seed, width), 0.0, []
    for number, seeds in enumerate(rounds):
        t0 = time.monotonic()
        if len(seeds) == 1:
            placements = [_place(seeded(stage, seeds[0]), seeds[0], build_dir, env, family, what, deadline, every,
                                 stall_seconds, "build.log", None)]
        else:
            placements = _side_by_side(stage, seeds, build_dir, env, family, what, deadline, every, stall_seconds)
        seconds += time.monotonic() - t0
        tried += placements
        routed = [p for p in placements if p.outcome == "routed"]
        if routed:
            kept = max(routed, key=lambda p: (p.fmax_mhz or 0.0, -(p.seed or 0)))
            if len(seeds) > 1:
                _keep(stage, kept.seed, seeds, build_dir)
                print(f"{what}: kept the placement of seed {kept.seed}, Fmax {kept.fmax_mhz} MHz (of "
                      f"{', '.join(_said(p) for p in placements)})", file=sys.stderr, flush=True)
            return Placed(kept.seed, {stage.name: round(seconds, 1)}, [p.to_dict() for p in tried])
        final = next((p.error for p in placements if not isinstance(p.error, RETRIED)), None)
        if final is not None or number == len(rounds) - 1:
            raise final or placements[0].error
        why = "; ".join(_failure(p.error, what if len(seeds) == 1 else f"{what} (seed {p.seed})") for p in placements)
        following = rounds[number + 1]
        print(f"{why}: placing and routing again with --seed {', '.join(map(str, following))}", file=sys.stderr,
              flush=True)
    raise AssertionError("unreachable: the last round returns or raises")


def _place(stage: Stage, seed: int | None, build_dir: Path, env: dict, family: str, what: str,
           deadline: float | None, every: float | None, stall_seconds: float | None, log_name: str,
           stop: threading.Event | None) -> Placement:
    """One placement: ``stage`` run (:func:`boards.stages.run_stages`), its outcome and Fmax."""
    t0 = time.monotonic()
    try:
        run_stages([stage], build_dir, env, what=what, deadline=deadline, every=every, log_name=log_name,
                   stall_seconds=stall_seconds, stop=stop, append_log=log_name == "build.log")
    except BuildError as e:
        stopped = stop is not None and stop.is_set() and type(e) is BuildError
        return Placement(seed, "stopped" if stopped else OUTCOMES.get(type(e), "failed"), None,
                         round(time.monotonic() - t0, 1), e)
    reports = outputs(stage, ("--report",))
    fmax = parse_nextpnr(read_nextpnr(build_dir / reports[0]), family)[0] if reports else None
    return Placement(seed, "routed", fmax, round(time.monotonic() - t0, 1))


def _side_by_side(stage: Stage, seeds: list[int], build_dir: Path, env: dict, family: str, what: str,
                  deadline: float | None, every: float | None, stall_seconds: float | None) -> list[Placement]:
    """One placement per seed of ``seeds``, each on a thread of its own with its outputs :func:`renamed`; those
    still running :data:`PATIENCE` of the first routed one's time after it are stopped; an exception on this
    thread (SIGTERM, SIGHUP, Ctrl-C) stops them all, their tools' process groups killed."""
    stop, cutoff = threading.Event(), None
    with stop_signals_raise(), ThreadPoolExecutor(len(seeds)) as pool:
        futures = [pool.submit(_place, seeded(stage, s, rename=True), s, build_dir, env, family,
                               f"{what} (seed {s})", deadline, every, stall_seconds, f"build.seed{s}.log", stop)
                   for s in seeds]
        try:
            while not all(f.done() for f in futures):
                wait_for(futures, timeout=STOP_POLL_SECONDS)
                routed = [f.result() for f in futures if f.done() and f.result().outcome == "routed"]
                if routed and cutoff is None:
                    first = routed[0]
                    cutoff = time.monotonic() + PATIENCE * first.seconds
                    print(f"{what}: seed {first.seed} routed; the placements still running get {PATIENCE:.0%} of its "
                          f"{first.seconds:.0f} s more", file=sys.stderr, flush=True)
                if cutoff is not None and time.monotonic() >= cutoff and not stop.is_set():
                    stop.set()
        except BaseException:
            stop.set()
            raise
    return [f.result() for f in futures]


def _keep(stage: Stage, kept: int, seeds: list[int], build_dir: Path) -> None:
    """The outputs of ``kept``'s placement under ``stage``'s own names; the bulky ones of the others removed."""
    for output in outputs(stage):
        (build_dir / output).unlink(missing_ok=True)
        if (build_dir / renamed(output, kept)).exists():
            os.replace(build_dir / renamed(output, kept), build_dir / output)
    for seed in seeds:
        for output in outputs(stage, BULKY_FLAGS):
            (build_dir / renamed(output, seed)).unlink(missing_ok=True)


def _said(p: Placement) -> str:
    return f"seed {p.seed}: " + (f"{p.fmax_mhz} MHz" if p.outcome == "routed" else p.outcome)


def _failure(error: BuildError, what: str) -> str:
    """Why a placement (``what``) failed, in a line: the router stall's message, or nextpnr's error line."""
    if isinstance(error, RouterStall):
        return str(error)
    line = next((line[len("ERROR: "):].rstrip(".") for line in str(error).splitlines()
                 if PLACEMENT_FAILURE.match(line)), "")
    return f"{what}: nextpnr's placement failed ({line})"
