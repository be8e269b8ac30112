"""A deep buffer read through registered banks: no block RAM's output drives a wide multiplexer.

A memory deeper than one block RAM is built by Yosys as many blocks and a multiplexer over
their outputs; on the ULX3S-85F the whole-network core's weights buffer (51 DP16KD, a 17-way
multiplexer) was the worst path from a block RAM's slow output. Here the buffer is banks of
:func:`bank_depth` words, each read into a register that holds the word only in the cycle after
its own bank was read (zero otherwise: a synchronous reset), and the buffer's word is the OR of
the registers (no select signal fans out to every bit of every bank; a 17-way multiplexer's
select was among the ResNet-20 core's worst paths after the block RAM's). Each bank keeps its own
read address register and its own write registers (enable, address, data), the address and data
registers flip-flops of their own (:data:`hw.flip_flops.OWN_FLIP_FLOP`: Yosys would merge registers of
equal inputs back into one), loaded in every cycle: the address and data registers before them drive
a few registers instead of every block RAM (the fetch address into 51 blocks, then the load address,
were the ResNet-20 core's worst paths on the ULX3S-85F), and no write decode drives their enables (the
load beat's decode into the weight banks' data registers was 16.0 ns at 0e077f7). A bank is one block
RAM deep: as deep as the ECP5 block's shape (:data:`hw.memories.BLOCK_RAM_SHAPES`) that holds the most words of the
width per block, the shallower on a tie (24-bit words: 2048 x 9, 3-bit words: 16384 x 1), so that
banking takes no more blocks than the best mapping of the whole.

Contract: a write (``write_en``, ``write_addr``, ``write_data``) of cycle t reaches its block RAM
at the end of cycle t + 1 (the bank's write registers), with ``grouped_writes`` at the end of t + 2 (before them,
registers of their own for each :data:`GROUP_BANKS` banks: on the ECP5 the weights buffer's write data register
reached its 17 banks' across the die, 13.1 ns on the ULX3S-85F at e42f8cd; they have no reset
(:mod:`hw.flip_flops`: kept copies with one share a reset multiplexer), so a reset lets the write under way
land); the word at ``read_addr`` of cycle t is on the returned data in cycle t + 3 (the bank's address
register, the block RAM, then the bank's data register with the multiplexer after them), as written up to
cycle t - 1.
"""

from __future__ import annotations

import functools
import operator

from amaranth import Module, Mux, Signal
from amaranth.lib.memory import Memory

from .delay import delayed
from .memories import bank_depth

LATENCY = 3
GROUP_BANKS = 4     # banks that share write registers (grouped_writes)


def banked_buffer(m: Module, name: str, width: int, depth: int, write_en, write_addr, write_data, read_addr,
                  reset_less: bool = False, grouped_writes: bool = False):
    """A ``width`` x ``depth`` buffer in module ``m`` (submodules ``{name}`` or ``{name}_{b}``); returns the
    read data, :data:`LATENCY` cycles after ``read_addr``. ``reset_less``: the address, data and word registers
    ignore the domain's reset (:func:`hw.delay.reset_less_data`; a bank's word register is then zeroed by its
    read flag alone, not by the flag or the reset through a logic cell). ``grouped_writes``: the write passes
    registers of its own for each :data:`GROUP_BANKS` banks first (a cycle later)."""
    words = bank_depth(width)
    banks = -(-depth // words)
    low = (min(depth, words) - 1).bit_length()
    outputs = []
    given = {"write_en": write_en, "write_addr": write_addr, "write_data": write_data}
    for b in range(banks):
        if grouped_writes and b % GROUP_BANKS == 0:
            write_en, write_addr, write_data = (
                delayed(m, value, 1, f"{name}_group_{b // GROUP_BANKS}_{part}", own_flip_flops=True,
                        reset_less=True) for part, value in given.items())
        m.submodules[f"{name}_{b}" if banks > 1 else name] = memory = Memory(
            shape=width, depth=min(words, depth - b * words), init=[])
        write, read = memory.write_port(), memory.read_port()
        written, read_here = (addr[low:] == b if banks > 1 else 1 for addr in (write_addr, read_addr))
        m.d.sync += write.en.eq(write_en & written)
        # The bank's own copies (hw.flip_flops.OWN_FLIP_FLOP) of the addresses and the data, in every cycle: no enable.
        copies = {part: delayed(m, value, 1, f"{name}_{b}_{part}", own_flip_flops=True, reset_less=reset_less)
                  for part, value in (("write_addr", write_addr[:low]), ("write_data", write_data),
                                      ("read_addr", read_addr[:low]))}
        m.d.comb += [write.addr.eq(copies["write_addr"]), write.data.eq(copies["write_data"]),
                     read.addr.eq(copies["read_addr"])]
        if banks == 1:
            return delayed(m, read.data, 1, f"{name}_data", reset_less=reset_less)
        data = Signal(width, name=f"{name}_{b}_data", reset_less=reset_less)
        m.d.sync += data.eq(Mux(delayed(m, read_here, 2, f"{name}_{b}_read"), read.data, 0))
        outputs.append(data)
    return functools.reduce(operator.or_, outputs)
