"""Per-layer size report of a compiled model (the paper's Tables S1 and 7).

Weight bytes are the packed codes (``ceil(C_out * C_in * k * k * wbits / 8)``) and MACs those
of the layer as compiled (:attr:`ConvNode.macs`: a grouped or depthwise conv is the dense conv
with zero blocks, a kh x kw kernel the square one, as the file stores them);
a LUT layer stores ``m = s_w * s_a`` entries of ``b'_w + b'_a`` bits each (an
entry is the product of an outer weight level, ``b'_w`` bits with its sign,
and an outer activation level, ``b'_a`` bits), ``ceil(m * (b'_w + b'_a) / 8)``
bytes: the paper's ``2^-3 (b'_w + b'_a) m`` (Table 7) rounded up to whole
bytes per layer (21 entries, 42 bytes at W3/A3 with 8-bit outer widths, 27
at 6/4); ``lut_bits_needed`` is the width its largest entry needs without the
sign (the compiled file's ``lut_bits``). The model file holds each entry as a
uint16 (uint32 where one needs it): ``lut_file_bytes``, more than the paper's
bytes where ``b'_w + b'_a < 16`` (42, not 27, at 6/4). A "multiply" layer
(8-bit edge layers) has no LUT. ``total_bytes`` is weights plus LUTs by the
paper's formula; output-stage constants are listed apart (``stage_bytes``:
thresholds and requantize constants at their stated widths, rounded up to
whole bytes per layer).

With ``lanes``, the report also holds the network plan of
:mod:`compiler.network` (``"network"``: :meth:`NetworkPlan.describe`): the
on-chip data memories (code memory, value memory) that running the whole
network on the chip needs, and the logical buffers in them. Sizes in KB are
decimal (1 KB = 1000 bytes = 8000 bits).
"""

from __future__ import annotations

import numpy as np

from .format import lut_dtype
from .graph import CompiledModel, ConvNode, Requantize, Thresholds, signed_bits
from .network import plan_network



def lut_entry_bits(node: ConvNode) -> int:
    """Bits of one LUT entry: ``b'_w + b'_a`` (the paper's Table 7)."""
    return node.outer_wbits + node.outer_abits


def lut_bytes(entries: int, entry_bits: int) -> int:
    """``ceil(entries * entry_bits / 8)``: the paper's ``2^-3 (b'_w + b'_a) m`` in whole bytes."""
    return (entries * entry_bits + 7) // 8


def _stage_bytes(node: ConvNode) -> int:
    stage, channels = node.stage, node.out_shape[0]
    if isinstance(stage, Thresholds):
        width = signed_bits(max(int(abs(stage.thresholds).max()), 1))
        return (channels * (stage.thresholds.shape[1] * width + 1) + 7) // 8
    if isinstance(stage, Requantize):
        width = sum(signed_bits(max(int(abs(a).max()), 1)) for a in (stage.multiplier, stage.bias, stage.shift))
        return (channels * width + 7) // 8
    return 0


def layer_rows(model: CompiledModel) -> list[dict]:
    """One dict per LUT-MAC layer: name, kind, bit-widths, MACs, weight/LUT/stage bytes, accumulator bits."""
    rows = []
    for node in model.convs:
        lut = node.lut() if node.mac == "lut" else None
        entries = lut.size if lut is not None else 0
        bits = lut_entry_bits(node) if entries else 0
        rows.append({"name": node.name, "kind": node.kind, "mac": node.mac, "wbits": node.wbits,
                     "abits": node.abits, "outer_wbits": node.outer_wbits, "outer_abits": node.outer_abits,
                     "macs": node.macs, "weights": int(node.weight_codes.size),
                     "weight_bytes": (node.weight_codes.size * node.wbits + 7) // 8,
                     "lut_entries": entries, "lut_entry_bits": bits, "lut_bytes": lut_bytes(entries, bits),
                     "lut_file_bytes": entries * np.dtype(lut_dtype(lut)).itemsize if entries else 0,
                     "lut_bits_needed": int(lut.max()).bit_length() if entries else 0,
                     "acc_bits": node.acc_bits, "stage": node.stage.kind if node.stage else "accumulator",
                     "stage_bytes": _stage_bytes(node), "signed_input": node.signed_input})
    return rows


def report(model: CompiledModel, lanes: int | None = None) -> dict:
    """``{"layers": [...], "total_bytes", "total_bytes_without_luts", "lut_bytes", "lut_file_bytes", "stage_bytes",
    "macs"}``, and with ``lanes`` (code lanes per word, :func:`compiler.network.plan_network`) ``"network"``: the
    network plan."""
    rows = layer_rows(model)
    weights = sum(r["weight_bytes"] for r in rows)
    luts = sum(r["lut_bytes"] for r in rows)
    rep = {"layers": rows, "total_bytes": weights + luts, "total_bytes_without_luts": weights, "lut_bytes": luts,
           "lut_file_bytes": sum(r["lut_file_bytes"] for r in rows),
           "stage_bytes": sum(r["stage_bytes"] for r in rows), "macs": sum(r["macs"] for r in rows)}
    if lanes is not None:
        rep["network"] = plan_network(model, lanes).describe()
    return rep


def _kb(bits: int) -> str:
    return f"{bits / 8000:,.1f}"


def format_network(net: dict) -> str:
    """The network plan (:meth:`NetworkPlan.describe`) as two markdown tables (buffers, memories) and a total."""
    lanes = net["lanes"]
    parts = [t for t in net["tensors"].values() if t["within"]]
    joined = (f" ({len({t['within'] for t in parts})} concatenations of {len(parts)} parts: each part written into "
              "its concatenation's region, no step of their own)") if parts else ""
    lines = [f"network on the chip: {len(net['steps'])} steps, {len(net['tensors'])} tensors{joined}; code memory "
             f"{lanes} code{'s' if lanes > 1 else ''} per word", "",
             "| buffer | memory | tensors | largest tensor (words) | words alive at once | bits | KB |",
             "|---|---|---|---|---|---|---|"]
    for name, b in net["buffers"].items():
        if b["tensors"]:
            lines.append(f"| {name} | {b['memory']} | {len(b['tensors'])} | {b['largest_tensor_words']:,} | "
                         f"{b['words']:,} | {b['bits']:,} | {_kb(b['bits'])} |")
    lines += ["", "| memory | depth (words) | width (bits) | peak live words | bits | KB |",
              "|---|---|---|---|---|---|"]
    for name, m in net["memories"].items():
        lines.append(f"| {name} | {m['depth']:,} | {m['width']} | {m['peak_live_words']:,} | {m['bits']:,} | "
                     f"{_kb(m['bits'])} |")
    lines += ["", f"total on-chip data memory: {net['total_bits']:,} bits = {_kb(net['total_bits'])} KB "
                  f"(1 KB = 1000 bytes); the buffers are views of these two memories"]
    return "\n".join(lines)


def format_table(rep: dict) -> str:
    """The report as a markdown table with a totals line."""
    lines = ["| layer | kind | W/A | b'_w/b'_a | MAC | MACs | weight bytes | LUT entries | LUT bytes (paper: m (b'_w + "
             "b'_a) / 8) | LUT bytes in the file | acc bits | stage | stage bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["layers"]:
        # (a signed activation's bits as the plan gives them, ±; the layer reads its halves, of a bit less each)
        sign, more = ("±", 1) if r["signed_input"] else ("", 0)
        lines.append(f"| {r['name']} | {r['kind']} | {r['wbits']}/{sign}{r['abits'] + more} | "
                     f"{r['outer_wbits']}/{sign}{r['outer_abits'] + more} "
                     f"| {r['mac']} | {r['macs']:,} | "
                     f"{r['weight_bytes']:,} | {r['lut_entries']} | {r['lut_bytes']} | {r['lut_file_bytes']} | "
                     f"{r['acc_bits']} | {r['stage']} | {r['stage_bytes']:,} |")
    if any(r["signed_input"] for r in rep["layers"]):
        lines += ["", "±: the layer reads a signed activation as its positive and negative halves, unsigned codes of "
                  "a bit less each (LUT entries of b'_a - 1 bits, twice the layer's own MACs)"]
    lines += ["", f"total: {rep['total_bytes']:,} bytes with LUTs, {rep['total_bytes_without_luts']:,} without "
                  f"(LUTs {rep['lut_bytes']:,} bytes by the paper's formula, {rep['lut_file_bytes']:,} in the model "
                  f"file); output-stage constants {rep['stage_bytes']:,} bytes; {rep['macs']:,} MACs per image"]
    if "network" in rep:
        lines += ["", format_network(rep["network"])]
    return "\n".join(lines)
