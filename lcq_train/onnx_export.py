"""ONNX export of a fake-quantized model, in standard ONNX operators only (``lcq export-onnx``).

:func:`export_onnx` writes what the quantized model computes in eval mode:

- **weights** as constant initializers holding their fake-quantized values, exactly the tensor the
  layer multiplies with (``layer.wq(layer.weight)``: LWN and the level grid already applied); biases
  and BatchNorm stay as they are (BN is not folded into the convolutions);
- **each activation quantizer** (:class:`~lcq_train.layers.QAct`) as its level table::

      code  = ReduceSum(Cast(GreaterOrEqual(Unsqueeze(x, -1), <name>.thresholds)), axis -1)
      y     = Gather(<name>.table, code)                 (signed: |x| compared, then y * Sign(x))

  ``<name>.thresholds`` (s float32 values) are the decision thresholds on the quantizer's input:
  threshold c is the smallest float32 ``x`` whose code is at least c, found by bisection over
  float32 values with the quantizer's own code function, so ``code`` is the activation code j of
  the integer contract (DESIGN.md) bit for bit, ties and rounding included. ``<name>.table``
  (s + 1 float32 values) holds the quantizer's outputs, ``table[j]`` = the PyTorch quantizer's
  output for code j (``A[j] * alpha / s'``), so the graph computes exactly its staircase. (A NaN
  input gets code 0; the contract does not define NaN.)

Model input ``image``: float32 (N, C, H, W), pixel value / 255 as the trainer feeds it (N free);
output ``logits``. The graph comes from torch's TorchScript exporter (``dynamo=False``: it needs
no onnxscript and keeps BatchNorm unfolded; torch before 2.5 has only that one; its deprecation
notices are silenced here, its tracer warnings are not).

Recorded per quantizer, as JSON in the model's ``metadata_props``:

- ``lcq.activation.<name>``: method, bits, outer_bits (b', null: none), signed, alpha, levels (the
  integer level table A, null without b'), step (``alpha / s'``), thresholds, table;
- ``lcq.weight.<layer>``: method, bits, outer_bits, weight_norm, levels (W), step (the real value of
  one integer level: ``alpha * sigma_w / s'`` with LWN) of the layer's weight quantizer;

and a one-line summary of each activation quantizer in the ``doc_string`` of its Gather node.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .arguments import IntRange
from .atomic import atomic_write
from .layers import QAct
from .quant import lcq_codes, level_scale, uniform_codes
from .quantizer import Quantizer

__all__ = ["DEFAULT_OPSET", "OPSETS", "decision_thresholds", "export_onnx"]

DEFAULT_OPSET = 17
OPSETS = IntRange(13, 20)       # ONNX opsets of the export (ReduceSum takes its axes as an input from 13)
_INF_BITS = 0x7F800000          # float32 +inf as an integer; the bit patterns of floats >= 0 are ordered like them


def _require_onnx():
    try:
        import onnx
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the ONNX export needs the onnx package, which is not installed: "
                                  "pip install onnx (or pip install -e '.[onnx]')", name="onnx") from None
    return onnx


def _codes(q: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """The activation codes of quantizer ``q`` for inputs ``x`` (no outer bits needed, unlike ``q.codes``)."""
    if q.method == "lcq":
        return lcq_codes(x, q.alpha, q.theta, q.spec.bits, q.signed)
    return uniform_codes(x, q.alpha, q.spec.bits, q.signed)


@torch.no_grad()
def decision_thresholds(q: Quantizer) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, table)`` of activation quantizer ``q`` (float32, s and s + 1 values).

    ``thresholds[c - 1]`` is the smallest float32 x >= 0 whose code is at least c (bisection over
    the ordered float32 bit patterns from 0 to inf); ``table[j]`` is ``q``'s output for code j.
    For x >= 0 (|x| if signed) the code is the number of thresholds <= x."""
    s = level_scale(q.spec.bits, q.signed)
    need = torch.arange(1, s + 1)
    low, high = np.zeros(s, np.int64), np.full(s, _INF_BITS, np.int64)      # code(low) < c <= code(high)
    while (high - low > 1).any():
        mid = (low + high) // 2
        reached = (_codes(q, torch.from_numpy(mid.astype(np.int32).view(np.float32))) >= need).numpy()
        high, low = np.where(reached, mid, high), np.where(reached, low, mid)
    thresholds = high.astype(np.int32).view(np.float32)
    table = q(torch.from_numpy(np.concatenate(([0.0], thresholds)).astype(np.float32))).numpy()
    return thresholds, table


class _LevelTable(nn.Module):
    """An activation quantizer as standard operators: compare with the thresholds, count, look up."""

    def __init__(self, thresholds: np.ndarray, table: np.ndarray, signed: bool):
        super().__init__()
        self.register_buffer("thresholds", torch.from_numpy(thresholds))
        self.register_buffer("table", torch.from_numpy(table))
        self.signed = signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = x.abs() if self.signed else x
        code = (magnitude.unsqueeze(-1) >= self.thresholds).sum(-1)
        y = self.table[code]
        return y * torch.sign(x) if self.signed else y


def _common(q: Quantizer) -> dict:
    outer = q.spec.outer_bits
    return {"method": q.method, "bits": q.spec.bits, "outer_bits": outer,
            "levels": q.levels().tolist() if outer is not None else None}


def _activation_record(q: QAct, thresholds: np.ndarray, table: np.ndarray) -> dict:
    alpha = q.alpha.item()
    step = alpha / level_scale(q.spec.outer_bits, q.signed) if q.spec.outer_bits is not None else None
    return {**_common(q), "signed": q.signed, "alpha": alpha, "step": step,
            "thresholds": thresholds.tolist(), "table": table.tolist()}


def _weight_record(q: Quantizer, weight: torch.Tensor) -> dict:
    step = q.step(weight) if q.spec.outer_bits is not None else None
    return {**_common(q), "weight_norm": q.weight_norm, "step": step}


def _describe(name: str, record: dict) -> str:
    outer = f", b'={record['outer_bits']}" if record["outer_bits"] is not None else ""
    x = "|x|" if record["signed"] else "x"
    levels = f"; integer levels {record['levels']}, step {record['step']:.6g}" if record["levels"] else ""
    return (f"{name}: {record['method']} activation quantizer, {record['bits']} bits{outer}, alpha "
            f"{record['alpha']:.6g}: code = number of {name}.thresholds <= {x}, output = {name}.table[code]"
            f"{' * sign(x)' if record['signed'] else ''}{levels}")


def _exportable(model: nn.Module) -> tuple[nn.Module, dict, dict]:
    """A float32 CPU copy of ``model`` in eval mode with fake-quantized weights and level-table activation
    quantizers, and the records of its activation and weight quantizers."""
    model = copy.deepcopy(model).cpu().float().eval()
    forward = model.forward             # called with the image alone: torch's exporter would pass forward's
    model.forward = lambda image: forward(image)        # defaulted flags (return_features=False) as inputs
    activations, weights = {}, {}
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            wq = getattr(module, "wq", None)
            if isinstance(wq, Quantizer) and wq.method != "fp":
                weights[name] = _weight_record(wq, module.weight)
                module.weight = nn.Parameter(wq(module.weight), requires_grad=False)
                module.wq = nn.Identity()
            if isinstance(module, QAct) and module.method != "fp":
                thresholds, table = decision_thresholds(module)
                activations[name] = _activation_record(module, thresholds, table)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr,
                        _LevelTable(thresholds, table, module.signed))
    return model, activations, weights


def _own_initializers(graph) -> None:
    """Give each initializer the exporter shared through an Identity node (equal tables) its own copy."""
    initializers = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]:
        tensor = copy.deepcopy(initializers[node.input[0]])
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)


def export_onnx(model: nn.Module, path, input_shape: tuple[int, int, int], opset: int = DEFAULT_OPSET) -> dict:
    """Write ``model`` (quantized, as the trainer builds it) to ONNX file ``path`` atomically; see the
    module docstring for the graph and its metadata. ``input_shape``: (C, H, W) of one image.

    Returns a summary: path, bytes, nodes (count), operators ({op_type: count}), opset, and the records
    of the ``activation_quantizers`` and ``weight_quantizers`` by name."""
    OPSETS.check(opset, "opset")
    onnx = _require_onnx()
    exportable, activations, weights = _exportable(model)
    buffer = io.BytesIO()
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)        # (the TorchScript exporter's notices)
        torch.onnx.export(exportable, (torch.zeros(1, *input_shape),), buffer, opset_version=opset,
                          input_names=["image"], output_names=["logits"], do_constant_folding=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, **legacy)
    proto = onnx.load_from_string(buffer.getvalue())
    _own_initializers(proto.graph)
    for node in proto.graph.node:
        if node.op_type == "Gather" and node.input[0].endswith(".table"):
            name = node.input[0].removesuffix(".table")
            if name in activations:
                node.doc_string = _describe(name, activations[name])
    proto.doc_string = ("Fake-quantized LCQ model: weights hold their quantized values; each activation quantizer "
                        "is a threshold count and a Gather from its level table (metadata lcq.activation.*, "
                        "lcq.weight.*)")
    for kind, records in (("activation", activations), ("weight", weights)):
        for name, record in records.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"lcq.{kind}.{name}", json.dumps(record)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    operators: dict[str, int] = {}
    for node in proto.graph.node:
        operators[node.op_type] = operators.get(node.op_type, 0) + 1
    return {"path": str(Path(path)), "bytes": len(data), "nodes": len(proto.graph.node), "operators": operators,
            "opset": opset, "activation_quantizers": activations, "weight_quantizers": weights}
