"""The operations of a quantized network, captured by tracing its forward with ``torch.fx``.

:func:`capture` gives the graph of a model: that of a traced network
(:func:`lcq_train.plan.quantize_model` of a user's model keeps its graph), or a
fresh trace (:func:`lcq_train.graph.trace`) of a model written with
:mod:`lcq_train.layers` (the built-in ones). :func:`operation` names what one
graph node does as one of the kinds the compiler lowers (:data:`SUPPORTED`);
any other operation raises :class:`Unsupported`, a ValueError naming the
operation, where the user's code calls it (``file:line``), what to write
instead where :data:`HINTS` knows a fix, and the list of what is supported.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from lcq_train.graph import (CLAMPS, SOFTMAX_FUNCTIONS, SOFTMAX_METHODS, SOFTMAX_MODULES, describe, eval_identity,
                             location, trace_or_explain, train_only)
from lcq_train.layers import QAct, QConv2d, QLinear

from .curves import (SELU_ALPHA, SELU_SCALE, Curve, elu_curve, gelu_curve, leaky_curve, module_curve,
                     softplus_curve)
from .graph import MAX_KERNEL

SUPPORTED = (
    "the input image into its activation quantizer (QAct, uint8 codes)",
    "Conv2d (quantized; square stride, zero padding up to kernel // 2 ('same' with odd kernel sides), bias "
    "allowed; a non-square kernel (1x3, 3x1, ...) runs as the square one with zeros around it, where the output "
    "geometry is the same (odd sides padded by side // 2); a dilated one as its spread-out kernel with zeros "
    "between the taps (a 3x3 at dilation d as a (2d + 1) x (2d + 1), padding counted on it); grouped and "
    "depthwise ones run as the dense conv with zero weights outside each group: groups x the MACs)",
    "Linear (quantized; on a vector of C codes, on the flattened image (the vector of its pixels), or on a flattened "
    "C x H x W map: then it runs as an H x W convolution with the map's size as its kernel, square and at most "
    f"{MAX_KERNEL} x {MAX_KERNEL})",
    "BatchNorm2d (eval-mode statistics; before a ReLU, pooling, a quantizer or a residual addition, or after an "
    "activation or a max pooling of one, before a quantizer); BatchNorm1d the same on a linear layer's output vector",
    "ReLU (nn.ReLU, F.relu, torch.relu, .relu()); one whose output a residual addition reads only right after "
    "a conv or linear layer [+ BN] or an addition that nothing else reads (post-activation blocks)",
    "ReLU6 / hardtanh(0, max) before an activation quantizer or a pooling",
    "a non-decreasing activation of a conv's, BN's or addition's output (through max pooling) before its activation "
    "quantizer, which takes its thresholds back through it: LeakyReLU and PReLU (slopes >= 0), sigmoid, tanh, ELU, "
    "CELU, SELU, softplus, softsign, hardtanh(min, max), hardsigmoid, clamp(min, max) (modules, F. and torch. "
    "functions, .sigmoid(), .tanh(), .clamp()); SiLU, GELU (either form), Mish and hardswish the same where an "
    "unsigned quantizer reads them, clipping their dip below zero (lcq_train's plan makes it so), with no BN between",
    "residual addition of two tensors (+, torch.add, .add())",
    "a constant factor (x * c, c * x, x / c, torch.mul, torch.div, .mul(), .div(): c a number, or a parameter or "
    "buffer of one value or of shape (C, 1, 1) or (1, C, 1, 1): residual scaling, LayerScale, SkipInit) of a "
    "conv's, linear layer's, BN's or addition's output or of its activation, folded into the layer (or into the "
    "thresholds of the quantizer after it)",
    "an option-A shortcut: every s-th row and column (x[:, :, ::s, ::s]) and zero channels (F.pad(x, (0, 0, 0, 0, "
    "before, after))) of a residual stream (an addition's output or its ReLU) that an addition reads; x[:, :, ::s, "
    "::s] on the way to an activation quantizer is a 1 x 1 max pooling at stride s",
    "global average pooling of a conv's, BN's or addition's output, or of its ReLU or ReLU6 (AdaptiveAvgPool2d(1), "
    "F.adaptive_avg_pool2d(x, 1), .mean((2, 3)), torch.mean(x, (2, 3))), before an activation quantizer (signed "
    "too), a BN and a ReLU standing between where no ReLU came before it; of an activation's codes (its quantizer "
    "before the pooling, where lcq_train's plan puts it after any other activation), read by a linear layer or a "
    "1 x 1 conv, which runs as the H x W conv over the codes",
    "average pooling the same way (AvgPool2d, F.avg_pool2d: square kernel and stride, zero padding up to k // 2 "
    "counted in the divisor (count_include_pad=True, InceptionV3's pool branch), ceil_mode False, no "
    "divisor_override; one window over the whole map is the global pooling); of codes (an activation's, or a max "
    "pooling's: its quantizer before the pooling) read by a 1 x 1 conv, which runs as the k x k conv over them, or "
    "in windows that tile the map (kernel = stride, no padding: LeNet-5's) by any layer, its taps spread over the "
    "windows; of a 1 x 1 conv's output [+ BN] (DenseNet's transition) it folds into the conv, which then runs as a "
    "k x k conv at the pooling's stride",
    "numbers that the input's C x H x W decides, for a pooling's window or a reshape (F.avg_pool2d(x, x.size(3)), "
    "x.view(-1, x.size(1) * x.size(2) * x.size(3)): the number)",
    "max pooling (MaxPool2d, F.max_pool2d: square kernel k, stride and padding up to k // 2, no dilation, "
    "ceil_mode False) of a conv's, BN's or addition's output where only ReLU, ReLU6 / hardtanh(0, max), identity, "
    "dropout, flatten and more max pooling stand between it and the activation quantizer of the next layer "
    "(it pools that quantizer's codes: the quantizer is non-decreasing, so it commutes with the maximum); global "
    f"max pooling the same way (AdaptiveMaxPool2d(1), F.adaptive_max_pool2d(x, 1), .amax((2, 3)), torch.amax(x, "
    f"(2, 3)): one window over a square map of side up to {MAX_KERNEL})",
    "channel concatenation (torch.cat(parts, 1), torch.concat, torch.concatenate) of conv, BN or addition "
    "outputs (through ReLU, clip or max pooling) where only a BN (of parts without ReLU: DenseNet's), ReLU, ReLU6 / "
    "hardtanh(0, max), identity, dropout, pooling, flatten and further joins stand between it and the activation "
    "quantizer of the next layer (each part's producer writes that quantizer's codes for its own channels)",
    "flatten (nn.Flatten, torch.flatten(x, 1), .flatten(1), .view / .reshape / torch.reshape to (x.size(0), -1) or "
    "(-1, C * H * W)) of a C x 1 x 1 tensor, or of a map on its way through an activation quantizer to a linear "
    "layer",
    "identity, dropout (inference), stochastic depth (a module of yours without parameters whose forward reads "
    "self.training and returns its input in eval mode: timm's DropPath), memory layouts (.contiguous(), "
    ".to(memory_format=...)) and 1 x 1 average or max pooling at stride 1; an adaptive average "
    "or max pooling (AdaptiveAvgPool2d((n, n)), F.adaptive_avg_pool2d(x, n), AdaptiveMaxPool2d((n, n)), "
    "F.adaptive_max_pool2d(x, n)) of an n x n map, the identity (torchvision's AlexNet and VGG heads at their input "
    "size)",
    "activation quantizer (QAct) on a tensor: unsigned, or signed (3 bits or more, of a conv's, linear layer's, "
    "BN's or addition's output: MobileNetV2's linear bottlenecks), which runs as its positive and negative halves, "
    "at twice the MACs of the layer reading it",
    "a linear or conv layer as the network's output (the logits)",
    "softmax or log-softmax over the classes as the network's last operation (nn.Softmax, nn.LogSoftmax, "
    "F.softmax, F.log_softmax, torch.softmax, .softmax(): left out, the compiled logits are those before it, with "
    "the same top class)",
)

ADAPTIVE_AVG_HINT = ("only output size 1, or the map's own size (the identity), compiles: use AdaptiveAvgPool2d(1), "
                     "or AvgPool2d(k), k = the map's known side / the output size, before a conv (only a C x 1 x 1 "
                     "map flattens), or leave it out where the map has that size already")
ADAPTIVE_MAX_HINT = (f"only the global maximum compiles as it is (AdaptiveMaxPool2d(1), .amax((2, 3))), or a pooling "
                     f"to the map's own size (the identity): for output size n use MaxPool2d(k), k = the map's known "
                     f"side / n (k <= {MAX_KERNEL})")
# The one-line fix of a refused operation, by its module class, function or method name (what compiles instead).
HINTS = (
    ((nn.LogSigmoid, F.logsigmoid, nn.Softshrink, F.softshrink, nn.Hardshrink, F.hardshrink, nn.Tanhshrink,
      F.tanhshrink, nn.Threshold, F.threshold, nn.RReLU, F.rrelu),
     "use nn.ReLU, nn.LeakyReLU or another activation the quantizer after it takes its thresholds back through "
     "(a clip, sigmoid, tanh, ELU, softplus, SiLU, GELU, ...)"),
    ((F.prelu,), "use the module nn.PReLU (its slopes a parameter of the network), or nn.LeakyReLU(slope)"),
    ((F.pad, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d),
     "pad in the conv: Conv2d(..., padding=p) pads with zeros, up to kernel // 2 on each side (zero channels of a "
     "residual shortcut, F.pad(x, (0, 0, 0, 0, before, after)), compile)"),
    ((operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_", operator.neg, torch.neg, "neg"),
     "the accelerator joins branches by addition alone: write x + y (the layers before learn the sign)"),
    ((operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, operator.itruediv, torch.div,
      torch.true_divide, "div", "div_"),
     "the accelerator multiplies a tensor only by a constant (a number, or a parameter or buffer of one value or "
     "of shape (C, 1, 1)), which folds into the layer before it; it has no product or quotient of two tensors, "
     "nor divides a constant by a tensor"),
    ((torch.squeeze, "squeeze", "squeeze_"), "use torch.flatten(x, 1) (or nn.Flatten()) on the C x 1 x 1 tensor"),
    ((torch.mean, "mean"), "average over the map in one call: .mean((2, 3)) (global average pooling)"),
    ((nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d), ADAPTIVE_AVG_HINT),
    ((nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d, torch.amax, "amax"), ADAPTIVE_MAX_HINT),
    ((torch.sum, "sum"), "over the map use .mean((2, 3)) (global average pooling): the sum is H*W times it, a factor "
                         "that training absorbs in the next layer"),
    ((nn.Flatten, torch.flatten, "flatten"), "only a flatten from dimension 1 to the last compiles: nn.Flatten(), "
                                             "torch.flatten(x, 1) or x.flatten(1)"),
    ((operator.getitem,), "a layer's output is used whole: give the layer before only the channels kept (its "
                          "out_channels), and shrink the map with its stride and padding or a pooling layer (or "
                          "keep every s-th row and column: x[:, :, ::s, ::s])"),
)
_HINT = {op: hint for ops, hint in HINTS for op in ops}

# Arithmetic that normalizes an image, ``(x - mean) / std``: refused on the image with its own reason.
_ARITHMETIC = {operator.sub, operator.isub, torch.sub, operator.mul, operator.imul, torch.mul, operator.truediv,
               operator.itruediv, torch.div, operator.add, operator.iadd, torch.add, operator.neg, torch.neg, "sub",
               "sub_", "mul", "mul_", "div", "div_", "add", "add_", "neg"}
_IMAGE_ARITHMETIC = ("normalizes the input image; the accelerator takes the image as its uint8 codes: leave the "
                     "normalization out of forward (the first layer learns its scale and offset)")

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class Op:
    """What a graph node does: ``kind`` (input, act, conv, linear, bn, relu, curve, clip, pool, avgpool, maxpool,
    flatten, reshape, size, identity, add, cat, softmax, adaptive, subsample, pad, scale, constant, output), its
    ``module`` (None for a function), ``curve`` (a non-decreasing activation's :class:`~compiler.curves.Curve`),
    ``cap`` (the clip maximum), ``window`` (an average or max pooling's kernel, stride and padding; None for the
    global maximum), ``dim`` (the dimension a softmax or log-softmax normalizes; None: PyTorch's implicit one),
    ``side`` (the output side of an adaptive average or max pooling to a square larger than 1), ``channels`` (the
    zero channels a channel padding puts before and after the tensor's), ``factor`` (a constant factor's one value
    or one a channel) and ``operand`` (the argument it multiplies)."""

    kind: str
    module: nn.Module | None = None
    curve: Curve | None = None
    cap: float = math.inf
    window: tuple[int, int, int] | None = None
    dim: int | None = None
    side: int | None = None
    channels: tuple[int, int] | None = None
    factor: tuple[float, ...] = ()
    operand: int = 0


class Unsupported(ValueError):
    """An operation the compiler does not lower: what it is, where the user's code calls it, and why."""

    def __init__(self, model: str, node: fx.Node, why: str):
        self.node = node
        super().__init__(f"cannot compile a {model}: {describe(node)}{location(node)} {why}; "
                         f"the compiler lowers: {'; '.join(SUPPORTED)}")


def capture(model: nn.Module, name: str) -> fx.Graph:
    """The ``torch.fx`` graph of ``model`` (a traced network's own graph, else a fresh trace).
    ValueError, naming the model ``name``, when ``torch.fx`` cannot trace the forward."""
    if isinstance(model, fx.GraphModule):
        return model.graph
    return trace_or_explain(model, f"cannot compile a {name}", "its forward must not branch on tensor values")


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


# Functions (and method names) of the curves that take no numbers, by curve kind.
_CURVE_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                    torch.tanh: "tanh", F.tanh: "tanh", "tanh": "tanh", "tanh_": "tanh", F.softsign: "softsign",
                    F.hardsigmoid: "hardsigmoid"}
# Those of the activations that dip below zero (compiler.curves.DIPS) but GELU, which takes a parameter.
_DIP_FUNCTIONS = {F.silu: "silu", F.mish: "mish", F.hardswish: "hardswish"}


def function_curve(node: fx.Node, f) -> Curve | None:
    """The curve of function (or method name) ``f`` called by ``node`` with numbers for its parameters, or None
    (a clamp from 0 is a ReLU or a clip: :func:`_from_zero`)."""
    name = f if isinstance(f, str) else f"{getattr(f, '__module__', 'torch')}.{getattr(f, '__name__', f)}"
    number = (int, float)
    if f in _CURVE_FUNCTIONS:
        return Curve(_CURVE_FUNCTIONS[f], name)
    if f is F.leaky_relu and isinstance(_arg(node, 1, "negative_slope", 0.01), number):
        return leaky_curve(name, float(_arg(node, 1, "negative_slope", 0.01)))
    if f in (F.elu, F.celu) and isinstance(_arg(node, 1, "alpha", 1.0), number):
        return elu_curve("elu" if f is F.elu else "celu", name, float(_arg(node, 1, "alpha", 1.0)))
    if f is F.selu:
        return elu_curve("elu", name, SELU_ALPHA, SELU_SCALE)
    if f in _DIP_FUNCTIONS:
        return Curve("dip", name, (_DIP_FUNCTIONS[f],))
    if f is F.gelu and _arg(node, 1, "approximate", "none") in ("none", "tanh"):
        return gelu_curve(name, _arg(node, 1, "approximate", "none"))
    if f is F.softplus and all(isinstance(_arg(node, i, k, d), number)
                               for i, k, d in ((1, "beta", 1.0), (2, "threshold", 20.0))):
        return softplus_curve(name, float(_arg(node, 1, "beta", 1.0)), float(_arg(node, 2, "threshold", 20.0)))
    if f is F.hardtanh:
        low, high = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
        if isinstance(low, number) and isinstance(high, number) and low < high:
            return Curve("hardtanh", name, (float(low), float(high)))
    if f in CLAMPS:
        low, high = _arg(node, 1, "min"), _arg(node, 2, "max")
        if all(v is None or isinstance(v, number) for v in (low, high)) and (low, high) != (None, None) \
                and (low is None or high is None or low < high):
            return Curve("hardtanh", name, (-math.inf if low is None else float(low),
                                            math.inf if high is None else float(high)))
    return None


def _from_zero(node: fx.Node) -> Op | None:
    """A clamp from 0 as the ReLU (``clamp(min=0)``) or the clip (``clamp(0, max)``) it is, else None."""
    low, high = _arg(node, 1, "min"), _arg(node, 2, "max")
    if low != 0 or isinstance(low, bool):
        return None
    if high is None:
        return Op("relu")
    return Op("clip", cap=float(high)) if isinstance(high, (int, float)) and high > 0 else None


def _called_activation(model: str, node: fx.Node, f) -> Op | None:
    """The Op of function (or method name) ``f`` called by ``node`` where it is a clamp from 0 (:func:`_from_zero`)
    or a curve (:func:`function_curve`), else None."""
    zero = _from_zero(node) if f in CLAMPS else None
    if zero is not None:
        return zero
    curve = _curve(model, node, lambda: function_curve(node, f))
    return None if curve is None else Op("curve", curve=curve)


def _curve(model: str, node: fx.Node, find) -> Curve | None:
    """``find()``'s curve of ``node``; its ValueError (a negative slope) as :class:`Unsupported`."""
    try:
        return find()
    except ValueError as e:
        raise Unsupported(model, node, str(e)) from None


def _add(node: fx.Node, model: str) -> Op:
    """A residual addition; Unsupported where ``alpha`` scales the second operand (an addition adds two tensors
    of one scale as they are)."""
    alpha = _arg(node, 2, "alpha", 1)
    if alpha != 1:
        raise Unsupported(model, node, f"adds alpha={alpha!r} times its second operand, which the integer "
                          "additions do not scale: write x + y (a conv or BN before the addition learns any scale "
                          "the branch needs)")
    return Op("add")


def _cat(node: fx.Node, model: str) -> Op:
    """A channel concatenation; Unsupported along any other dimension, or of anything but a list of tensors."""
    parts, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
    if not isinstance(parts, (tuple, list)) or not all(isinstance(p, fx.Node) for p in parts):
        raise Unsupported(model, node, "does not join a list of the network's tensors")
    if dim not in (1, -3):              # (-3: the channels of the maps a working network joins along it)
        raise Unsupported(model, node, f"joins along dimension {dim!r}; the accelerator joins along the channels "
                          "only: torch.cat(parts, 1)")
    return Op("cat")


_PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIVISIONS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide"}


def _operand(node: fx.Node) -> int:
    """The argument of product or quotient ``node`` that is the tensor it scales (of two, the first that is a
    node other than a parameter or buffer: ``gamma * x`` scales the second)."""
    a = node.args[:2]
    return 1 if len(a) == 2 and isinstance(a[1], fx.Node) and (not isinstance(a[0], fx.Node)
                                                              or a[0].op == "get_attr") else 0


def _factor_of(node: fx.Node, modules: dict, model: str) -> tuple[float, ...] | None:
    """The constant factor of ``node`` where it is ``x * c``, ``c * x``, ``x / c`` (the operator, ``torch.mul``,
    ``torch.div`` or the method; ``c`` a number, or a parameter or buffer): its one value or its C values; None
    for anything else (a product of two tensors, ``c / x``, a rounding division). :class:`Unsupported` for a
    factor that no stage folds: not finite, a zero divisor, a parameter of another shape than (), (1,), (C, 1, 1)
    or (1, C, 1, 1)."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs:
        return None
    divide = node.target in _DIVISIONS
    if node.target not in _PRODUCTS and not divide:
        return None
    i = _operand(node)
    if divide and i == 1:
        return None
    c, x = node.args[1 - i], node.args[i]
    if not isinstance(x, fx.Node) or x.op == "get_attr":
        return None
    what = "divides by" if divide else "multiplies by"
    if isinstance(c, fx.Node):
        if c.op != "get_attr":
            return None
        t = _attribute(modules, c.target)
        if not isinstance(t, torch.Tensor):
            return None
        shape = tuple(t.shape)
        if not (t.numel() == 1 and t.dim() <= 4 or len(shape) in (3, 4) and shape[-2:] == (1, 1)
                and (len(shape) == 3 or shape[0] == 1)):
            raise Unsupported(model, node, f"{what} {c.target!r} of shape {shape}; a factor has one value, or one a "
                              "channel: shape (C, 1, 1) or (1, C, 1, 1)")
        values, named = tuple(float(v) for v in t.detach().double().flatten()), repr(c.target)
    elif isinstance(c, (int, float)) and not isinstance(c, bool):
        values, named = (float(c),), f"{c!r}"
    else:
        return None
    bad = next((k for k, v in enumerate(values) if not math.isfinite(v) or (v == 0 and divide)), None)
    if bad is not None:
        where = f" (channel {bad}: {values[bad]:g})" if len(values) > 1 else ""
        raise Unsupported(model, node, f"{what} {named}{where}, which no stage folds (a factor is finite, a divisor "
                          "not 0): retrain with another value, or restore the checkpoint from a copy")
    return tuple(1 / v for v in values) if divide else values


def _attribute(modules: dict, target: str):
    """The parameter or buffer that a get_attr node's ``target`` names (``layer.gamma``); None if none."""
    owner, _, name = target.rpartition(".")
    return getattr(modules.get(owner), name, None)


def _is_one(size) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))


def _spatial_dims(dims) -> bool:
    return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]


def _square(v) -> int | None:
    """``v`` (an int or a pair) as one int where both sides are equal ints, else None."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if len(v) == 2 and v[0] == v[1] and isinstance(v[0], int) else None


def _window(kernel, stride, padding) -> tuple[int | None, int | None, int | None]:
    """(kernel, stride, padding) of a pooling as ints (None where not square); stride None or () is the kernel."""
    k = _square(kernel)
    return k, k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _square(stride), \
        _square(padding)


def _fixed_window(node: fx.Node, model: str, *window) -> None:
    """:class:`Unsupported` where a pooling's window (kernel, stride, padding) is computed in forward (from a
    tensor's size, ``F.avg_pool2d(x, x.size(3))``): the trace records a variable, not the number."""
    if any(isinstance(v, fx.Node) or (isinstance(v, (tuple, list)) and any(isinstance(a, fx.Node) for a in v))
           for v in window):
        raise Unsupported(model, node, "takes its window from a tensor's size, which the compiler's trace leaves "
                          "unknown: write the number (the map's side, known from the input size), or pool globally "
                          "with AdaptiveAvgPool2d(1)")


def _max_pool(node: fx.Node, model: str, kernel, stride, padding, dilation, ceil_mode, return_indices) -> Op:
    """The maxpool Op of a max pooling's arguments; :class:`Unsupported` for those the compiler does not lower."""
    _fixed_window(node, model, kernel, stride, padding)
    k, s, p = _window(kernel, stride, padding)
    if None in (k, s, p) or _square(dilation) != 1 or ceil_mode or return_indices:
        raise Unsupported(model, node, f"(kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}, "
                          f"ceil_mode {ceil_mode}, return_indices {return_indices}) is not supported: max pooling "
                          "needs a square kernel, stride and padding, dilation 1, ceil_mode False and no indices")
    if p > k // 2:
        raise Unsupported(model, node, f"pads by {p}, more than kernel // 2 = {k // 2}")
    return Op("identity") if (k, s) == (1, 1) else Op("maxpool", window=(k, s, p))     # (1 x 1: each element)


def _avg_pool(node: fx.Node, model: str, kernel, stride, padding, ceil_mode, count_include_pad,
              divisor_override) -> Op:
    """The avgpool Op of an average pooling's arguments; :class:`Unsupported` for those the compiler does not
    lower (ceil_mode, a divisor override, padding that leaves positions outside the map out of the count: a
    window's divisor must be kernel^2)."""
    _fixed_window(node, model, kernel, stride, padding)
    k, s, p = _window(kernel, stride, padding)
    if None in (k, s, p) or ceil_mode or divisor_override is not None:
        raise Unsupported(model, node, f"(kernel {kernel}, stride {stride}, padding {padding}, ceil_mode {ceil_mode}, "
                          f"divisor_override {divisor_override}) is not supported: average pooling needs a square "
                          "kernel, stride and padding, ceil_mode False and no divisor override")
    if p > k // 2:
        raise Unsupported(model, node, f"pads by {p}, more than kernel // 2 = {k // 2}")
    if p and not count_include_pad:
        raise Unsupported(model, node, "pads with count_include_pad=False, which divides a border window by the "
                          "positions it covers inside the map (a divisor per window); the accelerator divides every "
                          "window by kernel^2: use count_include_pad=True (PyTorch's default), and train with it")
    # (1 x 1 windows at stride 1, kuangliu/pytorch-cifar's VGG head: each element is its own average)
    return Op("identity") if (k, s, p) == (1, 1, 0) else Op("avgpool", window=(k, s, p))


def _strided(index) -> int | None:
    """The step ``s`` of an index that keeps every ``s``-th row and column of an (N, C, H, W) tensor and all else
    whole (``x[:, :, ::s, ::s]``, ``x[..., ::s, ::s]``; 1 for ``x[:, :, :, :]``), else None."""
    whole = slice(None)
    if not isinstance(index, tuple):
        return None
    rest = index[1:] if index[:1] == (Ellipsis,) else index[2:] if index[:2] == (whole, whole) else ()
    steps = {r.step if isinstance(r, slice) and r.start is None and r.stop is None else 0 for r in rest}
    step = steps.pop() if len(rest) == 2 and len(steps) == 1 else 0
    step = 1 if step is None else step
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 1 else None


def _channel_pad(node: fx.Node) -> tuple[int, int] | None:
    """(before, after) of ``F.pad(x, (0, 0, 0, 0, before, after))`` with zeros (``mode`` "constant", ``value`` 0):
    zero channels around a tensor's (an option-A shortcut's); None for any other padding."""
    pad, mode, value = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)
    if not isinstance(pad, (tuple, list)) or len(pad) != 6 or list(pad[:4]) != [0, 0, 0, 0] or mode != "constant" \
            or value not in (None, 0, 0.0):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pad[4:]):
        return None
    return int(pad[4]), int(pad[5])


def size_query(node) -> bool:
    """Whether ``node`` is a tensor's size or a dimension of it (``x.size()``, ``x.size(0)``, ``x.shape[0]``)."""
    return isinstance(node, fx.Node) and (
        (node.op == "call_method" and node.target == "size")
        or (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",))
        or (node.op == "call_function" and node.target is operator.getitem and size_query(node.args[0])))


def _on_image(node: fx.Node) -> bool:
    """Whether ``node`` is arithmetic (``x - mean``, ``x / std``, ``x * 2``) on the input image, or on such
    arithmetic."""
    return node.op in ("call_function", "call_method") and node.target in _ARITHMETIC and any(
        a.op == "placeholder" or _on_image(a) for a in node.all_input_nodes)


def operation(node: fx.Node, modules: dict[str, nn.Module], model: str) -> Op:
    """The kind of ``node``; :class:`Unsupported` for anything the compiler does not lower."""
    if node.op == "placeholder":
        return Op("input")
    if node.op == "output":
        return Op("output")
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, QAct):
            return Op("act", m)
        if isinstance(m, QConv2d):
            return Op("conv", m)
        if isinstance(m, QLinear):
            return Op("linear", m)
        if type(m) in (nn.BatchNorm2d, nn.BatchNorm1d):
            return Op("bn", m)
        if type(m) is nn.ReLU:
            return Op("relu")
        if type(m) is nn.ReLU6:
            return Op("clip", cap=6.0)
        if type(m) is nn.Hardtanh and m.min_val == 0 and m.max_val > 0:
            return Op("clip", cap=float(m.max_val))
        curve = _curve(model, node, lambda: module_curve(m))
        if curve is not None:
            return Op("curve", curve=curve)
        if type(m) is nn.AdaptiveAvgPool2d and _is_one(m.output_size):
            return Op("pool")
        if type(m) is nn.AdaptiveAvgPool2d and _square(m.output_size):
            return Op("adaptive", side=_square(m.output_size))
        if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            return Op("flatten")
        if type(m) is nn.AvgPool2d:
            return _avg_pool(node, model, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                             m.divisor_override)
        if type(m) is nn.MaxPool2d:
            return _max_pool(node, model, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                             m.return_indices)
        if type(m) is nn.AdaptiveMaxPool2d and _is_one(m.output_size) and not m.return_indices:
            return Op("maxpool")                    # the global maximum: a window as large as the map
        if type(m) is nn.AdaptiveMaxPool2d and _square(m.output_size) and not m.return_indices:
            return Op("adaptive", side=_square(m.output_size))
        if isinstance(m, _IDENTITY_MODULES):
            return Op("identity")
        if train_only(m):
            if eval_identity(m):
                return Op("identity")       # a stochastic depth: the identity at inference
            raise Unsupported(model, node, "reads self.training and does not return its input in eval mode; the "
                              "accelerator runs the network in eval mode: a module that changes its input there "
                              "needs writing with supported operations")
        if type(m) in SOFTMAX_MODULES:
            return Op("softmax", dim=m.dim)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            raise Unsupported(model, node, "is not quantized (quantize the model with lcq_train.quantize_model)")
    elif node.op == "get_attr":
        normalizing = next((user for user in node.users if _on_image(user)), None)
        if normalizing is not None:
            raise Unsupported(model, normalizing, _IMAGE_ARITHMETIC)
        if all(_factor_of(user, modules, model) is not None and user.args[_operand(user)] is not node
               for user in node.users):
            return Op("constant")           # a constant factor of the tensors it scales (LayerScale's gamma)
        raise Unsupported(model, node, "is read outside a layer; the accelerator holds parameters only in its conv "
                          "and linear layers (weights, bias) and their BN: fold it into the bias of the conv or linear "
                          "layer before it (or into that layer's BatchNorm2d)")
    elif size_query(node):
        return Op("size")
    elif node.op == "call_function":
        f = node.target
        if f is torch.reshape:
            return Op("reshape")
        if f in _RELU_FUNCTIONS:
            return Op("relu")
        if f is F.relu6:
            return Op("clip", cap=6.0)
        if f is F.hardtanh and _arg(node, 1, "min_val", -1.0) == 0 and _arg(node, 2, "max_val", 1.0) > 0:
            return Op("clip", cap=float(_arg(node, 2, "max_val", 1.0)))
        activation = _called_activation(model, node, f)
        if activation is not None:
            return activation
        if (f is F.adaptive_avg_pool2d and _is_one(_arg(node, 1, "output_size"))) or \
                (f is torch.mean and _spatial_dims(_arg(node, 1, "dim"))):
            return Op("pool")
        if f is F.adaptive_avg_pool2d and _square(_arg(node, 1, "output_size")):
            return Op("adaptive", side=_square(_arg(node, 1, "output_size")))
        if f is torch.flatten and _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1:
            return Op("flatten")
        if (f is F.adaptive_max_pool2d and _is_one(_arg(node, 1, "output_size"))
                and not _arg(node, 2, "return_indices", False)) \
                or (f is torch.amax and _spatial_dims(_arg(node, 1, "dim"))):
            return Op("maxpool")
        if f is F.adaptive_max_pool2d and _square(_arg(node, 1, "output_size")) and \
                not _arg(node, 2, "return_indices", False):
            return Op("adaptive", side=_square(_arg(node, 1, "output_size")))
        if f in (F.max_pool2d, torch.max_pool2d):
            names = (("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False),
                     ("return_indices", False))
            return _max_pool(node, model, *(_arg(node, i, name, default)
                                            for i, (name, default) in enumerate(names, start=1)))
        if f is F.avg_pool2d:
            names = (("kernel_size", None), ("stride", None), ("padding", 0), ("ceil_mode", False),
                     ("count_include_pad", True), ("divisor_override", None))
            return _avg_pool(node, model, *(_arg(node, i, name, default)
                                            for i, (name, default) in enumerate(names, start=1)))
        if f is F.dropout:
            if _arg(node, 2, "training", True):
                raise Unsupported(model, node, "drops out in eval mode too (training=True); use torch.nn.Dropout, or "
                                  "F.dropout(x, p, self.training)")
            return Op("identity")
        if f in _ADD_FUNCTIONS:
            return _add(node, model)
        if f in _CAT_FUNCTIONS:
            return _cat(node, model)
        if f in SOFTMAX_FUNCTIONS:
            return Op("softmax", dim=_arg(node, 1, "dim"))
        step = _strided(node.args[1]) if f is operator.getitem else None
        if step is not None:
            return Op("identity") if step == 1 else Op("subsample", window=(1, step, 0))
        channels = _channel_pad(node) if f is F.pad else None
        if channels is not None:
            return Op("pad", channels=channels)
    if node.op in ("call_function", "call_method") and not _on_image(node):
        factor = _factor_of(node, modules, model)
        if factor is not None:
            return Op("scale", factor=factor, operand=_operand(node))
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return Op("relu")
        activation = _called_activation(model, node, node.target)
        if activation is not None:
            return activation
        if node.target == "flatten" and _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1:
            return Op("flatten")
        if node.target == "mean" and _spatial_dims(_arg(node, 1, "dim")):
            return Op("pool")
        if node.target == "amax" and _spatial_dims(_arg(node, 1, "dim")):
            return Op("maxpool")
        if node.target in ("view", "reshape"):
            return Op("reshape")
        if node.target == "contiguous" or (node.target == "to" and len(node.args) == 1
                                           and set(node.kwargs) == {"memory_format"}):
            return Op("identity")           # a memory layout: the same values
        if node.target in ("add", "add_"):
            return _add(node, model)
        if node.target in SOFTMAX_METHODS:
            return Op("softmax", dim=_arg(node, 1, "dim"))
    if _on_image(node):
        raise Unsupported(model, node, _IMAGE_ARITHMETIC)
    hint = SILU_HINT if _spelled_silu(node, modules) else SE_HINT if _squeeze_excitation(node, modules) else \
        _HINT.get(type(modules[node.target]) if node.op == "call_module" else node.target)
    raise Unsupported(model, node, "is not supported" + (f": {hint}" if hint else ""))


SILU_HINT = "x * sigmoid(x) is SiLU: write F.silu(x) or nn.SiLU(), which compile"


def _spelled_silu(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` multiplies a tensor by its own sigmoid: SiLU written out (EfficientNet's and YOLOv5's
    ``Swish``, ``x * torch.sigmoid(x)``), a product of two tensors as such."""
    if node.target not in _PRODUCTS or len(node.args) != 2:
        return False
    for x, s in (node.args, node.args[::-1]):
        if isinstance(s, fx.Node) and s.args and s.args[0] is x and (
                (s.op == "call_function" and s.target in (torch.sigmoid, F.sigmoid))
                or (s.op == "call_method" and s.target == "sigmoid")
                or (s.op == "call_module" and isinstance(modules[s.target], nn.Sigmoid))):
            return True
    return False


SE_HINT = ("x times a gate computed from x's global average is a squeeze-excitation block, a product of two tensors, "
           "for which the accelerator has no unit: leave the SE blocks out (as EfficientNet-lite and "
           "MobileNet-EdgeTPU do for integer accelerators); the rest of the network compiles")
_SE_DEPTH = 16          # nodes searched back from a gate for the pooling of the tensor it multiplies


def _global_average(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` averages its input over the map (any of the spellings :func:`operation` takes as "pool",
    and adaptive averages to other sizes)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.AdaptiveAvgPool2d)
    return (node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, torch.mean)) or \
        (node.op == "call_method" and node.target == "mean")


def _squeeze_excitation(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` multiplies a tensor by a gate computed from that tensor's global average pooling (within
    :data:`_SE_DEPTH` nodes): a squeeze-excitation block (SENet, MobileNetV3, EfficientNet, RegNetY)."""
    if node.target not in _PRODUCTS or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return False
    for x, gate in (node.args, node.args[::-1]):
        seen, frontier = set(), [gate]
        while frontier and len(seen) < _SE_DEPTH:
            n = frontier.pop()
            if n in seen:
                continue
            seen.add(n)
            if _global_average(n, modules) and n.args and n.args[0] is x:
                return True
            frontier += n.all_input_nodes
    return False
