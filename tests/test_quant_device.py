"""The accelerator path of LCQ (lcq_train.quant_device), run here on CPU tensors, against the host path."""

import pytest
import torch

from lcq_train.quant import _LCQFunction, lcq_quantize, level_scale
from lcq_train.quant_device import LCQDeviceFunction


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
            y = LCQDeviceFunction.apply(xr, a, th, level_scale(bits, signed),
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
    """A tensor on another device (here "meta") goes to LCQDeviceFunction with the level counts s and s';
    a CPU tensor keeps the host path."""
    calls = []
    monkeypatch.setattr(LCQDeviceFunction, "apply", staticmethod(lambda *a: calls.append(a) or a[0]))
    lcq_quantize(torch.randn(10), torch.tensor(1.0), torch.zeros(4), 3, 8, False)
    assert not calls
    x = torch.empty(10, device="meta")
    lcq_quantize(x, torch.tensor(1.0, device="meta"), torch.zeros(4, device="meta"), 3, 6, True)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][3:] == (3, 31, True)
