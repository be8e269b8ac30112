"""Requantize output stage: accumulators -> values at a new integer scale.

Bit-exact with :meth:`compiler.graph.Requantize.apply`: for a value ``acc`` of channel
``n``, ``y = (acc * M[n] + B[n]) >> shift[n]`` with an arithmetic shift (floor); ``B``
already holds the rounding constant ``2^(shift - 1)``. The product and sum are computed
at full width, so the only way to differ from ``apply`` is an output wider than
``out_bits``: the compiler bounds it (:meth:`Requantize.bound`), and :func:`out_bits`
turns that bound into the width the unit needs. ``M`` is unsigned: the compiler's
multipliers are positive (``round(ratio * 2^shift)`` with ``ratio > 0``).
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from compiler.graph import Requantize

from .stage_ports import stage_ports
from .stage_words import (bias_bits, max_shift, multiplier_bits, out_bits, requantize_arrays, requantize_word_bits,
                          requantize_words, shift_bits)


class RequantizeUnit(wiring.Component):
    """Per-channel fixed-point requantization of ``channels`` channels, one value per cycle.

    Parameters: ``acc_bits`` (signed input width), ``channels``, ``multiplier_bits``
    (unsigned ``M``), ``bias_bits`` (signed ``B``), ``max_shift`` (shifts 0..max_shift),
    ``out_bits`` (signed output; must hold the stage's bound, see :func:`out_bits`,
    otherwise the output wraps).

    Ports:

    - load: ``load_en``, ``load_addr`` (channel), ``load_data`` (``word_bits``, a word of
      :meth:`words`: ``M | B << multiplier_bits | shift << (multiplier_bits + bias_bits)``);
      written at the clock edge, between layers.
    - in: ``valid``, ``acc`` (signed ``acc_bits``), ``channel``.
    - out: ``out_valid``, ``out`` (signed ``out_bits``), registered.

    Latency 3 (``LATENCY``): a value sampled at clock edge t appears after edge t + 2
    (edge t reads the channel's constants, edge t + 1 registers ``acc * M + B``, edge
    t + 2 registers the shifted result). Fully pipelined, gaps allowed, no back-pressure.
    """

    LATENCY = 3

    def __init__(self, acc_bits: int, channels: int, multiplier_bits: int, bias_bits: int,
                 max_shift: int, out_bits: int):
        for name, value, low in (("acc_bits", acc_bits, 2), ("channels", channels, 1),
                                 ("multiplier_bits", multiplier_bits, 1), ("bias_bits", bias_bits, 2),
                                 ("max_shift", max_shift, 0), ("out_bits", out_bits, 2)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.acc_bits, self.channels = int(acc_bits), int(channels)
        self.multiplier_bits, self.bias_bits = int(multiplier_bits), int(bias_bits)
        self.max_shift, self.out_bits = int(max_shift), int(out_bits)
        self.shift_bits = shift_bits(self.max_shift)
        self.word_bits = requantize_word_bits(self.multiplier_bits, self.bias_bits, self.max_shift)
        super().__init__({
            **stage_ports(self.channels, self.word_bits, self.acc_bits),
            "out_valid": Out(1),
            "out": Out(signed(self.out_bits)),
        })

    @classmethod
    def for_stage(cls, stage: Requantize, acc_bits: int, in_bound: int | None = None) -> RequantizeUnit:
        """A unit sized for ``stage``; ``in_bound`` (largest ``|acc|``) defaults to ``2^(acc_bits-1)``."""
        bound = 2 ** (acc_bits - 1) if in_bound is None else in_bound
        return cls(acc_bits, requantize_arrays(stage)[0].size, multiplier_bits(stage), bias_bits(stage),
                   max_shift(stage), out_bits(stage, bound))

    def words(self, stage: Requantize) -> list[int]:
        """Memory words of ``stage`` for this unit, one per channel (checks that it fits)."""
        if requantize_arrays(stage)[0].size != self.channels:
            raise ValueError(f"stage has {requantize_arrays(stage)[0].size} channels, the unit holds {self.channels}")
        return requantize_words(stage, self.multiplier_bits, self.bias_bits, self.max_shift)

    def elaborate(self, platform):
        m = Module()
        m.submodules.constants = memory = Memory(shape=self.word_bits, depth=self.channels, init=[])
        write, read = memory.write_port(), memory.read_port()
        m.d.comb += [
            write.en.eq(self.load_en),
            write.addr.eq(self.load_addr),
            write.data.eq(self.load_data),
            read.addr.eq(self.channel),
        ]
        # Stage 1: the channel's constants are read; the value waits for them.
        acc, valid1 = Signal(signed(self.acc_bits)), Signal()
        m.d.sync += [acc.eq(self.acc), valid1.eq(self.valid)]
        # Stage 2: acc * M + B at full width (signed * unsigned -> signed(acc_bits + multiplier_bits)).
        mult = read.data[:self.multiplier_bits]
        bias = read.data[self.multiplier_bits:self.multiplier_bits + self.bias_bits].as_signed()
        shift_in = read.data[self.multiplier_bits + self.bias_bits:]
        width = max(self.acc_bits + self.multiplier_bits, self.bias_bits) + 1
        total, shift, valid2 = Signal(signed(width)), Signal(self.shift_bits), Signal()
        m.d.sync += [total.eq(acc * mult + bias), shift.eq(shift_in), valid2.eq(valid1)]
        # Stage 3: arithmetic shift right (floor), truncated to out_bits.
        m.d.sync += [self.out.eq(total >> shift), self.out_valid.eq(valid2)]
        return m
