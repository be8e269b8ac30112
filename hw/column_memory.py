"""A deep memory as columns of block RAM as deep as itself, so that its read data leaves the blocks without a
multiplexer over them.

Yosys maps a deep memory into the fewest blocks, which are shallower than the memory, and multiplexes their
outputs by the high address bits: on the ECP5, whose block RAM output already takes 5.8 ns of a cycle, the
ResNet-20 core's value memory (8192 x 70 bits in 32 blocks of 1024 x 18) was 13.6 ns from the blocks through
that multiplexer into its readers' registers on the ULX3S-85F at 1badc10. As columns of 8192 x 2-bit blocks it
takes 36 blocks and no multiplexer. Same ports and behaviour as one Amaranth memory with a write port of
``granularity`` and a synchronous, non-transparent read port.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Signal
from amaranth.lib.memory import Memory

from .memories import column_bits


def column_memory(m: Module, name: str, width: int, depth: int, granularity: int, family: str = "ecp5"):
    """A ``width`` x ``depth`` memory in module ``m`` (submodules ``{name}_{n}``): each ``granularity``-bit
    granule of a word in columns of :func:`hw.memories.column_bits` bits (the widest block RAM of ``family`` as
    deep as the memory), a memory each. Returns ``(write, read)``: ``write.en`` (a bit per granule),
    ``write.addr``, ``write.data`` and ``read.addr``, ``read.data`` (one cycle after its address; a read of the
    address being written returns the old word), as an Amaranth memory's ports."""
    if width % granularity:
        raise ValueError(f"a {width}-bit word is not whole granules of {granularity} bits")
    bits = column_bits(depth, family)
    write = SimpleNamespace(en=Signal(width // granularity, name=f"{name}_write_en"),
                            addr=Signal(range(depth), name=f"{name}_write_addr"),
                            data=Signal(width, name=f"{name}_write_data"))
    read = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_read_addr"),
                           data=Signal(width, name=f"{name}_read_data"))
    columns = [(granule + low, min(bits, granularity - low)) for granule in range(0, width, granularity)
               for low in range(0, granularity, bits)]
    for n, (low, size) in enumerate(columns):
        m.submodules[f"{name}_{n}"] = memory = Memory(shape=size, depth=depth, init=[])
        column_write, column_read = memory.write_port(), memory.read_port()
        m.d.comb += [column_write.en.eq(write.en[low // granularity]), column_write.addr.eq(write.addr),
                     column_write.data.eq(write.data[low:low + size]), column_read.addr.eq(read.addr),
                     read.data[low:low + size].eq(column_read.data)]
    return write, read
