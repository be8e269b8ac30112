"""The host link bridge: a framed byte protocol between a UART and the layer engine or the network core.

Frames (both directions)::

    SYNC 0xA5 | TYPE | LEN lo | LEN hi | PAYLOAD (LEN bytes) | CRC hi | CRC lo

The checksum is CRC-16/CCITT-FALSE (polynomial 0x1021, init 0xFFFF, no reflection, no
final XOR) over TYPE, LEN and PAYLOAD, sent most significant byte first, so that the
CRC over TYPE through CRC lo is 0. The sync byte may also occur inside a frame; it
only marks a frame start where one is expected.

Host -> device requests:

- ``PING 0x01`` (no payload): the device answers ``INFO 0x81``: version (1 byte, 7), mode
  (1 byte: 0 layers, the layer engine; 1 network, the whole-network core), then 16-bit
  little-endian addr_bits, out_bits (one output word: ``cols`` signed fields in layers mode,
  one signed logit in network mode), rows, cols, max_payload, code_bits (0: no CODES
  format), classes (network mode: the logits a RUN returns; 0 in layers mode), then the 32-bit
  little-endian build (the digest of the hardware parameters the bitstream was generated from,
  :func:`hw.network_params.build_digest`), the number of load targets (1 byte) and the 16-bit
  data bits of each (0: the core has no such target): :data:`hw.protocol.INFO_HEAD_FORMAT`. All
  constants of the bitstream.
- ``LOAD 0x02``: the target byte, the address of the first word little-endian in
  ceil(addr_bits/8) bytes, then one or more words, each little-endian in
  ceil(target_bits/8) bytes, for consecutive addresses; at most ``max_payload`` bytes.
  The bridge keeps the payload until its checksum is checked, then hands the words to
  the engine as load beats in order (waiting while it is not ready) and answers ``ACK
  0x82`` (no payload). A corrupted frame never reaches the engine.
- ``RUN 0x03``: the number of words expected (32-bit little-endian; a host asks for fewer than
  2**24, as DONE's count has 24 bits) and the output format (1 byte: 0 FULL, every out_bits;
  1 CODES, the low code_bits of each field, packed). The bridge pulses ``start`` and sends the
  engine's first ``expected`` words in ``OUT 0x83`` frames: the index of the frame's first word
  within the RUN (32-bit little-endian, 0 for the first frame), then as many words as the rest of
  ``max_payload`` holds (each little-endian in its format's whole bytes). It drops any
  further words and, once ``busy`` falls, sends ``DONE 0x84``: one 32-bit little-endian word,
  the number of words the engine returned in its low 24 bits (:data:`hw.protocol.DONE_COUNT_BITS`;
  counted modulo 2**24) and the session in its top 8 (:data:`hw.protocol.SESSION_BITS`). Should
  the engine stop within a frame, the frame is completed with zero words; DONE's count tells the
  host. The index lets the host refuse an OUT frame that arrives twice or after a lost one.
- ``RESULT 0x04``: RUN's payload; the same without the ``start`` pulse: the engine's next
  ``expected`` words in OUT frames (indices from 0), then DONE.
- ``SESSION 0x05``: the session (1 byte) into the 8-bit ``session`` register, answered ``ACK``;
  nothing reaches the engine, so it is taken while the core runs. The register is 0 after a reset
  (the bridge's ``sync`` reset, which resets the engine side too): a host sets a non-zero session
  before it loads the model, and a DONE stating another one tells it that the board was reset (or
  another host loaded it) since, and that the engine no longer holds what it loaded.

In network mode the core runs on after RUN's reply, and DONE ends a RUN or RESULT once the core
has taken the start (``starting`` low: it copied the staged image; an engine side without a
``starting`` member takes it at once) and either the words asked for are sent or the core is not
running (``busy`` low). So a RUN asking for 0 words answers DONE (count 0) as soon as the core has
started, and a RESULT answers when its words are sent, or with fewer (DONE's count) at once if the
core is not running. Words beyond those asked for stay in the core for the next RESULT. In layers
mode DONE waits for ``busy`` to fall, and words beyond those asked for are dropped.

Errors are answered ``NACK 0x85`` with two payload bytes: the code and the type byte of
the refused frame. Codes: 1 CRC (checksum mismatch), 2 LENGTH (a LOAD payload without a
whole number of words or over max_payload; a RUN or RESULT payload other than 5 bytes or of
an unknown format; a SESSION payload other than 1 byte; PING with a payload), 3 TYPE (unknown
type), 4 TIMEOUT (no byte for ``timeout_cycles`` cycles in mid-frame), 5 FRAMING (a byte without its stop bit in
mid-frame), 6 TARGET (a LOAD to a target the engine lacks), 7 BUSY (network mode: a RUN, or a
LOAD to any target but ``image_target``, while the core is ``busy``; nothing reaches the core).
Before every NACK but BUSY (codes 1 to 6) the bridge drops incoming bytes until the line has been
quiet for ``timeout_cycles`` cycles (so the rest of a bad frame is not taken for a new one),
then sends the NACK and looks for the next sync byte.

The host sends one request and waits for its reply: bytes arriving while the bridge
replays a LOAD, runs the engine or sends a reply are dropped. In network mode the core
computes between requests: after RUN's DONE the host loads the next image's pixels (staged
by the core) while the core runs, then collects the running image's logits with RESULT.
"""

from __future__ import annotations

import functools
import operator
import struct

from amaranth import C, Cat, Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .delay import delayed, reset_less_data
from .engine import EngineSignature
from .fsm_encoding import one_hot
from .protocol import (BUILD_BITS, CRC_BYTES, CRC_INIT, CRC_POLY, DONE_COUNT_BITS, DONE_FORMAT, LENGTH_BITS,
                       MAX_TARGETS, OUT_FORMAT, OUT_HEAD_BYTES, PROTOCOL_VERSION, RUN_FORMAT, SESSION_BITS,
                       SESSION_BYTES, SYNC, FrameType, LinkInfo, LinkMode, NackCode, OutputFormat, payload_bytes,
                       whole_bytes)
from .uart import RX_LAYOUT


def _field_bits(fmt: str) -> list[int]:
    """Bits of each field of a ``struct`` format of one-letter fields after its byte order."""
    return [8 * struct.calcsize(fmt[0] + code) for code in fmt[1:]]


RUN_BYTES = struct.calcsize(RUN_FORMAT)
RUN_COUNT_BITS = _field_bits(RUN_FORMAT)[0]     # words expected; the output format follows
DONE_BYTES = struct.calcsize(DONE_FORMAT)      # the word count (DONE_COUNT_BITS), then the session (SESSION_BITS)
(OUT_INDEX_BITS,) = _field_bits(OUT_FORMAT)     # an OUT frame's first word within the RUN
# An OUT frame's index is sent from DONE's word, its session bits 0 (LinkBridge's `counted`).
assert OUT_HEAD_BYTES == DONE_BYTES and OUT_INDEX_BITS == DONE_COUNT_BITS + SESSION_BITS
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


def _width(shape) -> int:
    """Bits of a member's shape (a plain width, a ``signed(n)`` shape or a data layout)."""
    return Shape.cast(shape).width


class LinkBridge(wiring.Component):
    """Framed protocol between UART bytes (``rx`` in, ``tx`` out) and the engine side (``engine``):
    the layer engine (``mode`` :attr:`LinkMode.LAYERS`) or the whole-network core (:attr:`LinkMode.NETWORK`).

    ``target_bits``: the data bits of each load target (0: none; 1 to 255 of them); ``out_bits``:
    one output word (layers mode: ``cols`` fields; network mode: one logit); ``code_bits``: the
    activation-code width of the CODES format (0: FULL only; always 0 in network mode);
    ``classes``: the logits a RUN returns (network mode only, stated in INFO); ``image_target``: the
    load target the core takes while it runs (network mode; None: none; must be None in layers mode,
    boards pass :data:`hw.network_params.IMAGE`); ``build``: the digest INFO states (0 .. 2**32 - 1; boards pass
    :func:`hw.network_params.build_digest` of the core's parameters). ``rx`` takes a byte
    per ``valid`` cycle (``error`` set: framing error); ``tx`` offers reply bytes with
    ``valid``/``ready``. ``engine`` is the flipped ``signature``: the engine side's own signature
    (as the engine sees it) with members ``load`` (a stream in of ``target``, ``addr``, ``data``
    fields), ``start`` (in), ``busy`` (out) and ``out`` (a stream out of ``out_bits`` words),
    optionally ``starting`` (out: the core has not yet taken the start; read in network mode),
    and any others (a probe) left unconnected; by default :class:`hw.engine.EngineSignature`
    (``addr_bits``, the widest target, ``out_bits``). Connect it to a ``LayerEngine`` or a
    ``NetworkCore`` with ``wiring.connect``. A LOAD's ACK is offered ``2 * LEN + 6`` cycles plus two
    per word (plus cycles the engine is not ready) after its last byte.

    Handshakes: ``rx`` has no ``ready``: a byte is taken in every cycle its ``valid`` is high (and dropped
    where no byte is expected). ``tx``: ``valid`` comes from a register and, once high, stays high with the
    byte unchanged until the edge where ``ready`` is high; then low for at least two cycles before the next byte.
    ``engine.load``: ``valid`` stays high, and the beat unchanged, until ``ready`` (the bridge waits as long
    as it takes). ``engine.start``: a one-cycle pulse from a register. ``engine.out``: a word is taken at an
    edge with ``valid & ready``; ``ready`` is high only while a RUN or RESULT awaits its next word (network
    mode: while words asked for remain) or, in layers mode, drops the words past those asked for; low while
    a frame's bytes go out (back-pressure). ``engine.busy`` and ``engine.starting`` are read through a
    register each.

    Timing: the checksum's test is registered in the cycle after the last CRC byte (a compare of the CRC
    register, not of the CRC update's result), decided on in the next and acted on in the one after (the
    decision into registers: its priorities feed no enable), with the frame's type as flags
    set with TYPE; the payload's last byte is found by comparing with a register set with the
    length (not ``length - 1``), and whether a payload byte is the payload's last or ends the header or a word
    is a register set with the byte before, and each reply byte is registered in the cycle before it is offered, a
    payload byte twice (the payload multiplexers end in a register, and that register feeds the reply's,
    not the UART and the CRC; the CRC's input byte is chosen by a register); the length's checks, the
    target's word size, the reply's length, the ends of the read-back and of RUN, and the engine side's
    ``busy`` and ``starting`` are registers set a cycle or more before the FSM tests them; the reply's type
    is written whenever no reply is under way (an enable from a register), ``tx`` is valid from a register,
    and INFO's bytes are indexed by the low bits of the byte count only; each received byte is taken
    from registers, a cycle after the UART presents it: the paths that limited the iCE40 clock.
    """

    def __init__(self, addr_bits, target_bits, out_bits, rows, cols, *, code_bits=0,
                 max_payload=256, timeout_cycles=100_000, mode=LinkMode.LAYERS, classes=0, image_target=None,
                 build=0, signature=None):
        _u16("Address width", addr_bits, 1)
        if not isinstance(target_bits, (tuple, list)) or not 1 <= len(target_bits) <= MAX_TARGETS:
            raise ValueError(f"Target widths must be 1..{MAX_TARGETS} numbers, not {target_bits!r}")
        for target, bits in enumerate(target_bits):
            _u16(f"Data width of target {target}", bits, 0)
        if not any(target_bits):
            raise ValueError("Target widths must name at least one target, not all 0")
        _u16("Output word width", out_bits, 1)
        _u16("Row count", rows, 1)
        _u16("Column count", cols, 1)
        if mode not in set(LinkMode):
            raise ValueError(f"Mode must be one of {', '.join(m.name for m in LinkMode)}, not {mode!r}")
        mode = LinkMode(mode)
        if mode == LinkMode.NETWORK:
            _u16("Class count", classes, 1)
            if code_bits != 0:
                raise ValueError(f"Code width must be 0 in network mode (logits have no CODES format), "
                                 f"not {code_bits!r}")
            if image_target is not None and (not isinstance(image_target, int) or isinstance(image_target, bool)
                                             or not 0 <= image_target < len(target_bits)
                                             or not target_bits[image_target]):
                raise ValueError(f"Image target must be None or one of the targets with data bits (0.."
                                 f"{len(target_bits) - 1}), not {image_target!r}")
        else:
            if classes != 0:
                raise ValueError(f"Class count must be 0 in layers mode, not {classes!r}")
            if image_target is not None:
                raise ValueError(f"Image target must be None in layers mode (the layer engine takes no load "
                                 f"while it runs), not {image_target!r}")
            if out_bits % cols:
                raise ValueError(f"Output word width {out_bits} must be whole fields of {cols} columns")
            if not isinstance(code_bits, int) or not 0 <= code_bits <= out_bits // cols:
                raise ValueError(f"Code width must be an integer in 0..{out_bits // cols}, not {code_bits!r}")
        if not isinstance(build, int) or isinstance(build, bool) or not 0 <= build < 1 << BUILD_BITS:
            raise ValueError(f"Build digest must be an integer in 0..{(1 << BUILD_BITS) - 1}, not {build!r}")
        self._build = build
        if signature is None:
            signature = EngineSignature(addr_bits, max(target_bits), out_bits)
        self._check_signature(signature, addr_bits, target_bits, out_bits)
        self._mode, self._classes, self._image_target = mode, classes, image_target
        self._addr_bits, self._target_bits = addr_bits, tuple(target_bits)
        self._out_bits, self._rows, self._cols, self._code_bits = out_bits, rows, cols, code_bits
        self._addr_bytes = whole_bytes(addr_bits)
        self._word_bytes = [whole_bytes(bits) for bits in target_bits]
        self._out_bytes = (whole_bytes(out_bits), whole_bytes(cols * code_bits))
        largest = max(payload_bytes(addr_bits, target_bits, out_bits, cols * code_bits).values())
        _u16("Maximum payload", max_payload, largest)
        if not isinstance(timeout_cycles, int) or timeout_cycles < 1:
            raise ValueError(f"Timeout must be a positive number of cycles, not "
                             f"{timeout_cycles!r}")
        self._max_payload, self._timeout_cycles = max_payload, timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(RX_LAYOUT, always_ready=True)),
            "tx": Out(stream.Signature(8)),
            "engine": In(signature),
        })

    @staticmethod
    def _check_signature(signature, addr_bits, target_bits, out_bits):
        """The engine side's signature has what the bridge drives and reads, wide enough."""
        if not isinstance(signature, wiring.Signature):
            raise TypeError(f"Engine signature must be a wiring.Signature, not {signature!r}")
        members = signature.members
        problems = [f"no {name!r} member" for name in ("load", "start", "busy", "out") if name not in members]
        if not problems:
            load = members["load"].signature.members["payload"].shape
            try:
                fields = {name: load[name].shape for name in ("target", "addr", "data")}
            except (TypeError, KeyError):
                problems.append("a load payload without target, addr and data fields")
            else:
                widths = {name: _width(shape) for name, shape in fields.items()}
                needs = {"target": (len(target_bits) - 1).bit_length(), "addr": addr_bits, "data": max(target_bits)}
                problems += [f"a {widths[name]}-bit load {name} field, narrower than the {bits} bits it needs"
                             for name, bits in needs.items() if widths[name] < bits]
            width = _width(members["out"].signature.members["payload"].shape)
            if width != out_bits:
                problems.append(f"{width}-bit output words, not the {out_bits} of out_bits")
        if problems:
            raise ValueError(f"Engine signature {signature!r} does not fit the bridge: {'; '.join(problems)}")

    @property
    def mode(self) -> LinkMode:
        """Which engine side the bridge serves (stated in INFO)."""
        return self._mode

    @property
    def max_payload(self) -> int:
        """The largest payload, in bytes, of a frame the bridge takes or sends (but INFO)."""
        return self._max_payload

    @property
    def timeout_cycles(self) -> int:
        """Cycles without a byte in mid-frame after which the frame is refused (TIMEOUT)."""
        return self._timeout_cycles

    def info_payload(self) -> bytes:
        """The bytes of the INFO reply."""
        return LinkInfo(PROTOCOL_VERSION, self._addr_bits, self._out_bits, self._rows, self._cols,
                        self._max_payload, self._code_bits, self._target_bits, self._mode, self._classes,
                        self._build).encode()

    def elaborate(self, platform):
        m = Module()
        timeout, addr_bytes = self._timeout_cycles, self._addr_bytes
        header = 1 + addr_bytes
        m.submodules.buffer = buffer = Memory(shape=8, depth=self._max_payload, init=[])
        write, read = buffer.write_port(), buffer.read_port()

        # Each received byte a cycle after the UART presents it: its valid feeds a flip-flop, not the frame's
        # logic (the UART's valid into the CRC's and error's enables was the UP5K's worst path, 26.7 ns).
        rx_valid, rx_byte = Signal(name="rx_valid"), Signal(RX_LAYOUT, name="rx_byte")
        m.d.sync += [rx_valid.eq(self.rx.valid), rx_byte.eq(self.rx.payload)]
        byte = rx_byte.data
        got = rx_valid & ~rx_byte.error
        bad = rx_valid & rx_byte.error

        ftype = Signal(8)
        length = Signal(LENGTH_BITS)
        before_last = Signal(range(self._max_payload), name="before_last")  # length - 2 (wrapping), set with LEN hi
        payload_end = Signal(name="payload_end")        # the byte at `count` is the payload's last
        # Byte counts within a received payload: at most max_payload (a longer LEN is refused).
        payload_bytes = range(self._max_payload + 1)
        count = Signal(payload_bytes)  # payload bytes received, then read back
        target = Signal(8)
        word_bytes = Signal(range(max(self._word_bytes) + 1))
        with m.Switch(target):
            for t, n in enumerate(self._word_bytes):
                with m.Case(t):
                    m.d.comb += word_bytes.eq(n)
        # A cycle behind `target` (set with the payload's first byte, read from its third on): the word's last
        # byte, and whether the target is unknown. `read_all`: the LOAD's read-back has read its last byte (the read
        # before it found `payload_end`, the next byte the last).
        word_last, no_target = Signal(signed(len(word_bytes) + 1), name="word_last"), Signal(name="no_target")
        word_before_last = Signal.like(word_last, name="word_before_last")
        m.d.sync += [word_last.eq(word_bytes - 1), word_before_last.eq(word_bytes - 2),
                     no_target.eq((target >= len(self._target_bits)) | (word_bytes == 0))]
        read_all = Signal(name="read_all")
        pos = Signal(range(max(header, max(self._word_bytes)) + 1))  # byte within header / word
        in_words = Signal()         # past the header
        part_end = Signal(name="part_end")      # the byte at `pos` ends the header or a word
        malformed = Signal()
        # The payload's last bytes, shifted in as they come: RUN's and RESULT's words expected, into `remaining` (the
        # words still to send, which counts them down as they are sent: no register of its own), then the output
        # format (or SESSION's byte) in `run_tail`. A payload of another frame leaves them changed: only RUN and
        # RESULT read `remaining`, after their own payload.
        remaining = Signal(RUN_COUNT_BITS)
        run_tail = Signal(8 * RUN_BYTES - RUN_COUNT_BITS, name="run_tail")
        run_arg = Cat(remaining, run_tail)
        # Cycles without a byte, and `timed_out`: it reached timeout - 1 (a register set as it counts).
        timer, timed_out = Signal(range(timeout)), Signal(name="timed_out")

        def restart_timer():
            m.d.sync += [timer.eq(0), timed_out.eq(timeout == 1)]

        def count_timer():
            m.d.sync += [timer.eq(timer + 1), timed_out.eq(timer == timeout - 2)]
        error = Signal(8)
        crc = Signal(8 * CRC_BYTES)
        crc_in = Signal(8)
        crc_next = Signal(8 * CRC_BYTES)
        # The reply byte to offer, whether it is in tx_byte, and whether the state's byte has settled (a cycle
        # into the state: the payload byte's register follows `sent`); `replying`: from a reply's second cycle
        # (TX_SYNC's first is `in_tx_sync`) to its end, so that the checksum's input byte is chosen by a register,
        # not the FSM's state; set from TX_SYNC's flip-flop, not by the conditions of every reply (the UP5K's
        # deepest logic at 78f5966, seven levels).
        tx_byte, tx_held, tx_settled = Signal(8, name="tx_byte"), Signal(name="tx_held"), Signal(name="tx_settled")
        replying, in_tx_sync = Signal(name="replying"), Signal(name="in_tx_sync")
        m.d.sync += replying.eq(replying | in_tx_sync)
        m.d.comb += [self.tx.payload.eq(tx_byte), self.tx.valid.eq(tx_held)]     # held only in a transmit state
        m.d.comb += [crc_in.eq(Mux(replying, tx_byte, byte)), crc_next.eq(crc16_update(crc, crc_in))]

        load, start, out = self.engine.load, self.engine.start, self.engine.out
        network = self._mode == LinkMode.NETWORK
        # The engine side's busy and starting, registered (their tests feed the FSM's enables, not the core's
        # state decode); START takes two cycles, so that RUN sees the busy that followed its start pulse.
        busy, starting = Signal(name="engine_busy"), Signal(name="engine_starting")
        m.d.sync += [busy.eq(self.engine.busy),
                     starting.eq(self.engine.starting if "starting" in self.engine.signature.members else 0)]
        # The word's address and data, and the reply's word (``out_word``), ignore the reset where data registers
        # do (hw.delay.reset_less_data): a word counts only where the FSM's state says it is valid.
        addr = Signal(self._addr_bits, reset_less=reset_less_data(platform))
        data = Signal(max(self._target_bits), reset_less=reset_less_data(platform))
        m.d.comb += [load.payload.target.eq(target), load.payload.addr.eq(addr), load.payload.data.eq(data)]

        # Replies: INFO from constants, OUT from the first word's index then the word register, DONE from the
        # word count and the session, NACK from error and type; `sent` counts payload bytes, `unsent` the payload
        # bytes after this one, `word_left` the bytes of a word after this one. The reply's decisions read
        # registers (`heading`, `last_byte`, a zero test of `word_left`), set as `sent` moves on, not compares
        # of `sent` (the bridge's worst paths: `sent + 2 == reply_len` was one). A reply's length: at most
        # max_payload, or INFO's, which max_payload does not bound (it is the largest payload the bridge takes).
        info = self.info_payload()
        reply_bytes = range(max(self._max_payload, len(info)) + 1)
        reply_type = Signal(8)
        reply_len = Signal(reply_bytes)
        sent, unsent = Signal(reply_bytes), Signal(reply_bytes)
        running = Signal()
        # The session: 0 after a reset (never reset_less), set by SESSION, stated by DONE above its count.
        session = Signal(SESSION_BITS, name="session")
        fmt = Signal()
        # Words the engine returned since RUN, modulo 2**DONE_COUNT_BITS (the host asks for fewer). An OUT frame's
        # first word is counted once the frame's index is sent, so that `words` is that index while it is sent (no
        # register of its own): the OUT index's bits above DONE_COUNT_BITS are 0.
        words = Signal(DONE_COUNT_BITS)
        word_left = Signal(range(max(self._out_bytes)))
        out_word = Signal(8 * max(self._out_bytes), reset_less=reset_less_data(platform))
        field = self._out_bits // self._cols
        raw = Value.cast(out.payload)
        codes = Cat(raw[c * field:c * field + self._code_bits] for c in range(self._cols)) if self._code_bits else C(0, 1)
        full_bytes, code_bytes = self._out_bytes[OutputFormat.FULL], self._out_bytes[OutputFormat.CODES]
        out_bytes = Mux(fmt, code_bytes, full_bytes)
        per_frame = [(self._max_payload - OUT_HEAD_BYTES) // size for size in (full_bytes, max(1, code_bytes))]
        heading = Signal()          # sending the OUT frame's index: reply_type == OUT and sent < OUT_HEAD_BYTES
        last_byte = Signal()        # sent == reply_len - 1: unsent == 0

        # The byte of the reply payload at `sent`, by reply type.
        info_byte = Signal(8)
        with m.Switch(sent[:(len(info) - 1).bit_length()]):    # the low bits of `sent` that index INFO's bytes
            for i, b in enumerate(info):
                with m.Case(i):
                    m.d.comb += info_byte.eq(b)
        payload_byte, payload_held = Signal(8), Signal(8, name="payload_held")
        m.d.sync += payload_held.eq(payload_byte)
        # Chosen by flags of the reply's type, registers a cycle behind `reply_type` (set before TX_SYNC, read in
        # TX_PAYLOAD), not by compares of it (the byte's multiplexer after them was seven logic levels on the UP5K).
        is_reply = {reply: Signal(name=f"reply_is_{reply.name.lower()}")
                    for reply in (FrameType.INFO, FrameType.OUT, FrameType.DONE, FrameType.NACK)}
        for reply, flag in is_reply.items():
            m.d.sync += flag.eq(reply_type == reply)
        # An OUT frame's index and DONE's word: `words`, with the session above it in DONE (one multiplexer).
        counted = Cat(words, Mux(is_reply[FrameType.DONE], session, 0)).word_select(
            sent[:(DONE_BYTES - 1).bit_length()], 8)
        candidates = {
            FrameType.INFO: info_byte,
            FrameType.OUT: Mux(heading, counted, out_word[:8]),
            FrameType.DONE: counted,
            FrameType.NACK: Mux(sent[0], ftype, error),
        }
        chosen = [Mux(is_reply[reply], candidate, 0) for reply, candidate in candidates.items()]
        m.d.comb += payload_byte.eq(functools.reduce(operator.or_, chosen))    # one flag at most is set

        word = Mux(fmt, codes, raw) if self._code_bits else raw
        # On the ECP5 the word taken from the engine reaches `out_word` a cycle later, from registers: the engine's
        # payload registered in every cycle and a flag for the take (or the pad of an engine that stopped early).
        # Taken directly, the engine's `out.valid` ran through the FSM's logic into the enable of `out_word`, which
        # the placer puts by the engine's output (the ULX3S-85F ResNet-20's worst path at b3a8cd2, 11.25 ns).
        # A frame's first word has TX_SYNC to TX_LEN_HI to land; a next word has NEXT_WORD_TAKEN.
        late_word = reset_less_data(platform)
        if late_word:
            taken = Signal(len(out_word), name="taken_word", reset_less=True)
            word_taken, word_padded = Signal(name="word_taken"), Signal(name="word_padded")
            m.d.sync += [taken.eq(word), word_taken.eq(0), word_padded.eq(0)]
            with m.If(word_taken):
                m.d.sync += out_word.eq(taken)
            with m.Elif(word_padded):
                m.d.sync += out_word.eq(0)

        def take_word():
            m.d.sync += word_taken.eq(1) if late_word else out_word.eq(word)

        def pad_word():
            m.d.sync += word_padded.eq(1) if late_word else out_word.eq(0)

        # The reply's payload length: by its type, a cycle after `reply_type` (TX_LEN_LO comes later); an OUT
        # frame's is `out_len` as the frame is sent: a register two cycles behind `remaining` (RUN reads it two
        # or more cycles after `remaining` changes: after START and STARTED, or after a frame's bytes), the
        # compare and the product of each format registered in the first cycle, the choice in the second.
        out_len = Signal(payload_bytes)
        lengths = []
        for k, size in zip(per_frame, (full_bytes, code_bytes)):
            short, part = Signal(name="out_short"), Signal(range(k * size + 1), name="out_part")
            m.d.sync += [short.eq(remaining < k), part.eq(remaining[:k.bit_length()] * size)]
            lengths.append(OUT_HEAD_BYTES + Mux(short, part, k * size))
        # `no_words`: `remaining` is 0, also a cycle behind it (RUN, which tests it, comes a cycle or more after it
        # changes: after START, or after a frame's bytes).
        no_words = Signal(name="no_words")
        m.d.sync += [out_len.eq(Mux(fmt, lengths[OutputFormat.CODES], lengths[OutputFormat.FULL])),
                     no_words.eq(remaining == 0)]
        with m.Switch(reply_type):
            for ftype_, n in ((FrameType.INFO, len(info)), (FrameType.NACK, NACK_BYTES), (FrameType.DONE, DONE_BYTES),
                              (FrameType.ACK, 0)):
                with m.Case(ftype_):
                    m.d.sync += reply_len.eq(n)

        # `reply_type` takes the type of the reply sent in this cycle (`next_type`; NACK when none is) while no
        # reply is under way: its enable is registers (`replying`, `in_tx_sync`), not the conditions of every reply.
        next_type = Signal(8, name="next_type")
        m.d.comb += next_type.eq(FrameType.NACK)
        with m.If(~replying & ~in_tx_sync):
            m.d.sync += reply_type.eq(next_type)

        def send(ftype_):
            m.d.comb += next_type.eq(ftype_)
            m.next = "TX_SYNC"

        def fail(code):
            m.d.sync += error.eq(code)
            restart_timer()
            m.next = "DRAIN"

        def receiving(name, on_byte, length_checked=False):
            """A state taking one byte of the frame; ``length_checked``: the first after LEN hi, which refuses
            the length that LEN hi found bad."""
            with m.State(name):
                with m.If(bad_length if length_checked else C(0, 1)):
                    fail(NackCode.LENGTH)
                with m.Elif(bad):
                    fail(NackCode.FRAMING)
                with m.Elif(got):
                    m.d.sync += crc.eq(crc_next)
                    restart_timer()
                    on_byte()
                with m.Elif(timed_out):
                    m.d.sync += error.eq(NackCode.TIMEOUT)
                    send(FrameType.NACK)
                with m.Else():
                    count_timer()

        # The frame's type as flags, set with TYPE (the verdict tests flip-flops, not compares of `ftype`).
        is_ping, is_run, is_result = Signal(name="is_ping"), Signal(name="is_run"), Signal(name="is_result")
        is_session = Signal(name="is_session")

        def on_type():
            m.d.sync += [ftype.eq(byte), is_ping.eq(byte == FrameType.PING), is_run.eq(byte == FrameType.RUN),
                         is_result.eq(byte == FrameType.RESULT), is_session.eq(byte == FrameType.SESSION)]
            with m.If((byte == FrameType.PING) | (byte == FrameType.LOAD) | (byte == FrameType.RUN) |
                      (byte == FrameType.RESULT) | (byte == FrameType.SESSION)):
                m.next = "LEN_LO"
            with m.Else():
                fail(NackCode.TYPE)

        # LEN lo's byte is 0, or 1: flags that spare LEN hi's length tests (the length is 0: no payload; 1: the
        # payload's first byte is its last) a compare of the low byte.
        low_zero, low_one = Signal(name="length_low_zero"), Signal(name="length_low_one")

        def on_len_lo():
            m.d.sync += [length[:8].eq(byte), low_zero.eq(byte == 0), low_one.eq(byte == 1)]
            m.next = "LEN_HI"

        # LEN hi's length checks, registered and acted on in the next state (PAYLOAD or CRC hi, whichever comes),
        # so that the compares of the length feed no enable in LEN hi.
        bad_length = Signal(name="bad_length")

        def on_len_hi():
            full = Cat(length[:8], byte)
            m.d.sync += [length[8:].eq(byte), before_last.eq(full - 2), count.eq(0),
                         payload_end.eq(low_one & (byte == 0)), pos.eq(0), in_words.eq(0), part_end.eq(0),
                         malformed.eq(0),
                         bad_length.eq((ftype == FrameType.LOAD) & ((full > self._max_payload) | (full <= header)) |
                                       ((ftype == FrameType.RUN) | (ftype == FrameType.RESULT)) & (full != RUN_BYTES) |
                                       (ftype == FrameType.SESSION) & (full != SESSION_BYTES) |
                                       (ftype == FrameType.PING) & (full != 0))]
            with m.If(low_zero & (byte == 0)):
                m.next = "CRC_HI"
            with m.Else():
                m.next = "PAYLOAD"

        def on_payload():
            m.d.comb += [write.addr.eq(count), write.data.eq(byte), write.en.eq(1)]
            m.d.sync += [count.eq(count + 1), run_arg.eq(Cat(run_arg[8:], byte))]
            with m.If(count == 0):
                m.d.sync += target.eq(byte)
            # Where the payload would end a LOAD: after the header or a whole word. Whether this byte is the
            # payload's last (`payload_end`) and ends its part (`part_end`) was registered with the byte before
            # (LEN hi for the first), so that no compare feeds `in_words`' enable or the next state (the UP5K's
            # worst paths at 41798fd, 25.3 ns): the next byte's tests are set here. `word_before_last` (a word's
            # bytes less 2) is a register a cycle behind `target` (which the payload's first byte sets), read from
            # the third byte on, as the header has two bytes at least; where a word starts, `word_bytes` itself.
            m.d.sync += [pos.eq(Mux(part_end, 0, pos + 1)), payload_end.eq(count == before_last),
                         part_end.eq(Mux(part_end, word_bytes == 1,
                                         Mux(in_words, pos == word_before_last, pos == header - 2)))]
            with m.If(part_end):
                m.d.sync += in_words.eq(1)
            with m.If(payload_end):
                m.d.sync += malformed.eq(~part_end)
                m.next = "CRC_HI"

        def on_crc_hi():
            m.next = "CRC_LO"

        # Network mode: while the core runs, only LOADs to the image target reach it (a whole frame: no drain).
        busy_refuses = busy if network else C(0, 1)
        not_image = target != self._image_target if self._image_target is not None else C(1, 1)

        def refuse_busy():
            m.d.sync += error.eq(NackCode.BUSY)
            send(FrameType.NACK)

        def on_crc_lo():
            m.next = "CHECK"

        # CHECK (a cycle after CRC lo) registers the frame's tests; VERDICT decides on them, ACT acts: the checksum
        # over TYPE through CRC lo is 0, RUN's output format is known, the LOAD's target is not the image while busy.
        run_fmt = run_arg[RUN_COUNT_BITS:]
        crc_bad, fmt_bad, to_image = Signal(name="crc_bad"), Signal(name="fmt_bad"), Signal(name="to_image")
        # `start` in START (a RUN's), from a flip-flop set on the way there.
        start_pulse = Signal(name="start_pulse")
        m.d.sync += start_pulse.eq(0)
        m.d.comb += start.eq(start_pulse)

        def check():
            m.d.sync += [crc_bad.eq(crc != 0), to_image.eq(~not_image),
                         fmt_bad.eq((run_fmt != OutputFormat.FULL) &
                                    ((run_fmt != OutputFormat.CODES) | (self._code_bits == 0)))]
            m.next = "VERDICT"

        # VERDICT decides from those registers into registers of its own (the NACK code, if any, and what
        # follows), which ACT carries out: the decision's priorities feed no enable (the error's was the UP5K's
        # worst path). `refused`: a NACK BUSY.
        nack, refused, answer_info, go, claim = (Signal(name=name) for name in ("nack", "refused", "answer_info", "go",
                                                                                "claim"))
        nack_code = Signal(8, name="nack_code")

        def verdict():
            m.d.sync += [nack.eq(0), refused.eq(0), answer_info.eq(0), go.eq(0), claim.eq(0)]
            with m.If(crc_bad):
                m.d.sync += [nack.eq(1), nack_code.eq(NackCode.CRC)]
            with m.Elif(is_ping):
                m.d.sync += answer_info.eq(1)
            with m.Elif(is_run | is_result):
                with m.If(fmt_bad):
                    m.d.sync += [nack.eq(1), nack_code.eq(NackCode.LENGTH)]
                with m.Elif(is_run & busy_refuses):
                    m.d.sync += refused.eq(1)
                with m.Else():
                    m.d.sync += go.eq(1)
            with m.Elif(is_session):        # before the LOAD's tests: its first byte is no target
                m.d.sync += claim.eq(1)
            with m.Elif(no_target):
                m.d.sync += [nack.eq(1), nack_code.eq(NackCode.TARGET)]
            with m.Elif(malformed):
                m.d.sync += [nack.eq(1), nack_code.eq(NackCode.LENGTH)]
            with m.Elif(busy_refuses & ~to_image):
                m.d.sync += refused.eq(1)
            m.next = "ACT"

        def act():
            with m.If(nack):
                fail(nack_code)
            with m.Elif(answer_info):
                send(FrameType.INFO)
            with m.Elif(refused):
                refuse_busy()
            with m.Elif(claim):     # SESSION: its payload's bytes are the last of `run_arg`'s
                m.d.sync += session.eq(run_arg[-8 * SESSION_BYTES:])
                send(FrameType.ACK)
            with m.Elif(go):
                m.d.sync += [fmt.eq(run_fmt[0]), words.eq(0),
                             start_pulse.eq(is_run)]
                m.next = "START"
            with m.Else():
                m.d.sync += [count.eq(0), pos.eq(0), in_words.eq(0), payload_end.eq(0)]
                m.next = "READ"

        # The LOAD read-back's byte read, into the address's or word's byte whose lane is high (set in READ, high
        # in SHIFT only): the enables of the wide word register are flip-flops, not a decode of ``pos`` (the
        # ResNet-20 core's worst path). A word's first byte clears the rest of the word. The byte and its lanes
        # are registered once more, so the byte is written in the cycle after SHIFT (SETTLE after a word's last):
        # the buffer's block RAM output reaches one register, not the whole word's (151 flip-flops of the ResNet-20
        # core after 14.2 ns on the ULX3S-85F).
        addr_lanes, word_lanes = Signal(addr_bytes, name="addr_lanes"), Signal(max(self._word_bytes), name="word_lanes")
        m.d.sync += [addr_lanes.eq(0), word_lanes.eq(0)]
        byte_read = delayed(m, read.data, 1, "byte_read")
        addr_late, word_late = delayed(m, addr_lanes, 1, "addr_lanes"), delayed(m, word_lanes, 1, "word_lanes")
        for i in range(addr_bytes):
            with m.If(addr_late[i]):
                m.d.sync += addr[8 * i:8 * i + 8].eq(byte_read)
        with m.If(word_late[0]):
            m.d.sync += data.eq(byte_read)
        for i in range(1, max(self._word_bytes)):
            with m.If(word_late[i]):
                m.d.sync += data[8 * i:8 * i + 8].eq(byte_read)
        with m.FSM() as fsm:
            with m.State("HUNT"):
                with m.If(got & (byte == SYNC)):
                    m.d.sync += [crc.eq(CRC_INIT), ftype.eq(0)]
                    restart_timer()
                    m.next = "TYPE"
            receiving("TYPE", on_type)
            receiving("LEN_LO", on_len_lo)
            receiving("LEN_HI", on_len_hi)
            receiving("PAYLOAD", on_payload, length_checked=True)
            receiving("CRC_HI", on_crc_hi, length_checked=True)
            receiving("CRC_LO", on_crc_lo)
            with m.State("CHECK"):
                check()
            with m.State("VERDICT"):
                verdict()
            with m.State("ACT"):
                act()
            with m.State("DRAIN"):
                with m.If(rx_valid):
                    restart_timer()
                with m.Elif(timed_out):
                    send(FrameType.NACK)
                with m.Else():
                    count_timer()

            # LOAD: read the checked payload back: the address, then each word into the engine (READ reads a
            # byte and sets its lane, SHIFT writes it). READ registers whether the byte ends the header or the word
            # (`part_end`), which SHIFT acts on: the compare of `pos` fed `in_words`' enable (the UP5K's worst path
            # at 41798fd, 25.3 ns).
            with m.State("READ"):
                m.d.comb += read.addr.eq(count)
                m.d.sync += [count.eq(count + 1), payload_end.eq(count == before_last), read_all.eq(payload_end),
                             addr_lanes.eq(Cat(~in_words & (pos == i + 1) for i in range(addr_bytes))),
                             word_lanes.eq(Cat(in_words & (pos == i) for i in range(max(self._word_bytes)))),
                             part_end.eq(Mux(in_words, pos == word_last, pos == header - 1))]
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.next = "READ"
                m.d.sync += pos.eq(pos + 1)
                with m.If(part_end):
                    m.d.sync += pos.eq(0)
                    with m.If(in_words):
                        m.next = "SETTLE"
                    with m.Else():
                        m.d.sync += in_words.eq(1)
            with m.State("SETTLE"):     # the word's last byte is written
                m.next = "BEAT"
            # A beat taken, BEAT_TAKEN decides what follows (the core's ready, a decode of the beat's target, feeds
            # two enables, not the reply's).
            with m.State("BEAT"):
                m.d.comb += load.valid.eq(1)
                with m.If(load.ready):
                    m.d.sync += addr.eq(addr + 1)
                    m.next = "BEAT_TAKEN"
            with m.State("BEAT_TAKEN"):
                with m.If(read_all):
                    send(FrameType.ACK)
                with m.Else():
                    m.next = "READ"

            # RUN: start the engine; RUN and RESULT: frame its next `expected` words, then DONE (the rule
            # of the mode: layers, once not busy, dropping further words; network, once the start is taken
            # and the words are sent or the core stopped, leaving further words in the core). START and STARTED
            # give `out_len` two cycles and `no_words` one to follow `remaining`, and STARTED `busy` one to follow
            # the engine's.
            with m.State("START"):
                m.d.sync += running.eq(1)
                m.next = "STARTED"
            with m.State("STARTED"):
                m.next = "RUN"
            with m.State("RUN"):
                taking = ~no_words if network else C(1, 1)
                finished = ~starting & (no_words | ~busy) if network else ~busy
                m.d.comb += out.ready.eq(taking)
                with m.If(out.valid & taking):
                    with m.If(~no_words):           # open a frame with this word, word `words` of the RUN
                        take_word()
                        m.d.sync += [word_left.eq(out_bytes - 1), remaining.eq(remaining - 1), reply_len.eq(out_len)]
                        send(FrameType.OUT)
                    with m.Else():                  # a word dropped (layers mode), counted
                        m.d.sync += words.eq(words + 1)
                with m.Elif(finished):
                    m.d.sync += running.eq(0)
                    send(FrameType.DONE)
            with m.State("NEXT_WORD"):
                m.d.comb += out.ready.eq(1)
                with m.If(out.valid):
                    take_word()
                    m.d.sync += [words.eq(words + 1), remaining.eq(remaining - 1)]
                    m.next = "NEXT_WORD_TAKEN" if late_word else "TX_PAYLOAD"
                with m.Elif(~busy):
                    pad_word()                      # the engine stopped early: pad
                    m.next = "NEXT_WORD_TAKEN" if late_word else "TX_PAYLOAD"
            if late_word:
                with m.State("NEXT_WORD_TAKEN"):    # `out_word` takes the word
                    m.next = "TX_PAYLOAD"

            # Reply: sync, type, length, `reply_len` payload bytes, CRC. Each byte: into `tx_byte` in the
            # state's second cycle (the payload's from `payload_held`, set in the first), then offered.
            def transmit(name, value, next_state, update_crc=True):
                with m.State(name):
                    with m.If(~tx_settled):
                        m.d.sync += tx_settled.eq(1)
                    with m.Elif(~tx_held):
                        m.d.sync += [tx_byte.eq(value), tx_held.eq(1)]
                    with m.Elif(self.tx.ready):
                        m.d.sync += [tx_settled.eq(0), tx_held.eq(0)]
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
                m.d.sync += [sent.eq(0), unsent.eq(reply_len - 1), heading.eq(reply_type == FrameType.OUT),
                             last_byte.eq(reply_len == 1)]
                m.next = "TX_PAYLOAD"
                with m.If(reply_len == 0):
                    m.next = "TX_CRC_HI"

            def after_payload():
                m.d.sync += [sent.eq(sent + 1), unsent.eq(unsent - 1), last_byte.eq(unsent == 1),
                             heading.eq(heading & (sent != OUT_HEAD_BYTES - 1))]
                with m.If(heading & (sent == OUT_HEAD_BYTES - 1)):     # the index sent: its word counts
                    m.d.sync += words.eq(words + 1)
                with m.If(~heading):
                    m.d.sync += [out_word.eq(out_word[8:]),
                                 word_left.eq(Mux(word_left == 0, out_bytes - 1, word_left - 1))]
                with m.If(last_byte):
                    m.next = "TX_CRC_HI"
                with m.Elif(running & ~heading & (word_left == 0)):
                    m.next = "NEXT_WORD"

            def after_crc():
                m.d.sync += replying.eq(0)
                m.next = "HUNT"
                with m.If(running):
                    m.next = "RUN"

            transmit("TX_SYNC", SYNC, after_sync, update_crc=False)
            transmit("TX_TYPE", reply_type, goto("TX_LEN_LO"))
            transmit("TX_LEN_LO", reply_len, goto("TX_LEN_HI"))
            transmit("TX_LEN_HI", reply_len[8:], after_len)
            transmit("TX_PAYLOAD", payload_held, after_payload)
            transmit("TX_CRC_HI", crc[8:], goto("TX_CRC_LO"), update_crc=False)
            transmit("TX_CRC_LO", crc[:8], after_crc, update_crc=False)
        one_hot(fsm)
        m.d.comb += in_tx_sync.eq(fsm.ongoing("TX_SYNC"))
        return m

