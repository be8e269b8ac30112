"""On-chip memory lists: ``(name, width, depth, copies)`` as the parameter classes describe them."""

from __future__ import annotations


def memory_bits(memories) -> dict[str, int]:
    """Bits of each named memory (all copies together, entries of one name summed)."""
    bits: dict[str, int] = {}
    for name, width, depth, copies in memories:
        bits[name] = bits.get(name, 0) + width * depth * copies
    return bits
