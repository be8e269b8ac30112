"""Fit estimate of the whole-network core before synthesis: the array it picks, and the refusal
that names the buffers, their sizes and the part."""

from pathlib import Path

import pytest

from boards.boards import BOARDS
from boards.fit import FitError, check_network_fit, network_estimate, network_for_board, network_memories
from compiler.format import load
from hw.network_params import NetworkParams

DATA = Path(__file__).resolve().parent / "data"
DIGITS = load(DATA / "digits-cnn-lcq-w3a3.lcq")
RESNET20 = load(DATA / "cifar10-resnet20-lcq-w3a3.lcq")


def test_the_digits_network_on_the_ulx3s_85f_takes_the_array_that_keeps_up_with_the_link():
    """8 x 16 with the PEs of 4 columns multiplying (the ECP5's default, :func:`boards.fit.board_multiply_cols`),
    the smallest array whose computation hides behind the pixels' transfer (16 x 16 fits too); with every PE
    multiplying (``--multiply-cols 0``), 8 x 8 (whose PEs multiplying in every column make its edge layers'
    channel tiles wider): 16 x 16 would not fit the logic."""
    chosen = network_for_board(DIGITS, BOARDS["ulx3s-85f"])
    assert (chosen.params.engine.rows, chosen.params.engine.cols, chosen.params.engine.multiply_cols) == (8, 16, 4)
    assert chosen.estimate["EBR"] <= BOARDS["ulx3s-85f"].resources["EBR"] and chosen.pace["keeps_up"]
    check_network_fit(BOARDS["ulx3s-85f"], NetworkParams.for_model(DIGITS, 16, 16, multiply_cols=4))
    every = network_for_board(DIGITS, BOARDS["ulx3s-85f"], multiply_cols=0)
    assert (every.params.engine.rows, every.params.engine.cols, every.params.engine.multiply_cols) == (8, 8, 0)
    with pytest.raises(FitError, match="LUT4"):
        check_network_fit(BOARDS["ulx3s-85f"], NetworkParams.for_model(DIGITS, 16, 16))


def test_the_smallest_array_that_keeps_up_with_the_link_else_the_fastest():
    """Of the arrays that fit, the smallest whose image computes in at most LINK_SHARE of its pixels' time on the
    line: the OrangeCrab's 4 x 8 for the digits CNN (8 x 8 fits, and adds no image a second; 4 x 4 falls
    behind), ResNet-20's 8 x 16 on the ULX3S-85F (8 x 8 falls behind). Where none keeps up, the fastest: the
    ULX3S-25F's 8 x 8 for the digits CNN, a little below the link's rate. An array asked for is taken as it is,
    with its pace."""
    from boards.fit import LINK_SHARE, describe_pace, image_pace

    crab = BOARDS["orangecrab-25f"]
    chosen = network_for_board(DIGITS, crab)
    assert (chosen.params.engine.rows, chosen.params.engine.cols) == (4, 8)
    assert chosen.pace["keeps_up"] and chosen.pace["compute"] * LINK_SHARE >= chosen.pace["pixels"]
    assert chosen.pace["stream"] == pytest.approx(chosen.pace["link"])
    check_network_fit(crab, NetworkParams.for_model(DIGITS, 8, 8, multiply_cols=2))
    behind = image_pace(DIGITS, crab, NetworkParams.for_model(DIGITS, 4, 4, multiply_cols=1), 48e6)
    assert not behind["keeps_up"] and behind["compute"] < chosen.pace["compute"]
    assert describe_pace(chosen, chosen=True).startswith("4 x 8, the smallest array that keeps up with the link: "
                                                         "about 585 images/s (computing alone 2,156 at 48 MHz")
    resnet = network_for_board(RESNET20, BOARDS["ulx3s-85f"])
    slower = image_pace(RESNET20, BOARDS["ulx3s-85f"], NetworkParams.for_model(RESNET20, 8, 8, multiply_cols=4), 60e6)
    assert resnet.pace["keeps_up"] and not slower["keeps_up"]
    assert 140 < resnet.pace["compute"] < 160 and 90 < resnet.pace["link"] < 95

    fastest = network_for_board(DIGITS, BOARDS["ulx3s-25f"])
    assert (fastest.params.engine.rows, fastest.params.engine.cols) == (8, 8) and not fastest.pace["keeps_up"]
    assert 0.95 * fastest.pace["link"] < fastest.pace["stream"] < fastest.pace["link"]
    assert describe_pace(fastest, chosen=True).startswith("8 x 8, the fastest array that fits")
    asked = network_for_board(DIGITS, crab, 1, 1)
    assert (asked.params.engine.rows, asked.params.engine.cols) == (1, 1) and not asked.pace["keeps_up"]
    assert asked.pace["stream"] < asked.pace["compute"] < asked.pace["link"]
    assert describe_pace(asked, chosen=False).startswith("1 x 1, as asked: about ")
    # at half the clock (1 Mbaud still) no array of the OrangeCrab keeps up: the fastest, 8 x 8
    slow = network_for_board(DIGITS, crab, clock_hz=24e6)
    assert (slow.params.engine.rows, slow.params.engine.cols) == (8, 8) and not slow.pace["keeps_up"]


def test_every_memory_of_the_core_is_counted():
    params = NetworkParams.for_model(DIGITS, 4, 4)
    names = [name for name, *_ in network_memories(params)]
    assert {"weights", "tables", "accumulators", "values", "program", "input table", "image staging",
            "vector pool_constants"} <= set(names)
    bits = sum(w * d * c for _, w, d, c in network_memories(params))
    accumulators = params.memory_bits()["accumulators"]
    assert bits == sum(params.memory_bits().values()) + accumulators     # two read ports: two copies


def test_resnet20_fits_the_ulx3s_85f_at_8x16_and_no_array_of_the_45f():
    """With the residual additions fused into the convs the residual stream is one 16 x 32 x 32 map of
    values (573,440 bits, 32 block RAMs instead of 64), and the accumulators a ring of two bands (32 block
    RAMs at 8 x 16 instead of 64): the 8 x 16 core fits the 85F's 208 block RAMs, its PEs multiplying in 4
    columns (the edge layers' bands then take a ring of 128 accumulators, as one block RAM holds): 175, as its
    routed builds count them (board_builds.json); 16 x 16 needs 211."""
    chosen = network_for_board(RESNET20, BOARDS["ulx3s-85f"])
    assert (chosen.params.engine.rows, chosen.params.engine.cols, chosen.params.engine.multiply_cols) == (8, 16, 4)
    assert chosen.params.engine.out_depth == 128
    assert chosen.estimate["EBR"] == 175
    with pytest.raises(FitError, match="need 211 EBR blocks, the part has 208"):
        check_network_fit(BOARDS["ulx3s-85f"], NetworkParams.for_model(RESNET20, 16, 16, multiply_cols=4))
    with pytest.raises(FitError) as refused:
        network_for_board(RESNET20, BOARDS["ulx3s-45f"])
    message = str(refused.value)
    assert "LFE5U-45F" in message and "the part has 108" in message
    assert "values: 573,440 bits" in message and "weights: 809,472 bits" in message


def test_the_digits_cnn_fits_the_icebreaker_at_1x1():
    """The UP5K holds the digits CNN's whole network at 1 x 1: 28 of 30 block RAMs, the four SPRAMs (the
    weights two blocks deep, the values two wide), and the logic cells its routed builds counted (5,128, within
    the 5,203 of the part's 5,280 that nextpnr has always placed); 1 x 2 takes all 30 block RAMs and a PE's cells
    more."""
    chosen = network_for_board(DIGITS, BOARDS["icebreaker"])
    assert (chosen.params.engine.rows, chosen.params.engine.cols) == (1, 1)
    assert chosen.estimate == {"EBR": 28, "SPRAM": 4, "DSP": 5, "LUT4": 5128}
    with pytest.raises(FitError, match=r"1 x 2 whole-network core on icebreaker \(iCE40UP5K\): needs about 5296 "
                                       r"LUT4 of 5203"):
        check_network_fit(BOARDS["icebreaker"], NetworkParams.for_model(DIGITS, 1, 2))


def test_force_takes_the_array_asked_for_past_the_estimate():
    """``lcq build --force``: the array given, with the estimate that would have refused it, for the tools
    to decide; without the array there is nothing to force."""
    forced = network_for_board(DIGITS, BOARDS["icebreaker"], 1, 2, force=True)
    assert (forced.params.engine.rows, forced.params.engine.cols) == (1, 2)
    # Its block RAMs fit the estimate (30 of 30: pool constants in pieces, wide weights in the fourth SPRAM,
    # one memory for both stage units); its logic does not.
    assert forced.estimate["EBR"] == BOARDS["icebreaker"].resources["EBR"] and forced.estimate["SPRAM"] == 4
    with pytest.raises(FitError, match=r"needs about 5296 LUT4 of 5203 \(of the part's 5280: the rest is left for "
                                       r"placement\)"):
        check_network_fit(BOARDS["icebreaker"], forced.params)
    with pytest.raises(FitError, match=r"needs about 5296 LUT4 of 5280; use"):     # a limit of the whole part
        check_network_fit(BOARDS["icebreaker"], forced.params, logic_share=1.0)
    with pytest.raises(ValueError, match="give --rows and --cols"):
        network_for_board(DIGITS, BOARDS["icebreaker"], 1, None, force=True)


def test_a_side_no_array_tried_has_is_refused_naming_the_fix():
    """``--rows 3`` alone (or ``--cols 3``): no array tried has that side; both the network core's and the layer
    engine's choice say so and to give the other side too (not 'the smallest: None', or an IndexError)."""
    from boards.fit import engine_for_board

    for choose in (network_for_board, engine_for_board):
        for rows, cols, side in ((3, None, r"3 rows"), (None, 3, r"3 columns")):
            with pytest.raises(ValueError, match=rf"no array tried \(16 x 16, .*, 1 x 1\) has {side}: give both "
                                                 rf"--rows and --cols"):
                choose(DIGITS, BOARDS["icebreaker"], rows, cols)


@pytest.fixture(scope="module")
def deep_model(small_cnn):
    """A CNN whose second layer reads 256 channels of 257 x 257: 16,908,544 activation words on an array of one
    row, more than an engine's buffers address (2^24); two rows halve them."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    return compile_model(small_cnn((1, 257, 257), QuantPlan("lcq", 3, 3), seed=1, widths=(256, 4, 4)), (1, 257, 257))


def test_an_array_too_small_to_address_a_layer_is_skipped_and_named(deep_model):
    """The arrays of one row cannot hold the deep model's activations: the search goes on past them, and a
    model that fits no array is refused naming the smallest one's reason, not with that array's ValueError."""
    from boards.fit import engine_for_board

    with pytest.raises(ValueError, match="act_depth must be an integer in 1..16777216, got 16908544"):
        NetworkParams.for_model(deep_model, 1, 2)
    for choose, what in ((network_for_board, "whole-network core"), (engine_for_board, "engine")):
        with pytest.raises(FitError, match=rf"does not fit icebreaker .* the smallest: 1 x 1 {what}.* cannot hold "
                                           rf"the model: act_depth must be an integer in 1..16777216, got 16908544"):
            choose(deep_model, BOARDS["icebreaker"])


def test_a_reason_every_array_tried_has_is_not_hidden_by_the_search(deep_model):
    """Where every array tried raises a ValueError (here the two of one row), that error is raised as it is."""
    from boards.fit import engine_for_board

    for choose in (network_for_board, engine_for_board):
        with pytest.raises(ValueError, match="act_depth must be an integer in 1..16777216, got 16908544") as refused:
            choose(deep_model, BOARDS["icebreaker"], rows=1)
        assert not isinstance(refused.value, FitError)


def test_a_load_word_wider_than_the_link_buffer_is_refused_by_the_fit_check(small_cnn):
    """8-bit activation codes make a threshold word of 255 thresholds (5,611 bits): its LOAD payload takes 705 bytes,
    more than the iCE40 link bridge's 512-byte frame buffer. A forced build is refused before it starts, naming the
    word, the buffer and the fix, by the rule the bridge itself checks (:func:`hw.protocol.payload_bytes`); the
    ECP5's 2048 bytes hold it. Unforced, the block RAM the 255 threshold memories need is named first: that is the
    limit no part lifts (fewer activation bits is the fix of both)."""
    from compiler.lower import compile_model
    from lcq_train.plan import QuantPlan

    from boards.fit import check_fit, check_link_payload
    from hw.engine_params import EngineParams
    from hw.protocol import payload_bytes

    model = compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 8), seed=1), (1, 8, 8))
    network, engine = NetworkParams.for_model(model, 1, 1), EngineParams.for_model(model, 1, 1, resident="all")
    assert max(payload_bytes(network.addr_bits, network.target_bits, network.value_bits).values()) == 705
    says = (r"on icebreaker \(iCE40UP5K\): a LOAD of one 5611-bit word \(target 3\) takes 70\d bytes, the link's "
            r"frame buffer holds 512 bytes; .*fewer activation bits")
    with pytest.raises(FitError, match=rf"1 x 1 whole-network core {says}"):
        network_for_board(model, BOARDS["icebreaker"], 1, 1, force=True)
    with pytest.raises(FitError, match=rf"1 x 1 engine {says}"):
        check_link_payload(BOARDS["icebreaker"], "1 x 1 engine", engine.addr_bits, engine.target_bits,
                           engine.cols * engine.out_bits, engine.cols * engine.code_bits)
    needs_ebr = r"1 x 1 whole-network core on icebreaker .*its buffers need \d+ EBR blocks.* thresholds"
    with pytest.raises(FitError, match=needs_ebr):
        check_network_fit(BOARDS["icebreaker"], network)
    with pytest.raises(FitError, match=r"1 x 1 engine on icebreaker .*needs about \d+ EBR"):
        check_fit(BOARDS["icebreaker"], engine)
    assert network_for_board(model, BOARDS["ulx3s-85f"], 1, 1, force=True).params.target_bits == network.target_bits


def test_a_value_memory_deeper_than_any_ecp5_block_ram_is_refused_by_the_fit_check(deep_model):
    """On the ECP5 the value memory is built as columns of block RAM as deep as itself (:mod:`hw.column_memory`):
    the deep model's 16,900 values (4 x 65 x 65) are deeper than the DP16KD's deepest arrangement (16384 x 1). The
    fit check refuses it (forced too: no column holds it) naming the memory, its depth, that arrangement and the
    fix, as a FitError the search goes on past; not column_bits' ValueError. The iCE40 builds it as one memory."""
    board = BOARDS["ulx3s-85f"]
    params = NetworkParams.for_model(deep_model, 16, 16)
    assert ("values", 27, 16900, 1) in params.memories()
    says = (r"16 x 16 whole-network core on ulx3s-85f \(LFE5U-85F\): its values memory is 16,900 words deep .*the "
            r"deepest ecp5 block RAM is 16384 x 1.*; use a smaller input or fewer channels")
    with pytest.raises(FitError, match=says):
        check_network_fit(board, params)
    with pytest.raises(FitError, match=says):
        network_for_board(deep_model, board, 16, 16, force=True)
    with pytest.raises(FitError, match=rf"does not fit ulx3s-85f .* with any array tried; the smallest: {says}"):
        network_for_board(deep_model, board, 16, 16)
    with pytest.raises(FitError, match="does not fit ulx3s-85f .* with any array tried"):
        network_for_board(deep_model, board)
    assert network_estimate(BOARDS["icebreaker"], params)["EBR"] > BOARDS["icebreaker"].resources["EBR"]


def test_a_bad_multiply_cols_is_refused_naming_it():
    """``multiply_cols`` from a direct call (the CLI checks its own): a negative count reached the sizing as a
    negative channel tile and came back as another field's error ('stage_depth must be an integer in 1..16777216,
    got -20'); a count above the array's, or not an integer, likewise. Each is refused naming ``multiply_cols``,
    before any array is sized; network_for_board takes a count above an array's as all of its columns."""
    from hw.engine_params import EngineParams

    for bad in (-1, 2.5, "2", True):
        for force in (False, True):
            with pytest.raises(ValueError, match=rf"multiply_cols must be None .* got {bad!r}"):
                network_for_board(DIGITS, BOARDS["icebreaker"], 1, 1, force=force, multiply_cols=bad)
    for bad in (-1, 9, 2.5):
        with pytest.raises(ValueError, match=rf"multiply_cols must be 0 \(every column\), or 1..cols=8 .* got {bad}"):
            NetworkParams.for_model(DIGITS, 8, 8, multiply_cols=bad)
        with pytest.raises(ValueError, match=rf"multiply_cols must be 0 \(every column\), or 1..cols=8 .* got {bad}"):
            EngineParams.for_model(RESNET20, 8, 8, resident="all", split_weights=True, multiply_cols=bad)
    assert network_for_board(DIGITS, BOARDS["ulx3s-85f"], 8, 8, multiply_cols=99).params.engine.multiply_cols == 8


def test_an_output_stage_that_searches_progressions_counts_its_logic():
    """LeNet's fc1 writes 8-bit codes that its threshold units search (hw.progression): eight search stages more
    logic than listing its 3-bit thresholds, in LUT4s on the ECP5 and in logic cells on the UP5K, whose 1 x 1 core
    then does not fit (the max-pooling unit's cells count too)."""
    import dataclasses

    from boards.fit import SEARCH_CELLS_ICE40_PER_BIT, SEARCH_LUTS_PER_BIT

    lenet = load(Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "models"
                 / "digits-lenet-lcq-w3a3.lcq")
    params = NetworkParams.for_model(lenet, 4, 4, multiply_cols=1)
    assert params.engine.progression is not None and params.engine.code_bits == 8
    listing = dataclasses.replace(params, engine=dataclasses.replace(params.engine, progression=None))
    for board, per_bit in (("ulx3s-12f", SEARCH_LUTS_PER_BIT), ("icebreaker", SEARCH_CELLS_ICE40_PER_BIT)):
        added = network_estimate(BOARDS[board], params)["LUT4"] - network_estimate(BOARDS[board], listing)["LUT4"]
        assert added == 8 * per_bit
    with pytest.raises(FitError, match=r"1 x 1 whole-network core on icebreaker .* needs about \d+ LUT4 of 5203"):
        network_for_board(lenet, BOARDS["icebreaker"])
