"""The engine's output stage (:class:`hw.engine.LayerEngine`): thresholds (:class:`hw.thresholds.ThresholdUnit`),
requantize (:class:`hw.requantize.RequantizeUnit`) or the raw accumulator, chosen per layer by register ``stage``."""

from amaranth import Cat, Mux
from amaranth.lib.memory import Memory

from .delay import delayed, late_write
from .engine_params import REQUANTIZE, STAGE_THRESHOLDS, THRESHOLDS
from .requantize import RequantizeUnit
from .thresholds import ThresholdUnit


def output_stage(m, params, load, loads, feeding, value, channel, stage, relu, suffix, *, latency, lag,
                 relu_in_stage, slow=False, reset_less=False):
    """One output stage of the engine of ``params`` (an :class:`~hw.engine_params.EngineParams`), its units named
    with ``suffix`` and loaded by the THRESHOLDS and REQUANTIZE beats (``load``, ``loads(target)``: the write enable
    of a beat for ``target``): ``value`` of ``channel`` (entering while ``feeding``; the value ``lag`` cycles after
    them) -> its result ``latency`` cycles after ``feeding`` (the engine's ``STAGE_LATENCY``,
    :meth:`hw.engine.LayerEngine.stage_latency`): the code, the requantized value (then ReLU'd with ``relu`` where
    ``relu_in_stage``, the layer mode) or the raw value, as ``stage`` says. With requantize units the raw value goes
    through them (the program gives its layers identity constants, STAGE_REQUANTIZE), without them through a delay
    line. ``slow`` (the ECP5, :func:`hw.memories.slow_block_ram`): the units register their block RAM words, as a
    ``lag`` needs, and the loads reach the shared memory a cycle later, from registers (without reset where
    ``reset_less``)."""
    p = params
    depth, shared = p.stage_depth << p.col_bits, p.shared_stage_memory
    if shared:
        # One memory for both units' words: a layer's channel slots hold either kind, never both. Loaded a
        # piece a beat (EngineParams.stage_pieces), the piece's index below the channel in the address.
        pieces, bits, index_bits = p.stage_pieces, p.stage_piece_bits, p.stage_piece_index_bits
        m.submodules[f"stage_constants{suffix}"] = memory = Memory(shape=pieces * bits, depth=depth, init=[])
        write, read = memory.write_port(granularity=bits), memory.read_port()
        piece = load.addr[:index_bits]
        stage_load = loads(THRESHOLDS) | loads(REQUANTIZE)
        ports = [Cat(stage_load & (piece == i) for i in range(pieces)), load.addr[index_bits:],
                 load.data[:bits].replicate(pieces)]
        if slow:
            # The write a cycle later (loads come while idle), from flip-flops of its own: the load beat's
            # registers, shared with the row tables, reached these block RAMs across the die (12.5 ns on the
            # ULX3S-85F at 072dec6).
            ports = late_write(m, ports, f"stage{suffix}", ("write_en", "write_addr", "write_data"),
                               reset_less=reset_less)
        m.d.comb += [write.en.eq(ports[0]), write.addr.eq(ports[1]), write.data.eq(ports[2]),
                     read.addr.eq(channel)]

    def connect(unit, target):
        m.d.comb += [unit.valid.eq(feeding), unit.acc.eq(value)]
        if shared:
            m.d.comb += unit.word.eq(read.data)
        else:
            m.d.comb += [unit.load_en.eq(loads(target)), unit.load_addr.eq(load.addr),
                         unit.load_data.eq(load.data), unit.channel.eq(channel)]

    if p.code_bits:
        # On the ECP5 the value and the word pass one more register each, into the stage's last cycle.
        m.submodules[f"thresholds{suffix}"] = unit = ThresholdUnit(
            p.acc_bits, p.code_bits, depth, p.threshold_bits, own_memory=not shared,
            registered_word=slow, late_value=lag, registered_inputs=slow, progression=p.progression)
        code = delayed(m, unit.code, latency - unit.latency, f"code{suffix}")
        connect(unit, THRESHOLDS)
    if p.requantize:
        q = p.requantize
        m.submodules[f"requantize{suffix}"] = unit = RequantizeUnit(
            p.acc_bits, depth, q.multiplier_bits, q.bias_bits, q.max_shift, q.out_bits, own_memory=not shared,
            registered_constants=slow, late_value=lag,
            registered_inputs=slow, registered_total=slow)
        connect(unit, REQUANTIZE)
        out = delayed(m, unit.out, latency - unit.latency, f"requantized{suffix}")
        if q.relu and relu_in_stage:
            out = Mux(relu & (out < 0), 0, out)
        result = out
    else:
        result = delayed(m, value, latency - lag, f"raw{suffix}")
    return Mux(stage == STAGE_THRESHOLDS, code, result) if p.code_bits else result
