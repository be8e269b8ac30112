"""Agreement of the integer reference with the PyTorch fake-quantized model it was compiled from.

The PyTorch side runs in float64 (the fake-quantized forward, unchanged
otherwise, its weights settled as the compiler settles them: :func:`compiler.lower.as_compiled`)
so that its float rounding cannot decide a code; each activation
quantizer's codes are captured with a forward hook. The integer side is
:func:`compiler.reference.run`. Codes can differ only through the documented
fixed-point rounding of residual sums, pooling and logits (and exact ties of
round-half-even, which the integer thresholds round up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lcq_train.layers import QAct

from .graph import CompiledModel, ConcatNode, MaxPoolNode, node_inputs
from .lower import as_compiled
from .reference import check_images, run


@dataclass
class Agreement:
    """Counts over ``images``: per activation quantizer, codes compared and codes that differ; per class (label),
    images and integer top-1 hits."""

    images: int = 0
    correct: int = 0                   # integer top-1 equal to the label
    torch_correct: int = 0
    disagreements: int = 0             # images whose integer and PyTorch top-1 differ
    codes: dict[str, list[int]] = field(default_factory=dict)   # name -> [compared, mismatched]
    class_images: dict[int, int] = field(default_factory=dict)    # label -> images
    class_correct: dict[int, int] = field(default_factory=dict)   # label -> integer top-1 hits

    def to_dict(self) -> dict:
        n = max(self.images, 1)
        return {"images": self.images, "top1": 100.0 * self.correct / n, "torch_top1": 100.0 * self.torch_correct / n,
                "agreement": (self.images - self.disagreements) / n, "disagreements": self.disagreements,
                "code_mismatches": {k: {"compared": c, "mismatched": m} for k, (c, m) in self.codes.items()},
                "per_class": [{"class": c, "images": self.class_images[c],
                               "top1": 100.0 * self.class_correct.get(c, 0) / self.class_images[c]}
                              for c in sorted(self.class_images)]}


def unmatched_codes(compiled: CompiledModel, model: nn.Module) -> list[str]:
    """Codes tensors of ``compiled`` that no activation quantizer of ``model`` is named as (the compiler names
    each after the quantizer that produces it; codes a max pooling or a concatenation reads, on the way to the
    quantizer's own codes, are not compared and not counted). :func:`compare` compares no codes of these."""
    quantizers = {name for name, m in model.named_modules() if isinstance(m, QAct)}
    on_the_way = {name for node in compiled.nodes if isinstance(node, (MaxPoolNode, ConcatNode))
                  for name in node_inputs(node)}
    return [name for name, t in compiled.validate(arrays=False).items()
            if t.bits is not None and name not in on_the_way and name not in quantizers]


@torch.no_grad()
def compare(compiled: CompiledModel, model: nn.Module, images: np.ndarray, labels: np.ndarray,
            batch_size: int = 128, progress=None) -> Agreement:
    """Run both paths on uint8 ``images`` (N, C, H, W) with int ``labels`` (N,) and count differences.

    Codes are compared for each activation quantizer of ``compiled`` (one the logits do not depend
    on, in a head the forward computes but does not return, is not compiled and not compared).
    ``model`` is made :func:`~compiler.lower.as_compiled`, in place. ``progress(result)`` is called after each batch.
    """
    check_images(compiled, images)
    model = as_compiled(model)
    captured: dict[str, np.ndarray] = {}
    compiled_tensors = {node.output for node in compiled.nodes}
    hooks = [m.register_forward_hook(lambda m, inp, out, name=name: captured.__setitem__(name, m.codes(inp[0]).numpy()))
             for name, m in model.named_modules() if isinstance(m, QAct) and name in compiled_tensors]
    signed = {name for name, m in model.named_modules() if isinstance(m, QAct) and m.signed}
    result = Agreement()
    try:
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            captured.clear()
            torch_pred = model(torch.from_numpy(x).double() / 255.0).reshape(len(x), -1).argmax(1).numpy()
            tensors = run(compiled, x)
            int_pred = tensors[compiled.logits].reshape(len(x), -1).argmax(1)
            result.images += len(x)
            result.correct += int((int_pred == y).sum())
            result.torch_correct += int((torch_pred == y).sum())
            result.disagreements += int((int_pred != torch_pred).sum())
            for label, hit in zip(y.tolist(), (int_pred == y).tolist()):
                result.class_images[label] = result.class_images.get(label, 0) + 1
                result.class_correct[label] = result.class_correct.get(label, 0) + hit
            for name, codes in captured.items():
                counts = result.codes.setdefault(name, [0, 0])
                counts[0] += codes.size
                counts[1] += int((_codes(tensors[name], name in signed).reshape(codes.shape) != codes).sum())
            if progress is not None:
                progress(result)
    finally:
        for h in hooks:
            h.remove()
    return result


def _codes(tensor: np.ndarray, signed: bool) -> np.ndarray:
    """The codes of an activation quantizer from its compiled tensor: a signed one's are its positive half's less
    its negative half's (:meth:`compiler.lower._Lowering.signed_codes`: the positive half's channels first)."""
    if not signed:
        return tensor
    half = tensor.shape[1] // 2
    return tensor[:, :half].astype(np.int64) - tensor[:, half:]
