"""In-memory batching and augmentation of uint8 image tensors (data may live on the GPU)."""

from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel shift crop (zero padding) and horizontal flip of a batch (N, C, H, W)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
    flip = (torch.rand(n, generator=generator, device="cpu") < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            augment: bool = False, rank: int = 0, world_size: int = 1):
    """Yield (float images in [0, 1], labels) batches from uint8 ``x`` (N, C, H, W).

    With ``shuffle``, the order is a permutation drawn from ``seed`` (pass one
    seed per epoch: resuming replays the same order), split across ``world_size``
    ranks in equal shares (the remainder is dropped so every rank runs the same
    number of steps).
    """
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]
    order = order.to(x.device)
    for start in range(0, order.numel(), batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment:
            xb = random_crop_flip(xb, generator)
        yield xb.float().div_(255.0), y[idx]
