"""The integer reference executor: runs a compiled model with numpy integers only.

This is the spec the hardware is checked against. ``run(model, images)``
returns every tensor of the model (activation codes, residual values,
logits) plus every layer's accumulator under ``"<layer>.acc"``, for a batch of
uint8 images ``(N, C, H, W)``. ``predict`` streams a large set in batches and
keeps only the logits.

A convolution accumulates ``sgn * L[k][j]`` over its reduction. Because the
LUT is ``L[k][j] = W[k] * A[j]`` (the integer contract), that sum is the int64
dot product of the signed weight levels ``sgn * W[k]`` with the activation
levels ``A[j]``; :func:`lut_accumulate` computes it literally from the LUT for
cross-checking.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .graph import (ActivateNode, AddNode, CompiledModel, ConcatNode, ConvNode, InputNode, MaxPoolNode, PoolNode,
                    SubsampleNode)


def patches(codes: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """im2col: ``(N, C, H, W)`` codes -> ``(N, Ho, Wo, C * k * k)`` with zero (code 0) padding."""
    if padding:
        codes = np.pad(codes, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(codes, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, ho, wo = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * kernel * kernel)


EXACT_FLOAT = 2 ** 53
"""Every integer of magnitude up to this is a float64, and so is every sum that stays below it."""


def accumulate(node: ConvNode, codes: np.ndarray) -> np.ndarray:
    """Accumulators ``(N, C_out, Ho, Wo)`` int64 of ``node`` on input codes ``(N, C_in, H, W)``.

    One matrix product per kernel offset. They run in float64 (BLAS) when no partial sum can
    reach 2^53, which makes every product and sum exact; otherwise in int64.
    """
    k, stride = node.kernel, node.stride
    signed = np.sign(node.weight_codes) * node.w_levels[np.abs(node.weight_codes.astype(np.int64))]
    bound = int(np.abs(node.a_levels).max(initial=0)) * int(np.abs(signed).reshape(len(signed), -1).sum(1).max())
    dtype = np.float64 if bound < EXACT_FLOAT else np.int64
    levels = node.a_levels.astype(dtype)
    p = node.padding
    x = np.pad(codes, ((0, 0), (0, 0), (p, p), (p, p))) if p else codes
    x = levels[x.transpose(0, 2, 3, 1)]                                   # (N, H + 2p, W + 2p, C_in)
    ho, wo = node.out_shape[1:]
    acc = np.zeros((len(codes), ho, wo, len(signed)), dtype=dtype)
    for dy in range(k):
        for dx in range(k):
            window = x[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
            acc += window @ signed[:, :, dy, dx].T.astype(dtype)
    return np.ascontiguousarray(acc.transpose(0, 3, 1, 2), dtype=np.int64)


def lut_accumulate(node: ConvNode, codes: np.ndarray) -> np.ndarray:
    """Same as :func:`accumulate`, literally as the hardware does it: sum of ``sgn * LUT[k-1][j-1]``."""
    lut = np.zeros((len(node.w_levels), len(node.a_levels)), dtype=np.int64)
    lut[1:, 1:] = node.lut()
    j = patches(codes, node.kernel, node.stride, node.padding).astype(np.int64)      # (N, Ho, Wo, R)
    w = node.weight_codes.reshape(node.out_shape[0], -1).astype(np.int64)          # (Co, R)
    products = np.sign(w)[None, None, None] * lut[np.abs(w)[None, None, None], j[:, :, :, None, :]]
    return np.ascontiguousarray(products.sum(-1).transpose(0, 3, 1, 2))


def check_images(model: CompiledModel, images: np.ndarray) -> None:
    shape = model.input.shape
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"images must be uint8 (N, {', '.join(map(str, shape))}), "
                         f"got {images.dtype} {tuple(images.shape)}")


def execute(node, t: dict[str, np.ndarray], images: np.ndarray) -> None:
    """Run one node on the tensors ``t`` (adds its output, and a layer's ``"<layer>.acc"``, to ``t``)."""
    if isinstance(node, InputNode):
        t[node.output] = node.table[images].reshape(len(images), *node.tensor_shape)
    elif isinstance(node, ConvNode):
        acc = accumulate(node, t[node.input])
        t[f"{node.name}.acc"] = acc
        t[node.output] = acc if node.stage is None else node.stage.apply(acc)
    elif isinstance(node, ActivateNode):
        t[node.output] = node.stage.apply(t[node.input])
    elif isinstance(node, AddNode):
        t[node.output] = node.apply(t[node.inputs[0]], t[node.inputs[1]])
    elif isinstance(node, PoolNode):
        t[node.output] = node.stage.apply(node.sums(t[node.input]))
    elif isinstance(node, MaxPoolNode):
        t[node.output] = node.apply(t[node.input])
    elif isinstance(node, ConcatNode):
        t[node.output] = node.apply([t[name] for name in node.inputs])
    elif isinstance(node, SubsampleNode):
        t[node.output] = node.apply(t[node.input])
    else:
        raise TypeError(f"unknown node {node!r}")


def run(model: CompiledModel, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of ``model`` on ``images`` (uint8 ``(N, C, H, W)``), plus ``"<layer>.acc"`` accumulators."""
    check_images(model, images)
    t: dict[str, np.ndarray] = {}
    for node in model.nodes:
        execute(node, t, images)
    return t


def predict(model: CompiledModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Integer logits ``(N, classes)`` int64 of ``images``, computed ``batch_size`` images at a time."""
    check_images(model, images)
    out = [run(model, images[i:i + batch_size])[model.logits].reshape(-1, model.num_classes)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), dtype=np.int64)
