"""The words of the output-stage memories, computed on the host: pure Python, no Amaranth.

One source for what the threshold and requantize units store (:mod:`hw.thresholds`,
:mod:`hw.requantize`), what the engine is sized for (:mod:`hw.engine_params`) and what
the host loads (:mod:`hw.program`): the widths each compiler stage needs and each
channel's memory word.
"""

from __future__ import annotations

import numpy as np

from compiler.graph import Requantize, Thresholds, signed_bits

from .progression import ProgressionShape, stage_progressions

# Thresholds: s = 2^code_bits - 1 signed thresholds per channel and a descending flag.


def thresholds_array(stage: Thresholds) -> np.ndarray:
    """The (channels, 2^bits - 1) int64 thresholds of ``stage``, its shapes checked."""
    t = np.asarray(stage.thresholds)
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"thresholds must be (channels, s) with channels >= 1, got shape {t.shape}")
    if t.shape[1] != 2 ** stage.bits - 1:
        raise ValueError(f"{stage.bits}-bit codes need 2^{stage.bits} - 1 = {2 ** stage.bits - 1} "
                         f"thresholds per channel, got {t.shape[1]}")
    if np.asarray(stage.descending).shape != (t.shape[0],):
        raise ValueError(f"descending must have one flag per channel ({t.shape[0]}), "
                         f"got shape {np.asarray(stage.descending).shape}")
    return t.astype(np.int64)


def stored_thresholds(stage: Thresholds) -> np.ndarray:
    """The thresholds as the units store them: ``T`` for an ascending channel, ``T + 1`` for a
    descending one (its code counts ``acc <= T``, i.e. the comparisons ``acc >= T + 1`` that fail)."""
    t = thresholds_array(stage)
    return t + np.asarray(stage.descending, dtype=bool)[:, None]


def threshold_bits(stage: Thresholds) -> int:
    """Signed width holding every stored threshold of ``stage`` (:func:`stored_thresholds`), at least 2 (the
    narrowest that :class:`hw.thresholds.ThresholdUnit` stores: all-zero thresholds would need 1).

    The compiler clamps thresholds to ``[-bound - 1, bound + 1]`` with ``bound`` the
    largest ``|acc|``, so ``acc_bits + 1`` always suffices; this is often less.
    """
    return max(2, signed_bits(int(np.abs(stored_thresholds(stage)).max())))


def threshold_words(stage: Thresholds, threshold_bits: int) -> list[int]:
    """The memory word of each channel, to write at address ``channel``.

    Bits ``i * threshold_bits .. (i + 1) * threshold_bits - 1`` hold threshold ``i`` as stored
    (:func:`stored_thresholds`: plus one for a descending channel; two's complement); the top bit
    (``s * threshold_bits``) is the descending flag.
    """
    t, stored = thresholds_array(stage), stored_thresholds(stage)
    top = 2 ** (threshold_bits - 1) - 1
    if np.abs(stored).max() > top:
        at = np.unravel_index(np.abs(stored).argmax(), stored.shape)
        raise ValueError(f"threshold {int(t[at])} of channel {int(at[0])} (stored as {int(stored[at])}) does not "
                         f"fit threshold_bits={threshold_bits}")
    mask = (1 << threshold_bits) - 1
    words = []
    for row, desc in zip(stored.tolist(), np.asarray(stage.descending, dtype=bool).tolist()):
        word = int(desc) << (len(row) * threshold_bits)
        for i, v in enumerate(row):
            word |= (v & mask) << (i * threshold_bits)
        words.append(word)
    return words


def threshold_word_bits(code_bits: int, threshold_bits: int) -> int:
    """Bits of one channel's threshold word: ``2^code_bits - 1`` thresholds and the descending flag."""
    return (2 ** code_bits - 1) * threshold_bits + 1


# Progressions (:mod:`hw.progression`): a channel's ``B'`` and ``S``, its code mask ``2^b - 1`` (``b``: its
# stage's bits) and the descending flag; where the unit also lists thresholds, a top bit says which a word holds.

def progression_word_bits(code_bits: int, shape: ProgressionShape) -> int:
    """Bits of one channel's progression word in a unit of ``code_bits`` codes: ``B'``, ``S``, mask, flag."""
    return shape.base_bits + shape.step_bits + code_bits + 1


def threshold_unit_word_bits(code_bits: int, threshold_bits: int, progression: ProgressionShape | None = None) -> int:
    """Bits of one channel's word in a threshold unit of ``code_bits`` codes: its listed thresholds
    (:func:`threshold_word_bits`); with ``progression``, the wider of the listed thresholds (of
    ``progression.table_code_bits`` bits, none where 0) and a progression word (:func:`progression_word_bits`),
    plus the form bit on top where the unit has both."""
    if progression is None:
        return threshold_word_bits(code_bits, threshold_bits)
    table = progression.table_code_bits
    listed = threshold_word_bits(table, threshold_bits) if table else 0
    return max(listed, progression_word_bits(code_bits, progression)) + bool(table)


def progression_words(stage: Thresholds, bound: int, code_bits: int, threshold_bits: int, shape: ProgressionShape,
                      channels: int) -> list[int]:
    """The word of each of ``channels`` channels (``stage``'s, then padding channels of code 0) in a unit of
    ``code_bits`` codes (listing thresholds of ``threshold_bits``) with progression words of ``shape``: ``B'``
    (two's complement) from bit 0, ``S``, the mask ``2^stage.bits - 1``, the descending flag, and the form bit (1)
    where the unit also lists thresholds; exact on values ``|acc| <= bound``
    (:func:`~hw.progression.stage_progressions`).
    ValueError where a channel of ``stage`` is no progression at ``shape.shift`` or a constant does not fit."""
    fits = stage_progressions(stage, shape.shift, bound)
    if fits is None:
        raise ValueError(f"the {stage.bits}-bit thresholds are no arithmetic progression at shift {shape.shift}")
    if stage.bits > code_bits or channels < len(fits):
        raise ValueError(f"{len(fits)} channels of {stage.bits}-bit codes do not fit {channels} channels of "
                         f"{code_bits}-bit codes")
    bb, sb = shape.base_bits, shape.step_bits
    form = int(bool(shape.table_code_bits)) << (threshold_unit_word_bits(code_bits, threshold_bits, shape) - 1)
    mask, words = 2 ** stage.bits - 1, []
    for (b, s), desc in zip(fits, np.asarray(stage.descending, dtype=bool).tolist()):
        base = b - s
        if abs(base) > 2 ** (bb - 1) - 1 or s >= 2 ** sb:
            raise ValueError(f"progression B' = {base}, S = {s} does not fit base_bits={bb}, step_bits={sb}")
        words.append(form | (base & ((1 << bb) - 1)) | s << bb | mask << (bb + sb) | int(desc) << (bb + sb + code_bits))
    return words + [form] * (channels - len(fits))


# Requantize: unsigned multiplier M, signed bias B and a shift per channel.

def requantize_arrays(stage: Requantize) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, B, shift)`` of ``stage`` as int64 vectors, one entry per channel, checked."""
    m, b, sh = (np.asarray(a).astype(np.int64).reshape(-1)
                for a in (stage.multiplier, stage.bias, stage.shift))
    if not (m.size == b.size == sh.size >= 1):
        raise ValueError(f"multiplier, bias and shift need one entry per channel, got {m.size}, {b.size}, {sh.size}")
    if m.min() < 0:
        raise ValueError(f"multipliers must be non-negative, got {int(m.min())}")
    if sh.min() < 0:
        raise ValueError(f"shifts must be non-negative, got {int(sh.min())}")
    return m, b, sh


def multiplier_bits(stage: Requantize) -> int:
    """Unsigned width of the largest multiplier (25 for the compiler's 24 significant bits
    when rounding reaches ``2^24``, else 24)."""
    return max(1, int(requantize_arrays(stage)[0].max()).bit_length())


def bias_bits(stage: Requantize) -> int:
    """Signed width of the largest ``|bias|``, at least 2 (the narrowest that :class:`hw.requantize.RequantizeUnit`
    stores: biases all 0, with shifts all 0, would need 1)."""
    return max(2, signed_bits(int(np.abs(requantize_arrays(stage)[1]).max())))


def max_shift(stage: Requantize) -> int:
    """The largest shift of ``stage``: the shifts a :class:`hw.requantize.RequantizeUnit` must hold."""
    return int(requantize_arrays(stage)[2].max())


def out_bits(stage: Requantize, in_bound: int) -> int:
    """Signed output width holding ``y`` for every ``|acc| <= in_bound`` (from :meth:`Requantize.bound`)."""
    if in_bound < 0:
        raise ValueError(f"in_bound must be >= 0, got {in_bound}")
    requantize_arrays(stage)
    return signed_bits(stage.bound(int(in_bound)))


def requantize_words(stage: Requantize, multiplier_bits: int, bias_bits: int, max_shift: int) -> list[int]:
    """The memory word of each channel: ``M | B << multiplier_bits | shift << (multiplier_bits + bias_bits)``
    (checks that every constant fits its field)."""
    m, b, sh = requantize_arrays(stage)
    if int(m.max()) >= 2 ** multiplier_bits:
        raise ValueError(f"multiplier {int(m.max())} does not fit multiplier_bits={multiplier_bits}")
    if np.abs(b).max() > 2 ** (bias_bits - 1) - 1:
        raise ValueError(f"bias {int(b[np.abs(b).argmax()])} does not fit bias_bits={bias_bits}")
    if int(sh.max()) > max_shift:
        raise ValueError(f"shift {int(sh.max())} exceeds max_shift={max_shift}")
    mask = (1 << bias_bits) - 1
    return [int(mi) | (int(bi) & mask) << multiplier_bits | int(si) << (multiplier_bits + bias_bits)
            for mi, bi, si in zip(m.tolist(), b.tolist(), sh.tolist())]


def shift_bits(max_shift: int) -> int:
    """Bits of the shift field for shifts ``0..max_shift``."""
    return max(1, max_shift.bit_length())


def requantize_word_bits(multiplier_bits: int, bias_bits: int, max_shift: int) -> int:
    """Bits of one channel's requantize word: ``M``, ``B`` and the shift."""
    return multiplier_bits + bias_bits + shift_bits(max_shift)
