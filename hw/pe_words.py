"""The words a PE is fed, computed on the host: pure Python, no Amaranth.

One source for the PE variants (:mod:`hw.pe`), the engine's sizing
(:mod:`hw.engine_params`) and the host's load words (:mod:`hw.program`):

- a weight word is sign-magnitude, the sign in its top bit (:func:`weight_word`);
- a row vector ``P = (L[1][j], ..., L[s_w][j])`` packs the products of activation
  code ``j`` with every weight magnitude, ``P[k]`` in bits ``PRODUCT_BITS * (k - 1)``
  and up (:func:`row_vector`).
"""

from __future__ import annotations

W_MAX = 127  # s'_w for outer weight bits b' = 8
A_MAX = 255  # s'_a for outer activation bits b' = 8
LEVEL_BITS = 8  # sign + 7-bit weight level, or an 8-bit activation level
PRODUCT_BITS = (W_MAX * A_MAX).bit_length()  # 15
# Registers of the PE array beyond one per PE: each row's table read data (out of block RAM) before
# the row's PEs, and each PE's product before its adder (:class:`hw.pe.PEArray`, the engine's timing).
ARRAY_PIPELINE = 2


def logic_multiplies(device: str) -> bool:
    """Whether PEs that multiply levels do it in logic cells on FPGA part ``device`` (``""``: none, a
    simulation): on ECP5 parts (``LFE5U-...``), whose multiplier sites would spread a PE array over the
    die (the ResNet-20 whole-network core did not route in 35 minutes with 64 of them, and did with
    none); not on the iCE40 UltraPlus, whose few PEs fit its multipliers but not the logic."""
    return device.startswith("LFE5U")


def weight_word(sign: int, magnitude: int, weight_bits: int) -> int:
    """The ``weight_bits``-bit word of a weight: ``sign`` (0 or 1) on top of ``magnitude``
    (the index ``k``, or the level ``W[k]`` for a multiplying PE)."""
    if sign not in (0, 1) or not 0 <= magnitude < 1 << (weight_bits - 1):
        raise ValueError(f"weight (sign {sign}, magnitude {magnitude}) does not fit a {weight_bits}-bit word")
    return sign << (weight_bits - 1) | magnitude


def row_vector(w_levels, a_level: int) -> int:
    """The row vector of an activation level ``A[j]``: ``W[k] * A[j]`` for ``k = 1 .. s_w``,
    each ``PRODUCT_BITS`` wide, ``k = 1`` lowest."""
    return sum(int(w) * int(a_level) << PRODUCT_BITS * (k - 1) for k, w in enumerate(w_levels[1:], start=1))
