"""The compiled model: a list of integer-only nodes over named tensors, and the rules it obeys.

Tensors are either activation *codes* (unsigned, ``0..s_a``, named after the
PyTorch activation quantizer that produces them, e.g. ``blocks.0.act1``) or
signed *values* (accumulators, residual sums, logits). Every value tensor has
a real scale (real value = scale * integer), recorded for inspection only:
no node reads a float.

Nodes, in execution order (each writes one tensor named ``node.output``):

- :class:`InputNode`: uint8 pixel -> input code by a 256-entry table (the image's map, or, ``flat``, the
  vector of its pixels that a linear layer reads: an MLP).
- :class:`ConvNode`: convolution or fully connected layer on codes with
  LUT-MAC accumulation, then an output stage (:class:`Thresholds`,
  :class:`Requantize`, or none: the raw accumulator); on a signed activation,
  on the codes of its positive and negative halves (``signed_input``).
- :class:`ActivateNode`: an output stage applied to a value tensor
  (BN + ReLU + compander of a residual stream into codes).
- :class:`AddNode`: sum of two value tensors of the same scale (then a ReLU, where ``relu``); the second may
  cover only some channels of the first (``b_offset``).
- :class:`PoolNode`: BN + ReLU per position, global sum, thresholds into
  codes (global average pooling followed by an activation quantizer);
  :class:`AvgPoolNode`: the same summed over each window of an average pooling.
- :class:`MaxPoolNode`: codes -> codes, the largest code of each window
  (max pooling before an activation quantizer, moved after it), or the
  smallest (``minimum``: a signed quantizer's negative half).
- :class:`ConcatNode`: codes tensors of one width and one map size -> their
  channels one after another (a channel concatenation before an activation
  quantizer: the quantizer, elementwise, applied to each part).
- :class:`SubsampleNode`: values -> values, every ``stride``-th row and column (a CIFAR ResNet's
  option-A shortcut, whose zero channels are the addition's ``b_offset``).

Rules. :meth:`CompiledModel.validate` is the one definition of what a compiled
model may hold: the compiler runs it before it returns or saves a model
(:func:`compiler.lower.compile_model`, :func:`compiler.format.save`) and the
loader runs it on every model it reads (:func:`compiler.format.load`), so a
file loads only if the compiler could have written it. A broken rule raises
:class:`ModelRuleError` naming the node, the field and what is allowed. The
rules, besides exact types, dtypes and shapes of every field and array:

- bit-widths: ``wbits``, ``abits`` and code widths in :data:`CODE_BITS`, the
  outer widths ``b'`` in :data:`OUTER_BITS`, pool ``frac_bits`` in
  :data:`FRAC_BITS` (also the compile options' range);
- geometry: channels up to :data:`MAX_CHANNELS`, sides up to :data:`MAX_SIDE`,
  kernel ``1..MAX_KERNEL``, stride ``1..MAX_STRIDE``, padding ``0..kernel//2``,
  ``out = (in + 2 * padding - kernel) // stride + 1`` exactly, ``in_shape``
  equal to the input tensor's shape; "linear" layers are 1x1 on (C, 1, 1);
  max pooling the same geometry on its input codes, the window within the padded input;
  a concatenation joins 2..:data:`MAX_CONCAT` different codes tensors of one code width and one
  ``H x W``, at most :data:`MAX_CHANNELS` channels in all;
- level tables (DESIGN.md): ``s_w + 1`` resp. ``s_a + 1`` entries, non-decreasing,
  ``W[0] = A[0] = 0``, ``W[s_w] = s'_w``, ``A[s_a] = s'_a``; so the LUT
  ``W[k] * A[j]`` is the product table at every index, 0 included;
- weight codes within ``-s_w..s_w``; a layer reads codes of exactly ``abits``
  bits; the input table is non-decreasing from 0 up to ``2^bits - 1``;
- flags (``descending``, ``relu``) are booleans, ``sign`` is -1, 0 or 1;
- thresholds: ``2^bits - 1`` per channel, monotone in the channel's direction,
  within ``+-(bound + 1)`` of the input (:meth:`Thresholds.limit`; pooling:
  :meth:`PoolNode.sum_limit`, ascending only);
- requantize: shift ``0..MAX_SHIFT``, multiplier with :data:`MULT_BITS`
  significant bits, bias within ``2^62`` of the rounding half, and
  ``bound * multiplier + |bias| < 2^63`` (no int64 overflow);
- pooling: offsets within ``bound * 2^frac_bits``, zero where the ReLU is off
  or the sign is 0, and ``positions * (bound + 1) * 2^(frac_bits + 1) < 2^63``;
- every value tensor's bound (largest ``|x|``, propagated exactly as the
  compiler does) below :data:`VALUE_LIMIT`, so no sum overflows int64;
- graph: the input node first and once, every input defined earlier with the
  right kind (codes or values), every tensor and node name defined once
  (names match :data:`NAME`), no tensor named ``<layer>.acc`` after a conv node
  (the reference's accumulators), every tensor but the logits read by a later node
  (the compiler keeps only what the logits depend on), the logits the last
  node's ``(num_classes, 1, 1)`` value tensor, ``scales`` exactly the value tensors (positive, finite, equal
  across an addition), ``source`` empty or the compiler's record, whose
  options agree with the nodes (``mac``, pool ``frac_bits``), whose dataset is one the trainer reads, of
  the input's image shape, and whose plan describes the nodes: the input image has 8-bit codes, and every
  conv node has the ``wbits``, ``abits`` and outer widths the plan gives its layer (:func:`plan_layer_widths`,
  the trainer's rule; a ``layer_bits`` entry may name a layer the logits do not depend on, which the compiler
  leaves out, and such a layer may be the trainer's first or last), and the level tables of every quantizer the
  plan makes uniform (:func:`plan_uniform_quantizers`:
  method "uniform", K = 1, the first and last layers, the input image, 2-bit weights) are the uniform
  quantizer's, ``round(s' * k / s)`` (:func:`uniform_levels`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FORMAT = "lcq-compiled-model"
VERSION = 2

CODE_BITS = (2, 8)           # wbits, abits, input and threshold code widths (QuantPlan allows 2..8)
OUTER_BITS = (2, 16)         # b'_w and b'_a of the outer re-quantization
FRAC_BITS = (0, 24)          # fixed-point fraction bits (pooling; the compile options)
MAX_CHANNELS = 1 << 16
MAX_SIDE = 1 << 14
MAX_KERNEL = 32
MAX_STRIDE = 16
MULT_BITS = 24               # significant bits of a requantize multiplier
MAX_SHIFT = 62
BIAS_LIMIT = 1 << 62         # |requantize bias - rounding half| stays below this
VALUE_LIMIT = 1 << 62        # bound of every value tensor: the sum of two fits int64
INT64_LIMIT = 1 << 63
PAD_HEADROOM_BITS = 10       # a padded average pooling's terms outside the map: up to 2^10 times those inside
MAX_NODES = 4096
MAX_CONCAT = 64              # parts of one channel concatenation
MAX_CLASSES = 1 << 16
NAME = re.compile(r"[A-Za-z0-9_.]{1,256}")
# What ``source.dataset`` may name, its images' (C, H, W) and the rule of ``source.classes``: the trainer's
# (lcq_train.dataset_rules, which a test holds equal; not imported, so that the host side reads model files without
# the trainer): the named datasets' own shapes, a folder dataset's C 1 or 3 with sides up to FOLDER_MAX_SIDE.
DATASET_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                  "folder": None}
FOLDER_MAX_SIDE = 256
MAX_CLASS_NAME = 255


def image_shape_problem(name: str, shape) -> str | None:
    """Why ``shape`` is not the (C, H, W) of an image of dataset ``name`` (said after the field: "is [3, 8, 8], not
    [1, 8, 8], the image shape of its dataset digits"); None where it is."""
    whole = isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_int(n) for n in shape)
    if DATASET_SHAPES[name] is not None:
        return None if whole and tuple(shape) == DATASET_SHAPES[name] else \
            f"is {shape!r}, not {list(DATASET_SHAPES[name])}, the image shape of its dataset {name}"
    if not whole or shape[0] not in (1, 3) or not all(1 <= n <= FOLDER_MAX_SIDE for n in shape[1:]):
        return f"is {shape!r}, not the image shape of a folder dataset (C 1 or 3, sides 1..{FOLDER_MAX_SIDE})"
    return None


def class_names_problem(names: list) -> str | None:
    """What makes ``names`` other than a classifier's class names (2..MAX_CLASSES distinct strings of
    1..MAX_CLASS_NAME characters, none a control character); None when nothing."""
    odd = next((n for n in names if not isinstance(n, str) or not 1 <= len(n) <= MAX_CLASS_NAME
                or any(unicodedata.category(ch) == "Cc" for ch in n)), None)
    if odd is not None:
        return (f"the class name {odd!r}, which is no string of 1..{MAX_CLASS_NAME} characters without control "
                "characters")
    if len(names) < 2:
        return f"{len(names)} class(es), but a classifier needs at least 2"
    if len(names) > MAX_CLASSES:
        return f"{len(names)} classes, more than the {MAX_CLASSES} a compiled model holds"
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        return f"the class names {repeated[:5]} more than once"
    return None


# What ``source.plan`` may hold: what lcq_train.plan.QuantPlan.to_dict writes of a plan the compiler compiles (a
# method other than "fp", outer widths), by QuantPlan's rules (a test holds them equal; not imported, as above).
PLAN_FIELDS = ("method", "wbits", "abits", "outer_bits", "K", "alpha_w", "alpha_a", "edge_bits", "layer_bits",
               "weight_norm")
PLAN_ADDED = {"weight_norm": "lwn"}     # keys added since files were written: a plan without one has this value
PLAN_METHODS = ("uniform", "lcq")
PLAN_WEIGHT_NORMS = ("lwn", "standardize")
PLAN_BITS = (2, 8)                      # wbits, abits, edge_bits and per-layer bits
PLAN_K = (1, 1024)                      # compander intervals
PLAN_CLIP = 1e6                         # alpha_w and alpha_a are in (0, PLAN_CLIP]
PLAN_INPUT_BITS = 8                     # the input image's codes, which the inner outer widths must hold
SOURCE_FIELDS = {"checkpoint": str, "sha256": str, "model": str, "dataset": str, "plan": dict, "epoch": int,
                 "test_top1": (float, int, type(None)), "options": dict}
# ``source.classes``: the class names, in label order, of a checkpoint that records them (lcq_train.dataset_rules'
# rule); a model of a folder dataset has them, one compiled before they were recorded none.
SOURCE_OPTIONAL = {"classes": list}
OPTION_FIELDS = ("residual_frac_bits", "pool_frac_bits", "logit_frac_bits", "max_lut_entries")


def signed_bits(bound: int) -> int:
    """Bits of a two's-complement integer holding every value in ``[-bound, bound]``."""
    return int(bound).bit_length() + 1


def weight_scale(bits: int) -> int:
    """``s = 2^(b-1) - 1``: non-zero levels per sign of a signed (weight) quantizer."""
    return 2 ** (bits - 1) - 1


def act_scale(bits: int) -> int:
    """``s = 2^b - 1``: non-zero levels of an unsigned (activation) quantizer."""
    return 2**bits - 1


def mac_kind(wbits: int, abits: int, max_lut_entries: int) -> str:
    """"lut" when the layer's LUT (``s_w * s_a`` entries) fits ``max_lut_entries``, else "multiply"."""
    return "lut" if weight_scale(wbits) * act_scale(abits) <= max_lut_entries else "multiply"


# --------------------------------------------------------------------------- rule checks


class ModelRuleError(ValueError):
    """A compiled model breaks a rule: ``where`` (the node), ``field`` and what is allowed."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field {field!r} {problem}")


def show(value) -> str:
    """A short printable form of a (possibly hostile) value for an error message."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return str(value) if abs(value) < 10**20 else f"{'-' if value < 0 else ''}a {value.bit_length()}-bit integer"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    text = repr(value) if isinstance(value, (str, list, tuple, dict)) or value is None \
        else f"{type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def rule_int(where: str, name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int, which must be an integer (not a bool) in ``lo..hi``."""
    if not _is_int(value):
        raise ModelRuleError(where, name, f"must be an integer in {lo}..{hi}, not {show(value)}")
    if not lo <= int(value) <= hi:
        raise ModelRuleError(where, name, f"= {show(value)} is out of range; allowed {lo}..{hi}")
    return int(value)


def rule_positive(where: str, name: str, value) -> float:
    """A finite real number > 0 (a scale)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not value > 0:
        raise ModelRuleError(where, name, f"must be a finite number > 0, not {show(value)}")
    return float(value)


def check_plan(plan: dict) -> None:
    """``source.plan`` must be what :meth:`lcq_train.plan.QuantPlan.to_dict` writes of a plan the compiler
    compiles: its keys (those of :data:`PLAN_ADDED` may be missing), method, bit-widths, outer widths at least
    the bits they re-quantize, compander intervals and clip values, by QuantPlan's rules."""
    where = "model"
    missing = [key for key in PLAN_FIELDS if key not in plan and key not in PLAN_ADDED]
    if missing:
        raise ModelRuleError(where, f"source.plan.{missing[0]}", f"is missing; a compiled model's plan has "
                             f"{', '.join(PLAN_FIELDS)}")
    extra = set(plan) - set(PLAN_FIELDS)
    if extra:
        raise ModelRuleError(where, "source.plan", f"has unknown entries {sorted(map(show, extra))}; its keys are "
                                                   f"{', '.join(PLAN_FIELDS)}")
    rule_choice(where, "source.plan.method", plan["method"], PLAN_METHODS)
    rule_choice(where, "source.plan.weight_norm", plan.get("weight_norm", PLAN_ADDED["weight_norm"]),
                PLAN_WEIGHT_NORMS)
    wbits, abits, edge = (rule_int(where, f"source.plan.{key}", plan[key], *PLAN_BITS)
                          for key in ("wbits", "abits", "edge_bits"))
    rule_int(where, "source.plan.K", plan["K"], *PLAN_K)
    for key in ("alpha_w", "alpha_a"):
        value = plan[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= PLAN_CLIP:
            raise ModelRuleError(where, f"source.plan.{key}", f"must be a number > 0 and <= {PLAN_CLIP:g}, "
                                                              f"not {show(value)}")
    outer = plan["outer_bits"]
    if isinstance(outer, list) and len(outer) == 2:
        outer_w, outer_a = (rule_int(where, f"source.plan.outer_bits[{i}]", b, *OUTER_BITS)
                            for i, b in enumerate(outer))
    elif _is_int(outer) and OUTER_BITS[0] <= outer <= OUTER_BITS[1]:
        outer_w = outer_a = int(outer)
    else:
        raise ModelRuleError(where, "source.plan.outer_bits", f"must be an integer in {OUTER_BITS[0]}..{OUTER_BITS[1]}"
                             f" or a pair [b'_w, b'_a] of them (a compiled model has outer widths), not {show(outer)}")
    layers = plan["layer_bits"]
    if not isinstance(layers, dict):
        raise ModelRuleError(where, "source.plan.layer_bits", f"must map layer names to bits, not {show(layers)}")
    for name, bits in layers.items():
        field_name = f"source.plan.layer_bits[{name!r}]"
        if not isinstance(bits, list) or len(bits) not in (2, 4) \
                or not all(_is_int(b) and PLAN_BITS[0] <= b <= PLAN_BITS[1] for b in bits[:2]) \
                or not all(_is_int(b) and OUTER_BITS[0] <= b <= OUTER_BITS[1] for b in bits[2:]):
            raise ModelRuleError(where, field_name, f"must be [wbits, abits] in {PLAN_BITS[0]}..{PLAN_BITS[1]}, or "
                                 f"[wbits, abits, b'_w, b'_a] with b' in {OUTER_BITS[0]}..{OUTER_BITS[1]}, not "
                                 f"{show(bits)}")
        if len(bits) == 4 and (bits[2] < bits[0] or bits[3] < bits[1]):
            raise ModelRuleError(where, field_name, f"= {show(bits)}: its outer widths are narrower than its bits")
    for symbol, width, need in (("b'_w", outer_w, wbits), ("b'_a", outer_a, abits)):
        if width < need:
            raise ModelRuleError(where, "source.plan.outer_bits", f"= {show(outer)}: {symbol} {width} is narrower "
                                 f"than the {need} bits it re-quantizes")
    if not any(len(bits) == 4 for bits in layers.values()):
        need_w = max(edge, wbits, *(bits[0] for bits in layers.values()))
        need_a = max(PLAN_INPUT_BITS, edge, abits, *(bits[1] for bits in layers.values()))
        if outer_w < need_w or outer_a < need_a:
            raise ModelRuleError(where, "source.plan.outer_bits", f"= {show(outer)} is narrower than the widest "
                                 f"quantizer ({need_w}-bit weights, {need_a}-bit activations, the input image's "
                                 "included)")


def plan_layer_widths(plan: dict, layers: list[tuple[str, str]], image: str | None) -> dict[str, tuple[int, ...]]:
    """``(wbits, abits, b'_w, b'_a)`` that ``plan`` (a ``source.plan`` :func:`check_plan` accepts) gives each layer
    of ``layers``, (layer, activation quantizer feeding it) pairs in forward order, ``abits`` being the bits of the
    codes it reads: the trainer's rule (:func:`lcq_train.plan.layer_bits` and ``outer_widths``; a test holds them
    equal; not imported, as above): the first and last layers at ``edge_bits``, the others at ``wbits``/``abits``,
    unless ``layer_bits`` gives a layer its own (and its own outer widths, with four entries); the quantizer
    ``image`` of the input image at :data:`PLAN_INPUT_BITS`."""
    outer = plan["outer_bits"]
    outer_w, outer_a = outer if isinstance(outer, list) else (outer, outer)
    widths = {}
    for i, (name, act) in enumerate(layers):
        edge = i in (0, len(layers) - 1)
        own = tuple(plan["layer_bits"].get(name, ()))
        wbits, abits = own[:2] or ((plan["edge_bits"],) * 2 if edge else (plan["wbits"], plan["abits"]))
        widths[name] = (wbits, PLAN_INPUT_BITS if act == image else abits, *(own[2:] or (outer_w, outer_a)))
    return widths


def uniform_levels(bits: int, outer_bits: int, signed: bool) -> np.ndarray:
    """The uniform quantizer's level table (f the identity): ``round(s' * k / s)``, k = 0..s, in float64, half to
    even (int64; :func:`lcq_train.quant.level_table` with no theta, a test holds them equal)."""
    s = weight_scale(bits) if signed else act_scale(bits)
    top = weight_scale(outer_bits) if signed else act_scale(outer_bits)
    return np.round(np.arange(s + 1, dtype=np.float64) / s * top).astype(np.int64)


# Why a quantizer is uniform: (the plan's field, or "input" for the image's quantizer, and the reason in words).
EDGE_UNIFORM = ("source.plan.method", "the first and last layers' quantizers are uniform under every method")
IMAGE_UNIFORM = ("input", f"it reads the input image, whose quantizer is uniform under every plan "
                          f"({PLAN_INPUT_BITS} bits, alpha 1)")


def plan_uniform_quantizers(plan: dict, layers: list[tuple[str, str]],
                            image: str | None) -> dict[str, tuple[tuple[str, str] | None, tuple[str, str] | None]]:
    """Which quantizers ``plan`` (a ``source.plan`` :func:`check_plan` accepts) makes uniform, so that their level
    tables are :func:`uniform_levels`: per layer of ``layers`` ((layer, activation quantizer feeding it) pairs in
    forward order, as :func:`plan_layer_widths` takes them), (weights, activations), each None (LCQ: companded) or
    (the plan's field that makes it uniform, why). The trainer's rule (:func:`lcq_train.plan.quantize_model` and
    :class:`lcq_train.quantizer.Quantizer`; a test holds them equal; not imported, as above): every quantizer under
    method "uniform", or with K = 1 (the softmax of one theta is 1: f is the identity); the first and last layers'
    under every method; the input image's (:data:`IMAGE_UNIFORM`); 2-bit weights (ternary). An activation quantizer
    that several layers read is the first one's."""
    if plan["method"] == "uniform":
        every = ("source.plan.method", "the plan's method 'uniform' makes them uniform")
    elif plan["K"] == 1:
        every = ("source.plan.K", "K = 1 (one compander interval: f is the identity) makes them uniform")
    else:
        every = None
    widths = plan_layer_widths(plan, layers, image)
    installed: dict[str, tuple[str, str] | None] = {}
    out = {}
    for i, (name, act) in enumerate(layers):
        weights = every or (EDGE_UNIFORM if i in (0, len(layers) - 1) else None)
        acts = IMAGE_UNIFORM if act == image else weights
        if weights is None and widths[name][0] == 2:
            key = f"layer_bits[{name!r}]" if name in plan["layer_bits"] else "wbits"
            weights = (f"source.plan.{key}", "2-bit weights are ternary: uniform under every method")
        out[name] = (weights, installed.setdefault(act, acts))
    return out


def _with_left_out(layers: list[tuple[str, str]], image: str, lead: bool, tail: bool) -> list[tuple[str, str]]:
    """``layers`` ((layer, activation quantizer) in forward order) with a layer the compiler left out (a training-only
    head, named "", which no node is) before them reading the image (``lead``), and one after them (``tail``)."""
    return [*([("", image)] if lead else []), *layers, *([("", "")] if tail else [])]


def rule_name(where: str, name: str, value) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ModelRuleError(where, name, f"must be a name of 1..256 letters, digits, '_' or '.', not {show(value)}")
    return value


def rule_choice(where: str, name: str, value, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ModelRuleError(where, name, f"must be one of {', '.join(map(repr, choices))}, not {show(value)}")


def rule_shape(where: str, name: str, value) -> tuple[int, int, int]:
    """A tensor shape ``(C, H, W)``: C in 1..MAX_CHANNELS, H and W in 1..MAX_SIDE."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ModelRuleError(where, name, f"must be 3 integers (C, H, W), not {show(value)}")
    return (rule_int(where, f"{name}[0]", value[0], 1, MAX_CHANNELS),
            rule_int(where, f"{name}[1]", value[1], 1, MAX_SIDE), rule_int(where, f"{name}[2]", value[2], 1, MAX_SIDE))


def rule_array(where: str, name: str, a, dtype, shape: tuple) -> np.ndarray:
    """``a`` must be a numpy array of exactly ``dtype`` and ``shape``."""
    if not isinstance(a, np.ndarray):
        raise ModelRuleError(where, name, f"must be a numpy array, not {type(a).__name__}")
    if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        raise ModelRuleError(where, name, f"is {a.dtype} {list(a.shape)}, must be {np.dtype(dtype)} {list(shape)}")
    return a


def _at(a: np.ndarray, flat: int) -> str:
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, a.shape)) + "]"


def rule_values(where: str, name: str, a: np.ndarray, lo: int, hi: int) -> None:
    """Every element of the integer array ``a`` in ``lo..hi`` (limits beyond int64 are not checked)."""
    info = np.iinfo(a.dtype)
    bad = np.zeros(a.shape, dtype=bool)
    if lo > info.min:
        bad |= a < lo
    if hi < info.max:
        bad |= a > hi
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelRuleError(where, name, f"{_at(a, i)} = {show(a.flat[i])} is out of range; allowed {lo}..{hi}")


def rule_levels(where: str, name: str, levels, s: int, top: int, symbol: str) -> None:
    """A level table: ``s + 1`` int64 entries, non-decreasing, ``[0] = 0`` and ``[s] = top`` (= s')."""
    rule_array(where, name, levels, np.int64, (s + 1,))
    if levels[0] != 0:
        raise ModelRuleError(where, name, f"[0] = {show(levels[0])}; must be 0 ({symbol}[0] = 0, the zero level)")
    down = np.flatnonzero(np.diff(levels) < 0)
    if down.size:
        i = int(down[0])
        raise ModelRuleError(where, name, f"must be non-decreasing, but [{i}] = {show(levels[i])} > "
                                          f"[{i + 1}] = {show(levels[i + 1])}")
    if levels[s] != top:
        raise ModelRuleError(where, name, f"[{s}] = {show(levels[s])}; must be {top} "
                                          f"({symbol}[s] = s', the clip level of the outer width)")


@dataclass
class Thresholds:
    """Codes from values: ``code[n] = #{c : x >= T[n, c]}`` (``x <= T[n, c]`` where ``descending[n]``).

    ``thresholds`` (C, s) int64, non-decreasing along c for ascending channels
    and non-increasing for descending ones; ``descending`` (C,) bool; ``bits``:
    width of the output code. Folds BN, ReLU and the next layer's compander
    (round half up at each threshold).
    """

    thresholds: np.ndarray
    descending: np.ndarray
    bits: int

    kind = "thresholds"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Codes (uint8) of values ``x`` (N, C, ...)."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        sign = np.where(self.descending, -1, 1).reshape(shape)
        x = x * sign                                # a descending channel counts -x >= -T
        codes = np.zeros(x.shape, dtype=np.uint8)
        for c in range(self.thresholds.shape[1]):
            codes += x >= self.thresholds[:, c].reshape(shape) * sign
        return codes

    @staticmethod
    def limit(bound: int) -> int:
        """Thresholds on values ``|x| <= bound`` lie in ``[-limit, limit]``: beyond, every x passes (or none)."""
        return int(bound) + 1

    def check_fields(self, where: str, prefix: str = "stage.") -> None:
        rule_int(where, prefix + "bits", self.bits, *CODE_BITS)

    def check_arrays(self, where: str, channels: int, limit: int, prefix: str = "stage.",
                     ascending_only: bool = False) -> None:
        """Shapes, flags, range ``[-limit, limit]`` and monotony in each channel's direction."""
        t = rule_array(where, prefix + "thresholds", self.thresholds, np.int64, (channels, act_scale(self.bits)))
        desc = rule_array(where, prefix + "descending", self.descending, np.bool_, (channels,))
        if ascending_only and desc.any():
            raise ModelRuleError(where, prefix + "descending", f"[{int(np.flatnonzero(desc)[0])}] = True; "
                                                               "pooling thresholds are ascending (all False)")
        rule_values(where, prefix + "thresholds", t, -limit, limit)
        step = np.diff(t, axis=1)
        wrong = np.where(desc[:, None], step > 0, step < 0)
        if wrong.any():
            n = int(np.flatnonzero(wrong.any(axis=1))[0])
            order = "non-increasing (a descending channel)" if desc[n] else "non-decreasing"
            raise ModelRuleError(where, prefix + "thresholds", f"[{n}, :] must be {order}: {show(t[n].tolist())}")


@dataclass
class Requantize:
    """Values at a new scale: ``y[n] = (x * multiplier[n] + bias[n]) >> shift[n]`` (arithmetic shift, floor),
    then ``max(0, y)`` where ``relu``.

    ``bias`` already holds ``2^(shift-1)`` so that the shift rounds half up.
    Used for residual sums (to the stream's scale; ``relu`` for a BN + ReLU output that a residual
    addition reads) and for the logits.
    """

    multiplier: np.ndarray
    bias: np.ndarray
    shift: np.ndarray
    relu: bool = False

    kind = "requantize"

    def apply(self, x: np.ndarray) -> np.ndarray:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        m, b, sh = (a.reshape(shape) for a in (self.multiplier, self.bias, self.shift))
        y = (x.astype(np.int64) * m + b) >> sh
        return np.maximum(y, 0) if self.relu else y

    def bound(self, in_bound: int) -> int:
        """Largest ``|y|`` for ``|x| <= in_bound``."""
        m, b = self.multiplier.astype(object), self.bias.astype(object)
        top = (in_bound * m + np.abs(b)) >> self.shift.astype(object)
        return int(max(top.max(), 0)) + 1

    def check_fields(self, where: str, prefix: str = "stage.") -> None:
        if not isinstance(self.relu, bool):
            raise ModelRuleError(where, prefix + "relu", f"must be true or false, not {show(self.relu)}")

    def check_arrays(self, where: str, channels: int, in_bound: int, prefix: str = "stage.") -> int:
        """Ranges of shift, multiplier (``MULT_BITS`` significant bits) and bias, and no int64 overflow
        for inputs ``|x| <= in_bound``; returns the output bound."""
        m, b, sh = (rule_array(where, prefix + k, getattr(self, k), np.int64, (channels,))
                    for k in ("multiplier", "bias", "shift"))
        rule_values(where, prefix + "shift", sh, 0, MAX_SHIFT)
        rule_values(where, prefix + "multiplier", m, 1 << (MULT_BITS - 1), INT64_LIMIT - 1)
        over = np.flatnonzero((sh > 0) & (m > 1 << MULT_BITS))
        if over.size:
            n = int(over[0])
            raise ModelRuleError(where, prefix + "multiplier", f"[{n}] = {show(m[n])} is out of range for shift "
                                 f"{show(sh[n])}; allowed {1 << (MULT_BITS - 1)}..{1 << MULT_BITS}")
        half = np.where(sh > 0, np.left_shift(1, np.maximum(sh - 1, 0)), 0)
        rest = b.astype(object) - half.astype(object)
        far = [n for n, r in enumerate(rest) if not -BIAS_LIMIT < r < BIAS_LIMIT]
        if far:
            raise ModelRuleError(where, prefix + "bias", f"[{far[0]}] = {show(b[far[0]])} is out of range; allowed "
                                 f"2^(shift-1) +- (2^62 - 1)")
        worst = int(in_bound) * int(m.max()) + int(np.abs(b.astype(object)).max())
        if worst >= INT64_LIMIT:
            raise ModelRuleError(where, prefix + "multiplier", f"up to {show(int(m.max()))} times values up to "
                                 f"{show(int(in_bound))} (plus the bias) overflows 64 bits; lower the fraction bits")
        return self.bound(in_bound)


@dataclass
class InputNode:
    """Input image (uint8 ``(N, C, H, W)``, ``shape`` = ``(C, H, W)``) -> codes by ``table[pixel]`` (256
    entries): the ``(C, H, W)`` map, or with ``flat`` the ``(C * H * W, 1, 1)`` vector, pixel ``(c, y, x)`` its
    channel ``(c * H + y) * W + x`` (the image flattened into a linear layer, which reads it as it reads any
    vector: its weights ``(out, C * H * W)`` as a 1 x 1 convolution's)."""

    output: str
    shape: tuple[int, int, int]
    table: np.ndarray
    bits: int
    flat: bool = False
    op = "input"

    @property
    def tensor_shape(self) -> tuple[int, int, int]:
        """The shape of the codes tensor ``output``: ``shape``, or ``(C * H * W, 1, 1)`` where ``flat``."""
        c, h, w = self.shape
        return (c * h * w, 1, 1) if self.flat else (c, h, w)

    def check_fields(self, where: str) -> None:
        rule_name(where, "output", self.output)
        rule_shape(where, "shape", self.shape)
        rule_int(where, "bits", self.bits, *CODE_BITS)
        if not isinstance(self.flat, bool):
            raise ModelRuleError(where, "flat", f"must be true or false, not {show(self.flat)}")

    def check_arrays(self, where: str) -> None:
        table = rule_array(where, "table", self.table, np.uint8, (256,))
        if table[0] != 0:
            raise ModelRuleError(where, "table", f"[0] = {show(table[0])}; must be 0 (pixel 0 is code 0)")
        down = np.flatnonzero(np.diff(table.astype(np.int64)) < 0)
        if down.size:
            raise ModelRuleError(where, "table", f"must be non-decreasing, but [{int(down[0])}] > [{int(down[0]) + 1}]")
        rule_values(where, "table", table, 0, act_scale(self.bits))


@dataclass
class ConvNode:
    """LUT-MAC convolution (``kind`` "conv") or fully connected layer ("linear") on codes.

    ``weight_codes`` int8 ``(C_out, C_in, kh, kw)``: ``sgn * k``, k in 0..s_w.
    ``w_levels`` (s_w + 1,) and ``a_levels`` (s_a + 1,) are the integer level
    tables (int64); the LUT is ``L[k][j] = w_levels[k] * a_levels[j]`` for k, j >= 1.
    ``acc[n, co, y, x] = sum sgn * L[k][j]`` over the ``C_in * kh * kw``
    reduction (zero padding is code 0); ``acc_bits`` holds its worst case.
    ``mac`` is "lut" (the LUT ROM) or "multiply" (edge layers whose LUT would
    exceed the compile limit multiply the levels). ``scale``: real value of
    one accumulator unit (``step_w * step_a``). ``signed_input``: the layer reads
    a signed activation quantizer as the codes of its two halves (``Q(x) = Q+(x)
    - Q+(-x)``, the positive half's channels first): ``C_in`` is twice the
    layer's own, the weights of the second half are those of the first negated,
    and ``abits``, ``outer_abits`` and ``a_levels`` are the halves' (the
    quantizer's magnitudes: a bit less than the plan gives the layer).
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
    signed_input: bool = False
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
        """Multiply-accumulates per image of this dense, square layer: a grouped or depthwise conv, compiled as
        the dense conv with zero blocks, counts ``groups`` times its own MACs, and a kh x kw kernel the square's."""
        c, h, w = self.out_shape
        return c * h * w * self.reduction

    def lut(self) -> np.ndarray:
        """The LUT ROM ``(s_w, s_a)``: ``L[k-1, j-1] = W[k] * A[j]`` (int64)."""
        return np.outer(self.w_levels[1:], self.a_levels[1:]).astype(np.int64)

    @staticmethod
    def out_side(side: int, kernel: int, stride: int, padding: int) -> int:
        """Output rows (or columns) of ``side`` input rows: ``(side + 2 * padding - kernel) // stride + 1``."""
        return (side + 2 * padding - kernel) // stride + 1

    def check_fields(self, where: str) -> None:
        for name in ("name", "input", "output"):
            rule_name(where, name, getattr(self, name))
        rule_choice(where, "kind", self.kind, ("conv", "linear"))
        c, h, w = rule_shape(where, "in_shape", self.in_shape)
        rule_shape(where, "out_shape", self.out_shape)
        k = rule_int(where, "kernel", self.kernel, 1, MAX_KERNEL)
        s = rule_int(where, "stride", self.stride, 1, MAX_STRIDE)
        p = rule_int(where, "padding", self.padding, 0, k // 2)   # up to "same" padding
        if min(h, w) + 2 * p < k:
            raise ModelRuleError(where, "kernel", f"= {k} exceeds the padded input {h + 2 * p}x{w + 2 * p}")
        expect = (self.out_side(h, k, s, p), self.out_side(w, k, s, p))
        if tuple(self.out_shape[1:]) != expect:
            raise ModelRuleError(where, "out_shape", f"= {list(self.out_shape)} does not follow from the geometry: "
                                 f"in_shape {list(self.in_shape)}, kernel {k}, stride {s}, padding {p} give "
                                 f"{[self.out_shape[0], *expect]}")
        if self.kind == "linear" and (k, s, p, h, w) != (1, 1, 0, 1, 1):
            raise ModelRuleError(where, "kind", "'linear' needs kernel 1, stride 1, padding 0 and a (C, 1, 1) input")
        rule_int(where, "wbits", self.wbits, *CODE_BITS)
        rule_int(where, "abits", self.abits, *CODE_BITS)
        rule_int(where, "outer_wbits", self.outer_wbits, *OUTER_BITS)
        rule_int(where, "outer_abits", self.outer_abits, *OUTER_BITS)
        rule_choice(where, "mac", self.mac, ("lut", "multiply"))
        rule_positive(where, "scale", self.scale)
        if not isinstance(self.signed_input, bool):
            raise ModelRuleError(where, "signed_input", f"must be true or false, not {show(self.signed_input)}")
        if self.signed_input and c % 2:
            raise ModelRuleError(where, "in_shape", f"= {list(self.in_shape)}: a layer reading a signed activation "
                                 "reads its positive and negative halves, an even number of channels")
        if self.stage is None:
            if self.out_scale != self.scale:
                raise ModelRuleError(where, "out_scale", f"= {show(self.out_scale)}; a raw accumulator's scale is "
                                                         f"the layer's scale {show(self.scale)}")
        elif isinstance(self.stage, Thresholds):
            if self.out_scale is not None:
                raise ModelRuleError(where, "out_scale", f"= {show(self.out_scale)}; codes have no scale (None)")
        elif isinstance(self.stage, Requantize):
            rule_positive(where, "out_scale", self.out_scale)
        else:
            raise ModelRuleError(where, "stage", f"must be thresholds, requantize or none, not {show(self.stage)}")
        if self.stage is not None:
            self.stage.check_fields(where)

    def acc_limit(self) -> int:
        """The accumulator bound from the fields alone: ``reduction * s'_w * s'_a`` (= :attr:`acc_bound`)."""
        return self.reduction * weight_scale(self.outer_wbits) * act_scale(self.outer_abits)

    def check_arrays(self, where: str) -> int | None:
        """Weight codes and level tables, then the stage; returns the bound of a value output (None: codes)."""
        s_w = weight_scale(self.wbits)
        codes = rule_array(where, "weight_codes", self.weight_codes, np.int8,
                           (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel))
        rule_values(where, "weight_codes", codes, -s_w, s_w)
        half = self.in_shape[0] // 2
        if self.signed_input and not np.array_equal(codes[:, half:], -codes[:, :half]):
            o, ch, y, x = np.argwhere(codes[:, half:] != -codes[:, :half])[0]
            raise ModelRuleError(where, "weight_codes", f"[{o}, {ch + half}, {y}, {x}] = {codes[o, ch + half, y, x]}, "
                                 f"not {-int(codes[o, ch, y, x])}: a layer reading a signed activation weighs its "
                                 "negative half (the second half of its channels) with the negated weights of its "
                                 "positive one")
        rule_levels(where, "w_levels", self.w_levels, s_w, weight_scale(self.outer_wbits), "W")
        rule_levels(where, "a_levels", self.a_levels, act_scale(self.abits), act_scale(self.outer_abits), "A")
        bound = self.acc_bound
        if isinstance(self.stage, Thresholds):
            self.stage.check_arrays(where, self.out_shape[0], Thresholds.limit(bound))
            return None
        if isinstance(self.stage, Requantize):
            return self.stage.check_arrays(where, self.out_shape[0], bound)
        return bound


@dataclass
class ActivateNode:
    """An output stage (thresholds) applied to a value tensor."""

    name: str
    input: str
    output: str
    stage: Thresholds
    op = "activate"

    def check_fields(self, where: str) -> None:
        for name in ("name", "input", "output"):
            rule_name(where, name, getattr(self, name))
        if not isinstance(self.stage, Thresholds):
            raise ModelRuleError(where, "stage", f"must be thresholds, not {show(self.stage)}")
        self.stage.check_fields(where)


@dataclass
class AddNode:
    """``output = a + b`` for two value tensors of the same scale (a residual addition), then
    ``max(0, output)`` where ``relu`` (a post-activation block's ReLU). ``b`` may have fewer channels than ``a``:
    its channel ``c`` adds to channel ``b_offset + c`` of the sum, the others are ``a``'s (an option-A shortcut,
    ``F.pad`` of the channels: zeros around ``b``'s)."""

    name: str
    inputs: tuple[str, str]
    output: str
    relu: bool = False
    b_offset: int = 0
    op = "add"

    def narrow(self, tensors: dict) -> bool:
        """Whether operand b covers some channels of the sum only: its shape in ``tensors`` (name -> a
        :class:`TensorInfo`) is not a's."""
        return tensors[self.inputs[0]].shape != tensors[self.inputs[1]].shape

    def apply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The sum ``(N, C, H, W)`` of ``a`` ``(N, C, H, W)`` and ``b`` ``(N, C_b, H, W)`` (int64)."""
        total = a.copy()
        total[:, self.b_offset:self.b_offset + b.shape[1]] += b
        return np.maximum(total, 0) if self.relu else total

    def check_fields(self, where: str) -> None:
        rule_name(where, "name", self.name)
        if not isinstance(self.inputs, (tuple, list)) or len(self.inputs) != 2:
            raise ModelRuleError(where, "inputs", f"must be two tensor names, not {show(self.inputs)}")
        rule_name(where, "inputs[0]", self.inputs[0])
        rule_name(where, "inputs[1]", self.inputs[1])
        rule_name(where, "output", self.output)
        if not isinstance(self.relu, bool):
            raise ModelRuleError(where, "relu", f"must be true or false, not {show(self.relu)}")
        rule_int(where, "b_offset", self.b_offset, 0, MAX_CHANNELS)


@dataclass
class PoolNode:
    """Global average pooling between BN + ReLU and an activation quantizer, on a value tensor.

    Per position ``u = sign[n] * (x * 2^frac_bits - offset[n])``, then
    ``max(0, u)`` where ``relu[n]`` (``sign`` in {-1, 0, 1}: BN's scale sign, 0
    for a channel whose ReLU output is constant; ``relu`` False where the ReLU
    never clips on the input's range), then ``min(u, cap[n])`` where ``cap`` is
    given (a ReLU6's or ``hardtanh(0, max)``'s clip; not negative where ``relu``,
    0 where ``sign`` is), summed over all H * W positions; the sum goes through
    ``stage`` (thresholds, which fold the BN scale and shift, the 1 / (H * W)
    and the next quantizer).
    """

    name: str
    input: str
    output: str
    sign: np.ndarray
    relu: np.ndarray
    offset: np.ndarray
    frac_bits: int
    stage: Thresholds
    cap: np.ndarray | None = None
    op = "pool"

    def terms(self, x: np.ndarray) -> np.ndarray:
        """``u`` (N, C, H, W) int64 of values ``x`` (N, C, H, W)."""
        sign, offset = self.sign.reshape(1, -1, 1, 1), self.offset.reshape(1, -1, 1, 1)
        u = sign * ((x.astype(np.int64) << self.frac_bits) - offset)
        u = np.where(self.relu.reshape(1, -1, 1, 1), np.maximum(0, u), u)
        return u if self.cap is None else np.minimum(u, self.cap.reshape(1, -1, 1, 1))

    def sums(self, x: np.ndarray) -> np.ndarray:
        """The sums of ``u`` that ``stage`` reads, (N, C, 1, 1), for values ``x`` (N, C, H, W)."""
        return self.terms(x).sum(axis=(2, 3), keepdims=True)

    def summed(self, in_shape: tuple[int, int, int]) -> int:
        """How many terms one sum adds, on an input of ``in_shape``."""
        return in_shape[1] * in_shape[2]

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return (in_shape[0], 1, 1)

    @staticmethod
    def sum_limit(positions: int, bound: int, frac_bits: int) -> int:
        """Thresholds on sums of ``positions`` terms ``u`` for ``|x| <= bound`` lie within this."""
        return positions * (int(bound) + 1) * 2**frac_bits + 1

    @staticmethod
    def check_sum(where: str, positions: int, bound: int, frac_bits: int) -> None:
        """Sums of ``positions`` terms ``sign * (x * 2^frac_bits - offset)``, ``|x| <= bound``, fit int64."""
        if positions * (int(bound) + 1) * 2 ** (frac_bits + 1) >= INT64_LIMIT:
            raise ModelRuleError(where, "frac_bits", f"= {frac_bits}: sums over {positions} positions of values up to "
                                 f"{show(bound)} overflow 64 bits; lower the pool fraction bits")

    def check_fields(self, where: str) -> None:
        for name in ("name", "input", "output"):
            rule_name(where, name, getattr(self, name))
        rule_int(where, "frac_bits", self.frac_bits, *FRAC_BITS)
        if not isinstance(self.stage, Thresholds):
            raise ModelRuleError(where, "stage", f"must be thresholds, not {show(self.stage)}")
        self.stage.check_fields(where)

    def headroom_bits(self) -> int:
        """Bits that the sums may take beyond those of terms up to ``bound * 2^frac_bits`` (0 here)."""
        return 0

    def check_arrays(self, where: str, in_shape: tuple[int, int, int], in_bound: int) -> None:
        c, positions, f = in_shape[0], self.summed(in_shape), self.frac_bits
        self.check_sum(where, positions, in_bound, f + self.headroom_bits())
        sign = rule_array(where, "sign", self.sign, np.int64, (c,))
        relu = rule_array(where, "relu", self.relu, np.bool_, (c,))
        offset = rule_array(where, "offset", self.offset, np.int64, (c,))
        rule_values(where, "sign", sign, -1, 1)
        rule_values(where, "offset", offset, -(in_bound << f), in_bound << f)
        checks = [("offset", (sign == 0) & (offset != 0), "must be 0 where sign is 0"),
                  ("relu", (sign == 0) & ~relu, "must be True where sign is 0 (a constant channel)"),
                  ("offset", ~relu & (offset != 0), "must be 0 where relu is False"),
                  ("sign", ~relu & (sign == 0), "must be -1 or 1 where relu is False")]
        if self.cap is not None:
            cap = rule_array(where, "cap", self.cap, np.int64, (c,))
            rule_values(where, "cap", cap, -((in_bound << (f + 1)) + 1), (in_bound << (f + 1)) + 1)
            checks += [("cap", (sign == 0) & (cap != 0), "must be 0 where sign is 0"),
                       ("cap", relu & (cap < 0), "must not be negative where relu is True")]
        for name, bad, why in checks:
            if bad.any():
                n = int(np.flatnonzero(bad)[0])
                raise ModelRuleError(where, f"{name}", f"[{n}] = {show(getattr(self, name)[n])}: {why}")
        self.stage.check_arrays(where, c, self.sum_limit(positions, in_bound, f + self.headroom_bits()),
                                ascending_only=True)


@dataclass
class AvgPoolNode(PoolNode):
    """Average pooling (``kernel`` x ``kernel`` windows at ``stride``, the map padded by ``padding`` on each side)
    between BN + ReLU and an activation quantizer: :class:`PoolNode`'s ``u`` summed over each window instead of
    the whole map, each sum through ``stage`` (which folds the 1 / kernel^2: PyTorch's ``count_include_pad=True``);
    codes ``(C, Ho, Wo)``, ``Ho = (H + 2 * padding - kernel) // stride + 1``.

    ``outside`` (given where ``padding`` > 0, else None): channel ``n``'s term at a position outside the map, the ``u``
    of a zero of the pooled tensor (0 where ``u`` is proportional to it; :func:`compiler.stages.pool_constants`),
    ``|outside| <= bound * 2^(frac_bits + PAD_HEADROOM_BITS)``; the sums' limits take those bits more."""

    kernel: int = 1
    stride: int = 1
    padding: int = 0
    outside: np.ndarray | None = None
    op = "avgpool"

    def sums(self, x: np.ndarray) -> np.ndarray:
        k, s, p = self.kernel, self.stride, self.padding
        u = self.terms(x)
        if p:
            n, c, h, w = u.shape
            padded = np.empty((n, c, h + 2 * p, w + 2 * p), dtype=np.int64)
            padded[...] = self.outside.reshape(1, c, 1, 1)
            padded[:, :, p:p + h, p:p + w] = u
            u = padded
        return sliding_window_view(u, (k, k), axis=(2, 3))[:, :, ::s, ::s].sum(axis=(4, 5))

    def headroom_bits(self) -> int:
        return PAD_HEADROOM_BITS if self.padding else 0

    def summed(self, in_shape: tuple[int, int, int]) -> int:
        return self.kernel ** 2

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = in_shape
        k, s, p = self.kernel, self.stride, self.padding
        return (c, ConvNode.out_side(h, k, s, p), ConvNode.out_side(w, k, s, p))

    def check_fields(self, where: str) -> None:
        super().check_fields(where)
        k = rule_int(where, "kernel", self.kernel, 1, MAX_KERNEL)
        rule_int(where, "stride", self.stride, 1, MAX_STRIDE)
        rule_int(where, "padding", self.padding, 0, k // 2)
        if (self.outside is None) != (self.padding == 0):
            raise ModelRuleError(where, "outside", "is required where padding is not 0" if self.outside is None
                                 else "must be absent where padding is 0")

    def check_arrays(self, where: str, in_shape: tuple[int, int, int], in_bound: int) -> None:
        super().check_arrays(where, in_shape, in_bound)
        if self.outside is not None:
            limit = int(in_bound) << (self.frac_bits + PAD_HEADROOM_BITS)
            rule_values(where, "outside", rule_array(where, "outside", self.outside, np.int64, (in_shape[0],)), -limit,
                        limit)

    def check_shape(self, where: str, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The output shape for input ``in_shape``; the kernel must fit the (padded) input."""
        h, w = (side + 2 * self.padding for side in in_shape[1:])
        if min(h, w) < self.kernel:
            raise ModelRuleError(where, "kernel", f"= {self.kernel} exceeds the {'padded ' if self.padding else ''}"
                                                  f"{h}x{w} input")
        return self.out_shape(in_shape)


@dataclass
class MaxPoolNode:
    """Max pooling of a codes tensor: ``out[n, c, y, x]`` is the largest ``in[n, c, y * stride - padding + i,
    x * stride - padding + j]`` over ``0 <= i, j < kernel``, code 0 outside the input; same code width.

    It stands for a max pooling between a ReLU and an activation quantizer: the quantizer is
    non-decreasing, so it commutes with the maximum, and code 0 is its lowest level, so zero padding
    of codes is PyTorch's -inf padding (every window holds an input position, ``padding <= kernel // 2``).

    ``minimum``: the smallest code of each window instead, positions outside the input left out (the
    negative half of a signed quantizer after a max pooling: ``Q+(-max x) = min Q+(-x)``). The hardware
    takes it as the maximum of the codes' complements (all ones of the code lanes), complemented back.
    """

    name: str
    input: str
    output: str
    kernel: int
    stride: int
    padding: int
    minimum: bool = False
    op = "maxpool"

    def apply(self, codes: np.ndarray) -> np.ndarray:
        """Pooled codes ``(N, C, Ho, Wo)`` of ``codes`` ``(N, C, H, W)`` (same dtype)."""
        k, s, p = self.kernel, self.stride, self.padding
        outside = np.iinfo(codes.dtype).max if self.minimum else 0      # never a window's result
        padded = np.pad(codes, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=outside) if p else codes
        windows = sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        return windows.min(axis=(4, 5)) if self.minimum else windows.max(axis=(4, 5))

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = in_shape
        return (c, ConvNode.out_side(h, self.kernel, self.stride, self.padding),
                ConvNode.out_side(w, self.kernel, self.stride, self.padding))

    def check_fields(self, where: str) -> None:
        for name in ("name", "input", "output"):
            rule_name(where, name, getattr(self, name))
        k = rule_int(where, "kernel", self.kernel, 1, MAX_KERNEL)
        rule_int(where, "stride", self.stride, 1, MAX_STRIDE)
        rule_int(where, "padding", self.padding, 0, k // 2)
        if not isinstance(self.minimum, bool):
            raise ModelRuleError(where, "minimum", f"must be true or false, not {show(self.minimum)}")

    def check_shape(self, where: str, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The output shape for input ``in_shape``; the kernel must fit the padded input."""
        _, h, w = in_shape
        if min(h, w) + 2 * self.padding < self.kernel:
            raise ModelRuleError(where, "kernel", f"= {self.kernel} exceeds the padded input "
                                                  f"{h + 2 * self.padding}x{w + 2 * self.padding}")
        return self.out_shape(in_shape)


@dataclass
class ConcatNode:
    """Channel concatenation of codes tensors: ``out[n]`` is ``inputs[0][n]``'s channels, then ``inputs[1][n]``'s,
    and so on (``torch.cat(parts, 1)``); same code width, same ``H x W``.

    It stands for a concatenation before an activation quantizer: the quantizer is elementwise, so
    ``Q(cat(a, b)) = cat(Q(a), Q(b))``, and each part's producer applies it (with its own BN) to its own channels.
    """

    name: str
    inputs: tuple[str, ...]
    output: str
    op = "concat"

    def apply(self, parts: list[np.ndarray]) -> np.ndarray:
        """The codes ``(N, sum C, H, W)`` of ``parts`` (each ``(N, C_i, H, W)``, one dtype)."""
        return np.concatenate(parts, axis=1)

    def check_fields(self, where: str) -> None:
        rule_name(where, "name", self.name)
        if not isinstance(self.inputs, (tuple, list)) or not 2 <= len(self.inputs) <= MAX_CONCAT:
            raise ModelRuleError(where, "inputs", f"must be 2..{MAX_CONCAT} tensor names, not {show(self.inputs)}")
        for i, name in enumerate(self.inputs):
            rule_name(where, f"inputs[{i}]", name)
        if len(set(self.inputs)) != len(self.inputs):
            raise ModelRuleError(where, "inputs", f"names a tensor twice: {show(list(self.inputs))}")
        rule_name(where, "output", self.output)

    @staticmethod
    def check_shapes(where: str, parts: list) -> tuple[tuple[int, int, int], int]:
        """The output shape and code width of joining codes tensors ``parts`` (:class:`TensorInfo` each)."""
        first = parts[0]
        for i, t in enumerate(parts[1:], start=1):
            if t.shape[1:] != first.shape[1:]:
                raise ModelRuleError(where, f"inputs[{i}]", f"is a {t.shape[1]}x{t.shape[2]} map; inputs[0] is "
                                     f"{first.shape[1]}x{first.shape[2]}: a concatenation joins maps of one size")
            if t.bits != first.bits:
                raise ModelRuleError(where, f"inputs[{i}]", f"holds {t.bits}-bit codes, inputs[0] {first.bits}-bit: "
                                     "a concatenation joins the codes of one quantizer")
        channels = sum(t.shape[0] for t in parts)
        if channels > MAX_CHANNELS:
            raise ModelRuleError(where, "inputs", f"joins {channels} channels, more than {MAX_CHANNELS}")
        return (channels, *first.shape[1:]), first.bits


@dataclass
class SubsampleNode:
    """Every ``stride``-th row and column of a value tensor: ``out[n, c, y, x] = in[n, c, y * stride, x * stride]``,
    ``Ho = ceil(H / stride)`` (as the slice ``::stride`` gives); same scale.

    It stands for the subsampling of He et al.'s option-A shortcut of a CIFAR ResNet (akamaster's
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``), the residual stream brought to the
    block's size without a conv; the zero channels of its ``F.pad`` are the addition's ``b_offset``.
    """

    name: str
    input: str
    output: str
    stride: int
    op = "subsample"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Values ``(N, C, Ho, Wo)`` of ``x`` ``(N, C, H, W)`` (same dtype)."""
        return x[:, :, ::self.stride, ::self.stride]

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = in_shape
        return (c, -(-h // self.stride), -(-w // self.stride))

    def check_fields(self, where: str) -> None:
        for name in ("name", "input", "output"):
            rule_name(where, name, getattr(self, name))
        rule_int(where, "stride", self.stride, 1, MAX_STRIDE)


Node = InputNode | ConvNode | ActivateNode | AddNode | PoolNode | AvgPoolNode | MaxPoolNode | ConcatNode | SubsampleNode
NODE_TYPES = (InputNode, ConvNode, ActivateNode, AddNode, PoolNode, AvgPoolNode, MaxPoolNode, ConcatNode, SubsampleNode)


@dataclass
class TensorInfo:
    """What :meth:`CompiledModel.validate` knows of a tensor: shape, code bits (None: values), bound of values."""

    shape: tuple[int, int, int]
    bits: int | None
    bound: int | None = None


def node_inputs(node) -> tuple[str, ...]:
    """The tensors ``node`` reads (none for the input node)."""
    if isinstance(node, InputNode):
        return ()
    return tuple(node.inputs) if isinstance(node, (AddNode, ConcatNode)) else (node.input,)


def node_where(i: int, node) -> str:
    """``node 3 (conv 'blocks.0.conv1')``: how errors name a node."""
    name = getattr(node, "name", getattr(node, "output", None))
    return f"node {i} ({getattr(node, 'op', type(node).__name__)} {show(name)})"


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

    def validate(self, arrays: bool = True) -> dict[str, TensorInfo]:
        """Check every rule (see the module docstring); raise :class:`ModelRuleError` at the first broken one.

        ``arrays=False`` checks only the scalar fields and the graph (what the
        loader checks before it reads any array). Returns every tensor's
        :class:`TensorInfo` (bounds only with ``arrays``).
        """
        num_classes = rule_int("model", "num_classes", self.num_classes, 1, MAX_CLASSES)
        rule_name("model", "logits", self.logits)
        if not isinstance(self.nodes, list) or not 2 <= len(self.nodes) <= MAX_NODES:
            raise ModelRuleError("model", "nodes", f"must be a list of 2..{MAX_NODES} nodes")
        options = self._check_source()
        if not isinstance(self.scales, dict):
            raise ModelRuleError("model", "scales", f"must be a dict of tensor scales, not {show(self.scales)}")
        tensors: dict[str, TensorInfo] = {}
        names: set[str] = set()
        for i, node in enumerate(self.nodes):
            where = node_where(i, node)
            if not isinstance(node, NODE_TYPES):
                raise ModelRuleError(where, "op", "is not a node of the compiled model")
            if isinstance(node, InputNode) != (i == 0):
                raise ModelRuleError(where, "op", "the input node comes first, and only once")
            node.check_fields(where)
            name = node.output if isinstance(node, InputNode) else node.name
            if name in names:
                raise ModelRuleError(where, "name", f"{name!r} is the name of an earlier node")
            names.add(name)
            if node.output in tensors:
                raise ModelRuleError(where, "output", f"tensor {node.output!r} is already defined by an earlier node")
            tensors[node.output] = self._check_node(node, where, tensors, arrays, options)
            if tensors[node.output].bound is not None and tensors[node.output].bound >= VALUE_LIMIT:
                raise ModelRuleError(where, "output", f"values up to {show(tensors[node.output].bound)} reach "
                                                      f"2^62; int64 sums could overflow")
        last = self.nodes[-1]
        if self.logits != last.output or tensors[last.output].bits is not None:
            raise ModelRuleError("model", "logits", f"= {self.logits!r}; must be the value tensor of the last node "
                                                    f"({last.output!r})")
        if tensors[self.logits].shape != (num_classes, 1, 1):
            raise ModelRuleError("model", "logits", f"tensor has shape {list(tensors[self.logits].shape)}, "
                                                    f"must be [{num_classes}, 1, 1] (num_classes)")
        accumulators = {f"{node.name}.acc": node_where(i, node) for i, node in enumerate(self.nodes)
                        if isinstance(node, ConvNode)}
        for i, node in enumerate(self.nodes):
            if node.output in accumulators:
                raise ModelRuleError(node_where(i, node), "output", f"tensor {node.output!r} is named as the "
                                     f"accumulator of {accumulators[node.output]} ('<layer>.acc', which the integer "
                                     "reference keeps beside the tensors)")
        read = {name for node in self.nodes[1:] for name in node_inputs(node)}
        for i, node in enumerate(self.nodes[:-1]):
            if node.output not in read:
                raise ModelRuleError(node_where(i, node), "output", f"tensor {node.output!r} is read by no later node; "
                                     "a compiled model holds only the nodes its logits depend on")
        problem = image_shape_problem(self.source["dataset"], list(self.input.shape)) if options is not None else None
        if problem:
            raise ModelRuleError("model", "source.dataset", f"= {self.source['dataset']!r}, but the input node's "
                                 f"shape {problem}")
        classes = self.source.get("classes") if options is not None else None
        if classes is not None and len(classes) != self.num_classes:
            raise ModelRuleError("model", "source.classes", f"names {len(classes)} classes, but the logits are "
                                 f"{self.num_classes}")
        if options is not None:
            self._check_plan(arrays)
        values = {name for name, t in tensors.items() if t.bits is None}
        for name in self.scales:
            if name not in values:
                raise ModelRuleError("model", "scales", f"names {show(name)}, which is not a value tensor")
        for name in values:
            if name not in self.scales:
                raise ModelRuleError("model", "scales", f"has no entry for value tensor {name!r}")
        return tensors

    def _check_plan(self, arrays: bool) -> None:
        """``source.plan`` describes the conv nodes: the input image has :data:`PLAN_INPUT_BITS`-bit codes, each conv
        node has the bit-widths and outer widths the plan gives its layer (:func:`plan_layer_widths`, the nodes in
        their order; the first layer is one that reads the image, the last the last conv node, unless the trainer's
        first or last layer is one the compiler left out: a training-only head the forward calls before the others,
        on the image, or after the classifier), and, with ``arrays``, the level tables it makes uniform are
        (:meth:`_check_plan_levels`). A broken one names the plan's field (the nodes are what runs)."""
        plan = self.source["plan"]
        convs = [(i, node) for i, node in enumerate(self.nodes) if isinstance(node, ConvNode)]
        image = self.input.output
        if self.input.bits != PLAN_INPUT_BITS:
            raise ModelRuleError(node_where(0, self.input), "bits", f"= {self.input.bits}; source.plan quantizes "
                                 f"the input image to its {PLAN_INPUT_BITS}-bit codes")
        # the trainer's first layer is the first the forward calls: one that reads the image, not necessarily
        # the first of the nodes (which follow the logits' inputs in argument order)
        first = [k for k, (_, node) in enumerate(convs[:-1]) if node.input == image] or [0]
        problems = []
        for k in first:
            order = [convs[k], *convs[:k], *convs[k + 1:]]
            for lead, tail in ((False, False), (False, True), (True, False), (True, True)):
                problem = self._plan_width_problem(plan, order, image, lead, tail)
                if problem is None and arrays:
                    try:
                        self._check_plan_levels(order, lead, tail)
                    except ModelRuleError as e:
                        problem = len(order), e     # (after every width problem: the widths agreed)
                if problem is None:
                    return
                problems.append(problem)
        raise max(problems, key=lambda p: p[0])[1]     # (the order that agrees longest: the likely first layer)

    def _check_plan_levels(self, convs: list, lead: bool, tail: bool) -> None:
        """The level tables of the quantizers ``source.plan`` makes uniform (:func:`plan_uniform_quantizers`, the
        conv nodes ``convs`` in the trainer's order, as :meth:`_check_plan` found it, after a layer the compiler
        left out with ``lead``, before one with ``tail``) are :func:`uniform_levels`, and the input node's table is
        the pixels' own codes; a broken one names the plan's field (the input node's, for the image's quantizer).
        The last layer's activations are held to it only where the plan makes every quantizer uniform: a layer the
        compiler leaves out (a training-only head) may read them first, and then they are that layer's (LCQ)."""
        plan = self.source["plan"]
        pixels = np.arange(256)
        if not np.array_equal(self.input.table, pixels):   # uniform, 8 bits, clip 1 (the loader's pixel / 255)
            j = int(np.flatnonzero(self.input.table != pixels)[0])
            raise ModelRuleError(node_where(0, self.input), "table", f"[{j}] = {show(self.input.table[j])}, not {j}: "
                                 "source.plan quantizes the input image uniformly to its 8-bit codes with clip 1, "
                                 "code = pixel")
        pooled = {node.output: node.input for node in self.nodes if isinstance(node, MaxPoolNode)}

        def quantizer(tensor: str) -> str:          # the codes a max pooling reads are its quantizer's
            while tensor in pooled:
                tensor = pooled[tensor]
            return tensor

        image = self.input.output
        layers = [(node.name, quantizer(node.input)) for _, node in convs]
        uniform = plan_uniform_quantizers(plan, _with_left_out(layers, image, lead, tail), image)
        for k, (i, node) in enumerate(convs):
            weights, acts = uniform[node.name]
            if k == len(convs) - 1 and acts is EDGE_UNIFORM:
                acts = None
            for why, field_name, bits, outer, signed, what in (
                    (weights, "w_levels", node.wbits, node.outer_wbits, True, "weight"),
                    (acts, "a_levels", node.abits, node.outer_abits, False, "activation")):
                have = getattr(node, field_name)
                want = uniform_levels(bits, outer, signed)
                if why is None or np.array_equal(have, want):
                    continue
                j = int(np.flatnonzero(have != want)[0])
                index, symbol = ("k", "w") if signed else ("j", "a")
                formula = f"round(s'_{symbol} * {index} / s_{symbol}) = {show(want.tolist())}"
                differs = f"([{j}] = {show(have[j])}, not {show(want[j])})"
                if why[0] == "input":
                    raise ModelRuleError(node_where(i, node), field_name, f"= {show(have.tolist())} {differs}; "
                                         f"{why[1]}: its levels are {formula}")
                key = why[0].removeprefix("source.plan.")
                value = plan["layer_bits"][node.name] if key.startswith("layer_bits") else plan[key]
                raise ModelRuleError("model", why[0], f"= {show(value)}, but {node_where(i, node)} has non-uniform "
                                     f"{what} levels {field_name} {show(have.tolist())} {differs}; {why[1]}: "
                                     f"{formula}; a compiled model records the plan its nodes were compiled with")

    @staticmethod
    def _plan_width_problem(plan: dict, convs: list, image: str, lead: bool,
                            tail: bool) -> tuple[int, ModelRuleError] | None:
        """The first conv node of ``convs`` ((index, node) in the trainer's layer order, after a layer the compiler
        left out with ``lead``, before one with ``tail``) whose widths are not the ones ``plan`` gives it: its place
        in ``convs`` and an error naming the plan's field; None if there is none."""
        widths = plan_layer_widths(plan, _with_left_out([(node.name, node.input) for _, node in convs], image, lead,
                                                        tail), image)
        for k, (i, node) in enumerate(convs):
            own = plan["layer_bits"].get(node.name, ())
            edge = (k == 0 and not lead) or (k == len(convs) - 1 and not tail)
            keys = [("edge_bits" if edge else key) if not own else None for key in ("wbits", "abits")]
            keys += [None if len(own) == 4 else "outer_bits"] * 2
            for key, want, field_name, what in zip(keys, widths[node.name],
                                                   ("wbits", "abits", "outer_wbits", "outer_abits"),
                                                   ("{}-bit weights", "reads {}-bit codes", "b'_w {}", "b'_a {}")):
                # (a layer reading a signed activation reads its halves: codes of a bit less, b'_a a bit less)
                have = getattr(node, field_name) + (node.signed_input and field_name in ("abits", "outer_abits"))
                if have != want:
                    name = f"source.plan.{key}" if key else f"source.plan.layer_bits[{node.name!r}]"
                    value = plan[key] if key else plan["layer_bits"][node.name]
                    verb = "" if what.startswith("reads") else "has "
                    return k, ModelRuleError("model", name, f"= {show(value)}, but {node_where(i, node)} {verb}"
                                             f"{what.format(have)} ({field_name} {have}, where the plan gives "
                                             f"{want}); a compiled model records the plan its nodes were compiled "
                                             "with")
        return None

    def _scale(self, where: str, tensor: str) -> float:
        return rule_positive(where, f"scales[{tensor!r}]", self.scales.get(tensor))

    def _check_node(self, node, where: str, tensors: dict, arrays: bool, options: dict | None) -> TensorInfo:
        def need(name: str, codes: bool, field_name: str = "input") -> TensorInfo:
            t = tensors.get(name)
            if t is None:
                raise ModelRuleError(where, field_name, f"tensor {name!r} is not defined by an earlier node")
            if (t.bits is not None) != codes:
                raise ModelRuleError(where, field_name, f"tensor {name!r} must be {'codes' if codes else 'values'}")
            return t

        if isinstance(node, InputNode):
            if arrays:
                node.check_arrays(where)
            return TensorInfo(node.tensor_shape, node.bits)
        if isinstance(node, ConvNode):
            t = need(node.input, True)
            if tuple(node.in_shape) != t.shape:
                raise ModelRuleError(where, "in_shape", f"= {list(node.in_shape)} does not match its input tensor "
                                                        f"{node.input!r} {list(t.shape)}")
            if node.abits != t.bits:
                raise ModelRuleError(where, "abits", f"= {node.abits} differs from the {t.bits}-bit codes of its "
                                                     f"input {node.input!r}")
            if options is not None and node.mac != mac_kind(node.wbits, node.abits, options["max_lut_entries"]):
                raise ModelRuleError(where, "mac", f"= {node.mac!r}; with max_lut_entries "
                                     f"{options['max_lut_entries']} the compiler makes it "
                                     f"{mac_kind(node.wbits, node.abits, options['max_lut_entries'])!r}")
            if node.acc_limit() >= VALUE_LIMIT:
                raise ModelRuleError(where, "in_shape", "accumulators could reach 2^62")
            bound = node.check_arrays(where) if arrays else None
            if isinstance(node.stage, Thresholds):
                return TensorInfo(tuple(node.out_shape), node.stage.bits)
            if self._scale(where, node.output) != node.out_scale:
                raise ModelRuleError(where, "out_scale", f"= {show(node.out_scale)} differs from "
                                     f"scales[{node.output!r}] = {show(self.scales[node.output])}")
            return TensorInfo(tuple(node.out_shape), None, bound)
        if isinstance(node, ActivateNode):
            t = need(node.input, False)
            if arrays:
                node.stage.check_arrays(where, t.shape[0], Thresholds.limit(t.bound))
            return TensorInfo(t.shape, node.stage.bits)
        if isinstance(node, AddNode):
            a, b = need(node.inputs[0], False, "inputs[0]"), need(node.inputs[1], False, "inputs[1]")
            if a.shape[1:] != b.shape[1:] or node.b_offset + b.shape[0] > a.shape[0]:
                raise ModelRuleError(where, "inputs", f"operand shapes {list(a.shape)} and {list(b.shape)} differ"
                                     + (f" (b from channel b_offset = {node.b_offset})" if node.b_offset else "")
                                     + ": b adds to channels of a, of the same H x W")
            scale = self._scale(where, node.inputs[0])
            if self._scale(where, node.inputs[1]) != scale or self._scale(where, node.output) != scale:
                raise ModelRuleError(where, "inputs", "operands and sum must have one scale (scales differ)")
            return TensorInfo(a.shape, None, a.bound + b.bound if arrays else None)
        if isinstance(node, MaxPoolNode):
            t = need(node.input, True)
            return TensorInfo(node.check_shape(where, t.shape), t.bits)
        if isinstance(node, ConcatNode):
            parts = [need(name, True, f"inputs[{i}]") for i, name in enumerate(node.inputs)]
            return TensorInfo(*ConcatNode.check_shapes(where, parts))
        if isinstance(node, SubsampleNode):
            t = need(node.input, False)
            if self._scale(where, node.output) != self._scale(where, node.input):
                raise ModelRuleError(where, "output", "must have its input's scale (scales differ)")
            return TensorInfo(node.out_shape(t.shape), None, t.bound)
        t = need(node.input, False)
        if options is not None and node.frac_bits != options["pool_frac_bits"]:
            raise ModelRuleError(where, "frac_bits", f"= {node.frac_bits}; the compile options say "
                                                     f"pool_frac_bits {options['pool_frac_bits']}")
        shape = node.check_shape(where, t.shape) if isinstance(node, AvgPoolNode) else node.out_shape(t.shape)
        if arrays:
            node.check_arrays(where, t.shape, t.bound)
        return TensorInfo(shape, node.stage.bits)

    def _check_source(self) -> dict | None:
        """``source`` is {} or what :func:`compiler.lower.compile_checkpoint` records; returns its options."""
        if not isinstance(self.source, dict):
            raise ModelRuleError("model", "source", f"must be a dict, not {show(self.source)}")
        if not self.source:
            return None
        for key, kind in SOURCE_FIELDS.items():
            value = self.source.get(key, ...)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ModelRuleError("model", f"source.{key}", f"must be {getattr(kind, '__name__', 'a number')}, "
                                                               f"not {show(value) if value is not ... else 'missing'}")
        for key, kind in SOURCE_OPTIONAL.items():
            if key in self.source and not isinstance(self.source[key], kind):
                raise ModelRuleError("model", f"source.{key}", f"must be {kind.__name__}, not {show(self.source[key])}")
        extra = set(self.source) - set(SOURCE_FIELDS) - set(SOURCE_OPTIONAL)
        if extra:
            raise ModelRuleError("model", "source", f"has unknown entries {sorted(map(show, extra))}")
        if not self.source["checkpoint"]:       # Path("") is ".": a directory, never the checkpoint
            raise ModelRuleError("model", "source.checkpoint", "must be the path of the checkpoint the model was "
                                                               "compiled from, not ''")
        if self.source["dataset"] not in DATASET_SHAPES:
            raise ModelRuleError("model", "source.dataset", "must name the dataset the checkpoint was trained on, "
                                 f"one of {', '.join(DATASET_SHAPES)}; not {show(self.source['dataset'])}")
        problem = class_names_problem(self.source["classes"]) if "classes" in self.source else None
        if problem:
            raise ModelRuleError("model", "source.classes", f"gives {problem}")
        if self.source["dataset"] == "folder" and "classes" not in self.source:
            raise ModelRuleError("model", "source.classes", "is missing: a model of a folder of images records its "
                                 "class names")
        if not re.fullmatch(r"[0-9a-f]{64}", self.source["sha256"]):
            raise ModelRuleError("model", "source.sha256", f"must be 64 hex digits, not {show(self.source['sha256'])}")
        check_plan(self.source["plan"])
        options = self.source["options"]
        extra = set(options) - set(OPTION_FIELDS)
        if extra:
            raise ModelRuleError("model", "source.options", f"has unknown entries {sorted(map(show, extra))}")
        for key in OPTION_FIELDS:
            if key == "max_lut_entries":
                rule_int("model", f"source.options.{key}", options.get(key), 1, INT64_LIMIT)
            else:
                rule_int("model", f"source.options.{key}", options.get(key), *FRAC_BITS)
        return options
