"""Where the simulation tests build, and how they skip when a simulator is missing.

``BUILD_ROOT`` is ``build/sim`` at the top of the checkout, or ``$LCQ_SIM_BUILD``; builds there are
reused across runs (Verilator rebuilds only what changed). :func:`require_simulators` skips the calling
test, naming the simulator and the reason, when one of them cannot run here. :func:`core_build` builds a network
core or a layer engine as ``sim.network_run.network_build`` and ``sim.engine_run.engine_build`` do, generating the
Verilog of one design once in the pytest process (the Icarus and the Verilator run of a core, and the tests that
run the same core again, share it). :class:`ChangedInputs` sets an Amaranth testbench's inputs only when they change.
"""

import functools
import importlib
import os
from pathlib import Path

import pytest

from lcq_train.atomic import write_text_if_changed
from sim.runner import build_core, unavailable_reason

BUILD_ROOT = Path(os.environ.get("LCQ_SIM_BUILD", Path(__file__).resolve().parents[1] / "build" / "sim"))


def require_simulators(*sims: str) -> None:
    """Skip the test unless every simulator in ``sims`` ("icarus", "verilator") can run here."""
    for sim in sims:
        reason = unavailable_reason(sim)
        if reason is not None:
            pytest.skip(f"{sim} simulation skipped: {reason}")


# What helpers.build_as_for_the_ecp5 patches: the hardware's form is part of core_build's key, so that Verilog
# generated under those patches is never served without them, or the other way round.
_FORM_MODULES = ("column_memory", "engine", "link", "network", "pe", "requantize", "reset_tree", "thresholds",
                 "vector")
_FORM_FUNCTIONS = ("slow_block_ram", "reset_less_data", "multiply_in_logic", "reset_tree")


def _hardware_form() -> tuple:
    modules = [importlib.import_module(f"hw.{name}") for name in _FORM_MODULES]
    return tuple(getattr(module, function, None) for module in modules for function in _FORM_FUNCTIONS)


@functools.lru_cache(maxsize=None)
def _core_verilog(params, spram: bool, form: tuple) -> tuple[str, str]:
    """(top module name, Verilog) of the network core (``params`` a ``NetworkParams``) or the layer engine (an
    ``EngineParams``) for ``params`` and ``spram``, once per process (``form``: :func:`_hardware_form`)."""
    from amaranth.back import verilog

    from hw.engine import LayerEngine
    from hw.network import NetworkCore
    from hw.network_params import NetworkParams
    from sim import engine_run, network_run

    if isinstance(params, NetworkParams):
        return network_run.TOP, verilog.convert(NetworkCore(params, spram=spram), name=network_run.TOP)
    return engine_run.TOP, verilog.convert(LayerEngine(params, spram=spram), name=engine_run.TOP)


def core_build(sim: str, params, build_dir, *, spram: bool = False):
    """``sim.network_run.network_build`` (``params`` a ``NetworkParams``) or ``sim.engine_run.engine_build`` (an
    ``EngineParams``), with the Verilog of each (params, spram) generated once in this process (seconds each)."""
    top, text = _core_verilog(params, bool(spram), _hardware_form())
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{top}.v"
    write_text_if_changed(source, text)
    return build_core(sim, source, top, build_dir, spram)


class ChangedInputs:
    """An Amaranth testbench's inputs, each set only when its value changes: every ``ctx.set`` settles the design
    (a long exchange's time, where an input was set each cycle). The caller looks each port up once and passes that
    object (a port of a View is made anew at each look-up); ``set(port, value)`` stands for ``ctx.set``."""

    def __init__(self, ctx):
        self.ctx, self.last = ctx, {}

    def set(self, port, value) -> None:
        held = self.last.get(id(port))          # (port, value): the port kept, so that its id stays its own
        if held is None or held[1] != value:
            self.ctx.set(port, value)
            self.last[id(port)] = (port, value)
