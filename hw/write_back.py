"""The network engine's write-back (:class:`hw.engine.LayerEngine` in network mode; its module docstring gives the
timing): each band's accumulators, once final, through the output stage(s) into the value memory or the code buffer,
while the array computes the next bands (:func:`writer`, which feeds the stages, and :func:`write_back`, which writes
their results)."""

from amaranth import C, Cat, Mux, Signal, signed

from .delay import delayed, delays
from .fsm_encoding import one_hot

# The destination counters of the output being fed (see :func:`step_destination`): the channel (as wide as
# ``c_out``), the value-memory and code-memory addresses (:attr:`hw.engine.LayerEngine.data_addr_bits`), the lane.
DEST_COUNTERS = ("channel", "value_base", "code_base", "lane")


def destination_counters(params, data_addr_bits):
    """The destination of the output being fed (channel, value-memory address of its position 0, activation-buffer
    word of its lane group, lane: :data:`DEST_COUNTERS`; a layer's first channel at lane ``dst_lane`` of its first
    word where ``lane_starts``, else 0), and of the channel tile's first (``tile_``), by name:
    signed registers, the addresses ``data_addr_bits`` wide (:attr:`hw.engine.LayerEngine.data_addr_bits`)."""
    p = params
    R = p.rows
    dest_bits = {"channel": p.register_bits("c_out"), "value_base": data_addr_bits,
                 "code_base": data_addr_bits, "lane": max(1, (R - 1).bit_length()) + 1}
    return {prefix + name: Signal(signed(dest_bits[name]), name=prefix + name)
            for prefix in ("", "tile_") for name in DEST_COUNTERS}


def writer(m, params, cfg, last, dest, start, tile_issued, writer_done, unit_written, read_addrs, read_pos, read_slot,
           feed_col, pair, *, drain, stage_latency, fused_latency, registered_last_column=False, late_tile_step=False):
    """The write-back of each band of a channel tile while the array computes the next ones (the engine of
    ``params`` in network mode; ``drain``, ``stage_latency`` and ``fused_latency``: its
    :attr:`~hw.engine.LayerEngine.drain`, :meth:`~hw.engine.LayerEngine.stage_latency` and
    :attr:`~hw.engine.LayerEngine.FUSED_LATENCY`, the ``STAGE_LATENCY`` and ``FUSED_LATENCY`` below).

    A band's accumulators are final ``drain`` cycles after its last position is issued
    (``tile_issued``): it is then counted in ``ahead`` (bands done, not yet written back). The writer,
    waiting while ``ahead`` is 0, reads each of the band's positions (READ_WORD, one cycle)
    and feeds its ``tile_cols`` accumulators to the output stage (FEED, one per cycle), and goes on
    with the next band at once if that one is done. After the last channel tile's last band,
    FLUSH waits ``STAGE_LATENCY`` cycles (plus ``FUSED_LATENCY`` with ``act_fuse``) for the last
    results to be written; ``writer_done`` marks its last cycle. In pairs (``pair``), READ_WORD reads
    the even position and READ_SECOND the odd one (the even one's accumulators are held meanwhile),
    and FEED feeds both. A band is written back when its last accumulators are read (``unit_written``
    pulses as the writer moves on, and ``ahead`` counts it down). Returns the FEED signal (accumulators enter the
    output stages) and the READ_SECOND one (hold the even position's). ``read_addrs``: the accumulators'
    read address, as copies that are all set alike. ``registered_last_column``: FEED tests a register set as
    ``feed_col`` moves on, not a compare of it (on the ECP5: that compare into the enables of the word's
    counters was the ULX3S-85F ResNet-20's worst path at ef69201, 11.6 ns). ``late_tile_step``: the output
    stage's slot and the count of channel tiles written move on a cycle after a channel tile's last word, from
    a register (READ_WORD comes between, and FEED reads the slot only after it; on the ECP5: the FEED's tests
    into their enables were the ULX3S-85F ResNet-20's worst path at 8bcfa9e and at 67755e1, 11.9 and 11.7
    ns)."""
    p = params
    ready = delayed(m, tile_issued, drain, "tile_ready")
    ahead = Signal(range(p.out_depth + 2), name="ahead")
    # (The channel tiles a layer has are bounded by its stage slots, not by the accumulators: a ring may hold
    # fewer words than the layer has channel tiles.)
    channel_tiles_written = Signal(range(max(p.out_depth, p.stage_depth) + 1))
    band_pos = Signal(range(p.pos_depth + 1))
    flush = Signal(range(stage_latency + fused_latency))
    m.d.sync += ahead.eq(ahead + ready - unit_written)
    # The FEED's tests as registers, a cycle behind their counters (each changes as a word's last accumulator
    # is fed, and is next tested as the next word's is, two cycles on at the earliest): the word is its band's
    # last, its channel tile's last, the channel tile the layer's last.
    band_end, tile_end, layer_end = (Signal(name=name) for name in ("band_end", "tile_end", "layer_end"))
    # A channel tile's last word moves the slot and the tile count on: at once, or a cycle later from
    # ``tile_step`` (late_tile_step).
    if late_tile_step:
        tile_step = Signal(name="tile_step")
        m.d.sync += tile_step.eq(0)
        with m.If(tile_step):
            m.d.sync += [read_slot.eq(read_slot + 1), channel_tiles_written.eq(channel_tiles_written + 1)]
    m.d.sync += [band_end.eq(band_pos + pair == last["band_positions"]),
                 tile_end.eq(read_pos + pair == last["positions"]),
                 layer_end.eq(channel_tiles_written == last["co_tiles"])]
    # The channel tile's last column: register tile_cols's where some layers' tiles are narrower, else cols - 1.
    tile_last = last["tile_cols"] if p.multiply_cols else p.cols - 1
    last_column = feed_col == tile_last
    if registered_last_column:
        last_column = Signal(name="last_column")
    with m.FSM(name="writer") as fsm:
        with m.State("IDLE"):
            # The read address copies start at 0 whenever the writer is idle, not at ``start``: that came from
            # across the die into the enables of every copy (the ULX3S-85F ResNet-20's worst path at 3e18baf,
            # 10.7 ns).
            m.d.sync += [read_addr.eq(0) for read_addr in read_addrs]
            with m.If(start):
                m.d.sync += [ahead.eq(0), channel_tiles_written.eq(0), band_pos.eq(0), read_pos.eq(0),
                             read_slot.eq(cfg["stage_base"]), dest["tile_channel"].eq(0),
                             dest["tile_lane"].eq(cfg["dst_lane"] if p.lane_starts else 0),
                             dest["tile_value_base"].eq(cfg["dst_base"]),
                             dest["tile_code_base"].eq(Mux(cfg["act_fuse"][0], cfg["act_dst"], cfg["dst_base"]))]
                m.next = "WAIT"
        with m.State("WAIT"):
            with m.If(ahead != 0):
                m.next = "READ_WORD"
        with m.State("READ_WORD"):
            # The column memories read word read_addr (data in the next cycle, held there).
            m.d.sync += [feed_col.eq(0)] + [dest[name].eq(dest["tile_" + name]) for name in DEST_COUNTERS]
            if registered_last_column:
                m.d.sync += last_column.eq(tile_last == 0)
            if p.write_pairs:
                with m.If(pair):
                    m.d.sync += [read_addr.eq(read_addr + 1) for read_addr in read_addrs]
                    m.next = "READ_SECOND"
                with m.Else():
                    m.next = "FEED"
            else:
                m.next = "FEED"
        if p.write_pairs:
            with m.State("READ_SECOND"):
                m.next = "FEED"
        with m.State("FEED"):
            m.d.sync += feed_col.eq(feed_col + 1)
            if registered_last_column:
                m.d.sync += last_column.eq(feed_col + 1 == tile_last)
            step_destination(m, p.rows, cfg, dest)
            with m.If(last_column):
                m.d.sync += [*[read_addr.eq(read_addr + 1) for read_addr in read_addrs],
                             read_pos.eq(read_pos + 1 + pair),
                             band_pos.eq(band_pos + 1 + pair)]
                with m.If(band_end):
                    # The band's last word: the next band's, if it is done, or wait for it.
                    m.d.sync += band_pos.eq(0)
                    m.d.comb += unit_written.eq(1)
                    with m.If(ahead != 1):          # the next band is done too
                        m.next = "READ_WORD"
                    with m.Else():
                        m.next = "WAIT"
                    with m.If(tile_end):
                        # ... and the channel tile's: the next tile's destinations, or the end.
                        if late_tile_step:
                            m.d.sync += [read_pos.eq(0), tile_step.eq(1)]
                        else:
                            m.d.sync += [read_pos.eq(0), read_slot.eq(read_slot + 1),
                                         channel_tiles_written.eq(channel_tiles_written + 1)]
                        step_destination(m, p.rows, cfg, dest, tile=True)
                        with m.If(layer_end):
                            m.d.sync += flush.eq(Mux(cfg["act_fuse"][0], fused_latency, 0)
                                                 + stage_latency - 1)
                            m.next = "FLUSH"
                with m.Else():
                    m.next = "READ_WORD"
        with m.State("FLUSH"):
            # The last results leave the output stage and are written.
            m.d.sync += flush.eq(flush - 1)
            with m.If(flush == 0):
                m.next = "IDLE"
    one_hot(fsm)
    m.d.comb += writer_done.eq(fsm.ongoing("FLUSH") & (flush == 0))
    return fsm.ongoing("FEED"), (fsm.ongoing("READ_SECOND") if p.write_pairs else C(0, 1))


def step_destination(m, rows, cfg, dest, tile=False):
    """The destination counters ``dest`` (:func:`destination_counters`; ``rows``: the engine's) move to the next
    channel (``tile``: the channel tile's first counters move to the channel after the word being fed, the next
    tile's first)."""
    target = {name: dest["tile_" + name] if tile else dest[name] for name in DEST_COUNTERS}
    last_lane = dest["lane"] == rows - 1
    m.d.sync += [target["channel"].eq(dest["channel"] + 1),
                 target["value_base"].eq(dest["value_base"] + cfg["positions"]),
                 target["lane"].eq(Mux(last_lane, 0, dest["lane"] + 1)),
                 target["code_base"].eq(Mux(last_lane, dest["code_base"] + cfg["positions"], dest["code_base"]))]


def write_back(m, params, cfg, dest, feeding, read_pos, results, code_out, relu, pair, *, val_write, val_read,
               activation, value_bits, stage_latency, fused_latency, read_latency, lent_lag, reset_less):
    """The writes of the engine of ``params`` in network mode: each output stage result is written,
    ``stage_latency`` cycles after its accumulator was fed (``feeding``), as a value (``dst_values``; plus the
    value read at its address the value memory's read latency and a cycle before, with ``dst_add`` (engines with
    ``fused_adds``; with ``windowed_adds`` only to channels ``add_first .. add_end - 1``, the value read
    ``add_shift`` words from its address); then ``max(0, value)`` where ``relu``) or as a code into its lane; with
    ``act_fuse`` (engines with ``fused_activations``), the value's code (lent thresholds of slot ``act_slot +
    channel``) into its lane ``fused_latency`` cycles later. The padding channels of the last channel tile
    (``channel >= c_out``) are not written. ``results``: the even position's stage (the only one without
    ``write_pairs``) and the odd one's; in pairs both are written at once into the two halves of a word (the
    position being fed is even, and so is every tensor's base), else the first into its position's half. The
    fused activation's valid and slot go to the lent thresholds ``lent_lag`` cycles ahead of its value
    (:func:`~hw.thresholds.lent_value_lag`).

    ``val_write``, ``val_read``, ``activation``: the engine's ports (:func:`hw.engine_signature.network_signature`);
    ``code_out``: the code buffer's write-back port (:func:`hw.code_buffer.code_buffer`); ``read_latency``: the
    value memory's (:func:`hw.column_memory.value_read_latency`); ``reset_less``: the data registers ignore the
    reset (:func:`hw.delay.reset_less_data`)."""
    p = params
    halves, vb = p.halves, value_bits
    rl = reset_less     # of the data registers below (hw.delay)
    valids = delays(m, feeding & (dest["channel"] < cfg["c_out"]), stage_latency, "back_valid")
    channels = delays(m, dest["channel"], stage_latency, "back_channel", reset_less=rl)
    valid = valids[-1]
    # The old values are read early (the value memory's read latency) and registered (no logic between its
    # read multiplexer and the addition): the read of a position's value precedes its write by the latency
    # and a cycle, and no other position writes that word between them.
    ahead = read_latency + 1
    if p.windowed_adds:
        # operand b at its own base: read add_shift words away (added in a register of its own, a cycle ahead)
        assert stage_latency > ahead, "the shifted read address takes a register of its own"
        early = delayed(m, dest["value_base"] + read_pos, stage_latency - ahead - 1, "back_value_early",
                        reset_less=rl)
        read_addr = Signal(early.shape(), name="back_value_read_addr", reset_less=rl)
        m.d.sync += read_addr.eq(early + cfg["add_shift"])
        value_addr = delayed(m, early, ahead + 1, "back_value_addr", reset_less=rl)
        inside = (dest["channel"] >= cfg["add_first"]) & (dest["channel"] < cfg["add_end"])
        adding = cfg["dst_add"][0] & delays(m, inside, stage_latency, "back_window")[-1]
    else:
        read_addr = delayed(m, dest["value_base"] + read_pos, stage_latency - ahead, "back_value_read_addr",
                            reset_less=rl)
        value_addr = delayed(m, read_addr, ahead, "back_value_addr", reset_less=rl)
        adding = cfg["dst_add"][0]
    code_addr = delayed(m, dest["code_base"] + read_pos, stage_latency, "back_code_addr", reset_less=rl)
    lane = delayed(m, dest["lane"][:max(1, (p.rows - 1).bit_length())], stage_latency, "back_lane",
                   reset_less=rl)
    values = cfg["dst_values"][0]

    def word(addr):
        return addr >> 1 if halves == 2 else addr

    def halves_of(addr):
        """The halves a write at activation or value address ``addr`` takes: both in pairs, else its own."""
        return Mux(pair, 0b11, Mux(addr[0], 0b10, 0b01)) if halves == 2 else C(1, 1)

    if p.fused_adds:
        old_word = delayed(m, val_read.data, 1, "back_old_values", reset_less=rl)
        old = [old_word.word_select(h, vb).as_signed() for h in range(halves)]
        if halves == 2:
            old[0] = Mux(pair | ~value_addr[0], old[0], old[1])
    totals = []
    for h, result in enumerate(results):
        summed = result + Mux(adding, old[h], 0) if p.fused_adds else result
        total = Signal(signed(vb), name="back_value" + ("_odd" if h else ""))
        m.d.comb += total.eq(Mux(relu & (summed < 0), 0, summed))
        totals.append(total)

    def lanes_en(lane_, addr):
        """Enables of lane ``lane_`` in the halves a write at ``addr`` takes."""
        taken = halves_of(addr)
        one = Cat(lane_ == r for r in range(p.rows))
        return Cat(*(Mux(taken[h], one, C(0, p.rows)) for h in range(halves)))

    codes = [results[0][:p.abits]]
    if halves == 2:
        codes.append(Mux(pair, results[1][:p.abits], codes[0]))
    code_en, write_addr = Mux(valid & ~values, lanes_en(lane, code_addr), 0), code_addr
    if p.fused_activations:
        # The fused activation: the values to the lent thresholds, their codes written FUSED_LATENCY cycles on
        # (on the ECP5 the valid and the slot lent_value_lag() cycles ahead of the value).
        lend = valid & values & cfg["act_fuse"][0]
        # Not the same AND built twice where no lag: that changes the UP5K's netlist, not its function.
        lag = lent_lag
        lend_early = valids[-1 - lag] & values & cfg["act_fuse"][0] if lag else lend
        m.d.sync += [activation.valid.eq(lend_early), activation.value.eq(totals[0]),
                     activation.slot.eq(cfg["act_slot"] + channels[-1 - lag])]
        if halves == 2:
            m.d.sync += activation.value_odd.eq(totals[1])
        coded = delayed(m, lend, fused_latency, "fused_valid")
        coded_addr = delayed(m, code_addr, fused_latency, "fused_code_addr", reset_less=rl)
        coded_lane = delayed(m, lane, fused_latency, "fused_lane", reset_less=rl)
        codes[0] = Mux(values, activation.code, codes[0])
        if halves == 2:
            codes[1] = Mux(pair, Mux(values, activation.code_odd, results[1][:p.abits]), codes[0])
        code_en = code_en | Mux(coded, lanes_en(coded_lane, coded_addr), 0)
        write_addr = Mux(values, coded_addr, code_addr)
    m.d.comb += [val_write.en.eq(Mux(valid & values, halves_of(value_addr), 0)),
                 val_write.addr.eq(word(value_addr)), val_write.data.eq(
                     Cat(totals[0], Mux(pair, totals[1], totals[0])) if halves == 2 else totals[0]),
                 code_out["en"].eq(code_en), code_out["addr"].eq(word(write_addr)),
                 code_out["data"].eq(Cat(*[Cat(*[code] * p.rows) for code in codes]))]
    if p.fused_adds:
        m.d.comb += val_read.addr.eq(word(read_addr))
