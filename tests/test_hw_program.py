"""Host side of the layer engine (hw.program): beat layouts, wide words, fit checks, resident layout."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from compiler.format import load
from hw.engine_params import ACTS, WEIGHTS, EngineParams
from hw.program import (act_beats, check_fits, check_registers, decode_outputs, layer_beats, output_words,
                        resident_bases, resident_beats, table_words, weight_words)
from hw.stage_words import bias_bits, max_shift, multiplier_bits, out_bits

DATA = Path(__file__).resolve().parent / "data"
RESNET20 = load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"


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


def test_weight_words_by_hand():
    """A 2 x 2 LUT engine (3-bit words: sign on top of k) and a 3 x 1 x 2 x 2 kernel, packed by hand.

    Order: channel tile, ky, kx, input channel (padded to 2 rows); column 0 lowest."""
    params = replace(EngineParams.for_model(RESNET20, 2, 2), multiply=False)
    assert params.weight_bits == 3
    codes = np.array([[[[1, -2], [3, 0]]],                      # output channel 0: [ky][kx]
                      [[[-1, 2], [0, -3]]],                     # output channel 1
                      [[[2, 0], [-1, 1]]]], dtype=np.int8)      # output channel 2 (tile 1, column 1 is padding)
    node = replace(RESNET20.convs[1], weight_codes=codes, kernel=2)
    #                  column 1 | column 0; second word of each pair: input channel 1 (padding)
    assert weight_words(params, node) == [
        0b101_001, 0, 0b010_110, 0, 0b000_011, 0, 0b111_000, 0,   # tile 0: (ky, kx) = 00, 01, 10, 11
        0b000_010, 0, 0b000_000, 0, 0b000_101, 0, 0b000_001, 0]   # tile 1
    # Where PEs multiply, a "multiply" layer's word holds the level W[k], not k, in 8 bits:
    # (ky, kx) = 01 of tile 0 holds codes -2 | +2, so W[2] = 85 = 0b1010101 with sign 1 | 0.
    levels = replace(node, mac="multiply", w_levels=np.array([0, 42, 85, 127]))
    assert weight_words(replace(params, multiply=True), levels)[2] == 0b1_1010101 | 0b0_1010101 << 8


def test_weight_words_layout_and_zero_padding():
    params = EngineParams.for_model(RESNET20, 3, 5)
    node = RESNET20.convs[1]
    words = weight_words(params, node)
    # Order: channel tile, ky, kx, input channel (groups of rows); cols codes per word.
    assert len(words) == 4 * 3 * 3 * 18                          # ceil(16 / 5) tiles, ceil(16 / 3) * 3 channels
    code = int(node.weight_codes[6, 2, 1, 0])                    # tile 1, column 1; ky 1, kx 0; channel 2
    word = words[((1 * 3 + 1) * 3 + 0) * 18 + 2]
    field = fields(word, params.weight_bits, 5)[1]
    magnitude, negative = field % 2 ** (params.weight_bits - 1), field >= 2 ** (params.weight_bits - 1)
    assert (-magnitude if negative else magnitude) == code and not (negative and magnitude == 0)
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


def test_engine_params_round_trip_through_json():
    import json

    for params in (EngineParams.for_model(RESNET20, 8, 16, resident="weights"), EngineParams.for_model(RESNET20, 2, 2)):
        assert EngineParams.from_dict(json.loads(json.dumps(params.describe()))) == params
    d = EngineParams.for_model(RESNET20, 2, 2).describe()
    with pytest.raises(ValueError, match="engine parameters must be a dict with the keys"):
        EngineParams.from_dict({k: v for k, v in d.items() if k != "rows"})
    with pytest.raises(ValueError, match="requantize must be null or a dict"):
        EngineParams.from_dict({**d, "requantize": {"multiplier_bits": 24}})
    with pytest.raises(ValueError, match="rows must be an integer in 1..256, got 0"):
        EngineParams.from_dict({**d, "rows": 0})
    # An engine described before multiply_cols existed multiplied in every column.
    assert EngineParams.from_dict({k: v for k, v in d.items() if k != "multiply_cols"}).multiply_cols == 0
    with pytest.raises(ValueError, match=r"multiply_cols must be 0 \(every column\), or 1..cols=2 .* got 3"):
        EngineParams.from_dict({**d, "multiply_cols": 3})
    with pytest.raises(ValueError, match=r"or 1..cols=2 for an engine that multiplies, got 1"):
        EngineParams.from_dict({**d, "multiply": False, "wide_depth": 0, "multiply_cols": 1})


def test_multiplying_layers_run_in_channel_tiles_of_the_multiplying_columns():
    """With ``multiply_cols``, ResNet-20's 8-bit edge layers (conv1 16 channels, the FC 10) take channel tiles of
    that many columns, their weights in those columns of each word (0 in the others) and their stage constants
    in as many slots; the 3-bit layers keep tiles of ``cols``."""
    params = EngineParams.for_model(RESNET20, 4, 8, resident="all", multiply_cols=3)
    first, second = RESNET20.convs[0], RESNET20.convs[1]
    assert first.mac == "multiply" and second.mac == "lut"
    assert (params.layer_cols(first), params.layer_cols(second)) == (3, 8)
    words = weight_words(params, first)
    assert len(words) == 6 * 9 * 1 * 4                           # ceil(16 / 3) tiles, 3 x 3 taps, 1 group of 4 rows
    bits = params.weight_bits
    for tile in range(6):
        for word in words[tile * 36:(tile + 1) * 36]:
            assert fields(word, bits, 8)[3:] == [0] * 5            # only the 3 multiplying columns hold weights
    # tile 1, column 2 is output channel 5: its weight at ky = 0, kx = 1, input channel 2
    code = int(first.weight_codes[5, 2, 0, 1])
    field = fields(words[36 + 1 * 4 + 2], bits, 8)[2]
    assert field & 0x7f == int(first.w_levels[abs(code)]) and field >> 7 == int(code < 0)
    bases = resident_bases(RESNET20, params, "all")
    assert bases[second.name].stage - bases[first.name].stage == 6       # conv1's stage slots: one per tile of 3
    # conv1 in 6 tiles instead of 2, the FC in 4 instead of 2
    assert params.stage_depth == EngineParams.for_model(RESNET20, 4, 8, resident="all").stage_depth + 4 + 2


def test_count_registers_are_as_wide_as_the_buffers_bound_them():
    """The counts a layer's registers hold are bounded by the buffers (positions by ``pos_depth``, channel
    tiles by ``stage_depth``, ...): the engine makes them as wide as that, narrower than its addresses, and a
    program value past the width is refused, naming the register."""
    params = EngineParams.for_model(load(DIGITS), 1, 2, resident="all")
    assert params.register_bits("positions") == params.pos_depth.bit_length() + 1 < params.reg_bits
    assert params.register_bits("c_out") == (params.stage_depth << params.col_bits).bit_length() + 1
    assert params.register_bits("weight_base") == params.reg_bits
    assert params.register_bits("in_h") == params.dim_bits
    check_registers(params, {"positions": params.pos_depth, "weight_base": params.weight_depth - 1})
    with pytest.raises(ValueError, match=r"register positions = 1000 does not fit its 8 signed bits"):
        check_registers(params, {"positions": 1000})


def test_multiplying_layers_with_more_weights_than_the_lut_layers(small_cnn):
    """Split weights (the whole-network core): a multiplying layer's weights go to the wide weights buffer and are
    checked against its depth, not the LUT layers' weights buffer; here the 8-bit first layer (64 -> 64 channels)
    holds more words than every LUT layer together, and the resident constants load at their bases."""
    from compiler.lower import compile_model
    from hw.engine_params import WIDE_WEIGHTS
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((64, 4, 4), QuantPlan("lcq", 3, 3), seed=3, widths=(64, 2, 2)), (64, 4, 4))
    params = EngineParams.for_model(model, 2, 2, resident="all", split_weights=True)
    assert params.wide_depth > params.weight_depth
    beats = resident_beats(model, params)
    wide = [addr for target, addr, _ in beats if target == WIDE_WEIGHTS]
    assert sorted(wide) == list(range(params.wide_depth))
    assert max(addr for target, addr, _ in beats if target == WEIGHTS) == params.weight_depth - 1


def test_load_addresses_cover_the_wide_weights_buffer(small_cnn):
    """A load beat's address reaches every word of the wide weights buffer: where it is the deepest buffer, the
    engine's and the whole-network core's ``addr_bits`` are its, and the core's constants encode as LOAD frames."""
    from boards.traffic import network_info
    from compiler.lower import compile_model
    from hw.network_params import NetworkParams
    from hw.network_program import load_beats
    from hw.protocol import encode_loads
    from lcq_train.plan import QuantPlan

    model = compile_model(small_cnn((64, 4, 4), QuantPlan("lcq", 3, 3), seed=3, widths=(64, 2, 2)), (64, 4, 4))
    params = NetworkParams.for_model(model, 2, 2)
    assert params.engine.addr_bits == params.addr_bits == (params.engine.wide_depth - 1).bit_length()
    assert encode_loads(load_beats(model, params), network_info(model, params, 512))


def test_requantize_stages_wider_than_the_units_are_refused():
    """A layer whose requantize constants or output need more bits than the engine's units have is refused,
    naming the layer, the width, the value and the limit: a narrower output unit wraps (the fc layer's
    -8548678 came back as 8228538 from an engine with one bit too few)."""
    params = EngineParams.for_model(RESNET20, 8, 8)
    fc = RESNET20.convs[-1]
    check_fits(params, fc)
    q = params.requantize
    need = {"multiplier_bits": multiplier_bits(fc.stage), "bias_bits": bias_bits(fc.stage),
            "max_shift": max_shift(fc.stage), "out_bits": out_bits(fc.stage, fc.acc_bound)}
    for name, value in need.items():
        narrow = replace(params, requantize=replace(q, **{name: value - 1}))
        with pytest.raises(ValueError, match=rf"layer 'fc' does not fit the engine: its requantize stage needs "
                                             rf"{name}={value} \(the engine's units have {value - 1};"):
            layer_beats(narrow, fc)


def test_activation_codes_outside_the_layers_width_are_refused():
    """A code past the layer's ``abits`` would spill into the next lane of its word (or read a table entry the
    layer does not load); a negative or fractional one is no code either: each is refused, naming the layer, the
    value, where it is and the range."""
    params = EngineParams.for_model(RESNET20, 4, 4)
    node = RESNET20.convs[1]                                    # 3-bit codes in an engine of 8-bit lanes
    codes = np.zeros(node.in_shape, dtype=np.int64)
    act_beats(params, node, codes + 7)
    for value in (8, 256, -1):
        bad = codes.copy()
        bad[0, 1, 2] = value
        with pytest.raises(ValueError, match=rf"layer 'blocks.0.conv1' takes 3-bit codes 0..7, got {value} at "
                                             rf"\(channel, y, x\) = \(0, 1, 2\)"):
            act_beats(params, node, bad)
    with pytest.raises(ValueError, match="layer 'blocks.0.conv1' takes integer codes, got an array of float64"):
        act_beats(params, node, codes + 2.5)


def test_multiplying_layers_tables_hold_8_bit_levels_beside_narrow_products():
    """Outer widths 4/4 give the LUT layers 7-bit products (``product_bits`` 7), while the 8-bit edge layers
    multiply levels up to 255: their table entries hold each level whole in its low 8 bits, under the flag."""
    params = replace(EngineParams.for_model(load(DIGITS), 2, 2), product_bits=7)
    node = load(DIGITS).convs[0]
    assert node.mac == "multiply" and int(max(node.a_levels)) == 255
    words = table_words(params, node)
    flag = 1 << (params.table_bits - 1)
    assert [w & 0xFF for w in words] == [int(a) for a in node.a_levels] and all(w & flag for w in words)


def test_lut_layers_with_products_wider_than_the_tables_are_refused():
    """An engine generated for narrower outer widths (7-bit products at 4/4) refuses a layer of 8/8 levels, naming
    the layer, the width and the limit (the table words would not hold its products)."""
    params = EngineParams.for_model(RESNET20, 4, 4)
    node = RESNET20.convs[1]
    assert node.mac == "lut" and params.product_bits == 15
    with pytest.raises(ValueError, match=r"layer 'blocks.0.conv1' does not fit the engine: its products W\[k\] \* "
                                         r"A\[j\] need 15 bits \(product_bits=7\)"):
        layer_beats(replace(params, product_bits=7), node)


def test_the_whole_network_core_of_another_model_is_refused():
    """The program and the image of a model are refused on a core generated for another (the ResNet-20's, whose
    engine holds every digits layer): a program longer than the core's program memory, pixels past its staging
    buffer would be lost; the error names both sizes and the fix."""
    from hw.network_params import NetworkParams
    from hw.network_program import image_beats, load_beats

    digits = load(DIGITS)
    params = NetworkParams.for_model(RESNET20, 8, 8)
    fix = r"generate the core for this model \(NetworkParams.for_model\)"
    with pytest.raises(ValueError, match=rf"the program of this model takes 159 words, the core's program memory "
                                         rf"holds {params.program_depth}; {fix}"):
        load_beats(digits, params)
    with pytest.raises(ValueError, match=rf"an image of 1 x 64 pixels \(channels x positions\) does not match the "
                                         rf"core's staging buffer of 3 x 1024; {fix}"):
        image_beats(digits, params, np.zeros(digits.input.shape, np.uint8))


@pytest.mark.parametrize("rows, cols", [(0, 2), (2, 0), (-1, 2), (2, 2.0), (True, 2), (257, 2)])
def test_an_array_of_no_rows_or_columns_is_refused_by_name(rows, cols):
    """EngineParams.for_model (and NetworkParams.for_model through it) with 0 rows or columns, from Python (the CLI
    refuses them), ended in a ZeroDivisionError while sizing the layers."""
    from hw.network_params import NetworkParams

    model = load(DIGITS)
    name, value = ("rows", rows) if not (isinstance(rows, int) and 1 <= rows <= 256) or isinstance(rows, bool) \
        else ("cols", cols)
    for make in (EngineParams.for_model, NetworkParams.for_model):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer in 1\.\.256, got {value!r}$"):
            make(model, rows, cols)
