"""cocotb testbench: a simulated board that the operating system sees as a serial device.

The DUT is :class:`sim.board_pty.BoardPins`: the board's own top (:class:`boards.top.AcceleratorTop`, its
UART included) with the ``uart`` resource's two pins as ports ``uart_rx`` (into the FPGA) and ``uart_tx``
(out of it), clocked at the board's PLL frequency. This testbench opens a pseudo-terminal (``os.openpty``,
raw mode), writes the path of its slave side (``/dev/pts/N``) to ``port_file`` and bridges it to the pins
as the USB-serial chip of the board would, bit by bit at ``baud`` in simulated time (8N1, the line idle
high, least significant bit first):

- bytes a program writes to the slave (pyserial, ``lcq run``) are read from the master, queued, and
  driven onto ``uart_rx`` one bit period (``bit_ps``, the host's nominal rate) after another;
- a falling edge on ``uart_tx`` starts a byte: the start bit is checked half a bit later, each data bit
  and the stop bit sampled in its middle, and the byte written to the master (a low stop bit counts as a
  framing error; the byte is still delivered, as a USB-serial chip does).

Pacing: the line runs at ``baud`` in simulated time; where the simulation runs faster than real time it
waits for the wall clock (``select`` on the master, so a byte from the host ends the wait at once), so
no byte crosses faster than the real line would carry it; a slower simulation is a slower line, which
the host's read timeouts must allow.

Faults: ``corrupt_to_board`` and ``corrupt_from_board`` list byte indices (counted from 0 since the start,
in each direction) whose bit 4 is flipped on the line (as :class:`sim.board_cocotb.SimPort` does).

The run ends, passing, ``seconds`` wall-clock seconds after the clock starts (every wait in it is
bounded by that deadline). While it runs, ``status_file`` (JSON, replaced atomically at most every
``status_every`` seconds and at the end) holds ``port``, ``bytes_to_board``, ``bytes_from_board``,
``corrupted_to_board`` and ``corrupted_from_board`` (the indices flipped so far), ``framing_errors``,
``dropped`` (bytes for the host that the pty would not take: the host stopped reading), ``sim_ns`` and
``wall_s``. Data file keys (:func:`sim.runner.load_data`): ``clk_ps``, ``bit_ps``, ``port_file``,
``status_file``, ``seconds``, ``status_every``, ``corrupt_to_board``, ``corrupt_from_board``.
"""

from __future__ import annotations

import errno
import json
import os
import select
import termios
import time
import tty
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer
from cocotb.utils import get_sim_time

from sim.runner import load_data

POLL_BYTES = 16             # byte times between looks at the pty while nothing is queued for the board
LEAD_S = 0.002              # how far simulated time may run ahead of the wall clock before it waits
CREDIT_S = 0.05             # how far behind it may fall and then catch up at full speed
PENDING_MAX = 1 << 20       # bytes held for a host that does not read before they are dropped


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class PtyLine:
    """The pseudo-terminal and the two UART wires of the board, with the counters of the status file."""

    def __init__(self, dut, d: dict):
        self.dut, self.bit_ps = dut, int(d["bit_ps"])
        self.byte_ps = 10 * self.bit_ps
        self.deadline_s = float(d["seconds"])
        self.status_file = Path(d["status_file"])
        self.status_every = float(d.get("status_every", 0.25))
        self.corrupt_in = set(d.get("corrupt_to_board", []))
        self.corrupt_out = set(d.get("corrupt_from_board", []))
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)     # no echo, no line editing: the bytes as they are
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        # The slave stays open here too: the master then never reads EIO when the host closes the port,
        # and a host may open and close it any number of times.
        self.queue = bytearray()        # from the host, not yet on the line
        self.pending = bytearray()      # for the host, not yet taken by the pty
        self.to_board = self.from_board = self.framing_errors = self.dropped = 0
        self.corrupted_in: list[int] = []
        self.corrupted_out: list[int] = []
        self.wall0 = self.anchor_wall = time.monotonic()
        self.anchor_ps = get_sim_time("ps")
        self.last_status = 0.0
        Path(d["port_file"]).parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.status_file, self.status())
        tmp = Path(d["port_file"] + ".tmp")
        tmp.write_text(self.port + "\n")
        os.replace(tmp, d["port_file"])

    # Bookkeeping.

    def elapsed(self) -> float:
        return time.monotonic() - self.wall0

    def over(self) -> bool:
        return self.elapsed() >= self.deadline_s

    def status(self) -> dict:
        return {"port": self.port, "bytes_to_board": self.to_board, "bytes_from_board": self.from_board,
                "corrupted_to_board": self.corrupted_in, "corrupted_from_board": self.corrupted_out,
                "framing_errors": self.framing_errors, "dropped": self.dropped,
                "sim_ns": get_sim_time("ns"), "wall_s": round(self.elapsed(), 3)}

    def report(self, force: bool = False) -> None:
        now = self.elapsed()
        if force or now - self.last_status >= self.status_every:
            self.last_status = now
            _write_json(self.status_file, self.status())

    # The pty side.

    def take_from_host(self) -> None:
        """Queue what the host has written (never blocks)."""
        while True:
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                return
            except OSError as e:        # EIO: no slave open (cannot happen while ours is)
                if e.errno == errno.EIO:
                    return
                raise
            if not data:
                return
            self.queue += data

    def give_to_host(self, byte: int | None = None) -> None:
        """Write ``byte`` (and what the pty refused before) to the host, never blocking; past
        :data:`PENDING_MAX` bytes held the oldest are dropped (a host that stopped reading)."""
        if byte is not None:
            self.pending.append(byte)
        while self.pending:
            try:
                n = os.write(self.master, self.pending)
            except BlockingIOError:
                break
            del self.pending[:n]
        if len(self.pending) > PENDING_MAX:
            extra = len(self.pending) - PENDING_MAX
            del self.pending[:extra]
            self.dropped += extra

    def pace(self, wait_s_max: float) -> None:
        """Wait (at most ``wait_s_max``, on the master: a byte from the host ends it) while simulated
        time is ahead of the wall clock; a simulation that fell behind may catch up by :data:`CREDIT_S`."""
        sim_s = (get_sim_time("ps") - self.anchor_ps) / 1e12
        lead = sim_s - (time.monotonic() - self.anchor_wall)
        if lead < -CREDIT_S:                # behind: forget the time lost beyond the credit
            self.anchor_wall += -lead - CREDIT_S
        elif lead > LEAD_S:
            select.select([self.master], [], [], min(lead, wait_s_max))

    # The wires.

    async def drive_rx(self) -> None:
        """Until the deadline: every queued byte onto ``uart_rx`` (start, 8 data bits LSB first, stop),
        looking at the pty every :data:`POLL_BYTES` byte times while nothing is queued."""
        rx = self.dut.uart_rx
        bit = Timer(self.bit_ps, unit="ps")
        while not self.over():
            self.take_from_host()
            self.give_to_host()
            self.report()
            if not self.queue:
                self.pace(0.05)
                await Timer(POLL_BYTES * self.byte_ps, unit="ps")
                continue
            byte = self.queue.pop(0)
            if self.to_board in self.corrupt_in:
                byte ^= 0x10
                self.corrupted_in.append(self.to_board)
            self.to_board += 1
            for level in (0, *((byte >> i) & 1 for i in range(8)), 1):
                rx.value = level
                await bit
            self.pace(0.05)
        self.report(force=True)

    async def watch_tx(self) -> None:
        """Forever (the test ends with :meth:`drive_rx`): each byte on ``uart_tx`` to the host."""
        tx = self.dut.uart_tx
        half, bit = Timer(self.bit_ps // 2, unit="ps"), Timer(self.bit_ps, unit="ps")
        while True:
            await FallingEdge(tx)
            await half
            if int(tx.value):           # high again at the middle of the start bit: a glitch
                continue
            byte = 0
            for i in range(8):
                await bit
                byte |= int(tx.value) << i
            await bit
            if not int(tx.value):
                self.framing_errors += 1
            if self.from_board in self.corrupt_out:
                byte ^= 0x10
                self.corrupted_out.append(self.from_board)
            self.from_board += 1
            self.give_to_host(byte)


@cocotb.test()
async def board_on_a_pty(dut):
    """The board's pins on a pseudo-terminal until ``seconds`` have passed (see the module docstring)."""
    d = load_data()
    dut.uart_rx.value = 1
    dut.rst.value = 1
    Clock(dut.clk, int(d["clk_ps"]), unit="ps").start(start_high=False)
    for _ in range(4):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    line = PtyLine(dut, d)
    cocotb.start_soon(line.watch_tx())
    try:
        await line.drive_rx()
    finally:
        line.report(force=True)
        os.close(line.master)
        os.close(line.slave)
