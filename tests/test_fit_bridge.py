"""The fit estimate's DSPs of the link bridge (boards.fit.bridge_dsps) against Yosys: the bridge alone, synthesized as
board builds run Yosys (``synth_ice40 -dsp``, ``synth_ecp5``), for OUT words whose bytes are not a power of two."""

import re
import subprocess

import pytest

pytest.importorskip("amaranth", reason="synthesizing the bridge needs amaranth: pip install -e '.[hw]'")

from boards.boards import BOARDS, LINK_PAYLOAD  # noqa: E402
from boards.fit import bridge_dsps  # noqa: E402
from hw.memories import UNDEFINED_COLLISIONS  # noqa: E402
from sim import netlist  # noqa: E402

SYNTH = {"ice40": ("synth_ice40 -dsp", "SB_MAC16"), "ecp5": ("synth_ecp5", "MULT18X18D")}


def bridge_dsps_synthesized(family: str, out_bits: int, tmp_path) -> int:
    """DSP cells of a network-mode link bridge for ``out_bits`` logits with ``family``'s frame buffer, as Yosys maps
    it (seconds)."""
    from amaranth.back import rtlil
    from amaranth.hdl import Signal

    from hw.link import LinkBridge, LinkMode

    bridge = LinkBridge(16, (8, 32), out_bits, 1, 1, max_payload=LINK_PAYLOAD[family], mode=LinkMode.NETWORK,
                        classes=10)
    ports = [port for _, _, port in bridge.signature.flatten(bridge) if isinstance(port, Signal)]
    (tmp_path / "bridge.il").write_text(rtlil.convert(bridge, name="bridge", ports=ports))
    synth, cell = SYNTH[family]
    script = f"read_rtlil bridge.il; {UNDEFINED_COLLISIONS}; {synth} -top bridge; tee -q -o stat.txt stat"
    subprocess.run([netlist.yosys_executable(), "-q", "-p", script], cwd=tmp_path, check=True, timeout=300,
                   capture_output=True)
    found = re.search(rf"^\s*(\d+)\s+{cell}\s*$", (tmp_path / "stat.txt").read_text(), re.M)
    return int(found[1]) if found else 0


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_the_bridges_frame_length_product_takes_a_dsp_where_yosys_maps_it_to_one(board, tmp_path):
    """An OUT frame's length is its count of words times a word's bytes (hw.link): 5 for ResNet-20's 35-bit logits.
    On the ECP5 (2,048-byte frames: up to 408 words, an 11-bit product) Yosys maps the product to a MULT18X18D; on
    the iCE40 (512-byte frames: up to 101 words, a 9-bit product) to logic cells, its SB_MAC16 being for products of
    11 bits or more (synth_ice40's DSP_Y_MINWIDTH)."""
    if netlist.unavailable_reason() is not None:
        pytest.skip(f"no Yosys here: {netlist.unavailable_reason()}")
    family = BOARDS[board].family
    assert bridge_dsps(BOARDS[board], 35) == bridge_dsps_synthesized(family, 35, tmp_path)
    assert bridge_dsps(BOARDS[board], 35) == {"icebreaker": 0, "ulx3s-85f": 1}[board]
