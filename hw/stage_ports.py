"""The ports every output-stage unit shares: its constants (a load port, or the word read outside) and the
accumulator stream in."""

from __future__ import annotations

from amaranth import signed
from amaranth.lib.wiring import In


def stage_ports(channels: int, word_bits: int, acc_bits: int, own_memory: bool = True) -> dict:
    """``valid``/``acc`` bring one accumulator per cycle. ``own_memory``: ``load_en``/``load_addr``/``load_data``
    write one constants word per channel into the unit's memory, which it reads at the value's ``channel``;
    else ``word`` brings the value's channel's word, read outside in a memory that several units share (the
    cycle after the value, as the unit's own memory would give it)."""
    constants = ({"load_en": In(1), "load_addr": In(range(channels)), "load_data": In(word_bits),
                  "channel": In(range(channels))} if own_memory else {"word": In(word_bits)})
    return {
        **constants,
        "valid": In(1),
        "acc": In(signed(acc_bits)),
    }
