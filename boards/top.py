"""The accelerator on a board: layer engine + link bridge + UART, sized to the part.

- :class:`AcceleratorCore`: a :class:`hw.engine.LayerEngine` behind a
  :class:`hw.link.LinkBridge`; its ports are the bridge's byte streams (``rx_*`` in,
  ``tx_*`` out, valid/ready). Simulated as it is by ``sim/board_cocotb.py``.
- :class:`AcceleratorTop`: the core with a :class:`hw.uart.UartRx`/``UartTx`` pair on the
  platform's ``uart`` resource, at the board's fastest rate for the clock.
- :func:`accelerator_top`: the factory ``(platform, clk_hz) -> AcceleratorTop`` that
  ``lcq build`` hands to :func:`boards.build.build`.
"""

from __future__ import annotations

from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from compiler.graph import CompiledModel
from hw.engine import LayerEngine
from hw.engine_params import EngineParams
from hw.link import LinkBridge
from hw.uart import UartRx, UartTx

from .boards import LINK_PAYLOAD, Board, uart_baud
from .fit import engine_for_board

class AcceleratorCore(wiring.Component):
    """Engine and link bridge; ``rx_valid``/``rx_data``/``rx_error`` (bytes from the host, with a
    framing-error flag, no back-pressure) and ``tx_valid``/``tx_ready``/``tx_data`` (bytes to
    the host) are the bridge's ``rx`` and ``tx`` streams, flat: a stream without back-pressure
    cannot be a Verilog top's port. ``timeout_cycles``: how long a frame may stall before the
    bridge drops it (a few byte times); ``max_payload``: the bridge's frame buffer in bytes."""

    def __init__(self, params: EngineParams, timeout_cycles: int, max_payload: int = 512):
        self.params = params
        self.engine = LayerEngine(params)
        self.bridge = LinkBridge(params.addr_bits, params.target_bits, params.cols * params.out_bits, params.rows,
                                 params.cols, code_bits=params.code_bits, max_payload=max_payload,
                                 timeout_cycles=timeout_cycles)
        super().__init__({"rx_valid": In(1), "rx_data": In(8), "rx_error": In(1),
                          "tx_valid": Out(1), "tx_ready": In(1), "tx_data": Out(8)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine, m.submodules.bridge = self.engine, self.bridge
        wiring.connect(m, self.bridge.engine, self.engine)
        rx, tx = self.bridge.rx, self.bridge.tx
        m.d.comb += [rx.valid.eq(self.rx_valid), rx.payload.data.eq(self.rx_data), rx.payload.error.eq(self.rx_error),
                     self.tx_valid.eq(tx.valid), tx.ready.eq(self.tx_ready), self.tx_data.eq(tx.payload)]
        return m


class AcceleratorTop(Elaboratable):
    """:class:`AcceleratorCore` on the platform's ``uart`` resource at ``baud`` (clock ``clk_hz``),
    its frame buffer one block RAM of ``family`` (512 bytes on iCE40, 2048 on ECP5)."""

    def __init__(self, params: EngineParams, clk_hz: float, baud: int, family: str = "ice40"):
        self.params, self.clk_hz, self.baud = params, clk_hz, baud
        self.max_payload = LINK_PAYLOAD[family]

    def elaborate(self, platform):
        m = Module()
        # A frame may pause for 20 byte times before the bridge drops it.
        byte_cycles = int(self.clk_hz * 10 / self.baud)
        m.submodules.core = core = AcceleratorCore(self.params, timeout_cycles=20 * byte_cycles,
                                                    max_payload=self.max_payload)
        m.submodules.uart_rx = uart_rx = UartRx(int(self.clk_hz), self.baud)
        m.submodules.uart_tx = uart_tx = UartTx(int(self.clk_hz), self.baud)
        m.d.comb += [core.rx_valid.eq(uart_rx.o.valid), core.rx_data.eq(uart_rx.o.payload.data),
                     core.rx_error.eq(uart_rx.o.payload.error), uart_tx.i.valid.eq(core.tx_valid),
                     core.tx_ready.eq(uart_tx.i.ready), uart_tx.i.payload.eq(core.tx_data)]
        uart = platform.request("uart", 0)
        m.d.comb += [uart_rx.rx.eq(uart.rx.i), uart.tx.o.eq(uart_tx.tx)]
        return m


def accelerator_top(model: CompiledModel, board: Board, rows: int | None = None, cols: int | None = None):
    """``(platform, clk_hz) -> AcceleratorTop`` for ``model`` on ``board``; the fit is checked now,
    before any synthesis, and the chosen :class:`boards.fit.BoardEngine` is the factory's ``engine``."""
    engine = engine_for_board(model, board, rows, cols)

    def factory(platform, clk_hz):
        return AcceleratorTop(engine.params, clk_hz, uart_baud(board, clk_hz), board.family)

    factory.engine = engine
    return factory
