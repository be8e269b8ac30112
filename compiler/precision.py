"""Weight codes that the model's own precision (float32, as training computes and scores them) and float64 (as
:func:`compiler.lower.compile_model` computes them, so that neither rounding nor the thread count decides a code)
quantize differently.

A weight within float32's rounding of a quantizer threshold gets one code in training and another in the compiled
model, which is then not quite the model whose accuracy the trainer measured: one of the 105 weights of a CIFAR-10
DenseNet's transition conv moved its top-1 by 0.68 points (README, "Your own network").
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightCodeWarning(UserWarning):
    """Some weight codes of a compiled model differ from those the model's own precision gives."""


def weight_code_differences(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (codes that differ, weights)}`` for each quantized conv or linear layer of ``model`` (a module with a
    weight quantizer ``wq`` of integer levels) whose weight codes in the weights' own dtype differ from float64's;
    empty where none does (always for a float64 model)."""
    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            wq = getattr(module, "wq", None)
            if wq is None or wq.method == "fp" or wq.spec.outer_bits is None:
                continue
            weight = module.weight.detach()
            own = copy.deepcopy(wq).to(weight.dtype).codes(weight)
            exact = copy.deepcopy(wq).double().codes(weight.double())
            differing = int((own != exact).sum())
            if differing:
                out[name] = (differing, weight.numel())
    return out
