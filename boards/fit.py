"""Fit estimate before synthesis: do a design's buffers and PE array fit the board's part?

The estimate is simple on purpose and errs low: a buffer of ``b`` bits takes ``ceil(b / B)``
blocks of ``B`` bits (:data:`boards.boards.RAM_BLOCK_BITS`), ignoring the waste of word
widths that do not divide a block's width. On the UP5K, buffers of more than
:data:`SPRAM_MIN_BITS` go to SPRAM while SPRAM blocks are left, largest first; the rest, and
every buffer on ECP5, go to EBR. Logic: ``pe_count * luts_per_pe`` LUT4s must stay within
``logic_share`` of the part, leaving room for control, link and routing.
"""

from __future__ import annotations

from math import ceil

from .boards import RAM_BLOCK_BITS, Board

SPRAM_MIN_BITS = 16 * 4096  # larger than 16 EBRs: worth a 256 Kbit SPRAM block


class FitError(ValueError):
    """The design does not fit the part; the message names the buffer (or the PE array) and the part."""


def place_buffers(board: Board, memory_bits: dict[str, int]) -> dict[str, tuple[str, int]]:
    """{buffer: (block kind, blocks)} for ``memory_bits`` ({buffer: bits}) on ``board``;
    :class:`FitError` naming the first buffer that finds no room."""
    sizes = RAM_BLOCK_BITS[board.family]
    left = {kind: board.resources.get(kind, 0) for kind in sizes}
    placed = {}
    for name, bits in sorted(memory_bits.items(), key=lambda kv: -kv[1]):
        if bits < 0:
            raise ValueError(f"buffer {name!r} has {bits} bits; sizes must be >= 0")
        spram = ceil(bits / sizes["SPRAM"]) if "SPRAM" in sizes else 0
        kind = "SPRAM" if spram and bits > SPRAM_MIN_BITS and spram <= left["SPRAM"] else "EBR"
        blocks = spram if kind == "SPRAM" else ceil(bits / sizes["EBR"])
        if blocks > left[kind]:
            used = ", ".join(f"{n} {b} {k}" for n, (k, b) in placed.items()) or "nothing"
            raise FitError(f"buffer {name!r} ({bits:,} bits) needs {blocks} {kind} blocks but {board.device} on "
                           f"{board.name} has {left[kind]} of {board.resources[kind]} left (taken: {used}); "
                           f"use a smaller array or model, or a larger part")
        left[kind] -= blocks
        placed[name] = (kind, blocks)
    return placed


def check_fit(board: Board, memory_bits: dict[str, int], pe_count: int = 0, luts_per_pe: int = 0,
              logic_share: float = 0.8) -> dict[str, tuple[str, int]]:
    """Raise :class:`FitError` when the buffers (``memory_bits``: {buffer: bits}, e.g.
    ``EngineParams.memory_bits()``) or ``pe_count`` PEs of ``luts_per_pe`` LUT4s each do not fit
    ``board``; return the buffer placement of :func:`place_buffers`."""
    placed = place_buffers(board, memory_bits)
    luts = pe_count * luts_per_pe
    if luts > logic_share * board.resources["LUT4"]:
        raise FitError(f"the PE array ({pe_count} PEs x {luts_per_pe} LUT4s = {luts:,}) exceeds {logic_share:.0%} "
                       f"of the {board.resources['LUT4']:,} LUT4s of {board.device} on {board.name}; "
                       f"use fewer rows/cols or a larger part")
    return placed
