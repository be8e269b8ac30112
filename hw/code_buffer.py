"""The network engine's activation buffer (:class:`hw.engine.LayerEngine` in network mode): the codes the PE
array reads while the write-back writes a layer's output codes into it, and the network core's ports while idle."""

from amaranth import C, Cat, Mux, Signal
from amaranth.lib.memory import Memory

from .delay import delayed, own


def code_buffer(m, params, idle, code_write, code_read, code_written, registered_writes=False, reset_less=False):
    """The network engine's activation buffer for ``params`` (an :class:`~hw.engine_params.EngineParams`), in
    ``m``: a write enable per lane, simple dual port (the write-back of one channel tile goes on while the next
    one's codes are read); with ``write_pairs``, words of two positions (activation words ``2w``, ``2w + 1``), so
    that the write-back writes a pair at once. Returns its read data (the activation word at the address of the
    cycle before), the compute read addresses to drive (copies, all set alike) and the write-back port ``(en,
    addr, data)`` of whole words, to drive while busy. ``code_write`` and ``code_read`` (one activation word each)
    drive it while ``idle``, and ``code_written`` shows every write: the ports of
    :func:`hw.engine_signature.network_signature`.
    ``registered_writes`` (the ECP5): a write reaches the buffer a cycle later, from registers (the
    choice between the writers ran into the address of its blocks across the die, 16.6 ns at 506dd57;
    no step reads a code in the cycle after it is written), and each lane is a memory of its own with its
    own copies of the read address, the write registers and the choice between the compute and the lent
    read address (one address register into all 16 blocks of ResNet-20's buffer, placed by the rows they
    feed, was the ULX3S-85F's worst path at d2b037a, 11.9 ns); ``reset_less``: its address and data
    registers ignore the reset."""
    p = params
    halves, word_bits = p.halves, p.rows * p.abits
    depth = -(-p.act_depth // halves)
    back = {"en": Signal(halves * p.rows, name="code_back_en"), "addr": Signal(range(depth), name="code_back_addr"),
            "data": Signal(halves * word_bits, name="code_back_data")}
    idle_write = code_write
    if halves == 1:
        idle_en, idle_addr = idle_write.en, idle_write.addr
    else:
        idle_en = Mux(idle_write.addr[0], Cat(C(0, p.rows), idle_write.en), Cat(idle_write.en, C(0, p.rows)))
        idle_addr = idle_write.addr >> 1
    written = code_written
    m.d.comb += [written.en.eq(Mux(idle, idle_en, back["en"])), written.addr.eq(Mux(idle, idle_addr, back["addr"])),
                 written.data.eq(Mux(idle, Cat(*[idle_write.data] * halves), back["data"]))]
    # (memory name, lanes it holds): one memory of every lane, or on the ECP5 one per lane.
    parts = [(f"activations_{r}", [r]) for r in range(p.rows)] if registered_writes else [
        ("activations", list(range(p.rows)))]
    addrs, lanes_data = [], []
    for name, lanes in parts:
        width = len(lanes) * p.abits
        m.submodules[name] = memory = Memory(shape=halves * width, depth=depth, init=[])
        write, read = memory.write_port(granularity=p.abits), memory.read_port()
        addr = Signal(range(p.act_depth), name=f"{name}_addr", reset_less=registered_writes and reset_less)
        if registered_writes:
            own(addr)
        addrs.append(addr)
        read_addr = Mux(idle, code_read.addr, addr)
        read_word, read_half = read_addr, C(0, 1)
        if halves == 2:
            read_word, read_half = read_addr >> 1, delayed(m, read_addr[0], 1, f"{name}_half")
        m.d.comb += read.addr.eq(read_word)
        lanes_data.append(read.data.word_select(read_half, width))
        # The lanes' bits of each half of the write port.
        port = [Cat(*(written.en[h * p.rows + r] for h in range(halves) for r in lanes)), written.addr,
                Cat(*(written.data.word_select(h * p.rows + r, p.abits) for h in range(halves) for r in lanes))]
        if registered_writes:
            port = [delayed(m, value, 1, f"{name}_write_{kind}", reset_less=reset_less and kind != "en",
                            own_flip_flops=True) for value, kind in zip(port, ("en", "addr", "data"))]
        m.d.comb += [write.en.eq(port[0]), write.addr.eq(port[1]), write.data.eq(port[2])]
    data = Cat(*lanes_data)
    m.d.comb += code_read.data.eq(data)
    return data, addrs, back
