"""One-hot FSMs in synthesis (:mod:`hw.fsm_encoding`).

- No tool: :func:`hw.fsm_encoding.one_hot` puts the ``fsm_encoding`` attribute on the state register in the
  Verilog that Yosys reads, and the link bridge's state register carries it; ``slow``: so do all four of the
  digits network core (as ``lcq build`` picks it for the iCEBreaker).
- Yosys: a marked FSM is re-encoded one-hot although Amaranth gives its state register an initial value;
  an unmarked one is refused for that initial value and keeps its binary code.
"""

import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("amaranth", reason="the FSM encoding tests need amaranth: pip install -e '.[hw]'")

from amaranth import Module, Signal  # noqa: E402
from amaranth.back import verilog  # noqa: E402

from hw.fsm_encoding import one_hot  # noqa: E402
from sim import netlist as nl  # noqa: E402

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"
MARK = '(* fsm_encoding = "one-hot" *)'


def three_states(mark: bool) -> tuple[Module, list[Signal]]:
    """A three-state FSM (A waits for ``go``, B and C set ``out``), its state register marked where ``mark``."""
    m, go, out = Module(), Signal(), Signal(2)
    with m.FSM() as fsm:
        with m.State("A"):
            with m.If(go):
                m.next = "B"
        with m.State("B"):
            m.d.sync += out.eq(1)
            m.next = "C"
        with m.State("C"):
            m.d.sync += out.eq(2)
            m.next = "A"
    if mark:
        one_hot(fsm)
    return m, [go, out]


def state_registers(text: str) -> list[tuple[str, bool]]:
    """(name, marked) of each FSM state register (``*_state``) declared in Verilog ``text``, module by module."""
    lines = text.splitlines()
    return [(match[1], lines[i - 1].strip() == MARK)
            for i, line in enumerate(lines) if (match := re.match(r"\s*reg (?:\[\d+:0\] )?(\w+_state) =", line))]


@pytest.mark.parametrize("mark", [True, False])
def test_one_hot_marks_the_state_register(mark):
    m, ports = three_states(mark)
    assert state_registers(verilog.convert(m, ports=ports, emit_src=False)) == [("fsm_state", mark)]


def test_the_bridge_fsm_is_marked():
    from hw.link import LinkBridge

    bridge = LinkBridge(8, [8], 8, 1, 1)
    ports = [value for _, _, value in bridge.signature.flatten(bridge) if isinstance(value, Signal)]
    assert state_registers(verilog.convert(bridge, name="bridge", ports=ports, emit_src=False)) == [
        ("fsm_state", True)]


@pytest.mark.slow
def test_every_fsm_of_the_network_core_is_marked(tmp_path):
    """Slow: the digits core's elaboration and conversion take about 2 minutes."""
    from boards.boards import get_board
    from compiler import format as model_format

    core = nl.board_core(model_format.load(DIGITS), get_board("icebreaker"), "network")
    registers = state_registers(nl.core_verilog(core, tmp_path).read_text())
    assert sorted(registers) == [("fsm_state", True)] * 3 + [("writer_state", True)]   # sequencer, engine, vector
    # unit, and the engine's writer


@pytest.mark.parametrize("mark", [True, False])
def test_yosys_recodes_only_a_marked_fsm(tmp_path, mark):
    if nl.unavailable_reason() is not None:
        pytest.skip(f"needs Yosys: {nl.unavailable_reason()}")
    m, ports = three_states(mark)
    (tmp_path / "top.v").write_text(verilog.convert(m, name="top", ports=ports))
    log = subprocess.run([nl.yosys_executable(), "-p", "read_verilog -sv top.v; synth_ice40 -top top"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert ("Recoding FSM `$fsm$\\fsm_state" in log and "using `one-hot' encoding" in log) == mark
    refused = re.search(r"Not marking top\.fsm_state as FSM state register:\n(    .*\n)*?    Register has an "
                        r"initialization value", log)
    assert (refused is not None) == (not mark)
