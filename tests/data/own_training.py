"""A network trained in your own code, then quantized by lcq from its saved weights (README: "Your own weights").

``python tests/data/own_training.py OUT.pth`` trains :class:`Net` in a plain PyTorch loop (Adam, 15 epochs, seed 0)
on the 8 x 8 digits lcq ships (pixels scaled to [0, 1], as lcq feeds them), prints its test top-1 and saves what
training scripts save: ``{"epoch", "model_state_dict", "optimizer"}`` with ``torch.save``. Then::

    lcq train --model tests/data/own_training.py:Net --dataset digits --method lcq --wbits 3 --abits 3 \\
              --init OUT.pth --epochs 5 --out runs/own-w3a3
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """Two conv + BN + ReLU layers, a max pooling between, global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def main(out: str) -> None:
    from lcq_train.data import load_dataset

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):
        order = torch.randperm(len(data.train_x))
        for i in range(0, len(order), 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(net(data.train_x[batch].float() / 255), data.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        top1 = (net(data.test_x.float() / 255).argmax(1) == data.test_y).float().mean().item()
    print(f"own training, full precision: test top-1 {100 * top1:.2f}% on {len(data.test_y)} images")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 15, "model_state_dict": net.state_dict(), "optimizer": optimizer.state_dict()}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/own_training.py OUT.pth")
    main(sys.argv[1])
