"""The PE array's generated Verilog in Icarus and Verilator (cocotb), bit-exact against the integer reference.

A 3 x 4 ``PEArray`` ("rom", "row_vector" and the engine's "row_table" variants, the last
with its row tables loaded first) holds a real slice of a compiled LCQ layer (weight codes
and level tables of a small CNN's conv compiled at W2/A2, W3/A3, W4/A4), then weights
covering every code; random activation codes stream through with random stalls and random
``psum_in``; every column output must equal ``psum_in + compiler.reference.lut_accumulate``
of the slice (wrapped to the accumulator).

By default each of the nine (variant, bits) arrays runs on one simulator (a Latin square:
Verilator the three of :data:`ON_VERILATOR`, one per variant and per bit width, Icarus the six
others); ``-m slow`` runs every array on both. Icarus builds each array alone (under a second).
Verilator's C++ build costs seconds whatever the design's size, so the arrays the session's
Verilator tests simulate share one build (``sim.bundle.Bundle``),
kept in ``build/sim/verilator-pe-array`` (``LCQ_SIM_BUILD`` moves ``build/sim``): a later
run with unchanged Verilog rebuilds in ~0.1 s.
"""

import dataclasses
import functools
import random

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="simulation tests need amaranth: pip install -e '.[hw]'")

from helpers import small_cnn  # noqa: E402

from compiler.lower import compile_model  # noqa: E402
from compiler.reference import accumulate, lut_accumulate  # noqa: E402
from hw.pe import VARIANTS, PEArray  # noqa: E402
from lcq_train.plan import QuantPlan  # noqa: E402
from sim.runner import SimulationFailed, build, run_cocotb, run_test, verilog_of  # noqa: E402
from simulators import BUILD_ROOT, require_simulators  # noqa: E402

pytestmark = pytest.mark.sim

ROWS, COLS, ACC_BITS, LENGTH = 3, 4, 24, 120
SHAPE = (1, 8, 8)
TOP, TESTBENCH = "pe_array", "sim.array_cocotb"
VARIANT_NAMES, BITS = ("rom", "row_vector", "row_table"), (2, 3, 4)


@functools.lru_cache(maxsize=None)
def layer(bits: int):
    """The first conv of a small CNN compiled at W``bits``/A``bits`` (the layer at the plan's bits)."""
    model = small_cnn(SHAPE, QuantPlan("lcq", bits, bits), seed=bits)
    node = next(c for c in compile_model(model, SHAPE).convs if c.wbits == bits and c.abits == bits)
    assert node.mac == "lut"
    return node


def weight_slice(node) -> np.ndarray:
    """``(ROWS, COLS)`` signed weight codes: reduction rows x output channels, the window with the most distinct codes."""
    w = node.weight_codes.reshape(node.out_shape[0], -1).T          # (reduction, C_out)
    windows = [w[r:r + ROWS, c:c + COLS] for r in range(w.shape[0] - ROWS + 1) for c in range(w.shape[1] - COLS + 1)]
    return max(windows, key=lambda x: len(np.unique(x))).astype(np.int64)


def wrap(x):
    half = 1 << (ACC_BITS - 1)
    return (x + half) % (2 * half) - half


def coverage_weights(s_w: int, rng: random.Random) -> list[np.ndarray]:
    """``(ROWS, COLS)`` weight codes that together hold every code ``-s_w..s_w`` (every LUT row, both signs)."""
    codes = list(range(-s_w, s_w + 1))
    rng.shuffle(codes)
    n = ROWS * COLS
    return [np.array([codes[(i + start) % len(codes)] for i in range(n)]).reshape(ROWS, COLS)
            for start in range(0, len(codes), n)]


def stream_pass(node, variant, w: np.ndarray, label: str, rng: random.Random) -> dict:
    """Testbench data of one pass: load weight codes ``w`` (ROWS, COLS), then stream LENGTH elements."""
    stall = [rng.random() < 0.25 for _ in range(LENGTH)]             # a bubble in every row
    valid = np.array([[int(not stall[t] and rng.random() < 0.9) for t in range(LENGTH)] for _ in range(ROWS)])
    codes = np.array([[rng.randrange(variant.s_a + 1) for _ in range(LENGTH)] for _ in range(ROWS)])
    for r in range(ROWS):                                             # every code j in every row
        codes[r, 2:variant.s_a + 3] = rng.sample(range(variant.s_a + 1), variant.s_a + 1)
        valid[r, 2:variant.s_a + 3] = 1
    codes[:, :2], valid[:, :2] = variant.s_a, 1                       # full-scale products ...
    big = 1 << (ACC_BITS - 1)
    psum = np.array([[rng.choice([rng.randrange(-4096, 4096), rng.randrange(-big, big)]) for _ in range(LENGTH)]
                     for _ in range(COLS)])
    psum[:, 0], psum[:, 1] = big - 1, -big                           # ... wrapping around both ways

    # The spec: the integer reference on the slice as a 1 x 1 layer (invalid slots are code 0).
    sliced = dataclasses.replace(node, kind="linear", in_shape=(ROWS, 1, 1), out_shape=(COLS, 1, 1), kernel=1,
                                 stride=1, padding=0, weight_codes=w.T.reshape(COLS, ROWS, 1, 1).astype(np.int8),
                                 stage=None)
    x = (codes * valid).T.reshape(LENGTH, ROWS, 1, 1)
    acc = lut_accumulate(sliced, x).reshape(LENGTH, COLS).T
    assert (acc == accumulate(sliced, x).reshape(LENGTH, COLS).T).all()

    weights = [{**beat, "w_pe": r * COLS + c} for r in range(ROWS) for c in range(COLS)
               for beat in variant.load_beats(int(w[r, c] < 0), int(abs(w[r, c])))]
    # Row tables first (the testbench raises w_load on every beat: these reload PE (0, 0)).
    edges = [{**weights[0], **beat, "table_base": 0} for beat in variant.edge_beats()]
    if edges:
        weights = [{**beat, "table_load": 0} for beat in weights]
    return {
        "label": label,
        "weights": [[[int(w[r, c] < 0), int(abs(w[r, c]))] for c in range(COLS)] for r in range(ROWS)],
        "load": edges + weights,
        "a_valid": valid.tolist(), "a_code": codes.tolist(), "psum_in": psum.tolist(),
        "expected": wrap(psum + acc).tolist(),
    }


def case(variant_name: str, bits: int, seed: int = 0):
    """The variant for the layer's levels, and the testbench data: a pass with a slice of the
    layer's weights, then passes whose weights cover every weight code (a trained layer's
    slice rarely holds the large ones)."""
    node = layer(bits)
    variant = VARIANTS[variant_name](node.w_levels, node.a_levels)
    rng = random.Random(f"{variant_name} {bits} {seed}")
    weights = [("layer slice", weight_slice(node))]
    weights += [(f"all codes {i}", w) for i, w in enumerate(coverage_weights(variant.s_w, rng))]
    return variant, {
        "variant": variant_name, "rows": ROWS, "cols": COLS, "acc_bits": ACC_BITS,
        "w_levels": [int(v) for v in node.w_levels], "a_levels": [int(v) for v in node.a_levels],
        "passes": [stream_pass(node, variant, w, label, rng) for label, w in weights],
    }


def member(variant_name: str, bits: int) -> str:
    return f"{variant_name}_w{bits}a{bits}"


@pytest.fixture(scope="module")
def verilator_build(request):
    """One Verilator build, side by side, of the (variant, bits) arrays this session's Verilator tests of this
    file simulate (``rom`` at 3 bits: the failure tests')."""
    require_simulators("verilator")
    from sim.bundle import Bundle

    wanted = {("rom", 3)}
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and params.get("sim") == "verilator" and "variant_name" in params:
            wanted.add((params["variant_name"], params["bits"]))
    arrays = {member(v, b): PEArray(case(v, b)[0], ROWS, COLS, ACC_BITS) for v in VARIANT_NAMES for b in BITS
              if (v, b) in wanted}
    build_dir = BUILD_ROOT / "verilator-pe-array"
    return build("verilator", [verilog_of(Bundle(arrays), "pe_arrays", build_dir)], "pe_arrays", build_dir)


def simulate(request, sim, variant_name, bits, tmp_path, corrupt=None):
    require_simulators(sim)
    variant, data = case(variant_name, bits)
    if corrupt is not None:
        corrupt(data)
    if sim == "verilator":
        data["member"] = member(variant_name, bits)
        return run_test(request.getfixturevalue("verilator_build"), TESTBENCH, tmp_path, data=data)
    src = verilog_of(PEArray(variant, ROWS, COLS, ACC_BITS), TOP, tmp_path)
    return run_cocotb(sim, [src], TOP, TESTBENCH, tmp_path, data=data)


# By default each array on one simulator: these three on Verilator (one per variant, one per bit width, with
# test_wrong_*'s rom at 3 bits), the six others on Icarus; every one on both with -m slow.
ON_VERILATOR = {("rom", 3), ("row_vector", 4), ("row_table", 2)}


def array_cases():
    for sim in ("icarus", "verilator"):
        for variant_name in VARIANT_NAMES:
            for bits in BITS:
                default = ((variant_name, bits) in ON_VERILATOR) == (sim == "verilator")
                yield pytest.param(sim, variant_name, bits, id=f"{sim}-{variant_name}-w{bits}a{bits}",
                                   marks=() if default else pytest.mark.slow)


@pytest.mark.parametrize("sim, variant_name, bits", list(array_cases()))
def test_array_matches_reference(request, sim, variant_name, bits, tmp_path):
    simulate(request, sim, variant_name, bits, tmp_path)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_wrong_expectation_fails(request, sim, tmp_path):
    """A single wrong expected value must make the run raise, naming the element."""
    def corrupt(data):
        data["passes"][0]["expected"][2][17] += 1

    with pytest.raises(SimulationFailed, match=r"'layer slice': 1 of 480 .* column 2, element 17") as failure:
        simulate(request, sim, "rom", 3, tmp_path, corrupt)
    assert "expected value disagrees" in str(failure.value)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_wrong_weight_is_located(request, sim, tmp_path):
    """A PE loaded with another weight than the data says: the report names that PE."""
    def corrupt(data):
        for beat in data["passes"][1]["load"]:
            if beat["w_pe"] == 1 * COLS + 2:
                beat["w_code"] ^= 1     # another magnitude, same sign

    with pytest.raises(SimulationFailed, match=r"pass 'all codes 0'.*column 2") as failure:
        simulate(request, sim, "rom", 3, tmp_path, corrupt)
    assert "first wrong partial sum: PE (row 1, column 2)" in str(failure.value)
