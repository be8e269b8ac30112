"""The host link bridge: a framed byte protocol between a UART and the layer engine.

Frames (both directions)::

    SYNC 0xA5 | TYPE | LEN lo | LEN hi | PAYLOAD (LEN bytes) | CRC hi | CRC lo

The checksum is CRC-16/CCITT-FALSE (polynomial 0x1021, init 0xFFFF, no reflection, no
final XOR) over TYPE, LEN and PAYLOAD, sent most significant byte first, so that the
CRC over TYPE through CRC lo is 0. The sync byte may also occur inside a frame; it
only marks a frame start where one is expected.

Host -> device requests:

- ``PING 0x01`` (no payload): the device answers ``INFO 0x81``: version (1 byte, 1),
  then 16-bit little-endian addr_bits, data_bits, out_bits, out_bytes, rows, cols,
  max_payload.
- ``LOAD 0x02``: a sequence of load beats, each the target byte, the address
  little-endian in ceil(addr_bits/8) bytes and the data little-endian in
  ceil(data_bits/8) bytes; at most ``max_payload`` bytes. The bridge keeps the payload
  until its checksum is checked, then hands the beats to the engine in order (waiting
  on ``load_ready``) and answers ``ACK 0x82`` (no payload). A corrupted frame never
  reaches the engine.
- ``RUN 0x03`` (no payload): the bridge pulses ``start``, sends every output word as an
  ``OUT 0x83`` frame (one word per frame from this bridge, little-endian in out_bytes =
  ceil(out_bits/8) bytes; hosts accept several words per frame) and, once ``busy``
  falls, ``DONE 0x84`` with the number of words sent (32-bit little-endian).

Errors are answered ``NACK 0x85`` with two payload bytes: the code and the type byte of
the refused frame. Codes: 1 CRC (checksum mismatch), 2 LENGTH (LOAD payload not a whole
number of beats or over max_payload; PING or RUN with a payload), 3 TYPE (unknown type),
4 TIMEOUT (no byte for ``timeout_cycles`` cycles in mid-frame), 5 FRAMING (a byte without
its stop bit in mid-frame). After an error the bridge drops incoming bytes until the line
has been quiet for ``timeout_cycles`` cycles (so the rest of a bad frame is not taken for
a new one), sends the NACK and looks for the next sync byte.

The host sends one request and waits for its reply: bytes arriving while the bridge
replays a LOAD, runs the engine or sends a reply are dropped.
"""

from __future__ import annotations

import struct

from amaranth import C, Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from boards.protocol import (CRC_INIT, CRC_POLY, DONE_FORMAT, INFO_FORMAT, PROTOCOL_VERSION,
                             SYNC, TARGET_BITS, FrameType, NackCode)
from hw.uart import RX_LAYOUT

INFO_BYTES = struct.calcsize(INFO_FORMAT)
DONE_BYTES = struct.calcsize(DONE_FORMAT)
NACK_BYTES = 2


def crc16_update(crc, byte):
    """CRC-16/CCITT-FALSE of ``crc`` after one more ``byte``, as an expression."""
    for i in reversed(range(8)):
        feedback = crc[15] ^ byte[i]
        crc = Cat(C(0, 1), crc[:15]) ^ Mux(feedback, C(CRC_POLY, 16), C(0, 16))
    return crc


def _u16(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer in {minimum}..65535, not {value!r}")


class LinkBridge(wiring.Component):
    """Framed protocol between UART bytes (``rx`` in, ``tx`` out) and the engine ports.

    ``rx`` takes a byte per ``valid`` cycle (``error`` set: framing error); ``tx`` offers
    reply bytes with ``valid``/``ready``. The engine-side ports mirror ``LayerEngine``'s
    (Out here where the engine has In); :func:`connect_engine` wires them.
    A LOAD is acknowledged ``2 * LEN + beats`` cycles (plus ``load_ready`` stalls) after
    its last byte; ``out_ready`` is high only while ``tx`` can take a byte.
    """

    def __init__(self, addr_bits, data_bits, out_bits, rows, cols, *, max_payload=256,
                 timeout_cycles=100_000):
        _u16("Address width", addr_bits, 1)
        _u16("Data width", data_bits, 1)
        _u16("Output word width", out_bits, 1)
        _u16("Row count", rows, 1)
        _u16("Column count", cols, 1)
        self._addr_bits, self._data_bits, self._out_bits = addr_bits, data_bits, out_bits
        self._rows, self._cols = rows, cols
        self._addr_bytes, self._data_bytes = (addr_bits + 7) // 8, (data_bits + 7) // 8
        self._beat_bytes = 1 + self._addr_bytes + self._data_bytes
        self._out_bytes = (out_bits + 7) // 8
        _u16("Maximum payload", max_payload, self._beat_bytes)
        if not isinstance(timeout_cycles, int) or timeout_cycles < 1:
            raise ValueError(f"Timeout must be a positive number of cycles, not "
                             f"{timeout_cycles!r}")
        self._max_payload, self._timeout_cycles = max_payload, timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(RX_LAYOUT, always_ready=True)),
            "tx": Out(stream.Signature(8)),
            "load_valid": Out(1),
            "load_ready": In(1),
            "load_target": Out(TARGET_BITS),
            "load_addr": Out(addr_bits),
            "load_data": Out(data_bits),
            "start": Out(1),
            "busy": In(1),
            "out_valid": In(1),
            "out_ready": Out(1),
            "out_data": In(out_bits),
        })

    @property
    def beat_bytes(self) -> int:
        return self._beat_bytes

    @property
    def out_bytes(self) -> int:
        return self._out_bytes

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def timeout_cycles(self) -> int:
        return self._timeout_cycles

    def info_payload(self) -> list[int]:
        """The bytes of the INFO reply."""
        return list(struct.pack(INFO_FORMAT, PROTOCOL_VERSION, self._addr_bits, self._data_bits,
                                self._out_bits, self._out_bytes, self._rows, self._cols,
                                self._max_payload))

    def elaborate(self, platform):
        m = Module()
        beat_bytes, timeout = self._beat_bytes, self._timeout_cycles
        m.submodules.buffer = buffer = Memory(shape=8, depth=self._max_payload, init=[])
        write, read = buffer.write_port(), buffer.read_port()

        byte = self.rx.payload.data
        got = self.rx.valid & ~self.rx.payload.error
        bad = self.rx.valid & self.rx.payload.error

        ftype = Signal(8)
        length = Signal(16)
        count = Signal(16)  # payload bytes received, then read back
        beat_pos = Signal(range(beat_bytes))
        misaligned = Signal()
        beat = Signal(8 * beat_bytes)
        timer = Signal(range(timeout))
        error = Signal(8)
        crc = Signal(16)
        crc_in = Signal(8)
        crc_next = Signal(16)
        m.d.comb += [crc_in.eq(byte), crc_next.eq(crc16_update(crc, crc_in))]

        reply_bytes = max(INFO_BYTES, self._out_bytes, DONE_BYTES, NACK_BYTES)
        reply = Signal(8 * reply_bytes)
        reply_type = Signal(8)
        reply_len = Signal(16)
        sent = Signal(range(reply_bytes))
        running = Signal()
        words = Signal(32)

        m.d.comb += [
            self.load_target.eq(beat[:TARGET_BITS]),
            self.load_addr.eq(beat[8:]),
            self.load_data.eq(beat[8 * (1 + self._addr_bytes):]),
        ]

        def send(ftype_, payload, n):
            m.d.sync += [reply_type.eq(ftype_), reply.eq(payload), reply_len.eq(n)]
            m.next = "TX_SYNC"

        def fail(code):
            m.d.sync += [error.eq(code), timer.eq(0)]
            m.next = "DRAIN"

        def receiving(name, on_byte):
            with m.State(name):
                with m.If(bad):
                    fail(NackCode.FRAMING)
                with m.Elif(got):
                    m.d.sync += [timer.eq(0), crc.eq(crc_next)]
                    on_byte()
                with m.Elif(timer == timeout - 1):
                    send(FrameType.NACK, Cat(C(NackCode.TIMEOUT, 8), ftype), NACK_BYTES)
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)

        def on_type():
            m.d.sync += ftype.eq(byte)
            with m.If((byte == FrameType.PING) | (byte == FrameType.LOAD) |
                      (byte == FrameType.RUN)):
                m.next = "LEN_LO"
            with m.Else():
                fail(NackCode.TYPE)

        def on_len_lo():
            m.d.sync += length[:8].eq(byte)
            m.next = "LEN_HI"

        def on_len_hi():
            full = Cat(length[:8], byte)
            m.d.sync += [length[8:].eq(byte), count.eq(0), beat_pos.eq(0), misaligned.eq(0)]
            with m.If((ftype == FrameType.LOAD) & (full > self._max_payload) |
                      (ftype != FrameType.LOAD) & (full != 0)):
                fail(NackCode.LENGTH)
            with m.Elif(full == 0):
                m.next = "CRC_HI"
            with m.Else():
                m.next = "PAYLOAD"

        def on_payload():
            m.d.comb += [write.addr.eq(count), write.data.eq(byte), write.en.eq(1)]
            m.d.sync += [count.eq(count + 1),
                         beat_pos.eq(Mux(beat_pos == beat_bytes - 1, 0, beat_pos + 1))]
            with m.If(count == length - 1):
                m.d.sync += misaligned.eq(beat_pos != beat_bytes - 1)
                m.next = "CRC_HI"

        def on_crc_hi():
            m.next = "CRC_LO"

        def on_crc_lo():
            with m.If(crc_next != 0):
                fail(NackCode.CRC)
            with m.Elif(misaligned):
                fail(NackCode.LENGTH)
            with m.Elif(ftype == FrameType.PING):
                send(FrameType.INFO, Cat(C(b, 8) for b in self.info_payload()), INFO_BYTES)
            with m.Elif(ftype == FrameType.RUN):
                m.next = "START"
            with m.Elif(length == 0):
                send(FrameType.ACK, 0, 0)
            with m.Else():
                m.d.sync += [count.eq(0), beat_pos.eq(0)]
                m.next = "READ"

        with m.FSM():
            with m.State("HUNT"):
                with m.If(got & (byte == SYNC)):
                    m.d.sync += [crc.eq(CRC_INIT), timer.eq(0), ftype.eq(0)]
                    m.next = "TYPE"
            receiving("TYPE", on_type)
            receiving("LEN_LO", on_len_lo)
            receiving("LEN_HI", on_len_hi)
            receiving("PAYLOAD", on_payload)
            receiving("CRC_HI", on_crc_hi)
            receiving("CRC_LO", on_crc_lo)
            with m.State("DRAIN"):
                with m.If(self.rx.valid):
                    m.d.sync += timer.eq(0)
                with m.Elif(timer == timeout - 1):
                    send(FrameType.NACK, Cat(error, ftype), NACK_BYTES)
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)

            # LOAD: read the checked payload back, one beat at a time, into the engine.
            with m.State("READ"):
                m.d.comb += read.addr.eq(count)
                m.d.sync += count.eq(count + 1)
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.sync += beat.eq(Cat(beat[8:], read.data))
                with m.If(beat_pos == beat_bytes - 1):
                    m.d.sync += beat_pos.eq(0)
                    m.next = "BEAT"
                with m.Else():
                    m.d.sync += beat_pos.eq(beat_pos + 1)
                    m.next = "READ"
            with m.State("BEAT"):
                m.d.comb += self.load_valid.eq(1)
                with m.If(self.load_ready):
                    with m.If(count == length):
                        send(FrameType.ACK, 0, 0)
                    with m.Else():
                        m.next = "READ"

            # RUN: start the engine, forward its words, DONE when it is no longer busy.
            with m.State("START"):
                m.d.comb += self.start.eq(1)
                m.d.sync += [running.eq(1), words.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.out_ready.eq(self.tx.ready)
                with m.If(self.out_valid & self.tx.ready):
                    m.d.sync += words.eq(words + 1)
                    send(FrameType.OUT, self.out_data, self._out_bytes)
                with m.Elif(~self.busy):
                    m.d.sync += running.eq(0)
                    send(FrameType.DONE, words, DONE_BYTES)

            # Reply: sync, type, length, `reply_len` bytes of `reply`, CRC.
            def transmit(name, value, next_state, update_crc=True):
                with m.State(name):
                    m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value),
                                 crc_in.eq(value)]
                    with m.If(self.tx.ready):
                        if update_crc:
                            m.d.sync += crc.eq(crc_next)
                        next_state()

            def goto(state):
                def next_state():
                    m.next = state
                return next_state

            def after_sync():
                m.d.sync += crc.eq(CRC_INIT)
                m.next = "TX_TYPE"

            def after_len():
                m.d.sync += sent.eq(0)
                m.next = "TX_PAYLOAD"
                with m.If(reply_len == 0):
                    m.next = "TX_CRC_HI"

            def after_payload():
                m.d.sync += [reply.eq(reply[8:]), sent.eq(sent + 1)]
                with m.If(sent == reply_len - 1):
                    m.next = "TX_CRC_HI"

            def after_crc():
                m.next = "HUNT"
                with m.If(running):
                    m.next = "RUN"

            transmit("TX_SYNC", SYNC, after_sync, update_crc=False)
            transmit("TX_TYPE", reply_type, goto("TX_LEN_LO"))
            transmit("TX_LEN_LO", reply_len, goto("TX_LEN_HI"))
            transmit("TX_LEN_HI", reply_len[8:], after_len)
            transmit("TX_PAYLOAD", reply[:8], after_payload)
            transmit("TX_CRC_HI", crc[8:], goto("TX_CRC_LO"), update_crc=False)
            transmit("TX_CRC_LO", crc[:8], after_crc, update_crc=False)
        return m


def connect_engine(m: Module, bridge: LinkBridge, engine) -> None:
    """Wire ``bridge``'s engine-side ports to ``engine``'s ports of the same names."""
    for name in ("load_valid", "load_target", "load_addr", "load_data", "start", "out_ready"):
        m.d.comb += getattr(engine, name).eq(getattr(bridge, name))
    for name in ("load_ready", "busy", "out_valid", "out_data"):
        m.d.comb += getattr(bridge, name).eq(getattr(engine, name))
