"""The functional quantizers against independent evaluations of the paper's equations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcq_train.quant import (_Constants, _grid_search, _segments, compander, expand_levels, lcq_codes, lcq_quantize,
                             level_scale, level_table,
                             uniform_quantize)

K = 16


def _inputs(alpha: float, n: int = 4000, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random values plus interval edges, +-alpha, values beyond alpha and zeros."""
    g = torch.Generator().manual_seed(seed)
    edges = alpha * torch.arange(K + 1, dtype=dtype) / K
    special = torch.cat([edges, -edges, torch.tensor([0.0, alpha * 1.5, -alpha * 3, alpha, -alpha], dtype=dtype)])
    return torch.cat([torch.randn(n, generator=g, dtype=dtype) * alpha * 0.7, special])


def _surrogate_g(v, theta, s, frozen=None):
    """Direct evaluation of g(v) = f^-1(q_b(f(v))) (eqs. 4-6) with q_b straight-through.

    ``frozen`` (k, j, rounding residual) fixes the pieces and the rounding, for finite differences.
    """
    t = torch.softmax(theta, 0)
    gamma, beta = t * K, torch.cumsum(t, 0) - t
    vc = v.clamp(0, 1)
    if frozen is None:
        k = torch.clamp((vc * K).floor(), max=K - 1).long()
        f = gamma[k] * (vc - k / K) + beta[k]
        r = (torch.round(f * s) / s - f).detach()
        u = f + r
        bounds = beta.detach()[1:]
        j = (u.detach()[:, None] >= bounds[None, :]).sum(1)  # u = 1 stays in interval K-1
    else:
        k, j, r = frozen
        u = gamma[k] * (vc - k / K) + beta[k] + r
    g = (u - beta[j]) / gamma[j] + j / K
    return g, (k, j, r)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("outer_bits", [8, None])
def test_theta_zero_equals_uniform(signed, bits, outer_bits):
    x = _inputs(2.0, seed=bits).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    a1 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    a2 = a1.detach().clone().requires_grad_()
    theta = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    y1 = lcq_quantize(x, a1, theta, bits, outer_bits, signed)
    y2 = uniform_quantize(x2, a2, bits, outer_bits, signed)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    w = torch.randn_like(y1)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=0, rtol=0)
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_forward_is_integer_levels_times_scale(signed, bits):
    torch.manual_seed(bits)
    theta = torch.randn(K) * 0.8
    alpha = torch.tensor(1.7)
    x = _inputs(1.7, dtype=torch.float32)
    y = lcq_quantize(x, alpha, theta, bits, 8, signed)
    s_outer = level_scale(8, signed)
    table = level_table(theta, bits, 8, signed)
    codes = lcq_codes(x, alpha, theta, bits, signed)
    expected = torch.sign(codes).float() * alpha * (table.float() / s_outer)[codes.abs()]
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    ratio = y.double() / alpha.double() * s_outer
    assert (ratio - ratio.round()).abs().max() < 1e-4
    assert table[0] == 0 and table[-1] == s_outer
    assert torch.all(table[1:] >= table[:-1])
    assert codes.abs().max() == level_scale(bits, signed)
    if not signed:
        assert codes.min() == 0
    # Codes are round(s * f(v)) of eq. (5), evaluated directly.
    v = (x.abs() if signed else x.clamp(min=0)).double() / 1.7
    t = torch.softmax(theta.double(), 0)
    vc = v.clamp(0, 1)
    k = torch.clamp((vc * K).floor(), max=K - 1).long()
    f = t[k] * K * (vc - k / K) + (torch.cumsum(t, 0) - t)[k]
    direct = torch.round(f * level_scale(bits, signed)).long()
    agree = (direct == codes.abs()).double().mean().item()
    assert agree > 0.999  # float32 vs float64 evaluation differs only at exact ties


def test_outer_levels_multiply_to_integers():
    """W3/A3 with b' = 8: every LUT entry W[k] * A[j] is an integer (21 non-zero entries)."""
    torch.manual_seed(1)
    w = level_table(torch.randn(K), 3, 8, True)
    a = level_table(torch.randn(K), 3, 8, False)
    assert w.dtype == torch.int64 and w.numel() == 4 and a.numel() == 8
    assert (w[1:, None] * a[None, 1:]).numel() == 21


def _check_gradients_against_equations(bits: int, signed: bool, n: int, seed: int) -> None:
    """lcq_quantize's gradients for random x, theta (alpha = 1.3) against an independent float64
    evaluation: autograd through the direct surrogate g (eqs. 7-11), eq. (12) for alpha."""
    s = level_scale(bits, signed)
    alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    theta = (torch.randn(K, dtype=torch.float64) * 0.7).requires_grad_()
    x = _inputs(1.3, n=n, seed=seed).requires_grad_()
    w = torch.randn(x.shape, dtype=torch.float64)
    (lcq_quantize(x, alpha, theta, bits, 8, signed) * w).sum().backward()

    xd = x.detach()
    sign = torch.sign(xd) if signed else (xd > 0).double()
    v = (xd.abs() if signed else xd.clamp(min=0)) / 1.3
    inside = v < 1
    th = theta.detach().clone().requires_grad_()
    g, _ = _surrogate_g(v, th, s)
    (w * sign * 1.3 * torch.where(inside, g, torch.zeros_like(g))).sum().backward()
    torch.testing.assert_close(theta.grad, th.grad, atol=1e-10, rtol=1e-9)

    d_alpha = torch.where(inside, g.detach() - v, torch.ones_like(v)) * sign
    torch.testing.assert_close(alpha.grad, (w * d_alpha).sum(), atol=1e-10, rtol=1e-9)
    mask = inside & ((xd >= 0) | torch.tensor(signed))
    torch.testing.assert_close(x.grad, w * mask, atol=0, rtol=0)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [3, 4])
def test_theta_and_alpha_gradients_match_direct_evaluation(signed, bits):
    torch.manual_seed(10 + bits)
    _check_gradients_against_equations(bits, signed, 4000, seed=bits)


@pytest.mark.parametrize("signed", [True, False])
def test_theta_gradient_matches_finite_differences(signed):
    torch.manual_seed(3)
    s = level_scale(3, signed)
    theta0 = torch.randn(K, dtype=torch.float64) * 0.5
    x = _inputs(1.0, n=500, seed=7)
    w = torch.randn(x.shape, dtype=torch.float64)
    theta = theta0.clone().requires_grad_()
    (lcq_quantize(x, torch.tensor(1.0, dtype=torch.float64), theta, 3, None, signed) * w).sum().backward()

    sign = torch.sign(x) if signed else (x > 0).double()
    v = (x.abs() if signed else x.clamp(min=0))
    inside = (v < 1).double()
    _, frozen = _surrogate_g(v, theta0, s)

    def objective(th):
        g, _ = _surrogate_g(v, th, s, frozen)
        return (w * sign * inside * g).sum()

    eps = 1e-6
    fd = torch.stack([(objective(theta0 + eps * e) - objective(theta0 - eps * e)) / (2 * eps)
                      for e in torch.eye(K, dtype=torch.float64)])
    torch.testing.assert_close(theta.grad, fd, atol=1e-6, rtol=1e-5)


def test_unclipped_code_s_stays_in_last_interval():
    """q_b(f(v)) = 1 is expanded with the last piece, so f^-1(1) = 1 for any theta."""
    theta = torch.randn(K) * 2
    levels, j = expand_levels(theta, 7)
    assert j[-1] == K - 1 and levels[-1] == 1.0 and levels[0] == 0.0
    gamma, beta = compander(theta)
    assert torch.isclose(beta[-1] + gamma[-1] / K, torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_train(dtype):
    x = (torch.randn(64, 8) * 2).to(dtype).requires_grad_()
    alpha = torch.tensor(1.5, requires_grad=True)
    theta = torch.zeros(K, requires_grad=True)
    y = lcq_quantize(x, alpha, theta, 4, 8, True)
    assert y.dtype == dtype and y.shape == x.shape
    y.float().square().sum().backward()
    assert x.grad.dtype == dtype and alpha.grad is not None and theta.grad is not None
    assert torch.isfinite(theta.grad).all()


def test_bad_arguments_name_the_problem():
    x, a, th = torch.randn(4), torch.tensor(1.0), torch.zeros(K)
    with pytest.raises(ValueError, match="bit-width must be a positive integer, not 0"):
        lcq_quantize(x, a, th, 0)
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        lcq_quantize(x, torch.ones(2), th, 3)
    with pytest.raises(TypeError, match="floating-point"):
        lcq_quantize(torch.ones(4, dtype=torch.int64), a, th, 3)
    with pytest.raises(ValueError, match="theta must be a non-empty 1-D"):
        lcq_quantize(x, a, torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="signed quantizer needs at least 2 bits"):
        uniform_quantize(x, a, 1, signed=True)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 6), outer=st.integers(6, 10), signed=st.booleans(), k=st.sampled_from([1, 4, 16]),
       seed=st.integers(0, 2**16), scale=st.floats(0.1, 4.0))
def test_outputs_lie_on_the_level_table(bits, outer, signed, k, seed, scale):
    if signed and bits == 1:
        return
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g) * scale
    alpha = torch.tensor(0.5 + scale)
    x = torch.randn(300, generator=g) * float(alpha)
    y = lcq_quantize(x, alpha, theta, bits, outer, signed)
    ints = y.double() / float(alpha) * level_scale(outer, signed)
    table = level_table(theta, bits, outer, signed).double()
    allowed = torch.cat([table, -table]) if signed else table
    assert torch.isin(ints.round(), allowed).all()
    assert (ints - ints.round()).abs().max() < 1e-3
    # Monotone: a larger input never gets a smaller output.
    order = torch.argsort(x)
    assert torch.all(y[order][1:] >= y[order][:-1])


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 4), seed=st.integers(0, 2**16), spread=st.floats(0.0, 4.0))
def test_segment_search_equals_bucketize(bits, seed, spread):
    """The grid search finds the same segment as a binary search, boundaries themselves included."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=torch.float64) * spread
    bounds, _, _ = _segments(theta, level_scale(bits, False), torch.float64)
    v = torch.cat([torch.rand(3000, generator=g, dtype=torch.float64) * 1.4 - 0.2, bounds,
                   torch.nextafter(bounds, torch.zeros_like(bounds)), torch.tensor([-1.0, 0.0, 1.0, 5.0], dtype=torch.float64)])
    b = bounds.numpy()
    torch.testing.assert_close(_grid_search(v, b, _Constants.get(1, 1, b.dtype)).long(),
                               torch.bucketize(v, bounds, right=True), atol=0, rtol=0)


# --- The implementation's paths: host (numpy) and device (torch) per-element steps, binary vs grid search, the
# theta gradient as a loop over segments or vectorized. All must give the same forward bit for bit and the same
# gradients as the direct evaluation of the equations.

PATHS = {
    "host-binary": dict(_HOST_MAX=1 << 30, _GRID_MIN=1 << 30),
    "host-grid": dict(_HOST_MAX=1 << 30, _GRID_MIN=0),
    "device-binary": dict(_HOST_MAX=0, _GRID_MIN=1 << 30),
    "device-grid": dict(_HOST_MAX=0, _GRID_MIN=0),
}


def _use_path(monkeypatch, path: str, loop: bool = True):
    from lcq_train import quant
    for name, value in PATHS[path].items():
        monkeypatch.setattr(quant, name, value)
    monkeypatch.setattr(quant, "_LOOP_MAX", 1 << 30 if loop else 0)


def _reference_segments(theta: torch.Tensor, s: int, dtype: torch.dtype):
    """The segments as the torch implementation computed them: boundaries (the edges i/K and the code thresholds
    f^-1((c - 1/2) / s), odd ones one ulp up so that ties round half to even, sorted) and each segment's interval
    and code."""
    from lcq_train.quant import _inverse
    K = theta.numel()
    c = torch.arange(1, s + 1)
    t, _ = _inverse((c.to(dtype) - 0.5) / s, *compander(theta, dtype))
    t = torch.where(c % 2 == 1, torch.nextafter(t, torch.ones_like(t)), t)
    edges = torch.arange(1, K, dtype=dtype) / K
    ends = torch.tensor([0.0, 1.0], dtype=dtype)
    bounds, order = torch.sort(torch.cat([ends[:1], edges, t, ends[1:]]), stable=True)
    kind = torch.cat([torch.zeros(K, dtype=torch.int64), torch.ones(s, dtype=torch.int64),
                      torch.zeros(1, dtype=torch.int64)])
    is_code = kind[order]
    is_edge = torch.zeros_like(is_code)
    is_edge[1:-1] = 1 - is_code[1:-1]
    zero = torch.zeros(1, dtype=torch.int64)
    return bounds, torch.cat([zero, torch.cumsum(is_edge, 0)]), torch.cat([zero, torch.cumsum(is_code, 0)])


@pytest.mark.parametrize("intervals", [1, 4, K])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits,signed", [(2, False), (3, True), (3, False), (4, True), (8, False)])
def test_segment_bounds_equal_the_torch_evaluation_bit_for_bit(intervals, dtype, bits, signed):
    """The host tables (numpy) reproduce torch's float operations: the same thresholds and segments, hence the same
    codes as before."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        theta = torch.randn(intervals, generator=g) * [0.1, 1.0, 3.0][seed % 3]
        for got, expected in zip(_segments(theta, level_scale(bits, signed), dtype),
                                 _reference_segments(theta, level_scale(bits, signed), dtype)):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("signed", [True, False])
def test_every_path_gives_the_same_forward_and_gradients(monkeypatch, path, signed):
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(K, generator=g) * 0.8
    alpha = torch.tensor(1.3)
    bounds = _segments(theta, level_scale(3, signed), torch.float32)[0].double() * 1.3
    below = torch.nextafter(bounds, torch.zeros_like(bounds))
    x = torch.cat([torch.randn(6000, generator=g) * 1.5, bounds, -bounds, below, torch.tensor([0.0, -0.0, 5.0, -5.0])])
    x = x.float()
    w = torch.randn(x.shape, generator=g)

    def run():
        xx, a, th = x.clone().requires_grad_(), alpha.clone().requires_grad_(), theta.clone().requires_grad_()
        y = lcq_quantize(xx, a, th, 3, 8, signed)
        (y * w).sum().backward()
        return y, xx.grad, a.grad, th.grad

    with monkeypatch.context() as m:
        _use_path(m, "device-binary")
        expected = run()
    _use_path(monkeypatch, path, loop=path.startswith("host"))
    got = run()
    for e, o in zip(expected[:2], got[:2]):
        torch.testing.assert_close(o, e, atol=0, rtol=0)
    for e, o in zip(expected[2:], got[2:]):
        torch.testing.assert_close(o, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["host-grid", "device-grid"])
@pytest.mark.parametrize("loop", [True, False])
@pytest.mark.parametrize("signed", [True, False])
def test_gradients_match_direct_evaluation_on_every_path(monkeypatch, path, loop, signed):
    """As test_theta_and_alpha_gradients_match_direct_evaluation, on the grid search and both theta-gradient forms."""
    _use_path(monkeypatch, path, loop)
    torch.manual_seed(21)
    _check_gradients_against_equations(4, signed, 6000, seed=4)


@pytest.mark.parametrize("path", list(PATHS))
def test_infinite_and_nan_inputs_count_as_beyond_the_clip_range(monkeypatch, path):
    _use_path(monkeypatch, path)
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.5, -0.5] * 1000, requires_grad=True)
    alpha, theta = torch.tensor(2.0, requires_grad=True), torch.randn(K, requires_grad=True)
    y = lcq_quantize(x, alpha, theta, 3, 8, True)
    assert y[:3].tolist() == [2.0, -2.0, 2.0]
    y.sum().backward()
    assert x.grad[:3].tolist() == [0.0, 0.0, 0.0] and x.grad[3:5].tolist() == [1.0, 1.0]
    assert torch.isfinite(theta.grad).all()
    yu = lcq_quantize(x.detach(), alpha, theta, 3, 8, False)
    assert yu[:3].tolist() == [2.0, 0.0, 2.0]


def test_float32_segment_sums_match_float64_at_2m_elements():
    """The backward's per-segment sums of grad and grad * v, float32 against float64, at 2M elements.

    A float32 accumulator per segment over all of its ~100k elements (a plain
    index_add) is ~5e-5 off; the chunked partial sums added in float64 are
    accurate to 1e-5 relative in every segment, and so are the alpha and theta
    gradients (against the whole computation in float64).
    """
    from lcq_train.quant import _search, _Tables
    from lcq_train.quant_device import segment_sums

    g = torch.Generator().manual_seed(0)
    n = 1 << 21
    x = torch.randn(n, generator=g)
    grad = torch.randn(n, generator=g)
    theta = torch.randn(K, generator=g) * 0.5
    s = level_scale(3, True)
    with torch.no_grad():
        tables = _Tables(theta, s, torch.float32)
    v = x.abs() / 3.0
    seg = _search(tables, v)
    seg.add_(x < 0, alpha=tables.key.size + 1)
    bins = 2 * (tables.key.size + 1)
    sums = segment_sums(seg, grad, grad * v, bins).numpy()
    index = seg.long()
    exact = torch.stack([torch.zeros(bins, dtype=torch.float64).index_add_(0, index, w.double())
                         for w in (grad, grad * v)])
    used = exact != 0
    assert used.sum() > 40
    assert ((torch.from_numpy(sums) - exact).abs()[used] / exact.abs()[used]).max() < 1e-5

    # Gradients end to end, float32 against float64, where both put every element in the same segment.
    same = torch.bucketize(v, _segments(theta, s, torch.float32)[0], right=True) == \
        torch.bucketize(x.double().abs() / 3.0, _segments(theta, s, torch.float64)[0], right=True)
    w = torch.where(same, grad, 0.0)
    result = {}
    for dtype in (torch.float32, torch.float64):
        a, th = torch.tensor(3.0, dtype=dtype, requires_grad=True), theta.to(dtype, copy=True).requires_grad_()
        (lcq_quantize(x.to(dtype), a, th, 3, 8, True) * w.to(dtype)).sum().backward()
        result[dtype] = a.grad.double(), th.grad.double()
    (a32, t32), (a64, t64) = result[torch.float32], result[torch.float64]
    assert ((a32 - a64).abs() / a64.abs()).item() < 1e-5
    assert ((t32 - t64).abs().max() / t64.abs().max()).item() < 1e-5
