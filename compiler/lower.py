"""Lower a trained, quantized PyTorch model to a :class:`compiler.graph.CompiledModel`, by graph capture.

``compile_checkpoint(path)`` rebuilds the model of an ``lcq train`` checkpoint (a
run of your own network only with ``factory=`` its recorded reference, the
``--model`` of ``lcq compile``) and lowers it. ``compile_model`` captures the
model's ``torch.fx`` graph (:mod:`compiler.capture`; the built-in models and
yours alike) and walks it from the output, each node's inputs first in
argument order (a residual block's main path before its shortcut), turning
runs of operations into the nodes of :mod:`compiler.graph`:

- image -> activation quantizer: an :class:`InputNode`;
- quantized conv or linear layer on codes: a :class:`ConvNode` (a grouped or
  depthwise conv as the dense conv whose weights are 0 outside each group's
  block, :func:`dense_codes`: exact, at ``groups`` times its MACs; a kh x kw
  kernel as the square one with zeros around it, :func:`square_codes`; a dilated
  one as its spread-out kernel, zeros between the taps, :func:`dilated_codes`), whose output
  stage its consumers decide: *thresholds* when its only consumer is
  [BN] -> [ReLU | ReLU6 | hardtanh(0, max)] -> activation quantizer (all folded);
  *requantize* when it is an operand of a residual addition (to the other
  operand's scale, or ``2^-residual_frac_bits`` below the finer of two
  accumulators; a BN in between folds in, a channel of negative BN scale by
  negating its weights; an accumulator that other operations read too is
  requantized where it is made, ``2^-residual_frac_bits`` below its scale) or
  the network's output (the logits, ``2^-logit_frac_bits`` below its scale);
  *requantize with a ReLU* when [BN] -> ReLU follows and the ReLU's output
  feeds a residual addition (a post-activation block's input); *none* (the
  raw accumulator) otherwise;
- [BN] -> [ReLU] -> activation quantizer on any other value tensor: an :class:`ActivateNode`;
- [BN] -> a non-decreasing activation (LeakyReLU, PReLU, sigmoid, tanh, ELU, ...: :mod:`compiler.curves`;
  SiLU, GELU, Mish, hardswish before an unsigned one, no BN after them) -> activation quantizer: the quantizer's
  thresholds taken back through it, then as above (a signed quantizer's two halves:
  :meth:`_Lowering.signed_codes`);
- [BN] -> ReLU -> global average pooling -> [flatten] -> quantizer: a :class:`PoolNode`;
  [BN] -> ReLU -> average pooling (k x k windows at a stride, no padding) -> quantizer: an
  :class:`AvgPoolNode`;
- max pooling on the way to an activation quantizer (after the conv, BN or addition, before or after
  the ReLU or clip; nothing but ReLU, clip, identity, flatten and max pooling until the quantizer):
  the quantizer's thresholds as if there were no pooling (codes ``<act>.unpooled``), then a
  :class:`MaxPoolNode` per max pooling, the last writing the quantizer's codes. Exact: the
  quantizer (after ReLU and clip) is non-decreasing, so it commutes with the maximum;
- an addition: an :class:`AddNode` named after the module whose forward adds
  (``blocks.0.add``, writing ``blocks.0.out``); a ReLU right after it whose output
  feeds another addition (a post-activation block) sets its ``relu`` flag;
- an option-A shortcut, ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` of a residual stream into an
  addition: a :class:`SubsampleNode` right after the node that writes the stream, its zero channels the
  addition's ``b_offset`` (:meth:`_Lowering.shortcut`).

Tensors are named after modules: codes after their activation quantizer, raw
accumulators after their layer, the output ``logits``. Any other operation is
refused with :class:`compiler.capture.Unsupported` (the operation, its place in
the user's code, what is supported) before anything is returned.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from lcq_train.checkpoint import load_checkpoint
from lcq_train.factory import model_from_checkpoint
from lcq_train.plan import QuantPlan
from lcq_train.quant import level_scale
from lcq_train.weight_codes import settle_weight_codes

from . import stages
from .capture import (ADAPTIVE_AVG_HINT, ADAPTIVE_MAX_HINT, Op, Unsupported, capture, describe, location, operation,
                      size_query)
from .curves import Curve
from .graph import (FRAC_BITS, INT64_LIMIT, MAX_CONCAT, MAX_KERNEL, ActivateNode, AddNode, AvgPoolNode, CompiledModel,
                    ConcatNode, ConvNode, InputNode, MaxPoolNode, ModelRuleError, PoolNode, SubsampleNode, mac_kind)
from .sizes import fold_sizes


@dataclass(frozen=True)
class CompileOptions:
    """``residual_frac_bits``: fraction bits of the residual stream below its finest accumulator
    scale; ``pool_frac_bits``: fraction bits of BN + ReLU before global pooling;
    ``logit_frac_bits``: fraction bits of the logits below the last layer's accumulator scale;
    ``max_lut_entries``: larger layers (8-bit edge layers) multiply levels instead of a LUT."""

    residual_frac_bits: int = 8
    pool_frac_bits: int = 8
    logit_frac_bits: int = 8
    max_lut_entries: int = 1024

    def __post_init__(self):
        for name in ("residual_frac_bits", "pool_frac_bits", "logit_frac_bits"):
            if not FRAC_BITS[0] <= getattr(self, name) <= FRAC_BITS[1]:   # the rule the loader applies too
                raise ValueError(f"{name.replace('_', '-')} must be in {FRAC_BITS[0]}..{FRAC_BITS[1]}, "
                                 f"not {getattr(self, name)}")
        if not 1 <= self.max_lut_entries <= INT64_LIMIT:                      # (the loader's rule too)
            raise ValueError(f"max-lut-entries must be in 1..{INT64_LIMIT}, not {self.max_lut_entries}")


def load_model(path: str | Path, factory: str | None = None) -> tuple[nn.Module, dict]:
    """The quantized model of an ``lcq train`` checkpoint (eval mode, CPU) and the checkpoint dict
    (:func:`lcq_train.checkpoint.load_checkpoint`: no pickle, digest and fields checked; its
    ``sha256`` is the checkpoint's digest). A run of a user model is rebuilt only with ``factory``
    equal to the reference it records (:func:`lcq_train.factory.model_from_checkpoint`): building
    it imports and runs that code."""
    state = load_checkpoint(path)
    return quantized_model(state, path, factory), state


def quantized_model(state: dict, path: str | Path, factory: str | None = None) -> nn.Module:
    """The quantized model (eval mode, CPU) of checkpoint dict ``state``, read from ``path`` (named in
    errors); ``factory``: see :func:`load_model`."""
    plan = QuantPlan.from_dict(state["plan"])
    if plan.method == "fp":
        raise ValueError(f"{path} is a full-precision checkpoint; compile a quantized one "
                         "(lcq train --method lcq --wbits B --abits B --init THIS_CHECKPOINT ...)")
    if plan.outer_bits is None:
        raise ValueError(f"{path} was trained without outer re-quantization (--outer-bits 0); "
                         "integer LUTs need b' (retrain with --outer-bits 8)")
    for name, tensor in state["model"].items():     # (a diverged run writes NaN; compiling them fails somewhere deep)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{path}: its model tensor {name} holds {bad} values that are NaN or infinite: the run "
                             "diverged (its metrics show a NaN loss), so there is no model to compile; retrain it "
                             "with a lower --lr")
    try:
        return model_from_checkpoint(state, factory, option="--model")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def compile_checkpoint(path: str | Path, options: CompileOptions = CompileOptions(),
                       factory: str | None = None) -> CompiledModel:
    """Compile the checkpoint at ``path`` (see :func:`compile_model`; ``factory``: see
    :func:`load_model`), recording its origin in ``source``: ``checkpoint``, its absolute path
    (so that ``lcq eval`` finds it from any working directory), and ``sha256``, the checkpoint's
    digest (the SHA-256 its frame records and :func:`~lcq_train.checkpoint.load_checkpoint`
    verifies), which ``lcq eval`` compares."""
    model, state = load_model(path, factory)
    compiled = compile_model(model, tuple(state["input_shape"]), options)
    cfg = state["config"]
    compiled.source = {"checkpoint": str(Path(path).resolve()), "sha256": state["sha256"],
                       "model": cfg["model"], "dataset": cfg["dataset"], "plan": state["plan"],
                       "epoch": state["epoch"], "test_top1": state["metrics"].get("test_top1"),
                       "options": options.__dict__, **({"classes": state["classes"]} if "classes" in state else {})}
    return compiled


@contextlib.contextmanager
def one_thread():
    """PyTorch on one thread inside: its parallel reductions (LWN's mean and standard deviation of a
    weight tensor, hence a layer's scale) split their sums by thread, so their last bits vary with
    the thread count; on one thread they add in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def as_compiled(model: nn.Module) -> nn.Module:
    """``model`` as :func:`compile_model` computes it, in place: its weights settled (a weight that float64 would
    give another code than the model's own precision moved clear of the threshold,
    :func:`lcq_train.weight_codes.settle_weight_codes`, on one thread), in float64, in eval mode."""
    with one_thread():
        settle_weight_codes(model, only_differing=True)
    return model.double().eval()


@torch.no_grad()
def compile_model(model: nn.Module, input_shape: tuple[int, int, int],
                  options: CompileOptions = CompileOptions()) -> CompiledModel:
    """Lower ``model`` (quantizers installed, trained) for inputs of ``input_shape`` (C, H, W).

    Codes, levels and constants are computed from a float64 copy of ``model``. A weight training left within
    float32's rounding of a quantizer threshold, which float64 would give another code, is first moved clear of it
    on the side of the code the model's own precision gives (:func:`lcq_train.weight_codes.settle_weight_codes`,
    only those): the compiled codes are the ones the model was trained and scored with. The agreement check runs
    the PyTorch model so too. PyTorch runs on one thread meanwhile, so that the bytes do not depend on the thread
    count. A softmax or log-softmax on the output is left out: the compiled logits are the values before it (the
    same top class). ValueError (:class:`~compiler.capture.Unsupported` for an operation) says what cannot be compiled.
    """
    name = type(model).__name__                 # a traced network's copy is a class of its own
    model = as_compiled(copy.deepcopy(model))
    with one_thread():
        lowering = _Lowering(model, name, tuple(input_shape), options)
        graph = capture(model, name)
        fold_sizes(model, graph, tuple(input_shape))
        lowering.run(graph)
    num_classes = lowering.nodes[-1].out_shape[0]
    compiled = CompiledModel(lowering.nodes, "logits", num_classes, scales=lowering.scales)
    compiled.validate()   # the rules of compiler.graph, which the loader applies to every file
    return compiled


@dataclass(frozen=True)
class _Value:
    """What a graph node computes. ``kind`` "image"; "codes" (of tensor ``tensor``); or "values":
    per channel ``gain * x + offset`` of value tensor ``x = tensor``, through a non-decreasing activation
    (``curve``, :class:`~compiler.curves.Curve`), then a ReLU (``relu``), clipped at ``cap``, averaged
    (``pooled``: :data:`GLOBAL`, or an average pooling's (kernel, stride, padding)), then a ReLU of the average
    (``pooled_relu``: where nothing rectified it before the pooling; an unsigned quantizer's thresholds, all above
    0, imply it), max pooled (``maxpools``: the graph node and its (kernel, stride, padding) of each, in order).
    ``folded``: a BN is in ``gain``/``offset``;
    ``sole``: the raw accumulator (or the sum) ``tensor`` has no consumer but this chain; ``rectified``:
    ``tensor`` holds the ReLU's output already (see :meth:`_Lowering.rectify`). Kind "size": a tensor's size
    (``x.size()``, ``x.shape``), or its dimension ``dim`` of it (``x.size(0)``, ``x.shape[0]``), for a reshape.
    ``padded``: zero channels (before, after) around ``tensor``'s, for an addition (an option-A shortcut).
    ``flat``: a C x H x W map (H * W > 1) flattened on its way to a linear layer, which then runs as an
    H x W convolution over it (the image: its input node's codes are the vector of its pixels instead,
    ``InputNode.flat``). Kind "concat": the channel concatenation ``concat`` (its graph node) of ``parts``
    (each kind "values"; ``sole`` only while the concatenation has one consumer), then max pooled (``maxpools``),
    on its way to an activation quantizer."""

    kind: str
    tensor: str | None = None
    gain: np.ndarray | None = None
    offset: np.ndarray | None = None
    folded: bool = False
    curve: Curve | None = None
    relu: bool = False
    cap: float = math.inf
    pooled: tuple[int, int, int] | None = None
    pooled_relu: bool = False
    sole: bool = False
    maxpools: tuple = ()
    rectified: bool = False
    dim: int | None = None
    parts: tuple = ()
    concat: fx.Node | None = None
    flat: bool = False
    padded: tuple[int, int] = (0, 0)

    @property
    def plain(self) -> bool:
        return not (self.folded or self.relu or self.pooled or self.cap < math.inf or self.maxpools
                    or self.curve is not None)

    @property
    def linear_mean(self) -> bool:
        """Whether this is the average pooling of a conv's, BN's or addition's output as it is (no ReLU, clip or
        curve before or after it): an affine map of the average, which a BN after it folds into."""
        return bool(self.pooled) and not (self.relu or self.pooled_relu or self.cap < math.inf
                                          or self.curve is not None)


def _relu_of_part(p: _Value) -> _Value:
    """A concatenation's part through a ReLU: as it is where rectified already (before or after an average), a
    ReLU of the average where it is an average of its layer's output as it is, else a ReLU of its values."""
    if p.rectified or p.pooled_relu:
        return p
    return replace(p, pooled_relu=True) if p.linear_mean else replace(p, relu=True)


def _tiling_window(pooled: tuple[int, int, int] | None, h: int, w: int) -> int:
    """The side of an average pooling's windows (``pooled``, :attr:`_Value.pooled`) that tile an h x w map: kernel
    = stride, no padding, dividing both sides; 1 for any other pooling, or none."""
    if not pooled or pooled == GLOBAL:
        return 1
    k, s, p = pooled
    return k if k == s and p == 0 and h % k == 0 and w % k == 0 else 1


def _sole_reader(node: fx.Node) -> bool:
    """Whether one operation reads ``node``'s values (a size query, for a reshape, reads its shape only)."""
    return sum(not size_query(user) for user in node.users) == 1


def _post_order(output: fx.Node) -> list[fx.Node]:
    """The nodes ``output`` depends on, each after its inputs, inputs visited in argument order."""
    order, seen, stack = [], set(), [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((n, False) for n in reversed(node.all_input_nodes) if n not in seen)
    return order


GLOBAL = (0, 0, 0)   # ``_Value.pooled`` of a global average pooling
# The operations that take a "concat" _Value (on its way to an activation quantizer; a size query reads its shape
# only, for a reshape).
_CONCAT_READERS = ("act", "relu", "curve", "clip", "maxpool", "pool", "avgpool", "flatten", "reshape", "identity",
                   "adaptive", "size", "bn", "scale", "cat")
_DEFAULT_FRAC = CompileOptions.residual_frac_bits   # the fraction bits that cover a trained model's scales


def _finest(gain: np.ndarray) -> float:
    """The smallest non-zero ``|gain|`` (1 where all are 0): the finest scale a requantize stage must keep."""
    nonzero = np.abs(gain[gain != 0])
    return float(nonzero.min()) if nonzero.size else 1.0


def square_codes(codes: np.ndarray, k: int, border: tuple[int, int]) -> np.ndarray:
    """Weight codes ``(C_out, C_in, kh, kw)`` as the ``k`` x ``k`` kernel with them at ``border`` = (top,
    left) and code 0 around them."""
    (top, left), (kh, kw) = border, codes.shape[2:]
    return np.pad(codes, ((0, 0), (0, 0), (top, k - kh - top), (left, k - kw - left)))


def dilated_codes(codes: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    """Weight codes ``(C_out, C_in, kh, kw)`` of a conv with ``dilation`` (dh, dw) as the undilated kernel
    ``(C_out, C_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1)`` that computes it exactly: tap (i, j) at (dh * i,
    dw * j), code 0 (weight 0) between."""
    (dh, dw), (kh, kw) = dilation, codes.shape[2:]
    spread = np.zeros((*codes.shape[:2], dh * (kh - 1) + 1, dw * (kw - 1) + 1), dtype=codes.dtype)
    spread[:, :, ::dh, ::dw] = codes
    return spread


def dense_codes(codes: np.ndarray, groups: int) -> np.ndarray:
    """The weight codes ``(C_out, C_in, k, k)`` of a conv with ``groups`` groups whose codes are
    ``(C_out, C_in / groups, k, k)``: output channels of group ``g`` read input channels of group ``g``
    only, every other weight is code 0 (weight 0), so the dense conv computes the grouped one exactly."""
    if groups == 1:
        return codes
    c_out, c_group = codes.shape[:2]
    dense = np.zeros((c_out, c_group * groups, *codes.shape[2:]), dtype=codes.dtype)
    per_group = c_out // groups
    for g in range(groups):
        outputs = slice(g * per_group, (g + 1) * per_group)
        dense[outputs, g * c_group:(g + 1) * c_group] = codes[outputs]
    return dense


class _Lowering:
    """Appends nodes while tracking every tensor's shape, bound (largest |value|) and scale."""

    def __init__(self, model: nn.Module, name: str, input_shape: tuple[int, int, int], options: CompileOptions):
        self.model = name
        self.modules = dict(model.named_modules())
        self.input_shape, self.options = input_shape, options
        self.nodes: list = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.bounds: dict[str, int] = {}
        self.scales: dict[str, float] = {}
        self.raw: dict[str, ConvNode] = {}       # value tensors that are an accumulator with no stage yet
        self.sums: dict[str, AddNode] = {}       # value tensors that are a residual sum
        self.subsampled: dict[str, SubsampleNode] = {}      # value tensors that a shortcut subsampled
        self.signed: dict[str, int] = {}         # codes of a signed quantizer's halves (signed_codes): channels
        self.values: dict[fx.Node, _Value] = {}
        self.called: set[str] = set()
        self.names: set[str] = set(self.modules) | {"logits"}
        self.pooled: set[str] = set()            # max pooling modules that named a node

    def run(self, graph: fx.Graph) -> None:
        output = next(n for n in graph.nodes if n.op == "output")
        for node in _post_order(output):
            op = operation(node, self.modules, self.model)
            if op.kind not in _CONCAT_READERS and any(self.values[a].kind == "concat" for a in node.all_input_nodes):
                self.refuse(node, "reads a channel concatenation; a concatenation lowers only where nothing but a "
                            "BN, ReLU, ReLU6 / hardtanh(0, max), identity, dropout, pooling, flatten and further joins "
                            "stand between it and the activation quantizer of the next layer")
            try:
                self.values[node] = getattr(self, "_" + op.kind)(node, op)
            except ModelRuleError as e:      # a constant out of range: the fixed-point widths chosen for it
                o = self.options
                raise ValueError(f"{self.model}: {node.name!r}: {e} (compiled with --residual-frac-bits "
                                 f"{o.residual_frac_bits}, which widens every value after a residual addition, "
                                 f"--pool-frac-bits {o.pool_frac_bits}, --logit-frac-bits {o.logit_frac_bits})") from None

    # ------------------------------------------------------------------ helpers

    def refuse(self, node: fx.Node, why: str):
        raise Unsupported(self.model, node, why)

    def arg(self, node: fx.Node, i: int = 0) -> _Value:
        x = node.args[i] if len(node.args) > i else None
        if not isinstance(x, fx.Node):
            self.refuse(node, f"is applied to {x!r}, not to a tensor of the network")
        if self.values[x].kind == "size":
            self.refuse(node, "is applied to a tensor's size, not to a tensor")
        return self.values[x]

    def chain(self, node: fx.Node, x: _Value, **changes) -> _Value:
        """``x`` changed by a one-input operation ``node`` (whose size a reshape may read: not a consumer)."""
        sole = _sole_reader(node)
        if x.kind == "concat" and not sole:      # read twice: no part's producer folds one reader's stage
            changes["parts"] = tuple(replace(p, sole=False) for p in changes.get("parts", x.parts))
        return replace(x, sole=x.sole and sole, **changes)

    def shape(self, x: _Value) -> tuple[int, int, int]:
        if x.kind == "concat":
            shapes = [self.shape(part) for part in x.parts]
            c, h, w = sum(shape[0] for shape in shapes), *shapes[0][1:]
        else:
            c, h, w = self.shapes[x.tensor]
        if x.pooled == GLOBAL:
            return (c, 1, 1)
        if x.pooled:
            k, s, p = x.pooled
            return (c, ConvNode.out_side(h, k, s, p), ConvNode.out_side(w, k, s, p))
        for _, k, s, p in x.maxpools:
            h, w = ConvNode.out_side(h, k, s, p), ConvNode.out_side(w, k, s, p)
        return (c, h, w)

    def after_max_pooling(self, node: fx.Node, x: _Value, what: str) -> None:
        """Refuse ``what`` (an operation ``node``) on max-pooled values, naming the max pooling."""
        if x.maxpools:
            self.refuse(x.maxpools[0][0], f"is followed by {what} ({describe(node)}{location(node)}); max pooling "
                        "lowers only where nothing but ReLU, clip, identity, flatten or max pooling stands between "
                        "it and an activation quantizer")

    def once(self, node: fx.Node) -> None:
        if node.target in self.called:
            self.refuse(node, "is called a second time; a layer or quantizer compiles once (use one module per call)")
        self.called.add(node.target)

    def act_thresholds(self, act) -> np.ndarray:
        theta = act.theta.double().numpy() if act.method == "lcq" else None
        return stages.code_thresholds(act.alpha.item(), theta, level_scale(act.spec.bits, False))

    def requantize(self, conv: ConvNode, gain: np.ndarray, offset: np.ndarray, out_scale: float,
                   relu: bool = False) -> None:
        """Give the raw accumulator ``conv`` the stage ``round(gain / out_scale * x + offset / out_scale)``
        (then a ReLU where ``relu``). The stage multiplies by positive constants: a channel of negative
        ``gain`` has its weight codes negated instead (exact, as weight levels are symmetric), one of zero
        ``gain`` its weight codes zeroed (its accumulator is 0, so any positive multiplier gives ``offset``)."""
        out = conv.output
        flip, dead = (gain < 0)[:, None, None, None], (gain == 0)[:, None, None, None]
        conv.weight_codes = np.where(dead, 0, np.where(flip, -conv.weight_codes, conv.weight_codes)).astype(np.int8)
        ratio = np.where(gain == 0, _finest(gain), np.abs(gain)) / out_scale
        try:
            conv.stage = stages.requantize(ratio, offset / out_scale, self.bounds[out], relu)
        except stages.BiasRange:
            raise ValueError(f"cannot compile a {self.model}: layer {conv.name!r}: its bias (with its BN, up to "
                             f"{np.abs(offset).max():.3g}) is too large for the int64 requantize stage at output "
                             f"scale {out_scale:.3g} (its accumulator step {conv.scale:.3g}, "
                             f"{self.describe_step(conv)}): that step is far below a trained layer's; check those "
                             "parameters (retrain, or restore the checkpoint from a copy)") from None
        conv.out_scale = out_scale
        self.bounds[out] = conv.stage.bound(self.bounds[out])
        self.scales[out] = out_scale
        del self.raw[out]

    def rename(self, old: str, new: str) -> None:
        for table in (self.shapes, self.bounds, self.scales, self.raw):
            if old in table:
                table[new] = table.pop(old)

    def scoped(self, node: fx.Node, what: str, result: str) -> tuple[str, str]:
        """(node name, tensor name) for ``node`` in the module whose forward calls it: ``blocks.0.add``."""
        stack = node.meta.get("nn_module_stack") or {}
        scope = next(reversed(stack.values()), ("",))[0] if stack else ""
        prefix = f"{scope}." if isinstance(scope, str) and scope else ""
        return self.fresh(f"{prefix}{what}", f"{prefix}{result}")

    def fresh(self, *bases: str) -> tuple[str, ...]:
        """``bases`` with the first suffix (none, ``_1``, ``_2``, ...) that none of them has taken yet (now taken)."""
        k = 0
        while True:
            names = tuple(f"{base}_{k}" if k else base for base in bases)
            if not any(name in self.names for name in names):
                self.names |= set(names)
                return names
            k += 1

    def max_pools(self, pools: tuple, codes: str, out: str, minimum: bool = False) -> None:
        """A :class:`MaxPoolNode` per max pooling of ``pools`` (graph node, kernel, stride, padding), in order,
        from codes tensor ``codes``; each is named after its module (or ``max_pool`` in its scope) and writes
        a tensor of that name, the last one ``out``. ``minimum``: each takes the smallest code instead."""
        for i, (node, k, s, p) in enumerate(pools):
            if node.op != "call_module":
                name = self.scoped(node, "max_pool", "max_pool")[0]
            else:                                       # a module may pool several tensors
                name = self.fresh(node.target)[0] if node.target in self.pooled else node.target
                self.pooled.add(node.target)
            result = out if i == len(pools) - 1 else name
            self.nodes.append(MaxPoolNode(name, codes, result, k, s, p, minimum))
            self.shapes[result] = self.nodes[-1].out_shape(self.shapes[codes])
            codes = result

    def rectify(self, node: fx.Node, x: _Value) -> _Value:
        """``x`` after the ReLU ``node``, which a residual addition reads: the ReLU goes into the tensor,
        as the requantize stage (with a ReLU) of the conv or linear layer whose accumulator ``x`` is, or as
        the ReLU flag of the addition whose sum ``x`` is. Either must have no other reader."""
        conv, total = self.raw.get(x.tensor), self.sums.get(x.tensor)
        if conv is not None and x.sole and not (x.maxpools or x.pooled or x.cap < math.inf):
            out_scale = stages.fraction_scale([_finest(x.gain)], self.options.residual_frac_bits)
            self.requantize(conv, x.gain, x.offset, out_scale, relu=True)
        elif total is not None and x.sole and x.plain:
            total.relu = True
        else:
            self.refuse(node, "feeds a residual addition, but not right after a conv or linear layer (with its BN) "
                        "or an addition that nothing else reads; the ReLU of a residual stream lowers into one "
                        "of those")
        c = self.shapes[x.tensor][0]
        return _Value("values", x.tensor, np.full(c, self.scales[x.tensor]), np.zeros(c), relu=True, rectified=True)

    def feeds_addition(self, node: fx.Node) -> bool:
        """Whether ``node`` is a residual addition, or passes its input on to one (unchanged, or subsampled or
        padded with zero channels: an option-A shortcut)."""
        try:
            kind = operation(node, self.modules, self.model).kind
        except Unsupported:
            return False
        return kind == "add" or (kind in ("identity", "subsample", "pad") and any(self.feeds_addition(u)
                                                                                  for u in node.users))

    # ------------------------------------------------------------------ operations

    def _input(self, node: fx.Node, op: Op) -> _Value:
        first = next(n for n in node.graph.nodes if n.op == "placeholder")
        if node is not first:
            self.refuse(node, "is a second input; a compiled network has one input, the image")
        return _Value("image")

    def _act(self, node: fx.Node, op: Op) -> _Value:
        act, name = op.module, node.target
        if act.method == "fp":
            raise ValueError(f"cannot compile a {self.model}: activation {name!r} is not quantized; compile a model "
                             "trained with --method lcq/uniform")
        if not act.alpha.item() > 0:
            raise ValueError(f"cannot compile a {self.model}: activation {name!r} has a non-positive clip alpha "
                             f"{act.alpha.item()}")
        self.once(node)
        x = self.arg(node)
        if act.signed:
            return self.signed_codes(node, act, x)
        if x.kind == "image":
            pixels = torch.arange(256, dtype=torch.float64) / 255.0   # as the loader scales uint8 images
            table = act.codes(pixels).numpy().astype(np.uint8)
            # a flattened image is the vector of its pixels, which a linear layer reads with every row of the array
            # (as the H x W convolution over the image, its one channel would fill one row)
            flat = x.flat and self.input_shape[1:] != (1, 1)
            image = InputNode(name, self.input_shape, table, act.spec.bits, flat=flat)
            self.nodes.append(image)
            self.shapes[name] = image.tensor_shape
            return _Value("codes", name)
        if x.kind == "codes":
            self.refuse(node, "quantizes codes again; an activation quantizer reads values")
        t = self.act_thresholds(act)
        bits, shape = act.spec.bits, self.shape(x)
        if x.kind == "concat":
            joined = self.fresh(f"{name}.unpooled")[0] if x.maxpools else name
            parts = self.fresh(*(f"{joined}.{i}" for i in range(len(x.parts))))
            for part, codes in zip(x.parts, parts):
                self.codes_of(node, part, t, bits, codes)
            self.nodes.append(ConcatNode(self.scoped(x.concat, "cat", "cat")[0], parts, joined))
            self.shapes[joined] = (sum(self.shapes[p][0] for p in parts), *self.shapes[parts[0]][1:])
            self.max_pools(x.maxpools, joined, name)
        else:
            self.codes_of(node, x, t, bits, name)
        self.shapes[name] = shape
        return _Value("codes", name, flat=x.flat)

    def signed_codes(self, node: fx.Node, act: nn.Module, x: _Value) -> _Value:
        """The signed quantizer ``node`` of values ``x`` as the codes of its two halves: ``Q(x) = Q+(x) - Q+(-x)``,
        ``Q+`` its magnitude quantizer (an unsigned one of ``bits - 1`` bits and outer width ``b'_a - 1``, the same
        levels), exact as a signed quantizer is odd. Each half is an activate node of ``x`` (the negative one with
        the gain and offset negated; through a non-decreasing activation ``f`` before it, the thresholds ``t``
        taken back through it: ``f^-1(t)`` and ``-f^-1(-t)``), then each max pooling of ``x``: the negative half's
        takes the smallest code (``Q+(-max v) = min Q+(-v)``), and the codes tensor ``node.target`` joins them,
        positive channels first: a layer reading it takes ``[W, -W]`` as weights (:meth:`layer`). So the hardware,
        whose codes are unsigned, runs a signed activation at twice the layer's MACs. Of an average pooling, each
        half is a pool node (the negative one pooling ``-v``)."""
        name, bits = node.target, act.spec.bits
        if bits < 3:
            self.refuse(node, f"is a signed {bits}-bit activation quantizer (codes -1, 0, 1); the accelerator runs a "
                        "signed activation as its positive and negative halves, of bits - 1 bits each, and codes "
                        "have at least 2: give the layers it feeds 3 bits or more (--layer-bits NAME=W/3)")
        if x.kind != "values" or x.relu or (x.pooled and not x.linear_mean) or x.cap < math.inf:
            self.refuse(node, "is a signed activation quantizer of an input the accelerator quantizes only unsigned "
                        "(a concatenation, a ReLU or a clip, or an average pooling of those); a signed one reads the "
                        "output of a conv or linear layer, a BN or an addition (average pooled or not), or a "
                        "non-decreasing activation of those (LeakyReLU, tanh, ...; max pooled or not)")
        theta = act.theta.double().numpy() if act.method == "lcq" else None
        t = stages.code_thresholds(act.alpha.item(), theta, level_scale(bits, True))
        c = self.shapes[x.tensor][0]
        halves = self.fresh(f"{name}.positive", f"{name}.negative")
        # Q+(f(v)) counts t <= f(v), v >= f^-1(t); Q+(-f(v)) counts t <= -f(v), -v >= -f^-1(-t)
        rows = np.broadcast_to(t, (c, len(t)))
        back = (x.curve.inverse(rows), -x.curve.inverse(-rows)) if x.curve is not None else (t, t)
        for half, sign, t_half in zip(halves, (1, -1), back):
            if x.pooled:                    # each half the pooling of its own sign: Q+(-mean v) of mean(-v)
                self.codes_of(node, replace(x, gain=sign * x.gain, offset=sign * x.offset), t_half, bits - 1, half)
                continue
            stage = stages.thresholds(sign * x.gain, sign * x.offset, t_half, self.bounds[x.tensor], bits - 1)
            codes = self.fresh(f"{half}.unpooled")[0] if x.maxpools else half
            self.nodes.append(ActivateNode(codes, x.tensor, codes, stage))
            self.shapes[codes] = self.shapes[x.tensor]
            # Q+(max x) = max Q+(x), and Q+(-max x) = min Q+(-x): Q+ is non-decreasing
            self.max_pools(x.maxpools, codes, half, minimum=half == halves[1])
        self.nodes.append(ConcatNode(self.fresh(f"{name}.halves")[0], halves, name))
        self.shapes[name] = (2 * c, *self.shape(x)[1:])
        self.signed[name] = c
        return _Value("codes", name, flat=x.flat)

    def codes_of(self, node: fx.Node, x: _Value, t: np.ndarray, bits: int, out: str) -> None:
        """Values ``x`` through the thresholds ``t`` of the ``bits``-bit quantizer ``node`` (those above ``x``'s clip
        never reached) into codes tensor ``out``: averaged first by a pool node where ``x`` is pooled, else the
        thresholds fold into the output stage of the layer whose accumulator ``x`` is where nothing else reads it
        (else an activation node), then ``x``'s max poolings."""
        t = np.where(t > x.cap, np.inf, t)
        if x.curve is not None:             # f(v) >= t where v >= f^-1(t)
            t = x.curve.inverse(np.broadcast_to(t, (self.shapes[x.tensor][0], len(t))))
        if x.pooled:
            _, h, w = self.shapes[x.tensor]
            frac, window = self.options.pool_frac_bits, x.pooled != GLOBAL
            self.check_pool_unit(node, x, t, frac)
            summed = x.pooled[0] ** 2 if window else h * w
            padding = x.pooled[2]
            sign, relu, off, stage, cap, outside = stages.pool_constants(
                x.gain, x.offset, t, summed, frac, self.bounds[x.tensor], bits, x.cap, x.relu, padded=padding > 0)
            pool = (out, x.tensor, out, sign, relu, off, frac, stage)
            self.nodes.append(AvgPoolNode(*pool, cap=cap, kernel=x.pooled[0], stride=x.pooled[1], padding=padding,
                                          outside=outside) if window else PoolNode(*pool, cap=cap))
            self.shapes[out] = self.shape(x)
            return
        codes, full = self.fresh(f"{out}.unpooled")[0] if x.maxpools else out, self.shapes[x.tensor]
        stage = stages.thresholds(x.gain, x.offset, t, self.bounds[x.tensor], bits)
        conv = self.raw.get(x.tensor)
        if conv is not None and x.sole:             # fold into the layer's output stage
            conv.stage, conv.out_scale, conv.output = stage, None, codes
            for table in (self.shapes, self.bounds, self.scales, self.raw):
                table.pop(x.tensor, None)
        else:
            self.nodes.append(ActivateNode(codes, x.tensor, codes, stage))
        self.shapes[codes] = full
        self.max_pools(x.maxpools, codes, out)

    def check_pool_unit(self, node: fx.Node, x: _Value, t: np.ndarray, frac: int) -> None:
        """Refuse pooling ``x`` into quantizer ``node`` where a unit of the pooled sum (``2^-frac`` of the
        accumulator step times the BN scale, ``|gain|``) is coarser than the quantizer's first code threshold
        ``t[0]``: the BN offset, rounded to that unit, would decide codes."""
        gain = np.abs(x.gain[x.gain != 0])
        if not gain.size or t[0] * 2.0**frac / gain.max() >= 1:
            return
        need = frac + math.ceil(math.log2(gain.max() / t[0]))
        fix = (f"compile with --pool-frac-bits {need} (or more)" if need <= FRAC_BITS[1] else
               f"no --pool-frac-bits up to {FRAC_BITS[1]} is fine enough; check {node.target}.alpha, the clip alpha "
               f"of the quantizer that feeds {x.tensor!r}, and {x.tensor!r}'s weights and BN (scales that far off "
               "are no trained model's)")
        raise ValueError(f"cannot compile a {self.model}: {describe(node)}{location(node)}: the average pooling of "
                         f"{x.tensor!r} (with its BN) sums in units of {gain.max() / 2.0**frac:.3g} (--pool-frac-bits "
                         f"{frac} below its accumulator step times the BN scale), coarser than {node.target!r}'s first "
                         f"code threshold {t[0]:.3g}: the rounding would decide its codes; {fix}")

    def _conv(self, node: fx.Node, op: Op) -> _Value:
        return self.layer(node, op.module, "conv")

    def _linear(self, node: fx.Node, op: Op) -> _Value:
        return self.layer(node, op.module, "linear")

    def square_window(self, node: fx.Node, layer: nn.Conv2d) -> tuple[int, int, int, tuple[int, int]]:
        """(kernel, stride, padding, (top, left)) of the square conv that runs conv ``layer`` exactly: its
        own, or for a kh x kw kernel the k x k one (k the larger side) with the kernel at ``(top, left)`` and
        zeros around it, where the output geometry is the same (odd sides padded by side // 2, as "same"
        convs are, or any sides that differ by an even number with padding to match). A dilated kernel counts
        as its spread-out one (``dilated_codes``): kh = dh * (kh - 1) + 1."""
        (kh, kw), (sh, sw), padding = layer.kernel_size, layer.stride, layer.padding
        (kh, kw) = (d * (side - 1) + 1 for d, side in zip(layer.dilation, (kh, kw)))
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if not (kh % 2 and kw % 2):
                self.refuse(node, f"has padding 'same' with a {kh}x{kw} kernel, whose even side PyTorch pads by one "
                            "more on one side; the accelerator pads both sides alike: use odd kernel sides")
            padding = (kh // 2, kw // 2)
        if layer.padding_mode != "zeros" and padding != (0, 0):
            self.refuse(node, f"pads in mode {layer.padding_mode!r}; the accelerator pads with zeros: use "
                        "padding_mode='zeros' (the default)")
        if sh != sw:
            self.refuse(node, f"has stride {layer.stride}; the accelerator runs one stride for both sides: use "
                        "stride=s (or (s, s))")
        (ph, pw), k = padding, max(kh, kw)
        if kh == kw and ph != pw:
            self.refuse(node, f"has padding {padding}; the accelerator pads both sides of a square kernel alike: use "
                        "padding=p (or (p, p))")
        top, left = (k - kh) // 2, (k - kw) // 2
        if (k - kh) % 2 or (k - kw) % 2 or ph + top != pw + left:
            self.refuse(node, f"has a {kh}x{kw} kernel, stride {layer.stride} and padding {padding}; the accelerator "
                        "runs square convs, and a non-square kernel as the square one with zeros around it, which "
                        "needs a square stride and the same output geometry (odd sides padded by side // 2, as "
                        "'same' convs are)")
        pad = ph + top
        if pad > k // 2:
            self.refuse(node, f"pads by {pad}, more than kernel // 2 = {k // 2}; the accelerator pads each side "
                        "by at most the kernel's side // 2")
        return k, sh, pad, (top, left)

    def layer(self, node: fx.Node, layer: nn.Module, kind: str) -> _Value:
        """A ConvNode without output stage; its raw accumulator is tensor ``node.target``."""
        name = node.target
        self.once(node)
        x = self.arg(node)
        if x.kind != "codes":
            self.refuse(node, "reads a tensor that no activation quantizer turned into codes")
        c, full_h, full_w = self.shapes[x.tensor]
        signed = x.tensor in self.signed                # (the codes of a signed quantizer's two halves)
        c = self.signed.get(x.tensor, c)
        border, tile = (0, 0), 1
        # A layer reading an average of codes in windows that tile the map (kernel = stride, no padding) takes its
        # own geometry on the pooled map, each tap then spread over a window of the codes (below); one reading
        # overlapping windows or the whole map's average runs as a conv over the codes (pooled_reader).
        side = _tiling_window(x.pooled, full_h, full_w)
        h, w = full_h // side, full_w // side
        if x.pooled and side == 1:
            tile, stride, pad, weight, out_shape = self.pooled_reader(node, layer, kind, x.pooled, c, h, w)
            kind, k = "conv", 1
        elif kind == "conv":
            k, stride, pad, border = self.square_window(node, layer)
            if min(h, w) + 2 * pad < k:
                spread = f" at dilation {layer.dilation} ({k}x{k} spread out)" if layer.dilation != (1, 1) else ""
                self.refuse(node, "has a {}x{} kernel{}, larger than its {}x{} input padded by {}; use a kernel "
                            "that fits the padded map".format(*layer.kernel_size, spread, h, w, layer.padding))
            out_shape = (layer.out_channels, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
            weight = layer.weight
        elif (h, w) == (1, 1):
            k, stride, pad, out_shape = 1, 1, 0, (layer.out_features, 1, 1)
            weight = layer.weight[:, :, None, None]
        else:                   # on a flattened map: the h x w convolution over it, weights (out, c, h, w)
            if not x.flat:
                self.refuse(node, f"reads a {c}x{h}x{w} map, not flattened; a linear layer reads a vector: flatten "
                            "the map first (torch.flatten(x, 1)), or pool it globally")
            if layer.in_features != c * h * w:
                self.refuse(node, f"expects {layer.in_features} inputs, its input has {c * h * w} ({c}x{h}x{w})")
            if h != w or h > MAX_KERNEL:
                self.refuse(node, f"reads a flattened {c}x{h}x{w} map; the accelerator runs it as a {h}x{w} "
                            f"convolution over the map, whose kernel must be square and at most {MAX_KERNEL} wide: "
                            "make the map square (and smaller: pool it, or a strided conv)")
            kind, k, stride, pad, out_shape = "conv", h, 1, 0, (layer.out_features, 1, 1)
            weight = layer.weight.reshape(layer.out_features, c, h, w)
        groups = getattr(layer, "groups", 1)
        if weight.shape[1] * groups != c:
            self.refuse(node, f"expects {weight.shape[1] * groups} input channels, its input has {c}")
        wq, act = layer.wq, self.modules[x.tensor]
        if wq.method == "fp":
            raise ValueError(f"cannot compile a {self.model}: layer {name!r} has full-precision weights; compile a "
                             "quantized model")
        if not wq.alpha.item() > 0:
            raise ValueError(f"cannot compile a {self.model}: layer {name!r}: its weight clip {name}.wq.alpha = "
                             f"{wq.alpha.item():.3g} must be positive (a trained quantizer's is): retrain, or restore "
                             "the checkpoint from a copy")
        sigma = wq.normalization(weight)[1].item()
        if not sigma > 0:
            why = "its weights are all equal, so" if sigma == 0 else "its weights are not all finite, so"
            raise ValueError(f"cannot compile a {self.model}: layer {name!r}: {why} the weight normalization's "
                             f"sigma_w (LWN or standardization) is {sigma:.3g}, where it must be positive: retrain, "
                             "or restore the checkpoint from a copy")
        codes = dense_codes(wq.codes(weight).numpy().astype(np.int8), groups)
        codes = square_codes(dilated_codes(codes, getattr(layer, "dilation", (1, 1))), k, border)
        if tile > 1:                    # each position of the map a tap of the layer's weights
            codes, k = np.tile(codes, (1, 1, tile, tile)), tile
        if side > 1:                    # each tap over its window of the codes: the same sums, scale / side^2
            codes, k, stride, pad = codes.repeat(side, axis=2).repeat(side, axis=3), k * side, stride * side, pad * side
            kind, tile = "conv", side
            if k > MAX_KERNEL:
                self.refuse(node, f"reads the average of {side}x{side} windows of codes, which it runs as its kernel "
                            f"spread over the windows: {k}x{k}, wider than {MAX_KERNEL}; pool further first (or use "
                            "a smaller kernel)")
        abits, outer_abits = act.spec.bits - signed, act.spec.outer_bits - signed
        conv = ConvNode(
            name=name, input=x.tensor, output=name, kind=kind, in_shape=((1 + signed) * c, full_h, full_w),
            out_shape=out_shape,
            kernel=k, stride=stride, padding=pad, wbits=wq.spec.bits, abits=abits,
            outer_wbits=wq.spec.outer_bits, outer_abits=outer_abits,
            mac=mac_kind(wq.spec.bits, abits, self.options.max_lut_entries),
            weight_codes=np.concatenate([codes, -codes], axis=1) if signed else codes,
            w_levels=wq.levels().numpy().astype(np.int64), a_levels=act.levels().numpy().astype(np.int64),
            scale=wq.step(weight) * act.step() / tile**2, out_scale=None, signed_input=signed)
        conv.out_scale = conv.scale
        self.nodes.append(conv)
        self.shapes[name], self.bounds[name], self.scales[name] = out_shape, conv.acc_bound, conv.scale
        self.raw[name] = conv
        bias = layer.bias.double().numpy() if layer.bias is not None else np.zeros(out_shape[0])
        value = _Value("values", name, np.full(out_shape[0], conv.scale), bias, sole=len(node.users) == 1)
        if len(node.users) > 1 and any(self.feeds_addition(u) for u in node.users):   # a residual stream's start
            out_scale = stages.fraction_scale([conv.scale], self.options.residual_frac_bits)
            self.requantize(conv, value.gain, bias, out_scale)
            value = _Value("values", name, np.full(out_shape[0], out_scale), np.zeros(out_shape[0]))
        return value

    def pooled_reader(self, node: fx.Node, layer: nn.Module, kind: str, pooled: tuple[int, int, int], c: int, h: int,
                      w: int) -> tuple[int, int, int, torch.Tensor, tuple[int, int, int]]:
        """``(side, stride, padding, weight, out_shape)`` of a linear layer or 1 x 1 conv ``node`` that reads the
        average pooling ``pooled`` (:data:`GLOBAL`, or a window's kernel, stride and padding) of a c x h x w map of
        codes (an activation whose output the average pools, quantized before the pooling): it runs as the side x
        side conv over the codes (the map's side, or the window's) at the pooling's stride and padding, each tap its
        own weights (out, c, 1, 1), the accumulator the sum the average divides by side^2 (zeros outside the map
        counted, as count_include_pad=True). The same arithmetic; no pooling step."""
        what = "globally pooled tensor" if pooled == GLOBAL else "tensor average pooled in windows"
        if kind == "conv" and (layer.kernel_size, layer.stride, layer.padding, layer.groups) != ((1, 1), (1, 1),
                                                                                             (0, 0), 1):
            self.refuse(node, f"reads a {what} with a kernel larger than 1 x 1 (or groups, stride, padding); a layer "
                        "reads the average of codes as one conv over them: use a 1 x 1 conv"
                        + (" or a linear layer" if pooled == GLOBAL else ", or windows that tile the map (kernel = "
                           "stride, no padding, dividing its sides: LeNet's AvgPool2d(2)), which any layer reads"))
        weight = layer.weight if kind == "conv" else layer.weight[:, :, None, None]
        if kind == "linear" and layer.in_features != c:
            self.refuse(node, f"expects {layer.in_features} inputs, its input has {c}")
        if pooled != GLOBAL:
            k, s, p = pooled
            if kind == "linear":
                self.refuse(node, "reads a tensor average pooled in windows as a vector; a layer reads the average "
                            "of codes as one conv over them: read it with a 1 x 1 conv, or pool globally")
            return k, s, p, weight, (weight.shape[0], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        if h != w or h > MAX_KERNEL:
            self.refuse(node, f"reads the average of a {c}x{h}x{w} map of codes, which runs as a {h}x{w} "
                        f"convolution over the map, whose kernel must be square and at most {MAX_KERNEL} wide: make "
                        "the map square (and smaller: pool it, or a strided conv)")
        return h, 1, 0, weight, (weight.shape[0], 1, 1)

    def _bn(self, node: fx.Node, op: Op) -> _Value:
        """BN ``node`` folded into the gain and offset of its input, a concatenation's into each part's (its
        channels of the BN: DenseNet's BN of the joined features)."""
        x, bn = self.arg(node), op.module
        self.check_affine_input(node, x, "a BN folds there: put it right after the conv, linear layer or addition "
                                "whose output it normalizes (conv -> BN -> ReLU)")
        if isinstance(bn, nn.BatchNorm1d) and x.flat:
            self.refuse(node, "normalizes each feature of a flattened {}x{}x{} map; a BN folds per channel: put a "
                        "BatchNorm2d before the flatten".format(*self.shape(x)))
        return self.affine(node, x, *self.bn_constants(node, bn, self.shape(x)[0]), "the BN")

    def _constant(self, node: fx.Node, op: Op) -> _Value:
        return _Value("constant")                       # read by the scalings alone (capture.operation)

    def _scale(self, node: fx.Node, op: Op) -> _Value:
        """A constant factor ``node`` (one, or one a channel) of a conv's, linear layer's, BN's or addition's
        output: folded into its gain and offset as a BN without statistics (:meth:`affine`). After a ReLU, clip
        or max pooling, a positive number folds in before them, as it commutes with them (so an average pooling
        may follow, and the quantizer after it is unsigned, as lcq_train's plan makes it); any other factor after
        an activation (a parameter, whose sign training may change: lcq_train quantizes it signed) is the end of
        its curve (:meth:`bn_after`)."""
        x = self.arg(node, op.operand)
        self.check_affine_input(node, x, "a constant factor folds there: multiply the output of a conv, linear "
                                "layer, BN or addition (or of its activation)")
        c = self.shape(x)[0]
        if len(op.factor) not in (1, c) or (len(op.factor) > 1 and x.flat):
            self.refuse(node, f"has {len(op.factor)} factors for {c} channels" + (
                " of a flattened map" if x.flat else "") + "; a factor is one number or one a channel (C, 1, 1)")
        factor = np.broadcast_to(np.asarray(op.factor, dtype=np.float64), c)
        parts = x.parts or (x,)
        number = not isinstance(node.args[1 - op.operand], fx.Node)     # (lcq_train: a parameter may be < 0)
        if number and factor[0] > 0 and any(p.relu or p.maxpools for p in parts) and all(
                p.curve is None for p in parts):
            scaled, first = [], 0
            for p in parts:
                own = factor[first:first + self.shape(p)[0]]
                first += own.size
                scaled.append(replace(p, gain=own * p.gain, offset=own * p.offset, cap=p.cap * own[0], folded=True))
            return self.chain(node, x, parts=tuple(scaled)) if x.parts else self.chain(node, scaled[0])
        return self.affine(node, x, factor, np.zeros(c), np.zeros(c), "the factor")

    def check_affine_input(self, node: fx.Node, x: _Value, fix: str) -> None:
        """Refuse a BN or constant factor ``node`` where its input ``x`` is not a conv's or linear layer's output,
        an addition's, or an activation, max pooling or average pooling without a ReLU of one (a
        concatenation's parts each); ``fix`` says where it folds."""
        for part in x.parts or (x,):
            if part.kind != "values" or (part.pooled and not part.linear_mean):
                self.refuse(node, "does not follow a conv or linear layer or an addition (or an activation, a max "
                            f"pooling, or an average pooling without a ReLU, of one); {fix}"
                            + (", or right after a join of those" if x.parts else ""))

    def affine(self, node: fx.Node, x: _Value, inv: np.ndarray, mean: np.ndarray, beta: np.ndarray,
               what: str) -> _Value:
        """``inv * (x - mean) + beta`` a channel (BN ``node``, or a constant factor: ``what``) folded into the
        gain and offset of ``x``, or a concatenation's parts each; after an activation or a max pooling the
        end of its curve (:meth:`bn_after`)."""
        if any(p.relu or p.curve is not None or p.maxpools for p in x.parts or (x,)):
            return self.bn_after(node, x, inv, beta - inv * mean, what)
        if any(p.pooled and p.pooled[2] for p in x.parts or (x,)) and np.any(beta - inv * mean):
            self.refuse(node, f"shifts an average pooling with padding, whose zeros outside the map the shift does "
                        f"not reach (it folds only into what the pooling averages): put {what} before the pooling")
        if not x.parts:
            y = self.chain(node, x, gain=inv * x.gain, offset=inv * (x.offset - mean) + beta, folded=True)
            if (x.tensor in self.raw and x.sole and not x.pooled and len(node.users) > 1
                    and any(map(self.feeds_addition, node.users))):
                # a residual stream's start after its BN (MobileNetV2's linear bottleneck, which the next block
                # reads too): the layer writes conv + BN on the stream's scale
                out_scale = stages.fraction_scale([_finest(y.gain)], self.options.residual_frac_bits)
                self.requantize(self.raw[x.tensor], y.gain, y.offset, out_scale)
                c = self.shapes[x.tensor][0]
                return _Value("values", x.tensor, np.full(c, out_scale), np.zeros(c))
            return y
        parts, first = [], 0
        for part in x.parts:
            own = slice(first, first + self.shape(part)[0])
            parts.append(replace(part, gain=inv[own] * part.gain, offset=inv[own] * (part.offset - mean[own])
                                 + beta[own], folded=True))
            first = own.stop
        return self.chain(node, x, parts=tuple(parts))

    def bn_after(self, node: fx.Node, x: _Value, scale: np.ndarray, shift: np.ndarray, what: str) -> _Value:
        """BN or constant factor ``node`` (``what``: ``scale * y + shift`` a channel) after an activation or a max
        pooling of ``x`` (a concatenation's parts each their channels): the end of its curve (:mod:`compiler.curves`),
        through which the quantizer after it takes its thresholds back. A channel of negative scale reverses the
        order of its values: its input is negated (gain and offset) and its curve mirrored, ``s f(v) = |s|
        (-f(-(-v)))``; after a max pooling that would be a minimum, so there it is refused, naming the channel."""
        flip = scale < 0
        if flip.any() and any(p.maxpools for p in x.parts or (x,)):
            k = np.flatnonzero(flip)[0]
            self.refuse(node, f"follows a max pooling, and scales channel {k} by {scale[k]:.3g} < 0, which would turn "
                        f"the maximum into a minimum: put {what} before the max pooling (right after the conv, linear "
                        "layer or addition: conv -> BN -> activation) and retrain")
        dipping = next((p.curve for p in x.parts or (x,) if p.curve is not None and p.curve.dips), None)
        if dipping is not None:
            self.refuse(node, f"follows {dipping.name}, which dips below zero before it rises: the quantizer after "
                        f"{what} would need thresholds inside the dip, which no one input starts; put {what} before "
                        f"the activation (conv -> BN -> {dipping.name}) and retrain")
        affine = Curve("affine", describe(node), (np.abs(scale), shift))
        parts, first = [], 0
        for p in x.parts or (x,):
            c = self.shape(p)[0]
            own, mask = affine.channels(first, c), flip[first:first + c]
            first += c
            before = p.curve
            if p.relu or p.cap < math.inf:          # the ReLU or clip first
                clip = Curve("hardtanh", "ReLU", (0.0, p.cap))
                before = clip if before is None else Curve("then", f"{before.name} then ReLU", (before, clip))
            if before is not None and mask.any():
                before = Curve("mirrored", before.name, (before, mask))
            curve = own if before is None else Curve("then", f"{before.name} then {own.name}", (before, own))
            sign = np.where(mask, -1.0, 1.0)
            parts.append(replace(p, curve=curve, relu=False, cap=math.inf, gain=sign * p.gain, offset=sign * p.offset))
        return self.chain(node, x, parts=tuple(parts)) if x.parts else self.chain(node, parts[0])

    def bn_constants(self, node: fx.Node, bn: nn.Module, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scale, mean, beta)`` of BN ``node`` (module ``bn``) on ``c`` channels: ``bn(x) = scale * (x - mean)
        + beta``; a BN no fixed stage computes (batch statistics, a damaged or diverged one, a division by zero)
        refused."""
        if bn.running_var is None or bn.running_mean is None:
            self.refuse(node, "tracks no running statistics (track_running_stats=False): PyTorch normalizes each "
                        "batch by its own statistics, in eval mode too, which no fixed stage computes; construct it "
                        "with track_running_stats=True (the default) and retrain")
        if bn.num_features != c:
            self.refuse(node, f"has {bn.num_features} channels, its input {c}")
        var, mean = bn.running_var.double().numpy(), bn.running_mean.double().numpy()
        if not (np.all(var >= 0) and np.all(np.isfinite(var)) and np.all(np.isfinite(mean))):
            self.refuse(node, "has running statistics no folding can use (a variance below 0, or one not finite, or "
                        "a mean not finite: a damaged file, or a training that diverged or overflowed float32): "
                        "retrain the model (a lower learning rate, if it diverged), or restore its checkpoint from "
                        "a copy")
        zero = np.flatnonzero(var + bn.eps <= 0)
        if zero.size:
            self.refuse(node, f"divides by zero: channel {zero[0]} has running variance {var[zero[0]]:g} and eps "
                        f"{bn.eps:g}; construct it with eps > 0 (the default 1e-5)")
        weight = bn.weight.double().numpy() if bn.weight is not None else np.ones(c)
        beta = bn.bias.double().numpy() if bn.bias is not None else np.zeros(c)
        return weight / np.sqrt(var + bn.eps), mean, beta

    def _relu(self, node: fx.Node, op: Op) -> _Value:
        x = self.arg(node)
        if x.kind == "concat":                          # each part's ReLU
            return self.chain(node, x, parts=tuple(map(_relu_of_part, x.parts)))
        if x.kind == "codes" or x.rectified or x.pooled_relu:
            return x                                    # codes are never negative; rectified values neither
        if x.kind == "values" and x.linear_mean:
            return self.chain(node, x, pooled_relu=True)
        if x.kind != "values" or x.pooled:
            self.refuse(node, "is applied to the raw image or after a ReLU and a pooling; ReLU the layer's output "
                        "once, before or after the pooling")
        if any(self.feeds_addition(u) for u in node.users):
            if x.curve is not None:
                self.refuse(node, f"feeds a residual addition after {x.curve.name}; an addition reads a conv's, BN's "
                            "or addition's output, or the ReLU of one")
            return self.rectify(node, x)
        return self.chain(node, x, relu=True)

    def _curve(self, node: fx.Node, op: Op) -> _Value:
        """A non-decreasing activation ``node`` (:mod:`compiler.curves`) of a conv's, BN's or addition's output
        (max pooled or not; a concatenation's parts each their channels of it): the quantizer after it takes its
        thresholds back through it (:meth:`codes_of`, :meth:`signed_codes`)."""
        x = self.arg(node)
        if x.kind != "concat":
            return self.chain(node, self.curved(node, x, op.curve))
        parts, first = [], 0
        for p in x.parts:
            c = self.shape(p)[0]
            parts.append(self.curved(node, p, op.curve.channels(first, c)))
            first += c
        return self.chain(node, x, parts=tuple(parts))

    def curved(self, node: fx.Node, x: _Value, curve) -> _Value:
        """``x`` through ``curve`` (activation ``node``); refused where ``x`` is not a conv's, BN's or addition's
        output, or where the curve's per-channel numbers (a PReLU's slopes) are not one or one a channel."""
        if x.kind != "values" or x.pooled or x.relu or x.curve is not None or x.rectified:
            what = ("the raw image" if x.kind == "image" else
                    "codes, pooled values or the output of a ReLU, clip or another activation")
            self.refuse(node, f"is applied to {what}; an activation folds into the thresholds of the quantizer "
                        "after it where it reads a conv's, BN's or addition's output (max pooled or not): one "
                        "activation between a layer and its quantizer")
        c = self.shape(x)[0]
        if curve.kind == "leaky" and np.size(curve.params[0]) not in (1, c):
            self.refuse(node, f"has {np.size(curve.params[0])} slopes for {c} channels")
        return replace(x, curve=curve)

    def _clip(self, node: fx.Node, op: Op) -> _Value:
        x = self.arg(node)
        if x.kind == "concat":                          # each part's clip
            return self.chain(node, x, parts=tuple(replace(p, relu=True, cap=min(p.cap, op.cap)) for p in x.parts))
        if x.kind != "values" or x.pooled:
            self.refuse(node, "clips the image, codes or a pooled tensor; it folds only into the thresholds of an "
                        "activation quantizer after a conv, BN or addition")
        return self.chain(node, x, relu=True, cap=min(x.cap, op.cap))

    def pooling_input(self, node: fx.Node, what: str) -> _Value:
        """The input of ``node``, a global or windowed average pooling (``what``): a conv's, BN's or addition's
        output, or a ReLU's (or ReLU6's) of one, or a concatenation of those, else refused."""
        x = self.arg(node)
        self.after_max_pooling(node, x, what)
        if x.kind == "concat":
            for part in x.parts:
                self.check_pooling_input(node, part, what)
        else:
            self.check_pooling_input(node, x, what)
        return x

    def check_pooling_input(self, node: fx.Node, x: _Value, what: str) -> None:
        """Refuse pooling ``node`` (``what``) of ``x`` unless it is a conv's, BN's or addition's output, or a
        ReLU's (or ReLU6's) of one."""
        self.after_max_pooling(node, x, what)
        unit = "the pooling unit averages a conv's, BN's or addition's outputs, or their ReLU (or ReLU6)"
        if x.kind == "image":
            self.refuse(node, f"pools the input image; {unit}: give the network smaller images, or pool after the "
                        "first conv")
        if x.kind == "values" and x.curve is not None:
            self.refuse(node, f"pools the output of {x.curve.name}, which the pooling unit cannot apply position by "
                        f"position; {unit}: use a ReLU before the pooling (or ReLU6), or a max pooling or a conv with "
                        "stride instead of it")
        if x.kind != "values" or x.pooled:
            self.refuse(node, f"pools codes or a pooled tensor; {unit} on their way to the next activation "
                        "quantizer: pool once, between the layer (conv -> [BN ->] [ReLU ->]) and the quantizer")

    def _pool(self, node: fx.Node, op: Op) -> _Value:
        x = self.arg(node)
        if x.kind == "codes" and not (x.pooled or x.flat):
            return self.chain(node, x, pooled=GLOBAL)       # the codes' average, which a layer reads: layer()
        return self.averaged(node, self.pooling_input(node, "global average pooling"), GLOBAL)

    def _avgpool(self, node: fx.Node, op: Op) -> _Value:
        k, s, p = op.window
        x = self.arg(node)
        conv = self.raw.get(x.tensor) if x.kind == "values" else None
        if (conv is not None and x.sole and conv.kind == "conv" and conv.stage is None and p == 0
                and (conv.kernel, conv.stride, conv.padding) == (1, 1, 0) and min(conv.out_shape[1:]) >= k
                and not (x.relu or x.curve is not None or x.maxpools or x.pooled)):
            return self.pooled_pointwise(node, conv, x, k, s)
        if x.kind == "codes" and not (x.pooled or x.flat):
            # (the codes of an activation, or of a max pooling, quantized before the pooling: the layer reading the
            # average runs as one conv over them; one window over the whole map is _pool's)
            _, h, w = self.shape(x)
            if min(h, w) + 2 * p < k:
                self.refuse(node, f"has a {k}x{k} window, larger than its {h + 2 * p}x{w + 2 * p} input")
            return self.chain(node, x, pooled=GLOBAL if k == h == w and p == 0 else (k, s, p))
        x = self.pooling_input(node, "average pooling")
        _, h, w = self.shape(x)
        if min(h, w) + 2 * p < k:
            self.refuse(node, f"has a {k}x{k} window, larger than its {'padded ' if p else ''}{h + 2 * p}x{w + 2 * p} "
                        "input")
        # (one window over the whole map, F.avg_pool2d(x, 8) on an 8 x 8 map: the global average pooling)
        return self.averaged(node, x, GLOBAL if k == h == w and p == 0 else (k, s, p))

    def pooled_pointwise(self, node: fx.Node, conv: ConvNode, x: _Value, k: int, s: int) -> _Value:
        """The k x k average pooling ``node`` at stride ``s`` of a 1 x 1 conv's output ``x`` (its BN folded or
        not, nothing else between; DenseNet's transition) as one conv: k x k at stride s, each tap the 1 x 1
        weights, its accumulator the sum of the k^2 the pooling averages (its scale 1 / k^2 of theirs). The same
        MACs, and no pooled tensor to store."""
        h, w = conv.out_shape[1:]
        conv.kernel, conv.stride = k, s
        conv.weight_codes = np.tile(conv.weight_codes, (1, 1, k, k))
        conv.out_shape = (conv.out_shape[0], (h - k) // s + 1, (w - k) // s + 1)
        conv.scale = conv.out_scale = conv.scale / k**2
        self.shapes[conv.output], self.bounds[conv.output] = conv.out_shape, conv.acc_bound
        self.scales[conv.output] = conv.scale
        return self.chain(node, x, gain=x.gain / k**2)

    def averaged(self, node: fx.Node, x: _Value, window: tuple[int, int]) -> _Value:
        """``x`` averaged by ``node`` over ``window`` (:data:`GLOBAL`, or kernel and stride): a concatenation's
        parts each (the average of a channel is its part's)."""
        if x.kind == "concat":
            return self.chain(node, x, parts=tuple(replace(p, pooled=window) for p in x.parts))
        return self.chain(node, x, pooled=window)

    def _maxpool(self, node: fx.Node, op: Op) -> _Value:
        x = self.arg(node)
        if x.kind not in ("values", "concat") or x.pooled or any(p.pooled for p in x.parts):
            self.refuse(node, "max pools the image, codes or a globally pooled tensor; max pooling lowers between a "
                        "conv, BN or addition and the activation quantizer of the next layer")
        c, h, w = self.shape(x)
        if op.window is None:                       # the global maximum: one window, the whole (square) map
            if h != w or h > MAX_KERNEL:
                self.refuse(node, f"takes the maximum of a {h}x{w} map; the max-pooling unit's windows are square "
                            f"and at most {MAX_KERNEL} wide: make the map square (and pool it down with "
                            "MaxPool2d(2) first, if larger)")
        k, s, p = op.window or (h, 1, 0)
        if min(h, w) + 2 * p < k:
            self.refuse(node, f"has a {k}x{k} window, larger than its padded {h + 2 * p}x{w + 2 * p} input")
        return self.chain(node, x, maxpools=x.maxpools + ((node, k, s, p),))

    def _subsample(self, node: fx.Node, op: Op) -> _Value:
        """``x[:, :, ::s, ::s]`` (``op.window``'s stride): of a residual stream that an addition reads, a
        :class:`SubsampleNode` (:meth:`shortcut`); on the way to an activation quantizer, a 1 x 1 max pooling at
        stride s (each window its one element)."""
        if any(self.feeds_addition(u) for u in node.users):
            return self.shortcut(node, op.window[1])
        return self._maxpool(node, replace(op, kind="maxpool"))

    def _pad(self, node: fx.Node, op: Op) -> _Value:
        """Zero channels before and after a residual stream's (``op.channels``) that an addition reads: the
        addition's ``b_offset`` (:meth:`_add`); else refused."""
        if not any(self.feeds_addition(u) for u in node.users):
            self.refuse(node, "pads channels with zeros on the way to a layer; zero channels compile in a residual "
                        "shortcut (an addition reads them): give the layer before more out_channels instead")
        x = self.shortcut(node, 1)
        before, after = op.channels
        return self.chain(node, x, padded=(x.padded[0] + before, x.padded[1] + after))

    def shortcut(self, node: fx.Node, stride: int) -> _Value:
        """The residual stream ``node``'s input for an addition, subsampled at ``stride`` (a :class:`SubsampleNode`,
        or the one that made the input where nothing else reads that: ``x[:, :, ::2, ::2][:, :, ::2, ::2]``;
        ``stride`` 1: the input as it is) with its zero channels (``padded``) kept; refused where the input is no
        stored value tensor."""
        x = self.arg(node)
        self.after_max_pooling(node, x, "a residual shortcut")
        stored = x.kind == "values" and x.tensor not in self.raw and not (
            x.folded or x.pooled or x.cap < math.inf or x.curve is not None or (x.relu and not x.rectified))
        if not stored:
            self.refuse(node, "subsamples or pads a tensor for a residual addition that is not a residual stream; "
                        "a shortcut takes an addition's output or its ReLU, or a conv's [+ BN] + ReLU output that "
                        "only additions and quantizers read (akamaster's option A: F.pad(x[:, :, ::2, ::2], (0, 0, "
                        "0, 0, p, p)) of a block's input)")
        if stride == 1:
            return self.chain(node, x)
        made = self.subsampled.get(x.tensor)
        if made is not None and x.sole:
            made.stride *= stride
            out = made.output
        else:
            name, out = self.scoped(node, "subsample", "subsampled")
            made = SubsampleNode(name, x.tensor, out, stride)
            # right after the node that writes its input and the activations of it there, where the program runs
            # it before the block's main path, and the input dies early
            at = next(i for i, n in enumerate(self.nodes) if n.output == x.tensor) + 1
            while at < len(self.nodes) and isinstance(self.nodes[at], ActivateNode) \
                    and self.nodes[at].input == x.tensor:
                at += 1
            self.nodes.insert(at, made)
            self.subsampled[out] = made
            self.scales[out], self.bounds[out] = self.scales[x.tensor], self.bounds[x.tensor]
        self.shapes[out] = made.out_shape(self.shapes[made.input])
        c = self.shapes[out][0]
        return _Value("values", out, np.full(c, self.scales[out]), np.zeros(c), sole=_sole_reader(node),
                      padded=x.padded)

    def _flatten(self, node: fx.Node, op: Op, does: str = "flattens") -> _Value:
        """A flatten of a C x 1 x 1 tensor, or of a map (the image, or values: max or average pooled too) on its
        way through an activation quantizer to a linear layer, or of codes averaged in windows that tile the map
        (``flat``); else refused (``does``: the verb of the refusal)."""
        x = self.arg(node)
        if x.kind == "image" or self.shape(x)[1:] != (1, 1):
            tiled = x.kind == "codes" and x.pooled and _tiling_window(x.pooled, *self.shapes[x.tensor][1:]) > 1
            if x.kind == "codes" and x.pooled and not tiled:
                k, _, _ = x.pooled
                self.refuse(node, "{} the average of {}x{} windows of an activation's (or a max pooling's) codes (its "
                            "quantizer stands before the pooling, since no pooling unit applies it position by "
                            "position); a linear layer reads such an average where the windows tile the map (kernel = "
                            "stride, no padding, dividing its sides), or over the whole map: pool so, read it with a "
                            "1 x 1 conv, use a max pooling or a conv with stride instead, or a ReLU before the "
                            "pooling".format(does, k, k))
            if x.kind not in ("image", "values", "concat") and not tiled:
                self.refuse(node, "{} a {}x{}x{} map of codes; a map flattens on its way to an activation "
                            "quantizer and a linear layer".format(does, *self.shape(x)))
            return self.chain(node, x, flat=True)
        return self.chain(node, x)

    def _size(self, node: fx.Node, op: Op) -> _Value:
        if node.target is operator.getitem:          # x.size()[i], x.shape[i]
            whole, i = self.values[node.args[0]], node.args[1]
            return _Value("size", dim=i if whole.dim is None and isinstance(i, int) else -1)
        dim = None if node.target is getattr else node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return _Value("size", dim=dim if isinstance(dim, int) or dim is None else -1)

    def _reshape(self, node: fx.Node, op: Op) -> _Value:
        """``x.view(x.size(0), -1)`` and the like: a flatten to (batch, C * H * W) (:meth:`_flatten`), else
        refused."""
        x = self.arg(node)
        dims = list(node.args[1:]) or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        n = math.prod(self.shape(x) if x.kind != "image" else self.input_shape)
        batch = [isinstance(d, fx.Node) and self.values[d].dim == 0 for d in dims]
        if len(dims) != 2 or not ((batch[0] and dims[1] in (-1, n)) or (dims[0] == -1 and dims[1] == n)):
            shown = ", ".join("size" if isinstance(d, fx.Node) else repr(d) for d in dims)
            self.refuse(node, f"reshapes to [{shown}]; a reshape flattens to (batch, C * H * W): x.view(x.size(0), "
                        f"-1) or x.view(-1, {n})")
        return self._flatten(node, op, "reshapes")

    def _identity(self, node: fx.Node, op: Op) -> _Value:
        return self.chain(node, self.arg(node))

    def _add(self, node: fx.Node, op: Op) -> _Value:
        a, b = self.arg(node, 0), self.arg(node, 1)
        if a.padded != (0, 0):                  # the shortcut with zero channels second: it is the narrower
            a, b = b, a
        for x in (a, b):
            self.after_max_pooling(node, x, "a residual addition")
        if a.padded != (0, 0):
            self.refuse(node, "adds two tensors padded with zero channels; an option-A shortcut adds to a block's "
                        "output")
        if any(x.kind != "values" or (x.relu and not x.rectified) or x.pooled or x.cap < math.inf
               or x.curve is not None for x in (a, b)) \
                or a.tensor == b.tensor:
            self.refuse(node, "does not add two different outputs of conv or linear layers, BNs, additions or the "
                        "ReLUs of those that feed additions only")
        (c_b, *side_b), (before, after) = self.shapes[b.tensor], b.padded
        if self.shapes[a.tensor] != (before + c_b + after, *side_b):
            padded = f" ({before} + {c_b} + {after} channels: the shortcut's zero channels)" if b.padded != (0, 0) \
                else ""
            self.refuse(node, f"adds shapes {self.shapes[a.tensor]} and {self.shapes[b.tensor]}{padded}")
        free = [x.tensor in self.raw and x.sole for x in (a, b)]
        for x, f in zip((a, b), free):
            if not f and (x.folded or x.tensor in self.raw):
                self.refuse(node, f"adds {x.tensor!r} with a BN, or unscaled, while other operations read it too; "
                            "only an accumulator the addition alone reads folds a BN")
        fixed = [self.scales[x.tensor] for x, f in zip((a, b), free) if not f]
        if len(fixed) == 2 and fixed[0] != fixed[1]:
            self.refuse(node, f"adds {a.tensor!r} and {b.tensor!r}, whose scales differ: each is fixed (read elsewhere "
                        "too, a ReLU's output or a sum), and an addition brings only a conv's or linear layer's output "
                        "[+ BN] that it alone reads to the other's scale: make one operand such an output (add a "
                        "shortcut first: (x + bn1(conv1(x))) + bn2(conv2(x)); no ReLU on that operand before the "
                        "addition)")
        out_scale = fixed[0] if fixed else stages.fraction_scale([_finest(a.gain), _finest(b.gain)],
                                                                 self.options.residual_frac_bits)
        for x, f in zip((a, b), free):
            # its accumulator's steps would merge in the sum, by a gap no plain choice of fraction bits made
            ratio = _finest(x.gain) / out_scale
            if f and ratio < min(1.0, 2.0**(self.options.residual_frac_bits - _DEFAULT_FRAC)):
                self.coarse_stream(node, x, (b if x is a else a).tensor, ratio)
        for x, f in zip((a, b), free):
            if f:
                self.requantize(self.raw[x.tensor], x.gain, x.offset, out_scale)
        name, out = self.scoped(node, "add", "out")
        self.nodes.append(AddNode(name, (a.tensor, b.tensor), out, b_offset=before))
        self.sums[out] = self.nodes[-1]
        c = self.shapes[a.tensor][0]
        self.shapes[out], self.scales[out] = self.shapes[a.tensor], out_scale
        self.bounds[out] = self.bounds[a.tensor] + self.bounds[b.tensor]
        return _Value("values", out, np.full(c, out_scale), np.zeros(c), sole=len(node.users) == 1)

    def coarse_stream(self, node: fx.Node, x: _Value, other: str, ratio: float) -> None:
        """Refuse addition ``node``: operand ``x`` (a free accumulator) would join the stream of ``other``,
        whose scale is ``1 / ratio`` times its own (BN-folded) step, so distinct accumulators would round alike;
        the two operands' own steps lie more than ``2^residual_frac_bits`` (default) apart, which no trained
        model's do (a coarse stream the options chose rounds as documented)."""
        frac = self.options.residual_frac_bits
        need = frac + math.ceil(math.log2(1 / ratio))
        fix = (f"compile with --residual-frac-bits {need} (or more) for a finer stream" if need <= FRAC_BITS[1] else
               f"no --residual-frac-bits up to {FRAC_BITS[1]} is fine enough; check the weights and BN of both "
               "layers (a scale that far off is no trained model's)")
        raise ValueError(f"cannot compile a {self.model}: {describe(node)}{location(node)} adds {x.tensor!r} to "
                         f"{other!r}, whose scale (fixed where it is made, "
                         f"--residual-frac-bits {frac} below its step) is {1 / ratio:.3g} times coarser than "
                         f"{x.tensor!r}'s accumulator step (times its BN scale): {x.tensor!r}'s values would round "
                         f"together and the codes after the sum differ from the PyTorch model's; {fix}")

    def _cat(self, node: fx.Node, op: Op) -> _Value:
        """The channel concatenation ``node`` of conv, BN or addition outputs (through ReLU, clip or max pooling),
        each of which will write its own channels' codes of the quantizer after it (a join of one part: that part)."""
        parts = []
        for i, arg in enumerate(node.args[0] if node.args else node.kwargs["tensors"]):
            x = self.values[arg]
            if x.kind not in ("values", "concat"):
                joined = {"image": "the input image", "codes": "activation codes", "size": "a tensor's size"}
                self.refuse(node, f"joins {joined[x.kind]} (part {i}); a concatenation joins the outputs of conv or "
                            "linear layers, BNs or additions (through ReLU, clip or pooling) on their way to one "
                            "activation quantizer")
            # a join in a join: its parts, each max pooled as the join was
            for part in x.parts or (x,):
                part = replace(part, maxpools=part.maxpools + x.maxpools) if x.parts else part
                parts.append(part if _sole_reader(node) else replace(part, sole=False))
        if len({x.tensor for x in parts}) < len(parts):
            self.refuse(node, "joins one layer's output twice; each part of a concatenation is its own layer's "
                        "output (a conv with the channels twice is one layer)")
        sides = {self.shape(x)[1:] for x in parts}
        if len(sides) > 1:
            self.refuse(node, f"joins maps of sizes {sorted(sides)}; a concatenation joins maps of one size")
        if len(parts) > MAX_CONCAT:
            self.refuse(node, f"joins {len(parts)} tensors, more than {MAX_CONCAT}")
        if len(parts) == 1:                         # torch.cat([x], 1) is x
            return self.chain(node, self.values[(node.args[0] if node.args else node.kwargs["tensors"])[0]])
        # flattened maps of one size join as their join flattened (the flatten is channel-major)
        return _Value("concat", parts=tuple(parts), concat=node, flat=any(p.flat for p in parts))

    def _adaptive(self, node: fx.Node, op: Op) -> _Value:
        """An adaptive average or max pooling to ``op.side`` x ``op.side`` of a map of that size: the identity (each
        window is one element); of any other map, refused."""
        x = self.arg(node)
        c, h, w = self.input_shape if x.kind == "image" else self.shape(x)
        if (h, w) != (op.side, op.side):
            maximum = node.target is F.adaptive_max_pool2d or \
                (node.op == "call_module" and isinstance(self.modules[node.target], nn.AdaptiveMaxPool2d))
            self.refuse(node, f"(a {h}x{w} map to {op.side}x{op.side}) is not supported: "
                        f"{ADAPTIVE_MAX_HINT if maximum else ADAPTIVE_AVG_HINT}")
        return self.chain(node, x)

    def _softmax(self, node: fx.Node, op: Op) -> _Value:
        """A softmax or log-softmax over the classes as the network's last operation: left out. The compiled
        logits are the values before it (both are increasing in each logit, so the top class is the same)."""
        x = self.arg(node)
        if any(user.op != "output" for user in node.users):
            self.refuse(node, "is not the network's last operation; a softmax or log-softmax compiles only on the "
                        "logits, as the output (left out: the compiled logits are those before it, of the same top "
                        "class): leave it off here")
        vector = self._vector(node.args[0])
        if op.dim not in (None, 1, -1 if vector else -3):
            self.refuse(node, f"normalizes dimension {op.dim} of the {'(N, classes)' if vector else '(N, C, 1, 1)'} "
                        "logits, not their classes: softmax over dim=1 (or leave it off: the compiled logits are "
                        "those before it)")
        return self.chain(node, x)

    def _vector(self, node: fx.Node) -> bool:
        """Whether ``node``, on the logits' way to the output, gives (N, classes) vectors (a linear layer's
        output or a flatten), not (N, C, 1, 1) maps (a conv's)."""
        kind = operation(node, self.modules, self.model).kind
        if kind == "identity":
            return self._vector(node.args[0])
        return kind in ("linear", "flatten", "reshape")

    def _output(self, node: fx.Node, op: Op) -> _Value:
        source = node.args[0]
        if not isinstance(source, fx.Node):
            self.refuse(node, "returns more than one tensor; a compiled network returns its logits")
        x = self.values[source]
        if x.kind == "values" and x.curve is not None:
            self.refuse(source, f"applies {x.curve.name} to the logits: leave it off (a non-decreasing function of "
                        "each logit keeps the top class; lcq train trains on the logits)")
        if x.kind == "values" and x.tensor in self.raw and x.folded:
            after, last = self._after_last_layer(source, x.tensor), self.raw[x.tensor].name
            if after is not None and operation(after, self.modules, self.model).kind == "scale":
                self.refuse(after, f"scales the logits of the last layer {last!r}: leave the factor out (a positive "
                            "one keeps the top class; a temperature belongs in the loss), or fold it into that "
                            "layer's weights and bias")
            self.refuse(after or source, f"normalizes the logits of the last layer {last!r} (a BatchNorm after it, "
                        "which the compiler folds only before a ReLU, pooling, a quantizer or an addition): drop it "
                        "and retrain (the layer's bias learns the shift), or put it before the last layer")
        if x.kind != "values" or x.tensor not in self.raw or not x.plain or not x.sole \
                or self.shapes[x.tensor][1:] != (1, 1):
            self.refuse(source, "gives the network's output; the output must be a linear layer's (or a conv's "
                        "C x 1 x 1) accumulator that nothing else reads (the logits)")
        conv = self.raw[x.tensor]
        out_scale = conv.scale / 2.0**self.options.logit_frac_bits
        largest = float(np.abs(x.offset).max(initial=0.0))
        if 0 < largest < out_scale / 2:
            raise ValueError(f"cannot compile a {self.model}: layer {conv.name!r}: its bias (up to {largest:.3g}) "
                             f"rounds to 0 in the logits, whose unit is {out_scale:.3g} (--logit-frac-bits "
                             f"{self.options.logit_frac_bits} below its accumulator step {conv.scale:.3g}, "
                             f"{self.describe_step(conv)}), so the integer logits would drop what the bias decides; "
                             "that step is far off a trained layer's: check those parameters (retrain, or restore "
                             "the checkpoint from a copy)")
        self.rename(x.tensor, "logits")
        conv.output = "logits"
        self.requantize(conv, x.gain, x.offset, out_scale)
        return x

    def _after_last_layer(self, node: fx.Node, layer: str) -> fx.Node | None:
        """The first BN or constant factor (from the output back) that ``node`` is or reads through its tensor
        arguments, back to the call of layer ``layer`` (None: none)."""
        while isinstance(node, fx.Node) and node.op not in ("placeholder", "get_attr") and node.target != layer:
            op = operation(node, self.modules, self.model)
            if op.kind in ("bn", "scale"):
                return node
            node = node.args[op.operand] if node.args else None
        return None

    def describe_step(self, conv: ConvNode) -> str:
        """The parameters behind ``conv``'s accumulator step, for an error message."""
        wq, act = self.modules[conv.name].wq, self.modules.get(conv.input)
        alpha = getattr(act, "alpha", None)
        return (f"from {conv.name}.wq.alpha = {wq.alpha.item():.3g}, its weights' sigma_w and "
                + (f"{conv.input}.alpha = {alpha.item():.3g}" if alpha is not None else "its input's alpha"))
