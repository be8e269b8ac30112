"""LCQ on an accelerator: the forward and backward of :mod:`lcq_train.quant`'s LCQ in torch operations alone.

quant.py builds the compander's tables on the host in numpy, the fastest way on a CPU; on a GPU that makes
every quantizer call wait for the device several times (theta and alpha read back, tables and gradients
sent over). Here everything stays on the tensor's device, so a step queues its work without waiting, and
the work is split so that it can be batched across quantizers:

- :func:`build_tables`: the tables of n quantizers of one kind (K, s, s', signed, dtype), built by one
  set of batched operations; its autograd node's backward turns every quantizer's per-segment sums into
  its alpha and theta gradients, again batched. A model builds all its quantizers' tables this way once
  per forward (:mod:`lcq_train.batched_tables`), so a training step of ResNet-20 (36 quantizers) queues
  the table work once per kind instead of once per quantizer.
- :func:`apply_tables`: one tensor through its quantizer's tables: a segment search (``torch.bucketize``)
  and a lookup forward, the per-segment sums backward, which reach the tables' node as the gradient of
  the tables' ``handle`` (``dL/dtheta`` is linear in them).
- :func:`lcq_device`: both for one tensor, what :func:`lcq_train.quant.lcq_quantize` calls off the CPU.

The tables are the same float operations on the same values as :class:`lcq_train.quant._Tables` (the
levels bit-equal :func:`lcq_train.quant.expand_levels`'s, with the half-to-even tie rule of the
thresholds), and the gradients are eqs. (7)-(12) as :meth:`lcq_train.quant._Tables.gradients` computes
them, from per-segment sums that are float32 partial sums over chunks of at most ``CHUNK`` elements added
in float64 (:func:`segment_sums`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision LCQ computes a tensor of ``dtype`` in: float64 and float32 stay, any other float is
    float32."""
    return dtype if dtype in (torch.float64, torch.float32) else torch.float32


def working_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its working precision (:func:`working_dtype`)."""
    return x.to(working_dtype(x.dtype))


class _Constants:
    """Tensors of one batch shape (n quantizers, K, s, dtype, device) that do not depend on theta; read only."""

    _cache: dict = {}

    @classmethod
    def get(cls, n: int, K: int, s: int, dtype: torch.dtype, device: torch.device) -> "_Constants":
        key = (n, K, s, dtype, device)
        c = cls._cache.get(key)
        if c is None:
            c = cls._cache[key] = cls(n, K, s, dtype, device)
        return c

    def __init__(self, n: int, K: int, s: int, dtype: torch.dtype, device: torch.device):
        code = torch.arange(1, s + 1)
        # u of the code thresholds (c - 1/2) / s, c = 1..s, then of the levels i / s, i = 0..s; one row each
        u = torch.cat([(code.to(dtype) - 0.5) / s, torch.arange(s + 1, dtype=dtype) / s])
        self.u = u.expand(n, -1).contiguous().to(device)
        self.odd = torch.cat([code % 2 == 1, torch.zeros(s + 1, dtype=torch.bool)]).to(device)
        row = torch.arange(2 * s + 1)
        self.fixed = ((row == s) | (row == 2 * s)).to(device)          # levels[0] = 0 and levels[s] = 1, exactly
        self.fixed_value = (row == 2 * s).to(dtype).to(device)
        self.one = torch.ones(1, dtype=dtype, device=device)
        self.ones = self.one.expand(n, 1)
        self.k_over_K = (torch.arange(K, dtype=dtype) / K).to(device)
        head = torch.cat([torch.zeros(1, dtype=dtype), torch.arange(1, K, dtype=dtype) / K])     # interval edges
        self.head = head.expand(n, -1).to(device)
        # along the sorted bounds an interval edge raises the segment key k * (s + 1) + code by s + 1, a code
        # threshold by 1, the ends 0 and 1 not at all
        self.step = torch.cat([torch.zeros(1, dtype=torch.long), torch.full((K - 1,), s + 1),
                               torch.ones(s, dtype=torch.long), torch.zeros(1, dtype=torch.long)]).to(device)
        inside = torch.ones(K + s + 2, dtype=dtype)            # segments: v < 0, K + s of [0, 1), v >= 1
        inside[0] = inside[-1] = 0.0
        self.inside = {False: inside.to(device), True: torch.cat([inside, inside]).to(device)}
        self.u64 = (torch.arange(s + 1, dtype=torch.float64) / s).to(device)
        self.zero64 = torch.zeros((), dtype=torch.float64, device=device)


class _BatchTables:
    """The compander's tables of n quantizers (one row each), as :class:`lcq_train.quant._Tables` (which
    see) computes them for one: ``levels`` and their expanding intervals ``j`` per code, the sorted
    ``bounds`` of v, and per segment inside the clip range its ``key`` (interval * (s + 1) + code) and
    ``code``."""

    def __init__(self, theta: torch.Tensor, s: int, dtype: torch.dtype):
        n, K = theta.shape
        t = torch.softmax(theta, 1, dtype=dtype)                                # eq. (5)
        cumsum = t.cumsum(1)
        c = self.consts = _Constants.get(n, K, s, dtype, theta.device)
        self.s, self.t, self.cumsum = s, t, cumsum
        gamma = t * K
        beta = cumsum - t
        j = torch.searchsorted(beta[:, 1:].contiguous(), c.u, right=True)      # eq. (6)
        inverse = (c.u - beta.gather(1, j)) / gamma.gather(1, j) + c.k_over_K[j]
        inverse = torch.where(c.odd, torch.nextafter(inverse, c.one), inverse)  # odd thresholds: one ulp up
        inverse = torch.where(c.fixed, c.fixed_value, inverse)
        self.levels, self.j = inverse[:, s:], j[:, s:]
        self.bounds, order = torch.sort(torch.cat((c.head, inverse[:, :s], c.ones), 1), dim=1, stable=True)
        self.key = c.step[order].cumsum(1)
        self.code = self.key % (s + 1)

    def per_segment(self, per_code: torch.Tensor, signed: bool) -> torch.Tensor:
        """Tables (n, segments) per segment from ones (n, s + 1) per code (signed: the same again, negated,
        for x < 0)."""
        table = torch.cat((per_code[:, :1], per_code.gather(1, self.code)), 1)
        return torch.cat((table, -table), 1) if signed else table

    def gradients(self, G0: torch.Tensor, G1: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dL/dalpha, dL/dtheta)`` (float64, (n,) and (n, K)) from the per-segment sums ``G0 = sum sgn *
        grad`` and ``G1 = sum sgn * grad * v`` (n, segments): :meth:`lcq_train.quant._Tables.gradients`,
        term for term, one row per quantizer."""
        t, cumsum = self.t.double(), self.cumsum.double()
        (n, K), s, j = t.shape, self.s, self.j
        G0_in, G1_in = G0[:, 1:-1], G1[:, 1:-1]                         # the segments inside the clip range
        code, k = self.code[:, :-1], self.key[:, :-1] // (s + 1)
        d_alpha = (self.levels.double().gather(1, code) * G0_in).sum(1) - G1_in.sum(1) + G0[:, -1]
        t_j = t.gather(1, j)
        gamma_j = K * t_j
        scale = alpha[:, None] / gamma_j                                # per code: alpha / gamma_j
        expand = K * (cumsum.gather(1, j) - t_j - self.consts.u64) / gamma_j   # per code: -K (u - beta_j) / gamma_j
        scale_c = scale.gather(1, code)
        A = scale_c * G0_in                                             # per segment: its dL/dbeta_k
        kj = torch.cat((k, j.gather(1, code)), 1)
        d_t = G0.new_zeros(n, K).scatter_add_(1, kj, torch.cat((K * scale_c * G1_in - k * A,
                                                                expand.gather(1, code) * A), 1))
        d_t -= G0.new_zeros(n, K).scatter_add_(1, kj, torch.cat((A, -A), 1)).cumsum(1)
        return d_alpha, t * (d_t - (d_t * t).sum(1, keepdim=True))


@dataclass(frozen=True, eq=False)
class QuantizerTables:
    """One quantizer's tables, a row of :func:`build_tables`: its clip value ``alpha`` (0-d, ``dtype``),
    the sorted segment ``bounds`` of v, the output ``table`` per segment, ``inside`` (1 per segment inside
    the clip range, else 0), and ``handle`` (2, segments; float64), whose gradient :func:`apply_tables`
    sets to the per-segment sums. ``sources``: the alpha and theta tensors they were built from, and
    ``versions`` their in-place update counts then (:func:`_versions`), so that tables of replaced or
    updated parameters are stale (not seen: in-place changes through ``.data``, which count nothing);
    ``grad``: whether gradients were enabled (tables built without them pass none to alpha and theta)."""

    alpha: torch.Tensor
    bounds: torch.Tensor
    table: torch.Tensor
    inside: torch.Tensor
    handle: torch.Tensor
    signed: bool
    dtype: torch.dtype
    sources: tuple[torch.Tensor, torch.Tensor]
    versions: tuple[int | None, int | None]
    grad: bool

    def fits(self, x: torch.Tensor, alpha: torch.Tensor, theta: torch.Tensor) -> bool:
        """Whether these tables are current for quantizing ``x`` with ``alpha`` and ``theta``."""
        return (alpha is self.sources[0] and theta is self.sources[1] and self.versions == _versions(alpha, theta)
                and x.device == self.table.device
                and working_dtype(x.dtype) == self.dtype and self.grad == torch.is_grad_enabled())


def _versions(alpha: torch.Tensor, theta: torch.Tensor) -> tuple[int | None, int | None]:
    """alpha's and theta's in-place update counts (None for an inference tensor, which keeps none)."""
    return tuple(None if t.is_inference() else t._version for t in (alpha, theta))


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``; one tensor as a view."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


class _BuildTables(torch.autograd.Function):
    """Tables of n quantizers from ``alphas`` (n,), ``thetas`` (n, K) and ``a``, the alphas in ``dtype``:
    ``(bounds, tables, *handles)``. The backward takes the handles' gradients (per-segment sums, sign not
    yet applied) to the gradients of ``alphas`` and ``thetas``."""

    @staticmethod
    def forward(ctx, alphas, thetas, a, s, s_outer, signed, dtype):
        batch = _BatchTables(thetas, s, dtype)
        levels = batch.levels
        if s_outer is not None:
            levels = torch.round(levels * s_outer) / s_outer
        tables = batch.per_segment(levels * a[:, None], signed)
        handles = tables.new_zeros((), dtype=torch.float64).expand(alphas.numel(), 2, tables.shape[1]).unbind(0)
        ctx.mark_non_differentiable(batch.bounds, tables)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a)              # (for one quantizer a view of its alpha: changed in place, refused)
        ctx.batch, ctx.signed = batch, signed
        ctx.dtypes = alphas.dtype, thetas.dtype
        return (batch.bounds, tables, *handles)

    @staticmethod
    @once_differentiable
    def backward(ctx, _bounds, _tables, *sums):
        if all(g is None for g in sums):
            return (None,) * 7
        zero = ctx.batch.consts.zero64.expand(2, ctx.batch.consts.inside[ctx.signed].numel())
        G = _rows([zero if g is None else g for g in sums])
        if ctx.signed:                                                  # sgn: the x < 0 copies count negatively
            half = G.shape[2] // 2
            G = G[:, :, :half] - G[:, :, half:]
        a, = ctx.saved_tensors
        d_alpha, d_theta = ctx.batch.gradients(G[:, 0], G[:, 1], a.double())
        alpha_dtype, theta_dtype = ctx.dtypes
        return (d_alpha.to(alpha_dtype) if ctx.needs_input_grad[0] else None,
                d_theta.to(theta_dtype) if ctx.needs_input_grad[1] else None) + (None,) * 5


def build_tables(alphas: list[torch.Tensor], thetas: list[torch.Tensor], s: int, s_outer: int | None,
                 signed: bool, dtype: torch.dtype) -> list[QuantizerTables]:
    """The tables of n LCQ quantizers of one kind, built together: clip values ``alphas`` (0-d each) and
    companders ``thetas`` (K each) on one device, ``s`` levels per sign, ``s_outer`` those of the outer
    re-quantization (None: none), ``signed``, computed in ``dtype`` (float32 or float64). One
    :class:`QuantizerTables` per quantizer, in order; their handles' gradients reach ``alphas`` and
    ``thetas`` through one batched backward."""
    alpha_rows = _rows([a.reshape(()) for a in alphas])
    a = alpha_rows.detach().to(dtype)
    bounds, tables, *handles = _BuildTables.apply(alpha_rows, _rows(thetas), a, s, s_outer, signed, dtype)
    inside = _Constants.get(len(alphas), thetas[0].numel(), s, dtype, tables.device).inside[signed]
    grad = torch.is_grad_enabled()
    return [QuantizerTables(a[i], bounds[i], tables[i], inside, handles[i], signed, dtype, (alphas[i], thetas[i]),
                            _versions(alphas[i], thetas[i]), grad) for i in range(len(alphas))]


class _ApplyTables(torch.autograd.Function):
    """``x`` through ``tables``; the gradient of ``handle`` (``tables.handle``) is the per-segment sums
    of ``grad`` and ``grad * v``."""

    @staticmethod
    def forward(ctx, x, handle, tables: QuantizerTables):
        x_dtype = x.dtype
        x = working_precision(x)
        a = tables.alpha
        v = x.abs().div_(a) if tables.signed else x / a
        seg = torch.bucketize(v, tables.bounds, right=True)
        if tables.signed:
            seg.add_(x < 0, alpha=tables.table.numel() // 2)
        ctx.save_for_backward(v, seg)
        ctx.tables, ctx.x_dtype = tables, x_dtype
        out = tables.table.index_select(0, seg.view(-1)).view(seg.shape)
        return out if x_dtype == out.dtype else out.to(x_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        v, seg = ctx.saved_tensors
        tables = ctx.tables
        if grad.dtype != v.dtype:
            grad = grad.to(v.dtype)
        grad_x = sums = None
        if ctx.needs_input_grad[0]:
            grad_x = tables.inside.index_select(0, seg.view(-1)).view(seg.shape).mul_(grad)
            if ctx.x_dtype != grad_x.dtype:
                grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            sums = segment_sums(seg, grad, grad * v, tables.inside.numel())
        return grad_x, sums, None


def apply_tables(x: torch.Tensor, tables: QuantizerTables) -> torch.Tensor:
    """LCQ fake-quantization of ``x`` (any shape; its working precision is ``tables.dtype``) with one
    quantizer's tables; gradients as :func:`lcq_train.quant.lcq_quantize`, to alpha and theta through the
    tables."""
    if working_dtype(x.dtype) != tables.dtype:
        raise TypeError(f"these LCQ tables are in {tables.dtype}; a {x.dtype} input needs tables built in "
                        f"{working_dtype(x.dtype)}")
    return _ApplyTables.apply(x, tables.handle, tables)


def lcq_device(x: torch.Tensor, alpha: torch.Tensor, theta: torch.Tensor, s: int, s_outer: int | None,
               signed: bool) -> torch.Tensor:
    """``lcq_quantize(x, alpha, theta, bits, outer_bits, signed)`` (:mod:`lcq_train.quant`) with no host
    round trip: ``s`` is the level count per sign, ``s_outer`` that of the outer re-quantization or None."""
    tables = build_tables([alpha], [theta], s, s_outer, signed, working_dtype(x.dtype))[0]
    return apply_tables(x, tables)
