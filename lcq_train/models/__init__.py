"""Model registry: ``build_model(name, input_shape, num_classes)``."""

from __future__ import annotations

from torch import nn

from .cnn import SmallCNN
from .resnet import PreActResNet

MODELS = ("cnn", "resnet20", "resnet56")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A full-precision model (all quantizers identity) for inputs of ``input_shape`` (C, H, W)."""
    if name == "cnn":
        return SmallCNN(input_shape, num_classes)
    if name in ("resnet20", "resnet56"):
        if tuple(input_shape[1:]) != (32, 32):
            raise ValueError(f"{name} is the CIFAR model for 32x32 inputs, not {input_shape[1]}x{input_shape[2]}; use --model cnn")
        return PreActResNet(int(name[len("resnet"):]), num_classes, input_shape[0])
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
