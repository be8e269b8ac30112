"""Calibration on training batches: data-driven initial clip values, and BN statistics re-estimated.

:func:`calibrate_clips` sets each learnable quantizer's alpha from the values it will quantize (the
"mse" rule below) instead of the plan's fixed ``--alpha-w`` / ``--alpha-a``: the paper's fixed start
``alpha_a = 8`` puts most activations of a model whose BN outputs are ~N(0, 1) into code 0 at 2 bits.
:func:`reestimate_bn` recomputes every BatchNorm's running statistics with the quantizers in place and
frozen, layer after layer, each from what it sees with the layers before it in eval mode: the statistics
a quantized model was trained with were gathered under batch-normalized upstream layers (and weights and
clips that kept changing), and behind coarse quantizers eval mode then sees other inputs; the small
CNN's LCQ W2/A2 lost 20 points to that on MNIST.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from .layers import QAct
from .quant import level_scale, outer_levels, uniform_quantize
from .quantizer import Quantizer

CLIP_INITS = ("fixed", "mse")   # --clip-init: the plan's alpha_w/alpha_a (the paper's), or the MSE rule
GRID = 100                      # candidate clip values: max|x| * i / GRID, i = 1..GRID
TIE = 1e-9                      # errors this close (relative) are ranked by the quantizer itself, as it runs
SAMPLE = 1 << 18                # values per quantizer and batch the rule looks at (a fixed random subset beyond)


def mse_clip(x: torch.Tensor, bits: int, outer_bits: int | None, signed: bool) -> float:
    """The "mse" rule: the clip value alpha among ``max|x| * i / 100`` (i = 1..100) whose uniform
    ``bits``-bit quantizer (LCQ's start: theta = 0 is the identity compander) has the least mean squared
    error on ``x`` (the first such i); unsigned quantizers look at ``max(x, 0)``.

    The error of every candidate comes from one sort of ``|x|``: each code's elements are a run of the sorted
    values (the code, as :func:`~lcq_train.quant.uniform_quantize` rounds it, grows with ``|x|``), found by a
    binary search that rounds as it does, and a run's squared error to its level from prefix sums of the values
    and their squares. Time O(n log n), not 100 passes of the quantizer over ``x``."""
    x = x.detach().flatten().double()
    if not signed:
        x = x.clamp(min=0.0)
    a = x.abs().sort().values
    n = a.numel()
    top = a[-1].item() if n else 0.0
    if not top > 0.0:
        raise ValueError("cannot calibrate a clip value on values that are all zero (or negative, unsigned)")
    s = level_scale(bits, signed)
    alphas = torch.tensor([top * i / GRID for i in range(1, GRID + 1)], dtype=torch.float64)

    def code(values: torch.Tensor) -> torch.Tensor:        # as uniform_quantize rounds |x| / alpha
        return torch.round((values / alphas[:, None]).clamp(0.0, 1.0) * s)

    # first[i, k]: the first index of the sorted values whose code under alphas[i] is k or more (k = 1..s)
    wanted = torch.arange(1, s + 1, dtype=torch.float64).expand(GRID, s)
    lo, hi = torch.zeros(GRID, s, dtype=torch.int64), torch.full((GRID, s), n, dtype=torch.int64)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        below = code(a[mid.clamp(max=n - 1)]) < wanted
        lo, hi = torch.where(below & (lo < hi), mid + 1, lo), torch.where(~below & (lo < hi), mid, hi)
    edges = torch.cat([torch.zeros(GRID, 1, dtype=torch.int64), lo, torch.full((GRID, 1), n, dtype=torch.int64)], 1)
    sums = [torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)]) for v in (a, a.square())]
    first, second = (c[edges[:, 1:]] - c[edges[:, :-1]] for c in sums)
    count = (edges[:, 1:] - edges[:, :-1]).double()
    levels = alphas[:, None] * outer_levels(torch.arange(s + 1, dtype=torch.float64) / s, outer_bits, signed)
    errors = ((second - 2.0 * levels * first + count * levels.square()).sum(1) / n).tolist()
    # Candidates tied to rounding (a sum in another order may round the other way): the quantizer's own error.
    low = min(errors)
    close = [i for i, e in enumerate(errors) if e - low <= TIE * max(abs(low), 1e-300)]
    if len(close) > 1:
        errors = {i: (uniform_quantize(x, alphas[i], bits, outer_bits, signed) - x).square().mean().item()
                  for i in close}
    return alphas[min(close, key=lambda i: (errors[i], i))].item()


@contextmanager
def _pass_through(quantizers: list[Quantizer]):
    """The quantizers as identities (the full-precision model) while inside."""
    methods = [q.method for q in quantizers]
    for q in quantizers:
        q.method = "fp"
    try:
        yield
    finally:
        for q, m in zip(quantizers, methods):
            q.method = m


def calibrate_clips(model: nn.Module, inputs: Iterable[torch.Tensor], rule: str = "mse") -> dict[str, float]:
    """Set the alpha of every quantizer with a learnable alpha from what it sees when the model runs
    ``inputs`` in full precision (weights: LWN-normalized, as they are quantized). Returns {quantizer name:
    alpha}; ``rule`` "fixed" changes nothing. The model's mode and BN statistics are left as they were."""
    if rule not in CLIP_INITS:
        raise ValueError(f"--clip-init must be one of {CLIP_INITS}, not {rule!r}")
    named = {name: q for name, q in model.named_modules()
             if isinstance(q, Quantizer) and q.method != "fp" and q.alpha.requires_grad}
    if rule == "fixed" or not named:
        return {}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in named}
    generator = torch.Generator().manual_seed(0)

    def keep(name: str, q: Quantizer):
        def hook(_module, args):
            x = args[0].detach()
            if q.weight_norm:
                if seen[name]:
                    return
                mu, sigma = q.normalization(x)
                x = (x - mu) / sigma
            x = x.flatten()
            if x.numel() > SAMPLE:
                x = x[torch.randperm(x.numel(), generator=generator)[:SAMPLE].to(x.device)]
            seen[name].append(x.cpu())
        return hook

    hooks = [q.register_forward_pre_hook(keep(name, q)) for name, q in named.items()]
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    was_training = model.training
    model.eval()
    try:
        with _pass_through(list(named.values())), torch.no_grad():
            for xb in inputs:
                model(xb)
    finally:
        for h in hooks:
            h.remove()
        model.load_state_dict(bn_state, strict=False)
        model.train(was_training)
    alphas = {}
    for name, q in named.items():
        alpha = mse_clip(torch.cat(seen[name]), q.spec.bits, q.spec.outer_bits, q.signed)
        q.alpha.data.fill_(alpha)
        alphas[name] = alpha
    return alphas


@torch.no_grad()
def activation_codes(model: nn.Module, inputs: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per activation quantizer with integer levels (forward order): counts of its codes 0..s (a signed
    one's: -s..s, 2s + 1 counts) over the model's forward passes of ``inputs`` (float image batches). The
    model's mode is left as it was."""
    counts, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, QAct) and module.method != "fp" and module.spec.outer_bits is not None:
            low = -level_scale(module.spec.bits, True) if module.signed else 0

            def hook(mod, args, name=name, low=low, count=code_count(module)):
                codes = mod.codes(args[0]).flatten() - low
                counts[name] = counts.get(name, 0) + torch.bincount(codes, minlength=count).cpu()
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        for xb in inputs:
            model(xb)
    finally:
        for h in hooks:
            h.remove()
    return counts


def code_count(quantizer: QAct) -> int:
    """How many codes activation quantizer ``quantizer`` has: ``s + 1`` (0..s), or ``2s + 1`` signed (-s..s)."""
    s = level_scale(quantizer.spec.bits, quantizer.signed)
    return 2 * s + 1 if quantizer.signed else s + 1


def code_count_problem(model: nn.Module, shares: dict[str, list]) -> str | None:
    """Where an activation quantizer of ``model`` has another number of codes than a run recorded for it when its
    training started (``shares``, :func:`code_shares`' of it), what: this lcq quantizes the network otherwise than
    the one that trained it (a quantizer signed there and unsigned here, or the reverse). None where none has."""
    for name, module in model.named_modules():
        if isinstance(module, QAct) and name in shares and len(shares[name]) != code_count(module):
            now = "signed" if module.signed else "unsigned"
            return (f"its activation quantizer {name!r} had {len(shares[name])} codes when training started, and "
                    f"this lcq builds it {now} with {code_count(module)}: it quantizes the network otherwise than "
                    "the lcq that trained it (since SiLU, GELU, Mish and hardswish compile, the quantizer after "
                    "them is unsigned); retrain the model with this lcq")
    return None


def code_shares(counts: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """:func:`activation_codes`' counts as each code's share of its quantizer's elements (4 decimals)."""
    return {name: [round(v, 4) for v in (c.double() / c.sum()).tolist()] for name, c in counts.items()}


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (nothing after the layer is needed)."""


def _forward_order(model: nn.Module, bns: list[nn.Module], xb: torch.Tensor) -> list[nn.Module]:
    """``bns`` in the order the model's forward pass of ``xb`` calls them (eval mode, nothing changes)."""
    order, hooks = [], [bn.register_forward_pre_hook(lambda mod, args: order.append(mod)) for bn in bns]
    try:
        model(xb)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def reestimate_bn(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean and variance, in forward order, each as the plain average
    over ``inputs``' batches of what it sees with the BatchNorms before it already in eval mode on their new
    statistics: the inputs eval mode will give it. (Re-estimating all of them at once in train mode gives
    each the statistics of upstream layers normalized per batch; behind coarse quantizers that is not what
    eval mode sees: the small CNN's LCQ W2/A2 on MNIST scored 75.7% in eval mode that way against 96.8%
    with batch statistics, and 96.8% in eval mode this way.) The quantizers stay as they are and nothing
    learns. Returns the number of batches; the model is left in eval mode."""
    batches = list(inputs)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not bns:
        return len(batches)
    if not batches:
        raise ValueError("re-estimating BN statistics needs at least one batch")
    with torch.no_grad():
        ordered = _forward_order(model, bns, batches[0])
        ordered += [bn for bn in bns if bn not in ordered]          # (not called: re-estimated last, unused)
        for bn in ordered:
            momentum = bn.momentum
            bn.reset_running_stats()
            bn.momentum = None                   # a cumulative average over the batches
            bn.train()

            def stop(_module, _args, _output):
                raise _Stop

            hook = bn.register_forward_hook(stop)
            try:
                for xb in batches:
                    try:
                        model(xb)
                    except _Stop:
                        pass
            finally:
                hook.remove()
                bn.momentum = momentum
                bn.eval()
    return len(batches)
