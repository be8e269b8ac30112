"""Output codes from thresholds in arithmetic progression (hw/progression.py, the search of hw/thresholds.py) in
Amaranth's simulator, bit-exact against compiler.graph's Thresholds.apply: wide and narrower stages, descending
channels, constant rows, rows the compiler clamped at the accumulators' bound, and a unit that also lists
thresholds; which stages an engine searches, and what that saves."""

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from compiler.graph import Thresholds, signed_bits  # noqa: E402
from compiler.lower import compile_model  # noqa: E402
from hw.engine_params import EngineParams, searched_stage  # noqa: E402
from hw.progression import (MAX_STAGE_SHIFT, ProgressionShape, counted_rows, fit_progression,  # noqa: E402
                            progression_bits, stage_progressions, stage_shift)
from hw.stage_words import (progression_words, threshold_bits, threshold_unit_word_bits,  # noqa: E402
                            threshold_words)
from hw.thresholds import ThresholdUnit  # noqa: E402

from test_hw_output_stage import expected, random_thresholds, run_unit, threshold_items  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def uniform_thresholds(rng: np.random.Generator, channels: int, bits: int, bound: int,
                       spread: float = 1.0) -> Thresholds:
    """A uniform quantizer's thresholds seen through random per-channel scales and biases: ``ceil(a + c * d)``, a
    third of the channels descending (``floor(a' - c * d)``, as a negative scale gives), channel 0 constant (``d =
    0``); with ``spread`` above 1 some run past ``bound`` and are clamped to ``bound + 1`` as the compiler does."""
    s = 2 ** bits - 1
    t = np.zeros((channels, s), dtype=np.int64)
    descending = rng.random(channels) < 0.34
    descending[:2] = [False, True]
    for ch in range(channels):
        d = 0.0 if ch == 0 else rng.uniform(0.05, spread * bound / s)
        a = rng.uniform(-spread * bound / 2, bound / 2 - s * d / spread)
        row = np.clip(np.ceil(a + np.arange(s) * d), -bound - 1, bound + 1)
        t[ch] = row[::-1] if descending[ch] else row
    return Thresholds(t, descending, bits)


def bounded_items(rng, stage: Thresholds, bound: int, n: int):
    """``n`` values within ``|acc| <= bound`` (at or next to a threshold of their channel, the bounds, uniform)."""
    items = []
    for _ in range(n):
        c = int(rng.integers(len(stage.thresholds)))
        kind = rng.integers(3)
        a = (int(rng.choice(stage.thresholds[c])) + int(rng.integers(-1, 2)) if kind == 0 else
             int(rng.choice([-bound, bound, 0])) if kind == 1 else int(rng.integers(-bound, bound + 1)))
        items.append((c, min(max(a, -bound), bound)))
    return items


def test_uniform_stages_are_progressions_and_listed_ones_are_not():
    rng = np.random.default_rng(3)
    bound = 40000
    stage = uniform_thresholds(rng, 6, 8, bound)
    shift = stage_shift(stage, bound)
    assert shift is not None and stage_progressions(stage, shift, bound) is not None
    assert shift == 0 or stage_progressions(stage, shift - 1, bound) is None
    for (b, s), row in zip(stage_progressions(stage, shift, bound), counted_rows(stage)):
        assert [-(-(b + c * s) >> shift) for c in range(len(row))] == row
    assert stage_shift(random_thresholds(rng, 7, 3, 2**15 - 1), 2**15 - 1) is None


def test_fit_progression():
    """Exact fits of rounded progressions, constant rows, padding, and rows that are none."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.choice([1, 3, 7, 15, 255]))
        a, d = rng.uniform(-1e9, 1e9), rng.uniform(0, 1e7) * rng.choice([0, 1, 1, 1])
        row = [int(np.ceil(a + c * d)) for c in range(n)]
        k = next(k for k in range(MAX_STAGE_SHIFT + 1) if fit_progression(row, k) is not None)
        b, s = fit_progression(row, k)
        assert s >= 0 and [_ceil_shift(b + c * s, k) for c in range(n)] == row
        assert all(fit_progression(row, j) is not None for j in range(k, k + 4))
        if k:
            assert fit_progression(row, k - 1) is None
    assert fit_progression([5, 5, 5], 0) == (5, 0)
    assert fit_progression([-7], 0) == (-7, 0)
    assert fit_progression([0, 2, 3], 0) is None and fit_progression([0, 2, 3], 1) is not None
    assert fit_progression([0, 1, 1, 5], MAX_STAGE_SHIFT) is None
    assert fit_progression([3, 2], MAX_STAGE_SHIFT) is None
    # Padding: indices after the row reach at least ``never``.
    b, s = fit_progression([10, 20, 30], 3, padding=4, never=33)
    assert [_ceil_shift(b + c * s, 3) for c in range(3)] == [10, 20, 30] and _ceil_shift(b + 3 * s, 3) >= 33
    b, s = fit_progression([10, 20, 30], 3, padding=4, never=41)
    assert [_ceil_shift(b + c * s, 3) for c in range(3)] == [10, 20, 30] and _ceil_shift(b + 3 * s, 3) == 41
    assert fit_progression([10, 20, 30], 3, padding=4, never=42) is None
    b, s = fit_progression([10], 2, padding=2, never=50)
    assert _ceil_shift(b, 2) == 10 and _ceil_shift(b + s, 2) >= 50
    assert fit_progression([10, 20, 30], 0, padding=1, never=41) is None
    assert fit_progression([10, 20, 30], 0, padding=1, never=40) == (10, 10)


def _ceil_shift(x: int, k: int) -> int:
    return -(-x // (1 << k))


def test_a_clamped_progression_fits_within_the_bound_only():
    """Thresholds clamped at ``bound + 1`` (none passes) and ``-bound - 1`` (all pass) are a progression on
    ``|acc| <= bound``: the fit need only keep them past the bound."""
    row = [-11, -11, -11, -7, -2, 3, 8, 11, 11]              # 5 * c - 22 clamped at bound 10
    assert fit_progression(row, 0) is None
    b, s = fit_progression(row, 0, bound=10)
    assert s == 5 and [b + c * s for c in range(3, 7)] == row[3:7]
    assert b + 2 * s <= -10 and b + 7 * s >= 11
    assert fit_progression([-11, 3, 3, 11], 4, bound=10) is None      # 3, 3 then past the bound: no step
    assert fit_progression([11, 11], 0, bound=10) == (11, 0) and fit_progression([-11], 0, bound=10) == (-10, 0)


@pytest.mark.parametrize("registered_word, registered_inputs, late_value", [(False, False, 0), (True, True, 2)])
def test_search_counts_as_the_listed_thresholds(registered_word, registered_inputs, late_value):
    """One unit of 8-bit codes, listing 3-bit thresholds: an 8-bit progression stage, a 5-bit one (the search's
    count clamped) and an 8-bit one clamped at the bound, then a 3-bit listed stage, loaded in turn."""
    rng = np.random.default_rng(5)
    channels, bound = 9, 2**17
    acc_bits = signed_bits(bound)
    searched = [uniform_thresholds(rng, channels, 8, bound), uniform_thresholds(rng, channels, 5, bound),
                uniform_thresholds(rng, channels, 8, bound, spread=3.0)]
    assert (np.abs(searched[2].thresholds) == bound + 1).any(axis=1).sum() >= 3
    listed = random_thresholds(rng, channels, 3, bound)
    shift = max(stage_shift(s, bound) for s in searched)
    fits = [fit for s in searched for fit in stage_progressions(s, shift, bound)]
    tb = threshold_bits(listed)
    shape = ProgressionShape(shift, *progression_bits(fits), table_code_bits=3)
    dut = ThresholdUnit(acc_bits, 8, channels, tb, registered_word=registered_word,
                        registered_inputs=registered_inputs, late_value=late_value, progression=shape)
    assert dut.latency == ThresholdUnit.LATENCY + registered_word + registered_inputs + 8
    assert dut.word_bits == threshold_unit_word_bits(8, tb, shape)
    phases = [(progression_words(s, bound, 8, tb, shape, channels), bounded_items(rng, s, bound, 120))
              for s in searched]
    phases.append((threshold_words(listed, tb), threshold_items(rng, listed, acc_bits, 60)))
    got = run_unit(dut, phases, dut.code, dut.code_valid, gaps=True, seed=1)
    for stage, (_, items), codes in zip(searched + [listed], phases, got):
        assert codes == expected(stage, items)
        assert len(set(codes)) > 4


def test_progressions_alone():
    """A unit with no listed thresholds (``table_code_bits`` 0): no form bit, padding channels code 0."""
    rng = np.random.default_rng(8)
    bound = 5000
    stage = uniform_thresholds(rng, 4, 6, bound)
    shift = stage_shift(stage, bound)
    shape = ProgressionShape(shift, *progression_bits(stage_progressions(stage, shift, bound)), table_code_bits=0)
    dut = ThresholdUnit(signed_bits(bound), 6, 6, 2, progression=shape)
    words = progression_words(stage, bound, 6, 2, shape, 6)
    assert dut.word_bits == shape.base_bits + shape.step_bits + 6 + 1 and words[4:] == [0, 0]
    items = bounded_items(rng, stage, bound, 100)
    got = run_unit(dut, [(words, items + [(4, 17), (5, -3)])], dut.code, dut.code_valid, gaps=False, seed=2)[0]
    assert got == expected(stage, items) + [0, 0]


def test_progression_words_refuse_what_does_not_fit():
    rng = np.random.default_rng(9)
    bound = 10000
    stage = uniform_thresholds(rng, 3, 8, bound)
    shift = stage_shift(stage, bound)
    base_bits, step_bits = progression_bits(stage_progressions(stage, shift, bound))
    with pytest.raises(ValueError, match="no arithmetic progression"):
        progression_words(random_thresholds(rng, 7, 3, 2**15 - 1), 2**15 - 1, 8, 16, ProgressionShape(shift, 8, 8, 3),
                          7)
    with pytest.raises(ValueError, match="does not fit base_bits"):
        progression_words(stage, bound, 8, 2, ProgressionShape(shift, base_bits - 1, step_bits, 0), 3)
    with pytest.raises(ValueError, match="do not fit 2 channels"):
        progression_words(stage, bound, 8, 2, ProgressionShape(shift, base_bits, step_bits, 0), 2)
    with pytest.raises(ValueError, match="progression shift must be an integer in 0..32"):
        ProgressionShape(33, 4, 4, 0)


# --------------------------------------------------------------------------- in an engine

@pytest.fixture(scope="module")
def lenet():
    from test_compile_flatten import _lenet
    return compile_model(_lenet(), (1, 8, 8))


def test_an_engine_searches_the_8_bit_stage_and_lists_the_inner_ones(lenet):
    """LeNet's fc1 writes the 8-bit codes that fc2 reads (a uniform quantizer): searched; conv1 and conv2 write
    LCQ's 3-bit codes: listed. Its threshold words shrink from 255 thresholds a channel to a progression's."""
    params = EngineParams.for_model(lenet, 4, 4, resident="all")
    listing = EngineParams.for_model(lenet, 4, 4, resident="all", progressions=False)
    stages = {n.name: n.stage for n in lenet.convs}
    assert params.code_bits == 8 and params.table_code_bits == 3 and listing.progression is None
    assert searched_stage(params, stages["fc1"]) and not searched_stage(params, stages["conv2"])
    assert params.stage_word_bits[0] < 200 < 255 * 19 < listing.stage_word_bits[0]
    assert sum(params.memory_bits().values()) * 2 < sum(listing.memory_bits().values())
    assert EngineParams.from_dict(params.describe()) == params
    old = {k: v for k, v in listing.describe().items() if k != "progression"}     # written before progressions
    assert EngineParams.from_dict(old) == listing
    with pytest.raises(ValueError, match="progression must be null or a dict with the keys"):
        EngineParams.from_dict({**params.describe(), "progression": {"shift": 3}})
    with pytest.raises(ValueError, match="table_code_bits are below code_bits=8"):
        EngineParams.from_dict({**params.describe(), "progression": {**params.describe()["progression"],
                                                                     "table_code_bits": 8}})
