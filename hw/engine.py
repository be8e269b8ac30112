"""The layer engine: a weight-stationary PE array with its buffers, address generation and output stage.

One engine runs any convolution or fully connected layer of a compiled model that fits
its :class:`~hw.engine_params.EngineParams`, one layer per ``start``:

1. **Load** (while idle): beats on ``load_*`` write configuration registers and the
   buffers (targets in :mod:`hw.engine_params`; the host side is :mod:`hw.program`).
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
   one output stage (thresholds, requantize or none), and stream out on ``out_*``
   (valid/ready) as one word of ``cols`` outputs per position, channel tile after channel
   tile. One stage serves all columns: read-back is bound by the host link anyway, and
   per-column stage memories would not fit small FPGAs.

Products: each row has a loadable table ``j -> (L[1][j], ..., L[s_w][j])`` at its left
edge (the "row vector" way of DESIGN.md); the vector travels along the row and each PE
selects ``L[k][j]`` by its weight magnitude. Engines with ``multiply`` also hold the level
``A[j]`` in a table entry whose top bit is set, and then the PE multiplies it by its
weight level ``W[k]`` (8-bit edge layers, whose LUT would be too large).

Cycles of one layer: computing ``tiles * (rows + positions + 1 + max(0, cols + 2 - positions))``
with ``tiles = co_tiles * kernel^2 * groups``, then ``rows + cols + 4`` to empty the
pipeline; reading back ``cols + 6`` per output word (more under back-pressure).
"""

from __future__ import annotations

from amaranth import C, Cat, ClockSignal, Instance, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .engine_params import (ACTS, CONFIG, REGISTERS, REQUANTIZE, STAGE_REQUANTIZE, STAGE_THRESHOLDS, TABLE,
                            THRESHOLDS, WEIGHTS, EngineParams)
from .pe import PRODUCT_BITS, ProcessingElement
from .requantize import RequantizeUnit
from .thresholds import ThresholdUnit

SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16


def spram_buffer(m, name, width, addr, write_en, write_data):
    """``width`` bits x 16K words of iCE40 UltraPlus SB_SPRAM256KA blocks side by side; the read
    data of ``addr`` appears one cycle later (written data where ``write_en``)."""
    read_data = Signal(width, name=f"{name}_data")
    for i in range(0, width, SPRAM_WIDTH):
        bits = min(SPRAM_WIDTH, width - i)
        out = Signal(SPRAM_WIDTH, name=f"{name}_spram_{i // SPRAM_WIDTH}")
        m.submodules[f"{name}_spram_{i // SPRAM_WIDTH}"] = Instance(
            "SB_SPRAM256KA", i_ADDRESS=addr[:14], i_DATAIN=write_data[i:i + bits], i_MASKWREN=0b1111,
            i_WREN=write_en, i_CHIPSELECT=1, i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
            o_DATAOUT=out)
        m.d.comb += read_data[i:i + bits].eq(out[:bits])
    return read_data


class EngineProducts:
    """The PE product of an engine: ``P[k]`` of the row's vector, or ``W[k] * A[j]`` where the
    table entry's top bit says so (a :class:`hw.pe.Variant`-like object for :class:`ProcessingElement`)."""

    load_signature: dict = {}

    def __init__(self, params: EngineParams):
        self.params = params
        self.weight_bits, self.operand_bits = params.weight_bits, params.table_bits

    def product(self, m, pe, magnitude, operand):
        # A shift, not an Array: Yosys writes an Array as an ``always @*`` case, which Icarus
        # leaves at X in a PE whose inputs never change after time 0.
        products = Cat(C(0, PRODUCT_BITS), operand[:self.params.s_w * PRODUCT_BITS])
        selected = products.word_select(magnitude, PRODUCT_BITS)
        if not self.params.multiply:
            return selected
        return Mux(operand[-1], magnitude * operand[:8], selected)


class LayerEngine(wiring.Component):
    """The accelerator core for ``params`` (see the module docstring for what it does).

    Ports:

    - ``load_valid``, ``load_ready``, ``load_target`` (3 bits), ``load_addr``, ``load_data``:
      one beat per cycle where valid and ready; ready only while idle.
    - ``start``: a one-cycle pulse begins a layer (ignored while busy); ``busy`` is high from
      the next cycle until the last output word has been accepted.
    - ``out_valid``, ``out_ready``, ``out_data`` (``cols`` signed ``out_bits`` fields, column 0
      lowest): the layer's outputs.
    """

    STAGE_LATENCY = 3

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"params must be an EngineParams, not {params!r}")
        self.params = params
        self.drain = params.rows + params.cols + 3
        super().__init__({
            "load_valid": In(1),
            "load_ready": Out(1),
            "load_target": In(3),
            "load_addr": In(params.addr_bits),
            "load_data": In(params.data_bits),
            "start": In(1),
            "busy": Out(1),
            "out_valid": Out(1),
            "out_ready": In(1),
            "out_data": Out(params.cols * params.out_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        R, Cn = p.rows, p.cols
        cfg = {name: Signal(signed(p.reg_bits), name=f"cfg_{name}") for name in REGISTERS}
        idle = Signal()
        loading = self.load_valid & idle

        def loads(target):
            return loading & (self.load_target == target)

        with m.If(loads(CONFIG)):
            with m.Switch(self.load_addr):
                for i, name in enumerate(REGISTERS):
                    with m.Case(i):
                        m.d.sync += cfg[name].eq(self.load_data)

        def buffer(name, width, depth, write_en, spram=False):
            """A buffer written by loads while idle and read while computing: one address for
            both ports (single-port RAM). ``spram`` on an iCE40 UltraPlus: built from its
            256 Kbit SPRAM blocks (Yosys does not infer them for Amaranth's memories).
            Returns the read data (one cycle after the address) and the read address to drive."""
            addr = Signal(range(depth), name=f"{name}_addr")
            shared = Mux(idle, self.load_addr, addr)
            if spram and getattr(platform, "device", None) == "iCE40UP5K" and depth <= SPRAM_DEPTH:
                return spram_buffer(m, name, width, shared, write_en, self.load_data), addr
            m.submodules[name] = memory = Memory(shape=width, depth=depth, init=[])
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [write.en.eq(write_en), write.addr.eq(shared), write.data.eq(self.load_data),
                         read.addr.eq(shared)]
            return read.data, addr

        act_data, act_addr = buffer("activations", R * p.abits, p.act_depth, loads(ACTS))
        weight_data, weight_read_addr = buffer("weights", Cn * p.weight_bits, p.weight_depth, loads(WEIGHTS),
                                               spram=True)
        tables = [buffer(f"table_{r}", p.table_bits, p.table_depth, loads(TABLE)) for r in range(R)]

        # Loop counters: channel tile, reduction tile (ky, kx, g), position (y, x).
        def counter(name):
            return Signal(signed(p.reg_bits), name=name)

        co_tile, ky, kx, g = counter("co_tile"), counter("ky"), counter("kx"), counter("g")
        plane_base, ky_offset, weight_addr = counter("plane_base"), counter("ky_offset"), counter("weight_addr")
        out_base, read_addr = counter("out_base"), counter("read_addr")
        y, x, iy, ix, row_addr = counter("y"), counter("x"), counter("iy"), counter("ix"), counter("row_addr")
        pos, read_pos = Signal(range(p.pos_depth + 1)), Signal(range(p.pos_depth + 1))
        read_slot = Signal(range(p.stage_depth + 1))
        feed_col, collected = Signal(range(Cn + 1)), Signal(range(Cn + 2))
        row_count = Signal(range(R + 1))
        wait, finishing = Signal(signed(p.reg_bits)), Signal()
        w_valid, w_row = Signal(), Signal(range(R))
        first_tile = (ky == 0) & (kx == 0) & (g == 0)

        # The tag of each issued position, delayed one cycle per stage of the pipeline.
        tag_layout = data.StructLayout({"valid": 1, "inside": 1, "swap": 1, "first": 1,
                                        "out_addr": range(p.out_depth + 1)})
        tags = [Signal(tag_layout, name=f"tag_{n}") for n in range(R + Cn + 2)]
        m.d.sync += [tags[n].eq(tags[n - 1]) for n in range(1, len(tags))]

        m.d.sync += w_valid.eq(0)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [co_tile.eq(0), ky.eq(0), kx.eq(0), g.eq(0), plane_base.eq(0),
                                 ky_offset.eq(cfg["top_offset"]), weight_addr.eq(cfg["weight_base"]),
                                 out_base.eq(0), row_count.eq(0)]
                    m.next = "LOAD_WEIGHTS"
            with m.State("LOAD_WEIGHTS"):
                # Read one row's weight word per cycle; the row's shadow weights take it in the next cycle.
                m.d.comb += weight_read_addr.eq(weight_addr)
                m.d.sync += [weight_addr.eq(weight_addr + 1), row_count.eq(row_count + 1),
                             w_valid.eq(1), w_row.eq(row_count)]
                with m.If(row_count == R - 1):
                    m.d.sync += [y.eq(0), x.eq(0), pos.eq(0), iy.eq(ky - cfg["padding"]),
                                 ix.eq(kx - cfg["padding"]), row_addr.eq(plane_base + ky_offset)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                inside = (iy >= 0) & (iy < cfg["in_h"]) & (ix >= 0) & (ix < cfg["in_w"])
                m.d.comb += [act_addr.eq(row_addr + ix), tags[0].valid.eq(1), tags[0].inside.eq(inside),
                             tags[0].swap.eq(pos == 0), tags[0].first.eq(first_tile),
                             tags[0].out_addr.eq(out_base + pos)]
                m.d.sync += pos.eq(pos + 1)
                with m.If(x == cfg["out_w"] - 1):
                    m.d.sync += [x.eq(0), ix.eq(kx - cfg["padding"]), y.eq(y + 1), iy.eq(iy + cfg["stride"]),
                                 row_addr.eq(row_addr + cfg["row_step"])]
                    with m.If(y == cfg["out_h"] - 1):
                        self._next_tile(m, cfg, g, kx, ky, co_tile, plane_base, ky_offset, out_base, finishing)
                        # The next tile's shadow weights must not be written before this tile's
                        # first element has passed the last column, nor a partial sum read
                        # before it is written: at least cols + 2 cycles from a tile's first
                        # issue to the next tile's loads. The last tile waits for the pipeline.
                        m.d.sync += wait.eq(Cn + 2 - cfg["positions"])
                        m.next = "WAIT"
                with m.Else():
                    m.d.sync += [x.eq(x + 1), ix.eq(ix + cfg["stride"])]
            with m.State("WAIT"):
                with m.If(finishing):
                    m.d.sync += [finishing.eq(0), wait.eq(self.drain)]
                with m.Elif(wait > 0):
                    m.d.sync += wait.eq(wait - 1)
                with m.Elif(co_tile == cfg["co_tiles"]):
                    m.d.sync += [read_addr.eq(0), read_pos.eq(0), read_slot.eq(cfg["stage_base"])]
                    m.next = "READ_WORD"
                with m.Else():
                    m.d.sync += row_count.eq(0)
                    m.next = "LOAD_WEIGHTS"
            with m.State("READ_WORD"):
                # The column memories read word read_addr (data in the next cycle, held there).
                m.d.sync += feed_col.eq(0)
                m.next = "FEED"
            with m.State("FEED"):
                m.d.sync += feed_col.eq(feed_col + 1)
                with m.If(feed_col == Cn - 1):
                    m.next = "COLLECT"
            with m.State("COLLECT"):
                with m.If(collected == Cn):
                    m.d.sync += self.out_valid.eq(1)
                    m.next = "OFFER"
            with m.State("OFFER"):
                with m.If(self.out_ready):
                    m.d.sync += [self.out_valid.eq(0), read_addr.eq(read_addr + 1), read_pos.eq(read_pos + 1)]
                    with m.If(read_pos == cfg["positions"] - 1):
                        m.d.sync += [read_pos.eq(0), read_slot.eq(read_slot + 1)]
                    with m.If(read_addr == out_base - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "READ_WORD"

        # A continuous assignment (an FSM-state block would start as X in Icarus until the state changes).
        reading = Signal()
        m.d.comb += [idle.eq(fsm.ongoing("IDLE")), self.load_ready.eq(idle), self.busy.eq(~idle),
                     reading.eq(fsm.ongoing("READ_WORD") | fsm.ongoing("FEED") | fsm.ongoing("COLLECT")
                                | fsm.ongoing("OFFER"))]

        # The array: row r's code enters its table r cycles after row 0's (skew), the
        # table's vector (one cycle later) enters PE (r, 0).
        products = EngineProducts(p)
        pes = [[ProcessingElement(products, p.acc_bits, double_buffered=True) for _ in range(Cn)] for _ in range(R)]
        for r in range(R):
            code = Mux(tags[1].inside, act_data.word_select(r, p.abits), 0)
            for n in range(r):
                delayed = Signal(p.abits, name=f"code_{r}_{n}")
                m.d.sync += delayed.eq(code)
                code = delayed
            table_data, table_addr = tables[r]
            m.d.comb += table_addr.eq(cfg["table_base"] + code)
            for c in range(Cn):
                m.submodules[f"pe_{r}_{c}"] = pe = pes[r][c]
                m.d.comb += [pe.w_load.eq(w_valid & (w_row == r)),
                             pe.w_code.eq(weight_data.word_select(c, p.weight_bits))]
                if c == 0:
                    m.d.comb += [pe.a_valid.eq(tags[2 + r].valid), pe.a_swap.eq(tags[2 + r].swap),
                                 pe.a_in.eq(table_data)]
                else:
                    left = pes[r][c - 1]
                    m.d.comb += [pe.a_valid.eq(left.a_valid_out), pe.a_swap.eq(left.a_swap_out),
                                 pe.a_in.eq(left.a_out)]
                if r > 0:
                    m.d.comb += pe.psum_in.eq(pes[r - 1][c].psum_out)

        # Each column keeps the partial sums of every output (channel tile, position) in its
        # own memory; column c runs c cycles behind column 0.
        column_reads = []
        for c in range(Cn):
            m.submodules[f"acc_{c}"] = accs = Memory(shape=signed(p.acc_bits), depth=p.out_depth, init=[])
            acc_read, acc_write = accs.read_port(), accs.write_port()
            done = tags[R + c + 2]
            m.d.comb += [acc_read.addr.eq(Mux(reading, read_addr, tags[1 + c].out_addr)),
                         pes[0][c].psum_in.eq(Mux(tags[2 + c].first, 0, acc_read.data)),
                         acc_write.en.eq(done.valid), acc_write.addr.eq(done.out_addr),
                         acc_write.data.eq(pes[R - 1][c].psum_out)]
            column_reads.append(acc_read.data)

        # Read-back: the word's accumulators enter the output stage one per cycle (column
        # feed_col); results come back STAGE_LATENCY cycles later into their field of out_data.
        value = Cat(*column_reads).word_select(feed_col, p.acc_bits).as_signed()
        channel = Cat(feed_col[:p.col_bits], read_slot)
        feeding = fsm.ongoing("FEED")
        stage = cfg["stage"][:2]
        raw = value
        for n in range(self.STAGE_LATENCY):
            delayed = Signal(signed(p.acc_bits), name=f"raw_{n}")
            m.d.sync += delayed.eq(raw)
            raw = delayed
        result = raw
        if p.code_bits:
            m.submodules.thresholds = unit = ThresholdUnit(p.acc_bits, p.code_bits, p.stage_depth << p.col_bits,
                                                           p.threshold_bits)
            code = Signal(p.code_bits)
            m.d.sync += code.eq(unit.code)       # 2 + 1 cycles, as the requantize unit's 3
            self._connect_stage(m, unit, loads(THRESHOLDS), feeding, value, channel)
            result = Mux(stage == STAGE_THRESHOLDS, code, result)
        if p.requantize:
            q = p.requantize
            m.submodules.requantize = unit = RequantizeUnit(p.acc_bits, p.stage_depth << p.col_bits,
                                                            q.multiplier_bits, q.bias_bits, q.max_shift, q.out_bits)
            self._connect_stage(m, unit, loads(REQUANTIZE), feeding, value, channel)
            result = Mux(stage == STAGE_REQUANTIZE, unit.out, result)
        back_valid, back_col = feeding, feed_col
        for n in range(self.STAGE_LATENCY):
            v, col = Signal(name=f"back_valid_{n}"), Signal.like(feed_col, name=f"back_col_{n}")
            m.d.sync += [v.eq(back_valid), col.eq(back_col)]
            back_valid, back_col = v, col
        fields = [Signal(signed(p.out_bits), name=f"out_{c}") for c in range(Cn)]
        with m.If(back_valid):
            with m.Switch(back_col):
                for c in range(Cn):
                    with m.Case(c):
                        m.d.sync += fields[c].eq(result)
        m.d.sync += collected.eq(Mux(back_valid, collected + 1, Mux(fsm.ongoing("READ_WORD"), 0, collected)))
        m.d.comb += self.out_data.eq(Cat(*fields))
        return m

    @staticmethod
    def _next_tile(m, cfg, g, kx, ky, co_tile, plane_base, ky_offset, out_base, finishing):
        """Advance the reduction tile (group, then kx, then ky), then the channel tile."""
        with m.If(g != cfg["groups"] - 1):
            m.d.sync += [g.eq(g + 1), plane_base.eq(plane_base + cfg["plane"])]
        with m.Else():
            m.d.sync += [g.eq(0), plane_base.eq(0)]
            with m.If(kx != cfg["kernel"] - 1):
                m.d.sync += kx.eq(kx + 1)
            with m.Else():
                m.d.sync += kx.eq(0)
                with m.If(ky != cfg["kernel"] - 1):
                    m.d.sync += [ky.eq(ky + 1), ky_offset.eq(ky_offset + cfg["in_w"])]
                with m.Else():
                    m.d.sync += [ky.eq(0), ky_offset.eq(cfg["top_offset"]), co_tile.eq(co_tile + 1),
                                 out_base.eq(out_base + cfg["positions"])]
                    with m.If(co_tile == cfg["co_tiles"] - 1):
                        m.d.sync += finishing.eq(1)

    def _connect_stage(self, m, unit, load_en, valid, acc, channel):
        m.d.comb += [unit.load_en.eq(load_en), unit.load_addr.eq(self.load_addr), unit.load_data.eq(self.load_data),
                     unit.valid.eq(valid), unit.acc.eq(acc), unit.channel.eq(channel)]
