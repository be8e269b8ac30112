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
from amaranth import C, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from compiler.graph import Requantize

from .delay import delayed, reset_less_data
from .dsp import registered_multipliers, registered_product
from .stage_ports import stage_ports
from .stage_words import (bias_bits, max_shift, multiplier_bits, out_bits, requantize_arrays, requantize_word_bits,
                          requantize_words, shift_bits)


PART_BITS = 16    # an unsigned part of a multiplier operand: one ECP5 18 x 18 or iCE40 16 x 16 multiplier takes it


def _parts(value, bits: int, signed_top: bool) -> list[tuple[int, object]]:
    """``value`` (``bits`` wide) as ``(low bit, part)`` pairs of :data:`PART_BITS` bits from the bottom:
    every part but the top one unsigned; the top one signed where ``signed_top`` (two's complement)."""
    parts = []
    for low in range(0, bits, PART_BITS):
        part = value[low:min(bits, low + PART_BITS)]
        top = low + PART_BITS >= bits
        parts.append((low, part.as_signed() if top and signed_top else part))
    return parts


class RequantizeUnit(wiring.Component):
    """Per-channel fixed-point requantization of ``channels`` channels, one value per cycle.

    Parameters: ``acc_bits`` (signed input width), ``channels``, ``multiplier_bits``
    (unsigned ``M``), ``bias_bits`` (signed ``B``), ``max_shift`` (shifts 0..max_shift),
    ``out_bits`` (signed output; must hold the stage's bound, see :func:`out_bits`,
    otherwise the output wraps), ``own_memory`` (False: the words come in on ``word``, read outside).

    Ports:

    - load: ``load_en``, ``load_addr`` (channel), ``load_data`` (``word_bits``, a word of
      :meth:`words`: ``M | B << multiplier_bits | shift << (multiplier_bits + bias_bits)``);
      written at the clock edge, between layers. Without ``own_memory``: ``word`` instead, the
      channel's word a cycle after the value.
    - in: ``valid``, ``acc`` (signed ``acc_bits``), ``channel`` (with its own memory).
    - out: ``out_valid``, ``out`` (signed ``out_bits``), registered.

    Latency 5 (``LATENCY``): a value sampled at clock edge t appears after edge t + 4. Edge t reads the channel's
    constants (block RAM); t + 1 registers the partial products of ``acc`` and ``M`` (straight from the block RAM),
    each cut to fit one hardware multiplier (:data:`PART_BITS` unsigned bits per low part, in the multiplier's own
    output register where it has one), and ``B`` and the shift; t + 2 registers two partial sums, the first with
    ``B``; t + 3 their sum; t + 4 the shifted result. Each stage is one block RAM read into one multiplier, or one
    carry chain. With ``registered_constants`` (:func:`hw.memories.slow_block_ram`), the same latency: t + 1
    registers the constants, t + 2 the partial products, t + 3 the partial sums, t + 4 their sum shifted (a carry
    chain and a shifter in one cycle, so that the block RAM's slow output feeds no multiplier). ``late_value``
    (cycles, with ``registered_constants`` only; at most 1, 2 with ``registered_inputs``): ``acc`` comes that many
    cycles after its ``valid`` and ``channel`` (the unit then waits as many cycles less for the constants; the same
    latency from ``valid``). ``registered_inputs`` (with ``registered_constants`` only): one more register on the
    value and the constants before the partial products (latency one more, 6: ``latency``), so that the multipliers
    need not lie near the value's source (the engine's multiplexer over its columns' accumulator reads, spread
    across the die: 13.9 ns into the ECP5 multipliers' input registers on the ULX3S-85F at 38d3741) nor near the
    constants' block RAM. ``registered_total`` (with ``registered_constants`` only): the partial sums' total
    registered before the shift, as without registered constants (latency one more: 7 with registered inputs; the
    sum and the shift in one cycle were 11 to 12 ns on the ULX3S-85F at c4a8796). Fully pipelined, gaps allowed, no
    back-pressure.
    """

    LATENCY = 5

    def __init__(self, acc_bits: int, channels: int, multiplier_bits: int, bias_bits: int,
                 max_shift: int, out_bits: int, own_memory: bool = True, registered_constants: bool = False,
                 late_value: int = 0, registered_inputs: bool = False, registered_total: bool = False):
        for name, flag in (("late_value", late_value), ("registered_inputs", registered_inputs),
                           ("registered_total", registered_total)):
            if flag and not registered_constants:
                raise ValueError(f"{name} needs registered constants (registered_constants)")
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
        if not 0 <= late_value <= 1 + registered_inputs:
            raise ValueError(f"a value comes at most {1 + registered_inputs} cycles late (late_value), "
                             f"not {late_value}")
        self.own_memory, self.registered_constants, self.late_value = own_memory, registered_constants, late_value
        self.registered_inputs, self.registered_total = registered_inputs, registered_total
        self.latency = self.LATENCY + registered_inputs + registered_total
        super().__init__({
            **stage_ports(self.channels, self.word_bits, self.acc_bits, own_memory),
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
        word = None if self.own_memory else self.word
        if self.own_memory:
            m.submodules.constants = memory = Memory(shape=self.word_bits, depth=self.channels, init=[])
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [
                write.en.eq(self.load_en),
                write.addr.eq(self.load_addr),
                write.data.eq(self.load_data),
                read.addr.eq(self.channel),
            ]
            word = read.data
        # Edge t: the channel's constants are read, the value waits for them (registered_constants: t + 1
        # registers them, and every stage up to the sum comes a cycle later).
        late = int(self.registered_constants)
        # On the ECP5 (with registered constants) each partial product is an instantiated multiplier with its own
        # registers (hw.dsp): its input registers take acc's and M's (their flip-flops here), its output register
        # the product's.
        # With registered inputs the value and the registered constants wait a cycle more, and every stage from
        # the partial products on comes a cycle later (``extra``).
        in_dsp = late and registered_multipliers(platform)
        extra = int(self.registered_inputs)
        # Data registers without the reset where the platform's data registers ignore it (hw.delay.reset_less_data):
        # only ``valid``'s matter after a reset.
        rl = reset_less_data(platform)
        acc = delayed(m, self.acc, late - self.late_value + extra, "early_acc", reset_less=rl)
        multiplier = word[:self.multiplier_bits]
        if late:
            word = delayed(m, word, 1, "constants", reset_less=rl)
        if extra:
            multiplier = word[:self.multiplier_bits]
        if not in_dsp:
            acc = delayed(m, acc, 1, "acc", reset_less=rl)
            multiplier = delayed(m, word[:self.multiplier_bits], extra, "multiplier", reset_less=rl)
        total_late = int(self.registered_total)
        valid = delayed(m, self.valid, 4 + extra + total_late, "valid")
        bias = word[self.multiplier_bits:self.multiplier_bits + self.bias_bits].as_signed()
        shift = delayed(m, word[self.multiplier_bits + self.bias_bits:], 3 - late + extra + total_late, "shift",
                        reset_less=rl)
        # Edge t + 1: the partial products acc_i * M_j of acc's and M's parts (low parts unsigned), each
        # register as wide as its product and without reset, so that Yosys puts it into the iCE40
        # multiplier's output register (on the ECP5, into the instantiated multiplier's).
        a_parts = _parts(acc, self.acc_bits, signed_top=True)
        m_parts = _parts(multiplier, self.multiplier_bits, signed_top=False)
        products = []
        for a_low, a_part in a_parts:
            for m_low, m_part in m_parts:
                name = f"product_{a_low}_{m_low}"
                if in_dsp:
                    product = registered_product(m, name, a_part, m_part)
                else:
                    product = Signal((a_part * m_part).shape(), name=name, reset_less=True)
                    m.d.sync += product.eq(a_part * m_part)
                products.append((product, a_low + m_low))
        # Edge t + 2: two partial sums (each product at its weight), the first plus B; t + 3: their sum. Each
        # as wide as its exact value needs (Amaranth's widths for the sum), so that no carry chain runs
        # through bits that only copy the sign.
        bias_terms = [delayed(m, bias, 1 + extra, "bias", reset_less=rl)]
        halves = []
        for n in range(2):
            terms = [product << low for product, low in products[n::2]] + (bias_terms if n == 0 else [])
            value = sum(terms[1:], terms[0]) if terms else C(0, 1)
            halves.append(Signal(value.shape(), name=f"partial_{n}", reset_less=rl))
            m.d.sync += halves[-1].eq(value)
        if late and not total_late:
            total = halves[0] + halves[1]
        else:
            total = Signal((halves[0] + halves[1]).shape(), reset_less=rl)
            m.d.sync += total.eq(halves[0] + halves[1])
        # Edge t + 4: arithmetic shift right (floor), truncated to out_bits.
        m.d.sync += [self.out.eq(total >> shift), self.out_valid.eq(valid)]
        return m
