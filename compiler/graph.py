"""The compiled model: a list of integer-only nodes over named tensors.

Tensors are either activation *codes* (unsigned, ``0..s_a``, named after the
PyTorch activation quantizer that produces them, e.g. ``blocks.0.act1``) or
signed *values* (accumulators, residual sums, logits). Every value tensor has
a real scale (real value = scale * integer), recorded for inspection only:
no node reads a float.

Nodes, in execution order (each writes one tensor named ``node.output``):

- :class:`InputNode`: uint8 pixel -> input code by a 256-entry table.
- :class:`ConvNode`: convolution or fully connected layer on codes with
  LUT-MAC accumulation, then an output stage (:class:`Thresholds`,
  :class:`Requantize`, or none: the raw accumulator).
- :class:`ActivateNode`: an output stage applied to a value tensor
  (BN + ReLU + compander of a residual stream into codes).
- :class:`AddNode`: sum of two value tensors of the same scale.
- :class:`PoolNode`: BN + ReLU per position, global sum, thresholds into
  codes (global average pooling followed by an activation quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT = "lcq-compiled-model"
VERSION = 1


def signed_bits(bound: int) -> int:
    """Bits of a two's-complement integer holding every value in ``[-bound, bound]``."""
    return int(bound).bit_length() + 1


@dataclass
class Thresholds:
    """Codes from values: ``code[n] = #{c : x >= T[n, c]}`` (``x <= T[n, c]`` where ``descending[n]``).

    ``thresholds`` (C, s) int64, non-decreasing along c for ascending channels
    and non-increasing for descending ones; ``bits``: width of the output code.
    Folds BN, ReLU and the next layer's compander (round half up at each
    threshold).
    """

    thresholds: np.ndarray
    descending: np.ndarray
    bits: int

    kind = "thresholds"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Codes (uint8) of values ``x`` (N, C, ...)."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        codes = np.zeros(x.shape, dtype=np.int64)
        desc = self.descending.reshape(shape)
        for c in range(self.thresholds.shape[1]):
            t = self.thresholds[:, c].reshape(shape)
            codes += np.where(desc, x <= t, x >= t)
        return codes.astype(np.uint8)


@dataclass
class Requantize:
    """Values at a new scale: ``y[n] = (x * multiplier[n] + bias[n]) >> shift[n]`` (arithmetic shift, floor).

    ``bias`` already holds ``2^(shift-1)`` so that the shift rounds half up.
    Used for residual sums (to the stream's scale) and for the logits.
    """

    multiplier: np.ndarray
    bias: np.ndarray
    shift: np.ndarray

    kind = "requantize"

    def apply(self, x: np.ndarray) -> np.ndarray:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        m, b, sh = (a.reshape(shape) for a in (self.multiplier, self.bias, self.shift))
        return (x.astype(np.int64) * m + b) >> sh

    def bound(self, in_bound: int) -> int:
        """Largest ``|y|`` for ``|x| <= in_bound``."""
        top = (in_bound * self.multiplier.astype(object) + np.abs(self.bias).astype(object)) >> self.shift.astype(object)
        return int(max(top.max(), 0)) + 1


@dataclass
class InputNode:
    """Input image (uint8 ``(N, C, H, W)``) -> codes by ``table[pixel]`` (256 entries)."""

    output: str
    shape: tuple[int, int, int]
    table: np.ndarray
    bits: int
    op = "input"


@dataclass
class ConvNode:
    """LUT-MAC convolution (``kind`` "conv") or fully connected layer ("linear") on codes.

    ``weight_codes`` int8 ``(C_out, C_in, kh, kw)``: ``sgn * k``, k in 0..s_w.
    ``w_levels`` (s_w + 1,) and ``a_levels`` (s_a + 1,) are the integer level
    tables; the LUT is ``L[k][j] = w_levels[k] * a_levels[j]`` for k, j >= 1.
    ``acc[n, co, y, x] = sum sgn * L[k][j]`` over the ``C_in * kh * kw``
    reduction (zero padding is code 0); ``acc_bits`` holds its worst case.
    ``mac`` is "lut" (the LUT ROM) or "multiply" (edge layers whose LUT would
    exceed the compile limit multiply the levels). ``scale``: real value of
    one accumulator unit (``step_w * step_a``).
    """

    name: str
    input: str
    output: str
    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: int
    stride: int
    padding: int
    wbits: int
    abits: int
    outer_wbits: int
    outer_abits: int
    mac: str
    weight_codes: np.ndarray
    w_levels: np.ndarray
    a_levels: np.ndarray
    scale: float
    stage: Thresholds | Requantize | None = None
    out_scale: float | None = None
    op = "conv"

    @property
    def reduction(self) -> int:
        return self.in_shape[0] * self.kernel * self.kernel

    @property
    def acc_bound(self) -> int:
        return self.reduction * int(self.w_levels[-1]) * int(self.a_levels[-1])

    @property
    def acc_bits(self) -> int:
        return signed_bits(self.acc_bound)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        c, h, w = self.out_shape
        return c * h * w * self.reduction

    def lut(self) -> np.ndarray:
        """The LUT ROM ``(s_w, s_a)``: ``L[k-1, j-1] = W[k] * A[j]`` (int64)."""
        return np.outer(self.w_levels[1:], self.a_levels[1:]).astype(np.int64)


@dataclass
class ActivateNode:
    """An output stage (thresholds or requantize) applied to a value tensor."""

    name: str
    input: str
    output: str
    stage: Thresholds | Requantize
    op = "activate"


@dataclass
class AddNode:
    """``output = a + b`` for two value tensors of the same scale (a residual addition)."""

    name: str
    inputs: tuple[str, str]
    output: str
    op = "add"


@dataclass
class PoolNode:
    """Global average pooling between BN + ReLU and an activation quantizer, on a value tensor.

    Per position ``u = sign[n] * (x * 2^frac_bits - offset[n])``, then
    ``max(0, u)`` where ``relu[n]`` (``sign`` in {-1, 0, 1}: BN's scale sign, 0
    for a channel whose ReLU output is constant; ``relu`` False where the ReLU
    never clips on the input's range), summed over all H * W positions; the sum
    goes through ``stage`` (thresholds, which fold the BN scale and shift, the
    1 / (H * W) and the next quantizer).
    """

    name: str
    input: str
    output: str
    sign: np.ndarray
    relu: np.ndarray
    offset: np.ndarray
    frac_bits: int
    stage: Thresholds
    op = "pool"

    def positions_sum(self, x: np.ndarray) -> np.ndarray:
        """``sum over positions of u`` (N, C) for values ``x`` (N, C, H, W)."""
        sign, offset = self.sign.reshape(1, -1, 1, 1), self.offset.reshape(1, -1, 1, 1)
        u = sign * ((x.astype(np.int64) << self.frac_bits) - offset)
        u = np.where(self.relu.reshape(1, -1, 1, 1), np.maximum(0, u), u)
        return u.sum(axis=(2, 3))


Node = InputNode | ConvNode | ActivateNode | AddNode | PoolNode


@dataclass
class CompiledModel:
    """Nodes in execution order; ``logits`` names the output tensor, ``scales`` the real scale of value tensors."""

    nodes: list[Node]
    logits: str
    num_classes: int
    source: dict = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def convs(self) -> list[ConvNode]:
        return [n for n in self.nodes if isinstance(n, ConvNode)]

    @property
    def input(self) -> InputNode:
        return self.nodes[0]
