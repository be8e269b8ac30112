"""The host end of the link: requests and replies over any pyserial-like port.

:class:`LinkHost` speaks the protocol of :mod:`hw.link` over an object with
``write(bytes)`` and ``read(n)`` (``read`` returns fewer bytes on timeout);
:class:`SerialPort` opens a real serial port with pyserial.
"""

from __future__ import annotations

import struct

from hw.protocol import (DONE_FORMAT, FrameError, FrameType, LinkError, LinkInfo, LinkTimeout,
                       NackCode, NackError, OutputFormat, decode_words, encode_frame,
                       encode_loads, encode_run, read_frame)


class LinkHost:
    """Requests to the device on ``port``. A LOAD frame NACKed for its checksum, a
    timeout or a framing error is sent again up to ``retries`` times before
    :class:`NackError` is raised; one NACKed for its length or target is not (it would fail again).
    A LOAD whose reply is corrupted or missing is sent again after :meth:`resync` (loading
    the same words twice is harmless). ``retried`` counts the frames sent again."""

    def __init__(self, port, *, retries: int = 3):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retries must be a non-negative integer, not {retries!r}")
        self.port, self.retries = port, retries
        self.retried = 0
        self._info: LinkInfo | None = None

    @property
    def info(self) -> LinkInfo:
        """The device's parameters (pings it the first time)."""
        if self._info is None:
            self.ping()
        return self._info

    def _request(self, ftype: FrameType, payload: bytes = b"", expecting: str = "a reply"):
        self.port.write(encode_frame(ftype, payload))
        return read_frame(self.port.read, expecting)

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

    def ping(self) -> LinkInfo:
        """Ask the device for its parameters."""
        frame = self._request(FrameType.PING, expecting="the INFO reply to PING")
        if frame.type != FrameType.INFO:
            raise self._unexpected(frame, "PING")
        self._info = LinkInfo.decode(frame.payload)
        return self._info

    def resync(self) -> LinkInfo:
        """After a reply went wrong: drop what the device still sends (until the port times
        out; the device then waits for a frame) and ping it."""
        while self.port.read(4096):
            pass
        return self.ping()

    def load(self, beats: list[tuple[int, int, int]]) -> None:
        """Send ``(target, addr, data)`` beats in order, in LOAD frames of at most
        ``max_payload`` bytes (:func:`encode_loads`), each acknowledged before the next."""
        for number, payload in enumerate(encode_loads(beats, self.info)):
            expecting = f"the reply to LOAD frame {number} ({len(payload)} bytes)"
            for attempt in range(1, self.retries + 2):
                try:
                    frame = self._request(FrameType.LOAD, payload, expecting)
                except (FrameError, LinkTimeout):    # the reply went wrong: resync, send again
                    if attempt > self.retries:
                        raise
                    self.retried += 1
                    self.resync()
                    continue
                if frame.type == FrameType.ACK:
                    break
                if frame.type != FrameType.NACK or len(frame.payload) != 2:
                    raise self._unexpected(frame, f"LOAD frame {number}")
                code, refused = frame.payload
                if code in (NackCode.LENGTH, NackCode.TARGET) or attempt > self.retries:
                    raise NackError(code, refused, attempt)
                self.retried += 1

    def run(self, out_words: int, fmt: OutputFormat = OutputFormat.FULL) -> list[int]:
        """Start the engine and collect exactly ``out_words`` output words, sent in format
        ``fmt`` and returned as full words."""
        info = self.info
        if fmt == OutputFormat.CODES and not info.code_bits:
            raise ValueError("this engine has no activation codes to return in the CODES format")
        self.port.write(encode_frame(FrameType.RUN, encode_run(out_words, fmt)))
        words: list[int] = []
        while True:
            expecting = f"RUN output (word {len(words)} of {out_words}, or DONE)"
            frame = read_frame(self.port.read, expecting)
            if frame.type == FrameType.OUT:
                words += decode_words(frame.payload, info, fmt)
                if len(words) > out_words:
                    raise LinkError(f"the device sent {len(words)} output words, more than the "
                                    f"{out_words} asked for: host and gateware speak different "
                                    f"protocols; rebuild the bitstream")
            elif frame.type == FrameType.DONE and len(frame.payload) == 4:
                (sent,) = struct.unpack(DONE_FORMAT, frame.payload)
                if sent != out_words:
                    raise LinkError(f"the engine returned {sent} output words, expected "
                                    f"{out_words}: the loaded model does not match the host's; "
                                    f"load it again")
                if len(words) != out_words:
                    raise LinkError(f"RUN ended after {len(words)} received words, expected "
                                    f"{out_words}: frames were lost on the line; check the "
                                    f"cable and baud rate")
                return words
            else:
                raise self._unexpected(frame, "RUN")


class SerialPort:
    """A serial port opened with pyserial (imported here, so that the rest of the host
    side needs no pyserial): ``write``, ``read`` with a timeout, ``close``; a context
    manager."""

    def __init__(self, path: str, baud: int, *, timeout: float = 1.0):
        try:
            import serial
        except ImportError:
            raise LinkError("talking to a board needs pyserial: pip install pyserial") from None
        try:
            self._serial = serial.Serial(path, baud, timeout=timeout)
        except (serial.SerialException, OSError) as error:
            raise LinkError(f"cannot open serial port {path!r} at {baud} baud ({error}): check "
                            f"that the board is plugged in and the port name (e.g. "
                            f"/dev/ttyUSB1 on Linux, COM3 on Windows)") from None

    def write(self, data: bytes) -> None:
        self._serial.write(data)

    def read(self, n: int) -> bytes:
        return self._serial.read(n)

    def close(self) -> None:
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
