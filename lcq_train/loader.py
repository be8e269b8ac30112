"""In-memory batching and augmentation of uint8 image tensors (data may live on the GPU).

The random draws (order, crop offsets, flips) come from a CPU generator, so a seed gives the same
batches on every device; they move to the data's device once per epoch, not once per batch, so a
GPU epoch waits on the host only at its start.
"""

from __future__ import annotations

import torch


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """(3, n) int64 draws for :func:`shift_crop_flip`: row shifts, column shifts (0..2*pad), flips (0/1)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = (torch.rand(n, generator=generator) < 0.5).long()
    return torch.stack([dy, dx, flip])


def shift_crop_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Each image of the batch ``x`` (N, C, H, W) shifted by ``draws[:2]`` pixels inside a ``pad``-pixel
    zero border, then flipped horizontally where ``draws[2]`` is 1 (``draws``: (3, N) on x's device)."""
    n, c, h, w = x.shape
    dy, dx, flip = draws[0], draws[1], draws[2].bool()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
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
    number of steps). The augmentation draws are made batch after batch from the
    same generator, all before the first batch.
    """
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]
    starts = range(0, order.numel(), batch_size)
    if augment:
        draws = torch.cat([crop_flip_draws(min(batch_size, order.numel() - s), generator) for s in starts], dim=1)
        draws = draws.to(x.device)
    order = order.to(x.device)
    for start in starts:
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment:
            xb = shift_crop_flip(xb, draws[:, start:start + batch_size])
        yield xb.float().div_(255.0), y[idx]
