"""A board in Amaranth's simulator: a pyserial-like port into :class:`boards.top.AcceleratorCore`.

``SimulatedBoard(params)`` simulates the engine and the link bridge of a board build;
``write(bytes)`` queues bytes for the device, ``read(n)`` runs the simulation until ``n``
bytes came back or ``timeout`` cycles passed (then it returns fewer, as a serial port
does on its timeout). Bytes enter the bridge's ``rx`` stream one every ``gap`` cycles
(the UART itself is tested on its own in ``tests/test_link.py``); ``tx`` is always ready.
:class:`boards.link_host.LinkHost` and :mod:`boards.runtime` run on it unchanged, so the
host runtime is tested against the very gateware a board runs.
"""

from __future__ import annotations

from amaranth.sim import Simulator

from hw.engine_params import EngineParams

from .top import AcceleratorCore

PERIOD = 1e-8


class SimulatedBoard:
    """The simulated device; ``cycles`` counts the clock cycles simulated so far."""

    def __init__(self, params: EngineParams, *, gap: int = 1, timeout: int = 200_000, timeout_cycles: int = 2_000):
        if gap < 1:
            raise ValueError(f"gap must be at least 1 cycle, not {gap!r}")
        self.core = AcceleratorCore(params, timeout_cycles=timeout_cycles)
        self.gap, self.timeout = gap, timeout
        self.to_device: list[int] = []
        self.from_device = bytearray()
        self.cycles = 0
        self.sim = Simulator(self.core)
        self.sim.add_clock(PERIOD)
        self.sim.add_testbench(self._bytes, background=True)

    async def _bytes(self, ctx):
        rx, tx, wait = self.core.rx, self.core.tx, 0
        ctx.set(tx.ready, 1)
        while True:
            send = bool(self.to_device) and wait == 0
            ctx.set(rx.valid, send)
            if send:
                ctx.set(rx.payload.data, self.to_device.pop(0))
            wait = self.gap - 1 if send else max(wait - 1, 0)
            _, _, valid, byte = await ctx.tick().sample(tx.valid, tx.payload)
            if valid:
                self.from_device.append(byte)

    def _advance(self, cycles: int) -> None:
        self.cycles += cycles
        self.sim.run_until(self.cycles * PERIOD)

    def write(self, data: bytes) -> None:
        self.to_device += list(data)

    def read(self, n: int) -> bytes:
        start = self.cycles
        while len(self.from_device) < n and self.cycles - start < self.timeout:
            self._advance(max(64, self.gap * len(self.to_device)))
        got = bytes(self.from_device[:n])
        del self.from_device[:n]
        return got

    def close(self) -> None:
        pass
