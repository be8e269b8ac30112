"""The accelerator on a board: layer engine + link bridge + UART, sized to the part.

- :class:`AcceleratorCore`: a :class:`hw.engine.LayerEngine` behind a
  :class:`hw.link.LinkBridge`; its ports are the bridge's byte streams (``rx_*`` in,
  ``tx_*`` out, valid/ready). Simulated as it is by ``sim/board_cocotb.py``.
- :class:`AcceleratorTop`: the core with a :class:`hw.uart.UartRx`/``UartTx`` pair on the
  platform's ``uart`` resource, at the board's fastest rate for the clock.
- :func:`engine_for_board`: the engine for a model on a board: every layer's constants
  resident (so that an image needs only activations over the link), the largest array of
  :data:`ARRAYS` whose buffers and PEs pass :func:`boards.fit.check_fit`; an error
  naming the buffer and the part when even the smallest does not fit.
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
from hw.link import LinkBridge, connect_engine
from hw.uart import UartRx, UartTx

from .boards import Board, uart_baud
from .fit import FitError, check_fit

# Arrays tried, largest first, when the user names none.
ARRAYS = ((16, 16), (8, 16), (8, 8), (4, 8), (4, 4), (2, 4), (2, 2), (1, 2), (1, 1))


def luts_per_pe(params: EngineParams) -> int:
    """Rough LUT4s of one engine PE: the partial-sum adder, the product select (a mux of ``s_w``
    15-bit products), and a 7 x 8 multiplier where the engine multiplies (edge layers)."""
    select = 15 * params.s_w
    return params.acc_bits + select + (56 if params.multiply else 0)


def engine_for_board(model: CompiledModel, board: Board, rows: int | None = None,
                     cols: int | None = None) -> EngineParams:
    """The resident engine for ``model`` on ``board``: ``rows`` x ``cols`` if given (checked),
    else the largest array of :data:`ARRAYS` that fits; :class:`FitError` otherwise."""
    arrays = [(rows, cols)] if rows and cols else [(r, c) for r, c in ARRAYS
                                                   if (rows or r) == r and (cols or c) == c]
    errors = []
    for r, c in arrays:
        params = EngineParams.for_model(model, r, c, resident=True)
        try:
            check_fit(board, params.memory_bits(), r * c, luts_per_pe(params))
            return params
        except FitError as e:
            errors.append(f"{r} x {c}: {e}")
    raise FitError(f"the model does not fit {board.name} ({board.device}) with every layer's constants on chip; "
                   f"smallest array tried: {errors[-1]}")


class AcceleratorCore(wiring.Component):
    """Engine and link bridge; ``rx_valid``/``rx_data``/``rx_error`` (bytes from the host, with a
    framing-error flag, no back-pressure) and ``tx_valid``/``tx_ready``/``tx_data`` (bytes to
    the host) are the bridge's. ``timeout_cycles``: how long a
    frame may stall before the bridge drops it (a few byte times)."""

    def __init__(self, params: EngineParams, timeout_cycles: int):
        self.params = params
        self.engine = LayerEngine(params)
        self.bridge = LinkBridge(params.addr_bits, params.data_bits, params.cols * params.out_bits, params.rows,
                                 params.cols, timeout_cycles=timeout_cycles)
        super().__init__({"rx_valid": In(1), "rx_data": In(8), "rx_error": In(1),
                          "tx_valid": Out(1), "tx_ready": In(1), "tx_data": Out(8)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine, m.submodules.bridge = self.engine, self.bridge
        connect_engine(m, self.bridge, self.engine)
        rx, tx = self.bridge.rx, self.bridge.tx
        m.d.comb += [rx.valid.eq(self.rx_valid), rx.payload.data.eq(self.rx_data), rx.payload.error.eq(self.rx_error),
                     self.tx_valid.eq(tx.valid), tx.ready.eq(self.tx_ready), self.tx_data.eq(tx.payload)]
        return m


class AcceleratorTop(Elaboratable):
    """:class:`AcceleratorCore` on the platform's ``uart`` resource at ``baud`` (clock ``clk_hz``)."""

    def __init__(self, params: EngineParams, clk_hz: float, baud: int):
        self.params, self.clk_hz, self.baud = params, clk_hz, baud

    def elaborate(self, platform):
        m = Module()
        # A frame may pause for 20 byte times before the bridge drops it.
        byte_cycles = int(self.clk_hz * 10 / self.baud)
        m.submodules.core = core = AcceleratorCore(self.params, timeout_cycles=20 * byte_cycles)
        m.submodules.uart_rx = uart_rx = UartRx(int(self.clk_hz), self.baud)
        m.submodules.uart_tx = uart_tx = UartTx(int(self.clk_hz), self.baud)
        m.d.comb += [core.rx_valid.eq(uart_rx.o.valid), core.rx_data.eq(uart_rx.o.payload.data),
                     core.rx_error.eq(uart_rx.o.payload.error), uart_tx.i.valid.eq(core.tx_valid),
                     core.tx_ready.eq(uart_tx.i.ready), uart_tx.i.payload.eq(core.tx_data)]
        uart = platform.request("uart", 0)
        m.d.comb += [uart_rx.rx.eq(uart.rx.i), uart.tx.o.eq(uart_tx.tx)]
        return m


def accelerator_top(model: CompiledModel, board: Board, rows: int | None = None, cols: int | None = None):
    """``(platform, clk_hz) -> AcceleratorTop`` for ``model`` on ``board`` (the fit is checked now,
    before any synthesis); the chosen :class:`EngineParams` is the factory's ``params``."""
    params = engine_for_board(model, board, rows, cols)

    def factory(platform, clk_hz):
        return AcceleratorTop(params, clk_hz, uart_baud(board, clk_hz))

    factory.params = params
    return factory

