"""cocotb testbench: the host runtime against the generated Verilog of a board's accelerator.

The DUT is :class:`boards.top.AcceleratorCore` (layer engine + link bridge, the bridge's
byte streams as ports ``rx_*``, ``tx_*``) or, with ``mode`` ``"network"`` in the data file,
:class:`boards.top.NetworkAcceleratorCore` (the whole-network core + link bridge, the same ports;
its ``NetworkParams`` from ``params`` when given, as generated, else recomputed from ``rows`` and ``cols``). The
unmodified host side,
:class:`boards.link_host.LinkHost` and :class:`boards.runtime.BoardRunner` (or ``NetworkRunner``), runs in a thread (cocotb's ``bridge``) and talks to it
through :class:`SimPort`, whose ``read`` advances the simulation (cocotb's ``resume``). The
data file (``sim.runner``) holds ``model`` (path), ``params`` (the ``EngineParams`` or ``NetworkParams``
description), ``resident``, ``images`` (uint8 nested lists), ``corrupt`` (flip a bit of the
nth byte sent, to exercise a NACK and the host's retry; -1 for none), ``corrupt_replies``
(flip a bit of each of these byte indices the device sends, to exercise the host's
recovery), ``byte_cycles``
(clock cycles per byte each way while classifying, as a UART at the board's rate takes; 1
by default; loading the resident constants goes a byte per cycle), ``reset_after`` (pulse the DUT's
reset, as a board's button, once this many images' logits have arrived, before the host's next
request; the host's :class:`hw.protocol.LinkError` that ends the run goes to ``error``, its type and
message, and ``logits`` is empty) and ``results`` (where
the logits and the link traffic go: cycles, bytes each way and requests, for loading the
resident constants and for the images; ``done_cycles``: the cycle count when each image's logits
had arrived).
"""

from __future__ import annotations

import json

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import FallingEdge, Timer

from sim.runner import load_data

PERIOD_NS = 10
READ_TIMEOUT_CYCLES = 200_000


class SimPort:
    """A pyserial-like port into the DUT: ``write`` queues bytes for ``rx``, ``read(n)`` runs the
    simulation until ``n`` bytes came from ``tx`` or the timeout passed (then returns fewer):
    ``read_timeout`` cycles (default :data:`READ_TIMEOUT_CYCLES`; a large model's RUN computes for
    longer) beyond the time the queued and the awaited bytes take.
    One byte may go each way every ``byte_cycles`` cycles; ``traffic()`` counts cycles, bytes
    each way and requests (frames written) so far."""

    def __init__(self, dut, corrupt: int, corrupt_replies: list[int], byte_cycles: int,
                 read_timeout: int = READ_TIMEOUT_CYCLES):
        self.dut, self.corrupt, self.byte_cycles, self.read_timeout = dut, corrupt, byte_cycles, read_timeout
        self.corrupt_replies = set(corrupt_replies)
        self.reset_pending = False      # set by the host's thread: pulse the reset before the next byte goes
        self.to_device: list[int] = []
        self.from_device = bytearray()
        self.sent = self.received = self.requests = self.cycles = 0

    def traffic(self) -> dict[str, int]:
        return {"cycles": self.cycles, "bytes_to_device": self.sent, "bytes_from_device": self.received,
                "requests": self.requests}

    def write(self, data: bytes) -> None:
        self.to_device += list(data)
        self.requests += 1

    def read(self, n: int) -> bytes:
        return resume(self._read)(n)

    async def _read(self, n: int) -> bytes:
        start = self.cycles
        timeout = self.read_timeout + (len(self.to_device) + n) * self.byte_cycles
        while len(self.from_device) < n and self.cycles - start < timeout:
            await Timer(self.byte_cycles * PERIOD_NS, unit="ns")
        got = bytes(self.from_device[:n])
        del self.from_device[:n]
        return got

    async def pump(self):
        """Every ``byte_cycles`` cycles: for one cycle, a byte into ``rx`` if any is queued and
        ``tx_ready``, taking the ``tx`` byte if one is offered."""
        dut = self.dut
        while True:
            if self.reset_pending:
                self.reset_pending = False
                dut.rst.value = 1
                for _ in range(3):
                    await FallingEdge(dut.clk)
                dut.rst.value = 0
            if self.to_device:
                byte = self.to_device.pop(0)
                if self.sent == self.corrupt:
                    byte ^= 0x10
                self.sent += 1
                dut.rx_valid.value, dut.rx_data.value = 1, byte
            dut.tx_ready.value = 1
            if int(dut.tx_valid.value):
                byte = int(dut.tx_data.value)
                self.from_device.append(byte ^ 0x10 if self.received in self.corrupt_replies else byte)
                self.received += 1
            await FallingEdge(dut.clk)
            dut.rx_valid.value = dut.tx_ready.value = 0
            if self.byte_cycles > 1:    # to a quarter period after a falling edge
                await Timer((self.byte_cycles - 1) * PERIOD_NS * 1000 + PERIOD_NS * 250, unit="ps")
            self.cycles += self.byte_cycles


def classify(d: dict, port: SimPort) -> dict:
    """The host side, blocking, in its own thread."""
    from boards.link_host import LinkHost
    from boards.runtime import BoardRunner
    from compiler.format import load
    from hw.engine_params import EngineParams
    from hw.protocol import LinkError

    host = LinkHost(port)
    model = load(d["model"])
    if d.get("mode", "layers") == "network":
        from boards.runtime import NetworkRunner
        from hw.network_params import NetworkParams

        # the core as generated (``params``: its multiplying columns too), else the default one of its array
        params = (NetworkParams.from_dict(d["params"]) if "params" in d
                  else NetworkParams.for_model(model, d["rows"], d["cols"]))
        runner = NetworkRunner(host, model, params)
    else:
        runner = BoardRunner(host, model, EngineParams.from_dict(d["params"]), d["resident"])
    paced, port.byte_cycles = port.byte_cycles, 1
    runner.load_constants()
    loading, port.byte_cycles = port.traffic(), paced
    done_cycles = []        # the port's cycle count as each image's logits arrive

    def progress(done, total):
        done_cycles.append(port.cycles)
        if done == d.get("reset_after"):
            port.reset_pending = True

    try:
        result = runner.classify(np.asarray(d["images"], dtype=np.uint8), progress=progress)
        logits, error = result.logits.tolist(), None
    except LinkError as e:
        if "reset_after" not in d:
            raise
        logits, error = [], {"type": type(e).__name__, "message": str(e)}
    images = {name: value - loading[name] for name, value in port.traffic().items()}
    return {"logits": logits, "loading": loading, "images": images, "retried": host.retried,
            "repeated": runner.repeated, "done_cycles": done_cycles, **({"error": error} if error else {})}


@cocotb.test()
async def host_runtime_classifies(dut):
    d = load_data()
    dut.rx_valid.value = dut.rx_error.value = dut.tx_ready.value = 0
    dut.rst.value = 1
    Clock(dut.clk, PERIOD_NS, unit="ns").start(start_high=False)
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    port = SimPort(dut, d.get("corrupt", -1), d.get("corrupt_replies", []),
                   d.get("byte_cycles", 1),  # paced from the first image on
                   d.get("read_timeout_cycles", READ_TIMEOUT_CYCLES))
    cocotb.start_soon(port.pump())
    out = await bridge(classify)(d, port)
    with open(d["results"], "w") as f:
        json.dump(out, f)
