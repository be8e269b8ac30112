"""Plain PyTorch networks (no lcq_train import) that the accelerator runs but that are not the built-in
models, for tests/test_compile_graph.py: ``lcq train --model FILE.py:FACTORY``, then ``lcq compile``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class PostActBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + bn_s(conv_s(x)))`` (He et al. 2015), projection shortcut."""

    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PostActResNet(nn.Module):
    """A post-activation ResNet: stem conv + BN + ReLU, two blocks (the first strided), global average
    pooling by ``mean``, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.block1 = PostActBlock(width, 2 * width, stride=2)
        self.block2 = PostActBlock(2 * width, 2 * width, stride=1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``, one ReLU module
    called twice, an in-place addition; ``identity`` is ``x`` or a 1x1 conv + BN (``downsample``)."""

    def __init__(self, in_ch, out_ch, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet layout at CIFAR scale: stem conv + BN + ReLU (no max pooling), identity-shortcut
    blocks whose ReLU'd sums are the next block's shortcut, a strided block with a downsample, adaptive
    average pooling, flatten, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, stride=2), BasicBlock(2 * w, 2 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class StridedVGG(nn.Module):
    """VGG-style: convs with biases and ReLU6, strided convs instead of max pooling, a 1x1 conv, global
    average pooling, two linear layers with dropout between."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU6(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 1), nn.BatchNorm2d(2 * w), nn.ReLU6(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(4 * w, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class MaxPoolVGG(nn.Module):
    """VGG-style with max pooling: conv blocks each followed by a max pooling, after the ReLU (2 x 2), before
    it (overlapping 3 x 3 windows, stride 2, padded) and after a ReLU6 (functional, 2 x 2 windows at stride 1,
    padded), a 1x1 conv, global average pooling, dropout and a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.overlap = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1)
        self.conv4, self.bn4 = nn.Conv2d(4 * w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w)
        self.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))                  # 8x8 -> 4x4
        x = F.relu(self.overlap(self.bn2(self.conv2(x))))               # 4x4 -> 2x2
        x = F.max_pool2d(F.relu6(self.conv3(x)), 2, 1, 1)               # 2x2 -> 3x3
        x = F.adaptive_avg_pool2d(F.relu(self.bn4(self.conv4(x))), 1)
        return self.fc(torch.flatten(x, 1))


class AvgPoolNet(nn.Module):
    """LeNet-style with average pooling: 2 x 2 windows at stride 2 after BN + ReLU (a module), overlapping
    3 x 3 windows at stride 1 (functional), a 1x1 conv, global average pooling, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=6):
        super().__init__()
        w = width
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.pool = nn.AvgPool2d(2)
        self.conv2, self.bn2 = nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))                  # 8x8 -> 4x4
        x = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 3, 1)         # 4x4 -> 2x2
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PaddedAvgPool(nn.Module):
    """InceptionV3's pool branch: ``F.avg_pool2d(x, 3, 1, 1)`` (zero padding, counted in the divisor) of a block's
    input, then a 1 x 1 conv, beside a 3 x 3 conv of the input, joined; then a strided padded pooling of the join
    (``AvgPool2d(3, 2, 1)``, each part's channels), a 3 x 3 conv, global pooling, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=6):
        super().__init__()
        w = width
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.branch, self.bn_branch = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.pool_conv, self.bn_pool = nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.conv3, self.bn3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        pooled = F.avg_pool2d(x, 3, 1, 1)
        x = torch.cat([F.relu(self.bn_branch(self.branch(x))), F.relu(self.bn_pool(self.pool_conv(pooled)))], 1)
        x = F.relu(self.bn3(self.conv3(self.pool(x))))                      # 8x8 -> 4x4
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Factorized(nn.Module):
    """Factorized convolutions (Inception-style): a 1x3 then a 3x1 conv (padding (0, 1), (1, 0)), a strided
    1x5 conv with padding "valid" on the width, a conv with padding "same", global pooling, a linear layer."""

    def __init__(self, num_classes=10, in_channels=1, width=6):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.row = nn.Sequential(nn.Conv2d(w, w, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.col = nn.Sequential(nn.Conv2d(w, w, (3, 1), padding=(1, 0)), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(w, 2 * w, (1, 5), stride=2, padding=(0, 2), bias=False),
                                  nn.BatchNorm2d(2 * w), nn.ReLU())
        self.same = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding="same", bias=False), nn.BatchNorm2d(2 * w),
                                  nn.ReLU())
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.same(self.wide(self.col(self.row(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WithMaxPool(nn.Module):
    """Max pooling before global average pooling: the classifier's quantizer stands before the average (the
    compiler max pools codes), and the classifier reads the average of the max-pooled codes."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MaxPoolIntoAdd(WithMaxPool):
    """Max pooling whose output a residual addition reads, which the accelerator does not run (max pooling lowers
    only on the way to an activation quantizer)."""

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = F.relu(F.max_pool2d(x, 3, 1, 1) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNet(nn.Module):
    """MobileNet-style (Howard et al. 2017): a stem conv, then depthwise-separable blocks (a depthwise 3x3
    conv, BN, ReLU6, a pointwise 1x1 conv, BN, ReLU6), the second depthwise one strided, a grouped 1x1
    conv (2 groups), global average pooling, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width

        def separable(c_in, c_out, stride):
            return [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
                    nn.BatchNorm2d(c_in), nn.ReLU6(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU6()]

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            *separable(w, 2 * w, 1), *separable(2 * w, 2 * w, 2),
            nn.Conv2d(2 * w, 2 * w, 1, groups=2, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): a 1x1 expansion (BN, ReLU6; none at expansion 1), a depthwise 3x3
    conv (BN, ReLU6), a 1x1 projection with BN and no ReLU (the linear bottleneck), and the block's input added
    where stride and width stay: the next layer reads a signed activation."""

    def __init__(self, c_in, c_out, stride, expansion):
        super().__init__()
        hidden = c_in * expansion
        expand = [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()] if expansion > 1 else []
        self.conv = nn.Sequential(
            *expand, nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """A small MobileNetV2: stem conv (BN, ReLU6), inverted residual blocks (expansion 1 narrowing, as the first
    of MobileNetV2's, then 2 strided, then 2 with its residual), a 1x1 head conv (BN, ReLU6), global average
    pooling, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU6(),
            InvertedResidual(2 * w, w, 1, 1), InvertedResidual(w, 2 * w, 2, 2), InvertedResidual(2 * w, 2 * w, 1, 2),
            nn.Conv2d(2 * w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU6())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): a 1x1 squeeze conv, then a 1x1 and a 3x3 expand conv on its
    output, each with BN and ReLU, their channels concatenated."""

    def __init__(self, c_in, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1, bias=False), nn.BatchNorm2d(squeeze), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1, bias=False), nn.BatchNorm2d(expand),
                                     nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet-style: a stem conv, a fire module, max pooling of its concatenated channels, a second fire
    module, global average pooling of its concatenation, a linear classifier."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w),
                                  nn.ReLU())
        self.fire1, self.pool, self.fire2 = Fire(2 * w, w, w), nn.MaxPool2d(2), Fire(2 * w, w, 2 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.fire2(self.pool(self.fire1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LeNet(nn.Module):
    """LeNet-style, the flatten-then-dense head of the classic MNIST examples: two convs, max pooling, the map
    flattened (``x.view(x.size(0), -1)``) into two linear layers."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.conv1, self.conv2 = nn.Conv2d(in_channels, w, 3, padding=1), nn.Conv2d(w, 2 * w, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(2 * w * 4 * 4, 32), nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)         # 8x8 -> 4x4
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class Gated(nn.Module):
    """A sigmoid, globally averaged into the classifier (whose quantizer stands before the pooling)."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.sigmoid(self.conv(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def post_act_resnet(num_classes, in_channels):
    return PostActResNet(num_classes, in_channels)


def torchvision_resnet(num_classes, in_channels):
    return TorchvisionResNet(num_classes, in_channels)


def strided_vgg(num_classes, in_channels):
    return StridedVGG(num_classes, in_channels)


def maxpool_vgg(num_classes, in_channels):
    return MaxPoolVGG(num_classes, in_channels)


def avgpool_net(num_classes, in_channels):
    return AvgPoolNet(num_classes, in_channels)


def padded_avgpool(num_classes, in_channels):
    return PaddedAvgPool(num_classes, in_channels)


def mobilenet(num_classes, in_channels):
    return MobileNet(num_classes, in_channels)


def mobilenet_v2(num_classes, in_channels):
    return MobileNetV2(num_classes, in_channels)


def squeeze_net(num_classes, in_channels):
    return SqueezeNet(num_classes, in_channels)


def lenet(num_classes, in_channels):
    return LeNet(num_classes, in_channels)


class LeakyNet(nn.Module):
    """Leaky ReLUs (Darknet's 0.1, a functional 0.2) and a per-channel PReLU before signed activation quantizers,
    strided convs instead of pooling, the last 2 x 2 map flattened into the linear layer."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.conv1, self.bn1, self.act1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), \
            nn.LeakyReLU(0.1)
        self.conv2, self.bn2, self.act2 = nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), \
            nn.PReLU(2 * w, init=0.25)
        self.conv3, self.bn3 = nn.Conv2d(2 * w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * 2 * 2, num_classes)

    def forward(self, x):
        x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))     # 8x8 -> 4x4
        x = F.leaky_relu(self.bn3(self.conv3(x)), 0.2)                               # -> 2x2
        return self.fc(torch.flatten(x, 1))


def leaky_net(num_classes, in_channels):
    return LeakyNet(num_classes, in_channels)


class TinyDarknet(nn.Module):
    """Darknet's (YOLOv2-tiny's) blocks: conv, BN, LeakyReLU(0.1), then 2 x 2 max pooling, whose outputs the next
    conv reads signed (the negative halves min pooled); the last conv's map flattened into the linear layer."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]

        self.features = nn.Sequential(*block(in_channels, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                                      *block(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w * 2 * 2, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))          # 8x8 -> 2x2


def tiny_darknet(num_classes, in_channels):
    return TinyDarknet(num_classes, in_channels)


class TanhLeNet(nn.Module):
    """LeNet-5's tanh after every layer, on an 8 x 8 image, with BN before each (signed activations, their halves'
    max pooling a min pooling), the map flattened into two linear layers, a sigmoid on the hidden one (unsigned)."""

    def __init__(self, num_classes=10, in_channels=1, width=6):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc1, self.bn3, self.fc2 = nn.Linear(16 * 2 * 2, 32), nn.BatchNorm1d(32), nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.bn1(self.conv1(x))), 2)        # 8x8 -> 4x4
        x = F.max_pool2d(torch.tanh(self.bn2(self.conv2(x))), 2)        # -> 2x2
        return self.fc2(torch.sigmoid(self.bn3(self.fc1(torch.flatten(x, 1)))))


def tanh_lenet(num_classes, in_channels):
    return TanhLeNet(num_classes, in_channels)


class BNAfterReLU(nn.Module):
    """Keras-style blocks with each BN after its ReLU (conv -> ReLU -> BN -> max pooling), a dense head."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.features = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(w),
                                      nn.MaxPool2d(2), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
                                      nn.BatchNorm2d(2 * w), nn.MaxPool2d(2))
        self.fc = nn.Linear(2 * w * 2 * 2, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))          # 8x8 -> 2x2


def bn_after_relu(num_classes, in_channels):
    return BNAfterReLU(num_classes, in_channels)


class SwishNet(nn.Module):
    """The activations that dip below zero before they rise, each before an (unsigned) activation quantizer: a
    conv-BN-SiLU stem, an inverted residual block of EfficientNet's kind without squeeze-excitation (1x1 expansion,
    BN, hardswish, depthwise 3x3, BN, GELU (tanh form), 1x1 projection, BN, the block's input added), Mish and GELU
    blocks (F. forms) with max pooling, a flattened linear head."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.SiLU())
        self.project_in = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.expand = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False),
                                       nn.BatchNorm2d(2 * w), nn.GELU(approximate="tanh"))
        self.project = nn.Sequential(nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.conv3, self.bn3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.conv4, self.bn4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * 2 * 2, num_classes)

    def forward(self, x):
        x = self.project_in(self.stem(x))                                 # a linear bottleneck, signed
        x = x + self.project(self.depthwise(self.expand(x)))
        x = F.max_pool2d(F.mish(self.bn3(self.conv3(x))), 2)             # 8x8 -> 4x4
        x = F.max_pool2d(F.gelu(self.bn4(self.conv4(x))), 2)             # -> 2x2
        return self.fc(torch.flatten(x, 1))


def swish_net(num_classes, in_channels):
    return SwishNet(num_classes, in_channels)


class SwishHead(nn.Module):
    """EfficientNet's and MobileNetV3's head on a small body: two conv-BN-SiLU blocks (the second strided), a 1x1
    conv-BN-hardswish, global average pooling, linear: the linear layer's quantizer stands before the pooling."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.c3, self.b3 = nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.silu(self.b1(self.c1(x)))
        x = F.silu(self.b2(self.c2(x)))
        x = F.hardswish(self.b3(self.c3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def swish_head(num_classes, in_channels):
    return SwishHead(num_classes, in_channels)
