"""The vector unit: the element-wise nodes of a network on the chip, on its two data memories.

Between the convolutions, :class:`VectorUnit` runs the activate, add, pool and max-pool nodes of a
:class:`~compiler.graph.CompiledModel` on the network core's value and code memories (layout in
:mod:`compiler.network`: value ``(ch, p)`` of a tensor at base ``B`` is word ``B + ch * P + p``;
code ``(ch, p)`` is lane ``ch % lanes`` of word ``B + (ch // lanes) * P + p``, ``P = H * W``),
bit-exact with :func:`compiler.reference.execute`:

- ACTIVATE: ``code = Thresholds(slot_base + ch)(x)`` for every value of ``channels`` x
  ``positions``, one element per cycle through a :class:`hw.thresholds.ThresholdUnit` holding
  every activate node's thresholds (one slot per channel).
- ADD: ``VAL[dst + i] = VAL[src_a + i] + VAL[src_b + i]``, two reads per element; an element is
  written after both its reads, so ``dst`` may be ``src_a`` or ``src_b``. ADD_RELU: the same, then
  ``max(0, sum)`` (a post-activation block's ReLU). With ``p.narrow_adds`` operand b covers channels
  ``b_first .. b_first + b_channels - 1`` only (its words from ``src_b`` in order there, 0 elsewhere: an option-A
  shortcut's zero channels).
- POOL: per channel, ``s = sum over positions of u`` with ``u = sign * (x * 2^frac_bits - offset)``,
  then ``max(0, u)`` where ``relu``; the code is the number of the channel's (ascending)
  thresholds that ``s`` reaches, found by a binary search (``pool_code_bits`` steps, one
  comparator) instead of ``2^b - 1`` parallel comparators: the 8-bit pooled codes would need
  255 wide comparators for one code per channel. The thresholds are either computed
  (``pool_form`` "arithmetic", :mod:`hw.vector_params`): ``T[c] = ceil((B + c * S) / 2^k)``,
  so ``s >= T[c]`` iff ``s * 2^k >= B + c * S``; with the code found so far ``code`` and the
  probe ``p`` (one-hot, from ``2^(b-1)`` down) the candidate ``c = code + p - 1`` gives
  ``B + c * S = B' + code * S + p * S`` (``B' = B - S``, stored per channel with ``S``), where
  ``code * S`` is kept by adding ``p * S`` whenever ``code`` takes ``p``, and ``p * S`` by
  shifting ``S << (b - 1)`` right each step: adders only, no multiplier and no threshold
  memory; or read from a threshold memory (``pool_form`` "table", ``2^b`` words per channel).
- AVGPOOL: POOL's sum and search for each window of an average pooling instead of each channel, lane by lane
  within a lane group: one code per window, into its lane of the output word. With ``p.pool_outside_bits`` the
  windows may reach outside the map (``padding``): each position there enters the sum as the channel's term
  outside the map (its constants') in place of its value's ``u``.
- MAXPOOL: per lane group, output position and window element, one code-memory word read (``lanes``
  codes of one channel group), each lane's maximum kept (positions outside the input read as code 0,
  PyTorch's -inf padding on codes), one word of maxima written per output position: a whole word at
  a time, through the code memory's read port (the network core lends it from the idle engine).
- MINPOOL (``p.minpool``): MAXPOOL with each code read and each maximum written complemented (all ones of a
  lane), so each window's minimum, positions outside the input left out (the negative half of a signed
  activation after a max pooling).
- SUBSAMPLE (``p.subsample_bits``): values to values, every ``stride``-th row and column of each channel, one
  element a cycle, in place too (a CIFAR ResNet's option-A shortcut: :class:`_Subsample`).

Constants are loaded by ``(target, addr, data)`` beats (:mod:`hw.vector_words`).
"""

from __future__ import annotations

from amaranth import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .column_memory import value_read_latency
from .delay import delays, late_write, reset_less_data
from .fsm_encoding import one_hot
from .memories import slow_block_ram
from .pe import add_with_carry
from .thresholds import ThresholdUnit, lent_value_lag
from .vector_params import (ACT_THRESHOLDS, ACTIVATE, ADD, ADD_REGISTERS, ADD_RELU, AVGPOOL, MAXPOOL,
                            MAXPOOL_REGISTERS, MINPOOL, OP_BITS, POOL, POOL_CONSTANTS, POOL_DRAIN, POOL_OFFSET_SHIFT,
                            POOL_RELU_BIT, POOL_SIGN_BITS, POOL_SIGN_SHIFT, POOL_THRESHOLDS, SEARCH_STEP, SUBSAMPLE,
                            TARGET_BITS, VectorParams)


class VectorUnit(wiring.Component):
    """Runs one activate, add or pool op at a time on the data memories (module docstring).

    Ports (widths from :class:`~hw.vector_params.VectorParams` ``p``; all unsigned unless signed):

    - ``start`` (in): a one-cycle pulse, sampled only while idle (``busy`` low), and the op
      registers, read in the cycle after it (they must hold then): ``op`` (3 bits: ACTIVATE 0, ADD 1,
      POOL 2, MAXPOOL 3, ADD_RELU 4, AVGPOOL 5, MINPOOL 6, SUBSAMPLE 7; an op the unit has no hardware for is
      ignored),
      ``src_a`` (``p.src_bits``), ``src_b`` (``p.value_addr_bits``),
      ``dst`` (``p.dst_bits``), ``channels``, ``positions`` (``p.count_bits``, both >= 1),
      ``slot_base`` (``p.slot_bits``), ``frac_bits`` (``p.frac_field_bits``); MAXPOOL's and AVGPOOL's
      (and MINPOOL's) window (:data:`~hw.vector_params.MAXPOOL_REGISTERS`, ``p.window_bits``; ``row_step``
      ``p.code_addr_bits``, ``p.dst_bits`` with AVGPOOL or SUBSAMPLE hardware) with ``positions`` the input's
      ``H * W``; MAXPOOL's and AVGPOOL's ``src_a`` is the word of the first window's top left corner
      (:func:`hw.vector_words.maxpool_registers`, :func:`hw.vector_words.op_registers`; AVGPOOL's padding is 0
      without ``p.pool_outside_bits``); SUBSAMPLE's the window's
      (:func:`hw.vector_words.subsample_registers`); with ``p.narrow_adds`` ADD's (ADD_RELU's) ``b_first`` and
      ``b_channels`` (``p.count_bits``): the channels operand b covers (0 elsewhere).
    - ``busy`` (out): high from the cycle after ``start`` through the cycle that presents the
      last write: :meth:`~hw.vector_params.VectorParams.op_cycles` cycles, ACTIVATE ``N + 7`` (``act_code_bits``
      more with ``p.act_progression``: the search),
      ADD and ADD_RELU ``2N + 4`` (``N = channels * positions``), POOL ``channels *
      (max(pool_lead_pieces + positions + 5, pool_pieces + 2) + 5 * pool_code_bits) + 2``, MAXPOOL
      ``ceil(channels / lanes) * out_height * out_width * kernel^2 + 3``, AVGPOOL ``channels * out_height *
      out_width * (max(pool_lead_pieces + kernel^2 + 5, pool_pieces + 2) + 5 * pool_code_bits) + 2``, SUBSAMPLE
      ``channels * out_height * out_width + 4``
      (each with the cycle in which the start, taken into a register, starts the op: no logic from
      ``start`` into the op registers' enables).
    - ``load_en``, ``load_target`` (2 bits), ``load_addr`` (``p.load_addr_bits``), ``load_data``
      (``p.load_data_bits``): write one constant word at the clock edge; ignored while busy.
    - value read: ``val_read_addr`` (out, ``p.value_addr_bits``), ``val_read_data`` (in, signed
      ``p.value_bits``): the word at the address of :func:`hw.column_memory.value_read_latency` cycles before (1; on the
      ECP5 2: every op that reads values then takes the cycles of ``op_cycles(..., value_latency=2)``).
    - value write: ``val_write_en``, ``val_write_addr``, ``val_write_data`` (out, signed
      ``p.value_bits``): written at the edge that ends the cycle they are presented in.
    - code write: ``code_write_en``, ``code_write_addr`` (``p.code_addr_bits``),
      ``code_write_lane`` (``p.lane_index_bits``), ``code_write_data`` (``p.lane_bits``): one
      code into one lane of a code-memory word (the memory's per-lane write enable); and the same
      write as a whole word, ``code_write_lanes`` (one enable per lane) and ``code_write_word``
      (``lanes`` codes): a single code in its lane, or a MAXPOOL word (the lanes of channels
      ``< channels``).
    - code read (MAXPOOL): ``code_read_addr`` (out, ``p.code_addr_bits``), ``code_read_data`` (in,
      ``lanes`` codes): the word at the address of the previous cycle.
    - lent thresholds (while idle, for an activation fused into a layer's write-back): ``lent_valid``,
      ``lent_value`` (signed ``p.value_bits``), ``lent_slot`` (``p.slot_bits``) in; ``lent_code``
      (``p.lane_bits``) out, the code of the value under the activate thresholds of slot ``lent_slot``,
      ``ThresholdUnit.LATENCY`` cycles after the value is presented (``p.act_search_cycles`` more: the search,
      :attr:`hw.engine_params.EngineParams.lent_search`). On the ECP5
      (:func:`hw.thresholds.lent_value_lag`) the value comes three cycles after its ``lent_valid`` and ``lent_slot``:
      the slot is registered before the thresholds' memory, and the word read there twice before the compares.
      Nothing is written.

    The write ports are registers. Pipelines, counted from an element's read address: ACTIVATE
    presents the write 6 cycles later (the read, its register, the threshold unit's 3, the write register), ADD
    reads ``a``, then ``b`` and presents the write 2 cycles after ``b``'s address; POOL reads a channel's constants
    a piece a cycle (``pool_lead_pieces`` of them before its first value, the others beside its values:
    :data:`~hw.vector_params.POOL_PIECE_SLACK`), its ``positions`` values (one per cycle), waits 5 cycles (the sum
    is complete two cycles later, when the first search step compares it; and for the last piece, ``pool_pieces +
    2`` cycles from the channel's first, where the values end sooner), searches its thresholds (5 cycles per code
    bit: two adds or a read, compare in two halves, take) and presents the code's write in the next channel's
    first cycle (the arithmetic form computes ``B' + code * S + p * S`` where the table form reads the threshold:
    the same cycles); MAXPOOL reads a word per cycle and presents a window's write 2 cycles after its last read
    (the read, the write register). A value read that takes more than a cycle
    (:func:`hw.column_memory.value_read_latency`) delays ACTIVATE's and ADD's write and POOL's sum by as many
    cycles more.
    """

    def __init__(self, params: VectorParams):
        if not isinstance(params, VectorParams):
            raise TypeError(f"params must be a VectorParams, not {params!r}")
        self.params = p = params
        super().__init__({
            "start": In(1),
            "op": In(OP_BITS),
            "src_a": In(p.src_bits),
            "src_b": In(p.value_addr_bits),
            "dst": In(p.dst_bits),
            "channels": In(p.count_bits),
            "positions": In(p.count_bits),
            "slot_base": In(p.slot_bits),
            "frac_bits": In(p.frac_field_bits),
            **{name: In((p.dst_bits if p.avgpool_bits or p.subsample_bits else p.code_addr_bits) if name == "row_step"
                        else max(1, p.window_bits)) for name in MAXPOOL_REGISTERS},
            **{name: In(p.count_bits) for name in (ADD_REGISTERS if p.narrow_adds else ())},
            "busy": Out(1),
            "load_en": In(1),
            "load_target": In(TARGET_BITS),
            "load_addr": In(p.load_addr_bits),
            "load_data": In(p.load_data_bits),
            "val_read_addr": Out(p.value_addr_bits),
            "val_read_data": In(signed(p.value_bits)),
            "val_write_en": Out(1),
            "val_write_addr": Out(p.value_addr_bits),
            "val_write_data": Out(signed(p.value_bits)),
            "code_write_en": Out(1),
            "code_write_addr": Out(p.code_addr_bits),
            "code_write_lane": Out(p.lane_index_bits),
            "code_write_data": Out(p.lane_bits),
            "code_write_lanes": Out(p.lanes),
            "code_write_word": Out(p.lanes * p.lane_bits),
            "code_read_addr": Out(p.code_addr_bits),
            "code_read_data": In(p.lanes * p.lane_bits),
            "lent_valid": In(1),
            "lent_value": In(signed(p.value_bits)),
            "lent_slot": In(p.slot_bits),
            "lent_code": Out(p.lane_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        pool_hw = bool(p.pool_slots)
        extra = value_read_latency(platform) - 1       # the value memory's read cycles beyond one
        rl = reset_less_data(platform)                  # of data registers (hw.delay)
        busy = Signal()
        load = Signal()
        m.d.comb += load.eq(self.load_en & ~busy)

        # Op registers, sampled at start.
        op = Signal(OP_BITS)
        channels, positions = Signal(p.count_bits, name="op_channels"), Signal(p.count_bits, name="op_positions")
        frac, group_step = Signal(p.frac_field_bits, name="op_frac"), Signal(p.count_bits, name="op_group_step")
        # Counters: next read addresses (operand a, operand b), next ADD write address, element
        # position and channel, lane, code word of the channel's lane group at position 0, slot.
        rd_a, rd_b, wr = (Signal(p.value_addr_bits, name=name) for name in ("rd_a", "rd_b", "wr"))
        pos, ch = Signal(p.count_bits, name="pos"), Signal(p.count_bits, name="ch")
        lane = Signal(p.lane_index_bits, name="lane")
        group, slot = Signal(p.code_addr_bits, name="group"), Signal(p.slot_bits, name="slot")
        phase = Signal()                        # ADD: 0 reads a, 1 reads b
        adding = ((op == ADD) | (op == ADD_RELU)) if p.adds else C(0, 1)
        # The loop ends are flip-flops, set as `pos` and `ch` move (the FSM's enables test flip-flops, not
        # compares): `last_pos` is pos == positions - 1, a register; `last_ch` ch == channels - 1 (POOL, ACTIVATE,
        # ADD; AVGPOOL and MAXPOOL count channels their own way), the sign of `channels_left`, channels - 2 at start
        # and one less at each channel (no compare: ch == channels - 2 into last_ch's input, decoded with the FSM's
        # state, was the UP5K's worst path at cf3a762, 25.7 ns). `before_position` (positions less 2) and
        # `one_position` (positions is 1) are set at start.
        before_position = Signal(p.count_bits, name="before_position")
        one_position = Signal(name="one_position")
        channels_left = Signal(signed(p.count_bits + 1), name="channels_left")
        last_pos, last_ch = Signal(name="last_pos"), channels_left[-1]

        def next_position():
            m.d.sync += [pos.eq(pos + 1), last_pos.eq(pos == before_position)]

        def next_channel():
            m.d.sync += [ch.eq(ch + 1), slot.eq(slot + 1), pos.eq(0), last_pos.eq(one_position),
                         channels_left.eq(channels_left - 1)]
            with m.If(lane == p.lanes - 1):
                m.d.sync += [lane.eq(0), group.eq(group + group_step)]
            with m.Else():
                m.d.sync += lane.eq(lane + 1)

        issue_act, issue_a, issue_b, issue_pool = (Signal(name=name) for name in ("issue_act", "issue_a", "issue_b",
                                                                                  "issue_pool"))
        # ``b_in``: operand b covers the element's channel (always, without ``narrow_adds``); b's address moves
        # on only there.
        b_in = C(1, 1)
        if p.narrow_adds:
            b_first, b_end = Signal(p.count_bits, name="b_first"), Signal(p.count_bits + 1, name="b_end")
            b_in = (ch >= b_first) & (ch < b_end)
        m.d.sync += [rd_a.eq(rd_a + (issue_act | issue_a | issue_pool)), rd_b.eq(rd_b + (issue_b & b_in)),
                     wr.eq(wr + issue_b)]

        # Pool state: the channel's sum, the code found so far (back to 0 as a search's last step hands its
        # result to the write, so 0, its reset value, whenever no search runs: only a search step enables
        # it), the search's probe bit (one-hot),
        # which phase of a search step (``step_phase`` 0: read the threshold, or add ``B' + code * S``; 1: add
        # ``probe * S`` to that; 2 and 3: compare, half the width a cycle, into a register; 4: take the result; the
        # wide compare feeds no enable), the drain counter, the piece of the channel's constants being read, one a
        # cycle while ``fetching``: from the channel's first cycle, the first value's read after the
        # ``pool_lead_pieces`` (CONSTANTS), the rest beside the values (:data:`~hw.vector_params.POOL_PIECE_SLACK`);
        # ``pieces_pending`` while a piece is still on its way into the constants register (the search waits for it).
        if pool_hw:
            b = p.pool_code_bits
            clear_total = Signal(name="clear_total")
            code, probe = Signal(b, name="code"), Signal(b, name="probe")
            step_phase = Signal(range(SEARCH_STEP), name="step_phase")
            drain = Signal(range(POOL_DRAIN + extra))
            piece = Signal(range(max(2, p.pool_pieces)), name="piece")
            fetching, pieces_pending = Signal(name="fetching"), Signal(name="pieces_pending")
            pool_write = Signal()
            with m.If(fetching):
                m.d.sync += piece.eq(piece + 1)
                with m.If(piece == p.pool_pieces - 1):
                    m.d.sync += [piece.eq(0), fetching.eq(0)]

            def new_channel():
                m.d.comb += clear_total.eq(1)
                m.d.sync += [probe.eq(1 << (b - 1)), step_phase.eq(0)]

            def constants():
                """The next cycle a channel's (window's) first: its constants read from then on."""
                m.d.sync += fetching.eq(1)
                m.next = "CONSTANTS" if p.pool_lead_pieces else "SUM"

        maxpool = _MaxPool(self, m) if p.maxpool_bits else None
        avgpool = _AvgPool(self, m, lane, group, ch, slot, channels, positions) if p.avgpool_bits else None
        subsample = _Subsample(self, m) if p.subsample_bits else None
        windowed = op == AVGPOOL
        read_addr = Mux(issue_b, rd_b, Mux(windowed, avgpool.addr, rd_a) if avgpool else rd_a)
        m.d.comb += self.val_read_addr.eq(Mux(subsample.issuing, subsample.rd, read_addr) if subsample else read_addr)
        supported = Cat(*(self.op == x for x in p.ops)).any()
        go = Signal(name="go")      # a start taken: the op begins in the next cycle (START_CYCLES)
        m.d.sync += go.eq(self.start & ~busy & supported)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [op.eq(self.op), channels.eq(self.channels), positions.eq(self.positions),
                                 channels_left.eq(self.channels - 2), before_position.eq(self.positions - 2),
                                 one_position.eq(self.positions == 1), last_pos.eq(self.positions == 1),
                                 frac.eq(self.frac_bits), rd_a.eq(self.src_a), rd_b.eq(self.src_b),
                                 wr.eq(self.dst), group.eq(self.dst), slot.eq(self.slot_base),
                                 pos.eq(0), ch.eq(0), lane.eq(0), phase.eq(0),
                                 group_step.eq(Mux(self.op == POOL, 1, self.positions))]
                    if p.narrow_adds:
                        m.d.sync += [b_first.eq(self.b_first), b_end.eq(self.b_first + self.b_channels)]
                    if pool_hw:
                        new_channel()
                    m.next = "RUN"
                    if pool_hw:
                        with m.If(self.op == POOL):
                            constants()
                    if avgpool:
                        with m.If(self.op == AVGPOOL):
                            avgpool.start()
                            constants()
                    if maxpool:
                        pooling = self.op == MAXPOOL
                        if p.minpool:
                            pooling |= self.op == MINPOOL
                        with m.If(pooling):
                            maxpool.start()
                            m.next = "MAXPOOL"
                    if subsample:
                        with m.If(self.op == SUBSAMPLE):
                            subsample.start()
                            m.next = "SUBSAMPLE"
            with m.State("RUN"):
                # ACTIVATE: one element per cycle; ADD: operand a, then b and the next element.
                with m.If(adding & ~phase):
                    m.d.comb += issue_a.eq(1)
                    m.d.sync += phase.eq(1)
                with m.Else():
                    m.d.comb += [issue_act.eq(op == ACTIVATE), issue_b.eq(adding)]
                    m.d.sync += phase.eq(0)
                    next_position()
                    with m.If(last_pos):
                        with m.If(last_ch):
                            m.next = "IDLE"
                        with m.Else():
                            next_channel()
            if maxpool:
                with m.State("MAXPOOL"):
                    with m.If(maxpool.issue()):
                        m.next = "IDLE"
            if subsample:
                with m.State("SUBSAMPLE"):
                    with m.If(subsample.issue()):
                        m.next = "IDLE"
            if pool_hw:
                if p.pool_lead_pieces:
                    with m.State("CONSTANTS"):
                        # The pieces of the channel's constants read before its first value.
                        with m.If(piece == p.pool_lead_pieces - 1):
                            m.next = "SUM"
                with m.State("SUM"):
                    m.d.comb += issue_pool.eq(1)
                    next_position()
                    if avgpool:
                        avgpool.element()
                    with m.If(Mux(windowed, avgpool.last, last_pos) if avgpool else last_pos):
                        m.d.sync += drain.eq(0)
                        m.next = "DRAIN"
                with m.State("DRAIN"):
                    with m.If(drain != POOL_DRAIN + extra - 1):
                        m.d.sync += drain.eq(drain + 1)
                    with m.Elif(~pieces_pending):
                        m.next = "SEARCH"
                with m.State("SEARCH"):
                    m.d.sync += step_phase.eq(step_phase + 1)
                    with m.If(step_phase == SEARCH_STEP - 1):
                        m.d.sync += step_phase.eq(0)
                        m.d.sync += probe.eq(probe >> 1)
                        with m.If(probe[0]):
                            m.d.comb += pool_write.eq(1)
                            new_channel()
                            with m.If(Mux(windowed, avgpool.done, last_ch) if avgpool else last_ch):
                                m.next = "IDLE"
                            if avgpool:
                                with m.Elif(windowed):
                                    avgpool.next_window()
                                    constants()
                            with m.Else():
                                next_channel()
                                constants()
        one_hot(fsm)

        # ACTIVATE: the value read, registered (the value memory's read multiplexer over its blocks ran into the
        # unit's value register: the ULX3S-85F's worst path at 0e077f7), goes through the threshold unit; its code,
        # with the element's code address and lane delayed alike, into the code write registers. While idle, the
        # unit takes the lent value instead (the ``lent_*`` ports).
        # ``pending``: writes still in a pipeline (busy until they are done).
        m.d.sync += [self.code_write_en.eq(0), self.val_write_en.eq(0)]
        pending = []
        if p.act_code_bits:
            # On the ECP5 the unit registers the thresholds' word (its block RAM's output ran into the compares:
            # 13.7 ns on the ULX3S-85F), the slot (ThresholdUnit(registered_channel=)) and the word and value once
            # more before the compares (registered_inputs: 12.2 ns into them at 5f087e3), and takes the value three
            # cycles after the element's valid and slot (late_value 2, and the slot's register).
            late = lent_value_lag(platform)
            read = 2 + extra            # the value registered
            depth = read + ThresholdUnit.LATENCY + p.act_search_cycles      # (with progressions, the search)
            act = delays(m, issue_act, depth, "act")
            read_value = delays(m, self.val_read_data, 1, "act_value", reset_less=rl)[1]
            m.submodules.thresholds = unit = ThresholdUnit(p.value_bits, p.act_code_bits, p.act_slots,
                                                           p.act_threshold_bits, registered_word=bool(late),
                                                           late_value=late - 1 if late else 0, registered_channel=bool(late),
                                                           registered_inputs=bool(late), progression=p.act_progression)
            addr = delays(m, (group + pos)[:p.code_addr_bits], depth, "act_addr", reset_less=rl)[-1]
            act_lane = delays(m, lane, depth, "act_lane", reset_less=rl)[-1]
            lent = self.lent_valid & ~busy
            value_lent = delays(m, lent, late, "lent_late")[-1]
            act_slot = delays(m, slot, read, "act_slot", reset_less=rl)[read - late]
            # On the ECP5 the thresholds' load a cycle later, decoded, from flip-flops of their own
            # (hw.delay.late_write: the load enable's decode ran into their 24 blocks' write enables, 12.2 ns at
            # c4a8796); loads come while idle, long before an op or a lent value reads them.
            act_load = [load & (self.load_target == ACT_THRESHOLDS), self.load_addr, self.load_data]
            if late:
                act_load = late_write(m, act_load, "act_thresholds_load", ("en", "addr", "data"), reset_less=rl)
            m.d.comb += [unit.load_en.eq(act_load[0]), unit.load_addr.eq(act_load[1]), unit.load_data.eq(act_load[2]),
                         unit.valid.eq(act[read - late] | lent),
                         unit.acc.eq(Mux(value_lent, self.lent_value, read_value)),
                         unit.channel.eq(Mux(lent, self.lent_slot, act_slot)),
                         self.lent_code.eq(unit.code)]
            with m.If(act[-1]):
                m.d.sync += [self.code_write_en.eq(1), self.code_write_addr.eq(addr),
                             self.code_write_lane.eq(act_lane), self.code_write_data.eq(unit.code)]
            pending += act[1:]      # the element in the read, its register, the unit

        # ADD (with ``adds``): the value read, registered (no adder after the value memory's read multiplexer);
        # operand a waits for b; the sum goes to the value write registers.
        if p.adds:
            a2, (_, *b_stages) = delays(m, issue_a, 2 + extra, "add_a")[-1], delays(m, issue_b, 2 + extra, "add_b")
            wr2, b2 = delays(m, wr, 2 + extra, "add_wr")[-1], b_stages[-1]
            read_value = delays(m, self.val_read_data, 1, "add_value", reset_less=rl)[1]
            a_value = Signal(signed(p.value_bits))
            with m.If(a2):
                m.d.sync += a_value.eq(read_value)
            b_value = read_value
            if p.narrow_adds:       # 0 outside operand b's channels (its read there ignored)
                b_value = Mux(delays(m, b_in, 2 + extra, "add_b_in")[-1], read_value, 0)
            add_sum = a_value + b_value
            with m.If(b2):
                m.d.sync += [self.val_write_en.eq(1), self.val_write_addr.eq(wr2),
                             self.val_write_data.eq(Mux((op == ADD_RELU) & (add_sum < 0), 0, add_sum))]
            pending += b_stages

        if subsample:
            pending += subsample.write(extra, rl)

        if pool_hw:
            # (an AVGPOOL element outside the map: its term outside the map enters the sum instead of its value's)
            outside = issue_pool & windowed & avgpool.outside if avgpool else C(0, 1)
            self._pool(m, load, slot, frac, issue_pool, outside, clear_total, code, probe, step_phase, pool_write,
                       group, lane, fsm.ongoing("SEARCH"), fetching, pieces_pending, piece, extra,
                       slow_block_ram(platform), rl)

        # The write as a whole code-memory word: a max-pool word, or one lane of a code.
        word_write, word_lanes, word_data = (maxpool.write(pending) if maxpool
                                             else (C(0, 1), C(0, p.lanes), C(0, p.lanes * p.lane_bits)))
        one_lane = Cat(self.code_write_lane == n for n in range(p.lanes))
        m.d.comb += [self.code_write_lanes.eq(Mux(word_write, word_lanes, one_lane)),
                     self.code_write_word.eq(Mux(word_write, word_data, self.code_write_data.replicate(p.lanes)))]
        m.d.comb += busy.eq(~fsm.ongoing("IDLE") | go | Cat(*pending).any() | self.val_write_en | self.code_write_en)
        m.d.comb += self.busy.eq(busy)
        return m

    def _pool(self, m, load, slot, frac, issue_pool, outside, clear_total, code, probe, step_phase, pool_write, group,
              lane, searching, reading, pending, piece, extra, registered_read, reset_less):
        """The pool datapath: constants (and thresholds) memories, the channel's constants register (its
        pieces read while ``reading``; ``pending`` set while one is still on its way into it), ``u`` and the sum
        (back to 0 where ``clear_total``; the channel's term outside the map in place of ``u`` for an element issued
        with ``outside``), the search step; ``extra``: the value memory's read cycles beyond one;
        ``registered_read``: each piece read is registered before it goes into its place in the constants register
        (a cycle later, as the values come a cycle later: the ECP5, whose block RAM output ran into the nine
        registers of each bit, 12.3 ns on the ULX3S-85F at 7bd78e4); ``reset_less``: the datapath's registers ignore
        the domain's reset (:func:`hw.delay.reset_less_data`)."""
        p = self.params
        b = p.pool_code_bits
        m.submodules.pool_constants = constants = Memory(shape=p.pool_piece_bits, depth=p.pool_constant_depth,
                                                         init=[])
        memories = [(constants, POOL_CONSTANTS)]
        if not p.pool_arithmetic:
            m.submodules.pool_thresholds = thresholds = Memory(shape=signed(p.pool_threshold_bits),
                                                               depth=p.pool_threshold_depth, init=[])
            memories.append((thresholds, POOL_THRESHOLDS))
        for memory, target in memories:
            write = memory.write_port()
            m.d.comb += [write.en.eq(load & (self.load_target == target)), write.addr.eq(self.load_addr),
                         write.data.eq(self.load_data)]
        # The channel's constants: its pieces read at its slot into a register, stable while its values pass.
        const_read = constants.read_port()
        m.d.comb += const_read.addr.eq(Cat(piece[:p.pool_piece_index_bits], slot))
        word = Signal(p.pool_pieces * p.pool_piece_bits, name="pool_constants_word", reset_less=reset_less)
        late = 1 + int(registered_read)
        read_piece, piece_data = delays(m, piece, late, "pool_piece")[late], const_read.data
        if registered_read:
            piece_data = delays(m, piece_data, 1, "pool_piece_data", reset_less=reset_less)[1]
        landing = delays(m, reading, late, "pool_reading")
        m.d.comb += pending.eq(Cat(*landing).any())
        with m.If(landing[late]):
            m.d.sync += word.word_select(read_piece, p.pool_piece_bits).eq(piece_data)
        relu = word[POOL_RELU_BIT]
        sign = word[POOL_SIGN_SHIFT:POOL_SIGN_SHIFT + POOL_SIGN_BITS].as_signed()
        offset = word[POOL_OFFSET_SHIFT:POOL_OFFSET_SHIFT + p.pool_offset_bits].as_signed()
        # Stage 1: the value read, registered (the value memory's read multiplexer feeds no logic);
        # stage 2: x * 2^frac; stage 3: sign * t, t = x * 2^frac - offset (one carry chain: its operands swapped
        # where the sign is negative, zeros where it is 0; a negation and a multiplexer after it were the UP5K's
        # worst path at 41798fd); stage 4: registered again (clipped: min(t, cap), where the unit clips); stage 5:
        # u = relu(sign * t);
        # stage 6: u summed (the shift, each carry chain and the ReLU's zeroing: one a cycle), the sum's high half a
        # cycle later (``_sum``), in the cycle of the search's first compare (POOL_DRAIN: two cycles into SEARCH).
        value = delays(m, self.val_read_data, 1, "pool_value", reset_less=reset_less)[1]
        pool2 = delays(m, issue_pool, 2 + extra, "pool")[-1]
        width = p.value_bits + p.max_frac_bits + 1
        shifted = Signal(signed(width), name="shifted", reset_less=reset_less)
        shifted_valid = Signal(name="shifted_valid")
        m.d.sync += [shifted.eq(value << frac), shifted_valid.eq(pool2)]
        t, t_valid = Signal(signed(width + 1), name="t", reset_less=reset_less), Signal(name="t_valid")
        minuend, subtrahend = Mux(sign < 0, offset, shifted), Mux(sign < 0, shifted, offset)
        m.d.sync += [t.eq(Mux(sign == 0, 0, minuend) - Mux(sign == 0, 0, subtrahend)), t_valid.eq(shifted_valid)]
        signed_t = Signal(signed(width + 1), name="signed_t", reset_less=reset_less)
        signed_valid = Signal(name="signed_valid")
        m.d.sync += signed_valid.eq(t_valid)
        if p.pool_cap_bits:             # the clip (a ReLU6's), where the model has one: min(t, cap)
            cap = word[p.pool_cap_shift:p.pool_cap_shift + p.pool_cap_bits].as_signed()
            m.d.sync += signed_t.eq(Mux(t > cap, cap, t))
        else:
            m.d.sync += signed_t.eq(t)
        # u: 0 where no value comes (the sum adds it every cycle). (An If, not the condition in a Mux: an X on the
        # valid, in Icarus before the FSM's first change, then reads as no value instead of entering the sum.)
        u = Signal(signed(p.pool_sum_bits), name="u")
        m.d.sync += u.eq(0)
        with m.If(signed_valid & ~(relu & signed_t[-1])):
            m.d.sync += u.eq(signed_t)
        if p.pool_outside_bits:     # (its value read from wherever the address wrapped: left out)
            with m.If(delays(m, outside, 5 + extra, "pool_outside")[-1]):
                m.d.sync += u.eq(word[p.pool_outside_shift:p.pool_outside_shift + p.pool_outside_bits].as_signed())
        total = self._sum(m, u, clear_total)
        # Search step, candidate ``code | probe`` (threshold index ``code + probe - 1``): phases 0 and 1, read its
        # threshold (table) or compute ``B' + code * S``, then plus ``probe * S`` (arithmetic: a carry chain a
        # cycle; the two in one cycle were the UP5K's worst path at 0bd8617, 25.0 ns); phases 2 and 3, compare the
        # sum (times ``2^k``) with it into ``passed``; phase 4 (``taking``), take the candidate if it passed.
        cand = code | probe
        found, passed, taking = Signal(b), Signal(name="passed"), step_phase == SEARCH_STEP - 1
        if p.pool_arithmetic:
            base = word[p.pool_base_shift:p.pool_base_shift + p.pool_base_bits].as_signed()
            step = word[p.pool_step_shift:p.pool_step_shift + p.pool_step_bits]
            acc = Signal(p.pool_step_bits + b)             # code * S
            probe_step = Signal(p.pool_step_bits + b - 1)  # probe * S
            base_acc = Signal((base + acc).shape(), name="base_acc", reset_less=reset_less)
            bound = Signal(signed(max(p.pool_base_bits, p.pool_step_bits + b + 1) + 1), reset_less=reset_less)
            m.d.sync += [base_acc.eq(base + acc), bound.eq(base_acc + probe_step),
                         passed.eq(self._at_least(m, total << p.pool_shift, bound))]
            # Before the search (the channel's constants are read by then): code 0, probe 2^(b-1).
            with m.If(~searching):
                m.d.sync += [acc.eq(0), probe_step.eq(step << (b - 1))]
            with m.Elif(taking):
                m.d.sync += probe_step.eq(probe_step >> 1)
                with m.If(passed):
                    m.d.sync += acc.eq(acc + probe_step)
        else:
            thr_read = thresholds.read_port()
            m.d.comb += thr_read.addr.eq(Cat((cand - 1)[:b], slot))
            m.d.sync += passed.eq(self._at_least(m, total, thr_read.data))
        m.d.comb += found.eq(Mux(passed, cand, code))
        with m.If(taking):                      # after the last step, the next channel starts at 0
            m.d.sync += code.eq(Mux(probe[0], 0, found))
        with m.If(pool_write):
            m.d.sync += [self.code_write_en.eq(1), self.code_write_addr.eq(group),
                         self.code_write_lane.eq(lane), self.code_write_data.eq(found)]

    @staticmethod
    def _at_least(m, a, b):
        """``a >= b`` for signed values held two cycles, a cycle after the second (for a register): two carry
        chains of half the width a cycle apart (the whole width's was the UP5K's worst path), the low halves'
        borrow (``a``'s below ``b``'s, unsigned) registered, then the high halves compared with it."""
        width = max(len(a), len(b)) + 1
        wide_a, wide_b = Signal(signed(width)), Signal(signed(width))
        m.d.comb += [wide_a.eq(a), wide_b.eq(b)]
        low = width // 2
        borrow = Signal(name="borrow")
        m.d.sync += borrow.eq(wide_a[:low] < wide_b[:low])
        # (2 * a_high >= 2 * b_high + borrow: a_high >= b_high, or above it where the low halves borrow.)
        return Cat(C(0, 1), wide_a[low:]).as_signed() >= Cat(borrow, wide_b[low:]).as_signed()

    @staticmethod
    def _sum(m, u, clear):
        """The running sum of ``u`` (signed, the sum's width), 0 after a cycle with ``clear``: returned a cycle
        later than one adder would give it (``u`` at clock edge t is in the sum from edge t + 2), in two
        halves so that no carry chain is the whole width (the UP5K's worst path): the low half and its carry
        out, registered, and the high half with that carry (the search's first compare, the low halves', reads
        it as the last value's carry enters the high half: :data:`POOL_DRAIN`)."""
        low_bits = len(u) // 2
        low, high, carry = Signal(low_bits, name="sum_low"), Signal(len(u) - low_bits, name="sum_high"), Signal()
        low_sum = low + u[:low_bits]
        with m.If(clear):
            m.d.sync += [low.eq(0), high.eq(0), carry.eq(0)]
        with m.Else():
            m.d.sync += [low.eq(low_sum[:low_bits]), carry.eq(low_sum[low_bits]),
                         high.eq(add_with_carry(high, u[low_bits:], carry))]
        return Cat(low, high).as_signed()


def _in_map(iy, ix, regs: dict):
    """Whether input position ``(iy, ix)`` (signed) lies in the map of the window registers ``regs`` (``height``,
    ``width``)."""
    return (iy >= 0) & (iy < regs["height"]) & (ix >= 0) & (ix < regs["width"])


class _AvgPool:
    """The AVGPOOL counters of a :class:`VectorUnit`; its sums and searches are POOL's, a window for a channel.

    Per lane group (first channel ``first``), output row ``oy``, column ``ox`` and lane ``l`` (channel
    ``ch = first + l``, constants slot ``slot_base + ch``), the window's ``kernel^2`` values are read one per
    cycle, row by row (``ky``, ``kx``): word ``row + kx``, ``row`` = ``src_a + ch * positions + (oy * stride +
    ky) * width + ox * stride`` (``src_a``: the first window's top left corner, ``padding`` rows and columns before
    the map's first value, addresses wrapping at ``2^value_addr_bits``). ``outside``: the element read is at input
    position ``(iy0 + ky, ix0 + kx)`` (the window origin from ``-padding`` on) outside the map, where it reads no
    value of the map (with ``p.pool_outside_bits``; else never). The window's code goes to lane ``l`` of the unit's
    ``group`` word, which starts at ``dst`` and moves on by one after the group's last lane: the output words in
    order.
    """

    def __init__(self, unit: VectorUnit, m: Module, lane, group, ch, slot, channels, positions):
        self.unit, self.m, p = unit, m, unit.params
        self.lane, self.group, self.ch, self.slot, self.channels, self.positions = (lane, group, ch, slot, channels,
                                                                                    positions)
        self.padded = bool(p.pool_outside_bits)
        self.regs = {name: Signal(getattr(unit, name).shape(), name=f"ap_{name}")
                     for name in ("width", "out_height", "out_width", "kernel", "stride", "row_step")
                     + (("height", "padding") if self.padded else ())}
        self.oy, self.ox, self.ky, self.kx = (Signal(p.avgpool_bits, name=f"ap_{n}") for n in ("oy", "ox", "ky", "kx"))
        # The window origin's input position (signed), with padding hardware.
        wide = signed(p.avgpool_bits + 3)
        self.iy0, self.ix0 = Signal(wide, name="ap_iy0"), Signal(wide, name="ap_ix0")
        # Value addresses: the group's first window, the output row's first window, the window (lane 0),
        # the window of lane l, the window row being read; ``span`` = lanes * positions (a group's values).
        self.base, self.out_row, self.win, self.lane_win, self.row, self.span = (
            Signal(p.value_addr_bits, name=f"ap_{n}") for n in ("base", "out_row", "win", "lane_win", "row", "span"))
        self.first = Signal(p.count_bits + 1, name="ap_first")
        self.first_slot = Signal(p.slot_bits, name="ap_first_slot")
        r = self.regs
        self.addr = self.row + self.kx
        self.last_lane = (lane == p.lanes - 1) | (ch == channels - 1)
        self.last = (self.kx == r["kernel"] - 1) & (self.ky == r["kernel"] - 1)
        self.done = self.last_lane & (self.ox == r["out_width"] - 1) & (self.oy == r["out_height"] - 1) & \
            (self.first + p.lanes >= channels)
        self.outside = ~_in_map(self.iy0 + self.ky, self.ix0 + self.kx, r) if self.padded else C(0, 1)

    def start(self) -> None:
        """Sample the registers (in the cycle of ``start``): the first window of the first group."""
        u, m, p = self.unit, self.m, self.unit.params
        m.d.sync += [reg.eq(getattr(u, name)) for name, reg in self.regs.items()]
        m.d.sync += [c.eq(0) for c in (self.oy, self.ox, self.ky, self.kx, self.first)]
        m.d.sync += [a.eq(u.src_a) for a in (self.base, self.out_row, self.win, self.lane_win, self.row)]
        m.d.sync += [self.span.eq(u.positions * p.lanes), self.first_slot.eq(u.slot_base)]
        if self.padded:
            m.d.sync += [self.iy0.eq(-u.padding), self.ix0.eq(-u.padding)]

    def element(self) -> None:
        """In SUM: the next element of the window (the address moves on; ``last``: this is its last)."""
        m, r = self.m, self.regs
        with m.If(self.kx != r["kernel"] - 1):
            m.d.sync += self.kx.eq(self.kx + 1)
        with m.Else():
            m.d.sync += self.kx.eq(0)
            with m.If(self.ky != r["kernel"] - 1):
                m.d.sync += [self.ky.eq(self.ky + 1), self.row.eq(self.row + r["width"])]
            with m.Else():
                m.d.sync += self.ky.eq(0)

    def next_window(self) -> None:
        """After a window's search (not the last): the next lane, else the next window, else the next group."""
        m, r, p = self.m, self.regs, self.unit.params
        with m.If(~self.last_lane):
            m.d.sync += [self.lane.eq(self.lane + 1), self.ch.eq(self.ch + 1), self.slot.eq(self.slot + 1),
                         self.lane_win.eq(self.lane_win + self.positions), self.row.eq(self.lane_win + self.positions)]
        with m.Elif(self.ox != r["out_width"] - 1):
            self._lane_zero()
            m.d.sync += self.ox.eq(self.ox + 1)
            m.d.sync += [a.eq(self.win + r["stride"]) for a in (self.win, self.lane_win, self.row)]
            if self.padded:
                m.d.sync += self.ix0.eq(self.ix0 + r["stride"])
        with m.Elif(self.oy != r["out_height"] - 1):
            self._lane_zero()
            m.d.sync += [self.ox.eq(0), self.oy.eq(self.oy + 1)]
            m.d.sync += [a.eq(self.out_row + r["row_step"]) for a in (self.out_row, self.win, self.lane_win, self.row)]
            if self.padded:
                m.d.sync += [self.ix0.eq(-r["padding"]), self.iy0.eq(self.iy0 + r["stride"])]
        with m.Else():
            self._lane_zero()
            if self.padded:
                m.d.sync += [self.ix0.eq(-r["padding"]), self.iy0.eq(-r["padding"])]
            m.d.sync += [self.ox.eq(0), self.oy.eq(0), self.first.eq(self.first + p.lanes),
                         self.ch.eq(self.first + p.lanes), self.slot.eq(self.first_slot + p.lanes),
                         self.first_slot.eq(self.first_slot + p.lanes)]
            m.d.sync += [a.eq(self.base + self.span) for a in (self.base, self.out_row, self.win, self.lane_win,
                                                                self.row)]

    def _lane_zero(self) -> None:
        """After a window's last lane: lane 0 (its channel and slot) of the next output word."""
        self.m.d.sync += [self.lane.eq(0), self.group.eq(self.group + 1), self.ch.eq(self.first),
                          self.slot.eq(self.first_slot)]


class _Subsample:
    """The SUBSAMPLE datapath of a :class:`VectorUnit`: counters, the read address, the value write.

    Per channel ``ch`` (``0..channels - 1``), output row ``oy`` and column ``ox``, one element a cycle: value word
    ``rd`` is read, input position ``(oy * stride, ox * stride)`` of the channel (``rd`` moves on by ``stride`` a
    column, to the next ``row_step`` words a row, to the next channel's first ``positions`` words after the
    last's). The output words are written in order from ``dst``, each ``2 + extra`` cycles after its read (the
    read, the read data's register; ``extra`` the value memory's read cycles beyond one): at ``dst = src_a``
    (in place) each word is written after its element and every later one are read, as their words are at or
    above it.
    """

    def __init__(self, unit: VectorUnit, m: Module):
        self.unit, self.m, p = unit, m, unit.params
        self.regs = {name: Signal(getattr(unit, name).shape(), name=f"sub_{name}")
                     for name in ("out_height", "out_width", "stride", "row_step", "positions", "channels")}
        addr = p.value_addr_bits
        self.ch = Signal(p.count_bits + 1, name="sub_ch")
        self.oy, self.ox = (Signal(p.window_bits, name=f"sub_{n}") for n in ("oy", "ox"))
        self.rd, self.row, self.first = (Signal(addr, name=f"sub_{n}") for n in ("rd", "row", "first"))
        self.wr = Signal(addr, name="sub_wr")
        self.issuing = Signal(name="sub_issuing")

    def start(self) -> None:
        """Sample the registers (in the cycle of ``start``): the first element of channel 0."""
        u, m = self.unit, self.m
        m.d.sync += [reg.eq(getattr(u, name)) for name, reg in self.regs.items()]
        m.d.sync += [self.ch.eq(0), self.oy.eq(0), self.ox.eq(0), self.wr.eq(u.dst)]
        m.d.sync += [a.eq(u.src_a) for a in (self.rd, self.row, self.first)]

    def issue(self):
        """In the SUBSAMPLE state: read the element, advance the counters; returns "the last element"."""
        m, r = self.m, self.regs
        m.d.comb += self.issuing.eq(1)
        last_ox, last_oy = self.ox == r["out_width"] - 1, self.oy == r["out_height"] - 1
        done = Signal(name="sub_done")
        m.d.comb += done.eq(last_ox & last_oy & (self.ch == r["channels"] - 1))
        m.d.sync += self.wr.eq(self.wr + 1)
        with m.If(~last_ox):
            m.d.sync += [self.ox.eq(self.ox + 1), self.rd.eq(self.rd + r["stride"])]
        with m.Else():
            m.d.sync += self.ox.eq(0)
            with m.If(~last_oy):
                following = self.row + r["row_step"]
                m.d.sync += [self.oy.eq(self.oy + 1), self.row.eq(following), self.rd.eq(following)]
            with m.Else():
                following = self.first + r["positions"]
                m.d.sync += [self.oy.eq(0), self.ch.eq(self.ch + 1)]
                m.d.sync += [a.eq(following) for a in (self.first, self.row, self.rd)]
        return done

    def write(self, extra: int, reset_less: bool) -> list:
        """The value write of each element; returns the pipeline's stages (busy while any)."""
        u, m = self.unit, self.m
        _, *stages = delays(m, self.issuing, 2 + extra, "sub")
        wr = delays(m, self.wr, 2 + extra, "sub_wr", reset_less=reset_less)[-1]
        value = delays(m, u.val_read_data, 1, "sub_value", reset_less=reset_less)[1]
        with m.If(stages[-1]):
            m.d.sync += [u.val_write_en.eq(1), u.val_write_addr.eq(wr), u.val_write_data.eq(value)]
        return stages


class _MaxPool:
    """The MAXPOOL datapath of a :class:`VectorUnit`: window counters, the code read, the lane maxima.

    Per lane group (``ch`` = its first channel), output row ``oy`` and column ``ox``, the window's
    ``kernel^2`` words are read one per cycle, row by row (``ky``, ``kx``): word ``row + kx``, where
    ``row`` is the window row's first word (addresses wrap at ``2^code_addr_bits``); its input
    position ``(iy0 + ky, ix0 + kx)`` (signed: the window origin starts at ``-padding``) outside the
    input reads as code 0. The cycle after the read, each lane's code goes into the running maximum
    (the window's first word replaces it); with the window's last word the maxima go into the write
    registers, for the output words in order from ``dst``, lanes of channels ``>= channels`` masked.
    MINPOOL (``flip``, with the unit's ``minpool``): the codes read are complemented before the maximum
    (inside the input only: outside stays code 0, the complement of the largest code), and the maxima
    complemented as they go into the write registers.
    """

    def __init__(self, unit: VectorUnit, m: Module):
        self.unit, self.m, p = unit, m, unit.params
        wide, addr = signed(p.maxpool_bits + 3), p.code_addr_bits
        self.regs = {name: Signal(getattr(unit, name).shape(), name=f"mp_{name}") for name in MAXPOOL_REGISTERS}
        self.channels, self.positions = Signal(p.count_bits, name="mp_channels"), Signal(addr, name="mp_positions")
        self.ch = Signal(p.count_bits + 1, name="mp_ch")
        self.oy, self.ox, self.ky, self.kx = (Signal(p.maxpool_bits, name=f"mp_{n}") for n in ("oy", "ox", "ky", "kx"))
        self.iy0, self.ix0 = Signal(wide, name="mp_iy0"), Signal(wide, name="mp_ix0")
        self.group, self.out_row, self.win, self.row = (Signal(addr, name=f"mp_{n}")
                                                        for n in ("group", "out_row", "win", "row"))
        self.wr = Signal(addr, name="mp_wr")
        self.issuing = Signal(name="mp_issuing")
        self.flip = Signal(name="mp_flip") if p.minpool else None      # MINPOOL

    def start(self) -> None:
        """Sample the registers (in the cycle of ``start``): the first window of the first group."""
        u, m = self.unit, self.m
        m.d.sync += [reg.eq(getattr(u, name)) for name, reg in self.regs.items()]
        m.d.sync += [self.channels.eq(u.channels), self.positions.eq(u.positions), self.ch.eq(0),
                     self.oy.eq(0), self.ox.eq(0), self.ky.eq(0), self.kx.eq(0),
                     self.iy0.eq(-u.padding), self.ix0.eq(-u.padding), self.wr.eq(u.dst)]
        if u.params.minpool:
            m.d.sync += self.flip.eq(u.op == MINPOOL)
        m.d.sync += [r.eq(u.src_a) for r in (self.group, self.out_row, self.win, self.row)]

    def issue(self):
        """In the MAXPOOL state: read the window word, advance the counters; returns "the last read"."""
        u, m, r = self.unit, self.m, self.regs
        p = u.params
        m.d.comb += [self.issuing.eq(1), u.code_read_addr.eq(self.row + self.kx)]
        last_kx, last_ky = self.kx == r["kernel"] - 1, self.ky == r["kernel"] - 1
        last_ox, last_oy = self.ox == r["out_width"] - 1, self.oy == r["out_height"] - 1
        last_group = self.ch + p.lanes >= self.channels
        done = Signal(name="mp_done")
        m.d.comb += done.eq(last_kx & last_ky & last_ox & last_oy & last_group)
        stride = r["stride"]
        with m.If(~last_kx):
            m.d.sync += self.kx.eq(self.kx + 1)
        with m.Else():
            m.d.sync += self.kx.eq(0)
            with m.If(~last_ky):
                m.d.sync += [self.ky.eq(self.ky + 1), self.row.eq(self.row + r["width"])]
            with m.Else():
                m.d.sync += self.ky.eq(0)
                with m.If(~last_ox):
                    m.d.sync += [self.ox.eq(self.ox + 1), self.ix0.eq(self.ix0 + stride),
                                 self.win.eq(self.win + stride), self.row.eq(self.win + stride)]
                with m.Else():
                    m.d.sync += [self.ox.eq(0), self.ix0.eq(-r["padding"])]
                    following = self.out_row + r["row_step"]
                    with m.If(~last_oy):
                        m.d.sync += [self.oy.eq(self.oy + 1), self.iy0.eq(self.iy0 + stride)]
                        m.d.sync += [a.eq(following) for a in (self.out_row, self.win, self.row)]
                    with m.Else():
                        m.d.sync += [self.oy.eq(0), self.iy0.eq(-r["padding"]), self.ch.eq(self.ch + p.lanes)]
                        following = self.group + self.positions
                        m.d.sync += [a.eq(following) for a in (self.group, self.out_row, self.win, self.row)]
        return done

    def write(self, pending: list):
        """The read data's maxima and the write registers; returns (word write, its lanes, its data)."""
        u, m, r = self.unit, self.m, self.regs
        p = u.params
        inside = _in_map(self.iy0 + self.ky, self.ix0 + self.kx, r)
        lanes = Cat(*(self.ch + i < self.channels for i in range(p.lanes)))
        first = (self.kx == 0) & (self.ky == 0)
        last = (self.kx == r["kernel"] - 1) & (self.ky == r["kernel"] - 1)
        issued, inside1, first1, last1, lanes1 = (delays(m, v, 1, f"mp_{n}")[1] for v, n in (
            (self.issuing, "issued"), (inside, "inside"), (first, "first"), (last, "last"), (lanes, "lanes")))
        b = p.lane_bits
        best = Signal(p.lanes * b, name="mp_best")
        word = Signal(p.lanes * b, name="mp_word")

        def flipped(codes):
            """``codes`` complemented for MINPOOL (without MINPOOL hardware: as they are)."""
            return codes ^ self.flip.replicate(len(codes)) if p.minpool else codes

        for i in range(p.lanes):
            code = Mux(inside1, flipped(u.code_read_data[i * b:(i + 1) * b]), 0)
            held = best[i * b:(i + 1) * b]
            m.d.comb += word[i * b:(i + 1) * b].eq(Mux(first1 | (code > held), code, held))
        word_write, word_lanes, word_data = Signal(name="mp_write"), Signal(p.lanes, name="mp_write_lanes"), \
            Signal(p.lanes * b, name="mp_write_word")
        m.d.sync += word_write.eq(0)
        with m.If(issued):
            m.d.sync += best.eq(word)
            with m.If(last1):
                m.d.sync += [u.code_write_en.eq(1), u.code_write_addr.eq(self.wr), word_write.eq(1),
                             word_lanes.eq(lanes1), word_data.eq(flipped(word)),
                             self.wr.eq(self.wr + 1)]
        pending.append(issued)
        return word_write, word_lanes, word_data
