"""Quantized layers: Conv2d and Linear whose weights pass through a weight quantizer.

Activation quantizers are separate modules (:class:`QAct`) so that one code
tensor can feed several layers (a residual block's conv and its shortcut).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import Quantizer, QuantSpec


class QAct(Quantizer):
    """Activation fake-quantizer (identity until configured): unsigned, as after a ReLU, unless
    ``signed`` (an input that can be negative; only :mod:`lcq_train.graph` makes those)."""

    def __init__(self, spec: QuantSpec = QuantSpec(), signed: bool = False):
        super().__init__(spec, signed=signed)


class QConv2d(nn.Conv2d):
    """Conv2d with an LWN weight quantizer ``wq`` (identity until configured)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("bias", False)
        super().__init__(*args, **kwargs)
        self.wq = Quantizer(QuantSpec(), signed=True, weight_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.wq(self.weight), self.bias)


class QLinear(nn.Linear):
    """Linear with an LWN weight quantizer ``wq`` (identity until configured)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wq = Quantizer(QuantSpec(), signed=True, weight_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.wq(self.weight), self.bias)
