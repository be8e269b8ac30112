"""The host end of the link: requests and replies over any pyserial-like port.

:class:`LinkHost` speaks the protocol of :mod:`hw.link` over an object with
``write(bytes)`` and ``read(n)`` (``read`` returns fewer bytes on timeout, so that every
read ends; an optional ``reset_input_buffer()`` discards bytes already received);
:class:`SerialPort` opens a real serial port with pyserial.

Nothing waits forever, whatever the device sends. Every read ends within the port's own
timeout (:class:`SerialPort` refuses to open without one, and its writes end too), and the number of reads is bounded:
a reply frame takes at most four (a frame may not announce more payload than any reply of the
request can hold), a RUN or RESULT at most one OUT frame per word asked for (an empty OUT frame,
and one that does not start at the next word, is an error) and DONE, draining the line at most
``drain_bytes`` bytes and :data:`DRAIN_SHORT_READS` reads cut short by the timeout (a device
that never goes quiet), and every retry (a LOAD sent again, a PING while resynchronizing, a
layer run again) is bounded by ``retries``. So every wait is bounded in port timeouts, which a
simulated port counts in simulated time; ``deadline`` adds a wall-clock limit of its own to each
reply frame and each drain. Each way of failing ends in a :class:`hw.protocol.LinkError` that
names what did not arrive and what to do; a device of another protocol version is refused at
its INFO reply (:class:`hw.protocol.VersionError`, not retried).

A reply that did not come in full is never taken for the next request's: the bridge drops a request that arrives
while it still works on the one before, whose late reply would then answer it (an ACK of another image's pixels,
taken for this image's). So a request after one whose reply did not end in its last frame (a Ctrl-C while the host
waited, an error the caller caught) first resynchronizes (:meth:`LinkHost.resync`: the line drained, a PING).

In network mode the core computes between requests (protocol version 5): :meth:`LinkHost.start`
starts it on the staged image and returns, :meth:`LinkHost.result` collects its logits later, so that
the next image's LOAD frames travel while it runs.

A board reset since the model was loaded is caught (protocol version 6): :meth:`LinkHost.begin_session` sets the
device's session register to a random non-zero value (the runners do so before they load the model), and every
DONE after it must state that value; one that does not (0: the board was reset) is a
:class:`hw.protocol.BoardReset`, not retried, and the words of that request are not returned. INFO states no session
(its bytes are constants in the gateware): a reset is caught by the next DONE, which ends every job and image, one
sent again after a resync too. A board may have been configured with another bitstream since the last PING (no DONE
states a reset that the next SESSION overwrites), so :meth:`LinkHost.begin_session` pings first unless the last request
was a PING: parameters other than the first INFO's are a LinkError, not frames encoded for the old ones.

A board built from other parameters than the host's, of the same widths (a memory of another depth), is told by
INFO's ``build`` (protocol version 7), the digest of the parameters its bitstream was generated from: the runners
(:mod:`boards.runtime`) compare it with the digest of the parameters they use.
"""

from __future__ import annotations

import errno
import math
import os
import random
import struct
import time
from collections import Counter
from dataclasses import fields

from hw.protocol import (DONE_COUNT_BITS, DONE_FORMAT, FRAME_BYTES, LENGTH_BITS, MAX_INFO_BYTES, OUT_HEAD_BYTES,
                         SESSION_BITS, BoardReset, FrameError, FrameType, LinkError, LinkInfo, LinkNoise, LinkTimeout,
                         NackCode, NackError, OutputFormat, decode_done, decode_out, encode_frame, encode_loads,
                         encode_run, encode_session, read_frame)

NACK_BYTES = 2
INFO_BYTES = MAX_INFO_BYTES     # the longest INFO reply (255 load targets)
DONE_BYTES = struct.calcsize(DONE_FORMAT)
RUN_WORDS_MAX = (1 << DONE_COUNT_BITS) - 1     # the most DONE's count can state
# NACK codes of a frame damaged on the way in: sending it again may succeed. The bridge tests a frame's type and
# length as they arrive, before its checksum, so a type or length byte damaged on the line comes back as TYPE or
# LENGTH (the host's own frames have known types and lengths right for the INFO it checked); TARGET is tested
# after the checksum (it would fail again), and BUSY means a request out of order (a RESULT must come first).
RESENDABLE = (NackCode.CRC, NackCode.TIMEOUT, NackCode.FRAMING, NackCode.TYPE, NackCode.LENGTH)
DRAIN_CHUNK = 4096
# Reads of a drain that return some bytes but fewer than asked (the port timed out while bytes still
# came): the tail of a reply gives one; more mean a device that trickles bytes and never goes quiet.
DRAIN_SHORT_READS = 8
MAX_FRAME_PAYLOAD = (1 << LENGTH_BITS) - 1   # the longest payload a frame's length field can say
WRITE_BITS_PER_BYTE = 10        # on the line: a start bit, 8 data bits and a stop bit


def _check_words(out_words, request: str) -> None:
    """A ValueError, before anything is sent, for a word count a RUN or RESULT cannot ask for: 1 to
    :data:`RUN_WORDS_MAX`, the most DONE's ``DONE_COUNT_BITS``-bit count can state."""
    if isinstance(out_words, bool) or not isinstance(out_words, int) or not 1 <= out_words <= RUN_WORDS_MAX:
        why = (" (start() sends a RUN of 0 words)" if request == "RUN" and out_words == 0 else
               f" (more than DONE's {DONE_COUNT_BITS}-bit word count can state, protocol version 6)"
               if isinstance(out_words, int) and not isinstance(out_words, bool) and out_words > RUN_WORDS_MAX else "")
        raise ValueError(f"A {request} must ask for 1..{RUN_WORDS_MAX} output words, not {out_words!r}{why}")


def recoverable(error: BaseException) -> bool:
    """Whether ``error`` is a reply damaged or lost on the line (worth a resync and another try)."""
    if isinstance(error, NackError):
        return error.code in RESENDABLE
    return isinstance(error, (FrameError, LinkTimeout))


class Refusals(Counter):
    """The device's refusals over the tries of one job (a layer run, an image), by frame type and NACK code: a
    :class:`NackError` counts its own request's attempts only, and :meth:`final` restates the one that ends the
    job with every refusal of its frame for its reason."""

    def add(self, error: BaseException) -> None:
        if isinstance(error, NackError):
            self[error.refused_type, error.code] += error.attempts

    def final(self, error: LinkError) -> LinkError:
        """``error``, the job's last (added), with the refusals of all its tries."""
        if not isinstance(error, NackError):
            return error
        total = self[error.refused_type, error.code]
        return error if total <= error.attempts else NackError(error.code, error.refused_type, total)


class LinkHost:
    """Requests to the device on ``port``. A LOAD frame NACKed for its checksum, a
    timeout, a framing error, its type or its length (line damage to its header) is sent again up to
    ``retries`` times before :class:`NackError` is raised; one NACKed for its target (it would fail again) or
    a busy core (a RESULT must come first) is not.
    A LOAD whose reply is corrupted or missing is sent again after :meth:`resync` (loading
    the same words twice is harmless). ``retried`` counts the frames sent again, ``resyncs``
    the resynchronizations and ``repeated`` the layer runs repeated by :meth:`load_and_run`.

    ``drain_bytes``: the most bytes :meth:`resync` drains before it gives up on a device that
    never stops sending (at least twice the longest reply of the last RUN); ``deadline`` (None:
    none): wall-clock seconds one reply frame, and one drain, may take on top of the bounds in
    port timeouts (for ports whose time is real time, not a simulation's).

    ``session``: the session :meth:`begin_session` set on the device (None: none, or it was lost); while set,
    each DONE must state it, or :class:`hw.protocol.BoardReset` is raised (and ``session`` is None).
    ``stated_session``: the session the last DONE stated (None: no DONE yet; 0: the board was reset or configured
    since a host last set one).
    """

    def __init__(self, port, *, retries: int = 3, deadline: float | None = None, drain_bytes: int = 1 << 20):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retries must be a non-negative integer, not {retries!r}")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                     or not math.isfinite(deadline) or deadline <= 0):
            raise ValueError(f"Deadline must be None or a finite number of seconds > 0, not {deadline!r}")
        if isinstance(drain_bytes, bool) or not isinstance(drain_bytes, int) or drain_bytes < 1:
            raise ValueError(f"Drain limit must be a positive number of bytes, not {drain_bytes!r}")
        self.port, self.retries, self.drain_bytes = port, retries, drain_bytes
        self.deadline = None if deadline is None else float(deadline)
        self.retried = self.resyncs = self.repeated = 0
        self._info: LinkInfo | None = None
        self._reply_bytes = 0       # the longest reply the last request could bring
        self.session: int | None = None
        self.stated_session: int | None = None
        self._pinged = False        # whether the last request was a PING, answered (its INFO as the first's)
        self._answered = True       # whether the last request's reply came in full (False: some may still come)
        self._resyncing = False

    @property
    def info(self) -> LinkInfo:
        """The device's parameters (pings it the first time; a damaged reply is recovered by
        :meth:`resync`, a device that sends nothing at all is reported at once)."""
        if self._info is None:
            try:
                self.ping()
            except LinkError as e:
                if not recoverable(e) or (isinstance(e, LinkTimeout) and e.received == 0):
                    raise
                self.resync()
        return self._info

    # Frames, each with its deadline.

    def _discard_stale(self) -> None:
        """Drop bytes received before a request (a duplicated or late reply): they answer no
        request of ours. Only ports that can (pyserial's ``reset_input_buffer``)."""
        reset = getattr(self.port, "reset_input_buffer", None)
        if callable(reset):
            reset()

    def _send(self, ftype: FrameType, payload: bytes = b"") -> None:
        """Send a request; first :meth:`resync` when the last one's reply did not come in full (a Ctrl-C while the
        host waited, an error the caller caught): a late reply to it must not be taken for this one's."""
        if not self._answered and not self._resyncing:
            self.resync()
        self._discard_stale()
        self._answered = self._pinged = False
        self.port.write(encode_frame(ftype, payload))

    def _frame(self, expecting: str, max_length: int):
        """One reply frame of at most ``max_length`` payload bytes (at most four reads), complete
        within ``deadline`` seconds if there is one."""
        if self.deadline is None:
            return read_frame(self.port.read, expecting, max_length)
        end = time.monotonic() + self.deadline
        got = 0

        def read(n: int) -> bytes:
            nonlocal got
            if time.monotonic() > end:
                raise LinkTimeout(f"{expecting} did not arrive within the {self.deadline:g} s deadline "
                                  f"({got} byte{'' if got == 1 else 's'} of it came, too slowly): check the baud "
                                  f"rate and cable, reset the board, or give the host a longer deadline", got)
            data = self.port.read(n)
            got += len(data)
            return data

        return read_frame(read, expecting, max_length)

    def _request(self, ftype: FrameType, payload: bytes = b"", expecting: str = "a reply",
                 max_length: int = NACK_BYTES):
        self._send(ftype, payload)
        self._reply_bytes = FRAME_BYTES + max_length
        return self._frame(expecting, max_length)

    def _unexpected(self, frame, request: str):
        if frame.type == FrameType.NACK and len(frame.payload) == 2:
            return NackError(frame.payload[0], frame.payload[1], 1)
        try:
            name = FrameType(frame.type).name
        except ValueError:
            name = f"type 0x{frame.type:02x}"
        return FrameError(f"unexpected {name} frame ({len(frame.payload)} payload bytes) in "
                          f"reply to {request}: the link is out of step; reopen the port and "
                          f"ping")

    # Requests.

    def ping(self) -> LinkInfo:
        """Ask the device for its parameters (once; :meth:`resync` retries). Parameters other than the session's
        first INFO stated are a :class:`LinkError`, not retried: the host encodes its frames, and the runners
        checked the board, by the first."""
        frame = self._request(FrameType.PING, expecting="the INFO reply to PING", max_length=INFO_BYTES)
        if frame.type != FrameType.INFO:
            raise self._unexpected(frame, "PING")
        info = LinkInfo.decode(frame.payload)
        self._answered = True
        if self._info is not None and info != self._info:
            pairs = ((f.name, getattr(self._info, f.name), getattr(info, f.name)) for f in fields(info))
            shown = {"build": lambda digest: f"0x{digest:08x}"}
            changed = ", ".join(f"{name} {shown.get(name, str)(was)} -> {shown.get(name, str)(now)}"
                                for name, was, now in pairs if was != now)
            raise LinkError(f"the device's parameters changed since this session's first PING ({changed}): another "
                            f"bitstream was flashed, or another board answers on the port; run again")
        self._info, self._pinged = info, True
        return info

    def _check_session(self, reply: str, session: int) -> None:
        """A :class:`BoardReset` (and no session set any more) when ``reply`` states another ``session`` than the
        one :meth:`begin_session` set."""
        if self.session is not None and session != self.session:
            expected, self.session = self.session, None
            raise BoardReset(reply, expected, session)

    def begin_session(self, rnd: random.Random | None = None) -> int:
        """Set the device's session register to a new random non-zero value (drawn from ``rnd``, default the
        system's: a seeded one makes a fuzz campaign repeat itself; a SESSION frame, sent again as a LOAD is),
        which each DONE from now on must state: call it before loading what the device must keep. Returns the
        value (also ``session``). It pings first (:meth:`ping`) unless the last request was a PING: a board
        configured since with another bitstream is a LinkError, not loaded with frames encoded for the first. The
        value is never the session the device's last DONE stated (``stated_session``, another host's where one
        set it), so that host's next DONE tells it of the change."""
        self.session = None         # the session the device held is given up, whether or not the new one is taken
        if not self._pinged:
            self.ping()
        held = self.stated_session or 0
        session = (rnd or random.SystemRandom()).randrange(1, (1 << SESSION_BITS) - (held > 0))
        if held and session >= held:        # (the values from the device's on, one place up)
            session += 1
        self._acknowledged(FrameType.SESSION, encode_session(session), "SESSION")
        self.session = session
        return session

    def _drain(self) -> None:
        """Read until the port times out with nothing (the device then waits for a frame): at most
        ``drain_bytes`` bytes, :data:`DRAIN_SHORT_READS` reads cut short, ``deadline`` seconds."""
        start = time.monotonic()
        limit = max(self.drain_bytes, 2 * self._reply_bytes)
        drained = reads = short = 0
        while chunk := self.port.read(DRAIN_CHUNK):
            drained, reads, short = drained + len(chunk), reads + 1, short + (len(chunk) < DRAIN_CHUNK)
            elapsed = time.monotonic() - start
            late = self.deadline is not None and elapsed > self.deadline
            if drained > limit or short > DRAIN_SHORT_READS or late:
                bound = (f"at most {limit:,} bytes and {DRAIN_SHORT_READS} reads cut short by the port's timeout"
                         + (f", in {self.deadline:g} s" if self.deadline is not None else ""))
                raise LinkNoise(f"the line did not go quiet while resynchronizing: {drained:,} bytes "
                                f"arrived in {reads} reads ({elapsed:.1f} s) and kept coming ({bound} were "
                                f"expected); the device keeps sending: check the baud rate, close other "
                                f"programs on the port, and reset or reflash the board")

    def resync(self) -> LinkInfo:
        """After a reply went wrong: drop what the device still sends (until the port times
        out; the device then waits for a frame) and ping it, up to ``retries + 1`` times."""
        self.resyncs += 1
        last: LinkError | None = None
        self._resyncing = True
        try:
            for _ in range(self.retries + 1):
                self._drain()
                try:
                    return self.ping()
                except LinkError as e:
                    if not recoverable(e):
                        raise
                    last = e
        finally:
            self._resyncing = False
        kind = LinkTimeout if isinstance(last, LinkTimeout) else FrameError
        raise kind(f"no valid INFO reply to {self.retries + 1} PING(s) while resynchronizing "
                   f"(the last: {last}); reset the board, check the cable and baud rate, and try again") from last

    def load(self, beats: list[tuple[int, int, int]]) -> None:
        """Send ``(target, addr, data)`` beats in order, in LOAD frames of at most
        ``max_payload`` bytes (:func:`encode_loads`), each acknowledged before the next."""
        for number, payload in enumerate(encode_loads(beats, self.info)):
            self._acknowledged(FrameType.LOAD, payload, f"LOAD frame {number}")

    def _acknowledged(self, request: FrameType, payload: bytes, what: str) -> None:
        """Send ``request`` (LOAD or SESSION, which are harmless twice) until it is ACKed: a frame NACKed with a
        :data:`RESENDABLE` code is sent again, one whose reply went wrong is sent again after :meth:`resync`, up to
        ``retries`` times."""
        self.info       # pinged first: a resync must not be the session's first PING
        expecting = f"the reply to {what} ({len(payload)} bytes)"
        for attempt in range(1, self.retries + 2):
            try:
                frame = self._request(request, payload, expecting)
                if frame.type == FrameType.ACK and not frame.payload:
                    self._answered = True
                    return
                if frame.type != FrameType.NACK or len(frame.payload) != NACK_BYTES:
                    raise self._unexpected(frame, what)
                self._answered = True
            except (FrameError, LinkTimeout):    # the reply went wrong: resync, send again
                if attempt > self.retries:
                    raise
                self.retried += 1
                self.resync()
                continue
            code, refused = frame.payload
            if code not in RESENDABLE or attempt > self.retries:
                raise NackError(code, refused, attempt)
            self.retried += 1

    def run(self, out_words: int, fmt: OutputFormat = OutputFormat.FULL) -> list[int]:
        """Start the engine and collect exactly ``out_words`` output words, sent in format
        ``fmt`` and returned as full words. Each OUT frame must start at the word that comes
        next (its index within the RUN); one that arrived twice or after a lost one is a
        :class:`FrameError` (:meth:`load_and_run` runs the layer again). In network mode a RUN
        while the core still runs is refused (:class:`NackError`, code BUSY)."""
        _check_words(out_words, "RUN")
        return self._exactly(FrameType.RUN, out_words, fmt)

    def start(self) -> None:
        """Network mode: start the core on the staged image, without waiting for its logits (a RUN
        asking for 0 words, answered DONE 0 once the core has taken the image); :meth:`result`
        collects them. Refused while the core still runs (:class:`NackError`, code BUSY)."""
        self._exactly(FrameType.RUN, 0, OutputFormat.FULL)

    def result(self, out_words: int, fmt: OutputFormat = OutputFormat.FULL) -> list[int]:
        """Network mode: collect exactly ``out_words`` output words of the core started by :meth:`start`
        (a RESULT frame; the same checks as :meth:`run`). A core that is not running answers at once
        with fewer words: a :class:`LinkError`."""
        _check_words(out_words, "RESULT")
        return self._exactly(FrameType.RESULT, out_words, fmt)

    def settle(self, out_words: int, fmt: OutputFormat = OutputFormat.FULL) -> int:
        """Network mode, after a reply went wrong and :meth:`resync`: collect and drop what the core still
        holds, up to ``out_words`` words (a RESULT, answered at once if the core is not running), so that
        it stops and takes the next RUN. Returns the number of words the core returned."""
        _check_words(out_words, "RESULT")
        return self._collect(FrameType.RESULT, out_words, fmt)[1]

    def _exactly(self, request: FrameType, out_words: int, fmt: OutputFormat) -> list[int]:
        """:meth:`_collect`, checked: the engine returned ``out_words`` words and all of them arrived."""
        words, sent = self._collect(request, out_words, fmt)
        if sent != out_words:
            why = ("the core was not running (start it before RESULT), or it stopped early"
                   if request == FrameType.RESULT and sent < out_words else
                   "the loaded model does not match the host's; load it again")
            raise LinkError(f"the engine returned {sent} output words to {request.name}, expected "
                            f"{out_words}: {why}")
        if len(words) != out_words:
            raise FrameError(f"{request.name} ended after {len(words)} received words, expected "
                             f"{out_words}: frames were lost on the line; check the cable and baud rate")
        return words

    def _collect(self, request: FrameType, out_words: int, fmt: OutputFormat) -> tuple[list[int], int]:
        """Send ``request`` (RUN or RESULT) asking for ``out_words`` words in format ``fmt``; its OUT
        frames' words (each frame must start at the next word; at most ``out_words``) and DONE's count."""
        info = self.info
        if fmt == OutputFormat.CODES and not info.code_bits:
            raise ValueError("this engine has no activation codes to return in the CODES format")
        max_length = max(info.max_payload, DONE_BYTES, NACK_BYTES)
        step = info.out_bytes(fmt)
        frames = -(-out_words // info.out_frame_words(fmt))
        self._send(request, encode_run(out_words, fmt))
        self._reply_bytes = out_words * step + frames * (FRAME_BYTES + OUT_HEAD_BYTES) + FRAME_BYTES + DONE_BYTES
        words: list[int] = []
        while True:         # at most one OUT frame per word asked for, then DONE
            expecting = f"{request.name} output (word {len(words)} of {out_words}, or DONE)"
            frame = self._frame(expecting, max_length)
            if frame.type == FrameType.OUT:
                if len(frame.payload) <= OUT_HEAD_BYTES:
                    raise FrameError(f"empty OUT frame in {expecting}: the device sends at least one word "
                                     f"per OUT frame, so the reply was damaged on the line or the device is "
                                     f"faulty; check the cable, then reopen the port and ping")
                first, got = decode_out(frame.payload, info, fmt)
                if first != len(words):
                    what = ("the frames before it were lost" if first > len(words) else
                            "it arrived twice or out of order")
                    raise FrameError(f"OUT frame of words {first}..{first + len(got) - 1} in {expecting}: "
                                     f"{what} on the line; check the cable and baud rate")
                words += got
                if len(words) > out_words:
                    raise FrameError(f"the device sent {len(words)} output words, more than the "
                                     f"{out_words} asked for: host and gateware speak different "
                                     f"protocols (rebuild the bitstream) or the device is faulty")
            elif frame.type == FrameType.DONE and len(frame.payload) == DONE_BYTES:
                self._answered = True
                count, session = decode_done(frame.payload)
                self.stated_session = session
                self._check_session(f"the DONE reply to {request.name}", session)
                return words, count
            else:
                self._answered = frame.type == FrameType.NACK and len(frame.payload) == NACK_BYTES   # its whole reply
                raise self._unexpected(frame, request.name)

    def load_and_run(self, beats: list[tuple[int, int, int]], out_words: int,
                     fmt: OutputFormat = OutputFormat.FULL, *, repeats: int = 2) -> list[int]:
        """:meth:`load` then :meth:`run`, the whole again after :meth:`resync` when a reply comes
        back damaged or not at all (the device's bytes to the host have no retry of their own),
        up to ``repeats`` times: a job that brings everything the engine does not keep is
        idempotent (a NACK that ends it counts the refusals of all the tries). ``repeated`` counts the
        repetitions."""
        refused = Refusals()
        for attempt in range(repeats + 1):
            try:
                self.load(beats)
                return self.run(out_words, fmt)
            except LinkError as e:
                refused.add(e)
                if attempt == repeats or not recoverable(e):
                    raise refused.final(e)
                self.repeated += 1
                self.resync()
        raise AssertionError("unreachable")


def _pseudo_terminal_hint(path: str) -> str:
    """The fix to add where ``path`` is a pseudo-terminal (Linux's /dev/pts/N), the port of an `lcq board-sim`
    that has not started yet or has stopped; empty for any other port."""
    if not str(path).startswith("/dev/pts/"):
        return ""
    return ("; it is a pseudo-terminal: is `lcq board-sim` running? Start it and pass the port it prints (a new one "
            "at every start)")


class SerialPort:
    """A serial port opened with pyserial (imported here, so that the rest of the host side needs no pyserial):
    ``write``, ``read`` with a ``timeout`` (required: it ends every wait), ``reset_input_buffer``, ``close``; a
    context manager. A write ends within ``timeout`` plus the time the longest frame takes at ``baud``; one that
    does not (a device that stopped reading), and a port that fails (a board unplugged), raise
    :class:`hw.protocol.LinkError` naming the port. The port is opened exclusively: a second session on it, which
    would take the first's replies for its own, is refused (a LinkError). Closed by this program (:meth:`close`, also
    from another thread while the host waits), every read, write and flush is a LinkError saying so."""

    def __init__(self, path: str, baud: int, *, timeout: float = 1.0):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"The serial read timeout must be a finite number of seconds > 0 (reads must end), "
                             f"not {timeout!r}")
        try:
            import serial
        except ImportError:
            raise LinkError("talking to a board needs pyserial: pip install pyserial") from None
        self.path, self._write_timed_out, self._closed = path, serial.SerialTimeoutException, False
        self._errors = (serial.SerialException, OSError)
        if os.name == "posix":      # pyserial's POSIX port flushes with termios, whose errors are not OSErrors
            import termios
            self._errors += (termios.error,)
        write_timeout = timeout + (FRAME_BYTES + MAX_FRAME_PAYLOAD) * WRITE_BITS_PER_BYTE / baud
        try:
            self._serial = serial.Serial(path, baud, timeout=timeout, write_timeout=write_timeout, exclusive=True)
        except (serial.SerialException, OSError) as error:
            if getattr(error, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):     # its exclusive lock
                raise LinkError(f"serial port {path!r} is in use by another program ({error}): close it (another "
                                f"`lcq run`, a terminal) and run again") from None
            fix = ("this user may not use it; add the user to the group that owns it (`ls -l "
                   f"{path}`; dialout on Debian and Ubuntu), log in again and run again"
                   if getattr(error, "errno", None) in (errno.EACCES, errno.EPERM) else
                   "check that the board is plugged in and the port name (e.g. /dev/ttyUSB1 on Linux, COM3 on "
                   "Windows)")
            raise LinkError(f"cannot open serial port {path!r} at {baud} baud ({error}): {fix}"
                            f"{_pseudo_terminal_hint(path)}") from None

    def _failed(self, doing: str, error: Exception) -> LinkError:
        """The :class:`LinkError` for pyserial's ``error`` while ``doing`` something on the port."""
        if isinstance(error, self._write_timed_out):
            return LinkError(f"writing to serial port {self.path!r} took more than "
                             f"{self._serial.write_timeout:.1f} s: the device stopped reading (a hung board or "
                             f"bridge, or a stopped `lcq board-sim`); reset the board and run again")
        return LinkError(f"serial port {self.path!r} failed while {doing} ({error}): was the board unplugged or "
                         f"reset? Plug it in, check the port name, and run again{_pseudo_terminal_hint(self.path)}")

    def _call(self, doing: str, call):
        """``call()``; pyserial's errors as LinkErrors, and any error or result once :meth:`close` ran (pyserial's
        read, its port closed by another thread mid-wait, fails in a TypeError or returns early) as the LinkError
        saying that this program closed the port."""
        try:
            result = call()
        except Exception as error:
            if self._closed:
                raise self._closed_error(doing) from None
            if isinstance(error, self._errors):
                raise self._failed(doing, error) from None
            raise
        if self._closed:
            raise self._closed_error(doing)
        return result

    def _closed_error(self, doing: str) -> LinkError:
        return LinkError(f"serial port {self.path!r} was closed by this program while {doing}: open it again (a new "
                         f"SerialPort) and run again; close it only once no request waits (another thread, or a "
                         f"`with` block that ended, closed it)")

    def write(self, data: bytes) -> None:
        self._call("writing", lambda: self._serial.write(data))

    def read(self, n: int) -> bytes:
        return self._call("reading", lambda: self._serial.read(n))

    def reset_input_buffer(self) -> None:
        self._call("clearing its input", self._serial.reset_input_buffer)

    def close(self) -> None:
        self._closed = True
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
