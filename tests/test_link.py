"""Host link: UART, LinkBridge and the host side, in Amaranth's simulator."""

import binascii
import errno
import functools
import gc
import os
import random
import re
import struct
import sys
import threading
import warnings
from types import SimpleNamespace

import pytest

pytest.importorskip("amaranth")

from amaranth import Cat, Module, ResetInserter, Shape, Signal, signed  # noqa: E402
from amaranth.hdl import UnusedElaboratable  # noqa: E402
from amaranth.lib import data, stream, wiring  # noqa: E402
from amaranth.lib.memory import Memory  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from boards.link_host import LinkHost, SerialPort  # noqa: E402
from hw.protocol import (DONE_COUNT_BITS, DONE_FORMAT, FRAME_BYTES, INFO_HEAD_BYTES, OUT_HEAD_BYTES,  # noqa: E402
                         PROTOCOL_VERSION, SESSION_BITS, BoardReset, Frame, FrameError, FrameType, LinkError, LinkInfo,
                         LinkMode, LinkNoise, LinkTimeout, NackCode, NackError, OutputFormat, VersionError, crc16,
                         decode_done, decode_frame, decode_out, decode_words, encode_done, encode_frame, encode_loads,
                         encode_out, encode_run, encode_session, read_frame)
from hw.engine import EngineSignature  # noqa: E402
from hw.engine_params import TARGET_BITS  # noqa: E402
from hw.link import LinkBridge  # noqa: E402
from hw.baud import baud_divisor  # noqa: E402
from hw.uart import UartRx, UartTx  # noqa: E402
from simulators import ChangedInputs  # noqa: E402

PERIOD = 1e-6
ADDR_BITS, OUT_BITS, COLS, CODE_BITS = 6, 24, 4, 2  # 3-byte words, 1-byte CODES words
TARGET_WIDTHS = (8, 12, 0, 20, 5, 9)                 # words of 1, 2, -, 3, 1, 2 bytes
DATA_BITS = max(TARGET_WIDTHS)
REC_BITS = TARGET_BITS + ADDR_BITS + DATA_BITS
BUILD, NET_BUILD = 0x5EEDC0DE, 0xA1B2C3D4          # the build digests the test bridges state (4 distinct bytes)
INFO = LinkInfo(PROTOCOL_VERSION, ADDR_BITS, OUT_BITS, 3, COLS, 32, CODE_BITS, TARGET_WIDTHS,   # 9 FULL words per OUT
                build=BUILD)


def uart_bits(byte: int, stop: int = 1) -> list[int]:
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


class LineDecoder:
    """Bytes on a UART line sampled once per cycle, decoded mid-bit in Python."""

    def __init__(self, divisor: int):
        self.divisor, self.bytes, self.framing_errors = divisor, [], 0
        self._countdown, self._bits = None, []

    def step(self, level: int):
        if self._countdown is None:
            if level == 0:
                self._countdown, self._bits = self.divisor // 2, []
            return
        self._countdown -= 1
        if self._countdown:
            return
        self._bits.append(level)
        self._countdown = self.divisor
        if len(self._bits) == 10:
            assert self._bits[0] == 0, "start bit went high"
            if self._bits[9] == 0:
                self.framing_errors += 1
            self.bytes.append(sum(b << i for i, b in enumerate(self._bits[1:9])))
            self._countdown = None


# UART

def test_baud_divisor():
    assert baud_divisor(12e6, 3e6) == 4
    assert baud_divisor(48e6, 115200) == 417
    with pytest.raises(ValueError, match=r"Baud rate 2500000 is not reachable within 1% from a "
                                         r"11000000 Hz clock: the nearest divisor 4 gives "
                                         r"2750000 baud \(10\.0% off\)"):
        baud_divisor(11_000_000, 2_500_000)
    with pytest.raises(ValueError, match=r"divisor 17 gives 2941176 baud \(2\.0% off\)"):
        baud_divisor(50e6, 3e6)                 # the rate the ULX3S at 50 MHz must not use (test_uart_baud)
    with pytest.raises(ValueError, match=r"needs at least 4 clock cycles per bit"):
        baud_divisor(8e6, 3e6)
    with pytest.raises(ValueError, match=r"Baud rate must be a finite number > 0, not 0"):
        baud_divisor(12e6, 0)
    for clock in (float("inf"), float("nan")):          # not an OverflowError from round(), nor a divisor
        with pytest.raises(ValueError, match=rf"Clock frequency must be a finite number > 0, not {clock}"):
            baud_divisor(clock, 3e6)


def receiver(rx, received):
    """A background testbench appending ``(byte, error)`` of every byte ``rx`` presents to ``received``."""
    async def receive(ctx):
        while True:
            _, _, valid, byte, error = await ctx.tick().sample(rx.o.valid, rx.o.payload.data,
                                                               rx.o.payload.error)
            if valid:
                received.append((byte, error))
    return receive


def run_uart_loopback(divisor, data):
    rx, tx = UartRx(divisor, 1), UartTx(divisor, 1)
    m = Module()
    m.submodules.rx, m.submodules.tx = rx, tx
    m.d.comb += rx.rx.eq(tx.tx)
    received = []

    async def send(ctx):
        for byte in data:
            ctx.set(tx.i.payload, byte)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    sim = Simulator(m)
    sim.add_clock(PERIOD)
    sim.add_testbench(send)
    sim.add_testbench(receiver(rx, received), background=True)
    sim.run()
    return received


@pytest.mark.parametrize("divisor", [4, 5, 16])
def test_uart_loopback(divisor):
    data = [0x00, 0xFF, 0x55, 0xAA, 0xA5, 0x01, 0x80] + random.Random(divisor).choices(
        range(256), k=5)
    assert run_uart_loopback(divisor, data) == [(b, 0) for b in data]


@pytest.mark.parametrize("bit_cycles", [31, 32, 33])
def test_uart_rx_framing_error_and_baud_tolerance(bit_cycles):
    """A low stop bit sets ``error``; after the line goes high the next byte is good, also
    from a sender 3% off the receiver's rate."""
    rx = UartRx(32, 1)
    received = []

    async def drive(ctx):
        await ctx.tick().repeat(5)
        for byte, stop in ((0x3C, 1), (0xC3, 0), (0x5A, 1)):
            for bit in uart_bits(byte, stop):
                ctx.set(rx.rx, bit)
                await ctx.tick().repeat(bit_cycles)
            ctx.set(rx.rx, 1)
            await ctx.tick().repeat(2 * bit_cycles)

    sim = Simulator(rx)
    sim.add_clock(PERIOD)
    sim.add_testbench(drive)
    sim.add_testbench(receiver(rx, received), background=True)
    sim.run()
    assert received == [(0x3C, 0), (0xC3, 1), (0x5A, 0)]


# The engine double and the simulated link

class RecordingEngine(wiring.Component):
    """``LayerEngine``'s interface (:class:`EngineSignature`), for tests: load beats are
    recorded in order (``load.ready`` stalls on a pseudo-random pattern); ``start`` emits, for
    each recorded beat ``i``, the word ``Cat(target, addr, data, i)`` (cut to ``OUT_BITS``),
    each after a pseudo-random wait; ``busy`` falls once the last one is accepted."""

    def __init__(self, depth=64, stall=True, signature=None):
        self._depth, self._stall = depth, stall
        super().__init__(signature or EngineSignature(ADDR_BITS, DATA_BITS, OUT_BITS))

    def elaborate(self, platform):
        m = Module()
        rec_bits = Shape.cast(self.load.payload.shape()).width
        m.submodules.record = record = Memory(shape=rec_bits, depth=self._depth, init=[])
        write, read = record.write_port(), record.read_port()
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        go = lfsr[0] | lfsr[4] if self._stall else 1
        count, index = Signal(range(self._depth + 1)), Signal(range(self._depth + 1))
        m.d.comb += [
            self.load.ready.eq(go & (count < self._depth)),
            write.addr.eq(count),
            write.data.eq(self.load.payload),
            write.en.eq(self.load.valid & self.load.ready),
            read.addr.eq(index),
            self.out.payload.eq(Cat(read.data, index)),
        ]
        with m.If(write.en):
            m.d.sync += count.eq(count + 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += index.eq(0)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                m.next = "WAIT"
                with m.If(index == count):
                    m.next = "IDLE"
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(go):
                    m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += [self.busy.eq(1), self.out.valid.eq(1)]
                with m.If(self.out.ready):
                    m.d.sync += index.eq(index + 1)
                    m.next = "FETCH"
        return m


# The network core's shape, for the bridge in network mode: 12 targets (a 4-bit target field), signed logits.
NET_TARGETS = (8, 12, 0, 20, 5, 9, 16, 7, 0, 3, 11, 8)
NET_OUT_BITS, NET_CLASSES = 16, 5
NET_INFO = LinkInfo(PROTOCOL_VERSION, ADDR_BITS, NET_OUT_BITS, 2, COLS, 32, 0, NET_TARGETS, LinkMode.NETWORK,
                    NET_CLASSES, NET_BUILD)


NET_IMAGE = 11        # the image target: the one load target the core takes while it runs


class NetworkDoubleSignature(wiring.Signature):
    """:class:`hw.network.NetworkSignature`'s shape: load, start, busy, signed out (``out_bits``), and a probe the
    bridge leaves unconnected; ``starting`` too if asked for."""

    def __init__(self, starting=False, out_bits=NET_OUT_BITS):
        load = data.StructLayout({"target": 4, "addr": ADDR_BITS, "data": max(NET_TARGETS)})
        super().__init__({"load": In(stream.Signature(load)), "start": In(1), "busy": Out(1),
                          "out": Out(stream.Signature(signed(out_bits))),
                          "probe": Out(wiring.Signature({"write": Out(1), "addr": Out(3)})),
                          **({"starting": Out(1)} if starting else {})})


class StagingCore(wiring.Component):
    """The network core's run protocol, for tests: it counts the ``NET_IMAGE`` beats staged since its last
    start (taken at any time but while it takes the start); a ``start`` takes the staged image for ``TAKE``
    cycles (``starting``), computes for ``COMPUTE`` cycles, then offers ``NET_CLASSES`` words, waiting for
    each to be read; ``busy`` from the cycle after ``start`` until the last word is read. Word ``j`` of run
    ``r`` (counted from 0) of an image of ``n`` beats is ``j | n << 4 | r << 10``."""

    TAKE, COMPUTE = 400, 3_000

    def __init__(self):
        super().__init__(NetworkDoubleSignature(starting=True))

    def elaborate(self, platform):
        m = Module()
        staged, image, runs = Signal(6), Signal(6), Signal(6)
        index, timer = Signal(4), Signal(range(self.COMPUTE + 1))
        m.d.comb += [self.load.ready.eq(~self.starting),
                     self.out.payload.eq(Cat(index, image, runs))]
        with m.If(self.load.valid & self.load.ready & (self.load.payload.target == NET_IMAGE)):
            m.d.sync += staged.eq(staged + 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [timer.eq(0), index.eq(0)]
                    m.next = "TAKE"
            with m.State("TAKE"):
                m.d.comb += [self.busy.eq(1), self.starting.eq(1)]
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.TAKE - 1):
                    m.d.sync += [image.eq(staged), staged.eq(0), timer.eq(0)]
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.COMPUTE - 1):
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += [self.busy.eq(1), self.out.valid.eq(1)]
                with m.If(self.out.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == NET_CLASSES - 1):
                        m.d.sync += runs.eq(runs + 1)
                        m.next = "IDLE"
        return m


def net_words(beats):
    rec = 4 + ADDR_BITS + max(NET_TARGETS)
    return [(t | a << 4 | d << (4 + ADDR_BITS) | i << rec) & 0xFFFF for i, (t, a, d) in enumerate(beats)]


def model_words(beats):
    mask = (1 << OUT_BITS) - 1
    return [(t | a << TARGET_BITS | d << (TARGET_BITS + ADDR_BITS) | i << REC_BITS) & mask
            for i, (t, a, d) in enumerate(beats)]


class LinkTop(wiring.Component):
    """LinkBridge and RecordingEngine, the bridge's byte ports outside (``divisor`` None) or
    behind a UartRx/UartTx pair on the ``rx``/``tx`` lines. ``reset``: the ``sync`` reset of both, as a board's."""

    def __init__(self, divisor, stall, network=False, staging=False, out_bits=NET_OUT_BITS, **bridge_args):
        if staging:     # network mode, a core that stages images and runs on after the start (StagingCore)
            self.bridge = LinkBridge(ADDR_BITS, NET_TARGETS, NET_OUT_BITS, rows=2, cols=COLS, mode=LinkMode.NETWORK,
                                     classes=NET_CLASSES, image_target=NET_IMAGE, build=NET_BUILD,
                                     signature=NetworkDoubleSignature(starting=True), **bridge_args)
            self.engine = StagingCore()
        elif network:   # more targets, a wider target field, one signed value per word, a probe port
            signature = NetworkDoubleSignature(out_bits=out_bits)
            self.bridge = LinkBridge(ADDR_BITS, NET_TARGETS, out_bits, rows=2, cols=COLS, mode=LinkMode.NETWORK,
                                     classes=NET_CLASSES, build=NET_BUILD, signature=signature, **bridge_args)
            self.engine = RecordingEngine(stall=stall, signature=signature)
        else:
            self.bridge = LinkBridge(ADDR_BITS, TARGET_WIDTHS, OUT_BITS, rows=3, cols=COLS, code_bits=CODE_BITS,
                                     build=BUILD, **bridge_args)
            self.engine = RecordingEngine(stall=stall)
        self.divisor, self.reset = divisor, Signal(name="board_reset")
        super().__init__({"rx": In(1, init=1), "tx": Out(1)} if divisor else {})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge, m.submodules.engine = self.bridge, self.engine
        wiring.connect(m, self.bridge.engine, self.engine)
        if self.divisor:
            m.submodules.uart_rx = uart_rx = UartRx(self.divisor, 1)
            m.submodules.uart_tx = uart_tx = UartTx(self.divisor, 1)
            wiring.connect(m, uart_rx.o, self.bridge.rx)
            wiring.connect(m, self.bridge.tx, uart_tx.i)
            m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        return ResetInserter(self.reset)(m)


class SimPort:
    """A pyserial-like port into a simulated LinkTop: ``write`` queues bytes for the device,
    ``read(n)`` runs the simulation until ``n`` bytes came back or ``timeout`` cycles
    passed. Bytes go in either at the bit level on the UART line (``divisor``) or as
    ``rx`` stream beats, one every ``gap`` cycles; ``tx`` is read with random stalls.
    ``beats`` records the load beats the engine accepted. ``network``: a network-mode bridge in front of
    a :class:`RecordingEngine` (its words ``out_bits`` signed); ``staging``: in front of a :class:`StagingCore`."""

    def __init__(self, *, divisor=None, stall=True, gap=2, timeout=20_000, max_payload=32,
                 timeout_cycles=64, network=False, staging=False, out_bits=NET_OUT_BITS):
        self.top = LinkTop(divisor, stall, network, staging, out_bits, max_payload=max_payload,
                           timeout_cycles=timeout_cycles)
        self.divisor, self.gap, self.timeout = divisor, gap, timeout
        self.to_device, self.from_device, self.beats = [], bytearray(), []
        self.cycles, self.resetting = 0, 0
        self.sim = Simulator(self.top)
        self.sim.add_clock(PERIOD)
        self.sim.add_testbench(self._bytes if divisor is None else self._line, background=True)

    async def _bytes(self, ctx):
        bridge, rng, wait = self.top.bridge, random.Random(0), 0
        # The ports made once (a port of a View made anew each cycle is evaluated anew), each set when it changes.
        reset, rx_valid, rx_data, tx_ready = self.top.reset, bridge.rx.valid, bridge.rx.payload.data, bridge.tx.ready
        sampled = (bridge.tx.valid, bridge.tx.payload, *self._load_ports())
        inputs = ChangedInputs(ctx)
        while True:
            inputs.set(reset, int(self.resetting > 0))
            self.resetting = max(self.resetting - 1, 0)
            send = bool(self.to_device) and wait == 0
            inputs.set(rx_valid, int(send))
            if send:
                inputs.set(rx_data, self.to_device.pop(0))
            wait = self.gap - 1 if send else max(wait - 1, 0)
            ready = rng.random() < 0.6
            inputs.set(tx_ready, int(ready))
            _, _, valid, byte, *beat = await ctx.tick().sample(*sampled)
            if valid and ready:
                self.from_device.append(byte)
            self._record(beat)

    async def _line(self, ctx):
        decoder = LineDecoder(self.divisor)
        sampled, rx, inputs = (self.top.tx, *self._load_ports()), self.top.rx, ChangedInputs(ctx)
        while True:
            inputs.set(rx, self.to_device.pop(0) if self.to_device else 1)
            _, _, line, *beat = await ctx.tick().sample(*sampled)
            decoder.step(line)
            self.from_device += bytes(decoder.bytes)
            decoder.bytes.clear()
            assert not decoder.framing_errors
            self._record(beat)

    def _load_ports(self):
        load = self.top.bridge.engine.load
        return load.valid, load.ready, load.payload.target, load.payload.addr, load.payload.data

    def _record(self, beat):
        valid, ready, *fields = beat
        if valid and ready:
            self.beats.append(tuple(fields))

    def reset(self, cycles=3):
        """Hold the bridge and the engine in reset for ``cycles`` cycles, as a board's reset button (``rx`` beats
        only)."""
        self.resetting = cycles
        self.advance(cycles + 2)

    def advance(self, cycles):
        self.cycles += cycles
        self.sim.run_until(self.cycles * PERIOD)

    def write(self, data: bytes):
        if self.divisor is None:
            self.to_device += list(data)
        else:
            self.write_bits([bit for byte in data for bit in uart_bits(byte)])

    def write_bits(self, bits):
        """Queue UART line levels, one bit period each (``divisor`` set)."""
        self.to_device += [bit for bit in bits for _ in range(self.divisor)]

    def read(self, n: int) -> bytes:
        start = self.cycles
        while len(self.from_device) < n and self.cycles - start < self.timeout:
            self.advance(50)
        got = bytes(self.from_device[:n])
        del self.from_device[:n]
        return got


def exchange(port, ftype, payload=b""):
    port.write(encode_frame(ftype, payload))
    return read_frame(port.read)


def nack(code, ftype):
    return (FrameType.NACK, bytes([code, ftype]))


# Runs at consecutive addresses (one LOAD each) and single beats, to every target the engine has.
BEATS = ([(1, 10 + i, 300 * i + 7) for i in range(9)] + [(5, 3, 0x1AB), (0, 0, 0xC3)]
         + [(3, 40 + i, 0xABCDE - 999 * i) for i in range(5)] + [(4, 63, 17), (1, 0, 0xFFF)])


def info_of(port):
    return LinkInfo.decode(exchange(port, FrameType.PING).payload)


def run_words(port, count, fmt=OutputFormat.FULL):
    """RUN asking for ``count`` words: the words of the OUT frames, each frame's (index of its first
    word, words) and DONE's count."""
    port.write(encode_frame(FrameType.RUN, encode_run(count, fmt)))
    words, frames = [], []
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        first, got = decode_out(frame.payload, INFO, fmt)
        words += got
        frames.append((first, len(got)))
    assert frame.type == FrameType.DONE
    return words, frames, decode_done(frame.payload)[0]


def test_bridge_ping():
    assert info_of(SimPort()) == INFO


@pytest.mark.parametrize("max_payload", [7, 8])
def test_bridge_sends_an_info_longer_than_its_largest_payload(max_payload):
    """INFO is a reply, not bounded by max_payload (the largest payload the bridge takes): a bridge whose frame
    buffer is smaller than its 33-byte INFO sends all of it."""
    assert info_of(SimPort(max_payload=max_payload)) == dataclasses.replace(INFO, max_payload=max_payload)


def test_bridge_in_network_mode_with_more_targets():
    """The bridge in front of a network-core double: INFO v7 states the mode, the class count, the build and all 12
    targets; LOADs to targets past the layer engine's 6 (a 4-bit target field) reach the core, one to a target it
    lacks is refused; RUN returns one 16-bit value per word, as many as asked for."""
    port = SimPort(network=True)
    info = info_of(port)
    assert info == NET_INFO and info.mode == LinkMode.NETWORK and info.targets == 12
    assert exchange(port, FrameType.PING).payload[:2] == bytes([7, LinkMode.NETWORK])
    beats = [(11, 5 + i, 200 + i) for i in range(4)] + [(6, 0, 0xFFFF), (9, 63, 5), (0, 1, 0x7F)]
    for payload in encode_loads(beats, info):
        assert exchange(port, FrameType.LOAD, payload).type == FrameType.ACK
    assert port.beats == beats
    for target in (2, 8, 12, 200):
        got = exchange(port, FrameType.LOAD, bytes([target, 0, 0, 0]))
        assert (got.type, got.payload) == nack(NackCode.TARGET, FrameType.LOAD)
    port.write(encode_frame(FrameType.RUN, encode_run(NET_CLASSES)))
    words = []
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        words += decode_out(frame.payload, info)[1]
    assert frame.type == FrameType.DONE and words == net_words(beats)[:NET_CLASSES]
    with pytest.raises(ValueError, match="target 12 is not a target of this engine"):
        encode_loads([(12, 0, 0)], info)


def test_bridge_sends_a_logit_narrower_than_its_bytes_sign_extended():
    """A 12-bit logit goes in two bytes, its sign repeated in the top four bits (the core's out stream is signed):
    what :func:`hw.network_program.decode_logits` checks of each word."""
    from hw.network_program import decode_logits

    port = SimPort(network=True, out_bits=12)
    info = info_of(port)
    assert (info.out_bits, info.out_bytes()) == (12, 2)
    beats = [(11, 5 + i, 200 + i) for i in range(4)] + [(6, 0, 0xFFFF)]
    for payload in encode_loads(beats, info):
        assert exchange(port, FrameType.LOAD, payload).type == FrameType.ACK
    port.write(encode_frame(FrameType.RUN, encode_run(NET_CLASSES)))
    words = []
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        words += decode_out(frame.payload, info)[1]
    values = [w & 0xFFF for w in net_words(beats)]
    signed_values = [v - (1 << 12) if v >> 11 else v for v in values]
    assert any(v < 0 for v in signed_values) and any(v >= 0 for v in signed_values)
    assert words == [v & 0xFFFF for v in signed_values]
    params = SimpleNamespace(value_bits=12)
    assert decode_logits(params, words, NET_CLASSES).tolist() == signed_values


def test_decode_logits_refuses_a_word_whose_top_bits_are_not_its_sign():
    """A logit word may come sign-extended to any width (the link: whole bytes; a simulator: ``value_bits`` bits
    or a signed integer); bits above ``value_bits`` that do not repeat the sign are refused, naming the word."""
    from hw.network_program import decode_logits

    params = SimpleNamespace(value_bits=30)
    words = [5, -3, (1 << 30) - 3, (1 << 32) - 3, -(1 << 29), (1 << 29) - 1]
    assert decode_logits(params, words, 6).tolist() == [5, -3, -3, -3, -(1 << 29), (1 << 29) - 1]
    for bad in (1 << 30 | 5, 1 << 31 | 5, (1 << 32) - 3 - (1 << 30), -(1 << 29) - 1):
        with pytest.raises(ValueError, match=r"logit word 1 .* not a 30-bit two's complement value"):
            decode_logits(params, [0, bad], 2)


def test_info_v7_states_the_build_before_the_targets():
    """Head (version, mode, 7 16-bit fields, the 32-bit build, target count), then 16 bits per target: version 6's
    layout with the build digest inserted before the target count; no session (INFO's bytes are the bitstream's
    constants); decoded as encoded, the build included."""
    payload = NET_INFO.encode()
    assert len(payload) == INFO_HEAD_BYTES + 2 * 12 == 21 + 24
    assert struct.unpack_from("<BB7HIB", payload) == (7, 1, ADDR_BITS, NET_OUT_BITS, 2, COLS, 32, 0, NET_CLASSES,
                                                      NET_BUILD, 12)
    assert payload[16:20] == NET_BUILD.to_bytes(4, "little")
    assert LinkInfo.decode(payload) == NET_INFO and LinkInfo.decode(INFO.encode()) == INFO
    assert (LinkInfo.decode(payload).build, LinkInfo.decode(INFO.encode()).build) == (NET_BUILD, BUILD)
    assert "session" not in {f.name for f in dataclasses.fields(LinkInfo)}
    with pytest.raises(FrameError, match=r"INFO reply has 44 payload bytes, expected 45 for the 12 load targets"):
        LinkInfo.decode(payload[:-1])
    with pytest.raises(FrameError, match=r"INFO reply has 5 payload bytes, expected 21 bytes and 2 per load target"):
        LinkInfo.decode(payload[:5])


def test_done_states_its_count_and_the_session_in_one_32_bit_word():
    """DONE is 4 bytes, as before version 6: one little-endian word, the word count in its low 24 bits, the 8-bit
    session in its top 8; values that do not fit are refused. SESSION's payload is the session's one byte."""
    assert (DONE_COUNT_BITS, SESSION_BITS, struct.calcsize(DONE_FORMAT)) == (24, 8, 4)
    assert encode_done(5, 0xA7) == bytes([5, 0, 0, 0xA7]) and encode_done((1 << 24) - 1, 0) == bytes([255] * 3 + [0])
    for count, session in ((5, 0xA7), ((1 << 24) - 1, 0xFF), (0, 0), (0x123456, 1)):
        assert decode_done(encode_done(count, session)) == (count, session)
    for count, session, name, top in ((1 << 24, 1, "count", 16777215), (-1, 1, "count", 16777215),
                                      (0, 256, "session", 255), (0, -1, "session", 255)):
        with pytest.raises(ValueError, match=rf"A DONE {name} must be an integer in 0\.\.{top}, not -?\d+"):
            encode_done(count, session)
    assert encode_session(0xA7) == b"\xa7" and encode_session(1) == b"\x01"


@pytest.fixture(params=["as-is", "ecp5"])
def bridge_form(request):
    """The bridge as simulated (no platform), then as built for the ECP5 (:func:`helpers.build_as_for_the_ecp5`:
    the engine's word taken into the reply register a cycle later, from registers)."""
    if request.param == "ecp5":
        request.getfixturevalue("ecp5_form")
    return request.param


@pytest.mark.parametrize("gap", [1, 2], ids=["back-to-back", "every-other-cycle"])
def test_bridge_load_and_run(gap, bridge_form):
    """LOAD frames (one per run of consecutive addresses, split at max_payload) reach the
    engine in order through load.ready stalls and are ACKed; RUN returns the words in OUT
    frames, each the index of its first word and as many whole words as the rest of max_payload
    holds, through tx stalls, then DONE. Bytes come in a cycle apart or two."""
    port = SimPort(gap=gap)
    payloads = encode_loads(BEATS, info_of(port))
    assert [len(p) for p in payloads] == [2 + 2 * 9, 4, 3, 2 + 3 * 5, 3, 4]
    for payload in payloads:
        frame = exchange(port, FrameType.LOAD, payload)
        assert (frame.type, frame.payload) == (FrameType.ACK, b"")
    assert port.beats == BEATS
    words, frames, done = run_words(port, len(BEATS))
    assert words == model_words(BEATS) and done == len(BEATS) == 18
    assert frames == [(0, 9), (9, 9)]
    words, frames, done = run_words(port, 7)
    assert words == model_words(BEATS)[:7] and frames == [(0, 7)] and done == len(BEATS)


def test_bridge_codes_format(bridge_form):
    """CODES sends the low CODE_BITS of each column field, a byte per word here."""
    port = SimPort()
    for payload in encode_loads(BEATS, INFO):
        exchange(port, FrameType.LOAD, payload)
    words, frames, done = run_words(port, len(BEATS), OutputFormat.CODES)
    field, mask = OUT_BITS // COLS, (1 << CODE_BITS) - 1
    expected = [sum(((w >> c * field) & mask) << c * field for c in range(COLS)) for w in model_words(BEATS)]
    assert words == expected and frames == [(0, len(BEATS))] and done == len(BEATS)


def test_bridge_run_asks_for_other_counts(bridge_form):
    """Words beyond those asked for are dropped; asked-for words the engine never returns are
    padded with zeros; DONE counts what the engine returned either way."""
    port = SimPort(stall=False)
    for payload in encode_loads(BEATS[:5], INFO):
        exchange(port, FrameType.LOAD, payload)
    assert run_words(port, 3) == (model_words(BEATS[:3]), [(0, 3)], 5)
    assert run_words(port, 7) == (model_words(BEATS[:5]) + [0, 0], [(0, 7)], 5)
    assert run_words(port, 0) == ([], [], 5)


def test_bridge_run_without_beats():
    port = SimPort(stall=False)
    assert run_words(port, 0) == ([], [], 0)


def net_request(port, ftype, count):
    """RUN or RESULT asking for ``count`` words of the network bridge: (words, each OUT frame's (first word,
    words), DONE's count), or the reply frame if it is neither OUT nor DONE."""
    port.write(encode_frame(ftype, encode_run(count)))
    words, frames = [], []
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        first, got = decode_out(frame.payload, NET_INFO)
        words += got
        frames.append((first, len(got)))
    if frame.type != FrameType.DONE:
        return frame.type, frame.payload
    return words, frames, decode_done(frame.payload)[0]


def staged_words(pixels, run):
    """The words of StagingCore's run ``run`` of an image of ``pixels`` beats."""
    return [j | pixels << 4 | run << 10 for j in range(NET_CLASSES)]


def image_payload(pixels):
    return encode_loads([(NET_IMAGE, a, a + 1) for a in range(pixels)], NET_INFO)


def test_bridge_overlaps_the_link_with_compute_in_network_mode(bridge_form):
    """Network mode, protocol v5: RUN of 0 words answers DONE 0 once the core has taken the staged image
    (``starting`` fell), not before, and while it still computes; while it runs, a LOAD to the image target
    is taken (the next image staged), a RUN or a LOAD to another target is refused with NACK BUSY and never
    reaches the core; RESULT brings its words, then (the core idle) DONE 0 at once; RUN asking for the
    words still runs an image the blocking way; words not asked for stay in the core for the next RESULT."""
    port = SimPort(staging=True)
    assert info_of(port) == NET_INFO
    for payload in image_payload(3):
        assert exchange(port, FrameType.LOAD, payload).type == FrameType.ACK
    before = port.cycles
    assert net_request(port, FrameType.RUN, 0) == ([], [], 0)
    assert StagingCore.TAKE <= port.cycles - before < StagingCore.TAKE + 200
    staged = len(port.beats)
    for request, payload in ((FrameType.LOAD, bytes([0, 0, 7])), (FrameType.LOAD, bytes([6, 1, 7, 0])),
                             (FrameType.RUN, encode_run(NET_CLASSES))):
        got = exchange(port, request, payload)
        assert (got.type, got.payload) == nack(NackCode.BUSY, request)
    assert len(port.beats) == staged
    for payload in image_payload(2):        # the next image, staged while the core computes
        assert exchange(port, FrameType.LOAD, payload).type == FrameType.ACK
    assert port.cycles - before < StagingCore.TAKE + StagingCore.COMPUTE    # the core was still computing
    assert net_request(port, FrameType.RESULT, NET_CLASSES) == (staged_words(3, 0), [(0, NET_CLASSES)], NET_CLASSES)
    assert net_request(port, FrameType.RESULT, NET_CLASSES) == ([], [], 0)     # not running: at once
    assert net_request(port, FrameType.RUN, NET_CLASSES) == (staged_words(2, 1), [(0, NET_CLASSES)], NET_CLASSES)
    assert exchange(port, FrameType.LOAD, bytes([0, 0, 7])).type == FrameType.ACK      # idle: any target
    assert net_request(port, FrameType.RUN, 2) == (staged_words(0, 2)[:2], [(0, 2)], 2)
    assert net_request(port, FrameType.RUN, 1) == nack(NackCode.BUSY, FrameType.RUN)   # 3 words still to read
    padded = staged_words(0, 2)[2:] + [0] * 6      # the core stopped within the frame: zeros, DONE counts 3
    assert net_request(port, FrameType.RESULT, 9) == (padded, [(0, 9)], 3)


def test_host_starts_and_collects_on_the_bridge():
    """LinkHost.start and result on the simulated network bridge; a request the busy core refuses is a
    NackError naming the fix (not retried), as is a RESULT of a core that is not running."""
    port = SimPort(staging=True)
    host = LinkHost(port)
    first, second = [(NET_IMAGE, a, 9) for a in range(4)], [(NET_IMAGE, a, 9) for a in range(5)]
    host.load(first)
    host.start()
    host.load(second)
    for refused, call in ((FrameType.LOAD, lambda: host.load([(0, 0, 1)])), (FrameType.RUN, host.start),
                          (FrameType.RUN, lambda: host.run(NET_CLASSES))):
        with pytest.raises(NackError, match=rf"the device refused {refused.name} frame 1 time\(s\): the core is "
                                            r"still running the previous image \(.*\): collect its logits with "
                                            r"RESULT first$"):
            call()
    assert host.retried == 0 and port.beats == first + second
    assert host.result(NET_CLASSES) == staged_words(4, 0)
    host.start()
    assert host.result(NET_CLASSES) == staged_words(5, 1)
    with pytest.raises(LinkError, match=rf"the engine returned 0 output words to RESULT, expected {NET_CLASSES}: "
                                        r"the core was not running \(start it before RESULT\)"):
        host.result(NET_CLASSES)
    assert host.run(NET_CLASSES) == staged_words(0, 2)


def request_done(port, ftype, count):
    """RUN or RESULT asking for ``count`` words: its DONE's (count, session), its OUT frames dropped."""
    port.write(encode_frame(ftype, encode_run(count)))
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        pass
    assert frame.type == FrameType.DONE
    return decode_done(frame.payload)


def test_bridge_session_is_set_by_session_stated_by_done_and_cleared_by_a_reset(bridge_form):
    """Protocol v6, layers mode: the session is 0 out of reset; SESSION sets it (ACK; nothing reaches the engine),
    every DONE states it in its word's top byte (the count in the low 24 bits: DONE stays 4 bytes) and INFO's bytes
    do not change (constants); a SESSION payload of another length is refused (LENGTH) and changes nothing; a reset
    of the board clears it (the data registers without reset of the ECP5's form included), and the DONE after it
    states 0. The host (LinkHost.begin_session) then refuses that DONE: a BoardReset."""
    port = SimPort(stall=False)
    info = exchange(port, FrameType.PING).payload
    assert info == INFO.encode()
    for payload in encode_loads(BEATS[:5], INFO):
        exchange(port, FrameType.LOAD, payload)
    assert request_done(port, FrameType.RUN, 3) == (5, 0)
    got = exchange(port, FrameType.SESSION, encode_session(0xA7))
    assert (got.type, got.payload) == (FrameType.ACK, b"") and len(port.beats) == 5
    assert exchange(port, FrameType.PING).payload == info
    port.write(encode_frame(FrameType.RUN, encode_run(3)))
    while (frame := read_frame(port.read)).type == FrameType.OUT:
        pass
    assert (frame.type, frame.payload) == (FrameType.DONE, bytes([5, 0, 0, 0xA7]))
    for bad in (b"", b"\x01\x02"):
        got = exchange(port, FrameType.SESSION, bad)
        assert (got.type, got.payload) == nack(NackCode.LENGTH, FrameType.SESSION)
    assert request_done(port, FrameType.RUN, 3) == (5, 0xA7)
    port.reset()
    assert exchange(port, FrameType.PING).payload == info
    assert request_done(port, FrameType.RUN, 3) == (0, 0)     # the engine's record is cleared too
    host = LinkHost(port)
    session = host.begin_session()
    assert 1 <= session <= 255
    host.load(BEATS[:5])
    assert host.run(5) == model_words(BEATS[:5]) and request_done(port, FrameType.RESULT, 1) == (0, session)
    port.reset()
    with pytest.raises(BoardReset, match=rf"^the DONE reply to RUN states session 0x00, not the 0x{session:02x} "
                                         r"this host set before it loaded the model: the board was reset"):
        host.run(5)
    assert host.session is None


def test_a_new_session_is_never_the_one_the_boards_last_done_stated(monkeypatch):
    """A host that begins a session after a DONE (the board's session then, another host's where one set it) draws
    every value of 1..255 but that one, so that the other host's next DONE tells it of the change; one that saw no
    DONE (or a reset board's 0) draws from all of 1..255."""
    import random

    host = LinkHost(object())                   # (the drawing only: no port read, no SESSION sent)
    monkeypatch.setattr(host, "_acknowledged", lambda *args: None)
    host._pinged = True
    rnd = random.Random(3)
    for held, allowed in ((None, set(range(1, 256))), (0, set(range(1, 256))), (1, set(range(2, 256))),
                          (213, set(range(1, 256)) - {213}), (255, set(range(1, 255)))):
        host.stated_session = held
        assert {host.begin_session(rnd) for _ in range(4000)} == allowed


def test_bridge_takes_a_session_while_the_core_runs_and_a_reset_mid_image_is_caught():
    """Network mode: SESSION is taken while the core runs (ACK, not BUSY) and disturbs nothing: the running image's
    RESULT brings its words and DONE the new session. A reset while an image runs: the RESULT's DONE states
    session 0 and no words; the host raises BoardReset rather than report a core that was not running."""
    port = SimPort(staging=True)
    host = LinkHost(port)
    host.begin_session()
    host.load([(NET_IMAGE, a, 9) for a in range(4)])
    host.start()
    second = host.begin_session()
    assert host.result(NET_CLASSES) == staged_words(4, 0) and request_done(port, FrameType.RESULT, 1) == (0, second)
    host.load([(NET_IMAGE, a, 9) for a in range(3)])
    host.start()
    port.reset()
    assert request_done(port, FrameType.RESULT, NET_CLASSES) == (0, 0)
    with pytest.raises(BoardReset, match=rf"^the DONE reply to RESULT states session 0x00, not the 0x{second:02x}"):
        host.result(NET_CLASSES)


def frame_bytes(ftype, payload):
    return encode_frame(ftype, bytes(payload))


@pytest.mark.parametrize("frame, code", [
    pytest.param(frame_bytes(FrameType.LOAD, [1, 0, 1, 2])[:-1] + b"\x00", NackCode.CRC, id="checksum"),
    pytest.param(frame_bytes(FrameType.LOAD, [1, 0, 1, 2, 3]), NackCode.LENGTH, id="not-whole-words"),
    pytest.param(frame_bytes(FrameType.LOAD, [1, 0]), NackCode.LENGTH, id="no-words"),
    pytest.param(frame_bytes(FrameType.LOAD, [0] * 36), NackCode.LENGTH, id="over-max"),
    pytest.param(frame_bytes(FrameType.LOAD, [2, 0, 1, 2]), NackCode.TARGET, id="absent-target"),
    pytest.param(frame_bytes(FrameType.LOAD, [7, 0, 1]), NackCode.TARGET, id="unknown-target"),
    pytest.param(frame_bytes(FrameType.RUN, [1, 0, 0, 0]), NackCode.LENGTH, id="run-short"),
    pytest.param(frame_bytes(FrameType.RUN, [1, 0, 0, 0, 2]), NackCode.LENGTH, id="run-format"),
    pytest.param(frame_bytes(FrameType.PING, [1]), NackCode.LENGTH, id="ping-payload"),
    pytest.param(frame_bytes(0x42, [0xA5, 0, 0]), NackCode.TYPE, id="unknown-type"),
    pytest.param(frame_bytes(FrameType.LOAD, [0] * 8)[:7], NackCode.TIMEOUT, id="truncated"),
])
@pytest.mark.parametrize("gap", [1, 2], ids=["back-to-back", "every-other-cycle"])
def test_bridge_error_then_recovery(frame, code, gap):
    """A bad frame is NACKed with its code, reaches nothing, and the next frame works, its bytes a cycle
    apart or two."""
    port = SimPort(gap=gap)
    port.write(b"\x00\x13")  # noise before a frame is skipped
    port.write(frame)
    got = read_frame(port.read)
    assert (got.type, got.payload) == nack(code, frame[1])
    assert port.beats == []
    got = exchange(port, FrameType.LOAD, encode_loads(BEATS[:2], INFO)[0])
    assert got.type == FrameType.ACK and port.beats == BEATS[:2]


def test_bridge_framing_error():
    """A byte without its stop bit mid-frame is NACKed with FRAMING."""
    port = SimPort(divisor=4, stall=False)
    frame = encode_frame(FrameType.PING)
    port.write_bits([b for byte in frame[:2] for b in uart_bits(byte)] + uart_bits(0, stop=0))
    got = read_frame(port.read)
    assert (got.type, got.payload) == nack(NackCode.FRAMING, FrameType.PING)
    assert exchange(port, FrameType.PING).type == FrameType.INFO


WIDTHS = (8, 16, 0, 0, 0, 8)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, WIDTHS, 8, 1, 1), {}, r"Address width must be an integer in 1\.\.65535, not 0"),
    ((8, (), 8, 1, 1), {}, r"Target widths must be 1\.\.255 numbers"),
    ((8, (8,) * 256, 8, 1, 1), {}, r"Target widths must be 1\.\.255 numbers"),
    ((8, WIDTHS, 8, 1, 1), {"mode": 7}, r"Mode must be one of LAYERS, NETWORK, not 7"),
    ((8, WIDTHS, 8, 1, 1), {"classes": 10}, r"Class count must be 0 in layers mode, not 10"),
    ((8, WIDTHS, 8, 1, 1), {"mode": LinkMode.NETWORK}, r"Class count must be an integer in 1\.\.65535, not 0"),
    ((8, WIDTHS, 8, 1, 1), {"mode": LinkMode.NETWORK, "classes": 3, "code_bits": 2},
     r"Code width must be 0 in network mode"),
    ((8, WIDTHS, 8, 1, 1), {"image_target": 1}, r"Image target must be None in layers mode"),
    ((8, WIDTHS, 8, 1, 1), {"mode": LinkMode.NETWORK, "classes": 3, "image_target": 2},
     r"Image target must be None or one of the targets with data bits \(0\.\.5\), not 2"),
    ((8, WIDTHS, 8, 1, 1), {"mode": LinkMode.NETWORK, "classes": 3, "image_target": 6},
     r"Image target must be None or one of the targets with data bits \(0\.\.5\), not 6"),
    ((8, WIDTHS, 8, 1, 1), {"signature": EngineSignature(7, 16, 8)},
     r"does not fit the bridge: a 7-bit load addr field, narrower than the 8 bits it needs"),
    ((8, WIDTHS, 8, 1, 1), {"signature": EngineSignature(8, 16, 9)},
     r"does not fit the bridge: 9-bit output words, not the 8 of out_bits"),
    ((8, (8,) * 9, 8, 1, 1), {"signature": EngineSignature(8, 16, 8)},
     r"a 3-bit load target field, narrower than the 4 bits it needs"),
    ((8, (0,) * 6, 8, 1, 1), {}, r"Target widths must name at least one target"),
    ((8, WIDTHS, 8, 1, 70000), {}, r"Column count must be an integer in 1\.\.65535, not 70000"),
    ((8, WIDTHS, 10, 1, 4), {}, r"Output word width 10 must be whole fields of 4 columns"),
    ((8, WIDTHS, 8, 1, 2), {"code_bits": 5}, r"Code width must be an integer in 0\.\.4, not 5"),
    ((8, WIDTHS, 8, 1, 1), {"max_payload": 3},
     r"Maximum payload must be an integer in 5\.\.65535, not 3"),
    ((8, WIDTHS, 8, 1, 1), {"timeout_cycles": 0},
     r"Timeout must be a positive number of cycles, not 0"),
    ((8, WIDTHS, 8, 1, 1), {"build": 1 << 32}, r"Build digest must be an integer in 0\.\.4294967295, not 4294967296"),
    ((8, WIDTHS, 8, 1, 1), {"build": -1}, r"Build digest must be an integer in 0\.\.4294967295, not -1"),
    ((8, WIDTHS, 8, 1, 1), {"build": True}, r"Build digest must be an integer in 0\.\.4294967295, not True"),
])
def test_bridge_parameter_errors(args, kwargs, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match=message):
            LinkBridge(*args, **kwargs)
        gc.collect()  # the half-built bridge, while its warning is ignored


# Host side, pure Python

def test_crc16_check_value():
    assert crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE's published check value
    frame = encode_frame(FrameType.LOAD, b"\x01\x02\x03")
    assert crc16(frame[1:]) == 0


def test_frame_round_trip_and_errors():
    # hw.link's layout: SYNC 0xA5 | TYPE (OUT 0x83) | LEN lo, hi | PAYLOAD | CRC hi, lo, the CRC-16/CCITT-FALSE
    # of TYPE .. PAYLOAD, 0x27AC here as the standard library's CRC-CCITT (crc_hqx, init 0xFFFF) computes it.
    body = bytes([0x83, 9, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert binascii.crc_hqx(body, 0xFFFF) == 0x27AC and crc16(b"123456789") == 0x29B1   # the catalogue's check value
    expected = bytes([0xA5]) + body + bytes([0x27, 0xAC])
    frame = encode_frame(FrameType.OUT, bytes(range(9)))
    assert frame[:4] == bytes([0xA5, 0x83, 9, 0])
    assert frame == expected
    assert decode_frame(expected) == Frame(0x83, bytes(range(9)))
    assert decode_frame(frame).payload == bytes(range(9))
    with pytest.raises(FrameError, match=r"checksum mismatch in OUT frame"):
        decode_frame(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(FrameError, match=r"expected the sync byte 0xa5 .* got 0x00"):
        decode_frame(b"\x00" + frame)
    with pytest.raises(LinkTimeout, match=r"got 3 of the 9 bytes of its 9-byte payload"):
        decode_frame(frame[:7])
    with pytest.raises(FrameError, match=r"1 stray byte"):
        decode_frame(frame + b"\x00")


def test_loads_and_words():
    info = LinkInfo(PROTOCOL_VERSION, 10, 20, 3, 4, 9, 3, (9, 16, 0, 0, 0, 4))
    assert info.addr_bytes == 2 and info.out_bytes() == 3 and info.out_bytes(OutputFormat.CODES) == 2
    assert encode_loads([(0, 0x2FF, 0x123)], info) == [bytes([0, 0xFF, 0x02, 0x23, 0x01])]
    beats = [(1, 5 + i, i) for i in range(4)] + [(5, 9, 1), (5, 7, 2)]
    assert encode_loads(beats, info) == [bytes([1, 5, 0, 0, 0, 1, 0, 2, 0]), bytes([1, 8, 0, 3, 0]),
                                         bytes([5, 9, 0, 1]), bytes([5, 7, 0, 2])]
    assert decode_words(bytes([1, 2, 3, 4, 5, 6]), info) == [0x030201, 0x060504]
    assert decode_words(bytes([0b11_010_001, 0b0000_1_110]), info, OutputFormat.CODES) == [
        1 | 2 << 5 | 3 << 10 | 7 << 15]
    with pytest.raises(ValueError, match=r"Load beat 1: address 1024 does not fit in 10 bits"):
        encode_loads([(0, 0, 0), (0, 1024, 0)], info)
    with pytest.raises(ValueError, match=r"Load beat 0: target 2 is not a target of this engine"):
        encode_loads([(2, 0, 0)], info)
    with pytest.raises(ValueError, match=r"Load beat 0: data 16 does not fit in 4 bits"):
        encode_loads([(5, 0, 16)], info)
    with pytest.raises(FrameError, match=r"not a multiple of the 3-byte word"):
        decode_words(bytes(4), info)
    assert encode_out(0x0102, bytes([1, 2, 3])) == bytes([2, 1, 0, 0, 1, 2, 3])
    assert decode_out(encode_out(70_000, bytes([1, 2, 3, 4, 5, 6])), info) == (70_000, [0x030201, 0x060504])
    assert info.out_frame_words() == 1 and info.out_frame_words(OutputFormat.CODES) == 2
    with pytest.raises(FrameError, match=r"OUT frame has 3 payload bytes, fewer than the 4 of its first word's "
                                         r"index"):
        decode_out(bytes(3), info)


class SilentPort:
    def write(self, data):
        pass

    def read(self, n):
        return b""


def test_host_timeout_and_serial_errors(monkeypatch):
    with pytest.raises(LinkTimeout, match=r"timed out waiting for the INFO reply to PING"):
        LinkHost(SilentPort()).ping()
    monkeypatch.setitem(sys.modules, "serial", None)
    with pytest.raises(LinkError, match=r"pip install pyserial"):
        SerialPort("/dev/ttyUSB9", 3_000_000)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_serial_write_the_device_does_not_read_ends():
    """A device that stopped reading (a pty whose other end nobody reads): the write ends after the port's
    timeout plus the time the longest frame takes at the baud rate, in a LinkError naming the port."""
    pytest.importorskip("serial")
    master, slave = os.openpty()
    path, failed = os.ttyname(slave), []
    try:
        with SerialPort(path, 3_000_000, timeout=0.2) as port:
            def write():
                try:
                    port.write(bytes(1 << 20))
                except LinkError as e:
                    failed.append(e)
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join(10)
            assert failed and re.fullmatch(rf"writing to serial port '{path}' took more than 0\.4 s: the device "
                                           r"stopped reading .*reset the board and run again", str(failed[0]))
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_serial_port_that_fails_is_a_link_error():
    """The device end gone (a board unplugged: here the pty's other end closed): reads, writes and flushes fail
    with a LinkError naming the port."""
    pytest.importorskip("serial")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    port = SerialPort(path, 3_000_000, timeout=0.2)
    os.close(master)
    try:
        for doing, call in [("reading", lambda: port.read(4)), ("writing", lambda: port.write(b"x")),
                            ("clearing its input", port.reset_input_buffer)]:
            with pytest.raises(LinkError, match=rf"serial port '{path}' failed while {doing} \(.*\): was the board "
                                                r"unplugged or reset\?"):
                call()
    finally:
        port.close()
        os.close(slave)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_serial_port_closed_while_the_host_waits_says_so():
    """The program closes the port (another thread, a `with` block that ended) while the host waits for a reply:
    pyserial's read failed in a TypeError ('NoneType' object cannot be interpreted as an integer), or said to plug the
    board in. Now a LinkError says that this program closed the port, within the wait, and the same for each later
    read, write and flush."""
    pytest.importorskip("serial")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    port = SerialPort(path, 3_000_000, timeout=10.0)
    reading, real = threading.Event(), port._serial.read

    def read(n):
        reading.set()
        return real(n)

    port._serial.read = read
    closer = threading.Thread(target=lambda: reading.wait(10) and port.close(), daemon=True)
    closed = rf"serial port '{path}' was closed by this program while {{}}: open it again \(a new SerialPort\)"
    try:
        closer.start()
        start = time.monotonic()
        with pytest.raises(LinkError, match=closed.format("reading")):
            LinkHost(port).ping()
        assert time.monotonic() - start < 5
        closer.join(10)
        for doing, call in [("reading", lambda: port.read(4)), ("writing", lambda: port.write(b"x")),
                            ("clearing its input", port.reset_input_buffer)]:
            with pytest.raises(LinkError, match=closed.format(doing)):
                call()
    finally:
        port.close()
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux names pseudo-terminals /dev/pts/N")
def test_a_pseudo_terminal_port_that_is_gone_names_lcq_board_sim():
    """`lcq board-sim`'s port (/dev/pts/N) before the board runs, or after it stopped: the error said only to
    plug the board in; it now says that the port is a pseudo-terminal and to start `lcq board-sim`, which prints
    the port. The same once the port fails while in use (the board stopped mid-run)."""
    pytest.importorskip("serial")
    gone = "/dev/pts/987654"
    with pytest.raises(LinkError, match=r"cannot open serial port '/dev/pts/987654' .*a pseudo-terminal: is "
                                        r"`lcq board-sim` running\? Start it and pass the port it prints"):
        SerialPort(gone, 3_000_000, timeout=0.2)
    master, slave = os.openpty()
    port = SerialPort(os.ttyname(slave), 3_000_000, timeout=0.2)
    os.close(master)
    try:
        with pytest.raises(LinkError, match=r"failed while reading .*a pseudo-terminal: is `lcq board-sim` "
                                            r"running\? Start it and pass the port it prints"):
            port.read(4)
    finally:
        port.close()
        os.close(slave)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_serial_port_another_session_holds_is_refused():
    """Two sessions on one port would each take the other's replies for their own: the second open is a
    LinkError naming the port and the fix; the port opens again once the first session closed it."""
    pytest.importorskip("serial")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        with SerialPort(path, 3_000_000, timeout=0.2):
            with pytest.raises(LinkError, match=rf"serial port '{path}' is in use by another program \(.*\): close "
                                                r"it \(another `lcq run`, a terminal\) and run again"):
                SerialPort(path, 3_000_000, timeout=0.2)
        SerialPort(path, 3_000_000, timeout=0.2).close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_serial_port_the_user_may_not_open_says_how_to_get_access(monkeypatch):
    """pyserial's error for a device the user lacks permission on (not in its group): the LinkError says so and
    how to get access, not to check the cable and port name."""
    serial = pytest.importorskip("serial")

    def denied(path, *args, **kwargs):
        raise serial.SerialException(errno.EACCES, f"could not open port {path}: [Errno 13] Permission denied: "
                                                   f"{path!r}")

    monkeypatch.setattr(serial, "Serial", denied)
    with pytest.raises(LinkError, match=r"cannot open serial port '/dev/ttyUSB1' at 3000000 baud \(.*Permission "
                                        r"denied.*\): this user may not use it; add the user to the group that owns "
                                        r"it \(`ls -l /dev/ttyUSB1`; dialout on Debian and Ubuntu\), log in again"):
        SerialPort("/dev/ttyUSB1", 3_000_000)


# Host and simulated device, end to end

def test_host_end_to_end_bytes():
    port = SimPort()
    host = LinkHost(port)
    assert host.ping().max_payload == 32
    host.load(BEATS)
    assert port.beats == BEATS
    assert host.run(len(BEATS)) == model_words(BEATS)
    with pytest.raises(LinkError, match=rf"the engine returned {len(BEATS)} output words to RUN, expected "
                                        rf"{len(BEATS) + 1}: the loaded model does not match"):
        host.run(len(BEATS) + 1)
    assert host.run(len(BEATS), OutputFormat.CODES) == run_words(port, len(BEATS), OutputFormat.CODES)[0]


def test_host_end_to_end_uart():
    """Through UartRx/UartTx at 4 clock cycles per bit."""
    port = SimPort(divisor=4, timeout_cycles=200)
    host = LinkHost(port)
    beats = BEATS[:9]
    host.load(beats)
    assert port.beats == beats
    assert host.run(len(beats)) == model_words(beats)


class CorruptingPort(SimPort):
    """Flips a payload bit in the first ``bad`` LOAD frames."""

    def __init__(self, bad, **kwargs):
        super().__init__(**kwargs)
        self.bad = bad

    def write(self, data):
        if data[1] == FrameType.LOAD and self.bad:
            self.bad -= 1
            data = data[:5] + bytes([data[5] ^ 0x10]) + data[6:]
        super().write(data)


def test_host_retries_nacked_load():
    port = CorruptingPort(bad=2)
    LinkHost(port, retries=2).load(BEATS[:3])
    assert port.beats == BEATS[:3]
    port = CorruptingPort(bad=3)
    with pytest.raises(NackError, match=r"refused LOAD frame 3 time\(s\): its checksum did not "
                                        r"match"):
        LinkHost(port, retries=2).load(BEATS[:3])
    assert port.beats == []


class HeaderDamagingPort(SimPort):
    """Damages the first ``bad`` requests of type ``ftype`` on their way to the bridge with ``damage``
    (frame bytes -> the bytes that arrive)."""

    def __init__(self, ftype, damage, bad=1, **kwargs):
        super().__init__(**kwargs)
        self.ftype, self.damage, self.bad = ftype, damage, bad

    def write(self, data):
        if data[1] == self.ftype and self.bad:
            self.bad -= 1
            data = self.damage(data)
        super().write(data)


@pytest.mark.parametrize("damage, code", [
    pytest.param(lambda f: f[:2] + f[3:], NackCode.LENGTH, id="length-byte-lost"),
    pytest.param(lambda f: f[:3] + bytes([f[3] ^ 0x80]) + f[4:], NackCode.LENGTH, id="length-bit-flipped"),
    pytest.param(lambda f: bytes([f[0] ^ 0x04]) + f[1:], NackCode.TYPE, id="sync-lost-type-from-payload"),
    pytest.param(lambda f: b"\xa5" + f, NackCode.TYPE, id="noise-byte-equal-to-sync"),
])
def test_host_resends_a_frame_whose_header_was_damaged_on_the_line(damage, code):
    """The bridge tests a frame's type and length before its checksum, so line noise in a request's header
    comes back as NACK TYPE or LENGTH, not CRC: a LOAD so refused is sent again, and a RUN so refused is run
    again by load_and_run (the host's own frames always have known types and lengths right for INFO)."""
    beats = [(1, 10, 0x0A5), (1, 11, 7), (1, 12, 0xFFF)]     # a sync byte in the payload, then type 0x00
    port = HeaderDamagingPort(FrameType.LOAD, damage, bad=2, stall=False, timeout=2_000)
    port.write(encode_frame(FrameType.LOAD, encode_loads(beats, INFO)[0]))
    got = read_frame(port.read)
    assert got.type == FrameType.NACK and got.payload[0] == code and port.beats == []
    host = LinkHost(port, retries=1)
    host.load(beats)
    assert port.beats == beats and host.retried == 1
    port.ftype, port.bad = FrameType.RUN, 1
    assert host.load_and_run([], 3) == model_words(beats) and host.repeated == 1


def split_frames(data: bytes) -> list[bytes]:
    """The frames ``data`` holds back to back (the last one cut short where ``data`` ends)."""
    frames = []
    while len(data) >= 4:
        end = FRAME_BYTES + int.from_bytes(data[2:4], "little")
        frames.append(data[:end])
        data = data[end:]
    return frames + ([data] if data else [])


class TamperingPort(SimPort):
    """Hands the bridge's whole reply to the next RUN (once ``tamper`` is set) to ``tamper``: its
    frames -> the frames the host gets."""

    tamper = None

    def write(self, data):
        super().write(data)
        if data[1] != FrameType.RUN or self.tamper is None:
            return
        start, frames = self.cycles, []
        done = FRAME_BYTES + struct.calcsize(DONE_FORMAT)
        while not frames or len(frames[-1]) != done or frames[-1][1] != FrameType.DONE:
            assert self.cycles - start < self.timeout, f"no DONE within {self.timeout} cycles: {frames}"
            self.advance(50)
            frames = split_frames(bytes(self.from_device))
        self.from_device[:] = b"".join(self.tamper(frames))
        self.tamper = None


@pytest.mark.parametrize("twice, message", [
    (0, r"OUT frame of words 0\.\.8 in RUN output \(word 9 of 18, or DONE\): it arrived twice or out of order"),
    (1, r"OUT frame of words 9\.\.17 in RUN output \(word 0 of 18, or DONE\): the frames before it were lost"),
])
def test_host_refuses_a_lost_and_a_duplicated_out_frame_of_the_bridge(twice, message):
    """The bridge's reply to an 18-word RUN (OUT frames of words 0-8 and 9-17, DONE) with one OUT frame lost
    and the other twice: the word count matches, but the frame that does not start at the next word gives it
    away. ``run`` raises; ``load_and_run`` resyncs and runs the layer again (no beats: the recording engine
    keeps those loaded before), to the right words."""
    def lose_one_repeat_the_other(frames):
        assert [f[1] for f in frames] == [FrameType.OUT, FrameType.OUT, FrameType.DONE]
        return [frames[twice], frames[twice], frames[2]]

    # Each resync drains the port until it times out (twice here): a port timeout of 2,000 cycles, well
    # above the few hundred a reply takes, instead of 20,000 (5 s of simulation each).
    port = TamperingPort(stall=False, timeout=2_000)
    host = LinkHost(port, retries=1)
    host.load(BEATS)
    port.tamper = lose_one_repeat_the_other
    with pytest.raises(FrameError, match=message):
        host.run(len(BEATS))
    host.resync()
    assert host.run(len(BEATS)) == model_words(BEATS)
    port.tamper = lose_one_repeat_the_other
    assert host.load_and_run([], len(BEATS)) == model_words(BEATS)
    assert host.repeated == 1 and host.resyncs == 2


# Every wait of the host has a deadline and a bounded number of retries; impossible INFO is refused.

import dataclasses  # noqa: E402
import time  # noqa: E402

from boards.link_host import RUN_WORDS_MAX  # noqa: E402


class ScriptPort:
    """A device as a function: ``reply(request bytes) -> bytes`` queued for ``read`` (which returns
    fewer bytes when the queue runs dry, as a port that timed out); ``writes`` lists the requests."""

    def __init__(self, reply):
        self.reply, self.queue, self.writes = reply, bytearray(), []

    def write(self, data):
        self.writes.append(bytes(data))
        self.queue += self.reply(bytes(data))

    def read(self, n):
        got = bytes(self.queue[:n])
        del self.queue[:n]
        return got


def done_frame(count, session=0):
    """A DONE frame of ``count`` words and ``session``."""
    return encode_frame(FrameType.DONE, encode_done(count, session))


def answers(info_payload=INFO.encode(), run=b""):
    """PING -> INFO of ``info_payload``, LOAD -> ACK, RUN -> ``run``."""
    return lambda request: {FrameType.PING: encode_frame(FrameType.INFO, info_payload),
                            FrameType.LOAD: encode_frame(FrameType.ACK), FrameType.RUN: run}[request[1]]


@pytest.mark.parametrize("fields, problem", [
    ({"out_bits": 0}, r"out_bits 0: output words of 0 bytes"),
    ({"rows": 0}, r"rows 0, not at least 1"),
    ({"cols": 0}, r"cols 0, not at least 1"),
    ({"addr_bits": 0}, r"addr_bits 0, not at least 1"),
    ({"target_bits": (0,) * 6}, r"no load target \(every target's data bits are 0\)"),
    ({"out_bits": 10}, r"out_bits 10 is not whole fields of 4 columns"),
    ({"code_bits": 7}, r"code_bits 7 wider than a 6-bit column field"),
    ({"mode": 7}, r"mode 7, not one of 0 \(layers\), 1 \(network\)"),
    ({"classes": 10}, r"classes 10 in layers mode, not 0"),
    ({"mode": LinkMode.NETWORK}, r"classes 0 in network mode, not at least 1"),
    ({"mode": LinkMode.NETWORK, "classes": 10}, r"code_bits 2 in network mode, not 0"),
    ({"target_bits": ()}, r"0 load targets, not 1\.\.255"),
    ({"max_payload": 6}, r"max_payload 6 smaller than the 7 bytes the largest payload needs \(a LOAD header and "
                         r"word, a RUN request or an OUT frame of one word\)"),
])
def test_impossible_info_is_refused(fields, problem):
    bad = dataclasses.replace(INFO, **fields)
    with pytest.raises(FrameError, match=r"INFO reply states impossible parameters \(" + problem + r".*\): it does "
                                         r"not come from a link bridge of this project"):
        LinkInfo.decode(bad.encode())
    port = ScriptPort(answers(bad.encode()))
    with pytest.raises(FrameError, match=r"no valid INFO reply to 2 PING\(s\) while resynchronizing \(the last: "
                                         r"INFO reply states impossible parameters \(" + problem):
        LinkHost(port, retries=1).info
    assert len(port.writes) == 3         # the first PING, then the resync's two


def test_another_protocol_version_is_refused_at_once():
    """A version 6 bitstream (INFO without the build: it could not tell two builds of the same widths apart), a
    version 5 one (the same INFO layout as 6, but a DONE without the session: it could not tell a reset), a version 4
    one (no RESULT): the host says so and to rebuild it, after one PING (pinging again would not help); a version 3
    one (no mode, always 6 load targets) too; a newer one: update the host."""
    assert PROTOCOL_VERSION == 7
    v3 = struct.pack(f"<B6H{len(TARGET_WIDTHS)}H", 3, ADDR_BITS, OUT_BITS, 3, COLS, 32, CODE_BITS, *TARGET_WIDTHS)
    v6 = (struct.pack("<BB7HB", 6, LinkMode.NETWORK, ADDR_BITS, NET_OUT_BITS, 2, COLS, 32, 0, NET_CLASSES,
                      len(NET_TARGETS)) + struct.pack(f"<{len(NET_TARGETS)}H", *NET_TARGETS))
    v5, v4 = bytes([5]) + v6[1:], bytes([4]) + v6[1:]
    for old, version in ((v6, 6), (v5, 5), (v4, 4), (v3, 3)):
        rebuild = (rf"the board's bitstream speaks link protocol version {version}, this host version 7: rebuild the "
                   r"bitstream with this version of the project \(`lcq build MODEL --board NAME`\) and flash it")
        with pytest.raises(VersionError, match=rebuild):
            LinkInfo.decode(old)
        port = ScriptPort(answers(old))
        with pytest.raises(VersionError, match=rebuild):
            LinkHost(port, retries=2).info
        assert len(port.writes) == 1
    with pytest.raises(VersionError, match=r"speaks link protocol version 8, this host version 7: update the host"):
        LinkInfo.decode(dataclasses.replace(INFO, version=8).encode())
    with pytest.raises(VersionError, match=r"speaks link protocol version 1, this host version 7: rebuild"):
        LinkInfo.decode(bytes([1, 0, 0]))           # whatever a version's INFO holds, its first byte is the version


@pytest.mark.parametrize("args, kwargs", [
    ((8, (8, 16, 0, 0, 0, 8), 10, 1, 4), {}),
    ((8, (8, 16, 0, 0, 0, 8), 8, 1, 2), {"code_bits": 5}),
    ((8, (8, 16, 0, 0, 0, 8), 8, 1, 1), {"max_payload": 3}),
    ((0, (8, 16, 0, 0, 0, 8), 8, 1, 1), {}),
])
def test_host_refuses_every_info_the_bridge_refuses_and_takes_the_rest(args, kwargs):
    """One rule set: the parameters LinkBridge refuses make an INFO the host refuses."""
    addr, targets, out, rows, cols = args
    info = LinkInfo(PROTOCOL_VERSION, addr, out, rows, cols, kwargs.get("max_payload", 256), kwargs.get("code_bits", 0),
                    targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError):
            LinkBridge(*args, **kwargs)
        gc.collect()
    assert info.problems()
    with pytest.raises(FrameError, match="impossible parameters"):
        LinkInfo.decode(info.encode())


def test_host_takes_the_info_of_every_bridge():
    """The bridge of these tests and a minimal one: INFO the host takes as sent, its build too (0 by default, the
    largest 32-bit digest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        bridge = LinkBridge(ADDR_BITS, TARGET_WIDTHS, OUT_BITS, rows=3, cols=COLS, code_bits=CODE_BITS, max_payload=32,
                            build=BUILD)
        assert LinkInfo.decode(bridge.info_payload()) == INFO
        minimal = LinkBridge(1, (1, 0, 0, 0, 0, 0), 1, 1, 1, max_payload=5)
        assert LinkInfo.decode(minimal.info_payload()).problems() == []
        assert LinkInfo.decode(minimal.info_payload()).build == 0
        largest = LinkBridge(1, (1, 0, 0, 0, 0, 0), 1, 1, 1, max_payload=5, build=0xFFFFFFFF)
        assert LinkInfo.decode(largest.info_payload()).build == 0xFFFFFFFF
        del largest
        del bridge, minimal
        gc.collect()


def test_the_board_cores_state_the_build_digest_of_their_parameters():
    """The gateware's INFO bytes (the bridge's constants, as :mod:`boards.top` builds each mode's core) are those the
    host expects of the parameters it uses: the network core's are :func:`boards.traffic.network_info`'s, and each
    states :func:`hw.network_params.build_digest` of its parameters, which a round trip through the report's
    ``describe`` keeps; a runner given those parameters takes the INFO."""
    from boards.runtime import BoardRunner, NetworkRunner
    from boards.top import AcceleratorCore, NetworkAcceleratorCore
    from boards.traffic import network_info
    from hw.engine_params import EngineParams
    from hw.network_params import NetworkParams, build_digest

    model, params, _ = _digits()
    engine = EngineParams.for_model(model, 2, 4, resident="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        network_payload = NetworkAcceleratorCore(params, model.num_classes, 100, max_payload=512).bridge.info_payload()
        layers_payload = AcceleratorCore(engine, 100, max_payload=512).bridge.info_payload()
        gc.collect()
    assert network_payload == network_info(model, params, 512).encode()
    assert LinkInfo.decode(network_payload).build == build_digest(params) == \
        build_digest(NetworkParams.from_dict(params.describe()))
    assert LinkInfo.decode(layers_payload).build == build_digest(engine) == \
        build_digest(EngineParams.from_dict(engine.describe()))
    assert build_digest(params) != build_digest(engine)
    NetworkRunner(LinkHost(ScriptPort(answers(network_payload))), model, params)
    BoardRunner(LinkHost(ScriptPort(answers(layers_payload))), model, engine, "all")


def test_zero_byte_words_are_an_error_not_a_division_by_zero():
    with pytest.raises(FrameError, match=r"INFO states FULL output words of 0 bytes \(out_bits 0"):
        decode_words(b"\x00\x00", dataclasses.replace(INFO, out_bits=0))
    with pytest.raises(FrameError, match=r"INFO states CODES output words of 0 bytes"):
        decode_words(b"\x00", dataclasses.replace(INFO, code_bits=0), OutputFormat.CODES)


def test_resync_gives_up_on_a_device_that_never_stops_sending():
    """Noise forever (the reported hang): at most ``drain_bytes`` are drained, then LinkNoise."""
    class Noise:
        reads = 0

        def write(self, data):
            pass

        def read(self, n):
            Noise.reads += 1
            return bytes([0x5A]) * n

    start = time.monotonic()
    with pytest.raises(LinkNoise, match=r"the line did not go quiet while resynchronizing: 102,400 bytes arrived in "
                                        r"25 reads \(.* s\) and kept coming \(at most 100,000 bytes and 8 reads cut "
                                        r"short by the port's timeout were expected\); the device keeps sending: "
                                        r"check the baud rate"):
        LinkHost(Noise(), drain_bytes=100_000).resync()
    assert Noise.reads == 25 and time.monotonic() - start < 5


def test_resync_stops_a_trickle_and_a_slow_babbler():
    """A device that sends a byte per port timeout forever: nine reads cut short end the drain.
    One that sends full reads slowly: the optional wall-clock deadline ends it."""
    class Trickle:
        reads = 0

        def write(self, data):
            pass

        def read(self, n):
            Trickle.reads += 1
            return b"\x00"

    with pytest.raises(LinkNoise, match=r"9 bytes arrived in 9 reads \(.*\) and kept coming \(at most 1,048,576 "
                                        r"bytes and 8 reads cut short by the port's timeout were expected\)"):
        LinkHost(Trickle()).resync()
    assert Trickle.reads == 9

    class Slow:
        def write(self, data):
            pass

        def read(self, n):
            time.sleep(0.02)
            return bytes(n)

    start = time.monotonic()
    with pytest.raises(LinkNoise, match=r"reads \(0\.[3-9] s\) and kept coming \(at most 1,048,576 bytes and 8 reads "
                                        r"cut short by the port's timeout, in 0\.3 s were expected\)"):
        LinkHost(Slow(), deadline=0.3).resync()
    assert time.monotonic() - start < 3


def test_a_reply_that_comes_too_slowly_misses_its_deadline():
    class Slow(ScriptPort):
        def read(self, n):
            time.sleep(0.05)
            return super().read(n)

    # how many bytes come before the deadline depends on how late the machine wakes from each sleep
    with pytest.raises(LinkTimeout, match=r"the INFO reply to PING did not arrive within the 0\.12 s deadline \(\d+ "
                                          r"bytes? of it came, too slowly\)"):
        LinkHost(Slow(answers()), deadline=0.12).ping()


def test_run_ends_on_endless_empty_out_frames():
    """The reported hang: a device answering RUN with empty OUT frames forever."""
    port = ScriptPort(answers(run=encode_frame(FrameType.OUT) * 100_000))
    with pytest.raises(FrameError, match=r"empty OUT frame in RUN output \(word 0 of 3, or DONE\): the device sends "
                                         r"at least one word per OUT frame"):
        LinkHost(port).run(3)


def test_run_reads_at_most_one_out_frame_per_word():
    """A device sending valid one-word OUT frames of consecutive words forever: the fourth word of
    three ends the RUN; one sending the first word forever: its second frame does."""
    port = ScriptPort(answers(run=b"".join(encode_frame(FrameType.OUT, encode_out(i, bytes(3)))
                                           for i in range(10_000))))
    with pytest.raises(FrameError, match=r"the device sent 4 output words, more than the 3 asked for: host and "
                                         r"gateware speak different protocols \(rebuild the bitstream\)"):
        LinkHost(port).run(3)
    assert len(port.queue) == (10_000 - 4) * (FRAME_BYTES + OUT_HEAD_BYTES + 3)
    port = ScriptPort(answers(run=encode_frame(FrameType.OUT, encode_out(0, bytes(3))) * 10_000))
    with pytest.raises(FrameError, match=r"OUT frame of words 0\.\.0 in RUN output \(word 1 of 3, or DONE\): it "
                                         r"arrived twice or out of order"):
        LinkHost(port).run(3)
    assert len(port.queue) == (10_000 - 2) * (FRAME_BYTES + OUT_HEAD_BYTES + 3)


def test_a_length_beyond_any_reply_is_refused_before_its_payload_is_read():
    reads = []
    stream = memoryview(encode_frame(FrameType.OUT, bytes(40_000)))

    def read(n):
        nonlocal stream
        reads.append(n)
        got, stream = bytes(stream[:n]), stream[n:]
        return got

    with pytest.raises(FrameError, match=r"OUT frame announces 40000 payload bytes, more than the 32 of any frame of "
                                         r"RUN output: its length was damaged on the line or the link is out of step"):
        read_frame(read, "RUN output", max_length=32)
    assert reads == [1, 3]


def test_resync_pings_a_bounded_number_of_times():
    """A device whose every INFO comes back damaged: retries + 1 PINGs, then the last error."""
    bad = bytearray(encode_frame(FrameType.INFO, INFO.encode()))
    bad[7] ^= 0x01
    port = ScriptPort(lambda request: bytes(bad))
    with pytest.raises(FrameError, match=r"no valid INFO reply to 3 PING\(s\) while resynchronizing \(the last: "
                                         r"checksum mismatch in INFO frame .*\); reset the board"):
        LinkHost(port, retries=2).resync()
    assert len(port.writes) == 3


def test_a_silent_device_is_reported_at_once_and_a_damaged_first_reply_is_recovered():
    port = ScriptPort(lambda request: b"")
    with pytest.raises(LinkTimeout, match=r"timed out waiting for the INFO reply to PING: got 0 of the 1 bytes"):
        LinkHost(port).info
    assert len(port.writes) == 1         # nothing came at all: no resync
    first = [True]

    def damaged_once(request):
        frame = encode_frame(FrameType.INFO, INFO.encode())
        if first[0]:
            first[0] = False
            return frame[:5] + bytes([frame[5] ^ 4]) + frame[6:]
        return frame

    host = LinkHost(ScriptPort(damaged_once))
    assert host.info == INFO and host.resyncs == 1


def test_a_device_whose_parameters_changed_mid_session_is_refused_at_its_next_ping():
    """A resync whose INFO states other parameters than the session's first (another bitstream flashed, another board
    on the port): the frames the host encodes and the runner's checks were for the first, so it is an error, not a
    recovery; the same INFO again is one."""
    port = ScriptPort(answers())
    host = LinkHost(port)
    assert host.info == INFO and host.resync() == INFO
    port.reply = answers(dataclasses.replace(INFO, max_payload=64).encode())
    with pytest.raises(LinkError, match=r"the device's parameters changed since this session's first PING "
                                        r"\(max_payload 32 -> 64\): another bitstream was flashed, or another board "
                                        r"answers on the port; run again"):
        host.resync()
    assert host.info == INFO


def test_stale_bytes_are_discarded_before_each_request():
    class Buffered(ScriptPort):
        def reset_input_buffer(self):
            self.queue.clear()

    port = Buffered(answers())
    port.queue += encode_frame(FrameType.ACK) + b"\x00\x13"        # a duplicated reply and noise
    assert LinkHost(port).ping() == INFO


def test_link_host_parameters_and_run_requests_are_checked():
    for kwargs, message in (({"retries": -1}, r"Retries must be a non-negative integer, not -1"),
                            ({"deadline": 0}, r"Deadline must be None or a finite number of seconds > 0, not 0"),
                            ({"deadline": float("inf")}, r"Deadline must be None or a finite number of seconds > 0, "
                                                         r"not inf"),
                            ({"drain_bytes": 0}, r"Drain limit must be a positive number of bytes, not 0")):
        with pytest.raises(ValueError, match=message):
            LinkHost(SilentPort(), **kwargs)
    for words in (0, -1, RUN_WORDS_MAX + 1, 2.0):
        with pytest.raises(ValueError, match=rf"A RUN must ask for 1\.\.{RUN_WORDS_MAX} output words, not"):
            LinkHost(ScriptPort(answers())).run(words)
        with pytest.raises(ValueError, match=rf"A RESULT must ask for 1\.\.{RUN_WORDS_MAX} output words, not"):
            LinkHost(ScriptPort(answers())).result(words)
    with pytest.raises(ValueError, match=r"not 0 \(start\(\) sends a RUN of 0 words\)"):
        LinkHost(ScriptPort(answers())).run(0)
    assert RUN_WORDS_MAX == (1 << 24) - 1
    for request in ("run", "result", "settle"):     # refused before anything is sent
        port = ScriptPort(answers())
        with pytest.raises(ValueError, match=r"A R(UN|ESULT) must ask for 1\.\.16777215 output words, not 16777216 "
                                             r"\(more than DONE's 24-bit word count can state, protocol version 6\)"):
            getattr(LinkHost(port), request)(1 << 24)
        assert port.writes == []
    for timeout in (0, None, float("nan")):
        with pytest.raises(ValueError, match=r"The serial read timeout must be a finite number of seconds > 0 \(reads "
                                             r"must end\)"):
            SerialPort("/dev/ttyUSB9", 3_000_000, timeout=timeout)


# The runners' mode checks and a network-mode run against a scripted device

class NetworkBoard:
    """A scripted network-mode board, v7: INFO (its build digest that of ``params``); LOAD -> ACK (the image target's
    payloads staged by address; any other target while the core runs: NACK BUSY; the others' payloads kept, the
    model); RUN -> NACK BUSY while the core runs, otherwise it starts the core on the staged image: RUN of 0 words ->
    DONE 0, of ``classes`` -> the reference logits (sign-extended to whole bytes, as the bridge sends them; one OUT
    frame) and DONE; RESULT -> the running image's logits and DONE, or DONE 0 when not running; SESSION -> ACK, the
    session that DONE states. :meth:`reset` clears it all, as a board's reset does; a core started without the
    model's payloads (all the LOADs to other targets since the reset) computes garbage logits. ``damaged``: (RUN or
    RESULT, n) of the requests (the nth of its type, from 0) whose reply's first frame has a corrupted checksum."""

    def __init__(self, model, params, images, max_payload=512, damaged=()):
        from boards.traffic import network_info
        from compiler.reference import predict
        from hw.network_params import IMAGE
        from hw.network_program import image_beats

        self.info, self.image_target = network_info(model, params, max_payload), IMAGE
        self.logits = {tuple(encode_loads(image_beats(model, params, image), self.info)): logits
                       for image, logits in zip(images, predict(model, images))}
        self.mask, self.classes = (1 << 8 * self.info.out_bytes()) - 1, model.num_classes
        self.model_loads = len(encode_loads(_load_beats(model, params), self.info))
        self.damaged = set(damaged)
        self.count = {FrameType.RUN: 0, FrameType.RESULT: 0}
        self.reset()
        self.port = ScriptPort(self.reply)

    def reset(self):
        """What a board's reset (or configuration) clears: the model, the staged image, the running one, the
        session."""
        self.staged, self.running, self.constants, self.session = {}, None, set(), 0

    def out(self, logits):
        words = b"".join((int(v) & self.mask).to_bytes(self.info.out_bytes(), "little") for v in logits)
        return encode_frame(FrameType.OUT, encode_out(0, words)) + self.done(len(logits))

    def done(self, count):
        return done_frame(count, self.session)

    def reply(self, request):
        frame = decode_frame(request)
        busy = encode_frame(FrameType.NACK, bytes([NackCode.BUSY, frame.type]))
        if frame.type == FrameType.PING:
            return encode_frame(FrameType.INFO, self.info.encode())
        if frame.type == FrameType.SESSION:
            (self.session,) = frame.payload
            return encode_frame(FrameType.ACK)
        if frame.type == FrameType.LOAD:
            if frame.payload[0] != self.image_target:
                if self.running is not None:
                    return busy
                self.constants.add(frame.payload)
            else:
                self.staged[frame.payload[1:1 + self.info.addr_bytes]] = frame.payload
            return encode_frame(FrameType.ACK)
        reply = self.run(frame)
        self.count[frame.type] += 1
        if (frame.type, self.count[frame.type] - 1) in self.damaged:
            reply = reply[:FRAME_BYTES - 1] + bytes([reply[FRAME_BYTES - 1] ^ 1]) + reply[FRAME_BYTES:]
        return reply

    def run(self, frame):
        """The reply to a RUN or RESULT."""
        words, _ = struct.unpack("<IB", frame.payload)
        if frame.type == FrameType.RESULT:
            logits, self.running = self.running, None
            return self.done(0) if logits is None else self.out(logits)
        if self.running is not None:
            return encode_frame(FrameType.NACK, bytes([NackCode.BUSY, frame.type]))
        image = tuple(self.staged[key] for key in sorted(self.staged))
        self.running = (self.logits[image] if len(self.constants) == self.model_loads else
                        [(13 * i + len(self.constants)) % 7 - 3 for i in range(self.classes)])     # no model: garbage
        if words == 0:
            return self.done(0)
        assert words == self.classes
        logits, self.running = self.running, None
        return self.out(logits)


_LOAD_BEATS: list = []


def _load_beats(model, params):
    """:func:`hw.network_program.load_beats`, made once for each model and core (~0.1 s each time)."""
    from hw.network_program import load_beats

    for m, p, beats in _LOAD_BEATS:
        if m is model and p == params:
            return beats
    _LOAD_BEATS.append((model, params, load_beats(model, params)))
    return _LOAD_BEATS[-1][2]


def _network_device(model, params, images, max_payload=512):
    """A :class:`NetworkBoard`'s INFO and port."""
    board = NetworkBoard(model, params, images, max_payload)
    return board.info, board.port


def _digits():
    """The digits CNN, its network core at 2 x 4 and 3 random images (a copy of them each call): the model and the
    core made once for the file (~0.1 s each time; no test changes them)."""
    model, params, images = _digits_once()
    return model, params, images.copy()


@functools.lru_cache(maxsize=None)
def _digits_once():
    from pathlib import Path

    from compiler.format import load
    from hw.network_params import NetworkParams

    model = load(Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq")
    rng = random.Random(1)
    import numpy as np
    images = np.array([[[[rng.randrange(256) for _ in range(8)] for _ in range(8)]] for _ in range(3)], dtype=np.uint8)
    return model, NetworkParams.for_model(model, 2, 4), images


def request_kinds(writes):
    """Each request's type and, for RUN and RESULT, the words it asks for."""
    frames = [decode_frame(w) for w in writes]
    return [(f.type, struct.unpack("<IB", f.payload)[0]) if f.type in (FrameType.RUN, FrameType.RESULT) else f.type
            for f in frames]


def test_network_runner_against_a_scripted_board():
    """Constants and program once, then, overlapping the link with compute, per image its pixels (one LOAD
    frame for 64 pixels, staged while the image before runs), RESULT (the logits of the image before) and a
    RUN of 0 words (start), and a last RESULT; the logits decoded from value_bits two's complement. A single
    image (``logits``) is LOAD and a RUN of num_classes words."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict
    from hw.network_program import image_beats, load_beats

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    done = []
    result = runner.classify(images, progress=lambda i, n: done.append((i, n)))
    assert (result.logits == predict(model, images)).all() and runner.repeated == 0
    assert done == [(1, 3), (2, 3), (3, 3)]
    info, classes = board.info, model.num_classes
    loads = len(encode_loads(load_beats(model, params), info))
    pixels = [FrameType.LOAD] * len(encode_loads(image_beats(model, params, images[0]), info))
    assert pixels == [FrameType.LOAD]
    start, collect = (FrameType.RUN, 0), (FrameType.RESULT, classes)
    assert request_kinds(board.port.writes) == ([FrameType.PING, FrameType.SESSION] + [FrameType.LOAD] * loads + pixels
                                                + [start] + 2 * (pixels + [collect, start]) + [collect])
    sent = len(board.port.writes)
    assert (runner.logits(images[1]) == predict(model, images[1:2])[0]).all()
    assert request_kinds(board.port.writes[sent:]) == pixels + [(FrameType.RUN, classes)]


RESULT, START = FrameType.RESULT, FrameType.RUN     # RUN requests of the pipeline are starts


@pytest.mark.parametrize("damaged, lost", [
    pytest.param([(RESULT, 0)], 0, id="result-0"),
    pytest.param([(RESULT, 2)], 2, id="last-result"),
    pytest.param([(RESULT, 0), (RESULT, 2)], 0, id="two-results"),    # RESULT 1 is the first's settle
    pytest.param([(START, 1)], 1, id="start-1"),
])
def test_network_runner_recovers_a_lost_reply(damaged, lost):
    """A reply of the pipeline damaged (a RESULT's: its logits are lost, the core has sent them; a start's:
    the core runs the image): the runner resyncs (PING), settles the core (RESULT: what the core still holds,
    or DONE 0), runs the image again the blocking way (LOAD, RUN of num_classes words), stages the next
    image again if one was staged and goes on; each repetition counted."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    board = NetworkBoard(model, params, images, damaged=damaged)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    result = runner.classify(images)
    assert (result.logits == predict(model, images)).all() and runner.repeated == len(damaged)
    kinds = request_kinds(board.port.writes)
    classes = model.num_classes
    kind, n = damaged[0]
    asked = (kind, classes if kind == RESULT else 0)
    first = [i for i, k in enumerate(kinds) if k == asked][n]
    again = [FrameType.PING, (RESULT, classes), FrameType.LOAD, (FrameType.RUN, classes)]
    assert kinds[first + 1:first + 5] == again
    assert kinds[first + 5:first + 7] == ([] if lost == len(images) - 1 else [FrameType.LOAD, (START, 0)])


def test_a_core_left_running_by_a_session_that_ended_mid_image_is_settled():
    """A session that ended while the core ran an image (Ctrl-C or an error after its start: lcq run closes the
    port) leaves the core busy with its logits unread; the next session's constants, and the next classify's
    start and blocking run, are refused BUSY until those logits are collected: the runner collects and drops
    them (RESULT) and sends the request again, and the logits equal the reference."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict
    from hw.network_program import image_beats

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    expected = predict(model, images)

    def abandoned_session(host):
        host.load(image_beats(model, params, images[2]))
        host.start()

    abandoned_session(LinkHost(board.port))
    runner = NetworkRunner(LinkHost(board.port), model, params)
    assert (runner.classify(images).logits == expected).all()
    abandoned_session(runner.host)
    assert (runner.classify(images[:2]).logits == expected[:2]).all()
    abandoned_session(runner.host)
    assert (runner.logits(images[1]) == expected[1]).all()
    results = request_kinds(board.port.writes).count((RESULT, model.num_classes))
    assert runner.repeated == 0 and results == 3 + 2 + 3   # 3 settles


RESET = (r"BoardReset: the DONE reply to {} states session 0x00, not the 0x[0-9a-f]{{2}} this host set before it "
         r"loaded the model: the board was reset or reconfigured \(its button, power, or configuration from flash\) "
         r"since then, so the model it held is gone and its outputs are garbage \(none taken\); run again \(the "
         r"runner loads the model again\), and keep the board from being reset during a run")


def reset_message(error) -> str:
    return f"{type(error.value).__name__}: {error.value}"


@pytest.mark.parametrize("when, caught_by, logits", [
    pytest.param("image 0's logits in", "RUN", 1, id="before-a-start"),     # image 1 staged, not started
    pytest.param("image 2 staged", "RESULT", 1, id="while-an-image-runs"),   # image 1 running
])
def test_a_board_reset_mid_run_ends_it_instead_of_returning_garbage_logits(when, caught_by, logits):
    """The board is reset (button, or configured from flash) mid-run, ``when``: the model it held is gone and the
    logits it would compute are garbage, though INFO is unchanged. The next DONE (``caught_by``'s) states session
    0, not the runner's: the run ends in a BoardReset naming what happened and the fix, after ``logits`` images'
    logits, and returns none. The next classify sets a new session and loads the model again, equal to the
    reference."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    done, reply, pixels = [], board.reply, [0]

    def progress(i, n):
        done.append(i)
        if when == "image 0's logits in" and i == 1:
            board.reset()

    def reset_as_image_2_is_staged(request):
        if request[1] == FrameType.LOAD and request[4] == board.image_target:
            pixels[0] += 1
            if pixels[0] == 3 and when == "image 2 staged":
                board.reset()
        return reply(request)

    board.port.reply = reset_as_image_2_is_staged
    with pytest.raises(BoardReset) as error:
        runner.classify(images, progress=progress)
    assert re.fullmatch(RESET.format(caught_by), reset_message(error)) and done == list(range(1, logits + 1))
    assert runner.host.session is None and runner.repeated == 0
    sent = len(board.port.writes)
    assert (runner.classify(images).logits == predict(model, images)).all()
    # A PING (the board's parameters unchanged since the reset), a new session, then the model (a settle first if the
    # core ran on)
    assert request_kinds(board.port.writes[sent:sent + 2]) == [FrameType.PING, FrameType.SESSION]
    assert len(board.constants) == board.model_loads
    assert board.session == runner.host.session != 0


def test_a_board_reset_while_the_model_loads_or_between_images_is_caught():
    """A reset between two constants LOADs (the first half of the model lost; the session set before the model, so
    it is lost too), and one between two single-image runs (``logits``: the blocking RUN's DONE); one in mid-reply
    (the first RESULT's reply never comes: the host resyncs, its INFO unchanged, and the DONE of the RESULT that
    settles the core states session 0). Each a BoardReset, never logits."""
    from boards.runtime import NetworkRunner

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    reply, loads = board.reply, [0]

    def reset_in_the_model(request):
        if request[1] == FrameType.LOAD:
            loads[0] += 1
            if loads[0] == 3:
                board.reset()
        return reply(request)

    board.port.reply = reset_in_the_model
    with pytest.raises(BoardReset) as error:
        NetworkRunner(LinkHost(board.port), model, params).classify(images)
    assert re.fullmatch(RESET.format("RUN"), reset_message(error))      # the first start

    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    runner.logits(images[0])
    board.reset()
    with pytest.raises(BoardReset) as error:
        runner.logits(images[1])
    assert re.fullmatch(RESET.format("RUN"), reset_message(error))

    board = NetworkBoard(model, params, images)
    reply, results = board.reply, [0]

    def reset_in_a_reply(request):
        if request[1] == FrameType.RESULT:
            results[0] += 1
            if results[0] == 1:
                board.reset()
                return b""
        return reply(request)

    board.port.reply = reset_in_a_reply
    runner = NetworkRunner(LinkHost(board.port), model, params)
    with pytest.raises(BoardReset) as error:
        runner.classify(images)
    assert re.fullmatch(RESET.format("RESULT"), reset_message(error))
    assert runner.host.resyncs == 1 and results == [2] and request_kinds(board.port.writes[-2:]) == [
        FrameType.PING, (FrameType.RESULT, board.classes)]


def test_another_session_on_the_board_and_a_host_without_one():
    """Another host's session (another program loaded the board since): a BoardReset saying so. A raw LinkHost that
    set no session checks none; a runner's model is loaded only in a session: one told that the model is already on
    the board (:meth:`assume_loaded`, no model sent) sets a session too, and a reset after it is caught; ``loaded``
    cannot be set from outside. A session is 1..255 (8 bits); one that a host begins after a DONE is never the one
    that DONE stated."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    runner.load_constants()
    other = LinkHost(board.port)
    while other.begin_session() == runner.host.session:
        pass                # (a host that saw no DONE cannot know the board's session: 1 draw in 255 is it)
    with pytest.raises(BoardReset, match=r"another host session set it \(another program on the port, or another "
                                         r"runner\) since then"):
        runner.logits(images[0])
    raw = LinkHost(board.port)
    assert raw.run(model.num_classes) and raw.session is None and board.session == other.session
    adopted = NetworkRunner(LinkHost(board.port), model, params)
    with pytest.raises(AttributeError):
        adopted.loaded = True
    assert not adopted.loaded
    sent = len(board.port.writes)
    adopted.assume_loaded()
    assert adopted.loaded
    assert request_kinds(board.port.writes[sent:]) == [(RESULT, model.num_classes), FrameType.PING, FrameType.SESSION]
    assert (adopted.logits(images[0]) == predict(model, images[:1])[0]).all()
    assert board.session == adopted.host.session != other.session
    board.reset()
    with pytest.raises(BoardReset) as error:
        adopted.logits(images[1])
    assert re.fullmatch(RESET.format("RUN"), reset_message(error)) and not adopted.loaded
    for bad in (0, 1 << 8, -1, True, 1.0):
        with pytest.raises(ValueError, match=r"A session must be an integer in 1\.\.255 \(0 is a reset board's\)"):
            encode_session(bad)


class BridgePort(ScriptPort):
    """A :class:`ScriptPort` with the bridge's timing: ``late(request type)`` (None: on time) makes the reply to the
    next request of that type come ``late`` reads after it (each read before returns nothing, as a port that timed
    out; ``interrupt``: the first of them raises KeyboardInterrupt, a Ctrl-C while the host waits), and a request
    written while a reply is still to come is dropped, as the bridge drops the bytes that arrive while it works on a
    request. ``reset_input_buffer`` drops the bytes that came."""

    def __init__(self, reply):
        super().__init__(reply)
        self.held, self.dropped, self.lateness, self.interrupt = None, [], {}, False

    def late(self, ftype, reads, interrupt=False):
        self.lateness[ftype], self.interrupt = reads, interrupt

    def write(self, data):
        if self.held is not None:
            self.dropped.append(bytes(data))
            return
        self.writes.append(bytes(data))
        reply = self.reply(bytes(data))
        reads = self.lateness.pop(data[1], 0)
        if reads:
            self.held = [reads, reply]
        else:
            self.queue += reply

    def read(self, n):
        if self.held is not None:
            if self.held[0]:
                self.held[0] -= 1
                if self.interrupt:
                    self.interrupt = False
                    raise KeyboardInterrupt
                return b""
            self.queue += self.held[1]
            self.held = None
        return super().read(n)

    def reset_input_buffer(self):
        self.queue.clear()


@pytest.mark.parametrize("how", ["ctrl-c", "timeout-caught"])
def test_a_late_ack_of_the_last_image_is_never_taken_for_the_next_ones(how):
    """An image's LOAD whose ACK comes late, after the host stopped waiting: Ctrl-C (KeyboardInterrupt), or a
    timeout on its last try that the caller caught (retries 0). The next image's LOAD arrives while the bridge still
    works on the old one and is dropped; the old ACK then came as its reply, and its RUN returned the logits of the
    image before (silently wrong). A request after one whose reply did not come in full resyncs first (drain, PING):
    the next image's logits are its own."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    expected = predict(model, images)
    board = NetworkBoard(model, params, images)
    board.port = port = BridgePort(board.reply)
    retries = 0 if how == "timeout-caught" else 2
    runner = NetworkRunner(LinkHost(port, retries=retries), model, params, retries=retries)
    runner.load_constants()
    port.late(FrameType.LOAD, 1, interrupt=how == "ctrl-c")
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else LinkTimeout):
        runner.logits(images[0])
    assert (expected[0] != expected[1]).any()
    assert (runner.logits(images[1]) == expected[1]).all()
    assert (runner.logits(images[2]) == expected[2]).all()
    assert (runner.classify(images).logits == expected).all()


def test_a_ctrl_c_while_the_model_loads_then_a_new_run_loads_it_again():
    """A Ctrl-C while the host waited for the ACK of a constants LOAD: the next run's SESSION reached a bridge still
    busy with that LOAD and was dropped, its late ACK was taken for the SESSION's, and the run ended in a BoardReset
    that blamed another host (the board kept the old session). The next run resyncs first: a new session, the model
    again, the reference logits."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    board.port = port = BridgePort(board.reply)
    runner = NetworkRunner(LinkHost(port), model, params)
    port.late(FrameType.LOAD, 1, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        runner.classify(images)
    assert not runner.loaded and port.held is not None
    assert (runner.classify(images).logits == predict(model, images)).all()
    assert board.session == runner.host.session and len(board.constants) == board.model_loads


def test_a_board_flashed_with_another_build_mid_session_is_refused_when_the_model_loads_again():
    """Another bitstream flashed on the board a runner uses (a 4 x 4 core instead of the 2 x 4 it was built for, whose
    load targets have other widths): the next DONE states session 0 (a BoardReset), and the run after it loaded the
    model again in frames encoded for the INFO of the session's first PING, never asked again, onto a core that reads
    them otherwise; so did a new runner on the same host, whose SESSION overwrote the 0 unseen. A session is now begun
    only after a PING (the last request, or one sent first) states the same parameters: a LinkError naming what
    changed."""
    from boards.runtime import NetworkRunner
    from boards.traffic import network_info
    from compiler.reference import predict
    from hw.network_params import NetworkParams

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    assert (runner.classify(images).logits == predict(model, images)).all()
    board.info = network_info(model, NetworkParams.for_model(model, 4, 4), 512)
    board.reset()
    with pytest.raises(BoardReset):
        runner.classify(images)
    sent = len(board.port.writes)
    with pytest.raises(LinkError, match=r"the device's parameters changed since this session's first PING \(rows 2 "
                                        r"-> 4, target_bits \(15, 12, 46, 45, 45, 16, .*\) -> \(15, 12, 46, 45, 45, "
                                        r"32, .*\), build 0x[0-9a-f]{8} -> 0x[0-9a-f]{8}\): another bitstream was "
                                        r"flashed"):
        runner.classify(images)
    assert request_kinds(board.port.writes[sent:]) == [FrameType.PING]
    # Flashed with no run between (no DONE to state session 0), then a new runner on the same host: its first session
    # (SESSION would hide the reset) pings first too.
    board = NetworkBoard(model, params, images)
    host = LinkHost(board.port)
    assert (NetworkRunner(host, model, params).classify(images).logits == predict(model, images)).all()
    board.info = network_info(model, NetworkParams.for_model(model, 4, 4), 512)
    board.reset()
    with pytest.raises(LinkError, match=r"the device's parameters changed since this session's first PING \(rows 2 "):
        NetworkRunner(host, model, params).classify(images)
    assert board.session == 0 and not board.constants


def test_a_runner_told_that_a_reset_board_holds_the_model_refuses_to_run():
    """Run before load: ``assume_loaded`` on a board reset or configured since any host loaded it (its session 0, the
    model gone) set a session over the 0 and the next image's logits were the garbage of a core without its model.
    It now reads the board's session first (a RESULT, which also stops a core left running) and refuses a board of
    session 0 with a LinkError saying to load the model; a board another host loaded is taken, as before."""
    from boards.runtime import NetworkRunner
    from compiler.reference import predict

    model, params, images = _digits()
    board = NetworkBoard(model, params, images)
    runner = NetworkRunner(LinkHost(board.port), model, params)
    with pytest.raises(LinkError, match=r"the board states session 0x00: it was reset or configured since a host "
                                        r"last set one, so the model is not on it \(assume_loaded takes it as "
                                        r"loaded\); load it \(classify, or load_constants\) and run again"):
        runner.assume_loaded()
    assert not runner.loaded and board.session == 0
    NetworkRunner(LinkHost(board.port), model, params).load_constants()
    sent = len(board.port.writes)
    runner.assume_loaded()
    assert request_kinds(board.port.writes[sent:]) == [(RESULT, model.num_classes), FrameType.PING, FrameType.SESSION]
    assert runner.loaded and (runner.logits(images[0]) == predict(model, images[:1])[0]).all()


def test_network_runner_gives_up_after_its_retries():
    """The same image's reply lost more often than ``retries``: the error is raised."""
    from boards.runtime import NetworkRunner

    model, params, images = _digits()
    board = NetworkBoard(model, params, images[:1])
    board.out = lambda logits: encode_frame(FrameType.OUT, encode_out(0, b"\x00")) + bytes(4)   # always bad
    runner = NetworkRunner(LinkHost(board.port), model, params, retries=2)
    with pytest.raises(FrameError, match=r"OUT frame has 1 bytes of words"):
        runner.classify(images[:1])
    assert runner.repeated == 2


def test_an_image_refused_on_every_try_counts_every_refusal():
    """A board that refuses every RESULT, then every RUN, for its checksum: the runner gives up on the image after its
    2 reruns, and load_and_run (``logits``) after its 2 repeats, each with the refusals of all the tries (the
    pipeline's RESULT and each rerun's settle; each repeat's RUN), not only the last try's 1."""
    from boards.runtime import NetworkRunner

    model, params, images = _digits()
    board = NetworkBoard(model, params, images[:1])
    run, refused = board.run, {FrameType.RESULT}
    board.run = lambda frame: (encode_frame(FrameType.NACK, bytes([NackCode.CRC, frame.type]))
                               if frame.type in refused else run(frame))
    runner = NetworkRunner(LinkHost(board.port), model, params, retries=2)
    with pytest.raises(NackError, match=r"refused RESULT frame 3 time\(s\): its checksum did not match"):
        runner.classify(images[:1])
    assert runner.repeated == 2
    board.running, refused = None, {FrameType.RUN}
    with pytest.raises(NackError, match=r"refused RUN frame 3 time\(s\): its checksum did not match"):
        runner.logits(images[0])
    assert runner.repeated == 4


def test_host_start_and_result_check_their_replies():
    """start: any word or a DONE count other than 0 is an error; result: a core that returned fewer words."""
    done = done_frame(2)
    for reply, error, message in (
            (encode_frame(FrameType.OUT, encode_out(0, bytes(3))) + done, FrameError,
             r"the device sent 1 output words, more than the 0 asked for"),
            (done, LinkError, r"the engine returned 2 output words to RUN, expected 0: the loaded model does not"),
            (encode_frame(FrameType.NACK, bytes([NackCode.BUSY, FrameType.RUN])), NackError,
             r"refused RUN frame 1 time\(s\): the core is still running the previous image")):
        with pytest.raises(error, match=message):
            LinkHost(ScriptPort(answers(run=reply))).start()
    port = ScriptPort(lambda request: answers(run=done)(request) if request[1] != FrameType.RESULT else
                      encode_frame(FrameType.OUT, encode_out(0, bytes(6))) + done)
    with pytest.raises(LinkError, match=r"the engine returned 2 output words to RESULT, expected 3: the core was not "
                                        r"running \(start it before RESULT\), or it stopped early"):
        LinkHost(port).result(3)
    assert LinkHost(port).settle(3) == 2


def test_each_runner_refuses_a_board_of_the_other_mode():
    from boards.runtime import BoardRunner, NetworkRunner
    from hw.engine_params import EngineParams

    model, params, images = _digits()
    _, port = _network_device(model, params, images)
    with pytest.raises(LinkError, match=r"the board's bitstream runs in network mode, but the host was asked to run "
                                        r"it in layers mode \(from the build report\): pass the report.json of the "
                                        r"flashed build \(--report FILE\), or build and flash a layers-mode "
                                        r"bitstream \(`lcq build MODEL --board NAME --mode layers`"):
        BoardRunner(LinkHost(port), model, EngineParams.for_model(model, 2, 4, resident="all"), "all")
    layers = LinkInfo(PROTOCOL_VERSION, 8, 24, 2, 4, 512, 2, (8, 16, 0, 0, 0, 8))
    with pytest.raises(LinkError, match=r"runs in layers mode, but the host was asked to run it in network mode "
                                        r".*--mode network"):
        NetworkRunner(LinkHost(ScriptPort(answers(layers.encode()))), model, params)
    # (a core other than the report's: the port is another board, or holds another build's bitstream; the error
    # said only to build and flash, not that the report may be the one to change)
    other = dataclasses.replace(_network_device(model, params, images)[0], classes=11)
    with pytest.raises(LinkError, match=r"the board's network core .* is not the one built for this model .*: "
                                        r"the board on the port runs another build than the report describes; pass "
                                        r"the report.json of the build on that port \(--report FILE\), or build "
                                        r"and flash"):
        NetworkRunner(LinkHost(ScriptPort(answers(other.encode()))), model, params)
    other = dataclasses.replace(layers, rows=3)
    with pytest.raises(LinkError, match=r"the board's engine .* is not the one built for this model .*: the board on "
                                        r"the port runs another build than the report describes; pass the "
                                        r"report.json of the build on that port \(--report FILE\)"):
        BoardRunner(LinkHost(ScriptPort(answers(other.encode()))), model,
                    EngineParams.for_model(model, 2, 4, resident="all"), "all")


def test_each_runner_refuses_a_board_of_another_build_whose_info_widths_agree():
    """A board built from parameters that differ from the host's only in a memory's depth (the report of another
    build, or a board flashed with another build of the same widths) states the same INFO but for its build digest:
    before, the runners took it and wrote past the memory (its addresses wrap), giving wrong logits silently. Each
    runner now refuses it before sending anything but the PING, naming both digests, that what differs cannot be
    told from INFO, and the fix; a runner given the board's own parameters takes it."""
    from boards.runtime import BoardRunner, NetworkRunner
    from boards.top import AcceleratorCore
    from boards.traffic import network_info
    from compiler.reference import predict
    from hw.engine_params import EngineParams
    from hw.network_params import build_digest

    model, params, images = _digits()
    deeper = dataclasses.replace(params, value_depth=params.value_depth + 1)
    board = NetworkBoard(model, deeper, images)
    assert dataclasses.replace(board.info, build=0) == dataclasses.replace(network_info(model, params, 512), build=0)
    ours, theirs = build_digest(params), build_digest(deeper)
    assert ours != theirs and board.info.build == theirs
    with pytest.raises(LinkError, match=rf"the board's network core states build 0x{theirs:08x}, not the "
                                        rf"0x{ours:08x} of the network core built for this model \(the digest of its "
                                        r"parameters, memory depths included; which of them differ cannot be told "
                                        r"from INFO, whose other fields agree\): the board on the port runs another "
                                        r"build than the report describes; pass the report.json of the build on that "
                                        r"port \(--report FILE\), or build and flash this model's"):
        NetworkRunner(LinkHost(board.port), model, params)
    assert request_kinds(board.port.writes) == [FrameType.PING]
    assert (NetworkRunner(LinkHost(board.port), model, deeper).classify(images).logits == predict(model, images)).all()

    engine = EngineParams.for_model(model, 2, 4, resident="all")
    other = dataclasses.replace(engine, out_depth=engine.out_depth + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        payload = AcceleratorCore(other, 100, max_payload=512).bridge.info_payload()     # the other build's INFO
        own = AcceleratorCore(engine, 100, max_payload=512).bridge.info_payload()
        gc.collect()
    assert dataclasses.replace(LinkInfo.decode(payload), build=0) == dataclasses.replace(LinkInfo.decode(own), build=0)
    port = ScriptPort(answers(payload))
    with pytest.raises(LinkError, match=rf"the board's engine states build 0x{build_digest(other):08x}, not the "
                                        rf"0x{build_digest(engine):08x} of the engine built for this model .*which of "
                                        r"them differ cannot be told from INFO.*: the board on the port runs another "
                                        r"build than the report describes; pass the report.json of the build on that "
                                        r"port \(--report FILE\)"):
        BoardRunner(LinkHost(port), model, engine, "all")
    assert request_kinds(port.writes) == [FrameType.PING]
    BoardRunner(LinkHost(ScriptPort(answers(payload))), model, other, "all")


def test_network_runner_refuses_images_of_the_wrong_shape_before_sending_anything():
    from boards.runtime import NetworkRunner

    model, params, images = _digits()
    _, port = _network_device(model, params, images)
    runner = NetworkRunner(LinkHost(port), model, params)
    sent = len(port.writes)
    for bad in (images[:, :, :7], images.repeat(3, axis=1), images.astype("int64")):
        with pytest.raises(ValueError, match=r"images must be uint8 \(N, 1, 8, 8\)"):
            runner.classify(bad)
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, 1, 8, 8\)"):
        runner.logits(images[0, :, :7])
    import numpy as np

    n = len(images)
    for labels in (np.zeros(1, dtype=np.int64), np.zeros(n + 1, dtype=np.int64), np.zeros(n), np.full(n, 10)):
        with pytest.raises(ValueError, match=rf"labels must be {n} integer classes 0\.\.9, one per image"):
            runner.classify(images, labels)
    assert len(port.writes) == sent
