"""A deep memory as columns of block RAM as deep as itself, so that its read data leaves the blocks without a
multiplexer over them.

Yosys maps a deep memory into the fewest blocks, which are shallower than the memory, and multiplexes their
outputs by the high address bits: on the ECP5, whose block RAM output already takes 5.8 ns of a cycle, the
ResNet-20 core's value memory (8192 x 70 bits in 32 blocks of 1024 x 18) was 13.6 ns from the blocks through
that multiplexer into its readers' registers on the ULX3S-85F at 1badc10. As columns of 8192 x 2-bit blocks it
takes 36 blocks and no multiplexer. Same ports and behaviour as one Amaranth memory with a write port of
``granularity`` and a synchronous, non-transparent read port; with ``registered`` both ports reach each group of
:data:`GROUP_COLUMNS` columns through registers of its own, so that the ports' multiplexers and the blocks across
the die fall in different cycles: reads then take two cycles (:func:`value_read_latency` for the network core's
value memory, whose read address was next, 16.1 ns into one of its blocks at 9801b7c) and writes land a cycle
later (its write address, one register for 36 blocks, 13.6 ns at 7bd78e4): a read still returns what a write
given in the same cycle or before replaced, as without them, as long as it comes two cycles after the write.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Signal
from amaranth.lib.memory import Memory

from .delay import delayed
from .memories import column_spans, slow_block_ram

GROUP_COLUMNS = 4   # columns that share address registers (registered)


def value_read_latency(platform) -> int:
    """Cycles from a read address of the network core's value memory to its data on ``platform`` (an Amaranth
    platform, or None in simulation): 1, a memory's read; 2 where block RAM is slow (the ECP5,
    :func:`hw.memories.slow_block_ram`), the memory a :func:`column_memory` with registered ports."""
    return 2 if slow_block_ram(platform) else 1


def column_memory(m: Module, name: str, width: int, depth: int, granularity: int, family: str = "ecp5",
                  registered: bool = False):
    """A ``width`` x ``depth`` memory in module ``m`` (submodules ``{name}_{n}``): each ``granularity``-bit
    granule of a word in columns of :func:`hw.memories.column_bits` bits (the widest block RAM of ``family`` as
    deep as the memory), a memory each. Returns ``(write, read)``: ``write.en`` (a bit per granule),
    ``write.addr``, ``write.data`` and ``read.addr``, ``read.data`` (one cycle after its address; a read of the
    address being written returns the old word), as an Amaranth memory's ports. ``registered``: each port
    through a register of its own for each group of :data:`GROUP_COLUMNS` columns (reads two cycles after their
    address, writes a cycle after they are given), without the reset (kept copies with it share the reset's
    multiplexer in front of them in Yosys's netlist: one logic cell per bit drove each group's copy, 12.5 ns on
    the ULX3S-85F at e3ff622; after a reset the write under way lands)."""
    if width % granularity:
        raise ValueError(f"a {width}-bit word is not whole granules of {granularity} bits")
    write = SimpleNamespace(en=Signal(width // granularity, name=f"{name}_write_en"),
                            addr=Signal(range(depth), name=f"{name}_write_addr"),
                            data=Signal(width, name=f"{name}_write_data"))
    read = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_read_addr"),
                           data=Signal(width, name=f"{name}_read_data"))
    columns = column_spans(width, depth, granularity, family)

    def copy(value, copy_name):
        """``value``, or with ``registered`` its copy a cycle later in flip-flops of its own, without reset."""
        return delayed(m, value, 1, copy_name, own_flip_flops=True, reset_less=True) if registered else value

    for n, (low, size) in enumerate(columns):
        m.submodules[f"{name}_{n}"] = memory = Memory(shape=size, depth=depth, init=[])
        column_write, column_read = memory.write_port(), memory.read_port()
        if n % GROUP_COLUMNS == 0:
            read_addr = copy(read.addr, f"{name}_read_addr_{n // GROUP_COLUMNS}")
            write_addr = copy(write.addr, f"{name}_write_addr_{n // GROUP_COLUMNS}")
        write_en = copy(write.en[low // granularity], f"{name}_{n}_write_en")
        write_data = copy(write.data[low:low + size], f"{name}_{n}_write_data")
        m.d.comb += [column_write.en.eq(write_en), column_write.addr.eq(write_addr),
                     column_write.data.eq(write_data), column_read.addr.eq(read_addr),
                     read.data[low:low + size].eq(column_read.data)]
    return write, read
