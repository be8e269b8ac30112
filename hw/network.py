"""The whole-network core: image in, logits out, every layer on the chip.

A :class:`NetworkCore` holds a layer engine in network mode (:class:`hw.engine.LayerEngine`
with ``value_depth``: its activation buffer is the code memory, its outputs go to the data
memories), a vector unit (:class:`hw.vector.VectorUnit`: activations, residual additions,
pooling, max pooling: it reads the code memory through the engine's read port, which the idle
engine lends, as the idle vector unit lends the engine its activate thresholds), the value
memory, an input table and a program memory, and a sequencer that walks the program
(:mod:`hw.network_params` lists the ops; :mod:`hw.network_program` writes it) with no host
involvement between layers:

1. **Load** (while idle): ``(target, addr, data)`` beats write every layer's constants, the
   vector unit's constants, the input table and the program, once per model. Per image, its
   pixels (:func:`hw.network_program.image_beats`): an ``IMAGE`` beat's pixel goes through the
   input table into the image staging buffer at ``addr`` (``channel * positions + position``), the
   next cycle. IMAGE beats are taken while the core runs too (not while it copies, below), so
   that the next image arrives while this one is computed.
2. **Run**: a ``start`` pulse (taken while idle) copies the staged image into the input tensor's
   place in the code memory (``COPY``: one code per cycle, ``image_depth`` cycles and two to write the
   last, three where block RAM is slow, :func:`hw.memories.slow_block_ram`; ``starting`` is high over
   the reads, then the staging buffer is free for the next image; ``probe.step_done`` marks the end,
   the input step's), then runs the program from its first word:
   each convolution runs on the engine (with the residual addition that the compiler fused into it, if
   any: the engine reads the other operand from the value memory as it writes; and with the activation
   fused into it, if any: the engine's values go through the idle vector unit's activate thresholds,
   and the engine writes their codes), each other node on the vector unit; ``OUTPUT`` sends the logits
   on ``out``, one value per beat (waiting while ``out`` is not ready); ``END`` makes the core idle.
   ``busy`` is high from the cycle after ``start`` until then.

A program word that starts a step takes three cycles to fetch (the program memory's read, then its
read data registered: the block RAM's output feeds no logic directly) and decode, a register word
that follows another word one cycle (the memory reads one word ahead), plus the run time of its step: a layer
as :mod:`hw.engine` states (network mode: its outputs are written one per cycle, ``cols + 1``
cycles per word of ``cols`` channels, or with ``write_pairs`` two per cycle, ``cols + 2`` cycles per
two positions, then ``STAGE_LATENCY`` cycles, plus ``FUSED_LATENCY`` with a fused activation), a
vector op as
:meth:`hw.vector_params.VectorParams.op_cycles` states, three cycles per logit (plus back-pressure). Where the
value memory's reads take longer (:func:`hw.column_memory.value_read_latency`: on the ECP5, a cycle more), a vector op
takes what ``op_cycles`` states with that latency and a logit a cycle more.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .column_memory import column_memory, value_read_latency
from .delay import delayed, late_write, reset_less_data
from .engine import LayerEngine
from .engine_params import CONFIG
from .fsm_encoding import one_hot
from .memories import slow_block_ram
from .network_params import (END, ENGINE_REG, ENGINE_TARGETS, IMAGE, INPUT_TABLE, NETWORK_TARGET_BITS, OP_BITS,
                             OPERANDS, OUTPUT, PIXEL_BITS, PROGRAM, REG_FIELD_BITS, RUN_ENGINE, RUN_VECTOR, VECTOR_BASE,
                             VECTOR_REG, NetworkParams)
from .reset_tree import own_reset_submodule, when_settled
from .spram import ADDR_BITS as SPRAM_ADDR_BITS
from .spram import SpramBuffer, platform_has_spram
from .thresholds import ThresholdUnit
from .vector import VectorUnit
from .vector_params import ACT_THRESHOLDS
from .vector_params import TARGETS as VECTOR_TARGETS

# Levels of reset copies below the core where hw.reset_tree holds: the engine's and the vector unit's, then those
# below the engine (its PE rows').
RESET_LEVELS = 1 + LayerEngine.RESET_LEVELS


def single_port_values(m: Module, width: int):
    """The value memory in SPRAM blocks (:class:`hw.spram.SpramBuffer`, one value of ``width`` bits per word):
    ``(write, read)`` ports with the members of an Amaranth memory's (``en``, ``addr``, ``data``; ``addr``,
    ``data`` one cycle after its address), sharing the one address, the write's while it writes. For a program
    that never reads and writes values in one step: a read's data is undefined after a write."""
    m.submodules.values = buffer = SpramBuffer(width)
    write = SimpleNamespace(en=Signal(name="values_write_en"), addr=Signal(SPRAM_ADDR_BITS, name="values_write_addr"),
                            data=Signal(width, name="values_write_data"))
    read = SimpleNamespace(addr=Signal(SPRAM_ADDR_BITS, name="values_read_addr"), data=buffer.read_data)
    m.d.comb += [buffer.addr.eq(Mux(write.en, write.addr, read.addr)), buffer.write_en.eq(write.en),
                 buffer.write_data.eq(write.data)]
    return write, read


class NetworkSignature(wiring.Signature):
    """The core's host interface, as the core sees it.

    - ``load``: stream in of ``(target, addr, data)`` beats (:data:`NETWORK_TARGET_BITS`,
      ``addr_bits``, ``data_bits``), each taken at an edge with ``valid & ready``: constants and program
      ready only while idle, image pixels (``IMAGE``) at any time except while ``starting`` (``ready``
      follows the offered beat's ``target`` combinationally, whatever ``valid``; where
      :func:`hw.reset_tree.reset_tree` holds, it is also low while a block may still be in reset);
    - ``start`` (in): a one-cycle pulse copies the staged image and runs the program (ignored while
      busy); ``busy`` (out): from the next cycle until the program ends; ``starting`` (out): from the
      next cycle until the staged image has been copied (the staging buffer may then take the next);
    - ``out``: stream out of signed ``value_bits`` values (the logits: an ``OUTPUT`` op's ``channels``
      values from ``src_a`` on); ``valid`` stays high, and the value unchanged, until the edge that takes
      it (``ready``; the program waits as long as it takes), then falls for at least two cycles (the next
      value's read);
    - ``probe`` (out): every write to the data memories, in the cycle it happens, as whole words of
      ``halves`` positions (:attr:`~hw.engine_params.EngineParams.halves`: 2 where the engine writes in
      pairs): ``code_en`` (one bit per lane of each half), ``code_addr``, ``code_data`` (code-memory
      word ``code_addr * halves + h`` in half ``h``); ``value_en`` (one bit per half), ``value_addr``,
      ``value_data`` (likewise);
      ``step_done``: the step of a node (a layer, a vector op) ends, its writes included.
      Simulations rebuild every tensor from it (:class:`hw.network_program.MemoryMirror`); boards
      leave it unconnected.
    """

    def __init__(self, params: NetworkParams):
        self.params = params
        load = data.StructLayout({"target": NETWORK_TARGET_BITS, "addr": params.addr_bits, "data": params.data_bits})
        halves = params.engine.halves
        lanes, code_bits = params.engine.rows, params.engine.rows * params.engine.abits
        probe = wiring.Signature({"code_en": Out(halves * lanes),
                                  "code_addr": Out(range(-(-params.engine.act_depth // halves))),
                                  "code_data": Out(halves * code_bits), "value_en": Out(halves),
                                  "value_addr": Out(range(-(-params.value_depth // halves))),
                                  "value_data": Out(halves * params.value_bits), "step_done": Out(1)})
        super().__init__({"load": In(stream.Signature(load)), "start": In(1), "busy": Out(1), "starting": Out(1),
                          "out": Out(stream.Signature(signed(params.value_bits))),
                          "probe": Out(probe)})

    def __eq__(self, other):
        return type(other) is NetworkSignature and other.params == self.params


class NetworkCore(wiring.Component):
    """The accelerator for a whole model (see the module docstring). ``spram`` as :class:`hw.engine.LayerEngine`
    (None: where the platform has it, :func:`hw.spram.platform_has_spram`): the engine's weights buffer, its wide
    weights buffer where the blocks suffice (:attr:`~hw.network_params.NetworkParams.wide_weights_in_spram`), and
    the value memory where one port serves it (:attr:`~hw.network_params.NetworkParams.values_single_port`), in
    iCE40 UltraPlus SPRAM."""

    def __init__(self, params: NetworkParams, *, spram: bool | None = None):
        if not isinstance(params, NetworkParams):
            raise TypeError(f"params must be a NetworkParams, not {params!r}")
        self.params, self.spram = params, spram
        self.engine = LayerEngine(params.engine, spram=spram, value_depth=params.value_depth,
                                  value_bits=params.value_bits, wide_spram=params.wide_weights_in_spram)
        self.vector = VectorUnit(params.vector)
        super().__init__(NetworkSignature(params))

    def elaborate(self, platform):
        m = Module()
        p = self.params
        lanes, lane_bits = p.engine.rows, p.engine.abits
        engine = own_reset_submodule(m, "engine", self.engine, platform, "layer_engine_sync")
        vector = own_reset_submodule(m, "vector", self.vector, platform, "vector_sync")

        def memory(name, shape, depth, granularity=None):
            m.submodules[name] = mem = Memory(shape=shape, depth=depth, init=[])
            return mem.write_port(granularity=granularity), mem.read_port()

        # The value memory: words of ``halves`` values (two where the engine writes in pairs: values 2w, 2w + 1),
        # read ``latency`` cycles after the address (hw.column_memory.value_read_latency).
        halves, vb, latency = p.engine.halves, p.value_bits, value_read_latency(platform)
        words = -(-p.value_depth // halves)
        spram = platform_has_spram(platform) if self.spram is None else self.spram
        single_port = spram and p.values_single_port
        if single_port:
            value_port, value_read = single_port_values(m, vb)
        elif latency > 1:
            # As columns of block RAM as deep as the memory, each group of columns with port registers of its own:
            # no multiplexer over its blocks before its readers' registers, none between its readers' addresses and
            # its blocks, and no register for all of them (hw.column_memory).
            value_port, value_read = column_memory(m, "values", halves * vb, words, vb, registered=True)
        else:
            value_port, value_read = memory("values", halves * vb, words, vb)
        # The writes, from the engine or the vector unit. In block RAM they reach the memory a cycle later, from
        # registers: no multiplexer between the engine's write test and the address of the memory's many blocks
        # (the ResNet-20 core's worst path on the ULX3S-85F, 12 of its 17 ns routing to a block across the die).
        # No step reads a value in the cycle after it is written (as columns with registered ports, the writes
        # land a cycle later still and the reads come a cycle later too: the same holds). One SPRAM port reads
        # too: its writes stay.
        value_write = SimpleNamespace(en=Signal.like(value_port.en, name="value_write_en"),
                                      addr=Signal.like(value_port.addr, name="value_write_addr"),
                                      data=Signal.like(value_port.data, name="value_write_data"))
        domain = m.d.comb if single_port else m.d.sync
        domain += [value_port.en.eq(value_write.en), value_port.addr.eq(value_write.addr),
                   value_port.data.eq(value_write.data)]
        program_write, program_read = memory("program", p.instruction_bits, p.program_depth)
        table_write, table_read = memory("input_table", p.input_bits, 256)
        stage_write, stage_read = memory("image", p.input_bits, p.image_depth)

        idle, copying = Signal(), Signal()
        # After a reset, no beat and no start until every block runs: the engine and the vector unit leave reset
        # a cycle after the core, the engine's PE rows a cycle after it (hw.reset_tree.settling).
        settled = when_settled(m, platform, RESET_LEVELS)
        offered = settled(self.load.valid)
        load = self.load.payload
        is_image = load.target == IMAGE
        host = offered & idle & ~is_image
        vector_target = load.target - VECTOR_BASE

        def host_write(name, **ports):
            """The ports (``en`` first) of a host beat's write into the core's own memories (program, input table,
            the vector unit's constants), in order: on the ECP5 a cycle later, decoded, from flip-flops of their
            own (:func:`hw.delay.late_write`; the decode into the input table's block RAM write enable was 12.1 ns
            on the ULX3S-85F at 1badc10)."""
            if not slow_block_ram(platform):
                return list(ports.values())
            return late_write(m, ports.values(), name, ports, reset_less=reset_less_data(platform))

        program = host_write("program_write", en=host & (load.target == PROGRAM), addr=load.addr, data=load.data)
        table = host_write("table_write", en=host & (load.target == INPUT_TABLE), addr=load.addr, data=load.data)
        vector_load = host_write("vector_load", en=host & (load.target >= VECTOR_BASE) &
                                 (load.target < VECTOR_BASE + len(VECTOR_TARGETS)), target=vector_target,
                                 addr=load.addr, data=load.data)
        m.d.comb += [
            self.load.ready.eq(settled(Mux(is_image, ~copying, idle))),
            program_write.en.eq(program[0]), program_write.addr.eq(program[1]), program_write.data.eq(program[2]),
            table_write.en.eq(table[0]), table_write.addr.eq(table[1]), table_write.data.eq(table[2]),
            vector.load_en.eq(vector_load[0]), vector.load_target.eq(vector_load[1]),
            vector.load_addr.eq(vector_load[2]), vector.load_data.eq(vector_load[3]),
        ]

        # The program word at pc: read in FETCH, registered in READ, decoded in DECODE.
        pc = Signal(range(p.program_depth + 1))
        word = Signal(p.instruction_bits)       # the program word at pc, registered (READ)
        op = word[:OP_BITS]
        reg = word[OP_BITS:OP_BITS + REG_FIELD_BITS]
        value = word[OP_BITS + REG_FIELD_BITS:].as_signed()
        # The memory reads ahead: pc in FETCH, pc + 1 in READ, pc + 2 in DECODE (its data comes a cycle
        # later, when pc has moved on by a register word): a run of register words decodes one per cycle.
        ahead = Signal(2)
        m.d.comb += program_read.addr.eq(pc + ahead)
        present = p.vector.operand_registers        # the window's for max, average pooling and subsampling
        operands = {name: Signal(signed(p.reg_bits), name=f"operand_{name}") for name in present}

        # The engine's load port: the host's beats while idle, the program's register writes while running.
        # A register value is sign-extended to the engine's registers only, zeros above: sign-extended to
        # the whole load word (thousands of bits with 8-bit codes' threshold words) it became a Verilog
        # line of thousands of copies of its sign bit, too many tokens for Verilator.
        sequencer_config, config_value = Signal(), Signal(signed(engine.reg_bits))
        m.d.comb += [
            config_value.eq(value),
            engine.load.valid.eq(Mux(idle, host & (load.target < ENGINE_TARGETS), sequencer_config)),
            engine.load.payload.target.eq(Mux(idle, load.target, CONFIG)),
            engine.load.payload.addr.eq(Mux(idle, load.addr, reg)),
            engine.load.payload.data.eq(Mux(idle, load.data, config_value.as_unsigned())),
        ]
        m.d.comb += [getattr(vector, name).eq(operands[name]) for name in present]
        # A fused activation: the engine's values through the vector unit's thresholds, and back.
        m.d.comb += [vector.lent_valid.eq(engine.activation.valid), vector.lent_value.eq(engine.activation.value),
                     vector.lent_slot.eq(engine.activation.slot), engine.activation.code.eq(vector.lent_code)]
        if halves == 2 and p.vector.act_code_bits:
            # In pairs, the odd position's value goes through a copy of the activate thresholds, loaded alike.
            v = p.vector
            # The slot and the word registered, the value three cycles late (as the vector unit's).
            late = slow_block_ram(platform)
            m.submodules.odd_thresholds = odd = ThresholdUnit(v.value_bits, v.act_code_bits, v.act_slots,
                                                             v.act_threshold_bits, registered_word=late,
                                                             late_value=2 if late else 0, registered_channel=late,
                                                             registered_inputs=late)
            odd_load = host_write("odd_load", en=host & (load.target == VECTOR_BASE + ACT_THRESHOLDS), addr=load.addr,
                                  data=load.data)
            m.d.comb += [odd.load_en.eq(odd_load[0]), odd.load_addr.eq(odd_load[1]), odd.load_data.eq(odd_load[2]),
                         odd.valid.eq(engine.activation.valid), odd.acc.eq(engine.activation.value_odd),
                         odd.channel.eq(engine.activation.slot), engine.activation.code_odd.eq(odd.code)]

        # IMAGE beats: pixel -> input table -> the staging buffer, written the next cycle. On the ECP5 the code
        # read from the table is registered first and written a cycle later still (the table's block RAM output
        # ran into the staging buffer's data input: 12.7 ns on the ULX3S-85F at 7bd78e4); the host starts the
        # network, whose COPY reads the staging buffer, beats after its last pixel.
        stage_en, stage_addr, stage_data = offered & is_image & ~copying, load.addr, table_read.data
        if slow_block_ram(platform):
            stage_en, stage_addr = delayed(m, stage_en, 1, "stage_en"), delayed(m, stage_addr, 1, "stage_addr")
            stage_data = delayed(m, stage_data, 1, "staged_code", reset_less=reset_less_data(platform))
        m.d.comb += [table_read.addr.eq(load.data[:PIXEL_BITS]), stage_write.data.eq(stage_data)]
        m.d.sync += [stage_write.en.eq(stage_en), stage_write.addr.eq(stage_addr)]

        # COPY: staged code `index` (channel * positions + position) is read, registered the next cycle (no
        # path from one block RAM's output into another's input: the ULX3S-85F's worst), and written the cycle
        # after into lane `lane` of code-memory word `word_base + position`. On the ECP5 the read is registered
        # twice, and written a cycle later still: the first register has the block's output alone for its input,
        # so the placer can put it by the block (the block's 5.8 ns clock-to-output and 5.4 ns of routing to the
        # one register were the ULX3S-85F ResNet-20's worst path at 8bcfa9e).
        copy_lag = 2 + int(slow_block_ram(platform))
        index, position = Signal(range(p.image_depth + 1)), Signal(range(p.image_positions))
        lane, word_base = Signal(range(lanes)), Signal(range(p.engine.act_depth + 1))
        copy_valid, copy_lane, copy_addr = (delayed(m, value, copy_lag, name) for value, name in
                                            ((copying, "copy_valid"), (lane, "copy_lane"),
                                             (word_base + position, "copy_addr")))
        copy_code = delayed(m, stage_read.data[:lane_bits], copy_lag - 1, "copy_code",
                            reset_less=reset_less_data(platform))
        m.d.comb += stage_read.addr.eq(index)

        # The code memory's ports (the engine's, while it is idle): written with copied image codes or the
        # vector unit's codes and words, read by the vector unit (max pooling).
        m.d.comb += [
            engine.code_write.en.eq(Mux(copy_valid, Cat(copy_lane == n for n in range(lanes)),
                                        Mux(vector.code_write_en, vector.code_write_lanes, 0))),
            engine.code_write.addr.eq(Mux(copy_valid, copy_addr, vector.code_write_addr)),
            engine.code_write.data.eq(Mux(copy_valid, Cat(*[copy_code] * lanes),
                                          vector.code_write_word)),
            engine.code_read.addr.eq(vector.code_read_addr), vector.code_read_data.eq(engine.code_read.data),
        ]

        # The value memory: written by the engine (whole words) or the vector unit (one value), never both
        # at once; read by OUTPUT or the vector unit (one value: its half of the word) or the engine (while
        # busy: fused additions; whole words). The read port follows ``engine_reads``, the engine's busy a
        # cycle late (no logic from its state into the address of the memory's blocks): the engine reads no
        # value in its first busy cycle, and nothing else reads until three cycles after it is done.
        out_addr, outputting = Signal(signed(p.reg_bits)), Signal()
        single_read = Mux(outputting, out_addr, vector.val_read_addr)
        if halves == 1:
            vector_en, vector_addr, read_word, read_half = C(1, 1), vector.val_write_addr, single_read, C(0, 1)
        else:
            vector_en = Mux(vector.val_write_addr[0], C(0b10, 2), C(0b01, 2))
            vector_addr, read_word = vector.val_write_addr >> 1, single_read >> 1
            read_half = delayed(m, single_read[0], latency, "value_read_half")
        single_value = value_read.data.word_select(read_half, vb)
        engine_writes, engine_reads = engine.val_write.en.any(), Signal(name="engine_reads")
        m.d.sync += engine_reads.eq(engine.busy)
        m.d.comb += [
            value_write.en.eq(Mux(engine_writes, engine.val_write.en, Mux(vector.val_write_en, vector_en, 0))),
            value_write.addr.eq(Mux(engine_writes, engine.val_write.addr, vector_addr)),
            value_write.data.eq(Mux(engine_writes, engine.val_write.data,
                                    Cat(*[vector.val_write_data.as_unsigned()] * halves))),
            value_read.addr.eq(Mux(engine_reads, engine.val_read.addr, read_word)),
            vector.val_read_data.eq(single_value), engine.val_read.data.eq(value_read.data),
        ]
        m.d.comb += [self.probe.code_en.eq(engine.code_written.en), self.probe.code_addr.eq(engine.code_written.addr),
                     self.probe.code_data.eq(engine.code_written.data), self.probe.value_en.eq(value_write.en),
                     self.probe.value_addr.eq(value_write.addr), self.probe.value_data.eq(value_write.data)]

        # OUTPUT's words still to offer, and `no_more` (it is 0), a register set with it (OUTPUT_READ branches on
        # a flip-flop, not on a compare of the count).
        remaining, no_more = Signal(signed(p.reg_bits)), Signal(name="no_more")
        # The value offered, from a register (OUTPUT_HOLD takes it from the value memory's read, whose multiplexer
        # over the memory's blocks ran into the bridge's word register: the ULX3S-85F's worst path at 0e077f7).
        out_value = Signal(signed(p.value_bits), name="out_value", reset_less=reset_less_data(platform))
        m.d.sync += out_value.eq(single_value)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(settled(self.start)):
                    m.d.sync += [pc.eq(0), index.eq(0), position.eq(0), lane.eq(0), word_base.eq(p.image_base)]
                    m.next = "COPY"
            with m.State("COPY"):
                m.d.sync += [index.eq(index + 1), position.eq(position + 1)]
                with m.If(position == p.image_positions - 1):
                    m.d.sync += [position.eq(0), lane.eq(lane + 1)]
                    with m.If(lane == lanes - 1):
                        m.d.sync += [lane.eq(0), word_base.eq(word_base + p.image_positions)]
                with m.If(index == p.image_depth - 1):
                    m.next = "COPY_WRITE"
            with m.State("COPY_WRITE"):
                # The last code is registered (on the ECP5: registered once, COPY_LATE twice).
                m.next = "COPY_LATE" if copy_lag > 2 else "COPY_END"
            if copy_lag > 2:
                with m.State("COPY_LATE"):
                    m.next = "COPY_END"
            with m.State("COPY_END"):
                # The last code is written; the input step is done.
                m.d.comb += self.probe.step_done.eq(1)
                m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += ahead.eq(1)
                m.d.sync += word.eq(program_read.data)
                m.next = "DECODE"
            with m.State("DECODE"):
                # A register word: the next word (read at pc + 1 meanwhile) is decoded in the next cycle.
                m.d.comb += ahead.eq(2)
                advance = [pc.eq(pc + 1), word.eq(program_read.data)]
                with m.Switch(op):
                    with m.Case(ENGINE_REG):
                        m.d.comb += sequencer_config.eq(1)
                        m.d.sync += advance
                    with m.Case(VECTOR_REG):
                        with m.Switch(reg):
                            for name in present:
                                with m.Case(OPERANDS.index(name)):
                                    m.d.sync += operands[name].eq(value)
                        m.d.sync += advance
                    with m.Case(RUN_ENGINE):
                        m.d.comb += engine.start.eq(1)
                        m.next = "WAIT_ENGINE"
                    with m.Case(RUN_VECTOR):
                        m.d.comb += vector.start.eq(1)
                        m.next = "WAIT_VECTOR"
                    with m.Case(OUTPUT):
                        m.d.sync += [out_addr.eq(operands["src_a"]), remaining.eq(operands["channels"]),
                                     no_more.eq(operands["channels"] == 0)]
                        m.next = "OUTPUT_READ"
                    with m.Case(END):
                        m.next = "IDLE"
                    with m.Default():
                        m.next = "IDLE"
            with m.State("WAIT_ENGINE"):
                with m.If(~engine.busy):
                    m.d.comb += self.probe.step_done.eq(1)
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
            with m.State("WAIT_VECTOR"):
                with m.If(~vector.busy):
                    m.d.comb += self.probe.step_done.eq(1)
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
            with m.State("OUTPUT_READ"):
                m.d.comb += outputting.eq(1)
                with m.If(no_more):
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
                with m.Else():
                    m.next = "OUTPUT_HOLD"
            # The value read: ``latency`` cycles until its data, a cycle more into out_value.
            holds = ["OUTPUT_HOLD"] + [f"OUTPUT_HOLD_{n}" for n in range(2, latency + 1)]
            for hold, following in zip(holds, holds[1:] + ["OUTPUT_OFFER"]):
                with m.State(hold):
                    m.d.comb += outputting.eq(1)
                    m.next = following
            with m.State("OUTPUT_OFFER"):
                m.d.comb += [outputting.eq(1), self.out.valid.eq(1), self.out.payload.eq(out_value)]
                with m.If(self.out.ready):
                    m.d.sync += [out_addr.eq(out_addr + 1), remaining.eq(remaining - 1), no_more.eq(remaining == 1)]
                    m.next = "OUTPUT_READ"
        one_hot(fsm)
        # A continuous assignment (an FSM-state block would start as X in Icarus until the state changes).
        m.d.comb += [idle.eq(fsm.ongoing("IDLE")), copying.eq(fsm.ongoing("COPY")), self.busy.eq(~idle),
                     self.starting.eq(copying)]
        return m
