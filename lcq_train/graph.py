"""The quantizable form of any PyTorch network, found by tracing its forward with ``torch.fx``.

A model of :mod:`lcq_train.models` says itself which layers it quantizes (``model.quant_layers()``:
(layer, activation quantizer feeding it) pairs). :func:`prepare` gives any other ``nn.Module`` the
same form, following the paper's rules:

- every ``nn.Conv2d`` and ``nn.Linear`` becomes a :class:`~lcq_train.layers.QConv2d` /
  :class:`~lcq_train.layers.QLinear` (in place: the same module object, parameters, device and
  hooks; its class changes and it gains an identity weight quantizer ``wq``);
- an activation quantizer (:class:`~lcq_train.layers.QAct`, identity until a plan configures it)
  is inserted where a tensor enters those layers: one per tensor, shared by the layers it feeds
  (a residual block's conv and its projection shortcut read the same codes); it is called
  ``act_<first layer it feeds, dots as _>``;
- that quantizer is unsigned when the tensor cannot be negative: it comes from a ReLU (ReLU6,
  hardtanh or clamp with a min >= 0, sigmoid) or the input image, through pooling, flattening, reshaping,
  dropout, concatenation or sums, products and quotients of such tensors (a parameter or a negative number in
  one makes it signed); otherwise it is signed;
- the quantizer that sees the input image itself (through such shape-only and pooling operations
  alone) is the image quantizer: 8 bits, clip 1, frozen, so a pixel in [0, 1] maps to its uint8
  code.

The result is a :class:`QuantGraphModule`: a ``torch.fx.GraphModule`` that holds the model's own
submodules (same names, so ``state_dict`` keys do not change but for the quantizers' ``alpha``
and ``theta``) and has ``quant_layers()``. What cannot be quantized is a ValueError that says
why: a forward that ``torch.fx`` cannot trace (data-dependent control flow: give the model a
``quant_layers()`` method and QConv2d/QLinear/QAct layers instead; a branch on a tensor's shape,
:class:`ShapeBranch`: compute the size from the known input size), no conv or linear layer, a
layer called twice, a convolution the accelerator does not run (1-d, 3-d, transposed), a
convolution or linear map called as a function (``F.conv2d``) rather than a module, dropout called as a
function (``F.dropout(x, p, self.training)``: traced, ``self.training`` is a constant), a sum scaled by
``alpha`` (``torch.add(x, y, alpha=2)``: the integer additions do not scale), or a view of a
tensor read after an in-place change of it (:mod:`lcq_train.in_place`).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
import re
import traceback
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.proxy import TraceError

from .in_place import InPlaceRead, Proxy, read_in_place
from .layers import QAct, QConv2d, QLinear
from .quantizer import Quantizer, QuantSpec

__all__ = ["QuantGraphModule", "ShapeBranch", "describe", "location", "prepare", "quantizable", "trace"]

_PAIRS, _IMAGE = "lcq_quant_layers", "lcq_image_input"     # keys of QuantGraphModule.meta


class QuantGraphModule(fx.GraphModule):
    """A traced network with its quantizers in place (:func:`prepare`); ``quant_layers()`` as the
    built-in models have it, and ``image_input()``: the activation quantizer that sees the image."""

    def quant_layers(self) -> list[tuple[str, str]]:
        """(layer name, name of the activation quantizer feeding it), in forward order."""
        return [tuple(pair) for pair in self.meta[_PAIRS]]

    def image_input(self) -> str | None:
        """Name of the activation quantizer of the raw input image (None: no layer sees it unchanged)."""
        return self.meta[_IMAGE]


def quantizable(model: nn.Module) -> bool:
    """Whether ``model`` already declares its quantized layers (``quant_layers()``)."""
    return callable(getattr(model, "quant_layers", None))


class ShapeBranch(TraceError):
    """A forward branches on a tensor's shape, which ``torch.fx`` cannot trace: where, and what to write instead."""


_SIZE_METHODS = {"size", "dim", "numel"}
_SIZE_ATTRIBUTES = {"shape", "ndim"}


def _from_sizes(node: fx.Node) -> bool:
    """Whether ``node`` is computed from tensors' sizes (``x.shape``, ``x.size()``, ``x.dim()``) and constants alone."""
    todo, seen, sized = [node], set(), False
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if (n.op == "call_method" and n.target in _SIZE_METHODS) or \
                (n.op == "call_function" and n.target is getattr and n.args[1] in _SIZE_ATTRIBUTES):
            sized = True
        elif n.op in ("placeholder", "get_attr", "call_module"):
            return False
        else:
            todo.extend(n.all_input_nodes)
    return sized


class _Tracer(fx.Tracer):
    def proxy(self, node: fx.Node) -> Proxy:
        return Proxy(node, self)

    def to_bool(self, obj: Proxy) -> bool:
        """A branch on tensor sizes alone is a :class:`ShapeBranch` naming the line; any other fails as in fx."""
        if _from_sizes(obj.node):
            where = _user_frame("".join(traceback.format_stack(inspect.currentframe().f_back)))
            raise ShapeBranch(f"its forward branches on a tensor's shape{where}, which torch.fx cannot trace: compute "
                              "the size from the module's known input size (in __init__), or use an operation that "
                              "needs no branch (torch.flatten(x, 1), AdaptiveAvgPool2d(1), ...)")
        return super().to_bool(obj)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Quantizer, QConv2d, QLinear)) or train_only(m) or super().is_leaf_module(m, qualname)


def train_only(m: nn.Module) -> bool:
    """Whether ``m`` is a module of the user's (not torch's) without parameters or buffers whose forward reads
    ``self.training``: a stochastic depth (timm's ``DropPath``, torchvision's ``StochasticDepth``), which the trace
    keeps as one call (a leaf), so that it follows the model's mode as eager PyTorch runs it; traced through, the
    branch of the mode at tracing would be fixed into the graph. The compiler takes one that returns its input in
    eval mode as the identity (:func:`eval_identity`)."""
    return not any(True for _ in m.parameters()) and not any(True for _ in m.buffers()) and _reads_training(m)


def eval_identity(m: nn.Module) -> bool:
    """Whether :func:`train_only` module ``m`` returns its input itself in eval mode (tried on a small tensor; its
    mode restored): what a stochastic depth does at inference."""
    was = m.training
    try:
        m.eval()
        x = torch.zeros(2, 4, 3, 3)
        with torch.no_grad():
            return m(x) is x
    except Exception:  # noqa: BLE001 -- a module that cannot take the tensor is no identity
        return False
    finally:
        m.train(was)


_LAYERS = (nn.Conv2d, nn.Linear)
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)
# Dropout as a function: its ``training`` argument is the bool it was when traced (``self.training`` included).
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
# The module that does what such a function does where its ``training`` follows the model's mode.
_DROPOUT_MODULES = {F.dropout: nn.Dropout, F.dropout2d: nn.Dropout2d}
_FUNCTIONAL = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
               F.bilinear, torch.conv1d, torch.conv2d, torch.conv3d}
# Operations whose output is >= 0 whatever their input; and SiLU, GELU, Mish and hardswish, which dip below 0
# (to at least -0.375) before they rise: the quantizer after them is unsigned, and clips the dip, so that the
# accelerator's thresholds can take it (compiler.curves).
_NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.SiLU, nn.GELU, nn.Mish,
                        nn.Hardswish)
_NONNEGATIVE_FUNCTIONS = {F.relu, F.relu6, torch.relu, torch.relu_, torch.sigmoid, F.sigmoid, F.hardsigmoid,
                          F.softmax, torch.softmax, F.silu, F.gelu, F.mish, F.hardswish}
_NONNEGATIVE_METHODS = {"relu", "relu_", "sigmoid", "softmax"}
# Clamps (functions and methods): >= 0 where their min is.
CLAMPS = {torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"}
# Operations that keep their input's sign and values (up to selection and averaging): they keep a
# tensor non-negative, and keep the raw image the raw image.
_SHAPE_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
                  nn.Dropout, nn.Dropout2d, nn.Unflatten)
_SHAPE_FUNCTIONS = {F.max_pool2d, torch.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                    torch.amax, F.dropout, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                    torch.transpose, operator.getitem}
_SHAPE_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                  "mean", "amax", "clone", "detach", "float", "to"}
# Sums, products and quotients (functions and method names): their number arguments are values (a negative one
# makes the output signed), not dimensions.
_PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_QUOTIENTS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide"}
_ARITHMETIC = {operator.add, operator.iadd, torch.add, "add", "add_"} | _PRODUCTS | _QUOTIENTS
# Operations whose output is >= 0 when all their tensor inputs are.
_COMBINING_FUNCTIONS = {f for f in _ARITHMETIC if not isinstance(f, str)} | {torch.cat, torch.maximum, torch.minimum,
                                                                              torch.sum, torch.mean}
_COMBINING_METHODS = {f for f in _ARITHMETIC if isinstance(f, str)} | {"sum"}


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if n.op != "get_attr"]


def _kind(node: fx.Node, modules: dict) -> str:
    """How ``node`` treats the sign of its inputs: "nonnegative", "shape", "combine" or "other"."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _NONNEGATIVE_MODULES) or (isinstance(m, nn.Hardtanh) and m.min_val >= 0):
            return "nonnegative"
        return "shape" if isinstance(m, _SHAPE_MODULES) or (train_only(m) and eval_identity(m)) else "other"
    tables = {"call_function": (_NONNEGATIVE_FUNCTIONS, _SHAPE_FUNCTIONS, _COMBINING_FUNCTIONS),
              "call_method": (_NONNEGATIVE_METHODS, _SHAPE_METHODS, _COMBINING_METHODS)}.get(node.op)
    if tables is None:
        return "other"
    if node.target is F.hardtanh:       # hardtanh(x, min_val, max_val): >= 0 where min_val is
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        return "nonnegative" if isinstance(low, (int, float)) and low >= 0 else "other"
    if node.target in CLAMPS:           # clamp(x, min, max): >= 0 where min is
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        return "nonnegative" if isinstance(low, (int, float)) and low >= 0 else "other"
    for kind, targets in zip(("nonnegative", "shape", "combine"), tables):
        if node.target in targets:
            return kind
    return "other"


def _nonnegative(node: fx.Node, modules: dict, memo: dict) -> bool:
    if node not in memo:
        memo[node] = False          # cycles cannot occur in a graph; this only guards the recursion
        kind = _kind(node, modules)
        inputs = _tensor_inputs(node)
        if node.op == "placeholder":
            memo[node] = True       # the image, pixels in [0, 1]
        elif kind == "nonnegative":
            memo[node] = True
        elif kind == "shape":
            memo[node] = bool(inputs) and _nonnegative(inputs[0], modules, memo)
        elif kind == "combine":             # (a parameter or buffer input, a get_attr node, may be negative)
            negative = node.target in _ARITHMETIC and any(
                isinstance(a, (int, float)) and a < 0 for a in (*node.args, *node.kwargs.values()))
            memo[node] = bool(inputs) and not negative and all(
                _nonnegative(n, modules, memo) for n in node.all_input_nodes)
    return memo[node]


def _is_image(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is the model's first input, or comes from it by shape-only or pooling operations."""
    while True:
        if node.op == "placeholder":
            return next(iter(n for n in node.graph.nodes if n.op == "placeholder")) is node
        inputs = _tensor_inputs(node)
        if _kind(node, modules) != "shape" or not inputs:
            return False
        node = inputs[0]


def _defaults(model: nn.Module) -> dict | None:
    """forward's parameters after the first that have defaults (flags such as ``return_features=False``):
    traced at those values."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    fixed = {p.name: p.default for p in params if p.default is not p.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return fixed or None


def trace(model: nn.Module) -> fx.Graph:
    """``model``'s forward as a ``torch.fx`` graph (quantizers, QConv2d and QLinear are leaves; forward's
    defaulted flags at their defaults), reading as eager PyTorch runs it: ``x += y`` in place, and a tensor
    read after an in-place change read as the change's result (:mod:`lcq_train.in_place`; a view of it read
    then is an :class:`~lcq_train.in_place.InPlaceRead`). Each node's ``meta`` holds ``stack_trace`` (where the
    user's code called it) and ``nn_module_stack`` (the modules it was called in). Tracing errors propagate."""
    tracer = _Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model, concrete_args=_defaults(model))
    modules = dict(model.named_modules())
    read_in_place(graph, modules, lambda node: describe(node, modules) + location(node))
    return graph


def trace_or_explain(model: nn.Module, failing: str, advice: str) -> fx.Graph:
    """:func:`trace` of ``model``, or ValueError ``"{failing}: why"``: an in-place read's or shape branch's own
    message, else torch.fx's error in one line and ``advice`` (what the forward must or may do instead)."""
    try:
        return trace(model)
    except (InPlaceRead, ShapeBranch) as e:
        raise ValueError(f"{failing}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- fx raises many kinds (TraceError, TypeError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, NameError) and "not installed as a submodule" in reason:
            advice = ("its forward calls a module it creates there: create it in __init__ (self.relu = nn.ReLU()) "
                      "and call that, or call the function (torch.relu)")
        elif "not 'Proxy'" in reason:
            advice = ("its forward makes a Python number of a tensor's size (int(x.size(1) * ratio), as kuangliu's "
                      "ShuffleNetV2 splits its channels), which the trace leaves unknown: compute the number in "
                      "__init__ from the layer's arguments (self.c = int(in_channels * ratio)) and use that")
        elif "cannot be iterated" in reason:
            advice = ("its forward loops over a tensor or its size (for s in x.size()[1:] in a num_flat_features "
                      "method), which the trace leaves unknown: flatten with torch.flatten(x, 1), or x.view(x.size(0), "
                      "-1)")
        raise ValueError(f"{failing}: torch.fx cannot trace its forward ({type(e).__name__}: {reason}); {advice}") \
            from None


_TORCH_DIR = re.escape(str(torch.__file__).rsplit("/", 1)[0])
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def describe(node: fx.Node, modules: dict[str, nn.Module] | None = None) -> str:
    """The operation of ``node`` as the user wrote it: a module and its class (from ``modules`` or the graph's
    module), a function or a method."""
    if node.op == "call_module":
        module = modules.get(node.target) if modules is not None else \
            node.graph.owning_module.get_submodule(node.target) if node.graph.owning_module else None
        return f"layer {node.target!r} ({type(module).__name__ if module is not None else 'module'})"
    if node.op == "call_function":
        module = (getattr(node.target, "__module__", None) or "").replace("_operator", "operator") \
            .replace("torch._C._nn", "torch.nn.functional")          # builtins that F exports (avg_pool2d)
        name = getattr(node.target, "__name__", node.name)
        return f"function {module + '.' if module else ''}{name}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "get_attr":
        return f"parameter or buffer {node.target!r}"
    return f"{node.op} {node.target}"


def _unsized(name: str, m: nn.Module) -> str:
    """Why lazy module ``m`` (called ``name``), not run yet, cannot be quantized, and the size to give it."""
    if not isinstance(m, _LAYERS):
        return (f"{name!r} is a {type(m).__name__}, whose parameters do not exist before its first forward: give "
                "its sizes, or run the network on an image first")
    base, size = ("Conv2d", "in_channels") if isinstance(m, nn.Conv2d) else ("Linear", "in_features")
    return (f"{name!r} is a {type(m).__name__}, whose weights do not exist before its first forward: give its {size} "
            f"(torch.nn.{base}({size}, ...)), or run the network on an image first")


def _scaled_add(node: fx.Node) -> bool:
    """Whether ``node`` is ``torch.add(x, y, alpha=a)`` or ``x.add(y, alpha=a)`` (``x + a * y``) with ``a`` not 1."""
    add = (node.op == "call_function" and node.target is torch.add) or \
        (node.op == "call_method" and node.target in ("add", "add_"))
    return add and node.kwargs.get("alpha", 1) != 1


def _uncounted_padding(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is an average pooling with padding that leaves the positions outside the map out of each
    window's divisor (``count_include_pad=False``: ``AvgPool2d`` or ``F.avg_pool2d``)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.AvgPool2d) and m.padding not in (0, (0, 0)) and not m.count_include_pad
    if node.op != "call_function" or node.target is not F.avg_pool2d:
        return False
    padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
    counted = node.args[5] if len(node.args) > 5 else node.kwargs.get("count_include_pad", True)
    return padding not in (0, (0, 0)) and not counted


def location(node: fx.Node) -> str:
    """`` at FILE:LINE (code)``: the innermost frame outside torch of ``node``'s recorded stack trace
    (empty when none was recorded, as for the quantizers that tracing inserted)."""
    return _user_frame(node.meta.get("stack_trace") or "")


def _user_frame(trace_text: str) -> str:
    """`` at FILE:LINE (code)`` of the innermost frame outside torch in a formatted stack trace ('' if none)."""
    lines = trace_text.splitlines()
    found = ""
    for i, line in enumerate(lines):
        m = _FRAME.search(line)
        if m and not re.match(_TORCH_DIR, m.group(1)):
            code = lines[i + 1].strip() if i + 1 < len(lines) and not _FRAME.search(lines[i + 1]) else ""
            found = f" at {m.group(1)}:{m.group(2)}" + (f" ({code})" if code else "")
    return found


def _layer_input(node: fx.Node) -> fx.Node:
    x = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(x, fx.Node):
        raise ValueError(f"layer {node.target!r} is called on {x!r}, not on a tensor of the network")
    return x


# Activations other than ReLU and clips, which a quantizer takes its thresholds back through (compiler.curves): no
# pooling unit applies them position by position, so the quantizer of a layer that reads the average pooling of
# one's output (or of a constant factor of it) quantizes it before the pooling, and the layer reads the average of
# the codes. So does one that reads the average pooling of a max pooling (or of a join with a max-pooled part,
# InceptionV3's pool branch after a reduction block): the compiler max pools codes, not values.
_CURVE_MODULES = (nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.Softplus,
                  nn.Softsign, nn.LeakyReLU, nn.PReLU, nn.Hardsigmoid)
_CURVE_FUNCTIONS = {F.silu, F.gelu, F.mish, F.hardswish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.elu, F.celu,
                    F.selu, F.softplus, F.softsign, F.leaky_relu, F.hardsigmoid, "sigmoid", "tanh"}
_PASSING = {nn.Flatten, nn.Identity, nn.Dropout, torch.flatten, F.dropout, "flatten", "view", "reshape", "contiguous"}
_MAX_POOLINGS = {nn.MaxPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d}
_JOINS = {torch.cat, torch.concat, torch.concatenate}


def curve_activation(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is an activation other than ReLU and the clips from 0 that the compiler takes as one
    (:data:`_CURVE_MODULES`, :data:`_CURVE_FUNCTIONS`, and hardtanh or a clamp whose minimum is not 0:
    compiler.capture's rule, which a test holds equal)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, _CURVE_MODULES) or (type(m) is nn.Hardtanh and not (m.min_val == 0 and m.max_val > 0))
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target is F.hardtanh:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return not (low == 0 and isinstance(high, (int, float)) and high > 0)
    if node.target in CLAMPS:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        return low != 0 or isinstance(low, bool)
    return node.target in _CURVE_FUNCTIONS


def _average_pooling(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` averages each channel over windows of its map: ``AvgPool2d``, ``F.avg_pool2d``, or over the
    whole map: ``AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``, ``torch.mean(x, (2,
    3))`` (the compiler takes the whole map's, a window as large as the map's too)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.AvgPool2d) or (isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)))
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size", node.kwargs.get("dim"))
    if node.target is F.adaptive_avg_pool2d:
        return size in (1, (1, 1))
    return node.target is F.avg_pool2d or (node.target in ("mean", torch.mean) and isinstance(size, (tuple, list))
                                           and sorted(size) == [2, 3])


def _target(node: fx.Node, modules: dict):
    """What ``node`` calls: its module's type, or its function or method."""
    return type(modules.get(node.target)) if node.op == "call_module" else node.target


def _max_pooled(node, modules: dict) -> bool:
    """Whether ``node`` is a max pooling's output (through ReLU, clips and :data:`_PASSING` operations), or a join
    with such a part."""
    if not isinstance(node, fx.Node) or node.op not in ("call_module", "call_function", "call_method"):
        return False
    if _target(node, modules) in _MAX_POOLINGS:
        return True
    if _target(node, modules) in _JOINS:
        parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
        return any(_max_pooled(part, modules) for part in parts)
    rectifier = _kind(node, modules) == "nonnegative" and not curve_activation(node, modules)     # (ReLU, clips)
    return (_target(node, modules) in _PASSING or rectifier) and bool(node.args) and _max_pooled(node.args[0], modules)


def _averaged_codes(x: fx.Node, modules: dict) -> tuple[fx.Node, fx.Node] | None:
    """``(pooling, pooled)`` where layer input ``x`` is (through flatten, dropout or identity) the average
    pooling of ``pooled``, an activation's output (:func:`curve_activation`) or a constant factor of one (the
    compiler's curve then ends in the factor), or a max pooling's output or a join with one (:func:`_max_pooled`);
    else None."""
    while x.op in ("call_module", "call_function", "call_method") and _target(x, modules) in _PASSING and x.args:
        x = x.args[0]
    if not (x.op in ("call_module", "call_function", "call_method") and _average_pooling(x, modules)):
        return None
    pooled = x.args[0] if x.args else None
    if isinstance(pooled, fx.Node) and pooled.op == "call_module" and pooled.target not in modules:
        pooled = pooled.args[0]         # (a quantizer this plan put there for another layer reading the average)
    curve = pooled
    while isinstance(curve, fx.Node) and (inner := _scaled(curve)) is not None:
        curve = inner
    if (isinstance(curve, fx.Node) and curve_activation(curve, modules)) or _max_pooled(pooled, modules):
        return x, pooled
    return None



def _scaled(node: fx.Node) -> fx.Node | None:
    """The tensor that ``node`` multiplies or divides by a constant (``x * c``, ``c * x``, ``x / c``; ``c`` a number
    or a parameter or buffer), as the compiler folds such factors; None for anything else."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs or \
            node.target not in _PRODUCTS | _QUOTIENTS:
        return None

    def constant(a) -> bool:
        return (isinstance(a, (int, float)) and not isinstance(a, bool)) or (isinstance(a, fx.Node)
                                                                             and a.op == "get_attr")
    a, b = node.args
    if isinstance(a, fx.Node) and not constant(a) and constant(b):
        return a
    return b if node.target in _PRODUCTS and constant(a) and isinstance(b, fx.Node) and not constant(b) else None


# A softmax or log-softmax, as a module, a function or a method (the compiler's rule for the logits takes them too).
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
SOFTMAX_METHODS = {"softmax", "log_softmax"}


def _drop_output_softmax(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Leave out a softmax or log-softmax over dimension 1 (or PyTorch's implicit one, or -1 of (N, features)
    vectors) that is the network's last operation: the quantized model's output is the logits before it. The
    training loss (cross-entropy) applies log-softmax itself, so a softmax kept there would be applied twice and
    train poorly; the top class is the same, and the compiler leaves it out too."""
    output = next(n for n in graph.nodes if n.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node) or len(last.users) != 1:
        return
    if last.op == "call_module":
        softmax, dim = isinstance(modules[last.target], SOFTMAX_MODULES), getattr(modules[last.target], "dim", None)
    else:
        softmax = (last.op == "call_function" and last.target in SOFTMAX_FUNCTIONS) or \
            (last.op == "call_method" and last.target in SOFTMAX_METHODS)
        dim = last.kwargs.get("dim", last.args[1] if len(last.args) > 1 else None)
    if not softmax:
        return
    source = last.args[0]
    if isinstance(source, fx.Node) and (dim in (None, 1) or dim == -1 and _vector(source, modules)):
        output.replace_input_with(last, source)
        graph.erase_node(last)


def _vector(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` gives (N, features) vectors: a Linear layer's output or a flatten (dimension -1 is then 1)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], (nn.Linear, nn.Flatten))
    return (node.op == "call_function" and node.target is torch.flatten) or \
        (node.op == "call_method" and node.target in ("view", "reshape", "flatten"))


def _other_mode_trace(model: nn.Module) -> fx.Graph:
    """:func:`trace` of ``model`` in the mode it is not in (its mode restored after)."""
    was = model.training
    try:
        model.train(not was)
        return trace(model)
    finally:
        model.train(was)


def _mode_dropouts(model: nn.Module, graph: fx.Graph, other: Callable[[], fx.Graph]) -> list[fx.Node]:
    """The dropout calls of ``graph`` (``model`` traced) whose ``training`` argument follows the model's mode
    (``F.dropout(x, p, training=self.training)``): in ``other()``, ``model`` traced in the other mode, they hold
    the other bool. Only F.dropout and F.dropout2d, which a module of :data:`_DROPOUT_MODULES` replaces."""
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target in _DROPOUT_MODULES]
    if not calls:
        return []
    was = model.training
    other = [n for n in other().nodes if n.op == "call_function" and n.target in _DROPOUT_MODULES]

    def training(node):
        return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)

    if len(other) != len(calls):
        return []
    return [a for a, b in zip(calls, other) if a.target is b.target and training(a) is was and training(b) is not was]


def _reads_training(m: nn.Module) -> bool:
    """Whether ``m``'s forward, a module of the user's (not torch's), reads ``self.training`` (its source says so)."""
    if type(m).__module__.startswith("torch."):
        return False
    try:
        return "self.training" in inspect.getsource(type(m).forward)
    except (OSError, TypeError):        # (defined where no source is kept)
        return False


def _mode_branch(model: nn.Module, graph: fx.Graph, other: Callable[[], fx.Graph]) -> fx.Node | None:
    """Where ``model``'s forward takes another path in training than in eval mode (``graph`` is it traced in its
    mode, ``other()`` in the other): the first operation of its training-mode graph that differs from the other's
    (their operations compared in order, not their constants), or None. The other traced only where a module's
    forward reads ``self.training`` (kept as one call where :func:`train_only`)."""
    if not any(_reads_training(m) and not train_only(m) for m in model.modules()):
        return None
    try:
        other_graph = other()
    except Exception:  # noqa: BLE001 -- the other mode's trace fails as the mode's own would: nothing to compare
        return None
    training, evaluating = (graph, other_graph) if model.training else (other_graph, graph)
    steps = [list(g.nodes) for g in (training, evaluating)]
    for a, b in itertools.zip_longest(*steps):
        if a is None or b is None or (a.op, a.target) != (b.op, b.target):
            return a if a is not None else steps[0][-1]
    return None


def _as_dropout_module(gm: fx.GraphModule, node: fx.Node) -> dict[str, nn.Module]:
    """Dropout call ``node`` of ``gm`` (one of :func:`_mode_dropouts`) replaced by the module that does the same in
    either mode (``nn.Dropout(p)``), added to ``gm``; returns ``{its name: it}``."""
    p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
    module = _DROPOUT_MODULES[node.target](p)
    name, i = "dropout_" + node.name, 1
    while hasattr(gm, name):
        i += 1
        name = f"dropout_{node.name}_{i}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],))
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    return {name: module}


def prepare(model: nn.Module, check=None) -> QuantGraphModule:
    """``model`` traced, with its conv and linear layers made quantizable and activation quantizers
    inserted where tensors enter them (all identity until a plan configures them); a softmax on its output is left
    out (:func:`_drop_output_softmax`: the output is the logits).

    ``model``'s Conv2d and Linear modules change class in place (their parameters stay); the
    returned module holds them under the same names. ValueError says what cannot be quantized;
    it is raised before anything is changed, as is any error of ``check(pairs, image)`` (called, when
    given, with what ``quant_layers()`` and ``image_input()`` will return)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"a model to quantize must be a torch.nn.Module, not {type(model).__name__}")
    name = type(model).__name__
    graph = trace_or_explain(model, f"cannot quantize {name}",
                             "its forward must not branch on tensor values; or write the model with lcq_train.layers "
                             "(QConv2d, QLinear, QAct) and give it a quant_layers() method listing (layer, activation "
                             "quantizer) pairs, as the models of lcq_train.models do")
    modules = dict(model.named_modules())
    layers: list[fx.Node] = []
    problems = []
    other = functools.cache(lambda: _other_mode_trace(model))      # (traced once, for whichever asks)
    following = _mode_dropouts(model, graph, other)
    branch = _mode_branch(model, graph, other)
    if branch is not None:
        where = location(branch).strip() or "at " + describe(branch, modules)
        problems.append(f"its forward takes another path in training than in eval mode (first {where}), and the "
                        "quantized model is one graph for both: put what runs in training only (a drop connect, a "
                        "stochastic depth) in a module of its own without parameters, as timm's DropPath, which lcq "
                        "keeps as one call, or leave it out")
    for node in graph.nodes:
        if _uncounted_padding(node, modules):
            problems.append(f"{describe(node, modules)}{location(node)} averages with count_include_pad=False, which "
                            "divides a border window by the positions it covers inside the map; the accelerator "
                            "divides every window by kernel^2: use count_include_pad=True (PyTorch's default)")
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
                problems.append(_unsized(node.target, m))
            elif isinstance(m, _UNSUPPORTED):
                problems.append(f"{node.target!r} is a {type(m).__name__}, which the accelerator does not run "
                                "(it runs Conv2d and Linear)")
            elif isinstance(m, _LAYERS):
                if type(m) not in (nn.Conv2d, nn.Linear, QConv2d, QLinear):
                    base = "Conv2d" if isinstance(m, nn.Conv2d) else "Linear"
                    problems.append(f"{node.target!r} is a {type(m).__name__} (a subclass of {base} with its own "
                                    f"behaviour); use torch.nn.{base}")
                elif any(n.target == node.target for n in layers):
                    problems.append(f"layer {node.target!r} is called more than once in forward; a quantized layer "
                                    "must be called once (use one module per call)")
                layers.append(node)
        elif node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS and node not in following:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else None)
            problems.append(f"forward calls {node.target.__name__} as a function{location(node)} (training="
                            f"{training}); torch.fx fixes its training argument at the mode the "
                            "model is traced in, so the quantized model would "
                            f"{'drop out in evaluation too' if training else 'not drop out in training'}; use a "
                            "torch.nn.Dropout module, which follows train() and eval()")
        elif _scaled_add(node):
            problems.append(f"forward adds alpha={node.kwargs['alpha']!r} times its second operand{location(node)}; "
                            "the accelerator's integer additions add two tensors unscaled: write x + y")
        elif node.op == "call_function" and node.target in _FUNCTIONAL:
            problems.append(f"forward calls {getattr(node.target, '__name__', node.target)} directly (node "
                            f"{node.name!r}); use a torch.nn.Conv2d / Linear module so that it can be quantized")
    if problems:
        raise ValueError(f"cannot quantize {name}: " + "; ".join(problems))
    _drop_output_softmax(graph, modules)
    if not layers:
        raise ValueError(f"cannot quantize {name}: it has no torch.nn.Conv2d or torch.nn.Linear layer "
                         "called in forward")

    gm = QuantGraphModule(model, graph, class_name=name)
    for node in following:
        modules.update(_as_dropout_module(gm, node))
    memo: dict = {}
    taken = set(dict(gm.named_modules())) | {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
    layer_set = set(layers)
    pairs, image = [], None
    quantizers: dict[fx.Node, fx.Node] = {}      # a quantized tensor (and its quantizer's node) -> that node
    for node in layers:
        x = _layer_input(node)
        pooled = _averaged_codes(x, modules)
        quantized = pooled[1] if pooled else x          # (before the average pooling of an activation's output)
        if quantized not in quantizers:
            act = base = "act_" + node.target.replace(".", "_")
            i = 1
            while act in taken or hasattr(gm, act):
                i += 1
                act = f"{base}_{i}"
            taken.add(act)
            signed = not _nonnegative(quantized, modules, memo)
            if image is None and not pairs and _is_image(quantized, modules):
                image = act
            gm.add_submodule(act, QAct(signed=signed))
            with gm.graph.inserting_after(quantized):
                q = quantizers[quantized] = gm.graph.call_module(act, (quantized,))
            quantizers[q] = q                           # (what the layers reading ``quantized`` now read)
            for user in [u for u in quantized.users if u in layer_set]:
                user.replace_input_with(quantized, q)
        q = quantizers[quantized]
        if pooled:                                      # the layer reads the average of the codes
            pooled[0].replace_input_with(quantized, q)
        pairs.append((node.target, q.target))
    if check is not None:
        check(pairs, image)
    for node in layers:          # now nothing can fail: make the layers quantizable
        m = gm.get_submodule(node.target)
        if type(m) in (nn.Conv2d, nn.Linear):
            m.__class__ = QConv2d if type(m) is nn.Conv2d else QLinear
            m.wq = Quantizer(QuantSpec(), signed=True, weight_norm=True)
    gm.graph.lint()
    gm.recompile()
    gm.meta[_PAIRS] = pairs
    gm.meta[_IMAGE] = image
    gm.train(model.training)
    return gm
