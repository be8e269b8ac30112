"""Threshold output stage: accumulators -> the next layer's activation codes.

Bit-exact with :meth:`compiler.graph.Thresholds.apply`: for a value ``acc`` of channel
``n``, ``code = #{c : acc >= T[n, c]}`` (``acc <= T[n, c]`` where ``descending[n]``).

The code is a population count of ``s = 2^code_bits - 1`` parallel comparisons, summed
by a balanced adder tree. The compiler sorts each channel's thresholds, so their
comparisons form a thermometer code and a priority encoder would give the same count;
the popcount is chosen because it is just as small to write and stays equal to
``apply`` even for unsorted thresholds (nothing in the hardware depends on the order).

A descending channel is stored with thresholds ``T + 1`` and counts the comparisons that fail
(``acc <= T  iff  not acc >= T + 1``: each comparison's bit XOR the channel's flag), so every
channel uses the same ``s`` ">=" comparators, with no negation of the value and no second
comparator per threshold.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from compiler.graph import Thresholds

from .delay import delayed, reset_less_data
from .memories import slow_block_ram
from .stage_ports import stage_ports
from .stage_words import threshold_bits, threshold_word_bits, threshold_words, thresholds_array


def popcount(bits):
    """The number of ones among the 1-bit values ``bits``, as a balanced adder tree."""
    values = list(bits)
    if not values:
        raise ValueError("popcount of no bits")
    while len(values) > 1:
        summed = [a + b for a, b in zip(values[0::2], values[1::2])]
        values = summed + values[len(summed) * 2:]
    return values[0]



def lent_value_lag(platform) -> int:
    """Cycles by which a lent element's value follows its valid and slot into the vector unit's
    :class:`ThresholdUnit` on ``platform``: 3 on an ECP5 (the unit registers the slot,
    ``registered_channel``, and takes the value ``late_value`` 2 cycles late), else 0. The engine sends
    the valid and slot this many cycles ahead of the value."""
    return 3 if slow_block_ram(platform) else 0

class ThresholdUnit(wiring.Component):
    """Per-channel thresholds of ``channels`` channels, streaming one value per cycle.

    Parameters: ``acc_bits`` (signed input width), ``code_bits`` (b; s = 2^b - 1
    thresholds per channel), ``channels``, ``threshold_bits`` (signed width of a stored
    threshold; :func:`threshold_bits`, at most ``acc_bits + 1`` for compiler stages),
    ``own_memory`` (False: the words come in on ``word``, read outside; s <= 15 only).

    Ports:

    - load: ``load_en``, ``load_addr`` (channel), ``load_data`` (``word_bits``, a word of
      :func:`threshold_words`); written at the clock edge. Load between layers: a value
      of the channel being written in the same cycle reads the old word. Without
      ``own_memory``: ``word`` instead, the channel's word a cycle after the value.
    - in: ``valid``, ``acc`` (signed ``acc_bits``), ``channel`` (with its own memory).
    - out: ``code_valid``, ``code`` (unsigned ``code_bits``), registered.

    Latency 3 (``LATENCY``): a value sampled at clock edge t appears after edge t + 2 (edge t
    reads the channel's word from block RAM, t + 1 registers the comparisons with every threshold,
    t + 2 their count; the word itself is not registered: on the UP5K its flip-flops would not
    fit). With ``registered_word`` (:func:`hw.memories.slow_block_ram`), latency 4 (``latency``): t + 1
    registers the word, t + 2 the comparisons, t + 3 their count; ``late_value`` (cycles, with
    ``registered_word`` only; at most 1, 2 with ``registered_inputs``): ``acc`` comes that many cycles after its
    ``valid`` and ``channel``, and waits as many cycles less for the word (the same latency from ``valid``).
    ``registered_inputs``: one more register on the value and the word before the
    comparisons (latency one more: 5 with ``registered_word``), so that the comparators need not lie near both
    the value's source and the word's block RAM (the engine's unit on the ECP5, whose stage takes 5 cycles
    anyway: 13.1 ns into the comparisons' registers on the ULX3S-85F at 1badc10). ``registered_channel`` (with
    its own memory): the channel passes a register before the memory's read address, and ``valid`` and
    ``channel`` come a cycle earlier for the same value (latency one more from ``valid``, the same from the
    value): no logic between the channel's sources and the memory (the vector unit's, whose channel is its own
    slot or the lent one: 13.1 ns into the memory's address on the ULX3S-85F at 38d3741). Fully pipelined: one
    value per cycle, gaps allowed (``valid`` low), no back-pressure.
    """

    LATENCY = 3

    def __init__(self, acc_bits: int, code_bits: int, channels: int, threshold_bits: int, own_memory: bool = True,
                 registered_word: bool = False, late_value: int = 0, registered_inputs: bool = False,
                 registered_channel: bool = False):
        for name, value, low in (("acc_bits", acc_bits, 2), ("code_bits", code_bits, 1),
                                 ("channels", channels, 1), ("threshold_bits", threshold_bits, 2)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.acc_bits, self.code_bits = int(acc_bits), int(code_bits)
        self.channels, self.threshold_bits = int(channels), int(threshold_bits)
        self.s = 2 ** self.code_bits - 1
        self.word_bits = threshold_word_bits(self.code_bits, self.threshold_bits)
        if not own_memory and self.s > 15:
            raise ValueError(f"{self.s} thresholds a channel are held in one memory per threshold: the unit "
                             f"needs its own (own_memory=True)")
        if late_value and not registered_word:
            raise ValueError("a late value (late_value) waits for a registered word (registered_word)")
        if not 0 <= late_value <= 1 + registered_inputs:
            raise ValueError(f"a value comes at most {1 + registered_inputs} cycles late (late_value), "
                             f"not {late_value}")
        self.own_memory, self.registered_word, self.late_value = own_memory, registered_word, late_value
        if registered_channel and not own_memory:
            raise ValueError("a registered channel (registered_channel) addresses the unit's own memory (own_memory)")
        self.registered_inputs, self.registered_channel = registered_inputs, registered_channel
        self.latency = self.LATENCY + registered_word + registered_inputs + registered_channel
        super().__init__({
            **stage_ports(self.channels, self.word_bits, self.acc_bits, own_memory),
            "code_valid": Out(1),
            "code": Out(self.code_bits),
        })

    @classmethod
    def for_stage(cls, stage: Thresholds, acc_bits: int) -> ThresholdUnit:
        """A unit sized for ``stage`` (channels, code bits, threshold width)."""
        return cls(acc_bits, stage.bits, thresholds_array(stage).shape[0], threshold_bits(stage))

    def words(self, stage: Thresholds) -> list[int]:
        """Memory words of ``stage`` for this unit (checks that it fits)."""
        t = thresholds_array(stage)
        if t.shape != (self.channels, self.s):
            raise ValueError(f"stage has thresholds of shape {t.shape}, the unit holds "
                             f"({self.channels}, {self.s})")
        return threshold_words(stage, self.threshold_bits)

    def elaborate(self, platform):
        m = Module()
        # Small words (s <= 15) in one memory; wider ones as one memory per field of the
        # word (each threshold, the flag), all addressed by channel: the same storage, but
        # Amaranth's simulator cannot compile the write logic of a word thousands of bits
        # wide (s = 255).
        tb = self.threshold_bits
        if not self.own_memory:
            words = []
        elif self.s <= 15:
            words = [("words", self.word_bits, self.load_data)]
        else:
            words = [(f"threshold_{i}", tb, self.load_data.word_select(i, tb)) for i in range(self.s)]
            words.append(("descending", 1, self.load_data[-1]))
        # Data registers without the reset where the platform's data registers ignore it (hw.delay.reset_less_data):
        # only ``valid``'s matter after a reset.
        reset_less = reset_less_data(platform)
        parts = []
        if self.own_memory and self.registered_channel:
            channel = delayed(m, self.channel, 1, "channel", reset_less=reset_less)
        elif self.own_memory:
            channel = self.channel
        for name, width, load in words:
            m.submodules[name] = memory = Memory(shape=width, depth=self.channels, init=[])
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [
                write.en.eq(self.load_en),
                write.addr.eq(self.load_addr),
                write.data.eq(load),
                read.addr.eq(channel),
            ]
            parts.append(read.data)
        word = Cat(*parts) if self.own_memory else self.word
        if self.registered_word or self.registered_inputs:
            word = delayed(m, word, self.registered_word + self.registered_inputs, "word", reset_less=reset_less)
        data = [word.word_select(i, tb).as_signed() for i in range(self.s)] + [word[-1]]
        *thresholds, descending = data
        # Edge t: the channel's word is read (and with ``registered_word`` registered at t + 1; with
        # ``registered_inputs`` once more, with the value); the value waits for it.
        acc = delayed(m, self.acc, 1 + self.registered_word - self.late_value + self.registered_inputs, "acc",
                      reset_less=reset_less)
        valid = delayed(m, self.valid, self.latency - 1, "valid")
        # Edge t + 1 (t + 2): the comparisons with every stored threshold (a descending channel's failed ones count:
        # acc <= T iff not acc >= T + 1); t + 2 (t + 3): their count.
        hits = Signal(self.s, reset_less=reset_less)
        m.d.sync += [hits[i].eq((acc >= t) ^ descending) for i, t in enumerate(thresholds)]
        m.d.sync += [self.code.eq(popcount(hits)), self.code_valid.eq(valid)]
        return m
