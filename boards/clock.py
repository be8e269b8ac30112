"""The ``sync`` clock domain from a board's PLL at a requested frequency.

:func:`ice40_pll` and :func:`ecp5_pll` choose divider settings the way IceStorm's ``icepll``
(simple feedback) and Trellis' ``ecppll`` do, bit for bit (tests compare with
``yowasp-icepll`` / ``yowasp-ecppll``); :func:`pll_plan` picks the family and checks the
result; :class:`PLLClock` instantiates the primitive and drives ``sync`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from .boards import PLL_OUTPUT_MHZ, PLL_TOLERANCE, Board


@dataclass(frozen=True)
class PLLPlan:
    """Divider settings of one PLL: ``params`` (the primitive's parameters), the input and
    requested frequencies and the ``achieved_hz`` output frequency."""

    family: str
    input_hz: float
    requested_hz: float
    achieved_hz: float
    params: dict


def ice40_pll(input_mhz: float, output_mhz: float) -> PLLPlan:
    """SB_PLL40 settings (SIMPLE feedback) nearest ``output_mhz``, as ``icepll -i IN -o OUT``.

    F_PFD = IN / (DIVR+1) in 10..133 MHz, F_VCO = F_PFD * (DIVF+1) in 533..1066 MHz,
    OUT = F_VCO / 2^DIVQ; the input must be 10..133 MHz and the output 16..275 MHz.
    """
    if not 10 <= input_mhz <= 133:
        raise ValueError(f"iCE40 PLL input {input_mhz} MHz is outside 10..133 MHz")
    lo, hi = PLL_OUTPUT_MHZ["ice40"]
    if not lo <= output_mhz <= hi:
        raise ValueError(f"iCE40 PLL output {output_mhz} MHz is outside {lo}..{hi} MHz; ask for a clock in that range")
    best = None
    for divr in range(16):
        f_pfd = input_mhz / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = f_vco * 2.0 ** -divq
                if best is None or abs(fout - output_mhz) < abs(best[0] - output_mhz):
                    best = (fout, divr, divf, divq)
    fout, divr, divf, divq = best
    f_pfd = input_mhz / (divr + 1)
    filter_range = 1 + sum(f_pfd >= edge for edge in (17, 26, 44, 66, 101))
    params = {"FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filter_range}
    return PLLPlan("ice40", input_mhz * 1e6, output_mhz * 1e6, fout * 1e6, params)


def ecp5_pll(input_mhz: float, output_mhz: float) -> PLLPlan:
    """EHXPLLL settings (CLKOP feedback) nearest ``output_mhz``, as ``ecppll -i IN -o OUT``.

    F_PFD = IN / CLKI_DIV in 3.125..400 MHz, F_VCO = F_PFD * CLKFB_DIV * CLKOP_DIV in
    400..800 MHz, OUT = F_VCO / CLKOP_DIV; ties go to the VCO nearest 600 MHz. Computed in
    single precision like ecppll, so the settings (and CLKOP_CPHASE, a 180 degree shift) match.
    """
    if not 8 <= input_mhz <= 400:
        raise ValueError(f"ECP5 PLL input {input_mhz} MHz is outside 8..400 MHz")
    lo, hi = PLL_OUTPUT_MHZ["ecp5"]
    if not lo <= output_mhz <= hi:
        raise ValueError(f"ECP5 PLL output {output_mhz} MHz is outside {lo}..{hi} MHz; ask for a clock in that range")
    f32 = np.float32
    ref, fb, out = np.meshgrid(np.arange(1, 129, dtype=f32), np.arange(1, 81, dtype=f32),
                               np.arange(1, 129, dtype=f32), indexing="ij")
    f_pfd = f32(input_mhz) / ref
    f_vco = f_pfd * fb * out
    f_out = f_vco / out
    ok = (f_pfd >= f32(3.125)) & (f_pfd <= f32(400)) & (f_vco >= f32(400)) & (f_vco <= f32(800))
    error = np.where(ok, np.abs(f_out - f32(output_mhz)), np.inf)
    off_600 = np.where(error == error.min(), np.abs(f_vco - f32(600)), np.inf)
    i, j, k = np.unravel_index(np.argmin(off_600), off_600.shape)  # first of the ties, in ecppll's loop order
    fout, fvco = f_out[i, j, k], f_vco[i, j, k]
    ns_phase = f32(1 / (float(fout) * 1e6) * 0.5)
    params = {"CLKI_DIV": int(i) + 1, "CLKFB_DIV": int(j) + 1, "CLKOP_DIV": int(k) + 1,
              "CLKOP_CPHASE": int(float(ns_phase) * (float(fvco) * 1e6)), "CLKOP_FPHASE": 0}
    return PLLPlan("ecp5", input_mhz * 1e6, output_mhz * 1e6, float(fout) * 1e6, params)


def pll_plan(board: Board, target_mhz: float, tolerance: float = PLL_TOLERANCE) -> PLLPlan:
    """The PLL settings for ``board`` at ``target_mhz``; ``ValueError`` when the nearest reachable
    frequency is more than ``tolerance`` (relative) away."""
    make = ice40_pll if board.family == "ice40" else ecp5_pll
    plan = make(board.osc_hz / 1e6, target_mhz)
    if abs(plan.achieved_hz / plan.requested_hz - 1) > tolerance:
        raise ValueError(f"{board.name}: the PLL reaches {plan.achieved_hz / 1e6:.3f} MHz at best from the "
                         f"{board.osc_hz / 1e6:g} MHz oscillator, not {target_mhz} MHz (within {tolerance:.0%}); "
                         f"ask for {plan.achieved_hz / 1e6:.3f}")
    return plan


class PLLClock(Elaboratable):
    """Drives the ``sync`` domain's clock and reset (the domain is defined by the parent: Amaranth
    0.6 wants domains defined above their users) from the board oscillator through the PLL of ``plan``.

    ``sync`` is held in reset until the PLL locks, then released synchronously. (On iCE40 the
    lock time, tens of microseconds, also covers the ~3 us after configuration during which
    block RAMs read as zero.)
    """

    def __init__(self, board: Board, plan: PLLPlan):
        self.board, self.plan = board, plan

    def elaborate(self, platform):
        m = Module()
        clk, lock = Signal(), Signal()
        pin = platform.request(platform.default_clk, dir="-")
        p = {f"p_{k}": v for k, v in self.plan.params.items()}
        if self.plan.family == "ice40":
            m.submodules.pll = Instance("SB_PLL40_PAD", i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
                                        o_PLLOUTGLOBAL=clk, o_LOCK=lock, **p)
        else:
            m.submodules.clk_buf = buf = io.Buffer("i", pin)
            m.submodules.pll = Instance(
                "EHXPLLL", i_CLKI=buf.i, i_CLKFB=clk, o_CLKOP=clk, o_LOCK=lock,
                i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_FEEDBK_PATH="CLKOP", **p,
                a_FREQUENCY_PIN_CLKI=f"{self.plan.input_hz / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{self.plan.achieved_hz / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2")
        m.d.comb += ClockSignal("sync").eq(clk)
        # The reset in general routing on the ECP5 too: through a global buffer (a DCCA, 9835aab: 790 flip-flops of
        # the ResNet-20 core after 10.6 ns in general routing) the placer often put its synchronizer where the
        # buffer's input could not be reached, and the OrangeCrab's digits core failed at seeds 1, 2 and 3 (692908d).
        m.submodules.reset_sync = ResetSynchronizer(~lock, domain="sync")
        return m
