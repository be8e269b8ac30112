"""The ECP5's 18 x 18 multiplier (``MULT18X18D``) instantiated with its own input and output registers.

Yosys's ECP5 flow maps a product to the combinational multiplier only and leaves the registers around it in
logic cells, so that the routes into the multiplier, its own delay and the routes out of it fall in one
cycle (the requantize unit's partial products: 13.7 ns on the ULX3S-85F at 1badc10). With the multiplier's
registers those are three cycles' paths: into its input registers, through the multiplier (inside the DSP
block, not a path nextpnr checks), out of its output register. ``sim/ecp5_models.v`` models this form.
"""

from __future__ import annotations

from amaranth import C, ClockSignal, Instance, Module, Signal

from .memories import slow_block_ram

PRIMITIVE = "MULT18X18D"
WIDTH = 18  # the multiplier's operand width


def registered_multipliers(platform) -> bool:
    """Whether ``platform`` (an Amaranth platform, or None in simulation) is an ECP5
    (:func:`hw.memories.slow_block_ram`), whose multipliers :func:`registered_product` instantiates."""
    return slow_block_ram(platform)


def registered_product(m: Module, name: str, a, b) -> Signal:
    """``a * b`` in a ``MULT18X18D`` named ``name``: ``a`` and ``b`` (at most 18 bits each, signed where their
    shapes are) sampled into its input registers at a clock edge of the ``sync`` domain, their product in its
    output register after the next edge: latency 2, as a register before a product and one after it in logic.
    Returns the product (a signal of ``(a * b).shape()``); the registers have no reset."""
    for operand in (a, b):
        if len(operand) > WIDTH:
            raise ValueError(f"a MULT18X18D operand is at most {WIDTH} bits, not {len(operand)}")
    product = Signal((a * b).shape(), name=name)
    p = Signal(2 * WIDTH, name=f"{name}_p")
    ports = {}
    for port, operand in (("A", a), ("B", b)):
        extended = Signal(WIDTH, name=f"{name}_{port.lower()}")
        m.d.comb += extended.eq(operand)         # sign- or zero-extended as the operand's shape says
        ports.update({f"i_{port}{i}": extended[i] for i in range(WIDTH)})
        ports[f"i_SIGNED{port}"] = C(int(operand.shape().signed), 1)
    ports.update({f"i_C{i}": C(0, 1) for i in range(WIDTH)})
    ports.update({f"o_P{i}": p[i] for i in range(2 * WIDTH)})
    # The shift inputs (SRIA, SRIB: a neighbouring multiplier's operands, not reachable from the fabric: a
    # constant 0 there failed to route) and the other clocks, enables and resets stay unconnected, as Yosys's
    # own mapping leaves them.
    ports.update({"i_SOURCEA": C(0, 1), "i_SOURCEB": C(0, 1), "i_CLK0": ClockSignal("sync"), "i_CE0": C(1, 1),
                  "i_RST0": C(0, 1)})
    registers = {f"p_REG_{reg}_{what}": value for reg in ("INPUTA", "INPUTB", "OUTPUT")
                 for what, value in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
    m.submodules[name + "_mult"] = Instance(
        PRIMITIVE, **registers, p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE", p_GSR="DISABLED",
        p_RESETMODE="SYNC", p_MULT_BYPASS="DISABLED", p_SOURCEB_MODE="B_SHIFT", p_CAS_MATCH_REG="FALSE",
        p_HIGHSPEED_CLK="NONE", **ports)
    m.d.comb += product.eq(p)    # the low bits: the 36-bit product is sign-extended where it is signed
    return product
