"""cocotb testbench: the host runtime against the generated Verilog of a board's accelerator.

The DUT is :class:`boards.top.AcceleratorCore` (layer engine + link bridge, the bridge's
byte streams as ports ``rx_*``, ``tx_*``) or, with ``mode`` ``"network"`` in the data file,
:class:`boards.top.NetworkAcceleratorCore` (the whole-network core + link bridge, the same ports;
its ``NetworkParams`` from ``params`` when given, as generated, else recomputed from ``rows`` and ``cols``). The
unmodified host side,
:class:`boards.link_host.LinkHost` and :class:`boards.runtime.BoardRunner` (or ``NetworkRunner``), runs in a thread
(cocotb's ``bridge``) and talks to it through :class:`SimPort`, whose ``read`` advances the simulation (cocotb's
``resume``). The data file (``sim.runner``) holds ``model`` (path), ``params`` (the ``EngineParams`` or
``NetworkParams`` description), ``resident``, ``images`` (uint8 nested lists), ``corrupt`` (flip a bit of the
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

The port steps through its byte slots only where something may happen: while no byte is queued to the device, none
is offered (``tx_valid`` low) and the host waits for a read, it waits once, until ``tx_valid`` changes or the slot
at which the read times out, and counts the slots it passed; the read returns at the first of its own checks (every
``byte_cycles`` cycles from its start) after the slot that completed it. The host's thread runs only while the
simulation is paused (cocotb's ``bridge``/``resume``), so nothing is queued while the port waits, and every cycle
count, byte and its cycle is as if it stepped through every slot.
"""

from __future__ import annotations

import json

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.task import bridge, resume
from cocotb.triggers import Event, FallingEdge, First, Timer

from sim.runner import load_data

PERIOD_NS = 10
READ_TIMEOUT_CYCLES = 200_000
PERIOD_PS = PERIOD_NS * 1000
PHASE_PS = PERIOD_PS // 4       # a paced slot: a quarter period after a falling edge
RESET_CYCLES = 3                # the reset pulse (not counted in the port's cycles)


def now_ps() -> int:
    return round(get_sim_time("ps"))


class Waiting:
    """A read in progress: ``n`` bytes, or ``timeout`` cycles from the port's count ``start``; ``met`` is set (and
    ``at``, the simulation time in ps) by the pump at the slot that meets it."""

    def __init__(self, n: int, start: int, timeout: int):
        self.n, self.start, self.timeout, self.at, self.met = n, start, timeout, None, Event()


class SimPort:
    """A pyserial-like port into the DUT: ``write`` queues bytes for ``rx``, ``read(n)`` runs the
    simulation until ``n`` bytes came from ``tx`` or the timeout passed (then returns fewer):
    ``read_timeout`` cycles (default :data:`READ_TIMEOUT_CYCLES`; a large model's RUN computes for
    longer) beyond the time the queued and the awaited bytes take.
    One byte may go each way every ``byte_cycles`` cycles; ``traffic()`` counts cycles, bytes
    each way and requests (frames written) so far. Across the slots in which nothing can pass (no byte queued,
    none offered, a read waiting) the pump waits once, until ``tx_valid`` changes or the read's timeout."""

    def __init__(self, dut, corrupt: int, corrupt_replies: list[int], byte_cycles: int,
                 read_timeout: int = READ_TIMEOUT_CYCLES):
        self.dut, self.corrupt, self.byte_cycles, self.read_timeout = dut, corrupt, byte_cycles, read_timeout
        self.corrupt_replies = set(corrupt_replies)
        self.reset_pending = False      # set by the host's thread: pulse the reset before the next byte goes
        self.to_device: list[int] = []
        self.from_device = bytearray()
        self.sent = self.received = self.requests = self.cycles = 0
        self.waiting: Waiting | None = None     # the read the pump is to meet

    def traffic(self) -> dict[str, int]:
        return {"cycles": self.cycles, "bytes_to_device": self.sent, "bytes_from_device": self.received,
                "requests": self.requests}

    def write(self, data: bytes) -> None:
        self.to_device += list(data)
        self.requests += 1

    def read(self, n: int) -> bytes:
        return resume(self._read)(n)

    async def _read(self, n: int) -> bytes:
        """Checks every ``byte_cycles`` cycles from its start whether ``n`` bytes came or the timeout passed;
        between checks that cannot differ it waits for the pump's word."""
        start, started, step = self.cycles, now_ps(), self.byte_cycles * PERIOD_PS
        timeout = self.read_timeout + (len(self.to_device) + n) * self.byte_cycles
        if len(self.from_device) < n and timeout > 0:
            waiting = self.waiting = Waiting(n, start, timeout)
            # The pump meets it within the timeout's slots (a reset's cycles and a slot's phase on top).
            bound = (timeout + 2 * self.byte_cycles + RESET_CYCLES + 2) * PERIOD_PS
            await First(waiting.met.wait(), Timer(bound, unit="ps"))
            if waiting.at is None:
                self.waiting = None
                raise RuntimeError(f"SimPort: a read of {n} bytes was neither completed nor timed out by the pump "
                                   f"within {bound // PERIOD_PS} cycles (did the pump task end?)")
            # The first check after the slot that met it (a check at that slot's time comes before the slot).
            check = started + ((waiting.at - started) // step + 1) * step
            await Timer(check - now_ps(), unit="ps")
        got = bytes(self.from_device[:n])
        del self.from_device[:n]
        return got

    def _met(self, waiting: Waiting) -> bool:
        return len(self.from_device) >= waiting.n or self.cycles - waiting.start >= waiting.timeout

    def _idle(self) -> bool:
        """Whether this slot would pass nothing and leave the waiting read as it is."""
        waiting = self.waiting
        return (waiting is not None and not self.to_device and not self.reset_pending
                and not int(self.dut.tx_valid.value) and not self._met(waiting))

    async def _skip_idle(self) -> None:
        """From an idle slot, to the next slot at which ``tx_valid`` may be high or the read times out (the
        loop's awaits would reach the same), counting the slots passed."""
        dut, bc, waiting, now = self.dut, self.byte_cycles, self.waiting, now_ps()
        step = bc * PERIOD_PS
        first = (now // PERIOD_PS + 1) * PERIOD_PS + ((bc - 1) * PERIOD_PS + PHASE_PS if bc > 1 else 0)
        slots = -(-(waiting.start + waiting.timeout - self.cycles) // bc)    # to the read's timeout (>= 1)
        # A slot a byte cycle apart is a falling edge: awaited from the rising edge before it.
        deadline = first + (slots - 1) * step - (PERIOD_PS // 2 if bc == 1 else 0)
        await First(dut.tx_valid.value_change, Timer(deadline - now, unit="ps"))
        if bc == 1:
            await FallingEdge(dut.clk)
            slot = now_ps()
        else:
            now = now_ps()
            slot = first + max(0, -(-(now - first) // step)) * step
            if slot > now:
                await Timer(slot - now, unit="ps")
        self.cycles += ((slot - first) // step + 1) * bc

    async def pump(self):
        """Every ``byte_cycles`` cycles: for one cycle, a byte into ``rx`` if any is queued and
        ``tx_ready``, taking the ``tx`` byte if one is offered; then the waiting read is met if its bytes came or
        its cycles passed. Idle slots are passed at once (:meth:`_skip_idle`)."""
        dut = self.dut
        while True:
            if self._idle():
                await self._skip_idle()
                continue
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
            waiting = self.waiting
            if waiting is not None and self._met(waiting):
                self.waiting, waiting.at = None, now_ps()
                waiting.met.set()
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


async def start_port(dut, *args) -> SimPort:
    """The DUT's clock started and its reset released (two cycles), then a :class:`SimPort` of ``args`` on its
    byte-stream ports, pumping."""
    dut.rx_valid.value = dut.rx_error.value = dut.tx_ready.value = 0
    dut.rst.value = 1
    Clock(dut.clk, PERIOD_NS, unit="ns").start(start_high=False)
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    port = SimPort(dut, *args)
    cocotb.start_soon(port.pump())
    return port


@cocotb.test()
async def host_runtime_classifies(dut):
    d = load_data()
    port = await start_port(dut, d.get("corrupt", -1), d.get("corrupt_replies", []),
                            d.get("byte_cycles", 1),  # paced from the first image on
                            d.get("read_timeout_cycles", READ_TIMEOUT_CYCLES))
    out = await bridge(classify)(d, port)
    with open(d["results"], "w") as f:
        json.dump(out, f)
