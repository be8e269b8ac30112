"""Host side of the layer engine (hw.program): beat layouts, wide words, fit checks, resident layout."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hw needs amaranth: pip install -e '.[hw]'")

from compiler.format import load  # noqa: E402
from hw.engine_params import ACTS, WEIGHTS, EngineParams  # noqa: E402
from hw.program import (act_beats, decode_outputs, layer_beats, output_words, resident_bases,  # noqa: E402
                        resident_beats, weight_words)

DATA = Path(__file__).resolve().parent / "data"
RESNET20 = load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")


def fields(word: int, bits: int, count: int) -> list[int]:
    return [(word >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


def test_activation_words_wider_than_64_bits():
    """16 rows of 8-bit codes: 128-bit words, every field where the engine reads it."""
    params = EngineParams.for_model(RESNET20, 16, 16)
    node = RESNET20.convs[1]                                    # 16 -> 16 channels, 32 x 32
    codes = np.random.default_rng(0).integers(0, 2 ** node.abits, node.in_shape)
    beats = act_beats(params, node, codes)
    assert {t for t, _, _ in beats} == {ACTS} and len(beats) == 32 * 32
    _, addr, word = beats[5 * 32 + 7]
    assert addr == 5 * 32 + 7 and word >= 2 ** 64
    assert fields(word, params.abits, 16) == codes[:, 5, 7].tolist()


def test_weight_words_layout_and_zero_padding():
    params = EngineParams.for_model(RESNET20, 3, 5)
    node = RESNET20.convs[1]
    words = weight_words(params, node)
    # Order: channel tile, ky, kx, input channel (groups of rows); cols codes per word.
    assert len(words) == 4 * 3 * 3 * 18                          # ceil(16 / 5) tiles, ceil(16 / 3) * 3 channels
    code = int(node.weight_codes[6, 2, 1, 0])                    # tile 1, column 1; ky 1, kx 0; channel 2
    word = words[((1 * 3 + 1) * 3 + 0) * 18 + 2]
    field = fields(word, params.weight_bits, 5)[1]
    assert field == (int(code < 0) << (params.weight_bits - 1) | abs(code))
    assert fields(words[3 * 9 * 18], params.weight_bits, 5)[1:] == [0, 0, 0, 0]   # channels 16..19 do not exist


def test_outputs_decode_signed_fields_per_channel_tile():
    params = EngineParams.for_model(RESNET20, 8, 8)
    node = RESNET20.convs[-1]                                   # fc: 10 channels, one position
    want = np.array([-5, 3, 0, 7, -1, 2, 9, -8, 4, -3]).reshape(10, 1, 1)
    bits = params.out_bits
    padded = np.zeros(16, dtype=np.int64)
    padded[:10] = want.reshape(-1)
    words = [sum((int(v) & ((1 << bits) - 1)) << (c * bits) for c, v in enumerate(padded[t * 8:(t + 1) * 8]))
             for t in range(2)]
    assert output_words(params, node) == 2
    assert (decode_outputs(params, node, words) == want).all()
    with pytest.raises(ValueError, match="returns 2 words, got 1"):
        decode_outputs(params, node, words[:1])


def test_resident_layout_and_fit_errors():
    params = EngineParams.for_model(RESNET20, 8, 8, resident="all")
    bases = resident_bases(RESNET20, params)
    assert bases[RESNET20.convs[0].name].weight == 0
    assert sorted(b.weight for b in bases.values()) == [b.weight for b in bases.values()]
    assert sorted(b.stage for b in bases.values()) == [b.stage for b in bases.values()]
    assert sum(1 for t, _, _ in resident_beats(RESNET20, params) if t == WEIGHTS) == params.weight_depth
    with pytest.raises(ValueError, match="do not fit the engine's buffers"):
        resident_bases(RESNET20, EngineParams.for_model(RESNET20, 8, 8))
    with pytest.raises(ValueError, match=r"Residency must be one of 'none', 'weights', 'all', not True"):
        EngineParams.for_model(RESNET20, 8, 8, resident=True)


def test_weights_resident_layout():
    """Weights at running bases, loaded once; tables and stage constants at 0, sent with each layer."""
    params = EngineParams.for_model(RESNET20, 8, 8, resident="weights")
    alone = EngineParams.for_model(RESNET20, 8, 8)
    assert params.weight_depth == EngineParams.for_model(RESNET20, 8, 8, resident="all").weight_depth
    assert (params.table_depth, params.stage_depth) == (alone.table_depth, alone.stage_depth)
    bases = resident_bases(RESNET20, params, "weights")
    assert all(b.table == b.stage == 0 for b in bases.values())
    loaded = resident_beats(RESNET20, params, "weights")
    assert {t for t, _, _ in loaded} == {WEIGHTS} and len(loaded) == params.weight_depth
    assert resident_beats(RESNET20, params, "none") == []
    small = EngineParams.for_model(load(DATA / "digits-cnn-lcq-w3a3.lcq"), 8, 8)
    with pytest.raises(ValueError, match=r"layer 'conv1' does not fit the engine: .*act_depth .*"
                                         r"Generate the engine for this model"):
        layer_beats(small, RESNET20.convs[0])
