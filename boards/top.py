"""The accelerator on a board: the layer engine or the whole-network core, behind the link bridge and a UART.

Two modes (:class:`hw.protocol.LinkMode`, stated in the bridge's INFO reply):

- ``network`` (``lcq build`` by default): :class:`NetworkAcceleratorCore`, a
  :class:`hw.network.NetworkCore` (every layer on the chip: constants and program loaded once,
  then per image its pixels, staged while the image before runs, a RUN that starts it and a RESULT
  that brings its logits back) behind a :class:`hw.link.LinkBridge`;
- ``layers``: :class:`AcceleratorCore`, a :class:`hw.engine.LayerEngine` behind the bridge, one
  convolution per RUN, the host runs the rest.

Each core's ports are the bridge's byte streams (``rx_*`` in, ``tx_*`` out, valid/ready),
simulated as they are by ``sim/board_cocotb.py``. :class:`AcceleratorTop` puts either on the
platform's ``uart`` resource through a :class:`hw.uart.UartRx`/``UartTx`` pair, at the board's
fastest rate for the clock; :func:`accelerator_top` is the factory ``(platform, clk_hz) ->
AcceleratorTop`` that ``lcq build`` hands to :func:`boards.build.build`.
"""

from __future__ import annotations

from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from compiler.graph import CompiledModel
from hw.engine import LayerEngine
from hw.engine_params import EngineParams
from hw.link import LinkBridge
from hw.network import NetworkCore
from hw.network_params import IMAGE, NetworkParams, build_digest
from hw.protocol import LinkMode
from hw.delay import delayed
from hw.reset_tree import own_reset_submodule
from hw.uart import UartRx, UartTx

from .boards import LINK_PAYLOAD, Board, uart_baud
from .fit import engine_for_board, network_for_board
from .runtime import MODES


class _LinkedCore(wiring.Component):
    """An engine side (``self.engine``) and its link bridge (``self.bridge``); ``rx_valid``/``rx_data``/
    ``rx_error`` (bytes from the host, with a framing-error flag, no back-pressure) and ``tx_valid``/
    ``tx_ready``/``tx_data`` (bytes to the host) are the bridge's ``rx`` and ``tx`` streams, flat: a
    stream without back-pressure cannot be a Verilog top's port. Each side takes the reset from a copy of its own
    on an ECP5 (:func:`hw.reset_tree.own_reset_submodule`)."""

    def __init__(self):
        super().__init__({"rx_valid": In(1), "rx_data": In(8), "rx_error": In(1),
                          "tx_valid": Out(1), "tx_ready": In(1), "tx_data": Out(8)})

    def elaborate(self, platform):
        m = Module()
        own_reset_submodule(m, "engine", self.engine, platform, "core_sync")
        own_reset_submodule(m, "bridge", self.bridge, platform, "bridge_sync")
        wiring.connect(m, self.bridge.engine, self.engine)
        rx, tx = self.bridge.rx, self.bridge.tx
        m.d.comb += [rx.valid.eq(self.rx_valid), rx.payload.data.eq(self.rx_data), rx.payload.error.eq(self.rx_error),
                     self.tx_valid.eq(tx.valid), tx.ready.eq(self.tx_ready), self.tx_data.eq(tx.payload)]
        return m


class AcceleratorCore(_LinkedCore):
    """Layer engine and link bridge (layers mode). ``timeout_cycles``: how long a frame may stall before
    the bridge drops it (a few byte times); ``max_payload``: the bridge's frame buffer in bytes. INFO states
    the build digest of ``params`` (:func:`hw.network_params.build_digest`)."""

    def __init__(self, params: EngineParams, timeout_cycles: int, max_payload: int = 512):
        self.params = params
        self.engine = LayerEngine(params)
        self.bridge = LinkBridge(params.addr_bits, params.target_bits, params.cols * params.out_bits, params.rows,
                                 params.cols, code_bits=params.code_bits, max_payload=max_payload,
                                 timeout_cycles=timeout_cycles, build=build_digest(params))
        super().__init__()


class NetworkAcceleratorCore(_LinkedCore):
    """Whole-network core and link bridge (network mode): the bridge's ``engine`` port is the core's own
    signature, flipped (its ``probe`` left unconnected); INFO states ``classes``, the logits of a RUN, and the
    build digest of ``params`` (:func:`hw.network_params.build_digest`); LOADs to
    the ``IMAGE`` target are taken while the core runs (the next image is staged).
    ``timeout_cycles`` and ``max_payload`` as :class:`AcceleratorCore`."""

    def __init__(self, params: NetworkParams, classes: int, timeout_cycles: int, max_payload: int = 512):
        self.params, self.classes = params, classes
        self.engine = NetworkCore(params)
        self.bridge = LinkBridge(params.addr_bits, params.target_bits, params.value_bits, params.engine.rows,
                                 params.engine.cols, max_payload=max_payload, timeout_cycles=timeout_cycles,
                                 mode=LinkMode.NETWORK, classes=classes, image_target=IMAGE,
                                 build=build_digest(params), signature=self.engine.signature)
        super().__init__()


class AcceleratorTop(Elaboratable):
    """The core of ``params`` (an :class:`EngineParams`: layers mode; a :class:`NetworkParams`: network
    mode, ``classes`` logits per image) on the platform's ``uart`` resource at ``baud`` (clock
    ``clk_hz``), its frame buffer one block RAM of ``family`` (512 bytes on iCE40, 2048 on ECP5). On the ECP5
    each received byte reaches the bridge a cycle later, from registers: the receiver, by its pin, and the
    bridge need not lie side by side (their FSMs were 12.4 and 12.8 ns on the ULX3S-85F at c4a8796)."""

    def __init__(self, params: EngineParams | NetworkParams, clk_hz: float, baud: int, family: str = "ice40",
                 classes: int = 0):
        self.params, self.clk_hz, self.baud, self.classes = params, clk_hz, baud, classes
        self.max_payload, self.registered_rx = LINK_PAYLOAD[family], family == "ecp5"

    def elaborate(self, platform):
        m = Module()
        # A frame may pause for 20 byte times before the bridge drops it.
        byte_cycles = int(self.clk_hz * 10 / self.baud)
        if isinstance(self.params, NetworkParams):
            core = NetworkAcceleratorCore(self.params, self.classes, timeout_cycles=20 * byte_cycles,
                                          max_payload=self.max_payload)
        else:
            core = AcceleratorCore(self.params, timeout_cycles=20 * byte_cycles, max_payload=self.max_payload)
        m.submodules.core = core
        m.submodules.uart_rx = uart_rx = UartRx(int(self.clk_hz), self.baud)
        m.submodules.uart_tx = uart_tx = UartTx(int(self.clk_hz), self.baud)
        received = [uart_rx.o.valid, uart_rx.o.payload.data, uart_rx.o.payload.error]
        if self.registered_rx:
            received = [delayed(m, value, 1, f"rx_{name}", reset_less=name != "valid")
                        for value, name in zip(received, ("valid", "data", "error"))]
        m.d.comb += [core.rx_valid.eq(received[0]), core.rx_data.eq(received[1]),
                     core.rx_error.eq(received[2]), uart_tx.i.valid.eq(core.tx_valid),
                     core.tx_ready.eq(uart_tx.i.ready), uart_tx.i.payload.eq(core.tx_data)]
        uart = platform.request("uart", 0)
        m.d.comb += [uart_rx.rx.eq(uart.rx.i), uart.tx.o.eq(uart_tx.tx)]
        return m


def accelerator_top(model: CompiledModel, board: Board, rows: int | None = None, cols: int | None = None,
                    mode: str = "network", force: bool = False, multiply_cols: int | None = None,
                    mhz: float | None = None):
    """``(platform, clk_hz) -> AcceleratorTop`` for ``model`` on ``board`` in ``mode`` (``"network"``: the
    whole-network core; ``"layers"``: the layer engine); the fit is checked now, before any synthesis, unless
    ``force`` (network mode, ``rows`` x ``cols`` given: :func:`boards.fit.network_for_board`, as are
    ``multiply_cols`` and ``mhz``, the clock it paces the array by; default the board's).
    The factory carries ``mode``, ``params`` and ``network`` (network mode: the chosen
    :class:`boards.fit.BoardNetwork`) or ``engine`` (layers mode: the chosen :class:`boards.fit.BoardEngine`);
    the other is None."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if force and mode != "network":
        raise ValueError("forcing a build past the fit estimate is for the whole-network core (--mode network)")
    if multiply_cols and mode != "network":
        raise ValueError("multiplying in some columns only (--multiply-cols) is for the whole-network core "
                         "(--mode network)")
    if mode == "network":
        network = network_for_board(model, board, rows, cols, force, multiply_cols,
                                    clock_hz=None if mhz is None else mhz * 1e6)
        params = network.params

        def factory(platform, clk_hz):
            return AcceleratorTop(params, clk_hz, uart_baud(board, clk_hz), board.family, classes=model.num_classes)

        factory.engine, factory.network = None, network
    else:
        engine = engine_for_board(model, board, rows, cols)
        params = engine.params

        def factory(platform, clk_hz):
            return AcceleratorTop(params, clk_hz, uart_baud(board, clk_hz), board.family)

        factory.engine, factory.network = engine, None
    factory.mode, factory.params = mode, params
    return factory
