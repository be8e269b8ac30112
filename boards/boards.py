"""The supported boards: platform, part resources, clock, host link and programmer of each.

Resource counts are the datasheet's (Lattice iCE40 UltraPlus DS FPGA-DS-02008, ECP5 DS
FPGA-DS-02012, whose LUT counts are rounded: "12K"); the build report sets nextpnr's used
counts beside them. Resource names are ours and the same on every board: ``LUT4`` (a logic
cell on iCE40), ``FF``, ``EBR`` (block RAM), ``SPRAM`` (UP5K only), ``DSP`` (SB_MAC16 on
iCE40, MULT18X18D on ECP5) and ``PLL``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from hw.baud import BAUD_TOLERANCE, MIN_DIVISOR, baud_divisor

# The link bridge's frame buffer in bytes: one block RAM in its byte-wide shape.
LINK_PAYLOAD = {"ice40": 512, "ecp5": 2048}

# The outputs (MHz) the PLL of each family may be asked for (icepll's and ecppll's ranges) and how far from the
# request the clock it makes may be (boards.clock.pll_plan): every build report's pll_mhz is within both.
PLL_OUTPUT_MHZ = {"ice40": (16, 275), "ecp5": (10, 400)}
PLL_TOLERANCE = 0.01

# Baud rates the host link may use, fastest first; `uart_baud` picks one per board and clock.
BAUD_RATES = (3_000_000, 2_000_000, 1_500_000, 1_000_000, 921_600, 500_000, 460_800, 230_400, 115_200)


@dataclass(frozen=True)
class Board:
    """One supported board.

    - ``platform``: ``"module:Class"`` of its amaranth-boards platform (imported on use).
    - ``family``: ``"ice40"`` or ``"ecp5"``; ``device``: the part; ``resources``: name -> count.
    - ``osc_hz``: the on-board oscillator feeding the PLL; ``default_mhz``: default target clock, one that the
      reference designs meet and whose baud divisor makes the fastest link; ``goal_mhz``: the clock nextpnr is
      asked to meet where the PLL runs slower (:func:`boards.build.build`): its timing-driven placement and
      routing weigh each path by its slack to the clock it is given, and so work for no more than that.
    - ``uart_bridge``: the USB-serial chip wired to the ``uart`` resource, or ``None`` where
      there is none; ``uart_max_baud``: the fastest rate that bridge (or the adapter named in
      ``uart_note``) allows; ``uart_pins``: (rx, tx) header pins to add as the ``uart``
      resource where the platform has none.
    - ``programmer``: the tool that flashes it.
    """

    name: str
    platform: str
    family: str
    device: str
    resources: dict = field(hash=False)
    osc_hz: float
    default_mhz: float
    goal_mhz: float
    uart_bridge: str | None
    uart_max_baud: int
    programmer: str
    uart_pins: tuple | None = None
    uart_note: str = ""

    def platform_class(self):
        """The amaranth-boards platform class (imports amaranth_boards)."""
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)

    def make_platform(self):
        """A new platform instance with a ``uart`` resource (header pins where the board has no bridge)."""
        platform = self.platform_class()()
        if self.uart_pins is not None:
            from amaranth.build import Attrs
            from amaranth_boards.resources import UARTResource

            rx, tx = self.uart_pins
            platform.add_resources([UARTResource(0, rx=rx, tx=tx, conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))])
        return platform

    @property
    def bitstream_suffix(self) -> str:
        return ".bin" if self.family == "ice40" else ".bit"


def _ecp5(name, platform, device, luts, ebr, dsp, plls, **kw):
    res = {"LUT4": luts, "FF": luts, "EBR": ebr, "DSP": dsp, "PLL": plls}
    return Board(name, platform, "ecp5", device, res, **kw)


# 60 MHz: the ECP5 PLL makes it from 25 MHz, and 20 cycles per bit give 3 Mbaud exactly; 100 MHz: issue 13's aim
# for the ResNet-20 core on the ULX3S-85F.
_ULX3S = dict(osc_hz=25e6, default_mhz=60.0, goal_mhz=100.0, uart_bridge="FT231X", uart_max_baud=3_000_000,
              programmer="openFPGALoader", uart_note="FT231X USB-serial on the US1 port")

BOARDS = {b.name: b for b in [
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "iCE40UP5K",
          {"LUT4": 5280, "FF": 5280, "EBR": 30, "SPRAM": 4, "DSP": 8, "PLL": 1},
          # 36 MHz: 12 cycles per bit at 3 Mbaud; 40 MHz: issue 13's aim for the digits core (asked for 42, nextpnr's
          # router1 stalled on that core at a393800 with 4,047 arcs left for 9 minutes; router2 did not converge).
          osc_hz=12e6, default_mhz=36.0, goal_mhz=40.0, uart_bridge="FT2232H", uart_max_baud=3_000_000,
          programmer="iceprog",
          uart_note="FT2232H channel B (the FT2232H allows 12 Mbaud; 3 Mbaud keeps the FPGA-side divider >= 8)"),
    _ecp5("ulx3s-12f", "amaranth_boards.ulx3s:ULX3S_12F_Platform", "LFE5U-12F", 12_000, 32, 28, 2, **_ULX3S),
    _ecp5("ulx3s-25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform", "LFE5U-25F", 24_000, 56, 28, 2, **_ULX3S),
    _ecp5("ulx3s-45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform", "LFE5U-45F", 44_000, 108, 72, 4, **_ULX3S),
    _ecp5("ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "LFE5U-85F", 84_000, 208, 156, 4, **_ULX3S),
    _ecp5("orangecrab-25f", "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform", "LFE5U-25F",
          24_000, 56, 28, 2, osc_hz=48e6, default_mhz=48.0, goal_mhz=100.0, uart_bridge=None,
          uart_max_baud=1_000_000, programmer="dfu-util", uart_pins=("0", "1"),
          uart_note="no USB-serial bridge (its USB port goes straight to FPGA pins): the link is a 3.3 V "
                    "USB-serial adapter on the Feather header, its TX to pin 0 (FPGA RX), its RX to pin 1 (FPGA TX); "
                    "1 Mbaud suits CP2102, CH340 and FT232R adapters"),
]}


def get_board(name: str) -> Board:
    """The board called ``name``; ``KeyError`` naming the known boards otherwise."""
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def uart_baud(board: Board, clk_hz: float) -> int:
    """The fastest rate of :data:`BAUD_RATES` up to the board's limit that a ``clk_hz`` clock makes
    by the UART's rule (:func:`hw.baud.baud_divisor`)."""
    for baud in BAUD_RATES:
        if baud > board.uart_max_baud:
            continue
        try:
            baud_divisor(clk_hz, baud)
        except ValueError:
            continue
        return baud
    raise ValueError(f"no baud rate of {BAUD_RATES} up to {board.name}'s {board.uart_max_baud} is within "
                     f"{BAUD_TOLERANCE:.0%} of {clk_hz / 1e6:g} MHz / an integer >= {MIN_DIVISOR}; pick another clock")
