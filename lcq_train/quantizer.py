"""Quantizer modules: learnable LCQ / uniform fake-quantizers for weights and activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arguments import FloatRange, IntRange
from .quant import lcq_codes, lcq_quantize, level_scale, level_table, uniform_codes, uniform_quantize
from .quant_device import QuantizerTables, apply_tables

METHODS = ("fp", "uniform", "lcq")

# The ranges the quantizer supports: the one rule behind QuantSpec, QuantPlan and `lcq train`'s options.
MIN_BITS, MAX_BITS = 2, 8            # bit-width b of a weight or activation quantizer
MAX_OUTER_BITS = 16                  # b' of the outer re-quantization (at least the quantizer's own b)
MAX_K = 1024                         # compander intervals K
BITS = IntRange(MIN_BITS, MAX_BITS)                     # --wbits, --abits, --edge-bits, per-layer bits
OUTER_BITS = IntRange(MIN_BITS, MAX_OUTER_BITS, also=(0,))   # --outer-bits (0: no outer re-quantization)
INTERVALS = IntRange(1, MAX_K)                          # --K
CLIP = FloatRange(0.0, 1e6, lo_open=True)               # --alpha-w, --alpha-a (initial clip values)
WEIGHT_NORMS = ("lwn", "standardize")                   # --weight-norm


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    ``method``: "fp" (identity), "uniform" (eqs. 1-2) or "lcq" (eqs. 3-6, 14).
    ``bits``: 2..8; ``outer_bits``: b' of the re-quantization (bits..16, None: none);
    ``K``: compander intervals (1..1024); ``alpha``: initial clip value;
    ``learn_alpha``: False freezes alpha (used for the 8-bit input image).
    Signed 2-bit LCQ falls back to uniform (ternary: companding has no effect).
    """

    method: str = "fp"
    bits: int = 8
    outer_bits: int | None = 8
    K: int = 16
    alpha: float = 8.0
    learn_alpha: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"quantization method must be one of {METHODS}, not {self.method!r}")
        if self.method != "fp":
            BITS.check(self.bits, "bit-width")
            if self.outer_bits is not None:
                IntRange(self.bits, MAX_OUTER_BITS).check(self.outer_bits, "outer bit-width (None: none)")
            INTERVALS.check(self.K, "K (compander intervals)")
            CLIP.check(self.alpha, "initial alpha")


class Quantizer(nn.Module):
    """Fake-quantizer for one tensor; ``signed`` for weights, unsigned for activations.

    Weights go through a weight normalization, ``weight_norm`` (True means "lwn"):

    - "lwn", limited weight normalization (eq. 13): ``w~ = sigma_w * Q((w - mu_w) / sigma_w)``;
    - "standardize", the conventional standardization the paper compares LWN with (APoT):
      ``w~ = Q((w - mu_w) / sigma_w)``, no rescaling by sigma_w after the quantizer;

    with ``mu_w, sigma_w`` detached in both. ``weight_norm`` False or None: none (activations).
    Parameters: ``alpha`` (scalar) unless method is "fp"; ``theta`` (K,) for LCQ. ``tables``: LCQ tables
    built for this quantizer ahead of its call (:mod:`lcq_train.batched_tables`), used while they fit.
    """

    def __init__(self, spec: QuantSpec, signed: bool, weight_norm: bool | str | None = False):
        super().__init__()
        self.spec = spec
        self.signed = signed
        if weight_norm is True:
            weight_norm = "lwn"
        if weight_norm not in (False, None, *WEIGHT_NORMS):
            raise ValueError(f"weight normalization must be one of {WEIGHT_NORMS} (or none), not {weight_norm!r}")
        self.weight_norm = weight_norm or None
        self.method = spec.method
        if self.method == "lcq" and signed and spec.bits == 2:
            self.method = "uniform"
        if self.method != "fp":
            level_scale(spec.bits, signed)
            self.alpha = nn.Parameter(torch.tensor(float(spec.alpha)), requires_grad=spec.learn_alpha)
        if self.method == "lcq":
            self.theta = nn.Parameter(torch.zeros(spec.K))
        self.tables: QuantizerTables | None = None

    def normalization(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached (mu_w, sigma_w) of the weight normalization for weight tensor ``w``."""
        w = w.detach()
        return w.mean(), w.std()

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x) of this quantizer on an already normalized tensor."""
        if self.method == "lcq":
            if self.tables is not None and self.tables.fits(x, self.alpha, self.theta):
                return apply_tables(x, self.tables)
            return lcq_quantize(x, self.alpha, self.theta, self.spec.bits, self.spec.outer_bits, self.signed)
        return uniform_quantize(x, self.alpha, self.spec.bits, self.spec.outer_bits, self.signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "fp":
            return x
        if self.weight_norm:
            mu, sigma = self.normalization(x)
            q = self.quantize((x - mu) / sigma)
            return sigma * q if self.weight_norm == "lwn" else q
        return self.quantize(x)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes ``sgn * i`` (int64, i in 0..s) of ``x``: ``forward(x) == step(x) * sgn * levels()[i]``."""
        self._require_integer_levels()
        if self.weight_norm:
            mu, sigma = self.normalization(x)
            x = (x - mu) / sigma
        return self.normalized_codes(x)

    def normalized_codes(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`codes` of an already normalized tensor (as :meth:`quantize` is Q of one)."""
        self._require_integer_levels()
        if self.method == "lcq":
            return lcq_codes(x, self.alpha, self.theta, self.spec.bits, self.signed)
        return uniform_codes(x, self.alpha, self.spec.bits, self.signed)

    def levels(self) -> torch.Tensor:
        """The integer level table ``round(s' * f^-1(i / s))``, i = 0..s (int64), of the integer contract."""
        self._require_integer_levels()
        theta = self.theta.detach() if self.method == "lcq" else None
        return level_table(theta, self.spec.bits, self.spec.outer_bits, self.signed)

    def step(self, x: torch.Tensor | None = None) -> float:
        """Real value of one integer level: ``alpha / s'`` (times LWN's ``sigma_w`` of weight tensor ``x``;
        standardized weights are not rescaled, so their step is ``alpha / s'``)."""
        self._require_integer_levels()
        step = self.alpha.item() / level_scale(self.spec.outer_bits, self.signed)
        return step * self.normalization(x)[1].item() if self.weight_norm == "lwn" else step

    def _require_integer_levels(self) -> None:
        if self.method == "fp" or self.spec.outer_bits is None:
            raise ValueError(f"a {self.extra_repr()} quantizer has no integer levels: "
                             "quantize with method uniform or lcq and outer bits (b') set")

    def extra_repr(self) -> str:
        if self.method == "fp":
            return "fp"
        norm = f", weight_norm={self.weight_norm}" if self.weight_norm else ""
        return f"{self.method}, bits={self.spec.bits}, outer_bits={self.spec.outer_bits}, signed={self.signed}{norm}"
