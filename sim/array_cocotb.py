"""cocotb testbench for ``hw.pe.PEArray`` (any variant), driven by the data file of ``sim.runner``.

The data (written by ``tests/test_sim_array.py``; no torch or Amaranth in here) holds
``rows``, ``cols``, ``acc_bits``, ``variant``, the layer's level tables ``w_levels`` and
``a_levels``, optionally ``member`` (the array is member ``member`` of a ``sim.bundle.Bundle``
top: its ports are ``<member>__<port>``, its PEs under instance ``<member>``), and ``passes``: weight loads, each followed by a stream. A pass has

- ``label`` (for messages) and ``weights[r][c] = [sign, k]`` (PE (r, c)'s weight code);
- ``load``: the ``w_load`` beats, each a dict of port values (``w_pe``, ``w_code``, and
  the variant's load ports), one beat per clock;
- ``a_valid[r][t]``, ``a_code[r][t]`` (row r's stream, element t; invalid slots carry a
  random code that must be ignored), ``psum_in[c][t]``;
- ``expected[c][t]``: ``psum_in + sum over valid rows of sgn * L[k][j]``, wrapped to
  ``acc_bits`` (the integer reference's accumulator, computed by the caller).

Timing is ``PEArray``'s documented contract, counting rising edges ``n`` after loading, with
``p`` = ``hw.pe_words.ARRAY_PIPELINE``: row r's element t is driven for edge ``t + r``,
``psum_in[c][t]`` for edge ``t + c + 1 + p``, and ``psum_out[c]`` is read after edge
``t + rows + c + p`` (PE (r, c)'s after edge ``t + r + c + 1 + p``). Inputs change and outputs are
read at falling edges. Every column output of every element is checked bit for bit; the
first mismatch is reported with its column, element, edge and simulation time, the
per-row terms, and (where the simulator exposes the PEs' registers) the first PE of
the column whose partial sum went wrong.
"""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge

from hw.pe_words import ARRAY_PIPELINE
from sim.runner import load_data

PERIOD_NS = 10


def wrap(x: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (x + half) % (2 * half) - half


def port(dut, d: dict, name: str, index: int | None = None):
    """A top-level port; interface and array members are joined with ``__`` in Amaranth's Verilog."""
    prefix = f"{d['member']}__" if d.get("member") else ""
    return getattr(dut, prefix + (name if index is None else f"{name}__{index}"))


def pe_probes(dut, d: dict):
    """``psum_out`` handles of every PE, or None where the simulator does not expose them."""
    try:
        array = getattr(dut, d["member"]) if d.get("member") else dut
        return [[getattr(array, f"pe_{r}_{c}").psum_out for c in range(d["cols"])] for r in range(d["rows"])]
    except (AttributeError, KeyError, IndexError, TypeError):
        return None


def term(d: dict, p: dict, r: int, c: int, t: int) -> int:
    """Row r's contribution to column c for element t of pass p: ``valid * sgn * W[k] * A[j]``."""
    sign, k = p["weights"][r][c]
    return p["a_valid"][r][t] * (-1) ** sign * d["w_levels"][k] * d["a_levels"][p["a_code"][r][t]]


def as_int(value):
    """The signed integer of a read value, or its string where it holds X/Z."""
    return value.to_signed() if value.is_resolvable else str(value)


class Array:
    """The DUT's ports, driven and read at falling edges of ``clk``."""

    def __init__(self, dut, d: dict):
        self.dut, self.rows, self.cols = dut, d["rows"], d["cols"]
        self.w_load = port(dut, d, "w_load")
        self.a_valid = [port(dut, d, "a_valid", r) for r in range(self.rows)]
        self.a_code = [port(dut, d, "a_code", r) for r in range(self.rows)]
        self.psum_in = [port(dut, d, "psum_in", c) for c in range(self.cols)]
        self.psum_out = [port(dut, d, "psum_out", c) for c in range(self.cols)]
        names = sorted({name for p in d["passes"] for beat in p["load"] for name in beat})
        self.load_ports = {name: port(dut, d, name) for name in names}
        self.probes = pe_probes(dut, d)

    async def reset(self):
        for sig in [self.w_load, *self.a_valid, *self.a_code, *self.psum_in, *self.load_ports.values()]:
            sig.value = 0
        self.dut.rst.value = 1
        Clock(self.dut.clk, PERIOD_NS, unit="ns").start(start_high=False)
        for _ in range(2):
            await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def load(self, beats: list[dict]):
        """The ``w_load`` beats, one per clock."""
        for beat in beats:
            self.w_load.value = 1
            for name, value in beat.items():
                self.load_ports[name].value = value
            await FallingEdge(self.dut.clk)
        self.w_load.value = 0

    async def stream(self, p: dict):
        """Run pass ``p``'s stream; ``(got, partial)``: ``got[c][t] = (psum_out, edge, ns)`` and
        ``partial[r][c][t]``, PE (r, c)'s ``psum_out`` for element t (None without probes)."""
        rows, cols, length = self.rows, self.cols, len(p["expected"][0])
        got = [[None] * length for _ in range(cols)]
        partial = [[[None] * length for _ in range(cols)] for _ in range(rows)]
        pipeline = ARRAY_PIPELINE
        for n in range(length + rows + cols + pipeline):   # n: the rising edge the inputs set now are sampled at
            for r in range(rows):
                t = n - r
                self.a_valid[r].value = p["a_valid"][r][t] if 0 <= t < length else 0
                self.a_code[r].value = p["a_code"][r][t] if 0 <= t < length else 0
            for c in range(cols):
                t = n - c - 1 - pipeline
                self.psum_in[c].value = p["psum_in"][c][t] if 0 <= t < length else 0
            await FallingEdge(self.dut.clk)     # edge n has passed
            for c in range(cols):
                t = n - rows - c - pipeline
                if 0 <= t < length:
                    got[c][t] = (as_int(self.psum_out[c].value), n, get_sim_time("ns"))
                for r in range(rows if self.probes else 0):
                    t = n - r - c - 1 - pipeline
                    if 0 <= t < length:
                        partial[r][c][t] = as_int(self.probes[r][c].value)
        return got, partial


def first_mismatch(d: dict, p: dict, got, partial) -> str | None:
    """None if every output of pass ``p`` is as expected, else a report of the first wrong one."""
    rows, cols, length = d["rows"], d["cols"], len(p["expected"][0])
    bad = [(got[c][t][1], c, t) for c in range(cols) for t in range(length) if got[c][t][0] != p["expected"][c][t]]
    if not bad:
        return None
    n, c, t = min(bad)
    value, _, time_ns = got[c][t]
    lines = [f"pass {p['label']!r}: {len(bad)} of {length * cols} column outputs differ from the reference; "
             f"first: column {c}, element {t}: psum_out[{c}] = {value}, expected {p['expected'][c][t]} "
             f"(after rising edge {n} of the stream, t = {time_ns:g} ns)",
             f"  psum_in[{c}][{t}] = {p['psum_in'][c][t]}"]
    for r in range(rows):
        sign, k = p["weights"][r][c]
        lines.append(f"  row {r}: weight (sign {sign}, k {k}), a_valid {p['a_valid'][r][t]}, "
                     f"code j {p['a_code'][r][t]}: term {term(d, p, r, c, t)}")
    if partial[0][0][0] is not None:      # the PEs' registers could be read
        running = p["psum_in"][c][t]
        for r in range(rows):
            running = wrap(running + term(d, p, r, c, t), d["acc_bits"])
            if partial[r][c][t] != running:
                lines.append(f"  first wrong partial sum: PE (row {r}, column {c}) psum_out = {partial[r][c][t]}, "
                             f"psum_in + terms of rows 0..{r} = {running} (after edge {n - (rows - 1 - r)})")
                break
        else:
            lines.append("  every PE's partial sum equals psum_in + its terms: "
                         "the expected value disagrees with the sum of sgn * W[k] * A[j]")
    return "\n".join(lines)


@cocotb.test()
async def array_matches_reference(dut):
    d = load_data()
    array = Array(dut, d)
    await array.reset()
    for p in d["passes"]:
        await array.load(p["load"])
        got, partial = await array.stream(p)
        report = first_mismatch(d, p, got, partial)
        if report is not None:
            raise AssertionError(report)
        dut._log.info("%d x %d %s array, pass %r: %d elements x %d columns match the reference",
                      d["rows"], d["cols"], d["variant"], p["label"], len(p["expected"][0]), d["cols"])
