"""8N1 UART: a transmitter and a receiver with stream-style byte ports.

Both count a whole number of clock cycles per bit, :func:`hw.baud.baud_divisor` of the
clock frequency and the baud rate. The line idles high; a byte is a low start bit, 8 data
bits least significant first, and a high stop bit.
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .baud import baud_divisor
from .fsm_encoding import one_hot

#: What the receiver delivers per byte: the data and whether its stop bit was low.
RX_LAYOUT = data.StructLayout({"data": 8, "error": 1})


class _Uart(wiring.Component):
    """What both directions share: the bit period ``divisor`` (clock cycles) of
    ``baud`` from ``clk_freq``, checked by :func:`baud_divisor`."""

    def __init__(self, clk_freq, baud):
        self._divisor = baud_divisor(clk_freq, baud)
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor


class UartTx(_Uart):
    """8N1 transmitter.

    ``i`` takes a byte when ``valid & ready``; ``ready`` is high only while the line is
    idle, so a byte is accepted once the previous stop bit has ended. The start bit
    begins on ``tx`` the cycle after acceptance; a byte takes ``10 * divisor`` cycles.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        frame = Signal(10, init=0x3FF)  # bits still to send, least significant first
        bits_left = Signal(range(11))
        # ``idle``: bits_left is 0, a register set with it (``ready`` feeds the user's logic from a flip-flop).
        idle = Signal(init=1, name="idle")
        timer = Signal(range(self._divisor))
        m.d.comb += [self.i.ready.eq(idle), self.tx.eq(frame[0])]
        with m.If(idle):
            with m.If(self.i.valid):
                m.d.sync += [frame.eq(Cat(0, self.i.payload, 1)), bits_left.eq(10), idle.eq(0),
                             timer.eq(self._divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [frame.eq(Cat(frame[1:], 1)), bits_left.eq(bits_left - 1), idle.eq(bits_left == 1),
                         timer.eq(self._divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(_Uart):
    """8N1 receiver, sampling each bit in its middle after a two-flop synchronizer.

    ``o`` presents each byte for one cycle (``valid``; no backpressure), three cycles
    after the middle of its stop bit on ``rx``. ``error`` is set
    with a byte whose stop bit was low (framing error); the receiver then waits for the
    line to go high before looking for the next start bit. A start bit that is high again
    at its middle is taken for a glitch and ignored.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(RX_LAYOUT, always_ready=True))

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self._divisor))
        bits = Signal(range(8))
        shift = Signal(8)
        m.d.sync += self.o.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), bits.eq(0)]
                    m.next = "DATA"
                    with m.If(line):
                        m.next = "IDLE"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), bits.eq(bits + 1),
                                 timer.eq(self._divisor - 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(shift),
                                 self.o.payload.error.eq(~line)]
                    m.next = "IDLE"
                    with m.If(~line):
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        one_hot(fsm)
        return m
