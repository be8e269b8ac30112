"""The host end of the link: requests and replies over any pyserial-like port.

:class:`LinkHost` speaks the protocol of :mod:`hw.link` over an object with
``write(bytes)`` and ``read(n)`` (``read`` returns fewer bytes on timeout);
:class:`SerialPort` opens a real serial port with pyserial.
"""

from __future__ import annotations

import struct

from .protocol import (DONE_FORMAT, FrameError, FrameType, LinkError, LinkInfo, NackCode,
                       NackError, decode_words, encode_beats, encode_frame, read_frame,
                       split_payloads)


class LinkHost:
    """Requests to the device on ``port``. A LOAD frame NACKed for its checksum, a
    timeout or a framing error is sent again up to ``retries`` times before
    :class:`NackError` is raised; one NACKed for its length is not (it would fail again)."""

    def __init__(self, port, *, retries: int = 3):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retries must be a non-negative integer, not {retries!r}")
        self.port, self.retries = port, retries
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

    def load(self, beats: list[tuple[int, int, int]]) -> None:
        """Send ``(target, addr, data)`` beats in order, in frames of at most
        ``max_payload`` bytes, each acknowledged before the next."""
        info = self.info
        for number, payload in enumerate(split_payloads(encode_beats(beats, info), info)):
            expecting = f"the reply to LOAD frame {number} ({len(payload)} bytes)"
            for attempt in range(1, self.retries + 2):
                frame = self._request(FrameType.LOAD, payload, expecting)
                if frame.type == FrameType.ACK:
                    break
                if frame.type != FrameType.NACK or len(frame.payload) != 2:
                    raise self._unexpected(frame, f"LOAD frame {number}")
                code, refused = frame.payload
                if code == NackCode.LENGTH or attempt > self.retries:
                    raise NackError(code, refused, attempt)

    def run(self, out_words: int) -> list[int]:
        """Start the engine and collect exactly ``out_words`` output words."""
        info = self.info
        self.port.write(encode_frame(FrameType.RUN))
        words: list[int] = []
        while True:
            expecting = f"RUN output (word {len(words)} of {out_words}, or DONE)"
            frame = read_frame(self.port.read, expecting)
            if frame.type == FrameType.OUT:
                words += decode_words(frame.payload, info)
                if len(words) > out_words:
                    raise LinkError(f"the device sent {len(words)} output words, more than the "
                                    f"{out_words} expected: the loaded model does not match "
                                    f"the host's; load it again")
            elif frame.type == FrameType.DONE and len(frame.payload) == 4:
                (sent,) = struct.unpack(DONE_FORMAT, frame.payload)
                if sent != len(words) or sent != out_words:
                    raise LinkError(f"RUN ended after {len(words)} received words (device "
                                    f"sent {sent}), expected {out_words}: words were lost on "
                                    f"the line or the loaded model does not match; load it "
                                    f"again")
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
