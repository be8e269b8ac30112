"""Functional LCQ and uniform quantizers (Yamamoto, CVPR 2021).

Forward, for clipping value ``alpha > 0`` and bit-width ``b``::

    Q(x) = sgn(x) * alpha * q_b'(g(|x| / alpha))   if |x| < alpha      (eqs. 3, 14)
         = sgn(x) * alpha                           otherwise
    g(v) = f^-1(q_b(f(v))),  q_b(v) = round(s * v) / s                    (eq. 4)

``f`` is the piecewise-linear compander of eq. (5) with K equal input intervals
and slopes ``gamma_k = K * softmax(theta)_k``; ``f^-1`` is eq. (6). ``q_b'`` is
the outer re-quantization to ``outer_bits`` (eq. 14), which makes every output
level an integer multiple of ``alpha / s'``. Rounding is half to even
(``torch.round``), as in the integer contract of DESIGN.md.

Backward (exactly the paper's):

- x: straight-through inside the clip range ([-alpha, alpha) signed,
  [0, alpha) unsigned), zero outside;
- alpha: eq. (12), ``sgn(x) * (g(v) - v)`` inside, ``sgn(x)`` outside;
- theta: eqs. (7)-(11), the derivative of ``g`` w.r.t. the slope and offset of
  the compressing piece (the interval ``v`` falls in) and of the expanding
  piece (the interval ``q_b(f(v))`` falls in, with ``q_b(f(v)) = 1`` kept in
  the last interval), with ``q_b`` straight-through, chained through the
  cumulative offsets and the softmax. Clipped elements give theta no gradient.

Implementation: within one segment of v between consecutive boundaries
(the interval edges i/K and the code thresholds ``f^-1((c - 1/2) / s)``) the
interval k and the code are constant, so the forward is one segment search and
one table lookup, and the backward needs only the sums of ``grad`` and
``grad * v`` per segment (two ``index_add`` passes); the rest works on
tables of K x (s+1) entries.

Signed quantizers (weights) use ``s = 2^(b-1) - 1`` levels per sign, unsigned
ones (activations) ``s = 2^b - 1``; negative inputs of an unsigned quantizer
map to 0.
"""

from __future__ import annotations

import torch

__all__ = [
    "level_scale",
    "compander",
    "expand_levels",
    "level_table",
    "lcq_codes",
    "lcq_quantize",
    "uniform_codes",
    "uniform_quantize",
]


def level_scale(bits: int, signed: bool) -> int:
    """Number of non-zero levels per sign: 2^(b-1) - 1 if signed, else 2^b - 1."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise ValueError(f"bit-width must be a positive integer, not {bits!r}")
    if signed and bits < 2:
        raise ValueError(f"a signed quantizer needs at least 2 bits, not {bits!r}")
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def compander(theta: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes and offsets of f (eq. 5) from theta (K,).

    Returns ``gamma`` (K,) with ``gamma_k = K * softmax(theta)_k`` and ``beta``
    (K,) with ``beta_k = sum_{i<k} softmax(theta)_i`` (so ``beta_0 = 0``), such
    that ``f(v) = gamma_k * (v - k/K) + beta_k`` for ``v`` in ``[k/K, (k+1)/K)``.
    """
    if theta.dim() != 1 or theta.numel() < 1:
        raise ValueError(f"theta must be a non-empty 1-D tensor, not shape {tuple(theta.shape)}")
    t = torch.softmax(theta.to(dtype or theta.dtype), dim=0)
    gamma = t * t.numel()
    beta = torch.cumsum(t, dim=0) - t
    return gamma, beta


def _expanding_interval(u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Interval index j of ``f^-1`` for levels ``u`` in [0, 1]: beta_j <= u < beta_{j+1}.

    ``u = 1`` stays in the last interval K-1 (the paper's epsilon).
    """
    return torch.searchsorted(beta[1:].contiguous(), u.contiguous(), right=True)


def _inverse(u: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor):
    """``f^-1(u)`` (eq. 6) for u in [0, 1] and the expanding interval j of each u."""
    j = _expanding_interval(u, beta)
    return (u - beta[j]) / gamma[j] + j.to(u.dtype) / gamma.numel(), j


def expand_levels(theta: torch.Tensor | None, s: int, dtype: torch.dtype = torch.float32):
    """Unrounded levels ``g_i = f^-1(i / s)`` for codes i = 0..s (eq. 6).

    Returns ``(levels, j)``: levels (s+1,) with ``levels[0] = 0`` and
    ``levels[s] = 1`` exactly, and the expanding interval j (s+1,) of each code.
    ``theta=None`` is the identity compander (uniform quantizer).
    """
    device = theta.device if theta is not None else None
    u = torch.arange(s + 1, device=device, dtype=dtype) / s
    if theta is None:
        return u, None
    levels, j = _inverse(u, *compander(theta.detach(), dtype))
    levels[0] = 0.0
    levels[s] = 1.0
    return levels, j


def _outer(levels: torch.Tensor, outer_bits: int | None, signed: bool) -> torch.Tensor:
    if outer_bits is None:
        return levels
    s_outer = level_scale(outer_bits, signed)
    return torch.round(levels * s_outer) / s_outer


def level_table(theta: torch.Tensor | None, bits: int, outer_bits: int, signed: bool) -> torch.Tensor:
    """Integer level table of the contract: ``round(s' * f^-1(i / s))`` for i = 0..s (int64)."""
    s = level_scale(bits, signed)
    levels, _ = expand_levels(theta, s, torch.float64 if theta is None else theta.dtype)
    return torch.round(levels * level_scale(outer_bits, signed)).to(torch.int64)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _normalize(x: torch.Tensor, alpha: torch.Tensor, signed: bool):
    """``v = |x| / alpha``, the sign to restore, and the clip-range mask."""
    dtype = _compute_dtype(x)
    x = x.to(dtype)
    a = alpha.to(dtype)
    if signed:
        sign = torch.sign(x)
        v = x.abs() / a
        inside = v < 1
    else:
        sign = (x > 0).to(dtype)
        v = x / a
        inside = (v >= 0) & (v < 1)
    return v, sign, inside


def _segments(theta: torch.Tensor, s: int, dtype: torch.dtype):
    """Where, along ``v = |x| / alpha``, the compressing interval k or the code changes.

    Returns ``bounds`` (B,) sorted: 0, the interval edges i/K (i = 1..K-1), the
    code thresholds ``t_c = f^-1((c - 1/2) / s)`` (c = 1..s) and 1; and, per
    segment ``m = torch.bucketize(v, bounds, right=True)`` (B+1 of them), its
    interval ``seg_k`` and code ``seg_code``. ``round(s * f(v)) >= c`` exactly
    when ``v >= t_c``; for odd c the threshold is raised by one ulp so that an
    exact tie rounds half to even, as ``torch.round`` does. Segment 0 holds
    ``v < 0`` and segment B holds ``v >= 1`` (both outside the clip range).
    """
    K, device = theta.numel(), theta.device
    gamma, beta = compander(theta.detach(), dtype)
    c = torch.arange(1, s + 1, device=device)
    t, _ = _inverse((c.to(dtype) - 0.5) / s, gamma, beta)
    t = torch.where(c % 2 == 1, torch.nextafter(t, torch.ones_like(t)), t)
    edges = torch.arange(1, K, device=device, dtype=dtype) / K
    ends = torch.tensor([0.0, 1.0], device=device, dtype=dtype)
    bounds, order = torch.sort(torch.cat([ends[:1], edges, t, ends[1:]]), stable=True)
    kind = torch.cat([torch.zeros(K, device=device, dtype=torch.int64), torch.ones(s, device=device, dtype=torch.int64),
                      torch.zeros(1, device=device, dtype=torch.int64)])
    is_code = kind[order]
    is_edge = torch.zeros_like(is_code)
    is_edge[1:-1] = 1 - is_code[1:-1]       # everything between 0 and 1 that is not a code threshold
    zero = torch.zeros(1, device=device, dtype=torch.int64)
    return bounds, torch.cat([zero, torch.cumsum(is_edge, 0)]), torch.cat([zero, torch.cumsum(is_code, 0)])


_GRID = 4096  # cells over [0, 1] of the segment search (a power of two: v * _GRID is exact)


def _segment_index(v: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``torch.bucketize(v, bounds, right=True)`` for sorted ``bounds`` from 0 to 1, by table lookup.

    ``v`` falls in grid cell ``c = floor(min(max(v, 0), 1) * _GRID)``; the count
    of bounds up to the cell's start is tabulated, and the few bounds inside the
    cell are compared one by one (as many passes as the fullest cell holds,
    usually one). Several times faster than a binary search per element.
    """
    M = _GRID
    starts = torch.arange(M + 1, device=v.device, dtype=v.dtype) / M
    base = torch.bucketize(starts, bounds, right=True)
    inside = torch.bucketize(starts + 1.0 / M, bounds) - base
    inside[-1] = 0
    cell = (v.clamp(0.0, 1.0) * M).to(torch.int64).clamp_(0, M)  # (NaN lands in cell 0)
    seg = base[cell]
    padded = torch.cat([bounds, torch.full((1,), float("inf"), device=v.device, dtype=v.dtype)])
    for i in range(int(inside.max())):
        nxt = torch.where(i < inside, padded[(base + i).clamp(max=bounds.numel())], float("inf"))
        seg += (v >= nxt[cell]).to(torch.int64)
    return seg - (v < 0).to(torch.int64)


def _magnitude(x: torch.Tensor, alpha: torch.Tensor, signed: bool) -> torch.Tensor:
    """``v = |x| / alpha`` (signed) or ``x / alpha`` (unsigned) in the compute dtype."""
    dtype = _compute_dtype(x)
    x = x.to(dtype)
    return (x.abs() if signed else x) / alpha.to(dtype)


def lcq_codes(x: torch.Tensor, alpha: torch.Tensor, theta: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer codes of the LCQ forward (no gradient): ``sgn(x) * i``, i in 0..s."""
    with torch.no_grad():
        v = _magnitude(x, alpha, signed)
        bounds, _, seg_code = _segments(theta, level_scale(bits, signed), v.dtype)
        code = seg_code[_segment_index(v, bounds)]
        return code * torch.sign(x).to(torch.int64) if signed else code


class _LCQFunction(torch.autograd.Function):
    """Forward: one segment search of v and one table lookup; backward: per-segment sums."""

    @staticmethod
    def forward(ctx, x, alpha, theta, bits, outer_bits, signed):
        s = level_scale(bits, signed)
        v = _magnitude(x, alpha, signed)
        segments = _segments(theta, s, v.dtype)
        levels, j = expand_levels(theta, s, v.dtype)
        seg = _segment_index(v, segments[0])
        out = (alpha.to(v.dtype) * _outer(levels, outer_bits, signed)[segments[2]])[seg]
        if signed:
            out = out * torch.sign(x)
        ctx.save_for_backward(x, alpha, theta, seg)
        ctx.signed, ctx.s = signed, s
        ctx.tables = (*segments, levels, j)  # detached functions of theta, reused by backward
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, alpha, theta, seg = ctx.saved_tensors
        s, K, signed = ctx.s, theta.numel(), ctx.signed
        dtype = _compute_dtype(x)
        bounds, seg_k, seg_code, levels, j = ctx.tables
        inside = torch.ones(bounds.numel() + 1, device=x.device, dtype=dtype)
        inside[0] = inside[-1] = 0.0
        grad = grad.to(dtype)

        grad_x = (grad * inside[seg]).to(x.dtype) if ctx.needs_input_grad[0] else None
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return grad_x, None, None, None, None, None

        # Per segment: G0 = sum of sgn * grad, G1 = sum of sgn * grad * v.
        v = _magnitude(x, alpha, signed)
        g = grad * torch.sign(x).to(dtype) if signed else grad
        flat = seg.reshape(-1)
        G0 = torch.zeros(bounds.numel() + 1, device=x.device, dtype=dtype).index_add_(0, flat, g.reshape(-1))
        G1 = torch.zeros_like(G0).index_add_(0, flat, (g * v).reshape(-1))

        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # eq. (12): sgn * (g(v) - v) inside the clip range, sgn beyond alpha.
            d_alpha = (inside * (levels[seg_code] * G0 - G1)).sum() + G0[-1]
            grad_alpha = d_alpha.to(alpha.dtype).reshape(alpha.shape)

        grad_theta = None
        if ctx.needs_input_grad[2]:
            gamma, beta = compander(theta.detach(), dtype)
            a = alpha.to(dtype) * inside
            key = seg_k * (s + 1) + seg_code
            t0 = torch.zeros(K * (s + 1), device=x.device, dtype=dtype).index_add_(0, key, a * G0).view(K, s + 1)
            t1 = torch.zeros(K * (s + 1), device=x.device, dtype=dtype).index_add_(0, key, a * G1).view(K, s + 1)
            u = torch.arange(s + 1, device=x.device, dtype=dtype) / s
            inv_gamma_j = 1.0 / gamma[j]
            # Compressing piece k: dg/df = 1/gamma_j, df/dgamma_k = v - k/K, df/dbeta_k = 1.
            s0 = t0 @ inv_gamma_j
            s1 = t1 @ inv_gamma_j
            d_gamma = s1 - torch.arange(K, device=x.device, dtype=dtype) / K * s0
            d_beta = s0.clone()
            # Expanding piece j: dg/dgamma_j = -(u - beta_j)/gamma_j^2, dg/dbeta_j = -1/gamma_j.
            per_code = t0.sum(0)
            d_gamma.index_add_(0, j, -per_code * (u - beta[j]) * inv_gamma_j**2)
            d_beta.index_add_(0, j, -per_code * inv_gamma_j)
            # gamma_k = K t_k; beta_k = sum_{i<k} t_i; t = softmax(theta).
            d_t = K * d_gamma + (d_beta.flip(0).cumsum(0).flip(0) - d_beta)
            t = torch.softmax(theta.detach().to(dtype), dim=0)
            grad_theta = (t * (d_t - (d_t * t).sum())).to(theta.dtype)
        return grad_x, grad_alpha, grad_theta, None, None, None


def _check_args(x: torch.Tensor, alpha: torch.Tensor, outer_bits, signed: bool):
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, not {x.dtype}")
    if alpha.numel() != 1:
        raise ValueError(f"alpha must be a scalar tensor, not shape {tuple(alpha.shape)}")
    if outer_bits is not None:
        level_scale(outer_bits, signed)


def lcq_quantize(x, alpha, theta, bits: int, outer_bits: int | None = 8, signed: bool = True):
    """LCQ fake-quantization of ``x`` (any shape) with clip ``alpha`` (scalar) and compander ``theta`` (K,).

    Returns a tensor like ``x`` whose values are ``sgn(x) * alpha * L / s'``
    for integer levels ``L`` of :func:`level_table` (or the unrounded levels of
    :func:`expand_levels` when ``outer_bits`` is None).
    """
    _check_args(x, alpha, outer_bits, signed)
    level_scale(bits, signed)
    return _LCQFunction.apply(x, alpha, theta, bits, outer_bits, signed)


def uniform_codes(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer codes of the uniform forward (no gradient): ``sgn(x) * i``, i in 0..s."""
    with torch.no_grad():
        s = level_scale(bits, signed)
        v, sign, _ = _normalize(x, alpha, signed)
        return torch.round(v.clamp(0.0, 1.0) * s).to(torch.int64) * sign.to(torch.int64)


class _UniformFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, bits, outer_bits, signed):
        s = level_scale(bits, signed)
        v, sign, inside = _normalize(x, alpha, signed)
        q = torch.round(v.clamp(0.0, 1.0) * s) / s
        ctx.save_for_backward(x, alpha)
        ctx.signed, ctx.s = signed, s
        return (sign * alpha.to(v.dtype) * _outer(q, outer_bits, signed)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        v, sign, inside = _normalize(x, alpha, ctx.signed)
        grad = grad.to(v.dtype)
        grad_x = (grad * inside).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            q = torch.round(v.clamp(0.0, 1.0) * ctx.s) / ctx.s
            d_alpha = torch.where(inside, q - v, 1.0) * sign
            grad_alpha = (grad * d_alpha).sum().to(alpha.dtype).reshape(alpha.shape)
        return grad_x, grad_alpha, None, None, None


def uniform_quantize(x, alpha, bits: int, outer_bits: int | None = 8, signed: bool = True):
    """Uniform fake-quantization (eqs. 1-2) with learnable ``alpha`` and optional outer re-quantization.

    ``Q(x) = sgn(x) * alpha * q_b'(q_b(|x| / alpha))`` inside the clip range,
    ``sgn(x) * alpha`` outside; gradients as :func:`lcq_quantize` with f = identity.
    """
    _check_args(x, alpha, outer_bits, signed)
    level_scale(bits, signed)
    return _UniformFunction.apply(x, alpha, bits, outer_bits, signed)
