"""The layer engine: a weight-stationary PE array with its buffers, address generation and output stage.

One engine runs any convolution or fully connected layer of a compiled model that fits
its :class:`~hw.engine_params.EngineParams`, one layer per ``start``:

1. **Load** (while idle): ``(target, addr, data)`` beats on the ``load`` stream write
   configuration registers and the buffers (targets in :mod:`hw.engine_params`; the host
   side is :mod:`hw.program`).
2. **Compute**: for each tile of ``cols`` output channels and each reduction tile
   (kernel tap ``(ky, kx)`` x group of ``rows`` input channels) the engine loads the
   tile's ``rows`` x ``cols`` weight codes into the PEs (one row per cycle), streams every
   output position through the array (one per cycle; row ``r`` reads input channel
   ``g * rows + r`` at ``(y * stride + ky - padding, x * stride + kx - padding)``, code 0
   outside the image), adds each column's partial sum to the one kept for that position
   in the column's memory (one entry per output channel tile and position). PEs hold two
   weights (the next tile's loads while the current tile's last elements are still in the
   array).
3. **Read back**: each position's ``cols`` accumulators pass, one per cycle, through the
   one output stage (thresholds, requantize [then ReLU] or none), and stream out on ``out`` as one
   word of ``cols`` outputs per position, channel tile after channel tile. One stage
   serves all columns: read-back is bound by the host link anyway, and per-column stage
   memories would not fit small FPGAs.

Products (a :class:`hw.pe.PEArray` of :class:`hw.pe.RowTable` PEs): each row has a loadable
table ``j -> (L[1][j], ..., L[s_w][j])`` at its left edge (the "row vector" way of
DESIGN.md); the vector travels along the row and each PE selects ``L[k][j]`` by its weight
magnitude. Engines with ``multiply`` also hold the level ``A[j]`` in a table entry whose
top bit is set, and then the PE multiplies it by its weight level ``W[k]`` (8-bit edge
layers, whose LUT would be too large).

Cycles of one layer, the first being the one after the edge that samples ``start``:
computing takes ``tiles * (rows + positions + 1 + gap) - gap + drain`` cycles with
``tiles = co_tiles * kernel^2 * groups``, ``gap = max(0, cols + 2 - positions)`` and
``drain = rows + cols + 6`` (:attr:`LayerEngine.drain`; ``rows + cols + 4`` plus the array's
:data:`~hw.pe_words.ARRAY_PIPELINE` registers): each tile loads its weight rows,
issues its positions and waits ``1 + gap`` cycles; the last waits ``1 + drain`` instead, for
the pipeline to empty. Each output word is then offered ``cols + STAGE_LATENCY + 3`` (``cols +
8``; ``cols + 10`` on the ECP5, :meth:`LayerEngine.stage_latency`) cycles after computing ends or
the previous word is accepted; ``busy`` falls the cycle after the last word is accepted.

Network mode (``value_depth``; :func:`network_signature`): outputs are not offered on a stream but
written into the code memory (one lane per cycle) or the value memory. Each channel tile is computed
in *bands* of ``band_rows`` output rows (registers ``band_*``; :mod:`hw.bands` picks them): every
reduction tile of a band, then the next band (each band reads its channel tile's weights again), and
each band is written back while the array computes the next ones. A channel tile's ``groups`` row
groups start ``tile_step`` activation words after the previous tile's (0: every tile reads the same
ones; a depthwise conv's tiles each read their own group, :func:`hw.engine_params.group_span`). With
``dst_add`` set, each value is added to the one at its address before it is written (a residual
addition fused into the layer: the old value is read the cycle before the write, so the timing is the
same); with the stage STAGE_REQUANTIZE_RELU, ``max(0, value)`` is written (after the addition, if
any). With ``act_fuse`` set,
each value written also goes through an activation's thresholds, lent by the vector unit (the
``activation`` port), and its code is written into its lane of the codes tensor at ``act_dst``,
``FUSED_LATENCY`` cycles after the value (an activation fused into the layer; the layer's busy time
grows by ``FUSED_LATENCY`` cycles at its end). The accumulator memories have a second read port for
the write-back, and the code memory separate read (compute) and write (write-back) addresses, so
neither disturbs the computation; the one output stage is shared as in layer mode. With ``k =
kernel^2 * groups`` reduction tiles, ``units = co_tiles * bands`` (a band of a channel tile), ``P =
band_rows * out_w`` positions per band, ``gap = max(0, G - P)`` with ``G = max(2, cols - rows - 1)``
(:func:`hw.bands.gap_positions`: a tile then takes at least ``rows + 3`` cycles, which keep each position's
partial sums in order, and ``cols``, which keep a row's weight word for its PEs) and ``T = load + P + 1 +
gap`` cycles per reduction tile, unit ``u``'s accumulators (``u = 0 .. units - 1``) are final after
cycle ``c_u = rows - load + (u + 1) * k * T - gap + drain`` (``drain`` cycles after its last
position is issued; in network mode ``drain`` is ``rows + cols + 8``, the code buffer's read address
and data registered: :func:`hw.bands.network_drain`). ``load`` is ``rows`` (LOAD_WEIGHTS between
tiles) or, with bands of at least ``max(rows + 2, cols - 1)`` positions (:func:`hw.bands.overlap_positions`), 0:
the next tile's weight rows are then read during a tile's last ``rows`` positions (each row's shadow weights
take them after the swap that copied this tile's: the load travels along the row as the positions do), and only
the first tile loads. Its write-back takes ``W = P * (C + 1)`` cycles (per position
a read cycle, then ``C`` cycles feeding the output stage, whose results are written
``STAGE_LATENCY`` cycles later; ``C`` = register ``tile_cols``, the layer's channel tile: ``cols``,
or for a multiplying layer on an engine whose PEs multiply in the first ``multiply_cols`` columns
only, that many, the other columns' weights 0) and starts in cycle ``c_u + 1`` or the cycle after
the previous unit's ends, whichever is later. With ``write_pairs`` and an even ``P`` (the engine
tests ``band_positions``, no register of its own; the program puts every tensor at an even word),
the write-back takes the positions in pairs: two read cycles, then ``C`` cycles feeding the even
position's accumulators (held) to one output stage and the odd one's to a second, both results
written at once into the two halves of a word of the code and value memories (two positions per
word): ``W = P / 2 * (C + 2)``. ``L`` = ``STAGE_LATENCY`` (plus ``FUSED_LATENCY`` with ``act_fuse``)
cycles after the last unit's write-back, ``busy`` falls. Load beats pass a register first and
``start`` two (no write enable depends on the state, and a layer started right after its last
register word sees that word), so cycles count from the second cycle after the one following
``start``, and ``busy`` is high for (:func:`hw.bands.network_layer_cycles`)

    2 + rows - load + max(k * T + units * W, units * k * T + W) - gap + drain + L

cycles: the larger of computation and write-back per unit, times ``units``, plus one unit of
the other. The accumulator memories hold ``out_depth`` outputs a column, a power of two that may be
fewer than the layer's (``co_tiles * out_h * out_w``): their addresses wrap (a ring), and a unit begins
only while fewer than ``acc_units`` (``out_depth // P``) are begun and not written back, the cycle after
the write-back of the unit ``acc_units`` before it ends at the earliest; :func:`hw.bands.network_layer_cycles`
counts these waits, which :func:`hw.bands.ring_depth` makes the ring deep enough to avoid.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory

from .bands import CODE_READ_REGISTERS, gap_positions, overlap_positions
from .banked import LATENCY as BANKED_LATENCY
from .banked import banked_buffer
from .code_buffer import code_buffer
from .column_memory import value_read_latency
from .delay import delayed, delays, late_write, own, reset_less_data
from .engine_params import (ACTS, CONFIG, REGISTERS, SPRAM_BLOCKS, SPRAM_DEPTH, STAGE_REQUANTIZE_RELU, TABLE,
                            WEIGHTS, WIDE_WEIGHTS, EngineParams, network_registers)
from .engine_signature import EngineSignature, network_signature
from .fsm_encoding import one_hot
from .memories import slow_block_ram
from .output_stage import output_stage
from .pe import PEArray, RowTable, multiply_in_logic
from .reset_tree import when_settled
from .pe_words import ARRAY_PIPELINE
from .requantize import RequantizeUnit
from .spram import SpramBuffer, platform_has_spram
from .thresholds import ThresholdUnit, lent_value_lag
from .write_back import destination_counters, write_back, writer


# Configuration registers whose last value (register - 1) the loops compare with (network mode: kept in registers).
LAST_COUNTS = ("out_w", "out_h", "co_tiles", "positions", "band_positions", "band_rows", "tile_cols")
# The reduction tile's loops (group, kx, ky) and the configuration register each counts to.
REDUCTION_LOOPS = {"g": "groups", "kx": "kernel", "ky": "kernel"}


def array_variant(params: EngineParams, platform) -> RowTable:
    """The PEs of the engine of ``params`` on ``platform`` (None: simulation): row tables sized for its layers,
    multiplying (in logic where :func:`hw.pe.multiply_in_logic` says) where its layers need it."""
    p = params
    return RowTable.sized(p.wbits, p.abits, multiply=p.multiply, depth=p.table_depth,
                          logic_multiply=multiply_in_logic(platform), product_bits=p.product_bits,
                          identity=p.identity_tables, registered_load=p.rows > 1)


class LayerEngine(wiring.Component):
    """The accelerator core for ``params`` (see the module docstring for what it does).

    ``spram``: where the weights buffer lives. True: iCE40 UltraPlus SPRAM blocks
    (:class:`hw.spram.SpramBuffer`; simulations then need the primitive's model, as
    ``sim.engine_run.engine_build(..., spram=True)`` adds it); False: block RAM (an Amaranth
    memory); None (default): SPRAM on an iCE40 UltraPlus platform
    (:func:`hw.spram.platform_has_spram`) where the buffer fits its 16K words, as board builds do.
    Either way the buffer's read data follows its address by one cycle. ``wide_spram``: the wide
    weights buffer (network mode) goes where the weights buffer does.

    ``value_depth`` / ``value_bits`` (network mode): the value memory's depth and width (default
    ``params.out_bits``).

    Ports: :class:`EngineSignature` for ``params`` (network mode: :func:`network_signature`).
    ``STAGE_LATENCY``: cycles through the output stage, the slower unit's (on the ECP5 two more:
    :meth:`stage_latency`, which the module docstring's ``STAGE_LATENCY`` means); ``FUSED_LATENCY``: cycles
    from a value's write to its fused activation's code write (a register, then the lent threshold
    unit); ``drain``: see the module docstring. ``WORD_GROUP_COLUMNS``: columns of a row's weight word
    loaded by one flip-flop's enable (network mode).

    The parts, in the order :meth:`elaborate` builds them: the configuration registers and load beats
    (:meth:`_configuration`, :meth:`_load_beat`); the activation buffer (:meth:`_activation_buffer`; network mode
    :mod:`hw.code_buffer`) and the weights buffers (:meth:`_weights_buffer`); the sequencer: its loop counters
    and their ends, the positions' pipeline tags, network mode's handshake with the writer and weight fetch, and
    the FSM (:meth:`_sequencer`), whose states' work is :meth:`_start_layer`, :meth:`_load_weights`,
    :meth:`_issue` (the tile and position addresses), :meth:`_wait` and, in layer mode, :meth:`_read_back_states`;
    the read-back's control (:meth:`_read_back_control`; network mode the writer of :mod:`hw.write_back`); the PE
    array and its feed (:meth:`_pe_array`), the column memories (:meth:`_accumulators`), the read-back's column
    choice (:meth:`_column_select`), the output stages (:mod:`hw.output_stage`), and the results' way out: in
    network mode the writes of :mod:`hw.write_back`, in layer mode the ``out`` word (:meth:`_output_word`).
    """

    STAGE_LATENCY = max(ThresholdUnit.LATENCY, RequantizeUnit.LATENCY)
    FUSED_LATENCY = 1 + ThresholdUnit.LATENCY
    WORD_GROUP_COLUMNS = 4
    RESET_LEVELS = PEArray.RESET_LEVELS     # levels of reset copies below the engine (hw.reset_tree)

    @classmethod
    def stage_latency(cls, platform, params: EngineParams | None = None) -> int:
        """Cycles through the output stage on ``platform`` (an Amaranth platform, or None in simulation):
        ``STAGE_LATENCY``, two more where block RAM is slow (:func:`hw.memories.slow_block_ram`, the ECP5), whose
        requantize units register their inputs before the multipliers and their total before the shift
        (``RequantizeUnit(registered_inputs=, registered_total=)``), and ``code_bits`` more where the threshold
        units of ``params`` search progressions (:class:`~hw.thresholds.ThresholdUnit`)."""
        search = params.code_bits if params is not None and params.progression else 0
        return cls.STAGE_LATENCY + 2 * int(slow_block_ram(platform)) + search

    def __init__(self, params: EngineParams, *, spram: bool | None = None, value_depth: int | None = None,
                 value_bits: int | None = None, wide_spram: bool = False):
        if not isinstance(params, EngineParams):
            raise TypeError(f"params must be an EngineParams, not {params!r}")
        if spram not in (None, True, False):
            raise TypeError(f"spram must be True, False or None, not {spram!r}")
        if spram and not params.weights_fit_spram:
            width = params.cols * params.stored_weight_bits
            raise ValueError(f"a weights buffer of {params.weight_depth} words of {width} bits does not fit SPRAM "
                             f"({SPRAM_BLOCKS} blocks of {SPRAM_DEPTH} 16-bit words)")
        if value_depth is not None and (not isinstance(value_depth, int) or not 1 <= value_depth <= 1 << 24):
            raise ValueError(f"value_depth must be None (layer mode) or an integer in 1..{1 << 24}, "
                             f"got {value_depth!r}")
        if params.wide_depth and value_depth is None:
            raise ValueError("a wide weights buffer (wide_depth) needs network mode (value_depth), whose registers "
                             "select it per layer")
        if params.multiply_cols and value_depth is None:
            raise ValueError("multiplying in some columns only (multiply_cols) needs network mode (value_depth), whose "
                             "register tile_cols narrows a multiplying layer's channel tiles")
        if value_bits is not None and (not isinstance(value_bits, int) or not params.out_bits <= value_bits <= 64):
            raise ValueError(f"value_bits must be an integer in {params.out_bits}..64 (the output width up), "
                             f"got {value_bits!r}")
        self.params, self.spram, self.value_depth, self.wide_spram = params, spram, value_depth, wide_spram
        self.value_bits = value_bits or params.out_bits
        # Cycles from a position's issue to row 0's code (network mode: the code buffer's read address and
        # read data registered).
        self.lag = 1 + (CODE_READ_REGISTERS if value_depth is not None else 0)
        self.drain = params.rows + params.cols + 3 + self.lag + ARRAY_PIPELINE
        if value_depth is None:
            signature = EngineSignature.for_params(params)
        else:
            signature = network_signature(params, self.reg_bits, self.value_bits)
        super().__init__(signature)

    @property
    def network(self) -> bool:
        """Whether outputs go to the on-chip memories (network mode) instead of the ``out`` stream."""
        return self.value_depth is not None

    @property
    def reg_bits(self) -> int:
        """Signed width of the configuration registers (network mode: also value-memory addresses)."""
        return max(self.params.reg_bits, (self.value_depth or 0).bit_length() + 2)

    @property
    def data_addr_bits(self) -> int:
        """Signed width of an address of the value or the code memory (network mode; the code buffer's
        depth in layer mode): the write-back's destination counters, and the ``dst_base`` register."""
        return max(self.value_depth or 0, self.params.act_depth).bit_length() + 1

    @property
    def registers(self) -> tuple[str, ...]:
        """The configuration registers, in the order of their ``CONFIG`` load addresses."""
        return network_registers(self.params) if self.network else REGISTERS

    def elaborate(self, platform):
        """The engine, part by part: configuration registers and loads, activation and weights buffers; the
        sequencer (loop counters and their ends, the positions' pipeline tags, network mode's handshake with the
        writer and weight fetch, the FSM) and the read-back's control; the PE array and its feed, the column
        memories, the column choice, the output stage(s) and the results' way out (network mode: the write-back
        into the memories; layer mode: the ``out`` word)."""
        m = Module()
        self._stage_latency = self.stage_latency(platform, self.params)
        cfg, last, idle, load, loads, start, pair = self._configuration(m, platform)
        act_data, act_addrs, code_out = self._activation_buffer(m, idle, load, loads, platform)
        weight_data, weight_read_addr = self._weights_buffer(m, cfg, idle, load, loads, platform)

        seq = self._loop_counters(m, cfg, last)
        back = self._read_back_counters(platform)
        self._loop_ends(m, cfg, last, seq, platform)
        seq.tags = self._position_tags(m)
        if self.network:
            self._writer_handshake(m, cfg, seq)
            self._weight_fetch(m, cfg, seq, weight_read_addr)
        fsm = self._sequencer(m, cfg, last, seq, back, start, act_addrs, weight_read_addr)
        # A continuous assignment (an FSM-state block would start as X in Icarus until the state changes).
        m.d.comb += idle.eq(fsm.ongoing("IDLE"))
        feeding, holding, reading = self._read_back_control(m, cfg, last, seq, back, start, pair, fsm, platform)

        array = self._pe_array(m, platform, cfg, load, loads, seq.w_rows, weight_data, act_data, seq.tags)
        column_reads = self._accumulators(m, platform, array, seq.tags, back.read_addrs, reading)
        values = self._column_select(m, platform, column_reads, back.feed_col, holding, pair)
        results, relu = self._output_stages(m, platform, cfg, load, loads, feeding, values, back.feed_col,
                                            back.read_slot)
        if self.network:
            write_back(m, self.params, cfg, back.dest, feeding, back.read_pos, results, code_out, relu, pair,
                       val_write=self.val_write, val_read=self.val_read, activation=self.activation,
                       value_bits=self.value_bits, stage_latency=self._stage_latency,
                       fused_latency=self.FUSED_LATENCY + self.params.lent_search,
                       read_latency=value_read_latency(platform),
                       lent_lag=lent_value_lag(platform), reset_less=reset_less_data(platform))
        else:
            self._output_word(m, feeding, back.feed_col, results[0], back.collected, fsm)
        return m

    def _configuration(self, m, platform):
        """The configuration registers and the load beats that write them. Returns ``(cfg, last, idle, load, loads,
        start, pair)``: ``cfg``, the registers by name (signals ``cfg_*``), written by CONFIG beats (network mode: a
        cycle after the beat, from a flip-flop of the decoded enable and a register of the data); ``last``, each
        count of LAST_COUNTS less one (network mode: registers, a cycle after their register); ``idle`` (to drive:
        the sequencer is idle); ``load`` and ``loads(target)``, the beat and its write enable for ``target``, and
        ``start``, as :meth:`_load_beat` gives them; ``pair``, the layer writes back in pairs (a register with
        ``write_pairs``, else 0)."""
        p = self.params
        cfg = {name: Signal(signed(self.data_addr_bits if name == "dst_base" else p.register_bits(name, self.reg_bits)),
                            name=f"cfg_{name}") for name in self.registers}
        idle = Signal()
        load, beat_valid, start = self._load_beat(m, idle, platform)

        def loads(target):
            return beat_valid & (load.target == target)

        if self.network:
            # A register word a cycle after its beat again: the register's enable decoded into a flip-flop of its
            # own and the data registered (the decode fed enables spread over the core: the ResNet-20 core's
            # worst path); ``start`` follows them (``_load_beat``).
            cfg_write, cfg_data = Signal(len(self.registers), name="cfg_write"), Signal.like(load.data, name="cfg_data")
            # (A compare per register: a shift of a one by the address was a chain of six LUTs on the UP5K.)
            m.d.sync += [cfg_write.eq(Cat(loads(CONFIG) & (load.addr == i) for i in range(len(self.registers)))),
                         cfg_data.eq(load.data)]
            for i, name in enumerate(self.registers):
                with m.If(cfg_write[i]):
                    m.d.sync += cfg[name].eq(cfg_data)
        else:
            with m.If(loads(CONFIG)):
                with m.Switch(load.addr):
                    for i, name in enumerate(self.registers):
                        with m.Case(i):
                            m.d.sync += cfg[name].eq(load.data)
        # Each count's last value. Network mode: registered a cycle after its register is written (the
        # layer's first compare comes rows + 1 cycles after start), so that the loop ends compare with a
        # register, no subtraction (the ResNet-20 core's worst path). Layer mode keeps the subtraction:
        # its engine fills the UP5K, where these registers would not fit.
        if self.network:
            last = {name: Signal(signed(len(cfg[name])), name=f"last_{name}") for name in LAST_COUNTS}
            m.d.sync += [last[name].eq(cfg[name] - 1) for name in last]
        else:
            last = {name: cfg[name] - 1 for name in LAST_COUNTS if name in self.registers}

        # Network mode with write_pairs: this layer writes back in pairs (its bands have an even number of
        # positions; the program puts every tensor at an even word).
        pair = Signal(name="pair") if p.write_pairs else C(0, 1)
        if p.write_pairs:
            m.d.sync += pair.eq(cfg["band_positions"][0] == 0)
        return cfg, last, idle, load, loads, start, pair

    def _load_beat(self, m, idle, platform):
        """The load beat as the registers and buffers take it: ``(payload, valid, start)``. Layer mode:
        the ``load`` stream's beat (taken while idle) and ``start`` as they come, neither while the PE array's
        rows may still be in reset after the engine's (:func:`hw.reset_tree.settling`; in network mode the
        core holds its beats so). Network mode: the beat a
        cycle later, from flip-flops, so that no write enable depends on the FSM's state (the ResNet-20
        core's worst path ran from the state into a configuration register's enable), and ``start`` two
        cycles later, so that a layer started right after its last register word sees that word (written a
        cycle after its beat). ``busy``
        is high, and ``load`` not ready, from the cycle after ``start``."""
        if not self.network:
            settled = when_settled(m, platform, self.RESET_LEVELS)
            m.d.comb += [self.load.ready.eq(settled(idle)), self.busy.eq(~idle)]
            return self.load.payload, settled(self.load.valid & idle), settled(self.start)
        pending, late = Signal(name="start_pending"), Signal(name="start_late")
        m.d.comb += [self.load.ready.eq(idle & ~pending & ~late), self.busy.eq(~idle | pending | late)]
        beat, beat_valid = Signal(self.load.payload.shape(), name="beat"), Signal(name="beat_valid")
        # Ifs, not the conditions assigned: an X on ``start`` or ``valid`` (Icarus, before the sequencer's
        # FSM first changes state) then reads as false instead of latching an X.
        m.d.sync += [beat.eq(self.load.payload), beat_valid.eq(0), pending.eq(0), late.eq(pending)]
        with m.If(self.load.valid & self.load.ready):
            m.d.sync += beat_valid.eq(1)
        with m.If(self.start & idle & ~pending & ~late):
            m.d.sync += pending.eq(1)
        return beat, beat_valid, late

    def _buffer_write(self, m, load, name, write_en, platform):
        """The write of a load beat into buffer ``name``: ``(enable, address, data)``. On the ECP5 in network
        mode a cycle later, from the buffer's own flip-flops (:func:`hw.delay.late_write`): the beat's
        registers, shared by every buffer and the row tables, reached their block RAMs' write registers across
        the die (13.5 ns on the ULX3S-85F at 1badc10)."""
        ports = (write_en, load.addr, load.data)
        if not (self.network and slow_block_ram(platform)):
            return ports
        return late_write(m, ports, f"{name}_load", ("en", "addr", "data"), reset_less=reset_less_data(platform))

    def _buffer(self, m, idle, load, platform, name, width, depth, write_en, spram=False):
        """A buffer written by loads while idle and read while computing: in SPRAM blocks where
        ``spram`` (single-port: the load's address while idle, else the read address), else an
        Amaranth memory with a write port of its own (no multiplexer from the state into the
        read address). Returns the read data (one cycle after the address; network mode: two, the
        data registered, in banks where the buffer is deep, :mod:`hw.banked`) and the read address
        to drive."""
        reset_less = reset_less_data(platform)     # of data registers (hw.delay)
        addr = Signal(range(depth), name=f"{name}_addr")
        if spram:
            m.submodules[name] = memory = SpramBuffer(width, depth)
            m.d.comb += [memory.addr.eq(Mux(idle, load.addr, addr)), memory.write_en.eq(write_en),
                         memory.write_data.eq(load.data)]
            if self.network:
                return delayed(m, memory.read_data, BANKED_LATENCY - 1, f"{name}_data"), addr
            return memory.read_data, addr
        if self.network:
            return banked_buffer(m, name, width, depth, *self._buffer_write(m, load, name, write_en, platform), addr,
                                 reset_less, grouped_writes=slow_block_ram(platform)), addr
        m.submodules[name] = memory = Memory(shape=width, depth=depth, init=[])
        write, read = memory.write_port(), memory.read_port()
        m.d.comb += [write.en.eq(write_en), write.addr.eq(load.addr), write.data.eq(load.data),
                     read.addr.eq(addr)]
        return read.data, addr

    def _activation_buffer(self, m, idle, load, loads, platform):
        """The activations the array reads: layer mode, a buffer of ``rows`` codes a word written by ACTS beats
        (:meth:`_buffer`); network mode, the code buffer (:func:`hw.code_buffer.code_buffer`). Returns
        ``(act_data, act_addrs, code_out)``: the read data (a cycle after the address), the read addresses to drive
        (copies, all set alike) and the network mode's write-back port (None in layer mode)."""
        p = self.params
        R = p.rows
        if self.network:
            act_data, act_addrs, code_out = code_buffer(m, p, idle, self.code_write, self.code_read,
                                                        self.code_written, slow_block_ram(platform),
                                                        reset_less_data(platform))
        else:
            act_data, act_addr = self._buffer(m, idle, load, platform, "activations", R * p.abits,
                                              p.act_depth, loads(ACTS))
            act_addrs, code_out = [act_addr], None
        return act_data, act_addrs, code_out

    def _weights_buffer(self, m, cfg, idle, load, loads, platform):
        """The weights buffer (WEIGHTS beats; in SPRAM as ``spram`` says), and with ``wide_depth`` the wide
        weights buffer (WIDE_WEIGHTS beats, :meth:`_weights_of_layer`) beside it. Returns ``(weight_data,
        weight_read_addr)``: the layer's weight word of ``cols`` PE weights and the read address to drive (one for
        both buffers), the word a cycle after the address (network mode: ``BANKED_LATENCY``)."""
        p = self.params
        Cn = p.cols
        spram = self.spram
        if spram is None:
            spram = platform_has_spram(platform) and p.weights_fit_spram
        weight_data, weight_read_addr = self._buffer(m, idle, load, platform, "weights", Cn * p.stored_weight_bits,
                                                     p.weight_depth, loads(WEIGHTS), spram)
        if p.wide_depth:
            # One read address for both weights buffers, as deep as the deeper: the multiplying layers' weights
            # may outnumber the LUT layers'.
            read_addr = Signal(range(max(p.weight_depth, p.wide_depth)), name="weights_read_addr")
            m.d.comb += weight_read_addr.eq(read_addr)
            weight_data = self._weights_of_layer(m, cfg, idle, load, platform, loads(WIDE_WEIGHTS), weight_data,
                                                 read_addr, spram and self.wide_spram, slow_block_ram(platform))
            weight_read_addr = read_addr
        return weight_data, weight_read_addr

    def _weights_of_layer(self, m, cfg, idle, load, platform, load_en, narrow, read_addr, spram,
                          registered_choice=False):
        """With a wide weights buffer (in SPRAM where ``spram``): the PE weight words of the layer, from the
        wide buffer where the ``wide_weights`` register says so, else the narrow words (``wbits`` per column:
        sign on top of ``k``) widened to ``weight_bits`` (sign on top, ``k`` zero-extended). Both read at
        ``read_addr``. ``registered_choice``: each group of WORD_GROUP_COLUMNS columns chooses by a copy of
        ``wide_weights`` of its own, a cycle later (a layer's registers are set long before its first weights
        are read; on the ECP5 the one register into every bit's choice was the ULX3S-85F ResNet-20's worst path at
        8017110, 10.9 ns of routing)."""
        p = self.params
        wide, wide_addr = self._buffer(m, idle, load, platform, "wide_weights", p.cols * p.weight_bits,
                                       p.wide_depth, load_en, spram)
        m.d.comb += wide_addr.eq(read_addr)
        fields = []
        for c in range(p.cols):
            field = narrow.word_select(c, p.wbits)
            fields.append(Cat(field[:p.wbits - 1], C(0, p.weight_bits - p.wbits), field[p.wbits - 1]))
        group = self.WORD_GROUP_COLUMNS
        words = []
        for g in range(0, p.cols, group):
            choice = cfg["wide_weights"][0]
            if registered_choice:
                choice = delayed(m, choice, 1, f"wide_weights_{g // group}", own_flip_flops=True, reset_less=True)
            columns = slice(g * p.weight_bits, min(g + group, p.cols) * p.weight_bits)
            words.append(Mux(choice, wide[columns], Cat(*fields[g:g + group])))
        return Cat(*words)

    def _counter(self, name, geometry=False, count=None):
        """A signed counter named ``name``: as wide as the geometry registers (``geometry``: rows, columns, kernel
        taps), as the register ``count`` it runs to, or as the addresses."""
        p = self.params
        width = p.dim_bits if geometry else p.register_bits(count, self.reg_bits) if count else self.reg_bits
        return Signal(signed(width), name=name)

    def _loop_counters(self, m, cfg, last):
        """The sequencer's loop counters, as a namespace (``seq``): channel tile (``co_tile``), reduction tile
        (``ky``, ``kx``, group ``g``), band (``band``, its configuration ``band_cfg``) and position (``x_left``,
        ``y_left`` down to 0; ``iy``, ``ix``, the input position of row 0's tap; ``pos``), and the addresses they
        make (``plane_base``, ``ky_offset``, ``row_addr``: activations; ``weight_addr``; ``out_base``:
        accumulators), ``row_count`` (LOAD_WEIGHTS), ``wait``/``waiting``/``finishing``/``all_tiles`` (WAIT) and
        ``w_rows`` (the rows whose shadow weights take the weight word)."""
        p = self.params
        R = p.rows
        counter = self._counter
        # Loop counters: channel tile, reduction tile (ky, kx, g), position (y, x); those of rows, columns and
        # kernel taps (``geometry``) as wide as the geometry registers.
        co_tile, ky, kx, g = (counter("co_tile", count="co_tiles"), counter("ky", True), counter("kx", True),
                              counter("g", count="groups"))
        plane_base, ky_offset, weight_addr = counter("plane_base"), counter("ky_offset"), counter("weight_addr")
        # Where the channel tile's first row group starts (network mode: ``tile_step`` on per channel tile).
        tile_plane = counter("tile_plane") if self.network else C(0)
        # The next channel tile's (a register: tile_plane moves only as a channel tile ends, two cycles or more
        # before the next end, and no adder then comes before plane_base).
        next_tile_plane = counter("next_tile_plane") if self.network else None
        if self.network:
            m.d.sync += next_tile_plane.eq(tile_plane + cfg["tile_step"])
        out_base = counter("out_base")
        # The position's column and row within the band, counted down to 0 (``x_left``, ``y_left``).
        x_left, y_left, iy, ix = (counter(name, True) for name in ("x_left", "y_left", "iy", "ix"))
        row_addr = counter("row_addr")
        pos = Signal(range(p.pos_depth + 1), name="pos")
        row_count = Signal(range(R + 1))
        # ``wait``: cycles left in WAIT; ``waiting``: it is above 0, a register set with it. ``all_tiles``: every
        # channel tile is done, a cycle behind ``co_tile`` (WAIT tests it in its second cycle at the earliest: it
        # changes as the last tile ends, which sets ``finishing``, and is below ``co_tiles`` before).
        wait = Signal(signed(p.reg_bits), name="wait_count")    # "wait" is a Verilog keyword
        waiting, finishing = Signal(name="waiting"), Signal(name="finishing")
        all_tiles = Signal(name="all_tiles")
        m.d.sync += all_tiles.eq(co_tile == cfg["co_tiles"])
        # The rows whose shadow weights take the weight word (one bit per row, row 0 lowest).
        w_rows = Signal(R)
        # The band being computed: its first position, first input row (times stride) and first row
        # address, its last output row (layer mode: one band, the layer), and the address of its channel
        # tile's first weight word (each band reads the tile's weights).
        band = {name: counter(f"band_{name}", name in ("iy", "end_y"))
                for name in ("pos", "iy", "row", "end_y", "weight_addr")}
        if self.network:
            band_cfg = {name: cfg[f"band_{name}"] for name in ("rows", "positions", "in_rows", "step")}
            last_band_row = last["band_rows"]
        else:
            band_cfg = {"rows": cfg["out_h"], "positions": cfg["positions"], "in_rows": 0, "step": 0}
            last_band_row = last["out_h"]
        return SimpleNamespace(
            co_tile=co_tile, ky=ky, kx=kx, g=g, plane_base=plane_base, ky_offset=ky_offset, weight_addr=weight_addr,
            tile_plane=tile_plane, next_tile_plane=next_tile_plane, out_base=out_base, x_left=x_left, y_left=y_left,
            iy=iy, ix=ix, row_addr=row_addr, pos=pos, row_count=row_count, wait=wait, waiting=waiting,
            finishing=finishing, all_tiles=all_tiles, w_rows=w_rows, band=band, band_cfg=band_cfg,
            last_band_row=last_band_row)

    def _read_back_counters(self, platform):
        """The read-back's counters, as a namespace (``back``): the accumulators' read address ``read_addr``
        (``read_addrs``: its copies, network mode on the ECP5), the position read (``read_pos``) and its stage slot
        (``read_slot``), the column fed to the output stage (``feed_col``), the results collected into the output
        word (``collected``, layer mode) and network mode's destination counters (``dest``)."""
        p = self.params
        Cn = p.cols
        read_addr = self._counter("read_addr")
        # Network mode on the ECP5: the writer's read address as copies that count alike, one for each
        # WORD_GROUP_COLUMNS columns' accumulator memories (one register into 16 columns' block RAMs was the
        # ResNet-20 core's worst path on the ULX3S-85F at 5f087e3, 12.9 ns); elsewhere the address itself.
        read_addrs = [read_addr]
        if self.network and slow_block_ram(platform):
            read_addrs = [own(Signal.like(read_addr, name=f"read_addr_{n}", reset_less=True))
                          for n in range(-(-Cn // self.WORD_GROUP_COLUMNS))]
        read_pos = Signal(range(p.pos_depth + 1), name="read_pos")
        read_slot = Signal(range(p.stage_depth + 1))
        feed_col, collected = Signal(range(Cn + 1), name="feed_col"), Signal(range(Cn + 2), name="collected")
        dest = destination_counters(p, self.data_addr_bits)
        return SimpleNamespace(read_addr=read_addr, read_addrs=read_addrs, read_pos=read_pos, read_slot=read_slot,
                               feed_col=feed_col, collected=collected, dest=dest)

    def _loop_ends(self, m, cfg, last, seq, platform):
        """The loops' ends, registers, into ``seq``: ``x_end``, ``y_end`` (set with their counters), ``first_tile``,
        ``ends`` (by loop), ``through`` (the loops from the group out to the named one all at their ends),
        ``once`` (a reduction loop runs once), ``moved_ends`` (a reduction loop's end as the loop moves) and
        ``tile_ends`` (``through["ky"]``: the tile is its band's last reduction tile)."""
        g, kx, ky, co_tile, band = seq.g, seq.kx, seq.ky, seq.co_tile, seq.band
        # The loops' ends as registers, so that no compare comes before the FSM's decisions: ``x_end`` and
        # ``y_end`` (the position is its row's last, the row its band's) set with their counters; the
        # reduction tile's ends (``ends``). Group, kx and ky (``REDUCTION_LOOPS``) set theirs as they move:
        # at their last where they move from the value before it (``near``, a compare registered while they
        # stand, with the count less two), or back to 0 in a loop that runs once (``once``). The band's and
        # the channel tile's, compares of counters that change only as a tile ends, registered (the next
        # test comes two cycles later at the earliest). ``through`` (the loops from the group out to the
        # named one all at their last: the next loop out moves as the tile ends), registered from those, so
        # that each loop's enable is the tile's end and one flip-flop, not a chain of the ends; ``first_tile``
        # (group, kx and ky are 0), set as a tile ends.
        x_end, y_end, first_tile = Signal(name="x_end"), Signal(name="y_end"), Signal(name="first_tile")
        loops = ("g", "kx", "ky", "band", "co_tile")
        ends = {name: Signal(name=f"{name}_end") for name in loops}
        through = {"g": ends["g"], **{name: Signal(name=f"through_{name}") for name in loops[1:-1]}}
        counters = {"g": g, "kx": kx, "ky": ky}
        near = {name: Signal(name=f"{name}_near") for name in REDUCTION_LOOPS}
        # The loop counts' registers in a fixed order (a set's followed PYTHONHASHSEED: the Verilog changed from one
        # run to the next). Which order is free, and it moves nextpnr's placement of the nearly full parts, whose
        # default builds each order was measured with: kernel's first on the ECP5 (the ULX3S-85F ResNet-20 core,
        # 100.62 MHz against 85.51), groups' first elsewhere (the UP5K digits core, 41.97 MHz against 37.78).
        count_names = ("kernel", "groups") if slow_block_ram(platform) else ("groups", "kernel")
        if self.network:
            before_last = {name: Signal.like(cfg[name], name=f"before_last_{name}") for name in count_names}
            once = {name: Signal(name=f"once_{name}") for name in count_names}
            m.d.sync += [before_last[name].eq(cfg[name] - 2) for name in count_names]
            m.d.sync += [once[name].eq(cfg[name] == 1) for name in count_names]
        else:
            before_last = {name: cfg[name] - 2 for name in count_names}
            once = {name: cfg[name] == 1 for name in count_names}
        m.d.sync += [near[name].eq(counters[name] == before_last[count]) for name, count in REDUCTION_LOOPS.items()]
        at_last = {"band": band["end_y"] == last["out_h"], "co_tile": co_tile == last["co_tiles"]}
        m.d.sync += [ends[name].eq(at_last[name]) for name in at_last]
        reduction_ends = Cat(ends[name] for name in REDUCTION_LOOPS).all()
        m.d.sync += [through["kx"].eq(ends["g"] & ends["kx"]), through["ky"].eq(reduction_ends),
                     through["band"].eq(reduction_ends & at_last["band"])]
        # Each reduction loop's end as the loop moves (back to 0 from its last, else one on).
        moved_ends = {name: Mux(ends[name], once[count], near[name]) for name, count in REDUCTION_LOOPS.items()}
        tile_ends = through["ky"]
        seq.x_end, seq.y_end, seq.first_tile, seq.ends, seq.through = x_end, y_end, first_tile, ends, through
        seq.once, seq.moved_ends, seq.tile_ends = once, moved_ends, tile_ends

    def _position_tags(self, m):
        """The tags of the issued positions, a register per pipeline stage (``tags[n]``: the position issued ``n``
        cycles before; ``tags[0]``, driven by ISSUE): ``valid``, ``inside`` the image, ``swap`` (the tile's first:
        the PEs swap to the new weights), ``first`` (the first reduction tile: no partial sum to add) and the
        accumulator address ``out_addr``."""
        p = self.params
        R, Cn = p.rows, p.cols
        # The tag of each issued position, delayed one cycle per stage of the pipeline: flip-flops of their own,
        # not merged with the array's valid and swap bits, which equal theirs (hw.flip_flops.OWN_FLIP_FLOP).
        tag_layout = data.StructLayout({"valid": 1, "inside": 1, "swap": 1, "first": 1,
                                        "out_addr": range(p.out_depth + 1)})
        lag = self.lag
        tags = [own(Signal(tag_layout, name=f"tag_{n}")) for n in range(R + Cn + 1 + lag + ARRAY_PIPELINE)]
        m.d.sync += [tags[n].eq(tags[n - 1]) for n in range(1, len(tags))]
        return tags

    def _writer_handshake(self, m, cfg, seq):
        """Network mode: the sequencer's handshake with the writer (:func:`hw.write_back.writer`), into ``seq``:
        ``tile_issued``, ``writer_done``, and the accumulator ring's count (``spare``, ``unit_begins``,
        ``unit_written``, ``ring_full``)."""
        # Network mode: tile_issued pulses in the cycle a channel tile's last position is issued (for
        # the writer, below); writer_done, in the last cycle of the layer's write-back (both continuous
        # assignments, below the FSMs).
        tile_issued = Signal(name="tile_issued")
        writer_done = Signal(name="writer_done")
        # Network mode: the accumulator memory is a ring of ``acc_units`` units (band of a channel tile): a unit
        # begins only while fewer than that are begun and not yet written back, so that it overwrites no unit the
        # writer has still to read. (``spare``: ``acc_units - 1`` less the units begun and not written back,
        # down with each ``unit_begins``, up with the writer's ``unit_written``; the full test, ``ring_full``,
        # its sign as it moves, a register set with it. A unit's begin counts a cycle late, out of the FSM's
        # logic; the next test comes a tile later.)
        spare = Signal(signed(len(cfg["acc_units"]) + 1), name="spare")
        unit_begins, unit_written, ring_full = (Signal(name=name) for name in ("unit_begins", "unit_written",
                                                                              "ring_full"))
        step = Signal(signed(2), name="spare_step")
        m.d.comb += step.eq(unit_written - delayed(m, unit_begins, 1, "unit_begun"))
        spare_next = spare + step
        m.d.sync += [spare.eq(spare_next), ring_full.eq(spare_next[-1])]
        seq.tile_issued, seq.writer_done, seq.spare, seq.ring_full = tile_issued, writer_done, spare, ring_full
        seq.unit_begins, seq.unit_written = unit_begins, unit_written

    def _weight_fetch(self, m, cfg, seq, weight_read_addr):
        """Network mode: the weights buffer's read address ``fetch`` (drives ``weight_read_addr``) and the overlap
        of a tile's weight loads with the previous tile's positions, into ``seq``: ``overlap``, ``left``,
        ``last_rows``, ``fetch``, ``issue_first``, ``band_wrap``."""
        p = self.params
        counter = self._counter
        tile_ends, ends = seq.tile_ends, seq.ends
        # Network mode: the weights buffer reads at ``fetch``, a register (no logic before the address of
        # its many block RAMs). Bands of at least overlap_positions (``overlap``, hw.bands): the next tile's
        # weight rows are read during the last ``rows`` positions of a tile (``left`` counts the band's
        # positions still to issue), from the band's first tile's where the tile is the band's last and
        # another band of the channel tile follows (``band_wrap``), else from the next ones (``weight_addr``),
        # set in the tile's first cycle (``issue_first``); the next tile then issues without LOAD_WEIGHTS.
        # (``last_rows``: fewer than ``rows`` left, a register set with ``left``.) WAIT points ``fetch`` at
        # ``weight_addr`` (an overlapping tile sets it again in its first cycle).
        overlap, left = Signal(name="overlap"), Signal(range(p.pos_depth + 1), name="left")
        last_rows = Signal(name="last_rows")
        fetch, issue_first = counter("fetch"), Signal(name="issue_first")
        m.d.sync += overlap.eq(cfg["band_positions"] >= overlap_positions(p))
        m.d.comb += weight_read_addr.eq(fetch)
        band_wrap = tile_ends & ~ends["band"]
        seq.overlap, seq.left, seq.last_rows, seq.fetch, seq.issue_first = overlap, left, last_rows, fetch, issue_first
        seq.band_wrap = band_wrap

    def _sequencer(self, m, cfg, last, seq, back, start, act_addrs, weight_read_addr):
        """The sequencer (FSM ``fsm``), returned: IDLE until ``start`` (:meth:`_start_layer`); per reduction tile
        LOAD_WEIGHTS (:meth:`_load_weights`, ``rows`` cycles; network mode: none where the tile's loads overlap the
        previous tile's positions), ISSUE (:meth:`_issue`, a position a cycle) and WAIT (:meth:`_wait`); then network
        mode WRITE_BACK (until the writer is done), layer mode the read-back states (:meth:`_read_back_states`)."""
        m.d.sync += seq.w_rows.eq(0)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(start):
                    self._start_layer(m, cfg, seq)
                    m.next = "LOAD_WEIGHTS"
            with m.State("LOAD_WEIGHTS"):
                self._load_weights(m, cfg, last, seq, weight_read_addr)
            with m.State("ISSUE"):
                self._issue(m, cfg, last, seq, act_addrs)
            with m.State("WAIT"):
                self._wait(m, cfg, last, seq, back)
            if self.network:
                with m.State("WRITE_BACK"):
                    # The writer (below) writes back the last channel tile.
                    with m.If(seq.writer_done):
                        m.next = "IDLE"
            else:
                self._read_back_states(m, last, seq, back)
        one_hot(fsm)
        return fsm

    def _begin_row(self, m, cfg, last, seq):
        """The position counters at a row's first position."""
        m.d.sync += [seq.x_left.eq(last["out_w"]), seq.x_end.eq(last["out_w"] == 0),
                     seq.ix.eq(seq.kx - cfg["padding"])]

    def _first_position(self, m, cfg, last, seq):
        """The position counters at the tile's first position: set in every cycle of the states that may
        go to ISSUE (WAIT, LOAD_WEIGHTS; only ISSUE reads them), so that their enables decode no decision."""
        p = self.params
        R = p.rows
        self._begin_row(m, cfg, last, seq)
        m.d.sync += [seq.y_left.eq(seq.last_band_row), seq.y_end.eq(seq.last_band_row == 0),
                     seq.pos.eq(seq.band["pos"]), seq.iy.eq(seq.band["iy"] + seq.ky - cfg["padding"]),
                     seq.row_addr.eq(seq.plane_base + seq.ky_offset + seq.band["row"])]
        if self.network:
            m.d.sync += [seq.left.eq(last["band_positions"]), seq.last_rows.eq(last["band_positions"] < R),
                         seq.issue_first.eq(1)]

    @staticmethod
    def _first_band(m, band, band_cfg):
        """The band counters at the layer's first band."""
        m.d.sync += [band["pos"].eq(0), band["iy"].eq(0), band["row"].eq(0),
                     band["end_y"].eq(band_cfg["rows"] - 1)]

    def _start_layer(self, m, cfg, seq):
        """IDLE, at ``start``: the counters at the layer's first tile and band (its weights at ``weight_base``;
        network mode: an empty accumulator ring)."""
        m.d.sync += [seq.co_tile.eq(0), seq.ky.eq(0), seq.kx.eq(0), seq.g.eq(0), seq.plane_base.eq(0),
                     seq.ky_offset.eq(cfg["top_offset"]), seq.weight_addr.eq(cfg["weight_base"]),
                     seq.out_base.eq(0), seq.row_count.eq(0), seq.band["weight_addr"].eq(cfg["weight_base"]),
                     seq.first_tile.eq(1)]
        m.d.sync += [seq.ends[name].eq(seq.once[count]) for name, count in REDUCTION_LOOPS.items()]
        if self.network:
            m.d.sync += [seq.tile_plane.eq(0), seq.fetch.eq(cfg["weight_base"]), seq.spare.eq(cfg["acc_units"] - 2),
                         seq.ring_full.eq(cfg["acc_units"] <= 1)]
        self._first_band(m, seq.band, seq.band_cfg)

    def _load_weights(self, m, cfg, last, seq, weight_read_addr):
        """LOAD_WEIGHTS, ``rows`` cycles: the tile's weight rows read from ``weight_addr`` on (network mode:
        ``fetch``), row ``r``'s in cycle ``r`` (``w_rows``); then ISSUE."""
        p = self.params
        R = p.rows
        # Read one row's weight word per cycle; the row's copy takes it in the next cycle (network
        # mode: BANKED_LATENCY + 1 cycles on), its shadow weights a cycle after the copy.
        if self.network:
            m.d.sync += seq.fetch.eq(seq.fetch + 1)
        else:
            m.d.comb += weight_read_addr.eq(seq.weight_addr)
        m.d.sync += [seq.weight_addr.eq(seq.weight_addr + 1), seq.row_count.eq(seq.row_count + 1),
                     seq.w_rows.eq(Cat(seq.row_count == r for r in range(R)))]
        self._first_position(m, cfg, last, seq)
        with m.If(seq.row_count == R - 1):
            m.next = "ISSUE"

    def _issue(self, m, cfg, last, seq, act_addrs):
        """ISSUE, a position a cycle: its activation word's address (``act_addrs``; row 0's code ``lag`` cycles
        later) and its tag (``tags[0]``); the position counters move on (x, then y); after the tile's last position
        the loops move on (:meth:`_next_tile`), then WAIT."""
        p = self.params
        R, Cn = p.rows, p.cols
        inside = (seq.iy >= 0) & (seq.iy < cfg["in_h"]) & (seq.ix >= 0) & (seq.ix < cfg["in_w"])
        if self.network:
            m.d.sync += [act_addr.eq(cfg["act_base"] + seq.row_addr + seq.ix) for act_addr in act_addrs]
        else:
            m.d.comb += act_addrs[0].eq(seq.row_addr + seq.ix)
        m.d.comb += [seq.tags[0].valid.eq(1), seq.tags[0].inside.eq(inside),
                     seq.tags[0].swap.eq(seq.pos == seq.band["pos"]), seq.tags[0].first.eq(seq.first_tile),
                     seq.tags[0].out_addr.eq(seq.out_base + seq.pos)]
        m.d.sync += seq.pos.eq(seq.pos + 1)
        if self.network:
            m.d.sync += [seq.left.eq(seq.left - 1), seq.last_rows.eq(seq.left <= R), seq.issue_first.eq(0)]
            with m.If(seq.issue_first):
                m.d.sync += seq.fetch.eq(Mux(seq.band_wrap, seq.band["weight_addr"], seq.weight_addr))
            with m.If(seq.overlap & seq.last_rows):
                m.d.sync += [seq.fetch.eq(seq.fetch + 1),
                             seq.w_rows.eq(Cat(seq.left == R - 1 - r for r in range(R)))]
        with m.If(seq.x_end):
            self._begin_row(m, cfg, last, seq)
            m.d.sync += [seq.y_left.eq(seq.y_left - 1), seq.y_end.eq(seq.y_left == 1),
                         seq.iy.eq(seq.iy + cfg["stride"]), seq.row_addr.eq(seq.row_addr + cfg["row_step"])]
            with m.If(seq.y_end):
                m.d.sync += seq.first_tile.eq(seq.tile_ends)
                self._next_tile(m, cfg, seq)
                if self.network:
                    with m.If(seq.overlap):
                        m.d.sync += seq.weight_addr.eq(seq.fetch + 1)       # past the next tile's last row
                # Layer mode: the next tile's shadow weights are not written before this tile's first element
                # has passed the last column, nor a partial sum read before it is written: at least cols + 2
                # cycles from a tile's first issue to the next tile's loads. Network mode: as few as keep a row's
                # weight word for its columns and the partial sums in order (hw.bands.gap_positions). The last
                # tile waits for the pipeline.
                least = gap_positions(p) if self.network else Cn + 2
                m.d.sync += [seq.wait.eq(least - seq.band_cfg["positions"]),
                             seq.waiting.eq(seq.band_cfg["positions"] < least)]
                m.next = "WAIT"
        with m.Else():
            m.d.sync += [seq.x_left.eq(seq.x_left - 1), seq.x_end.eq(seq.x_left == 1),
                         seq.ix.eq(seq.ix + cfg["stride"])]

    def _next_tile(self, m, cfg, seq):
        """Advance the reduction tile (group, then kx, then ky), then the band, then the channel tile (network
        mode: whose row groups start ``tile_step`` activation words on, at ``next_tile_plane``, a register);
        ``ends``: the loops' end registers; ``moved_ends``: the reduction loops' ends as they move, set with
        them; ``through``: registers, the loops from the group out to the named one all at their ends (all of
        ``seq``)."""
        with m.If(~seq.ends["g"]):
            m.d.sync += [seq.g.eq(seq.g + 1), seq.plane_base.eq(seq.plane_base + cfg["plane"])]
        with m.Else():
            m.d.sync += [seq.g.eq(0), seq.plane_base.eq(seq.tile_plane)]
        m.d.sync += seq.ends["g"].eq(seq.moved_ends["g"])
        with m.If(seq.through["g"]):
            m.d.sync += [seq.kx.eq(Mux(seq.ends["kx"], 0, seq.kx + 1)), seq.ends["kx"].eq(seq.moved_ends["kx"])]
        with m.If(seq.through["kx"]):
            m.d.sync += seq.ends["ky"].eq(seq.moved_ends["ky"])
            with m.If(~seq.ends["ky"]):
                m.d.sync += [seq.ky.eq(seq.ky + 1), seq.ky_offset.eq(seq.ky_offset + cfg["in_w"])]
            with m.Else():
                m.d.sync += [seq.ky.eq(0), seq.ky_offset.eq(cfg["top_offset"])]
        with m.If(seq.through["ky"] & ~seq.ends["band"]):
            m.d.sync += [seq.weight_addr.eq(seq.band["weight_addr"]),
                         seq.band["pos"].eq(seq.band["pos"] + seq.band_cfg["positions"]),
                         seq.band["iy"].eq(seq.band["iy"] + seq.band_cfg["in_rows"]),
                         seq.band["row"].eq(seq.band["row"] + seq.band_cfg["step"]),
                         seq.band["end_y"].eq(seq.band["end_y"] + seq.band_cfg["rows"])]
        with m.If(seq.through["band"]):
            LayerEngine._first_band(m, seq.band, seq.band_cfg)
            m.d.sync += [seq.co_tile.eq(seq.co_tile + 1), seq.out_base.eq(seq.out_base + cfg["positions"]),
                         seq.band["weight_addr"].eq(seq.weight_addr)]
            if self.network:
                m.d.sync += [seq.tile_plane.eq(seq.next_tile_plane), seq.plane_base.eq(seq.next_tile_plane)]
            with m.If(seq.ends["co_tile"]):
                m.d.sync += seq.finishing.eq(1)

    def _wait(self, m, cfg, last, seq, back):
        """WAIT, ``1 + gap`` cycles after a tile (``1 + drain`` after the last, ``finishing``): then the next tile's
        LOAD_WEIGHTS (network mode: ISSUE where its loads overlap, and no unit begins while the accumulator ring is
        full), or after the last tile the read-back (layer mode: READ_WORD) or WRITE_BACK."""
        # (What a LOAD_WEIGHTS or ISSUE that may follow starts from: in every cycle, so that no enable
        # decodes WAIT's decisions.)
        m.d.sync += seq.row_count.eq(0)
        if self.network:
            m.d.sync += seq.fetch.eq(seq.weight_addr)
        self._first_position(m, cfg, last, seq)
        with m.If(seq.finishing):
            # This cycle, the decrements and the last: drain + 1 cycles, for 1 + gap.
            m.d.sync += [seq.finishing.eq(0), seq.wait.eq(self.drain - 1), seq.waiting.eq(self.drain > 1)]
        with m.Elif(seq.waiting):
            m.d.sync += [seq.wait.eq(seq.wait - 1), seq.waiting.eq(seq.wait > 1)]
        with m.Elif(seq.all_tiles):
            if self.network:
                m.next = "WRITE_BACK"
            else:
                m.d.sync += [back.read_addr.eq(0), back.read_pos.eq(0), back.read_slot.eq(cfg["stage_base"])]
                m.next = "READ_WORD"
        if self.network:
            with m.Elif(seq.first_tile & seq.ring_full):
                pass        # the accumulator ring is full: the next unit waits for the writer
            with m.Elif(seq.overlap):
                m.d.comb += seq.unit_begins.eq(seq.first_tile)
                m.next = "ISSUE"
        with m.Else():
            if self.network:
                m.d.comb += seq.unit_begins.eq(seq.first_tile)
            m.next = "LOAD_WEIGHTS"

    def _read_back_states(self, m, last, seq, back):
        """Layer mode: the read-back of each position's word: READ_WORD (a cycle: the column memories read
        ``read_addr``), FEED (``cols`` cycles, a column's accumulator a cycle into the output stage), COLLECT (until
        the word's ``cols`` results are in, the last ``STAGE_LATENCY`` cycles after it was fed), OFFER (until ``out``
        takes the word); after the layer's last word, IDLE."""
        Cn = self.params.cols
        with m.State("READ_WORD"):
            # The column memories read word read_addr (data in the next cycle, held there).
            m.d.sync += back.feed_col.eq(0)
            m.next = "FEED"
        with m.State("FEED"):
            m.d.sync += back.feed_col.eq(back.feed_col + 1)
            with m.If(back.feed_col == Cn - 1):
                m.next = "COLLECT"
        with m.State("COLLECT"):
            with m.If(back.collected == Cn):
                m.d.sync += self.out.valid.eq(1)
                m.next = "OFFER"
        with m.State("OFFER"):
            with m.If(self.out.ready):
                m.d.sync += [self.out.valid.eq(0), back.read_addr.eq(back.read_addr + 1),
                             back.read_pos.eq(back.read_pos + 1)]
                with m.If(back.read_pos == last["positions"]):
                    m.d.sync += [back.read_pos.eq(0), back.read_slot.eq(back.read_slot + 1)]
                with m.If(back.read_addr == seq.out_base - 1):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "READ_WORD"

    def _read_back_control(self, m, cfg, last, seq, back, start, pair, fsm, platform):
        """What feeds the output stage when. Network mode: the writer (:func:`hw.write_back.writer`), as each band's
        accumulators are final; layer mode: the sequencer's read-back states. Returns ``(feeding, holding,
        reading)``: an accumulator enters the output stage; the even position's are held (network mode in pairs, else
        None); the read-back reads the column memories (layer mode, else None)."""
        if self.network:
            m.d.comb += seq.tile_issued.eq(fsm.ongoing("ISSUE") & seq.x_end & seq.y_end & seq.tile_ends)
            feeding, holding = writer(m, self.params, cfg, last, back.dest, start, seq.tile_issued, seq.writer_done,
                                      seq.unit_written, back.read_addrs, back.read_pos, back.read_slot, back.feed_col,
                                      pair, drain=self.drain, stage_latency=self._stage_latency,
                                      fused_latency=self.FUSED_LATENCY + self.params.lent_search,
                                      registered_last_column=slow_block_ram(platform),
                                      late_tile_step=slow_block_ram(platform))
            return feeding, holding, None
        reading = Signal()
        m.d.comb += reading.eq(Cat(*(fsm.ongoing(state) for state in ("READ_WORD", "FEED", "COLLECT",
                                                                           "OFFER"))).any())
        return fsm.ongoing("FEED"), None, reading

    def _pe_array(self, m, platform, cfg, load, loads, w_rows, weight_data, act_data, tags):
        """The PE array (submodule ``array``, :func:`array_variant`) and what feeds it: each row's weight word from
        ``weight_data`` into its shadow weights where ``w_rows`` (a bit per row, the cycle of the row's read address)
        says, two cycles after the read data (network mode: ``BANKED_LATENCY + 2`` after the address); the product
        tables from TABLE load beats (:meth:`_buffer_write`); row ``r``'s code from ``act_data``, ``r`` cycles after row
        0's (skew), 0 outside the image, with its valid and swap bits from the position's tags (``tags[lag + r]``).
        Returns the array (its partial sums: :meth:`_accumulators`)."""
        p = self.params
        R, Cn = p.rows, p.cols
        reset_less = reset_less_data(platform)     # of data registers (hw.delay)
        lag = self.lag
        # The array: row r's code enters its table r cycles after row 0's (skew).
        variant = array_variant(p, platform)
        m.submodules.array = array = PEArray(variant, R, Cn, p.acc_bits, double_buffered=True,
                                             multiply_cols=p.multiply_cols)
        # Each row keeps its own copy of the word, loaded when the row's turn comes: the array takes it a
        # column a cycle (PEArray), and the row's PEs, spread across the chip, are fed by registers of their
        # own instead of one register fanned out to all rows (the ULX3S-85F's worst path). The row's shadow
        # weights take the word two cycles after its read data (column c's c cycles later, as the positions
        # reach it; network mode: BANKED_LATENCY + 2 after its address): no later than the tile's first
        # position reaches them, and after the previous tile's first position has (its swap copied the shadow),
        # column by column; the row's word holds until its last column has taken it (a tile of at least cols
        # cycles: hw.bands.gap_positions).
        groups = -(-Cn // self.WORD_GROUP_COLUMNS)
        enables = [[w_rows[r]] * groups for r in range(R)]
        if self.network:
            # Every layer's weights are resident: a deep buffer read through registered banks (its word
            # comes BANKED_LATENCY cycles after the address) whose multiplexer, registered here, would
            # otherwise feed every PE's shadow weight in the same cycle. The row's flag, in its last register,
            # is a flip-flop of its own for each group of columns of the row's copy (one flag into a whole
            # row's enables was the ULX3S-85F's worst path at fda0f40, 16.2 ns).
            w_rows = delays(m, w_rows, BANKED_LATENCY, "w_rows_registered")
            enables = [[delayed(m, w_rows[-2][r], 1, f"w_row_{r}_group_{g}", own_flip_flops=True,
                                reset_less=reset_less) for g in range(groups)] for r in range(R)]
            w_rows = w_rows[-1]
            weight_data = delayed(m, weight_data, 1, "weight_word_registered", reset_less=reset_less)
        row_words = [Signal.like(weight_data, name=f"weight_word_{r}", reset_less=reset_less) for r in range(R)]
        group_bits = self.WORD_GROUP_COLUMNS * len(weight_data) // Cn
        for word, row_enables in zip(row_words, enables):
            for g, enable in enumerate(row_enables):
                with m.If(enable):
                    m.d.sync += word[g * group_bits:(g + 1) * group_bits].eq(
                        weight_data[g * group_bits:(g + 1) * group_bits])
        w_rows = delayed(m, w_rows, 1, "w_rows_loading")
        table_load = self._buffer_write(m, load, "tables", loads(TABLE), platform)
        m.d.comb += [array.w_load.eq(w_rows), *(code.eq(word) for code, word in zip(array.w_code, row_words)),
                     array.table_load.eq(table_load[0]), array.table_addr.eq(table_load[1]),
                     array.table_data.eq(table_load[2]), array.table_base.eq(cfg["table_base"])]
        if p.identity_tables:
            m.d.comb += array.table_identity.eq(cfg["identity_levels"][0])
        if self.network:
            act_data = delayed(m, act_data, 1, "code_word", reset_less=reset_less)
        for r in range(R):
            code = delayed(m, Mux(tags[lag].inside, act_data.word_select(r, p.abits), 0), r, f"code_{r}",
                           reset_less=reset_less)
            m.d.comb += [array.a_valid[r].eq(tags[lag + r].valid), array.a_swap[r].eq(tags[lag + r].swap),
                         array.a_code[r].eq(code)]
        return array

    def _accumulators(self, m, platform, array, tags, read_addrs, reading):
        """The column memories (submodules ``acc_{c}``): each column's partial sum of a position is read as the
        position reaches the column's top PE (0 in the tile's first reduction tile), and the array's sum written
        back ``rows + 1`` cycles later, at the position's ``out_addr`` (its tag). The read-back reads at
        ``read_addrs`` (network mode: a second read port each, column ``c`` at copy ``c // WORD_GROUP_COLUMNS``;
        layer mode: the one port, while ``reading``). Returns each column's read-back data, a cycle after its
        address."""
        p = self.params
        R, Cn = p.rows, p.cols
        reset_less = reset_less_data(platform)     # of data registers (hw.delay)
        lag = self.lag
        read_addr = read_addrs[0]
        # Each column keeps the partial sums of every output (channel tile, position) in its
        # own memory; column c runs c cycles behind column 0. On the ECP5 (slow_block_ram) the partial sum read
        # for the array is registered before the top row's PE and read a cycle earlier: the block RAM's output
        # ran into the PE's two adders (13.0 ns on the ULX3S-85F at 41798fd). A position's partial sum is read
        # again a tile later, at least rows + 3 cycles after it was read (network mode, hw.bands.gap_positions;
        # layer mode cols + 2 + rows), and written rows + 1 cycles after that read: one cycle earlier still
        # reads it after the write.
        late = slow_block_ram(platform)
        ahead = 1 if late else 0
        column_reads = []
        for c in range(Cn):
            m.submodules[f"acc_{c}"] = accs = Memory(shape=signed(p.acc_bits), depth=p.out_depth, init=[])
            acc_read, acc_write = accs.read_port(), accs.write_port()
            done = tags[R + c + 1 + lag + ARRAY_PIPELINE]
            psum = delayed(m, acc_read.data, 1, f"psum_read_{c}", reset_less=reset_less) if late else acc_read.data
            m.d.comb += [array.psum_in[c].eq(Mux(tags[1 + lag + c + ARRAY_PIPELINE].first, 0, psum)),
                         acc_write.en.eq(done.valid), acc_write.addr.eq(done.out_addr),
                         acc_write.data.eq(array.psum_out[c])]
            array_read = tags[lag + c + ARRAY_PIPELINE - ahead].out_addr
            if self.network:
                # A second read port for the writer: the partial-sum reads of the next channel tile go on.
                back_read = accs.read_port()
                m.d.comb += [acc_read.addr.eq(array_read),
                             back_read.addr.eq(read_addrs[c // self.WORD_GROUP_COLUMNS % len(read_addrs)])]
                column_reads.append(back_read.data)
            else:
                m.d.comb += acc_read.addr.eq(Mux(reading, read_addr, array_read))
                column_reads.append(acc_read.data)
        return column_reads

    def _column_select(self, m, platform, column_reads, feed_col, holding, pair):
        """The read-back's column choice: the accumulator of column ``feed_col`` among ``column_reads``, the value
        that enters the output stage (``2`` cycles after ``feed_col`` on the ECP5, else in the same cycle: the
        stage's ``lag``). Returns the values of the stages: the position's; in pairs (``write_pairs``) the even
        position's (held while ``holding``, READ_SECOND) and the odd one's."""
        p = self.params
        Cn = p.cols
        reset_less = reset_less_data(platform)     # of data registers (hw.delay)
        late = slow_block_ram(platform)
        # Read-back: the word's accumulators enter the output stage one per cycle (column
        # feed_col); results come back STAGE_LATENCY cycles later into their field of the output word.
        # In pairs, the even position's accumulators (held) enter one stage and the odd one's a second.
        # On the ECP5 (slow_block_ram) each column's read is registered, and the column's value is chosen in two
        # levels with a register between (each group of WORD_GROUP_COLUMNS columns' first), so that the value
        # enters the stage two cycles after its channel (``lag``, the units' late_value): the multiplexer over the
        # columns' block RAMs, spread across the die, ran into the units' value registers (15.5 ns at 0e077f7),
        # and after their registers from all 16 columns in one cycle (16.5 ns at 30190ea). The accumulators stay
        # at the address read until the word's last column is taken into its group's register. Each group takes the
        # column within it from a register of its own (one register into every group's multiplexer was 10.7 ns of
        # routing at 06f5696).
        select = feed_col
        if late:
            column_reads = [delayed(m, data, 1, f"column_read_{c}", reset_less=reset_less)
                            for c, data in enumerate(column_reads)]
            group, group_bits = self.WORD_GROUP_COLUMNS, (self.WORD_GROUP_COLUMNS - 1).bit_length()
            in_group = [delayed(m, feed_col[:group_bits], 1, f"feed_col_late_{g}", own_flip_flops=True,
                                reset_less=reset_less) for g in range(-(-Cn // group))]
            group_select = delayed(m, feed_col[group_bits:], 2, "feed_group", reset_less=reset_less)

        def chosen(words, name):
            """The word of column ``select`` among ``words`` (signed ``acc_bits``): on the ECP5 each group's word
            registered first, then the group's chosen (a cycle later)."""
            if not late:
                return Cat(*words).word_select(select, p.acc_bits).as_signed()
            groups = [delayed(m, Cat(*words[g:g + group]).word_select(in_group[g // group], p.acc_bits), 1,
                              f"{name}_group_{g // group}", reset_less=reset_less) for g in range(0, Cn, group)]
            return Cat(*groups).word_select(group_select, p.acc_bits).as_signed()

        fed = chosen(column_reads, "fed")
        values = [fed]
        if p.write_pairs:
            held = [Signal(signed(p.acc_bits), name=f"held_{c}", reset_less=reset_less) for c in range(Cn)]
            with m.If(delayed(m, holding, 1, "holding_late") if late else holding):
                m.d.sync += [h.eq(r) for h, r in zip(held, column_reads)]
            values = [Mux(pair, chosen(held, "held"), fed), fed]
        return values

    def _output_stages(self, m, platform, cfg, load, loads, feeding, values, feed_col, read_slot):
        """One output stage per value of ``values`` (:func:`hw.output_stage.output_stage`; the odd position's named
        ``_odd``), fed while ``feeding`` with column ``feed_col`` of stage slot ``read_slot``, as register ``stage``
        says. Returns their results (``STAGE_LATENCY`` cycles after ``feeding``) and ``relu`` (the stage is
        STAGE_REQUANTIZE_RELU)."""
        p = self.params
        lag = 2 * int(slow_block_ram(platform))
        channel = Cat(feed_col[:p.col_bits], read_slot)
        stage = cfg["stage"][:2]
        relu = C(0, 1)      # STAGE_REQUANTIZE_RELU: in layer mode here, in network mode after the fused addition
        if p.requantize and p.requantize.relu:
            relu = stage == STAGE_REQUANTIZE_RELU
        results = [output_stage(m, p, load, loads, feeding, value, channel, stage, relu, suffix,
                                latency=self._stage_latency, lag=lag, relu_in_stage=not self.network,
                                slow=slow_block_ram(platform), reset_less=reset_less_data(platform))
                   for value, suffix in zip(values, ("", "_odd"))]
        return results, relu

    def _output_word(self, m, feeding, feed_col, result, collected, fsm):
        """Layer mode: each result (``STAGE_LATENCY`` cycles after ``feeding``) into its column's field of the
        ``out`` word; ``collected`` counts the word's results (back to 0 in READ_WORD)."""
        p = self.params
        Cn = p.cols
        back_valid = delayed(m, feeding, self._stage_latency, "back_valid")
        back_col = delayed(m, feed_col, self._stage_latency, "back_col")
        fields = [Signal(signed(p.out_bits), name=f"out_{c}") for c in range(Cn)]
        with m.If(back_valid):
            with m.Switch(back_col):
                for c in range(Cn):
                    with m.Case(c):
                        m.d.sync += fields[c].eq(result)
        m.d.sync += collected.eq(Mux(back_valid, collected + 1, Mux(fsm.ongoing("READ_WORD"), 0, collected)))
        m.d.comb += self.out.payload.eq(Cat(*fields))
