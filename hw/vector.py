"""The vector unit: the element-wise nodes of a network on the chip, on its two data memories.

Between the convolutions, :class:`VectorUnit` runs the activate, add and pool nodes of a
:class:`~compiler.graph.CompiledModel` on the network core's value and code memories (layout in
:mod:`compiler.network`: value ``(ch, p)`` of a tensor at base ``B`` is word ``B + ch * P + p``;
code ``(ch, p)`` is lane ``ch % lanes`` of word ``B + (ch // lanes) * P + p``, ``P = H * W``),
bit-exact with :func:`compiler.reference.execute`:

- ACTIVATE: ``code = Thresholds(slot_base + ch)(x)`` for every value of ``channels`` x
  ``positions``, one element per cycle through a :class:`hw.thresholds.ThresholdUnit` holding
  every activate node's thresholds (one slot per channel).
- ADD: ``VAL[dst + i] = VAL[src_a + i] + VAL[src_b + i]``, two reads per element; an element is
  written after both its reads, so ``dst`` may be ``src_a`` or ``src_b``.
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

Constants are loaded by ``(target, addr, data)`` beats (:mod:`hw.vector_words`).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .delay import delays
from .thresholds import ThresholdUnit
from .vector_params import (ACT_THRESHOLDS, ACTIVATE, ADD, OP_BITS, POOL, POOL_CONSTANTS, POOL_DRAIN,
                            POOL_OFFSET_SHIFT, POOL_RELU_BIT, POOL_SIGN_BITS, POOL_SIGN_SHIFT, POOL_THRESHOLDS,
                            TARGET_BITS, VectorParams)


class VectorUnit(wiring.Component):
    """Runs one activate, add or pool op at a time on the data memories (module docstring).

    Ports (widths from :class:`~hw.vector_params.VectorParams` ``p``; all unsigned unless signed):

    - ``start`` (in): a one-cycle pulse, sampled only while idle (``busy`` low), with the op
      registers: ``op`` (2 bits: ACTIVATE 0, ADD 1, POOL 2; an op the unit has no hardware for
      is ignored), ``src_a``, ``src_b`` (``p.value_addr_bits``), ``dst`` (``p.dst_bits``),
      ``channels``, ``positions`` (``p.count_bits``, both >= 1), ``slot_base``
      (``p.slot_bits``), ``frac_bits`` (``p.frac_field_bits``).
    - ``busy`` (out): high from the cycle after ``start`` through the cycle that presents the
      last write: :meth:`~hw.vector_params.VectorParams.op_cycles` cycles, ACTIVATE ``N + 4``,
      ADD ``2N + 2`` (``N = channels * positions``), POOL
      ``channels * (positions + 3 + 2 * pool_code_bits) + 1``.
    - ``load_en``, ``load_target`` (2 bits), ``load_addr`` (``p.load_addr_bits``), ``load_data``
      (``p.load_data_bits``): write one constant word at the clock edge; ignored while busy.
    - value read: ``val_read_addr`` (out, ``p.value_addr_bits``), ``val_read_data`` (in, signed
      ``p.value_bits``): the word at the address of the previous cycle.
    - value write: ``val_write_en``, ``val_write_addr``, ``val_write_data`` (out, signed
      ``p.value_bits``): written at the edge that ends the cycle they are presented in.
    - code write: ``code_write_en``, ``code_write_addr`` (``p.code_addr_bits``),
      ``code_write_lane`` (``p.lane_index_bits``), ``code_write_data`` (``p.lane_bits``): one
      code into one lane of a code-memory word (the memory's per-lane write enable).
    - lent thresholds (while idle, for an activation fused into a layer's write-back): ``lent_valid``,
      ``lent_value`` (signed ``p.value_bits``), ``lent_slot`` (``p.slot_bits``) in; ``lent_code``
      (``p.lane_bits``) out, the code of the value under the activate thresholds of slot ``lent_slot``,
      ``ThresholdUnit.LATENCY`` cycles after the value is presented. Nothing is written.

    The write ports are registers. Pipelines, counted from an element's read address: ACTIVATE
    presents the write 4 cycles later (the read, the threshold unit's 2, the write register), ADD
    reads ``a``, then ``b`` and presents the write 2 cycles after ``b``'s address; POOL reads a
    channel's ``positions`` values (one per cycle), waits 3 cycles for the sum, searches its
    thresholds (2 cycles per code bit: read, compare) and presents the code's write in the next
    channel's first cycle (the arithmetic form computes ``B' + code * S + p * S`` where the table
    form reads the threshold: the same cycles).
    """

    def __init__(self, params: VectorParams):
        if not isinstance(params, VectorParams):
            raise TypeError(f"params must be a VectorParams, not {params!r}")
        self.params = p = params
        super().__init__({
            "start": In(1),
            "op": In(OP_BITS),
            "src_a": In(p.value_addr_bits),
            "src_b": In(p.value_addr_bits),
            "dst": In(p.dst_bits),
            "channels": In(p.count_bits),
            "positions": In(p.count_bits),
            "slot_base": In(p.slot_bits),
            "frac_bits": In(p.frac_field_bits),
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
            "lent_valid": In(1),
            "lent_value": In(signed(p.value_bits)),
            "lent_slot": In(p.slot_bits),
            "lent_code": Out(p.lane_bits),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        pool_hw = bool(p.pool_slots)
        busy = Signal()
        load = Signal()
        m.d.comb += load.eq(self.load_en & ~busy)

        # Op registers, sampled at start.
        op = Signal(OP_BITS)
        channels, positions = Signal(p.count_bits), Signal(p.count_bits)
        frac, group_step = Signal(p.frac_field_bits), Signal(p.count_bits)
        # Counters: next read addresses (operand a, operand b), next ADD write address, element
        # position and channel, lane, code word of the channel's lane group at position 0, slot.
        rd_a, rd_b, wr = Signal(p.value_addr_bits), Signal(p.value_addr_bits), Signal(p.value_addr_bits)
        pos, ch = Signal(p.count_bits), Signal(p.count_bits)
        lane, group, slot = Signal(p.lane_index_bits), Signal(p.code_addr_bits), Signal(p.slot_bits)
        phase = Signal()                        # ADD: 0 reads a, 1 reads b
        last_pos, last_ch = pos == positions - 1, ch == channels - 1

        def next_channel():
            m.d.sync += [ch.eq(ch + 1), slot.eq(slot + 1), pos.eq(0)]
            with m.If(lane == p.lanes - 1):
                m.d.sync += [lane.eq(0), group.eq(group + group_step)]
            with m.Else():
                m.d.sync += lane.eq(lane + 1)

        issue_act, issue_a, issue_b, issue_pool = Signal(), Signal(), Signal(), Signal()
        m.d.comb += self.val_read_addr.eq(Mux(issue_b, rd_b, rd_a))
        m.d.sync += [rd_a.eq(rd_a + (issue_act | issue_a | issue_pool)), rd_b.eq(rd_b + issue_b),
                     wr.eq(wr + issue_b)]

        # Pool state: the channel's sum, the code found so far, the search's probe bit (one-hot),
        # which half of a search step (0: read the threshold, 1: compare), the drain counter.
        if pool_hw:
            b = p.pool_code_bits
            total = Signal(signed(p.pool_sum_bits))
            code, probe, compare = Signal(b), Signal(b), Signal()
            drain = Signal(range(POOL_DRAIN))
            pool_write = Signal()

            def new_channel():
                m.d.sync += [total.eq(0), code.eq(0), probe.eq(1 << (b - 1)), compare.eq(0)]

        supported = Cat(*(self.op == x for x in p.ops)).any()
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start & ~busy & supported):
                    m.d.sync += [op.eq(self.op), channels.eq(self.channels), positions.eq(self.positions),
                                 frac.eq(self.frac_bits), rd_a.eq(self.src_a), rd_b.eq(self.src_b),
                                 wr.eq(self.dst), group.eq(self.dst), slot.eq(self.slot_base),
                                 pos.eq(0), ch.eq(0), lane.eq(0), phase.eq(0),
                                 group_step.eq(Mux(self.op == POOL, 1, self.positions))]
                    if pool_hw:
                        new_channel()
                    m.next = "RUN"
                    if pool_hw:
                        with m.If(self.op == POOL):
                            m.next = "SUM"
            with m.State("RUN"):
                # ACTIVATE: one element per cycle; ADD: operand a, then b and the next element.
                with m.If((op == ADD) & ~phase):
                    m.d.comb += issue_a.eq(1)
                    m.d.sync += phase.eq(1)
                with m.Else():
                    m.d.comb += [issue_act.eq(op == ACTIVATE), issue_b.eq(op == ADD)]
                    m.d.sync += [phase.eq(0), pos.eq(pos + 1)]
                    with m.If(last_pos):
                        with m.If(last_ch):
                            m.next = "IDLE"
                        with m.Else():
                            next_channel()
            if pool_hw:
                with m.State("SUM"):
                    m.d.comb += issue_pool.eq(1)
                    m.d.sync += pos.eq(pos + 1)
                    with m.If(last_pos):
                        m.d.sync += drain.eq(0)
                        m.next = "DRAIN"
                with m.State("DRAIN"):
                    m.d.sync += drain.eq(drain + 1)
                    with m.If(drain == POOL_DRAIN - 1):
                        m.next = "SEARCH"
                with m.State("SEARCH"):
                    m.d.sync += compare.eq(~compare)
                    with m.If(compare):
                        m.d.sync += probe.eq(probe >> 1)
                        with m.If(probe[0]):
                            m.d.comb += pool_write.eq(1)
                            new_channel()
                            with m.If(last_ch):
                                m.next = "IDLE"
                            with m.Else():
                                next_channel()
                                m.next = "SUM"

        # ACTIVATE: the value read goes through the threshold unit; its code, with the element's
        # code address and lane delayed alike, into the code write registers. While idle, the unit
        # takes the lent value instead (the ``lent_*`` ports).
        # ``pending``: writes still in a pipeline (busy until they are done).
        m.d.sync += [self.code_write_en.eq(0), self.val_write_en.eq(0)]
        pending = []
        if p.act_code_bits:
            depth = 1 + ThresholdUnit.LATENCY
            act = delays(m, issue_act, depth, "act")
            m.submodules.thresholds = unit = ThresholdUnit(p.value_bits, p.act_code_bits, p.act_slots,
                                                           p.act_threshold_bits)
            addr = delays(m, (group + pos)[:p.code_addr_bits], depth, "act_addr")[-1]
            act_lane = delays(m, lane, depth, "act_lane")[-1]
            lent = self.lent_valid & ~busy
            m.d.comb += [unit.load_en.eq(load & (self.load_target == ACT_THRESHOLDS)),
                         unit.load_addr.eq(self.load_addr), unit.load_data.eq(self.load_data),
                         unit.valid.eq(act[1] | lent), unit.acc.eq(Mux(lent, self.lent_value, self.val_read_data)),
                         unit.channel.eq(Mux(lent, self.lent_slot, delays(m, slot, 1, "act_slot")[1])),
                         self.lent_code.eq(unit.code)]
            with m.If(act[-1]):
                m.d.sync += [self.code_write_en.eq(1), self.code_write_addr.eq(addr),
                             self.code_write_lane.eq(act_lane), self.code_write_data.eq(unit.code)]
            pending += act[1:]      # the element in the read, in the unit

        # ADD: operand a waits for b; the sum goes to the value write registers.
        a1, b1 = delays(m, issue_a, 1, "add_a")[1], delays(m, issue_b, 1, "add_b")[1]
        wr1 = delays(m, wr, 1, "add_wr")[1]
        a_value = Signal(signed(p.value_bits))
        with m.If(a1):
            m.d.sync += a_value.eq(self.val_read_data)
        with m.If(b1):
            m.d.sync += [self.val_write_en.eq(1), self.val_write_addr.eq(wr1),
                         self.val_write_data.eq(a_value + self.val_read_data)]
        pending.append(b1)

        if pool_hw:
            self._pool(m, load, slot, frac, issue_pool, total, code, probe, compare, pool_write, group, lane,
                       fsm.ongoing("SEARCH"))

        m.d.comb += busy.eq(~fsm.ongoing("IDLE") | Cat(*pending).any() | self.val_write_en | self.code_write_en)
        m.d.comb += self.busy.eq(busy)
        return m

    def _pool(self, m, load, slot, frac, issue_pool, total, code, probe, compare, pool_write, group, lane,
              searching):
        """The pool datapath: constants (and thresholds) memories, ``u`` and the sum, the search step."""
        p = self.params
        b = p.pool_code_bits
        m.submodules.pool_constants = constants = Memory(shape=p.pool_constant_bits, depth=p.pool_slots, init=[])
        memories = [(constants, POOL_CONSTANTS)]
        if not p.pool_arithmetic:
            m.submodules.pool_thresholds = thresholds = Memory(shape=signed(p.pool_threshold_bits),
                                                               depth=p.pool_threshold_depth, init=[])
            memories.append((thresholds, POOL_THRESHOLDS))
        for memory, target in memories:
            write = memory.write_port()
            m.d.comb += [write.en.eq(load & (self.load_target == target)), write.addr.eq(self.load_addr),
                         write.data.eq(self.load_data)]
        # The channel's constants: read at its slot, stable while its values pass.
        const_read = constants.read_port()
        m.d.comb += const_read.addr.eq(slot)
        word = const_read.data
        relu = word[POOL_RELU_BIT]
        sign = word[POOL_SIGN_SHIFT:POOL_SIGN_SHIFT + POOL_SIGN_BITS].as_signed()
        offset = word[POOL_OFFSET_SHIFT:POOL_OFFSET_SHIFT + p.pool_offset_bits].as_signed()
        # Stage 1: the value read, registered (the value memory's read multiplexer feeds no logic);
        # stage 2: t = x * 2^frac - offset; stage 3: u = relu(sign * t), summed.
        value, pool2 = delays(m, self.val_read_data, 1, "pool_value")[1], delays(m, issue_pool, 2, "pool")[2]
        t, t_valid = Signal(signed(p.value_bits + p.max_frac_bits + 1)), Signal()
        m.d.sync += [t.eq((value << frac) - offset), t_valid.eq(pool2)]
        signed_t = Signal(signed(t.shape().width + 1))
        m.d.comb += signed_t.eq(Mux(sign == 0, 0, Mux(sign < 0, -t, t)))
        u = Mux(relu & signed_t[-1], 0, signed_t)
        with m.If(t_valid):
            m.d.sync += total.eq(total + u)
        # Search step, candidate ``code | probe`` (threshold index ``code + probe - 1``): first half,
        # read its threshold (table) or compute ``B' + code * S + probe * S`` (arithmetic); second
        # half, compare the sum (times ``2^k``) with it.
        cand = code | probe
        found = Signal(b)
        if p.pool_arithmetic:
            base = word[p.pool_base_shift:p.pool_base_shift + p.pool_base_bits].as_signed()
            step = word[p.pool_step_shift:p.pool_step_shift + p.pool_step_bits]
            acc = Signal(p.pool_step_bits + b)             # code * S
            probe_step = Signal(p.pool_step_bits + b - 1)  # probe * S
            bound = Signal(signed(max(p.pool_base_bits, p.pool_step_bits + b + 1) + 1))
            passed = (total << p.pool_shift) >= bound
            m.d.sync += bound.eq(base + acc + probe_step)
            # Before the search (the channel's constants are read by then): code 0, probe 2^(b-1).
            with m.If(~searching):
                m.d.sync += [acc.eq(0), probe_step.eq(step << (b - 1))]
            with m.Elif(compare):
                m.d.sync += probe_step.eq(probe_step >> 1)
                with m.If(passed):
                    m.d.sync += acc.eq(acc + probe_step)
        else:
            thr_read = thresholds.read_port()
            m.d.comb += thr_read.addr.eq(Cat((cand - 1)[:b], slot))
            passed = total >= thr_read.data
        m.d.comb += found.eq(Mux(passed, cand, code))
        with m.If(compare & ~probe[0]):          # after the last step, the next channel starts at 0
            m.d.sync += code.eq(found)
        with m.If(pool_write):
            m.d.sync += [self.code_write_en.eq(1), self.code_write_addr.eq(group),
                         self.code_write_lane.eq(lane), self.code_write_data.eq(found)]
