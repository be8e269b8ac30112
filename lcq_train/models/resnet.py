"""Pre-activation ResNet-20/56 for 32x32 inputs (He et al. 2016), with quantized layers.

Layout of one block (the paper's CIFAR setting)::

    a = act1(relu(bn1(x)));  y = conv2(act2(relu(bn2(conv1(a))))) + shortcut
    shortcut = x, or a strided 1x1 QConv2d of ``a`` when the shape changes.

First conv and final fully connected layer are the 8-bit layers; the input
image (pixel values in [0, 1]) passes through ``act_in``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import QAct, QConv2d, QLinear


class PreActBlock(nn.Module):
    """A pre-activation basic block: BN + ReLU, 3x3 conv (``stride``), BN + ReLU, 3x3 conv, plus the input, or a 1x1
    conv of the first BN + ReLU's output where the block changes the stride or the channels. ``(N, in_ch, H, W)`` in,
    ``(N, out_ch, H / stride, W / stride)`` out."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = QAct()
        self.conv1 = QConv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = QAct()
        self.conv2 = QConv2d(out_ch, out_ch, 3, stride=1, padding=1)
        self.shortcut = QConv2d(in_ch, out_ch, 1, stride=stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(F.relu(self.bn1(x)))
        skip = x if self.shortcut is None else self.shortcut(a)
        y = self.conv1(a)
        y = self.conv2(self.act2(F.relu(self.bn2(y))))
        return y + skip

    def quant_layers(self, prefix: str) -> list[tuple[str, str]]:
        """(layer, its input quantizer) of each conv of the block, names under ``prefix`` (the shortcut shares
        ``act1`` with ``conv1``)."""
        pairs = [(f"{prefix}conv1", f"{prefix}act1")]
        if self.shortcut is not None:
            pairs.append((f"{prefix}shortcut", f"{prefix}act1"))
        pairs.append((f"{prefix}conv2", f"{prefix}act2"))
        return pairs


class PreActResNet(nn.Module):
    """Pre-activation ResNet-(6n+2) for (C, 32, 32) inputs: stages of 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"pre-activation ResNet depth must be 6n+2 (20, 56, ...), not {depth!r}")
        n = (depth - 2) // 6
        self.act_in = QAct()
        self.conv1 = QConv2d(in_channels, 16, 3, padding=1)
        blocks, ch = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(PreActBlock(ch, width, 2 if stage > 0 and i == 0 else 1))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch)
        self.act_fc = QAct()
        self.fc = QLinear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(self.act_in(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)
        return self.fc(self.act_fc(x))

    def quant_layers(self) -> list[tuple[str, str]]:
        """(layer name, name of the activation quantizer feeding it), in forward order."""
        pairs = [("conv1", "act_in")]
        for i, block in enumerate(self.blocks):
            pairs += block.quant_layers(f"blocks.{i}.")
        return pairs + [("fc", "act_fc")]
