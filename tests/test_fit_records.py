"""The fit estimate (boards.fit) against the counts of routed builds recorded in benchmarks/results: block RAM,
SPRAM and DSPs, which the estimate counts exactly, equal the recorded ones (no build is run here)."""

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

from boards.boards import BOARDS
from boards.fit import estimate, network_blocks, network_estimate
from compiler.format import load
from hw.engine_params import EngineParams
from hw.network_params import NetworkParams

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def test_the_link_bridge_multiplier_is_counted_on_the_ecp5():
    """ResNet-20's 35-bit logits are 5 bytes an OUT word, not a power of two: the bridge's frame length (words
    times 5, hw.link) takes a MULT18X18D beside the requantize unit's 4 (board_builds.json, eda2dd9: 5)."""
    resnet20 = load(ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq")
    params = NetworkParams.for_model(resnet20, 8, 16, multiply_cols=4)
    assert network_estimate(BOARDS["ulx3s-85f"], params)["DSP"] == 5
    digits = load(ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq")      # 30-bit logits: 4 bytes, a shift
    assert network_estimate(BOARDS["ulx3s-85f"], NetworkParams.for_model(digits, 8, 8, multiply_cols=2))["DSP"] == 4


def test_stage_constants_written_in_pieces_take_whole_byte_lanes_on_the_ecp5():
    """The shared stage memory of the 4/4-outer-width digits CNN at 2 x 2 (outer_widths_hw.json, cfc6dbf): 7 pieces
    of 20 bits (134 of them read), each written alone; a DP16KD's write enables are per 9-bit lane, so a piece
    takes 3 lanes (the last, 14 bits read, 2): 20 lanes, 5 blocks of 36 bits where 140 bits would be 4. The ECP5
    build took 25 DP16KD, the iCE40's (per-bit write masks) 28 EBR."""
    records = json.loads((RESULTS / "outer_widths_hw.json").read_text())
    counted = {}
    for r in records:
        if r["model"] == "digits-w3a3-o4-4.lcq":
            params = EngineParams.from_dict(r["engine"]["params"])
            counted[r["board"]] = (estimate(BOARDS[r["board"]], params)["EBR"], r["resources"]["EBR"]["used"])
    assert counted["ulx3s-85f"] == (25, 25)


def test_the_network_cores_banked_weights_are_counted_bank_by_bank():
    """ResNet-20's whole-network core at 8 x 16 on the ULX3S-85F (board_builds.json, eda2dd9: 175 DP16KD): its
    48-bit x 16,864-word weights buffer is 16 banks of 1,024 words (3 blocks each) and one of 480 (2, as 512 x 36),
    50 blocks where the whole buffer would take 51 (hw.banked)."""
    resnet20 = load(ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq")
    params = NetworkParams.for_model(resnet20, 8, 16, multiply_cols=4)
    assert network_estimate(BOARDS["ulx3s-85f"], params)["EBR"] == 175


# Configurations whose block RAMs the estimate counts over the build's, each with what it is known to count
# over: an estimate over the part's count refuses a core that fits, one under it is a failed build.
OVER_COUNTED: dict[tuple[str, str, str], str] = {
    ("ulx3s-12f", "digits-tiny-darknet-lcq-w3a3.lcq", "network"):
        "the vector unit's activate thresholds, 80 words of 69 bits (progression words): Yosys maps them to one "
        "PDPW16KD, 72 bits by 256 words (a read and a write port), the estimate to two blocks of 36 bits (25 EBR "
        "built, 26 estimated)",
}


def test_the_estimate_counts_the_block_rams_spram_and_dsps_of_the_newest_build_of_each_configuration():
    """benchmarks/fit_accuracy.py over the newest recorded build of each configuration (board, model, mode, array,
    multiplying columns, residency) whose core today's code builds alike (or whose model is not here: a layer
    engine's record names all of it): the estimate's SPRAM and DSPs are the build's, its block RAMs too or, for the
    configurations of :data:`OVER_COUNTED`, more, never fewer. A new record whose counts the estimate misses fails
    here: follow the hardware in boards/fit.py."""
    module = load_benchmark("fit_accuracy")
    rows, _ = module.audit(module.newest_records(module.build_records()))
    checked = [row for row in rows if row["current"] is not False]
    assert len(checked) >= 16
    for row in checked:
        what = f"{row['source']} ({row['board']}, {row['model']}, {row['mode']}, {row['rows']} x {row['cols']})"
        for name in ("SPRAM", "DSP"):
            assert row["estimate"][name] == row["actual"][name], f"{what}: {name}"
        if (row["board"], row["model"], row["mode"]) in OVER_COUNTED:
            assert row["estimate"]["EBR"] > row["actual"]["EBR"], f"{what}: EBR right: drop it from OVER_COUNTED"
        else:
            assert row["estimate"]["EBR"] == row["actual"]["EBR"], f"{what}: EBR"


def test_the_ecp5_network_cores_small_memories_are_in_logic_cells_and_its_code_buffer_lane_by_lane():
    """On the ECP5 Yosys builds a memory in distributed RAM where that costs it less than block RAM (its
    memory_libmap costs): the digits CNN's 16-word product tables (46 bits: 12 TRELLIS_DPR16X4 against 2 DP16KD) and
    64-pixel image; and the whole-network core's code buffer is a memory per lane (hw.code_buffer, registered
    writes), 8-bit x 192 words at 8 x 8 (a DP16KD each), 8-bit x 128 at 16 x 16 (in logic cells). So the routed
    builds of board_builds.json: 43 DP16KD at 8 x 8 on the OrangeCrab-25F (the estimate was 54), 55 at 16 x 16 on
    the ULX3S-85F (92). The UP5K has no distributed RAM (the iCEBreaker's 1 x 1: 28 EBR, as its builds count)."""
    digits = load(ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq")
    at = {}
    for board, rows, cols, multiply_cols in (("orangecrab-25f", 8, 8, 2), ("ulx3s-85f", 16, 16, 4)):
        params = NetworkParams.for_model(digits, rows, cols, multiply_cols=multiply_cols)
        blocks = {name: count for name, _, _, count in network_blocks(BOARDS[board], params)}
        at[rows, cols] = (blocks["activations"], blocks["tables"], blocks["image staging"],
                          network_estimate(BOARDS[board], params)["EBR"])
    assert at == {(8, 8): (8, 0, 0, 43), (16, 16): (0, 0, 0, 55)}
    assert network_estimate(BOARDS["icebreaker"], NetworkParams.for_model(digits, 1, 1))["EBR"] == 28


def test_a_value_memory_of_few_words_is_in_logic_cells_on_the_ecp5():
    """LeNet's value memory holds its 10 logits (29 bits x 10 words, one column of hw.column_memory): Yosys built it
    in distributed RAM, and its 4 x 4 core on the ULX3S-12F took 24 DP16KD (board_builds.json #187), where the
    estimate counted a block for it (25)."""
    lenet = load(ROOT / "benchmarks" / "results" / "models" / "digits-lenet-lcq-w3a3.lcq")
    params = NetworkParams.for_model(lenet, 4, 4, multiply_cols=1)
    assert (params.value_depth, params.value_bits) == (10, 29)
    blocks = {name: count for name, _, _, count in network_blocks(BOARDS["ulx3s-12f"], params)}
    assert blocks["values"] == 0 and network_estimate(BOARDS["ulx3s-12f"], params)["EBR"] == 24


@pytest.fixture(scope="module")
def audited() -> tuple[list[dict], list[dict]]:
    """benchmarks/fit_accuracy.py's audit of every recorded build (rows, skipped): ~1 s, once for this file."""
    module = load_benchmark("fit_accuracy")
    return module.audit(module.build_records())


def test_no_build_that_failed_placement_unforced_had_an_estimate_the_fit_rule_accepts(audited):
    """The UP5K's whole-network core: 7 builds of the digits CNN at 1 x 1 estimated at 5,213 logic cells, within
    the part's 5,280, failed placement (board_builds.json #69 .. #122: 5,204 to 5,283 packed cells). The fit rule
    (boards.fit.logic_limit: 5,203 cells on the UP5K, the fewest of a failed placement less one) refuses each of their
    estimates; a build forced past the estimate is the user's to try. The SqueezeNet-style net's 1 x 1 core
    (#182), estimated at the digits CNN's 5,128 cells, packed in 5,560: the estimate of today's core, which counts
    its max-pooling unit (boards.fit.NETWORK_UNIT_CELLS_ICE40), is over the limit."""
    rows, skipped = audited
    failed = [row for row in rows + skipped if row["status"] == "failed" and row["reached"] == "placement"
              and not row["forced"] and isinstance(row["then"], dict)]
    assert len(failed) >= 8
    for row in failed:
        if row["then"]["LUT4"] > row["logic_limit"]:
            continue
        r, path = row["record"], load_benchmark("fit_accuracy").model_path(row["model"])
        today = NetworkParams.for_model(load(path), row["rows"], row["cols"], multiply_cols=r.get("multiply_cols", 0))
        assert network_estimate(BOARDS[row["board"]], today)["LUT4"] > row["logic_limit"], row["source"]


def test_the_icebreaker_digits_networks_estimate_holds_its_newest_routed_build_within_the_limit(audited):
    """The core the picker takes for the digits CNN on the iCEBreaker (1 x 1, the only array whose estimate fits)
    is estimated at no fewer logic cells than the newest routed build of today's core counted, and is within the
    fit rule's limit: a build that grew past the estimate fails here (recalibrate boards.fit.NETWORK_CELLS_ICE40)."""
    from boards.fit import logic_limit, network_for_board

    rows, _ = audited
    board = BOARDS["icebreaker"]
    chosen = network_for_board(load(ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"), board)
    assert (chosen.params.engine.rows, chosen.params.engine.cols) == (1, 1)
    routed = [row for row in rows if row["board"] == "icebreaker" and row["mode"] == "network" and row["routed"]
              and row["current"] and (row["rows"], row["cols"]) == (1, 1) and row["time"]]
    newest = max(routed, key=lambda row: row["time"])
    assert newest["actual"]["LUT4"] <= chosen.estimate["LUT4"] <= logic_limit(board, network=True), newest["source"]
