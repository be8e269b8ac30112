"""Registers that keep their own flip-flops: the attribute that marks one (:func:`hw.delay.own` sets it) and
the Yosys command that keeps them. Pure Python: the board build and the netlist simulation import it, and
``lcq run`` imports the board build without Amaranth.

Yosys merges registers of equal inputs into one (the PE array's valid bits, copies of the engine's tag line
a column further on, became one flip-flop per diagonal driving PEs across the ULX3S-85F's die: its worst
path at fda0f40, 16.3 ns); a copy made to be placed near its loads must not be merged back. A kept register
with a synchronous reset keeps the reset's multiplexer outside itself, in a logic cell that Yosys does share
among copies of one value (one cell per bit drove the ResNet-20 value memory's nine write address copies, 12.5 ns
at e3ff622): copies ignore the reset wherever only a write under way can land after it.
"""

from __future__ import annotations

OWN_FLIP_FLOP = "own_flip_flop"
# Yosys command for the design as read (Amaranth's RTLIL, or its Verilog after ``proc``): the flip-flops of
# registers marked OWN_FLIP_FLOP are kept (``keep`` on the cell, which opt_merge does not merge with another
# kept cell).
KEEP_OWN_FLIP_FLOPS = f"setattr -set keep 1 a:{OWN_FLIP_FLOP} %ci1:+$dff[Q] c:* %i"
