"""Networks written the plain PyTorch way (no lcq_train import), for tests/test_user_model.py.

Each factory takes what ``lcq train --model FILE.py:FACTORY`` passes: num_classes, in_channels
(and input_shape when it asks for it).
"""

import os

import torch
import torch.nn.functional as F
from torch import nn


class VGGRes(nn.Module):
    """VGG-style convs with max pooling, then a post-activation residual block (projection shortcut)
    and one with an identity shortcut, global average pooling and a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.block1 = PostActBlock(w, 2 * w, stride=2)
        self.block2 = PostActBlock(2 * w, 2 * w, stride=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.features(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class PostActBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (He et al. 2015)."""

    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def vgg_res(num_classes, in_channels):
    return VGGRes(num_classes, in_channels)


def vgg_res_shape(num_classes, in_channels, input_shape):
    """Asks for input_shape too."""
    assert input_shape[0] == in_channels
    return VGGRes(num_classes, in_channels, width=4)


class PlainCNN(nn.Module):
    """lcq_train.models.cnn.SmallCNN for 8x8 inputs, written with plain torch.nn layers."""

    def __init__(self, num_classes=10, in_channels=1, widths=(16, 32, 64)):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.conv1 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.conv2 = nn.Conv2d(widths[1], widths[2], 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = self.conv0(x)
        x = self.conv1(F.relu(self.bn1(x)))
        x = self.conv2(F.relu(self.bn2(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn3(x)), 1).flatten(1)
        return self.fc(x)


class PlainPreActBlock(nn.Module):
    """lcq_train.models.resnet.PreActBlock with plain layers (same attribute names)."""

    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) \
            if stride != 1 or in_ch != out_ch else None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        y = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return y + skip


class PlainPreActResNet(nn.Module):
    """lcq_train.models.resnet.PreActResNet with plain layers (same attribute names)."""

    def __init__(self, depth=20, num_classes=10, in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, ch = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(PlainPreActBlock(ch, width, 2 if stage > 0 and i == 0 else 1))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x):
        x = self.blocks(self.conv1(x))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class Normalized(nn.Module):
    """Normalizes the image first (so its first layer sees signed values) and has a linear layer after
    another linear layer without ReLU (a signed input)."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv((x - 0.5) / 0.25)
        x = F.relu(x).mean((2, 3))
        return self.fc2(self.fc1(x))


class Branchy(nn.Module):
    """A forward that branches on tensor values: torch.fx cannot trace it."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.flatten(1))


class NoLayers(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)

    def forward(self, x):
        return self.bn(x).flatten(1)[:, :10]


class Functional(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_channels * 64))

    def forward(self, x):
        return F.linear(x.flatten(1), self.weight)


def per_rank_dropout(num_classes, in_channels):
    """A small CNN with dropout, built after seeding torch's generator by the process's rank (torchrun's
    RANK), as distributed runs do so that each process drops other units: its random draws differ by rank."""
    torch.manual_seed(int(os.environ.get("RANK", "0")))
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(8 * 64, num_classes))


class WithFeatures(nn.Module):
    """Returns (logits, features), or, with ``aux_in_training``, only in training mode (as Inception's auxiliary
    head does): the trainer's loss needs the logits alone."""

    def __init__(self, num_classes=10, in_channels=1, aux_in_training=False):
        super().__init__()
        self.aux_in_training = aux_in_training
        self.conv, self.fc = nn.Conv2d(in_channels, 8, 3, padding=1), nn.Linear(8, num_classes)

    def forward(self, x):
        features = F.relu(self.conv(x)).mean((2, 3))
        logits = self.fc(features)
        return (logits, features) if self.training or not self.aux_in_training else logits


def with_features(num_classes, in_channels):
    return WithFeatures(num_classes, in_channels)


def aux_in_training(num_classes, in_channels):
    return WithFeatures(num_classes, in_channels, aux_in_training=True)


def five_classes(num_classes, in_channels):
    """Ignores num_classes: 5 logits."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def conv_logits(num_classes, in_channels):
    """Logits from a 1x1 conv, left (N, num_classes, 1, 1): not flattened."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Conv2d(8, num_classes, 1))


def rgb_only(num_classes, in_channels):
    """Ignores in_channels: built for 3-channel images."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def not_a_model(num_classes, in_channels):
    return "a string"


def wrong_signature(classes):
    return NoLayers()


def lazy(num_classes, in_channels):
    """Lazy modules (LazyConv2d, LazyBatchNorm2d, LazyLinear): their sizes come from the first forward."""
    return nn.Sequential(nn.LazyConv2d(8, 3, padding=1, bias=False), nn.LazyBatchNorm2d(), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(num_classes))


def no_parameters():
    """As kuangliu's ResNet18(): no parameters, the network for one dataset (10 classes, one channel)."""
    return PlainCNN()


def classes_only(num_classes=10):
    """Takes the class count alone (akamaster's resnet20(num_classes=10)): one channel."""
    return PlainCNN(num_classes)


def keywords(**options):
    """Takes any keyword: gets num_classes, in_channels and input_shape."""
    assert options["input_shape"][0] == options["in_channels"]
    return PlainCNN(options["num_classes"], options["in_channels"])
