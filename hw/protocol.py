"""The link protocol, the one module that both sides import: pure Python, no Amaranth.

The gateware (:mod:`hw.link`) and the host (:mod:`boards.link_host`) take every number
of the protocol from here: sync byte, checksum, frame types, error codes and the
``struct`` formats of the payloads. :mod:`hw.link` specifies the frame layout; this
module turns frames into bytes and back. Every failure is a :class:`LinkError` whose message
says which frame, what was wrong and what to do.

Version 3 (:data:`PROTOCOL_VERSION`): an OUT payload starts with the index of its first word
within the RUN (:data:`OUT_FORMAT`), then the words. Version 2 OUT frames carried words only, so
that one OUT frame lost and another duplicated in a RUN kept the word count and went undetected;
now the host takes an OUT frame only if it starts at the word that comes next, and a frame that
repeats words or skips some is an error that runs the layer again.

Version 4: a bitstream runs in one of two modes (:class:`LinkMode`), which INFO states. ``LAYERS``:
the layer engine, one convolution per RUN, the host runs the rest (:class:`boards.runtime.BoardRunner`).
``NETWORK``: the whole-network core (:class:`hw.network.NetworkCore`): the model's constants and
program are loaded once, then per image its pixels are loaded (LOAD frames to the ``IMAGE`` target)
and one RUN returns the logits, one signed ``out_bits`` value per word, ``classes`` of them
(:class:`boards.runtime.NetworkRunner`). INFO (:data:`INFO_HEAD_FORMAT`, then the targets)::

    version B | mode B | addr_bits H | out_bits H | rows H | cols H | max_payload H | code_bits H |
    classes H | targets B | data bits of each target H ...

all little-endian: ``out_bits`` is one output word (LAYERS: ``cols`` signed fields; NETWORK: one
logit), ``code_bits`` the CODES format's code width (0: none; always 0 in NETWORK mode),
``classes`` the logits a RUN returns (NETWORK; 0 in LAYERS mode), ``targets`` the number of load
targets, each with its data bits (0: no such target). A bitstream of another version (a version 3
one has no mode and always 6 targets) is refused by its INFO reply (:class:`VersionError`).

Version 5: the link overlaps compute in NETWORK mode. The core stages the pixels of one image while it
runs another, so the host sends image n+1's pixels while the core computes image n: a RUN asking for
0 words only starts the core (DONE once the core has taken the staged image), and the new request
``RESULT`` (:attr:`FrameType.RESULT`, RUN's payload) collects the running image's logits without
starting anything. While the core runs, a RUN, or a LOAD to any target but the image, is refused
with :attr:`NackCode.BUSY` (it would disturb the running image): collect the logits with RESULT first.
Order per image (:class:`boards.runtime.NetworkRunner`): LOAD its pixels, RESULT of the image before,
RUN(0). A RUN asking for the logits still runs one image the blocking way (LOAD, RUN(classes)).

Version 6: a board reset (its button, or configuration from flash) since the host loaded the model is detected.
The bridge holds a ``session`` register of :data:`SESSION_BITS` bits, 0 after a reset, which the new request
``SESSION`` (:attr:`FrameType.SESSION`, a 1-byte payload) sets (ACK; taken while the core runs: it disturbs
nothing). Every DONE states it: DONE's 32-bit little-endian word (:data:`DONE_FORMAT`, 4 bytes as before) holds
the word count in its low :data:`DONE_COUNT_BITS` bits and the session in its top :data:`SESSION_BITS`
(:func:`encode_done`, :func:`decode_done`), so a RUN or RESULT asks for at most ``2**DONE_COUNT_BITS - 1`` words.
INFO keeps version 5's layout (no session: its bytes stay constants in the gateware). The runners set a random
non-zero session before they load the model; a DONE of another session (0: the board was reset; another value:
another host loaded it) is a :class:`BoardReset`, so that no output computed without the loaded model is taken
(every job and image ends in a DONE, also after a resync). A bitstream of version 5 (whose DONE carries no
session) is refused by its INFO's version. (A first form of version 6 held a 16-bit session, stated by INFO
too, in a 6-byte DONE: 47 more logic cells, and the digits network core no longer fitted the iCEBreaker's UP5K.)

Version 7: INFO states which build the bitstream is. Two builds of the same widths (INFO's other fields equal) may
differ in what the host relies on but INFO cannot state, a memory's depth above all: a host given another build's
report (or a board flashed with another build) then wrote past a memory (its addresses wrap) and took wrong logits
without an error. INFO's head gains a 32-bit ``build`` before the target count (:data:`INFO_HEAD_FORMAT`)::

    version B | mode B | addr_bits H | out_bits H | rows H | cols H | max_payload H | code_bits H |
    classes H | build I | targets B | data bits of each target H ...

``build`` is the digest of the hardware parameters the bitstream was generated from (the mode and every
parameter of the engine, or of the whole-network core, memory depths included:
:func:`hw.network_params.build_digest`, the one function that both the gateware generator, which bakes it into
INFO's constant bytes, and the host call). The runners compute it of the parameters they are about to use and
refuse a board that states another (:class:`boards.runtime.NetworkRunner`, :class:`boards.runtime.BoardRunner`).
A bitstream of version 6 (whose INFO has no build) is refused by its INFO's version. (The digest's 4 bytes sit
beside INFO's other constant bytes, no register of their own: the digits network core on the iCEBreaker's UP5K
took 15 more logic cells, 5,128 of 5,280, and met its 36 MHz clock at 39.09 MHz.)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import Callable, Iterable

SYNC = 0xA5
CRC_INIT = 0xFFFF
CRC_POLY = 0x1021
LENGTH_FORMAT = "<H"  # a frame's payload length, after its type byte
CRC_FORMAT = ">H"  # the checksum, after the payload
LENGTH_BITS = 8 * struct.calcsize(LENGTH_FORMAT)
CRC_BYTES = struct.calcsize(CRC_FORMAT)
FRAME_BYTES = 1 + 1 + struct.calcsize(LENGTH_FORMAT) + CRC_BYTES  # sync, type, length, checksum
PROTOCOL_VERSION = 7
# version, mode; addr_bits, out_bits, rows, cols, max_payload, code_bits, classes; build (the digest of the
# hardware parameters, BUILD_BITS); number of targets (the data bits of each target follow, TARGET_FORMAT each)
INFO_HEAD_FORMAT = "<BB7HIB"
BUILD_BITS = 32
INFO_HEAD_BYTES = struct.calcsize(INFO_HEAD_FORMAT)
TARGET_FORMAT = "<H"
MAX_TARGETS = 255  # a LOAD names its target in one byte; INFO counts them in one
RUN_FORMAT = "<IB"  # words expected, output format (FULL or CODES); a RESULT's payload too
OUT_FORMAT = "<I"  # an OUT payload's head: the index of its first word within the RUN (the words follow)
OUT_HEAD_BYTES = struct.calcsize(OUT_FORMAT)
SESSION_BITS = 8  # the session: 0 after a reset, set by SESSION (its payload, whole bytes), stated by DONE
DONE_COUNT_BITS = 24  # DONE's word count: the words the engine returned since RUN (a RUN asks for fewer)
DONE_FORMAT = "<I"  # DONE's one word: the count in its low DONE_COUNT_BITS bits, the session in the bits above
if 8 * struct.calcsize(DONE_FORMAT) != DONE_COUNT_BITS + SESSION_BITS:
    raise AssertionError("DONE_FORMAT must hold exactly DONE_COUNT_BITS + SESSION_BITS bits")
if 8 * struct.calcsize(INFO_HEAD_FORMAT[0] + INFO_HEAD_FORMAT[-2]) != BUILD_BITS:
    raise AssertionError("INFO_HEAD_FORMAT's build field must hold exactly BUILD_BITS bits")


def info_bytes(targets: int) -> int:
    """Payload bytes of an INFO reply describing ``targets`` load targets."""
    return INFO_HEAD_BYTES + targets * struct.calcsize(TARGET_FORMAT)


MAX_INFO_BYTES = info_bytes(MAX_TARGETS)


def whole_bytes(bits: int) -> int:
    """Bytes that carry a ``bits``-bit field on the link (whole bytes, the field in the low bits)."""
    return (bits + 7) // 8


SESSION_BYTES = whole_bytes(SESSION_BITS)  # a SESSION payload: the session in whole bytes


def payload_bytes(addr_bits: int, target_bits, out_bits: int, code_out_bits: int = 0) -> dict[str, int]:
    """The largest payload of each kind a link of these widths carries, in bytes, by what it is: a LOAD of one word
    to the widest target (target byte, address, word), a RUN request, an OUT frame of one output word (``out_bits``,
    or ``code_out_bits`` in the CODES format). A link bridge's frame buffer (``max_payload``) holds the largest."""
    widest = max(range(len(target_bits)), key=lambda t: target_bits[t])
    word = max(out_bits, code_out_bits)
    return {f"a LOAD of one {target_bits[widest]}-bit word (target {widest})":
            1 + whole_bytes(addr_bits) + whole_bytes(target_bits[widest]),
            "a RUN request": struct.calcsize(RUN_FORMAT),
            f"an OUT frame of one {word}-bit output word": OUT_HEAD_BYTES + whole_bytes(word)}


class LinkMode(enum.IntEnum):
    """What a bitstream runs: ``LAYERS`` the layer engine (one layer per RUN; ``lcq build --mode layers``),
    ``NETWORK`` the whole-network core (image in, logits out; ``lcq build --mode network``)."""

    LAYERS = 0
    NETWORK = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class FrameType(enum.IntEnum):
    """Host -> device requests (``0x0_``) and device -> host replies (``0x8_``)."""

    PING = 0x01
    LOAD = 0x02
    RUN = 0x03
    RESULT = 0x04
    SESSION = 0x05
    INFO = 0x81
    ACK = 0x82
    OUT = 0x83
    DONE = 0x84
    NACK = 0x85


class NackCode(enum.IntEnum):
    """First payload byte of a NACK; the second is the type byte of the refused frame."""

    CRC = 1
    LENGTH = 2
    TYPE = 3
    TIMEOUT = 4
    FRAMING = 5
    TARGET = 6
    BUSY = 7

    @property
    def explanation(self) -> str:
        return {
            NackCode.CRC: "its checksum did not match (bytes were corrupted on the line)",
            NackCode.LENGTH: "its length was wrong for its type (a LOAD payload is the "
                             "target, the address and whole words of that target, at most "
                             "max_payload bytes; a RUN or RESULT payload is the word count and a "
                             "known output format; a SESSION payload is the session's byte; PING carries none)",
            NackCode.TYPE: "its type byte is not a request the device knows",
            NackCode.TIMEOUT: "it stopped arriving mid-way (the device dropped it)",
            NackCode.FRAMING: "a byte had no stop bit (baud rate mismatch or line noise)",
            NackCode.TARGET: "its target byte names no buffer of this engine",
            NackCode.BUSY: "the core is still running the previous image (while it runs it takes LOADs to the "
                           "image target only, and no RUN): collect its logits with RESULT first",
        }[self]


class LinkError(Exception):
    """The link failed; the message says which frame, what was wrong and what to do."""


class LinkTimeout(LinkError):
    """The device sent fewer bytes than a frame needs before the port timed out (or before the
    host's deadline passed). ``received``: bytes of the frame that did arrive (0: the device
    said nothing at all; None: not known)."""

    def __init__(self, message: str, received: int | None = None):
        super().__init__(message)
        self.received = received


class LinkNoise(LinkError):
    """The device kept sending when it should have gone quiet (the line never drained)."""


class FrameError(LinkError):
    """Bytes from the device do not form a valid frame."""


class VersionError(LinkError):
    """The device speaks another protocol version than the host (asking again would not help)."""


class BoardReset(LinkError):
    """The device states another session than the one this host set before it loaded the model (a DONE
    reply): the board was reset or reconfigured (session 0), or another host loaded it, since; what the
    host loaded is gone, so its outputs are not taken (loading the model again would help)."""

    def __init__(self, reply: str, expected: int, got: int):
        self.expected, self.got = expected, got
        what = ("the board was reset or reconfigured (its button, power, or configuration from flash)" if got == 0
                else "another host session set it (another program on the port, or another runner)")
        digits = (SESSION_BITS + 3) // 4
        super().__init__(f"{reply} states session 0x{got:0{digits}x}, not the 0x{expected:0{digits}x} this host set "
                         f"before it loaded the model: {what} since then, so the model it held is gone and its "
                         f"outputs are garbage (none taken); run again (the runner loads the model again), and keep "
                         f"the board from being reset during a run")


class NackError(LinkError):
    """The device refused a frame, after the allowed retries."""

    def __init__(self, code: int, refused_type: int, attempts: int):
        self.code, self.refused_type, self.attempts = code, refused_type, attempts
        try:
            what = NackCode(code).explanation
        except ValueError:
            what = f"unknown NACK code {code}"
        fix = "" if code == NackCode.BUSY else "; check the baud rate and cable, or lower max_payload"
        super().__init__(f"the device refused {_type_name(refused_type)} frame {attempts} time(s): {what}{fix}")


def _type_name(ftype: int) -> str:
    try:
        return FrameType(ftype).name
    except ValueError:
        return f"type 0x{ftype:02x}"


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


@dataclass(frozen=True)
class Frame:
    """One frame as read from the link: its type byte and payload (the checksum already checked)."""

    type: int
    payload: bytes = b""


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame: sync, type, length (LE), payload, CRC (big-endian)."""
    if not 0 <= ftype <= 0xFF:
        raise ValueError(f"Frame type must be a byte, not {ftype!r}")
    if len(payload) >= 1 << LENGTH_BITS:
        raise ValueError(f"Frame payload must be at most {(1 << LENGTH_BITS) - 1} bytes, not {len(payload)}")
    body = bytes([ftype]) + struct.pack(LENGTH_FORMAT, len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack(CRC_FORMAT, crc16(body))


def read_frame(read: Callable[[int], bytes], expecting: str = "a reply",
               max_length: int | None = None) -> Frame:
    """One frame from ``read(n)`` (a pyserial-like read that may return fewer bytes on
    timeout). Raises :class:`LinkTimeout` on a short read and :class:`FrameError` on a
    byte other than sync where a frame starts, a checksum mismatch, or (``max_length``) a
    length field larger than any frame the reader can be waiting for (then the payload is
    not read: a damaged length must not make the host wait for 64 KB)."""
    received = 0

    def exactly(n: int, part: str) -> bytes:
        nonlocal received
        got = read(n) if n else b""
        received += len(got)
        if len(got) < n:
            raise LinkTimeout(f"timed out waiting for {expecting}: got {len(got)} of the {n} "
                              f"bytes of its {part}; check that the board is programmed, the "
                              f"port and baud rate are right, and raise the port timeout for "
                              f"long runs", received)
        return got

    sync = exactly(1, "sync byte")[0]
    if sync != SYNC:
        raise FrameError(f"expected the sync byte 0x{SYNC:02x} at the start of {expecting}, got "
                         f"0x{sync:02x}: the link is out of step; check the baud rate, then "
                         f"reopen the port and ping")
    header = exactly(1 + struct.calcsize(LENGTH_FORMAT), "header")
    length = struct.unpack(LENGTH_FORMAT, header[1:])[0]
    if max_length is not None and length > max_length:
        raise FrameError(f"{_type_name(header[0])} frame announces {length} payload bytes, more than "
                         f"the {max_length} of any frame of {expecting}: its length was damaged on "
                         f"the line or the link is out of step; check the cable and baud rate, "
                         f"then reopen the port and ping")
    payload = exactly(length, f"{length}-byte payload")
    check = exactly(CRC_BYTES, "checksum")
    if crc16(header + payload + check) != 0:
        raise FrameError(f"checksum mismatch in {_type_name(header[0])} frame ({expecting}, "
                         f"{length} payload bytes): bytes were corrupted on the line; check "
                         f"the cable and try a lower baud rate")
    return Frame(header[0], payload)


def decode_frame(data: bytes) -> Frame:
    """The one frame that ``data`` holds exactly (see :func:`read_frame`)."""
    rest = memoryview(bytes(data))

    def read(n: int) -> bytes:
        nonlocal rest
        got, rest = bytes(rest[:n]), rest[n:]
        return got

    frame = read_frame(read, "the frame")
    if len(rest):
        raise FrameError(f"{len(rest)} stray byte(s) after a {_type_name(frame.type)} frame")
    return frame


class OutputFormat(enum.IntEnum):
    """How RUN returns a word: ``FULL`` all ``out_bits``; ``CODES`` the low ``code_bits`` of
    each of the ``cols`` fields (activation codes, which are never negative), packed."""

    FULL = 0
    CODES = 1


@dataclass(frozen=True)
class LinkInfo:
    """The device's parameters, from its INFO reply to PING: the engine's address bits, output
    word bits (LAYERS: ``cols`` fields; NETWORK: one logit), array size, the largest payload it
    takes, the width of an activation code (0: no CODES format), the data bits of each load
    target (0: none; as many targets as the core has), the mode (:class:`LinkMode`), in
    NETWORK mode the number of logits a RUN returns (``classes``; 0 in LAYERS mode), and ``build``: the digest
    of the hardware parameters the bitstream was generated from (:func:`hw.network_params.build_digest`)."""

    version: int
    addr_bits: int
    out_bits: int
    rows: int
    cols: int
    max_payload: int
    code_bits: int
    target_bits: tuple[int, ...]
    mode: int = LinkMode.LAYERS
    classes: int = 0
    build: int = 0

    @classmethod
    def decode(cls, payload: bytes) -> "LinkInfo":
        """The INFO reply's parameters. Raises :class:`VersionError` when its first byte states
        another protocol version, :class:`FrameError` on a payload of the wrong size or with
        impossible parameters."""
        if payload and payload[0] != PROTOCOL_VERSION:
            fix = ("rebuild the bitstream with this version of the project (`lcq build MODEL --board NAME`) "
                   "and flash it (`lcq flash --board NAME`)" if payload[0] < PROTOCOL_VERSION else
                   "update the host to the project version that built the bitstream, or rebuild the "
                   "bitstream with this one (`lcq build MODEL --board NAME`, `lcq flash --board NAME`)")
            raise VersionError(f"the board's bitstream speaks link protocol version {payload[0]}, this host "
                               f"version {PROTOCOL_VERSION}: {fix}")
        targets = payload[INFO_HEAD_BYTES - 1] if len(payload) >= INFO_HEAD_BYTES else None
        if targets is None or len(payload) != info_bytes(targets):
            expected = (f"{INFO_HEAD_BYTES} bytes and 2 per load target" if targets is None else
                        f"{info_bytes(targets)} for the {targets} load targets it states")
            raise FrameError(f"INFO reply has {len(payload)} payload bytes, expected {expected}: it was "
                             f"damaged on the line or does not come from a link bridge of this project; ping "
                             f"again, and rebuild and flash the bitstream if it persists")
        version, mode, addr_bits, out_bits, rows, cols, max_payload, code_bits, classes, build, _ = \
            struct.unpack_from(INFO_HEAD_FORMAT, payload)
        widths = struct.unpack_from(f"<{targets}H", payload, INFO_HEAD_BYTES)
        info = cls(version, addr_bits, out_bits, rows, cols, max_payload, code_bits, tuple(widths), mode, classes,
                   build)
        problems = info.problems()
        if problems:
            raise FrameError(f"INFO reply states impossible parameters ({'; '.join(problems)}): it "
                             f"does not come from a link bridge of this project, or it was damaged "
                             f"on the line; ping again, and rebuild and flash the bitstream if it "
                             f"persists")
        if not isinstance(info.mode, LinkMode):
            info = replace(info, mode=LinkMode(info.mode))
        return info

    def problems(self) -> list[str]:
        """What no link bridge could state (the rules :class:`hw.link.LinkBridge` checks of its
        parameters): each a phrase naming the field, its value and the rule; empty when none."""
        out = []
        known_mode = self.mode in set(LinkMode)
        if not known_mode:
            out.append(f"mode {self.mode}, not one of " + ", ".join(f"{m.value} ({m.label})" for m in LinkMode))
        network = self.mode == LinkMode.NETWORK
        if self.addr_bits < 1:
            out.append(f"addr_bits {self.addr_bits}, not at least 1")
        if not 1 <= len(self.target_bits) <= MAX_TARGETS:
            out.append(f"{len(self.target_bits)} load targets, not 1..{MAX_TARGETS}")
        elif not any(self.target_bits):
            out.append("no load target (every target's data bits are 0)")
        if self.out_bits < 1:
            out.append(f"out_bits {self.out_bits}: output words of 0 bytes")
        for name in ("rows", "cols"):
            if getattr(self, name) < 1:
                out.append(f"{name} {getattr(self, name)}, not at least 1")
        if network:
            if self.classes < 1:
                out.append(f"classes {self.classes} in network mode, not at least 1")
            if self.code_bits:
                out.append(f"code_bits {self.code_bits} in network mode, not 0 (logits have no CODES format)")
        elif known_mode:
            if self.classes:
                out.append(f"classes {self.classes} in layers mode, not 0")
            if self.cols >= 1 and self.out_bits >= 1:
                if self.out_bits % self.cols:
                    out.append(f"out_bits {self.out_bits} is not whole fields of {self.cols} columns")
                elif self.code_bits > self.out_bits // self.cols:
                    out.append(f"code_bits {self.code_bits} wider than a {self.out_bits // self.cols}-bit "
                               f"column field")
        if 1 <= len(self.target_bits) <= MAX_TARGETS and any(self.target_bits) and self.out_bits >= 1:
            largest = max(payload_bytes(self.addr_bits, self.target_bits, self.out_bits,
                                        self.cols * self.code_bits).values())
            if self.max_payload < largest:
                out.append(f"max_payload {self.max_payload} smaller than the {largest} bytes the largest "
                           f"payload needs (a LOAD header and word, a RUN request or an OUT frame of one word)")
        return out

    def encode(self) -> bytes:
        return (struct.pack(INFO_HEAD_FORMAT, self.version, self.mode, self.addr_bits, self.out_bits, self.rows,
                            self.cols, self.max_payload, self.code_bits, self.classes, self.build,
                            len(self.target_bits))
                + struct.pack(f"<{len(self.target_bits)}H", *self.target_bits))

    @property
    def targets(self) -> int:
        """Number of load targets."""
        return len(self.target_bits)

    @property
    def addr_bytes(self) -> int:
        return whole_bytes(self.addr_bits)

    def word_bytes(self, target: int) -> int:
        """Bytes of one LOAD word to ``target``."""
        return whole_bytes(self.target_bits[target])

    def out_bytes(self, fmt: OutputFormat = OutputFormat.FULL) -> int:
        """Bytes of one RUN output word in format ``fmt``."""
        return whole_bytes(self.cols * self.code_bits if fmt == OutputFormat.CODES else self.out_bits)

    def out_frame_words(self, fmt: OutputFormat = OutputFormat.FULL) -> int:
        """Words of a full OUT frame in format ``fmt``: as many as ``max_payload`` holds after the head."""
        return (self.max_payload - OUT_HEAD_BYTES) // max(1, self.out_bytes(fmt))


def encode_loads(beats: Iterable[tuple[int, int, int]], info: LinkInfo) -> list[bytes]:
    """LOAD payloads of ``(target, addr, data)`` beats, in order: each run of beats to one
    target at consecutive addresses becomes payloads of the target byte, the first address
    (``addr_bytes``, little-endian) and the words (``word_bytes(target)`` each, little-endian),
    at most ``max_payload`` bytes. Raises ValueError on a value that does not fit its field."""
    runs: list[list] = []
    for n, (target, addr, data) in enumerate(beats):
        if not 0 <= target < info.targets or not info.target_bits[target]:
            raise ValueError(f"Load beat {n}: target {target!r} is not a target of this engine")
        for name, value, bits in (("address", addr, info.addr_bits),
                                  ("data", data, info.target_bits[target])):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"Load beat {n}: {name} {value!r} does not fit in {bits} bits")
        if runs and runs[-1][0] == target and runs[-1][1] + len(runs[-1][2]) == addr:
            runs[-1][2].append(data)
        else:
            runs.append([target, addr, [data]])
    header = 1 + info.addr_bytes
    payloads = []
    for target, addr, words in runs:
        size = info.word_bytes(target)
        step = (info.max_payload - header) // size
        if step < 1:
            raise ValueError(f"a {size}-byte word to target {target} does not fit a "
                             f"{info.max_payload}-byte payload")
        for i in range(0, len(words), step):
            payload = bytearray([target]) + (addr + i).to_bytes(info.addr_bytes, "little")
            for word in words[i:i + step]:
                payload += word.to_bytes(size, "little")
            payloads.append(bytes(payload))
    return payloads


def encode_run(words: int, fmt: OutputFormat = OutputFormat.FULL) -> bytes:
    """The RUN payload asking for ``words`` output words in format ``fmt``."""
    return struct.pack(RUN_FORMAT, words, fmt)


def encode_session(session: int) -> bytes:
    """The SESSION payload setting the device's session register to ``session`` (1 .. 2**SESSION_BITS - 1: 0 is
    the value of a reset), little-endian in :data:`SESSION_BYTES` bytes."""
    if isinstance(session, bool) or not isinstance(session, int) or not 0 < session < 1 << SESSION_BITS:
        raise ValueError(f"A session must be an integer in 1..{(1 << SESSION_BITS) - 1} (0 is a reset board's), "
                         f"not {session!r}")
    return session.to_bytes(SESSION_BYTES, "little")


def encode_done(count: int, session: int) -> bytes:
    """The DONE payload stating ``count`` words (0 .. 2**DONE_COUNT_BITS - 1) and ``session`` (0 ..
    2**SESSION_BITS - 1): one :data:`DONE_FORMAT` word, the count in its low :data:`DONE_COUNT_BITS` bits."""
    for name, value, bits in (("count", count, DONE_COUNT_BITS), ("session", session, SESSION_BITS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise ValueError(f"A DONE {name} must be an integer in 0..{(1 << bits) - 1}, not {value!r}")
    return struct.pack(DONE_FORMAT, count | session << DONE_COUNT_BITS)


def decode_done(payload: bytes) -> tuple[int, int]:
    """A DONE payload's word count and session (its length checked by the caller: ``DONE_FORMAT``)."""
    (word,) = struct.unpack(DONE_FORMAT, payload)
    return word & (1 << DONE_COUNT_BITS) - 1, word >> DONE_COUNT_BITS


def encode_out(first: int, words: bytes) -> bytes:
    """The OUT payload of ``words`` (their bytes, as :func:`decode_words` takes them), the first of
    which is word ``first`` of the RUN."""
    return struct.pack(OUT_FORMAT, first) + bytes(words)


def decode_out(payload: bytes, info: LinkInfo, fmt: OutputFormat = OutputFormat.FULL) -> tuple[int, list[int]]:
    """The index within the RUN of an OUT payload's first word, and its words (:func:`decode_words`)."""
    if len(payload) < OUT_HEAD_BYTES:
        raise FrameError(f"OUT frame has {len(payload)} payload bytes, fewer than the {OUT_HEAD_BYTES} of its "
                         f"first word's index: it was damaged on the line, or host and gateware speak "
                         f"different protocols (rebuild the bitstream)")
    (first,) = struct.unpack_from(OUT_FORMAT, payload)
    return first, decode_words(payload[OUT_HEAD_BYTES:], info, fmt)


def decode_words(payload: bytes, info: LinkInfo, fmt: OutputFormat = OutputFormat.FULL) -> list[int]:
    """The output words of an OUT payload's words (after its head), as full words (CODES fields
    widened to ``out_bits / cols``)."""
    step = info.out_bytes(fmt)
    if step < 1:
        raise FrameError(f"the device's INFO states {fmt.name} output words of 0 bytes (out_bits "
                         f"{info.out_bits}, cols {info.cols}, code_bits {info.code_bits}): no word can "
                         f"be decoded; ping again, and rebuild and flash the bitstream if it persists")
    if len(payload) % step:
        raise FrameError(f"OUT frame has {len(payload)} bytes of words, not a multiple of the "
                         f"{step}-byte word: host and gateware disagree on the word size; ping "
                         f"again or rebuild the bitstream")
    words = [int.from_bytes(payload[i:i + step], "little") for i in range(0, len(payload), step)]
    if fmt == OutputFormat.CODES:
        field, mask = info.out_bits // info.cols, (1 << info.code_bits) - 1
        words = [sum(((w >> c * info.code_bits) & mask) << c * field for c in range(info.cols))
                 for w in words]
    return words
