"""Small all-convolutional CNN for 8x8 digits and 28x28 MNIST-like inputs.

``act_in -> conv0 -> [bn, relu, act, conv]* -> bn, relu, global avg pool -> act_fc -> fc``.
Down-sampling is by stride-2 convolutions only (no pooling layers but the final
global average), so every layer maps onto the accelerator's conv/FC engine.
Inputs of at most 8 pixels get one stride-2 stage, larger ones two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import QAct, QConv2d, QLinear


class SmallCNN(nn.Module):
    """The small CNN of the MNIST-sized benchmarks: three 3x3 convs of ``widths`` channels (strides 1, 2, 2; the last
    1 on inputs of 8 pixels or fewer), each but the first after BN + ReLU, global average pooling, one linear layer.
    Input ``(N, *input_shape)``, at least 4x4 pixels; output ``(N, num_classes)`` logits. Every conv and the linear
    layer reads its own activation quantizer (``act_in`` the image, ``act1``, ``act2``, ``act_fc``)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, widths=(16, 32, 64)):
        super().__init__()
        channels, height, width = input_shape
        if min(height, width) < 4:
            raise ValueError(f"SmallCNN needs inputs of at least 4x4 pixels, not {height}x{width}")
        strides = (1, 2, 2 if min(height, width) > 8 else 1)
        self.act_in = QAct()
        self.conv0 = QConv2d(channels, widths[0], 3, stride=strides[0], padding=1)
        self.bn1, self.act1 = nn.BatchNorm2d(widths[0]), QAct()
        self.conv1 = QConv2d(widths[0], widths[1], 3, stride=strides[1], padding=1)
        self.bn2, self.act2 = nn.BatchNorm2d(widths[1]), QAct()
        self.conv2 = QConv2d(widths[1], widths[2], 3, stride=strides[2], padding=1)
        self.bn3 = nn.BatchNorm2d(widths[2])
        self.act_fc = QAct()
        self.fc = QLinear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(self.act_in(x))
        x = self.conv1(self.act1(F.relu(self.bn1(x))))
        x = self.conv2(self.act2(F.relu(self.bn2(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn3(x)), 1).flatten(1)
        return self.fc(self.act_fc(x))

    def quant_layers(self) -> list[tuple[str, str]]:
        """(layer name, name of the activation quantizer feeding it), in forward order."""
        return [("conv0", "act_in"), ("conv1", "act1"), ("conv2", "act2"), ("fc", "act_fc")]
