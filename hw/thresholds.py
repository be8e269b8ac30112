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

Wide codes (an 8-bit edge layer's input: 255 thresholds a channel) come from a uniform quantizer, whose
thresholds are an arithmetic progression (:mod:`hw.progression`): ``T[c] = ceil((B + c * S) / 2^k)``. A unit
with a ``progression`` shape stores such a channel as ``B' = B - S``, ``S``, its code mask ``2^b - 1`` and the
flag, and counts by a pipelined binary search, one bit of the code a stage: the remainder
``R = acc * 2^k - B' - n * S`` of the code ``n`` found so far loses ``S * 2^j`` where that leaves it non-negative,
and bit ``j`` of ``n`` is set (``acc >= T[c]`` iff ``acc * 2^k >= B + c * S``, and ``B + (n - 1) * S = B' + n * S``).
The search runs over every ``b``-bit code of the unit; the mask clamps a narrower stage's (its count stops at
``2^b - 1``: the comparisons are monotone in ``c``), and a descending channel's code is the mask less the count
(XOR). Each search stage is one subtraction, where the listed form takes ``2^b - 1`` comparators and stored
thresholds: :func:`hw.stage_words.progression_words` are the words.
"""

from __future__ import annotations

import numpy as np
from amaranth import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from compiler.graph import Thresholds

from .delay import delayed, reset_less_data
from .memories import slow_block_ram
from .stage_ports import stage_ports
from .progression import ProgressionShape
from .stage_words import threshold_bits, threshold_unit_word_bits, threshold_words, thresholds_array


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
    ``own_memory`` (False: the words come in on ``word``, read outside; s <= 15 only), ``progression`` (a
    :class:`~hw.progression.ProgressionShape`: channels may also hold progressions, searched over ``code_bits``
    bits, and the listed thresholds are ``progression.table_code_bits`` wide, none where 0; s counts those).

    Ports:

    - load: ``load_en``, ``load_addr`` (channel), ``load_data`` (``word_bits``, a word of
      :func:`threshold_words`); written at the clock edge. Load between layers: a value
      of the channel being written in the same cycle reads the old word (with ``progression``, a word of
      :func:`~hw.stage_words.progression_words` or of listed thresholds: ``word_bits`` is
      :func:`~hw.stage_words.threshold_unit_word_bits`). Without
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
    value per cycle, gaps allowed (``valid`` low), no back-pressure. With ``progression``, ``code_bits`` cycles
    more (``latency``): the search's stages, whose first takes the place of the comparisons' register; the listed
    thresholds' count waits for it.
    """

    LATENCY = 3

    def __init__(self, acc_bits: int, code_bits: int, channels: int, threshold_bits: int, own_memory: bool = True,
                 registered_word: bool = False, late_value: int = 0, registered_inputs: bool = False,
                 registered_channel: bool = False, progression: ProgressionShape | None = None):
        for name, value, low in (("acc_bits", acc_bits, 2), ("code_bits", code_bits, 1),
                                 ("channels", channels, 1), ("threshold_bits", threshold_bits, 2)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.acc_bits, self.code_bits = int(acc_bits), int(code_bits)
        self.channels, self.threshold_bits = int(channels), int(threshold_bits)
        if progression is not None and not isinstance(progression, ProgressionShape):
            raise TypeError(f"progression must be a ProgressionShape or None, not {progression!r}")
        if progression is not None and progression.table_code_bits > self.code_bits:
            raise ValueError(f"listed thresholds of {progression.table_code_bits} bits exceed code_bits="
                             f"{self.code_bits}")
        self.progression = progression
        self.table_code_bits = progression.table_code_bits if progression else self.code_bits
        self.s = 2 ** self.table_code_bits - 1
        self.word_bits = threshold_unit_word_bits(self.code_bits, self.threshold_bits, progression)
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
        self.latency = (self.LATENCY + registered_word + registered_inputs + registered_channel
                        + (self.code_bits if progression else 0))
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
        # Small words (s <= 15) in one memory; wider ones as one memory per threshold's bits of the word
        # (each threshold, then the rest: the flag), all addressed by channel: the same storage, but
        # Amaranth's simulator cannot compile the write logic of a word thousands of bits wide (s = 255).
        tb = self.threshold_bits
        if not self.own_memory:
            words = []
        elif self.s <= 15:
            words = [("words", self.word_bits, self.load_data)]
        else:
            words = [(f"threshold_{i}", tb, self.load_data.word_select(i, tb)) for i in range(self.word_bits // tb)]
            if self.word_bits % tb:
                words.append(("descending", self.word_bits % tb, self.load_data[self.word_bits // tb * tb:]))
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
        # Edge t: the channel's word is read (and with ``registered_word`` registered at t + 1; with
        # ``registered_inputs`` once more, with the value); the value waits for it.
        acc = delayed(m, self.acc, 1 + self.registered_word - self.late_value + self.registered_inputs, "acc",
                      reset_less=reset_less)
        valid = delayed(m, self.valid, self.latency - 1, "valid")
        m.d.sync += self.code_valid.eq(valid)
        listed = self._count(m, word, acc, reset_less) if self.s else None
        if self.progression is None:
            m.d.sync += self.code.eq(listed)
            return m
        searched, form = self._search(m, word, acc, reset_less)
        if listed is not None:
            # The count waits for the search; the word's top bit says which the channel holds.
            listed = delayed(m, listed, self.code_bits, "listed_code", reset_less=reset_less)
            searched = Mux(delayed(m, form, 1 + self.code_bits, "form", reset_less=reset_less), searched, listed)
        m.d.sync += self.code.eq(searched)
        return m

    def _count(self, m, word, acc, reset_less):
        """The listed thresholds' code, one cycle after the comparisons' register (edge t + 1; t + 2 their count):
        the comparisons with every stored threshold (a descending channel's failed ones count: acc <= T iff not
        acc >= T + 1), then their count (combinational, into the caller's register)."""
        tb = self.threshold_bits
        thresholds = [word.word_select(i, tb).as_signed() for i in range(self.s)]
        descending = word[self.s * tb]
        hits = Signal(self.s, reset_less=reset_less)
        m.d.sync += [hits[i].eq((acc >= t) ^ descending) for i, t in enumerate(thresholds)]
        return popcount(hits)

    def _search(self, m, word, acc, reset_less):
        """A progression word's code, ``code_bits + 1`` registers after the word (combinational out of the last
        stage, into the caller's register), and the word's form bit (combinational)."""
        shape, b = self.progression, self.code_bits
        bb, sb = shape.base_bits, shape.step_bits
        base, step = word[:bb].as_signed(), word[bb:bb + sb]
        mask, descending = word[bb + sb:bb + sb + b], word[bb + sb + b]
        rest = Signal(signed(max(self.acc_bits + shape.shift, bb) + 1), name="rest_in", reset_less=reset_less)
        m.d.sync += rest.eq((acc << shape.shift) - base)
        step, mask, descending = (delayed(m, value, 1, f"{name}_in", reset_less=reset_less)
                                  for value, name in ((step, "step"), (mask, "mask"), (descending, "descending")))
        found = C(0, b)
        for j in reversed(range(b)):
            trial = rest - (step << j)
            kept = Signal(signed(len(rest)), name=f"rest_{j}", reset_less=reset_less)
            code = Signal(b, name=f"found_{j}", reset_less=reset_less)
            m.d.sync += [kept.eq(Mux(trial >= 0, trial, rest)), code.eq(found | ((trial >= 0) << j))]
            if j:
                step = delayed(m, step, 1, f"step_{j}", reset_less=reset_less)
            mask, descending = (delayed(m, value, 1, f"{name}_{j}", reset_less=reset_less)
                                for value, name in ((mask, "mask"), (descending, "descending")))
            rest, found = kept, code
        clamped = Mux((found & ~mask).any(), mask, found)
        return clamped ^ Mux(descending, mask, 0), word[-1]
