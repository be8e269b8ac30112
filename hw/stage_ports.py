"""The ports every output-stage unit shares: a constants load port and the accumulator stream in."""

from __future__ import annotations

from amaranth import signed
from amaranth.lib.wiring import In


def stage_ports(channels: int, word_bits: int, acc_bits: int) -> dict:
    """``load_en``/``load_addr``/``load_data`` write one constants word per channel;
    ``valid``/``acc``/``channel`` bring one accumulator per cycle."""
    return {
        "load_en": In(1),
        "load_addr": In(range(channels)),
        "load_data": In(word_bits),
        "valid": In(1),
        "acc": In(signed(acc_bits)),
        "channel": In(range(channels)),
    }
