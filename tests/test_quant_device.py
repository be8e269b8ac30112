"""The accelerator path of LCQ (lcq_train.quant_device), run here on CPU tensors, against the host path."""

import pytest
import torch

from lcq_train.quant import _LCQFunction, lcq_quantize, level_scale
from lcq_train import quant
from lcq_train.quant_device import apply_tables, build_tables, lcq_device


def _both(x, alpha0, theta, bits, outer_bits, signed):
    """(output, alpha grad, theta grad, x grad) of the host and of the device path on the same inputs."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(x.shape, generator=g, dtype=x.dtype)
    out = []
    for path in ("host", "device"):
        xr = x.clone().requires_grad_()
        a = torch.tensor(alpha0, dtype=x.dtype, requires_grad=True)
        th = theta.to(x.dtype, copy=True).requires_grad_()
        if path == "host":
            y = _LCQFunction.apply(xr, a, th, bits, outer_bits, signed)
        else:
            y = lcq_device(xr, a, th, level_scale(bits, signed),
                           None if outer_bits is None else level_scale(outer_bits, signed), signed)
        (y * w).sum().backward()
        out.append((y.detach(), a.grad, th.grad, xr.grad))
    return out


@pytest.mark.parametrize("signed,bits", [(True, 3), (True, 4), (False, 2), (False, 3), (False, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1000, 100_000])
def test_device_path_equals_host_path(signed, bits, dtype, n):
    """Forward bit for bit (the same tables, ties included), gradients to float64 rounding."""
    g = torch.Generator().manual_seed(bits * 7 + n)
    x = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * 2.0
    x[:5] = torch.tensor([0.0, -0.0, 3.0, -3.0, float("nan")], dtype=dtype)   # zero, the clip edge, NaN
    theta = torch.randn(16, generator=g) * 0.7
    (yh, ah, th, xh), (yd, ad, td, xd) = _both(x, 3.0, theta, bits, 8, signed)
    torch.testing.assert_close(yd, yh, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(xd, xh, atol=0, rtol=0, equal_nan=True)
    finite = torch.isfinite(x)
    (yh, ah, th, xh), (yd, ad, td, xd) = _both(x[finite], 3.0, theta, bits, 8, signed)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ad, ah, rtol=tol, atol=tol * ah.abs().item())
    torch.testing.assert_close(td, th, rtol=tol, atol=tol * th.abs().max().item())


def test_device_path_ties_round_half_to_even_and_no_outer():
    """Inputs exactly on the code thresholds of the identity compander (theta = 0) and outer_bits None."""
    s = level_scale(3, False)
    x = torch.tensor([(c - 0.5) / s for c in range(1, s + 1)] + [c / s for c in range(s + 1)], dtype=torch.float64)
    (yh, _, _, _), (yd, _, _, _) = _both(x, 1.0, torch.zeros(4), 3, None, False)
    torch.testing.assert_close(yd, yh, atol=0, rtol=0)


def test_lcq_quantize_takes_the_device_path_off_the_cpu(monkeypatch):
    """A tensor on another device (here "meta") goes to lcq_device with the level counts s and s';
    a CPU tensor keeps the host path."""
    calls = []
    monkeypatch.setattr(quant, "lcq_device", lambda *a: calls.append(a) or a[0])
    lcq_quantize(torch.randn(10), torch.tensor(1.0), torch.zeros(4), 3, 8, False)
    assert not calls
    x = torch.empty(10, device="meta")
    lcq_quantize(x, torch.tensor(1.0, device="meta"), torch.zeros(4, device="meta"), 3, 6, True)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][3:] == (3, 31, True)


@pytest.mark.parametrize("signed,bits,dtype", [(True, 3, torch.float32), (False, 2, torch.float64),
                                               (False, 4, torch.float32)])
def test_tables_built_together_equal_tables_built_alone(signed, bits, dtype):
    """Three quantizers' tables from one build_tables call quantize as each one's own call does: the same
    outputs, and alpha and theta gradients through the batched backward equal to float64 rounding (one
    quantizer's output left unused gets zero gradients)."""
    g = torch.Generator().manual_seed(bits)
    s, s_outer = level_scale(bits, signed), level_scale(6, signed)
    xs = [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * 2.0 for n in (500, 4096, 70)]
    ws = [torch.randn(x.shape, generator=g, dtype=dtype) for x in xs]
    alpha0 = [1.5, 3.0, 2.2]
    theta0 = [torch.randn(8, generator=g) * 0.7 for _ in xs]

    def params():
        return ([torch.tensor(a, requires_grad=True) for a in alpha0],
                [t.clone().requires_grad_() for t in theta0])

    alphas, thetas = params()
    tables = build_tables(alphas, thetas, s, s_outer, signed, dtype)
    together = [apply_tables(x, t) for x, t in zip(xs, tables)]
    sum((y * w).sum() for y, w in zip(together[:2], ws)).backward()
    for i, (x, w) in enumerate(zip(xs, ws)):
        alpha, theta = params()
        alone = lcq_device(x, alpha[i], theta[i], s, s_outer, signed)
        torch.testing.assert_close(together[i].detach(), alone.detach(), atol=0, rtol=0)
        if i == 2:
            assert torch.all(alphas[i].grad == 0) and torch.all(thetas[i].grad == 0)
            continue
        (alone * w).sum().backward()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(alphas[i].grad, alpha[i].grad, rtol=tol, atol=tol * alpha[i].grad.abs().item())
        torch.testing.assert_close(thetas[i].grad, theta[i].grad, rtol=tol, atol=tol * theta[i].grad.abs().max().item())


def test_tables_fit_only_while_their_parameters_are_unchanged():
    alpha, theta = torch.tensor(2.0, requires_grad=True), torch.zeros(4, requires_grad=True)
    x = torch.randn(10)
    tables = build_tables([alpha], [theta], 7, 255, False, torch.float32)[0]
    assert tables.fits(x, alpha, theta)
    assert not tables.fits(x.double(), alpha, theta)            # another working precision
    with torch.no_grad():
        assert not tables.fits(x, alpha, theta)                 # built with gradients, used without
        theta.add_(0.1)                                         # an optimizer step
    assert not tables.fits(x, alpha, theta)
    with pytest.raises(TypeError, match="tables built in torch.float64"):
        apply_tables(x.double(), tables)


def _quantize_on(device: str, xs, ws, alpha0, theta0, s, s_outer, signed):
    """Outputs and gradients (x, alpha, theta) of quantizers with their tables in one batch on ``device``,
    and the tables; all on the CPU."""
    alphas = [torch.tensor(a, device=device, requires_grad=True) for a in alpha0]
    thetas = [t.detach().clone().to(device).requires_grad_() for t in theta0]     # fresh leaves: the callers'
    x = [x.detach().clone().to(device).requires_grad_() for x in xs]              # tensors stay untouched
    tables = build_tables(alphas, thetas, s, s_outer, signed, torch.float32)
    ys = [apply_tables(xi, t) for xi, t in zip(x, tables)]
    sum((y * w.to(device)).sum() for y, w in zip(ys, ws)).backward()
    cpu = lambda ts: [t.detach().cpu() for t in ts]                    # noqa: E731
    return (cpu(ys), cpu(xi.grad for xi in x), cpu(a.grad for a in alphas), cpu(t.grad for t in thetas),
            cpu(t.bounds for t in tables), cpu(t.table for t in tables))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("signed,bits", [(True, 3), (True, 4), (False, 2), (False, 4)])
def test_on_a_gpu_the_device_path_quantizes_as_on_the_cpu(signed, bits):
    """Three quantizers with their tables in one batch, on CUDA and on the CPU. The segment bounds may
    differ by a few ulps (the GPU's exp, then u - beta_j cancels); the output tables (levels after the
    8-bit outer rounding) are the same; elements between a bound's two values are left out, and on all
    others the outputs and x gradients are the same bit for bit and the alpha and theta gradients agree
    to 1e-5 (float32 sums in another order)."""
    g = torch.Generator().manual_seed(bits)
    s, s_outer = level_scale(bits, signed), level_scale(8, signed)
    xs = [torch.randn(n, generator=g) * 2.0 for n in (1000, 100_000, 2_000_000)]
    alpha0 = [1.5, 3.0, 2.2]
    theta0 = [torch.randn(16, generator=g) * 0.7 for _ in xs]
    ws = [torch.randn(x.shape, generator=g) for x in xs]
    cpu = _quantize_on("cpu", xs, ws, alpha0, theta0, s, s_outer, signed)
    between = []
    for x, a, b_cpu, b_gpu in zip(xs, alpha0, cpu[4], _quantize_on("cuda", xs, ws, alpha0, theta0, s, s_outer,
                                                                    signed)[4]):
        torch.testing.assert_close(b_gpu, b_cpu, rtol=1e-6, atol=1e-6)      # (u - beta: cancellation)
        v = (x.abs() if signed else x) / torch.tensor(a)
        lo, hi = torch.minimum(b_cpu, b_gpu), torch.maximum(b_cpu, b_gpu)
        between.append(((v[:, None] >= lo) & (v[:, None] <= hi)).any(1))
    ws = [w * ~m for w, m in zip(ws, between)]                        # those elements get no gradient
    cpu = _quantize_on("cpu", xs, ws, alpha0, theta0, s, s_outer, signed)
    gpu = _quantize_on("cuda", xs, ws, alpha0, theta0, s, s_outer, signed)
    for i, m in enumerate(between):
        assert m.float().mean() < 1e-3
        torch.testing.assert_close(gpu[5][i], cpu[5][i], atol=0, rtol=0)                    # the output tables
        torch.testing.assert_close(gpu[0][i][~m], cpu[0][i][~m], atol=0, rtol=0)            # outputs
        torch.testing.assert_close(gpu[1][i], cpu[1][i], atol=0, rtol=0)                    # x gradients
        torch.testing.assert_close(gpu[2][i], cpu[2][i], rtol=1e-5, atol=1e-5 * cpu[2][i].abs().item())
        torch.testing.assert_close(gpu[3][i], cpu[3][i], rtol=1e-5, atol=1e-5 * cpu[3][i].abs().max().item())


def test_alpha_changed_in_place_between_forward_and_backward_is_refused():
    """As autograd refuses it elsewhere: a lone call's tables would otherwise see the new alpha."""
    alpha, theta = torch.tensor(2.0, requires_grad=True), (0.5 * torch.randn(8)).requires_grad_()
    y = lcq_device(torch.randn(100), alpha, theta, 7, 255, False)
    with torch.no_grad():
        alpha.mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_parameters_made_in_inference_mode_quantize():
    """Inference tensors keep no update count; their tables fit while the tensors are the same ones."""
    with torch.inference_mode():
        alpha, theta, x = torch.tensor(2.0), 0.5 * torch.randn(8), torch.rand(100) * 3
        y = lcq_device(x, alpha, theta, 7, 255, False)
        tables = build_tables([alpha], [theta], 7, 255, False, torch.float32)[0]
        assert tables.fits(x, alpha, theta) and not tables.fits(x, alpha, theta.clone())
    torch.testing.assert_close(y, _LCQFunction.apply(x, alpha, theta, 3, 8, False), atol=0, rtol=0)
