"""LCQ on an accelerator: the forward and backward of :mod:`lcq_train.quant`'s LCQ in torch operations alone.

quant.py builds the compander's tables on the host in numpy, the fastest way on a CPU; on a GPU that makes
every quantizer call wait for the device several times (theta and alpha read back, tables and gradients
sent over), and a training step of ResNet-20 (36 quantizers) wait hundreds of times. Here everything stays
on the tensor's device, so a step queues its work without waiting. The tables are the same float
operations on the same values (the levels bit-equal :func:`lcq_train.quant.expand_levels`'s, with the
half-to-even tie rule of the thresholds), the segment search is ``torch.bucketize``, and the gradients
are eqs. (7)-(12) as :meth:`lcq_train.quant._Tables.gradients` computes them, from per-segment sums that
are float32 partial sums over chunks of at most ``CHUNK`` elements added in float64 (:func:`segment_sums`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK = 1024       # elements per float32 partial sum of the backward (the partial sums are added in float64)


def segment_sums(seg: torch.Tensor, grad: torch.Tensor, weighted: torch.Tensor, bins: int) -> torch.Tensor:
    """Sums of ``grad`` and of ``weighted`` per segment ``seg`` (0..bins-1): (2, bins) float64, on their device.

    ``scatter_add`` into one row of partial sums per chunk of (at most) ``CHUNK`` elements, in the input
    dtype, then the rows added in float64, so that no float32 sum runs over more than ``CHUNK`` terms: one
    float32 accumulator per segment over all of its elements (a plain ``index_add``) is ~1e-4 off at 2M
    elements.
    """
    n = seg.numel()
    chunk = min(CHUNK, n & -n)           # the largest power of two that divides n, up to CHUNK ...
    if chunk < 64:
        chunk = min(CHUNK, n)            # ... or, if that is small, a last row of the remainder
    rows, rest = divmod(n, chunk)
    main = rows * chunk
    seg, parts = seg.reshape(-1).long(), grad.new_zeros(2, rows + (rest > 0), bins)
    for out, w in zip(parts, (grad.reshape(-1), weighted.reshape(-1))):
        if rest:
            out[rows].scatter_add_(0, seg[main:], w[main:])
        out[:rows].scatter_add_(1, seg[:main].view(rows, chunk), w[:main].view(rows, chunk))
    return parts.sum(1, dtype=torch.float64)


def working_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the precision LCQ computes in: float64 stays, any other float becomes float32."""
    return x if x.dtype in (torch.float64, torch.float32) else x.to(torch.float32)


class _Constants:
    """Tensors of one quantizer shape (K, s, dtype, device) that do not depend on theta; read only."""

    _cache: dict = {}

    @classmethod
    def get(cls, K: int, s: int, dtype: torch.dtype, device: torch.device) -> "_Constants":
        key = (K, s, dtype, device)
        c = cls._cache.get(key)
        if c is None:
            c = cls._cache[key] = cls(K, s, dtype, device)
        return c

    def __init__(self, K: int, s: int, dtype: torch.dtype, device: torch.device):
        code = torch.arange(1, s + 1)
        # u of the code thresholds (c - 1/2) / s, c = 1..s, then of the levels i / s, i = 0..s
        self.u = torch.cat([(code.to(dtype) - 0.5) / s, torch.arange(s + 1, dtype=dtype) / s]).to(device)
        self.odd = torch.cat([code % 2 == 1, torch.zeros(s + 1, dtype=torch.bool)]).to(device)
        self.fix = torch.tensor([s, 2 * s], device=device)                    # levels[0] = 0, levels[s] = 1
        self.fix_value = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
        self.one = torch.ones(1, dtype=dtype, device=device)
        self.k_over_K = (torch.arange(K, dtype=dtype) / K).to(device)
        self.head = torch.cat([torch.zeros(1, dtype=dtype), torch.arange(1, K, dtype=dtype) / K]).to(device)
        # along the sorted bounds an interval edge raises the segment key k * (s + 1) + code by s + 1, a code
        # threshold by 1, the ends 0 and 1 not at all
        self.step = torch.cat([torch.zeros(1, dtype=torch.long), torch.full((K - 1,), s + 1),
                               torch.ones(s, dtype=torch.long), torch.zeros(1, dtype=torch.long)]).to(device)
        inside = torch.ones(K + s + 2, dtype=dtype)            # segments: v < 0, K + s of [0, 1), v >= 1
        inside[0] = inside[-1] = 0.0
        self.inside = {False: inside.to(device), True: torch.cat([inside, inside]).to(device)}
        self.u64 = (torch.arange(s + 1, dtype=torch.float64) / s).to(device)


class _Tables:
    """The compander's tables for one call, as :class:`lcq_train.quant._Tables` (which see), as tensors on
    theta's device: ``levels`` and their expanding intervals ``j`` per code, the sorted ``bounds`` of v,
    and per segment inside the clip range its ``key`` (interval * (s + 1) + code) and ``code``."""

    def __init__(self, theta: torch.Tensor, s: int, dtype: torch.dtype):
        t = torch.softmax(theta.detach(), 0, dtype=dtype)                       # eq. (5)
        cumsum = t.cumsum(0)
        K = t.numel()
        c = self.consts = _Constants.get(K, s, dtype, theta.device)
        self.s, self.t, self.cumsum = s, t, cumsum
        gamma = t * K
        beta = cumsum - t
        j = torch.searchsorted(beta[1:].contiguous(), c.u, right=True)          # eq. (6)
        inverse = (c.u - beta[j]) / gamma[j] + c.k_over_K[j]
        inverse = torch.where(c.odd, torch.nextafter(inverse, c.one), inverse)  # odd thresholds: one ulp up
        inverse = inverse.index_put((c.fix,), c.fix_value)
        self.levels, self.j = inverse[s:], j[s:]
        self.bounds, order = torch.sort(torch.cat((c.head, inverse[:s], c.one)), stable=True)
        self.key = c.step[order].cumsum(0)
        self.code = self.key % (s + 1)

    def per_segment(self, per_code: torch.Tensor, signed: bool) -> torch.Tensor:
        """A table per segment from one per code (signed: then the same again, negated, for x < 0)."""
        table = torch.cat((per_code[:1], per_code[self.code]))
        return torch.cat((table, -table)) if signed else table

    def gradients(self, G0: torch.Tensor, G1: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dL/dalpha, dL/dtheta)`` (float64) from the per-segment sums ``G0 = sum sgn * grad`` and
        ``G1 = sum sgn * grad * v``: :meth:`lcq_train.quant._Tables.gradients`, term for term."""
        t, cumsum = self.t.double(), self.cumsum.double()
        K, s, j = t.numel(), self.s, self.j
        G0_in, G1_in = G0[1:-1], G1[1:-1]                                # the segments inside the clip range
        code, k = self.code[:-1], self.key[:-1] // (s + 1)
        d_alpha = self.levels.double()[code] @ G0_in - G1_in.sum() + G0[-1]
        gamma_j = K * t[j]
        scale = alpha / gamma_j                                         # per code: alpha / gamma_j
        expand = K * (cumsum[j] - t[j] - self.consts.u64) / gamma_j     # per code: -K (u - beta_j) / gamma_j
        A = scale[code] * G0_in                                         # per segment: its dL/dbeta_k
        kj = torch.cat((k, j[code]))
        d_t = G0.new_zeros(K).index_add_(0, kj, torch.cat((K * scale[code] * G1_in - k * A, expand[code] * A)))
        d_t -= G0.new_zeros(K).index_add_(0, kj, torch.cat((A, -A))).cumsum(0)
        return d_alpha, t * (d_t - d_t @ t)


class LCQDeviceFunction(torch.autograd.Function):
    """``lcq_quantize(x, alpha, theta, bits, outer_bits, signed)`` (:mod:`lcq_train.quant`) with no host
    round trip: ``s`` is the level count per sign, ``s_outer`` that of the outer re-quantization or None.
    The segments of ``x < 0`` (signed) are a second copy, offset by B + 1, whose table entries are
    negated and whose sums count negatively."""

    @staticmethod
    def forward(ctx, x, alpha, theta, s, s_outer, signed):
        x_dtype = x.dtype
        x = working_precision(x)
        dtype = x.dtype
        tables = _Tables(theta, s, dtype)
        levels = tables.levels
        if s_outer is not None:
            levels = torch.round(levels * s_outer) / s_outer
        a = alpha.detach().to(dtype)
        table = tables.per_segment(levels * a, signed)
        v = x.abs().div_(a) if signed else x / a
        seg = torch.bucketize(v, tables.bounds, out_int32=True, right=True)
        if signed:
            seg.add_(x < 0, alpha=tables.key.numel() + 1)
        ctx.save_for_backward(v, seg, a)
        ctx.tables, ctx.signed = tables, signed
        ctx.dtypes = x_dtype, dtype, alpha.dtype, alpha.shape, theta.dtype
        out = table.index_select(0, seg.view(-1)).view(seg.shape)
        return out if x_dtype == dtype else out.to(x_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        v, seg, a = ctx.saved_tensors
        tables, signed = ctx.tables, ctx.signed
        x_dtype, dtype, alpha_dtype, alpha_shape, theta_dtype = ctx.dtypes
        inside = tables.consts.inside[signed]
        if grad.dtype != dtype:
            grad = grad.to(dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = inside.index_select(0, seg.view(-1)).view(seg.shape).mul_(grad)
            if x_dtype != dtype:
                grad_x = grad_x.to(x_dtype)
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return grad_x, None, None, None, None, None
        G0, G1 = segment_sums(seg, grad, grad * v, inside.numel())
        if signed:                                                      # sgn: the x < 0 copies count negatively
            half = inside.numel() // 2
            G0, G1 = G0[:half] - G0[half:], G1[:half] - G1[half:]
        d_alpha, d_theta = tables.gradients(G0, G1, a.double())
        grad_alpha = d_alpha.to(alpha_dtype).reshape(alpha_shape) if ctx.needs_input_grad[1] else None
        grad_theta = d_theta.to(theta_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_alpha, grad_theta, None, None, None
