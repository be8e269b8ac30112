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
one table lookup, and the backward needs only the sums of ``sgn * grad`` and
``sgn * grad * v`` per segment; the rest works on tables of K + s + 2
segments. Those tables are built once per call on the host in numpy (the same
float operations as :func:`compander` and :func:`expand_levels`, so the same
bits), where a call costs a fraction of a torch call; the per-segment sums are
float32 partial sums over chunks of at most 1024 elements added in float64
(:func:`lcq_train.quant_device.segment_sums`, or numpy's float64 ``bincount``).
CPU tensors below ``_HOST_MAX`` elements are quantized in numpy altogether.
Tensors on any other device (a GPU) take :mod:`lcq_train.quant_device`'s
path: the same tables, search and gradients in torch operations on that
device, with no round trip to the host (and, inside a model's forward,
built in batches with its other quantizers': :mod:`lcq_train.batched_tables`).
NaN counts as beyond the clip range (``torch.bucketize`` puts it after every
boundary).

Signed quantizers (weights) use ``s = 2^(b-1) - 1`` levels per sign, unsigned
ones (activations) ``s = 2^b - 1``; negative inputs of an unsigned quantizer
map to 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .quant_device import lcq_device, segment_sums, working_precision

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


def _check_theta(theta: torch.Tensor) -> None:
    if theta.dim() != 1 or theta.numel() < 1:
        raise ValueError(f"theta must be a non-empty 1-D tensor, not shape {tuple(theta.shape)}")


def compander(theta: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes and offsets of f (eq. 5) from theta (K,).

    Returns ``gamma`` (K,) with ``gamma_k = K * softmax(theta)_k`` and ``beta``
    (K,) with ``beta_k = sum_{i<k} softmax(theta)_i`` (so ``beta_0 = 0``), such
    that ``f(v) = gamma_k * (v - k/K) + beta_k`` for ``v`` in ``[k/K, (k+1)/K)``.
    """
    _check_theta(theta)
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


def outer_levels(levels: torch.Tensor, outer_bits: int | None, signed: bool) -> torch.Tensor:
    """Normalized ``levels`` (in [-1, 1]) re-quantized to the ``outer_bits`` grid (eq. 14: ``round(s' v) / s'``);
    unchanged where ``outer_bits`` is None."""
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


_HOST_MAX = 65536   # CPU tensors below this many elements are quantized in numpy
_GRID_MIN = 4096    # elements from which the grid search beats a binary search per element
_LOOP_MAX = 64      # segments up to which the theta gradient is a loop over them (else numpy over all at once)
_NUMPY = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def _device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device`` (on the CPU: the same memory)."""
    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def _gradient(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A float64 host array as a gradient of ``dtype`` on ``device``."""
    np_dtype = _NUMPY.get(dtype)
    return _device(a.astype(np_dtype), device) if np_dtype is not None else _device(a, device).to(dtype)


def _grid_size(n: int) -> int:
    """Cells over [0, 1] of the grid search of n elements: a power of two (so ``v * M`` is exact), 256..4096."""
    return min(4096, max(256, 1 << (n // 64).bit_length()))


class _Constants:
    """Host arrays of one quantizer shape (K, s, dtype) that do not depend on theta; read only."""

    _cache: dict = {}

    @classmethod
    def get(cls, K: int, s: int, dtype: np.dtype) -> "_Constants":
        key = (K, s, dtype)
        c = cls._cache.get(key)
        if c is None:
            c = cls._cache[key] = cls(K, s, dtype)
        return c

    def __init__(self, K: int, s: int, dtype: np.dtype):
        code = np.arange(1, s + 1)
        # u of the code thresholds (c - 1/2) / s, c = 1..s, then of the levels i / s, i = 0..s: the same float
        # operations as the torch evaluation (_inverse() of these u; expand_levels()), so the same bits.
        self.u = np.concatenate([(code.astype(dtype) - 0.5) / s, np.arange(s + 1, dtype=dtype) / s])
        self.odd = np.concatenate([code % 2 == 1, np.zeros(s + 1, dtype=bool)])
        self.fix = np.array([s, 2 * s])                       # levels[0] = 0, levels[s] = 1
        self.fix_value = np.array([0.0, 1.0], dtype=dtype)
        self.one = np.ones(1, dtype=dtype)
        self.nan = np.full(1, np.nan, dtype=dtype)
        self.k_over_K = np.arange(K, dtype=dtype) / K
        self.head = np.concatenate([np.zeros(1, dtype=dtype), np.arange(1, K, dtype=dtype) / K])  # 0, the edges
        # Along the sorted bounds an interval edge raises the segment key k * (s + 1) + code by s + 1, a code
        # threshold by 1, the ends 0 and 1 not at all.
        self.step = np.concatenate([np.zeros(1, np.int64), np.full(K - 1, s + 1, np.int64), np.ones(s, np.int64),
                                    np.zeros(1, np.int64)])
        inside = np.ones(K + s + 2, dtype=dtype)              # segments: v < 0, K + s of [0, 1), v >= 1
        inside[0] = inside[-1] = 0.0
        self.inside = {False: inside, True: np.concatenate([inside, inside])}   # signed: x < 0 again
        self.u64 = np.arange(s + 1) / s
        self.grids: dict = {}

    def grid(self, M: int) -> tuple[np.ndarray, np.ndarray]:
        """Starts and ends of the M cells of the grid search."""
        g = self.grids.get(M)
        if g is None:
            starts = np.arange(M + 1, dtype=self.one.dtype) / M
            g = self.grids[M] = (starts, starts + 1.0 / M)
        return g


class _Tables:
    """The compander's tables for one call: detached functions of theta, shared by forward and backward.

    Built on the host in numpy from torch's softmax and cumsum of theta, then
    with the same float operations as :func:`compander`, :func:`_inverse` and
    :func:`expand_levels`, so with the same bits:

    ``bounds`` (B,) sorted: 0, the interval edges i/K (i = 1..K-1), the code
    thresholds ``t_c = f^-1((c - 1/2) / s)`` (c = 1..s) and 1. Segment
    ``m = torch.bucketize(v, bounds, right=True)`` (B + 1 of them) has for
    ``m >= 1`` the interval ``key[m - 1] // (s + 1)`` and the code
    ``code[m - 1] = key[m - 1] % (s + 1)``; segment 0 holds ``v < 0`` and
    segment B ``v >= 1``, both outside the clip range. ``round(s * f(v)) >= c``
    exactly when ``v >= t_c``; for odd c the threshold is raised by one ulp so
    that an exact tie rounds half to even, as ``torch.round`` does.
    ``levels`` (s+1,) are ``f^-1(i / s)`` with ``levels[0] = 0`` and
    ``levels[s] = 1`` exactly, ``j`` their expanding intervals. Build under
    ``torch.no_grad()`` (an autograd Function's forward is).
    """

    __slots__ = ("consts", "s", "t", "cumsum", "levels", "j", "bounds", "key", "code")

    def __init__(self, theta: torch.Tensor, s: int, dtype: torch.dtype):
        t = torch.softmax(theta, 0, dtype=dtype)                                # eq. (5), as compander()
        cumsum = t.cumsum(0)
        if t.device.type != "cpu":
            t, cumsum = torch.stack((t, cumsum)).cpu()
        self.t, self.cumsum = t, cumsum = t.numpy(), cumsum.numpy()
        K = t.size
        c = self.consts = _Constants.get(K, s, t.dtype)
        self.s = s
        gamma = t * K
        beta = cumsum - t
        j = np.searchsorted(beta[1:], c.u, side="right")                        # eq. (6), as _inverse()
        inverse = (c.u - beta[j]) / gamma[j] + c.k_over_K[j]
        np.nextafter(inverse, c.one, out=inverse, where=c.odd)                  # odd thresholds: one ulp up
        inverse[c.fix] = c.fix_value
        self.levels, self.j = inverse[s:], j[s:]
        bounds = np.concatenate((c.head, inverse[:s], c.one))
        order = np.argsort(bounds, kind="stable")
        self.bounds = bounds[order]
        self.key = key = np.cumsum(c.step[order])
        self.code = key % (s + 1)

    def per_segment(self, per_code: np.ndarray, signed: bool) -> np.ndarray:
        """A table per segment from one per code (signed: then the same again, negated, for x < 0)."""
        B = self.key.size
        table = np.empty(2 * B + 2 if signed else B + 1, dtype=per_code.dtype)
        table[0] = per_code[0]
        table[1:B + 1] = per_code[self.code]
        if signed:
            np.negative(table[:B + 1], out=table[B + 1:])
        return table

    def gradients(self, G0: np.ndarray, G1: np.ndarray, alpha: float) -> np.ndarray:
        """``[dL/dalpha, dL/dtheta_0, ..., dL/dtheta_K-1]`` (float64) from the per-segment sums
        ``G0 = sum sgn * grad`` and ``G1 = sum sgn * grad * v``.

        alpha: eq. (12), ``sgn * (g(v) - v)`` inside the clip range and ``sgn``
        beyond it. theta: eqs. (7)-(11), for each segment inside with
        compressing interval k and the expanding interval j of its code u:
        ``dg/dgamma_k = (v - k/K) / gamma_j``, ``dg/dbeta_k = 1 / gamma_j``,
        ``dg/dgamma_j = -(u - beta_j) / gamma_j^2``, ``dg/dbeta_j = -1 / gamma_j``;
        then ``gamma_k = K t_k`` and ``beta_k = sum_{i<k} t_i`` give
        ``dL/dt_i = K dL/dgamma_i + sum_{k>i} dL/dbeta_k``, and ``t = softmax(theta)``.
        A constant added to every ``dL/dt_i`` drops out of the softmax, so the sum
        over ``k > i`` is taken as minus the sum over ``k <= i``.
        """
        if G0.size <= _LOOP_MAX:
            return self._gradients_loop(G0, G1, alpha)
        t, cumsum = self.t.astype(np.float64), self.cumsum.astype(np.float64)
        K, s, j, c = t.size, self.s, self.j, self.consts
        G0_in, G1_in = G0[1:-1], G1[1:-1]                            # the segments inside the clip range
        code, k = self.code[:-1], self.key[:-1] // (s + 1)
        out = np.empty(K + 1)
        out[0] = self.levels.astype(np.float64)[code] @ G0_in - G1_in.sum() + G0[-1]
        gamma_j = K * t[j]
        scale = alpha / gamma_j                                         # per code: alpha / gamma_j
        expand = K * (cumsum[j] - t[j] - c.u64) / gamma_j               # per code: -K (u - beta_j) / gamma_j
        A = scale[code] * G0_in                                         # per segment: its dL/dbeta_k
        kj = np.concatenate((k, j[code]))
        d_t = np.bincount(kj, np.concatenate((K * scale[code] * G1_in - k * A, expand[code] * A)), K)
        d_t -= np.cumsum(np.bincount(kj, np.concatenate((A, -A)), K))
        np.multiply(t, d_t - d_t @ t, out=out[1:])
        return out

    def _gradients_loop(self, G0: np.ndarray, G1: np.ndarray, alpha: float) -> np.ndarray:
        """:meth:`gradients` as a loop over the segments: faster when they are few (a numpy call costs more
        than a few Python float operations)."""
        t, cumsum = self.t.tolist(), self.cumsum.tolist()
        K, s1, u = len(t), self.s + 1, self.consts.u64.tolist()
        levels, j, key, G0, G1 = self.levels.tolist(), self.j.tolist(), self.key.tolist(), G0.tolist(), G1.tolist()
        scale = [alpha / (K * t[jc]) for jc in j]                                  # per code: alpha / gamma_j
        expand = [(cumsum[jc] - t[jc] - uc) / t[jc] for jc, uc in zip(j, u)]       # -K (u - beta_j) / gamma_j
        d_t, d_beta, d_alpha = [0.0] * K, [0.0] * K, G0[-1]
        for m in range(1, len(G0) - 1):
            k, code = divmod(key[m - 1], s1)
            g0, g1 = G0[m], G1[m]
            d_alpha += levels[code] * g0 - g1
            w = scale[code]
            A = w * g0
            jc = j[code]
            d_t[k] += K * w * g1 - k * A
            d_t[jc] += expand[code] * A
            d_beta[k] += A
            d_beta[jc] -= A
        total = 0.0
        for i in range(K):
            total += d_beta[i]
            d_t[i] -= total
        dot = sum(a * b for a, b in zip(d_t, t))
        return np.array([d_alpha] + [ti * (d - dot) for ti, d in zip(t, d_t)])


def _grid(bounds: np.ndarray, consts: _Constants, n: int):
    """Tables of the grid search of n elements (see :func:`_grid_search`): the number of cells M, the count of
    bounds before each cell, and for each pass the bound it compares with in each cell."""
    M, B = _grid_size(n), bounds.size
    starts, ends = consts.grid(M)
    base = np.searchsorted(bounds, starts, side="right").astype(np.int32)
    base[0] = 0
    passes = int((np.searchsorted(bounds, ends, side="left") - base).max())
    padded = np.concatenate((bounds, consts.nan))   # v >= nan is false: past the last bound nothing counts
    return M, base, [padded[np.minimum(base + i, B)] for i in range(passes)]


def _grid_search(v: torch.Tensor, bounds: np.ndarray, consts: _Constants) -> torch.Tensor:
    """``torch.bucketize(v, bounds, right=True, out_int32=True)`` for sorted ``bounds`` from 0 to 1, by table lookup.

    ``v`` falls in grid cell ``c = floor(min(max(v, 0), 1) * M)`` (NaN in cell
    M); the count of bounds up to the cell's start is tabulated (for cell 0:
    of the bounds below 0, so that ``v < 0`` gets segment 0), and the few
    bounds inside the cell are compared one by one (as many passes as the
    fullest cell holds, usually one); a bound beyond the cell compares false by
    itself. Several times faster than a binary search per element.
    """
    M, base, thresholds = _grid(bounds, consts, v.numel())
    flat = v.view(-1)
    cell = (flat * M).clamp_(0.0, M).nan_to_num_(nan=M).to(torch.int32)
    seg = _device(base, v.device).index_select(0, cell)
    step = torch.empty_like(seg)
    for thr in thresholds:
        seg += torch.ge(flat, _device(thr, v.device).index_select(0, cell), out=step)
    return seg.view(v.shape)


def _grid_search_host(v: np.ndarray, bounds: np.ndarray, consts: _Constants, nonnegative: bool) -> np.ndarray:
    """:func:`_grid_search` in numpy, ``np.searchsorted(bounds, v, side="right")``; ``nonnegative``: no v < 0."""
    M, base, thresholds = _grid(bounds, consts, v.size)
    cell = np.fmin(v * M, M, out=np.empty_like(v))                  # (fmin takes M for NaN)
    if not nonnegative:
        np.fmax(cell, 0, out=cell)
    cell = cell.astype(np.intp)
    seg = base.astype(np.intp).take(cell)
    for thr in thresholds:
        seg += v >= thr.take(cell)
    return seg


def _search(tables: _Tables, v: torch.Tensor) -> torch.Tensor:
    """Segment of each v (int32): the grid search on large tensors, ``torch.bucketize`` on small ones."""
    if v.numel() >= _GRID_MIN:
        return _grid_search(v, tables.bounds, tables.consts)
    return torch.bucketize(v, _device(tables.bounds, v.device), out_int32=True, right=True)


def _segments(theta: torch.Tensor, s: int, dtype: torch.dtype):
    """Sorted ``bounds`` of v and, per segment, its interval ``seg_k`` and code ``seg_code`` (see :class:`_Tables`)."""
    with torch.no_grad():
        tables = _Tables(theta, s, dtype)
    key = np.concatenate(([0], tables.key))
    return tuple(_device(a, theta.device) for a in (tables.bounds, key // (s + 1), key % (s + 1)))


def _magnitude(x: torch.Tensor, alpha: torch.Tensor, signed: bool) -> torch.Tensor:
    """``v = |x| / alpha`` (signed) or ``x / alpha`` (unsigned) in the compute dtype."""
    dtype = _compute_dtype(x)
    x = x.to(dtype)
    return (x.abs() if signed else x) / alpha.to(dtype)


def lcq_codes(x: torch.Tensor, alpha: torch.Tensor, theta: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer codes of the LCQ forward (no gradient): ``sgn(x) * i``, i in 0..s."""
    with torch.no_grad():
        v = _magnitude(x, alpha, signed).contiguous()
        tables = _Tables(theta, level_scale(bits, signed), v.dtype)
        codes = _device(tables.per_segment(np.arange(tables.s + 1), False), x.device)
        code = codes.index_select(0, _search(tables, v).view(-1)).view(v.shape)
        return code * torch.sign(x).to(torch.int64) if signed else code


class _LCQFunction(torch.autograd.Function):
    """Forward: one segment search of v and one table lookup; backward: per-segment sums, then the tables.

    The segments of ``x < 0`` (signed) are a second copy, offset by B + 1,
    whose table entries are negated and whose sums count negatively. CPU
    tensors below ``_HOST_MAX`` elements take the same steps in numpy
    (``np.searchsorted`` is ``torch.bucketize``; the per-segment sums are
    numpy's float64 ``bincount``).
    """

    @staticmethod
    def forward(ctx, x, alpha, theta, bits, outer_bits, signed):
        s = level_scale(bits, signed)
        x_dtype = x.dtype
        x = working_precision(x)
        dtype = x.dtype
        tables = _Tables(theta, s, dtype)
        # Per segment: alpha * q_b'(the level of its code), the same negated for x < 0.
        levels = tables.levels
        if outer_bits is not None:
            s_outer = level_scale(outer_bits, signed)
            levels = np.rint(levels * s_outer) / s_outer                        # outer_levels() on the host
        a = levels.dtype.type(alpha.item())                                     # alpha.to(dtype)
        alpha_value, table = float(a), tables.per_segment(levels * a, signed)
        negative = tables.key.size + 1
        if x.device.type == "cpu" and x.numel() < _HOST_MAX:
            xn = x.detach().numpy()
            v = np.abs(xn) if signed else xn / a
            if signed:
                np.divide(v, a, out=v)
            if v.size < _GRID_MIN:
                seg = np.searchsorted(tables.bounds, v, side="right")
            else:
                seg = _grid_search_host(v, tables.bounds, tables.consts, signed)
            if signed:
                seg += (xn < 0) * negative
            out = torch.from_numpy(table.take(seg))
            ctx.host = v, seg, (v < 1) if signed else (v >= 0) & (v < 1)     # (inside the clip range)
        else:
            a = alpha.to(dtype)                      # (a tensor divisor: a scalar one may be a reciprocal multiply)
            v = x.abs().div_(a) if signed else x / a
            if not v.is_contiguous():
                v = v.contiguous()
            seg = _search(tables, v)
            if signed:
                seg.add_(x < 0, alpha=negative)
            out = _device(table, x.device).index_select(0, seg.view(-1)).view(seg.shape)
            ctx.save_for_backward(v, seg)
            ctx.host = None
        ctx.tables, ctx.signed, ctx.alpha = tables, signed, alpha_value
        ctx.dtypes = x_dtype, dtype, alpha.dtype, alpha.shape, theta.dtype
        return out if x_dtype == dtype else out.to(x_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        tables, signed = ctx.tables, ctx.signed
        x_dtype, dtype, alpha_dtype, alpha_shape, theta_dtype = ctx.dtypes
        inside = tables.consts.inside[signed]
        bins = inside.size
        grad_x = None
        if ctx.host is not None:
            v, seg, inside_clip = ctx.host
            g = grad.detach()
            g = (g if g.dtype == dtype else g.to(dtype)).numpy()
            if ctx.needs_input_grad[0]:
                grad_x = torch.from_numpy(g * inside_clip)
            seg = seg.ravel()
            G0 = np.bincount(seg, g.ravel(), bins)                      # float64 sums
            G1 = np.bincount(seg, (g * v).ravel(), bins)
        else:
            v, seg = ctx.saved_tensors
            if grad.dtype != dtype:
                grad = grad.to(dtype)
            if ctx.needs_input_grad[0]:
                grad_x = _device(inside, v.device).index_select(0, seg.view(-1)).view(seg.shape).mul_(grad)
            G0, G1 = segment_sums(seg, grad, grad * v, bins).cpu().numpy()
        if grad_x is not None and x_dtype != dtype:
            grad_x = grad_x.to(x_dtype)
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return grad_x, None, None, None, None, None
        if signed:                                                      # sgn: the x < 0 copies count negatively
            half = bins // 2
            G0, G1 = G0[:half] - G0[half:], G1[:half] - G1[half:]
        grads = tables.gradients(G0, G1, ctx.alpha)
        device = grad.device
        grad_alpha = _gradient(grads[:1].reshape(alpha_shape), alpha_dtype, device) if ctx.needs_input_grad[1] else None
        grad_theta = _gradient(grads[1:], theta_dtype, device) if ctx.needs_input_grad[2] else None
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
    _check_theta(theta)
    if x.device.type == "cpu":
        return _LCQFunction.apply(x, alpha, theta, bits, outer_bits, signed)
    return lcq_device(x, alpha, theta, level_scale(bits, signed),
                      None if outer_bits is None else level_scale(outer_bits, signed), signed)


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
        return (sign * alpha.to(v.dtype) * outer_levels(q, outer_bits, signed)).to(x.dtype)

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
