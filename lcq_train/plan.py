"""Quantization plan: which method and bit-widths each layer of a model gets.

A model lists its quantized layers with ``model.quant_layers()`` as (layer,
activation quantizer feeding it) pairs; :func:`quantize_model` gives any other
``nn.Module`` that form by tracing it (:mod:`lcq_train.graph`). It (and
:func:`apply_plan`, the same with a plan) installs weight and activation
quantizers per the plan: the first and last layers at
``edge_bits`` with the uniform quantizer, the input image at 8 bits with a
fixed alpha = 1 (pixel values in [0, 1] map to their uint8 codes), every other
layer at (wbits, abits) unless ``layer_bits`` overrides it.

Outer widths (b' of eq. 14): ``outer_bits`` is one width for weights and
activations (``8``), a pair ``(b'_w, b'_a)`` (``--outer-bits 6/4``), or None
(no outer re-quantization). Every layer gets them unless ``layer_bits`` gives
it its own, ``NAME: (W, A, b'_w, b'_a)``; each width must be at least its
quantizer's bits (the 8-bit input image included), so narrowing the inner
layers below 8 bits, as in the paper's Table 7, gives the 8-bit edge layers
widths of their own: ``--outer-bits 6/4 --layer-bits conv1=8/8:8/8
--layer-bits fc=8/8:8/8``. ``weight_norm`` is "lwn" (limited weight
normalization, eq. 13) or "standardize" (the conventional standardization of
APoT: no rescaling by sigma_w) for the inner layers; the 8-bit uniform edge
layers keep LWN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from torch import nn

from .arguments import IntRange
from .batched_tables import batch_tables
from .layers import QAct
from .quantizer import BITS, CLIP, INTERVALS, MAX_OUTER_BITS, METHODS, WEIGHT_NORMS, Quantizer, QuantSpec

INPUT_BITS = 8      # the input image is quantized to its own uint8 codes
OUTER_WIDTH = IntRange(BITS.lo, MAX_OUTER_BITS)     # one outer width b'_w or b'_a


class OuterBits:
    """``--outer-bits``: ``B`` (b'_w = b'_a = B), ``BW/BA`` (b'_w, b'_a), or 0 (no outer re-quantization).

    An argparse type (text -> ``int``, ``(int, int)`` or None) and, as ``check``, the rule of the
    plan's ``outer_bits`` field, so that the option, a config file and a checkpoint are held to one rule."""

    __name__ = "outer bit-widths"

    def __init__(self, option: bool = False):
        self.option = option        # the command line's and config files' rule: also 0 and "BW/BA" text

    @staticmethod
    def describe() -> str:
        return (f"0 or {OUTER_WIDTH.describe()} (b'_w = b'_a), or BW/BA (weights/activations) with each "
                f"{OUTER_WIDTH.describe()}, e.g. 8 or 6/4")

    def __call__(self, text: str):
        import argparse

        try:
            return self.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def parse(self, text: str):
        parts = str(text).strip().split("/")
        try:
            if len(parts) > 2:
                raise ValueError
            widths = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"must be {self.describe()}, not {text!r}") from None
        if widths == [0]:
            return None
        if not all(OUTER_WIDTH.accepts(b) for b in widths):
            raise ValueError(f"must be {self.describe()}, not {text!r}")
        return self.normalize(widths[0] if len(widths) == 1 else tuple(widths))

    @staticmethod
    def normalize(value):
        """An equal pair as one width; a list as a tuple."""
        if isinstance(value, (list, tuple)):
            value = tuple(value)
            if len(value) == 2 and value[0] == value[1]:
                return value[0]
        return value

    def check(self, value, name: str = "--outer-bits"):
        if self.option and isinstance(value, str):
            return self.parse(value)
        if self.option and value == 0 and not isinstance(value, bool):
            return None
        if value is None or OUTER_WIDTH.accepts(value):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(OUTER_WIDTH.accepts(b) for b in value):
            return self.normalize(value)
        raise ValueError(f"{name} must be {self.describe()} (in a file: null, B or [BW, BA]), not {value!r}")


OUTER_BITS = OuterBits()                    # the plan's field
OUTER_BITS_OPTION = OuterBits(option=True)  # --outer-bits (and its key in a --config file)


def show_outer(value) -> str:
    """``outer_bits`` as the option spells it: 8, 6/4 or 0."""
    if value is None:
        return "0"
    return f"{value[0]}/{value[1]}" if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class QuantPlan:
    """How a model is quantized: ``method`` (fp, uniform, lcq) at ``wbits``/``abits`` with outer widths
    ``outer_bits`` (one b' for both operands, a pair (b'_w, b'_a), or None for none), ``K`` compander intervals,
    initial clips ``alpha_w``/``alpha_a``, the first and last layers at ``edge_bits``, per-layer overrides
    ``layer_bits`` (name -> (W, A) or (W, A, b'_w, b'_a)) and ``weight_norm`` (lwn, standardize). Checked when made
    (ValueError naming the option), so a plan read from a checkpoint or a model file obeys the rules of
    ``lcq train``'s options."""

    method: str = "fp"
    wbits: int = 32
    abits: int = 32
    outer_bits: int | tuple[int, int] | None = 8     # b' (both), (b'_w, b'_a) or None
    K: int = 16
    alpha_w: float = 3.0
    alpha_a: float = 8.0
    edge_bits: int = 8
    layer_bits: dict[str, tuple[int, ...]] = field(default_factory=dict)   # (W, A) or (W, A, b'_w, b'_a)
    weight_norm: str = "lwn"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        object.__setattr__(self, "outer_bits", OUTER_BITS.check(self.outer_bits))
        if self.weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"--weight-norm must be one of {WEIGHT_NORMS}, not {self.weight_norm!r}")
        INTERVALS.check(self.K, "--K (compander intervals)")
        CLIP.check(self.alpha_w, "--alpha-w")
        CLIP.check(self.alpha_a, "--alpha-a")
        if not isinstance(self.layer_bits, dict):
            raise ValueError(f"per-layer bit-widths must map layer names to (wbits, abits), not {self.layer_bits!r}")
        for name, pair in self.layer_bits.items():
            if not isinstance(name, str) or not isinstance(pair, (tuple, list)) or len(pair) not in (2, 4) \
                    or not all(BITS.accepts(b) for b in pair[:2]) or not all(OUTER_WIDTH.accepts(b) for b in pair[2:]):
                raise ValueError(f"layer {name!r}: bits must be (wbits, abits), each {BITS.describe()}, or (wbits, "
                                 f"abits, b'_w, b'_a) with b' {OUTER_WIDTH.describe()}, not {pair!r}")
            if len(pair) == 4 and (pair[2] < pair[0] or pair[3] < pair[1]):
                raise ValueError(f"layer {name!r}: outer widths {pair[2]}/{pair[3]} are narrower than its bits "
                                 f"{pair[0]}/{pair[1]}; b'_w must be >= wbits and b'_a >= abits (e.g. "
                                 f"{name}={pair[0]}/{pair[1]}:{max(pair[0], pair[2])}/{max(pair[1], pair[3])})")
        object.__setattr__(self, "layer_bits", {name: tuple(pair) for name, pair in self.layer_bits.items()})
        if self.method == "fp":
            return
        for what, bits in (("--wbits", self.wbits), ("--abits", self.abits), ("--edge-bits", self.edge_bits)):
            BITS.check(bits, what)
        if self.outer_bits is not None:
            for what, outer, flag, bits in (("b'_w", self.outer_w, "--wbits", self.wbits),
                                            ("b'_a", self.outer_a, "--abits", self.abits)):
                if outer < bits:
                    fix = (f"{max(self.outer_w, self.wbits)}/{max(self.outer_a, self.abits)}"
                           if isinstance(self.outer_bits, tuple) else str(max(self.wbits, self.abits)))
                    raise ValueError(f"--outer-bits {show_outer(self.outer_bits)}: {what} = {outer} is narrower than "
                                     f"{flag} {bits}; each outer width must be at least its quantizer's bits and at "
                                     f"most {MAX_OUTER_BITS} (e.g. --outer-bits {fix}), or 0 for none")
            if not any(len(v) == 4 for v in self.layer_bits.values()):   # (else per layer, on the model)
                plain = list(self.layer_bits.values())
                need_w = max(self.edge_bits, self.wbits, *(v[0] for v in plain))
                need_a = max(INPUT_BITS, self.edge_bits, self.abits, *(v[1] for v in plain))
                if self.outer_w < need_w or self.outer_a < need_a:
                    raise ValueError(_narrow(self.outer_bits, need_w, need_a))

    @property
    def outer_w(self) -> int | None:
        """b'_w of the inner layers (None: no outer re-quantization)."""
        return self.outer_bits[0] if isinstance(self.outer_bits, tuple) else self.outer_bits

    @property
    def outer_a(self) -> int | None:
        """b'_a of the inner layers (None: no outer re-quantization)."""
        return self.outer_bits[1] if isinstance(self.outer_bits, tuple) else self.outer_bits

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_bits"] = {k: list(v) for k, v in self.layer_bits.items()}
        if isinstance(self.outer_bits, tuple):
            d["outer_bits"] = list(self.outer_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantPlan":
        """The plan of :meth:`to_dict`'s ``d``; ValueError names a key that does not belong or a bad value.
        Keys added since a file was written take their defaults (``weight_norm``: "lwn", what
        every plan before it used)."""
        if not isinstance(d, dict):
            raise ValueError(f"a quantization plan must be a JSON object, not {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown quantization plan key(s) {unknown}; the keys are {sorted(known)}")
        return cls(**d)


def _narrow(outer, need_w: int, need_a: int, layer: str = "") -> str:
    """The message for outer widths below the widest quantizer's bits (the input image's 8 included)."""
    if isinstance(outer, tuple):
        widest = f"{need_w}-bit weights, {need_a}-bit activations"
        want = f"{max(outer[0], need_w)}/{max(outer[1], need_a)}"
    else:
        widest, want = f"{max(need_w, need_a)} bits", str(max(need_w, need_a))
    where = f": layer {layer!r}" if layer else ""
    return (f"--outer-bits {show_outer(outer)} is narrower than the widest quantizer ({widest}{where}, the "
            f"{INPUT_BITS}-bit input image included); widen it (--outer-bits {want}, at most {MAX_OUTER_BITS}, or 0 "
            "for none), or give the wider layers outer widths of their own (--layer-bits NAME=W/A:BW/BA, e.g. "
            "the 8-bit edge layers NAME=8/8:8/8)")


def parse_layer_bits(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=W/A`` or ``NAME=W/A:BW/BA`` strings (e.g. ``blocks.0.conv1=4/3``,
    ``blocks.0.conv1=3/3:6/4`` with outer widths b'_w/b'_a) into {name: (W, A)} or {name: (W, A, BW, BA)}."""
    out = {}
    for item in items:
        try:
            name, spec = item.split("=")
            groups = spec.split(":")
            if len(groups) > 2:
                raise ValueError
            values = []
            for group in groups:
                w, a = (int(b) for b in group.split("/"))
                values += [w, a]
        except ValueError:
            raise ValueError(f"layer bit-width {item!r} must look like NAME=W/A or NAME=W/A:BW/BA (outer widths), "
                             "e.g. blocks.0.conv1=4/3 or blocks.0.conv1=3/3:6/4") from None
        out[name.strip()] = tuple(values)
    return out


def layer_bits(model: nn.Module, plan: QuantPlan) -> dict[str, tuple[int, int]]:
    """(wbits, abits) of every quantized layer under ``plan``, in forward order."""
    pairs = model.quant_layers()
    return _bits_of(pairs, plan, _image(model, pairs))


def _image(model: nn.Module, pairs: list[tuple[str, str]]) -> str | None:
    """The activation quantizer of the input image (a built-in model's: its first layer's)."""
    return model.image_input() if callable(getattr(model, "image_input", None)) else pairs[0][1]


def _bits_of(pairs: list[tuple[str, str]], plan: QuantPlan, image: str | None) -> dict[str, tuple[int, int]]:
    names = [layer for layer, _ in pairs]
    unknown = sorted(set(plan.layer_bits) - set(names))
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown} in per-layer bit-widths; the model's layers are {names}")
    bits = {}
    for i, name in enumerate(names):
        edge = i in (0, len(names) - 1)
        default = (plan.edge_bits, plan.edge_bits) if edge else (plan.wbits, plan.abits)
        bits[name] = tuple(plan.layer_bits.get(name, default)[:2])      # (outer widths: _outer_of)
    if plan.method != "fp":
        shared: dict[str, tuple[str, int]] = {}
        for name, act_name in pairs:
            abits = INPUT_BITS if act_name == image else bits[name][1]     # the image is 8 bits, whatever abits
            first, other = shared.setdefault(act_name, (name, abits))
            if other != abits:
                raise ValueError(f"layers sharing input {act_name!r} need the same activation bits, "
                                 f"but {name!r} asks for {abits} and {first!r} for {other}")
    return bits


def outer_widths(model: nn.Module, plan: QuantPlan) -> dict[str, tuple[int | None, int | None]]:
    """(b'_w, b'_a) of every quantized layer under ``plan``, in forward order (see the module's docstring)."""
    pairs = model.quant_layers()
    image = _image(model, pairs)
    return _outer_of(pairs, plan, _bits_of(pairs, plan, image), image)


def _outer_of(pairs: list[tuple[str, str]], plan: QuantPlan, bits: dict[str, tuple[int, int]],
              image: str) -> dict[str, tuple[int | None, int | None]]:
    """Outer widths per layer; ValueError names a layer whose widths are below its bits, and the fix."""
    if plan.method == "fp":                                     # no quantizer: nothing to check
        return {name: (plan.outer_w, plan.outer_a) for name, _ in pairs}
    out: dict[str, tuple[int | None, int | None]] = {}
    shared: dict[str, tuple[str, int | None]] = {}
    for name, act_name in pairs:
        w, a = bits[name]
        a_in = INPUT_BITS if act_name == image else a          # the image is quantized to 8 bits, whatever abits
        own = plan.layer_bits.get(name, ())
        if len(own) == 4:
            ow, oa = own[2], own[3]
            if act_name == image and oa < INPUT_BITS:
                raise ValueError(f"layer {name!r} reads the {INPUT_BITS}-bit input image, so its b'_a must be at least "
                                 f"{INPUT_BITS}, not {oa} (e.g. {name}={w}/{a}:{ow}/{INPUT_BITS})")
        elif plan.outer_bits is None:
            ow = oa = None
        else:
            ow, oa = plan.outer_w, plan.outer_a
            if ow < w or oa < a_in:
                own = f"{name}={w}/{a}:{max(ow, w)}/{max(oa, a_in)}"
                raise ValueError(_narrow(plan.outer_bits, w, a_in, name).replace(
                    "give the wider layers outer widths of their own (--layer-bits NAME=W/A:BW/BA, e.g. the 8-bit edge "
                    "layers NAME=8/8:8/8)", f"give that layer outer widths of its own (--layer-bits {own})"))
        out[name] = (ow, oa)
        first, other = shared.setdefault(act_name, (name, oa))
        if other != oa and plan.method != "fp":
            raise ValueError(f"layers sharing input {act_name!r} need the same activation outer width b'_a, "
                             f"but {name!r} asks for {oa} and {first!r} for {other}")
    return out


def quantize_model(model: nn.Module, plan: QuantPlan | None = None, **fields) -> nn.Module:
    """``model`` with the quantizers of ``plan`` (a :class:`QuantPlan`, or its fields as keywords:
    ``method="lcq", wbits=3, abits=3`` by default, ``edge_bits=8``, ``layer_bits={NAME: (W, A)}``,
    ``outer_bits`` (8 or (b'_w, b'_a)), ``K``, ``alpha_w``, ``alpha_a``, ``weight_norm`` ("lwn" or
    "standardize"); keywords next to ``plan`` replace its fields).

    The paper's rules: the weights of every conv and linear layer go through an LWN weight
    quantizer (the inner layers' through standardization with ``weight_norm="standardize"``),
    activations are quantized where they enter those layers (unsigned after ReLU, and after SiLU, GELU, Mish
    and hardswish: their dip clipped),
    the first and last layers are at ``edge_bits`` with the uniform quantizer, the input image is
    quantized to its uint8 codes, 2-bit weights are ternary; ``layer_bits`` overrides the bits of
    layers by name (ValueError lists the model's layer names when one does not exist).

    A model that lists its layers with ``quant_layers()`` (those of :mod:`lcq_train.models`, or
    one written with :mod:`lcq_train.layers`) is changed in place and returned. Any other
    ``nn.Module`` (full precision, perhaps pretrained) is traced with ``torch.fx``
    (:func:`lcq_train.graph.prepare`): the result is a new module (a ``torch.fx.GraphModule``
    holding the model's own layers and parameters under their names, plus the quantizers), ready
    for ``lcq train`` or any training loop (its quantizer parameters: :func:`quantizer_parameters`).
    Method ``fp`` installs no quantizer (the traced model is then the FP network in quantizable form,
    which a later ``--init`` carries over). Off the CPU, an LCQ model's forward builds its quantizers'
    tables in batches (:func:`lcq_train.batched_tables.batch_tables`). Raises ValueError for what cannot
    be quantized."""
    from .graph import prepare, quantizable

    if plan is None:
        plan = QuantPlan(**{"method": "lcq", "wbits": 3, "abits": 3, **fields})
    elif fields:
        plan = replace(plan, **fields)
    if not isinstance(model, nn.Module):
        raise ValueError(f"a model to quantize must be a torch.nn.Module, not {type(model).__name__}")
    if not quantizable(model):
        model = prepare(model, check=lambda pairs, image: _outer_of(pairs, plan, _bits_of(pairs, plan, image), image))
    if plan.method == "fp":
        return model
    model = _install(model, plan)
    return batch_tables(model) if plan.method == "lcq" else model


def apply_plan(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """Install the plan's quantizers in ``model`` (in place; returns it). ``fp`` leaves it unchanged.

    :func:`quantize_model` with a plan; for a model without ``quant_layers()`` it returns a new module."""
    return quantize_model(model, plan)


def _install(model: nn.Module, plan: QuantPlan) -> nn.Module:
    pairs = model.quant_layers()
    image = _image(model, pairs)
    bits = _bits_of(pairs, plan, image)
    outer = _outer_of(pairs, plan, bits, image)
    modules = dict(model.named_modules())
    done: set[str] = set()
    for i, (name, act_name) in enumerate(pairs):
        wbits, abits = bits[name]
        outer_w, outer_a = outer[name]
        edge = i in (0, len(pairs) - 1)
        method = "uniform" if edge else plan.method
        norm = "lwn" if edge else plan.weight_norm          # the 8-bit uniform edge layers keep LWN
        layer = modules[name]
        device = layer.weight.device
        layer.wq = Quantizer(
            QuantSpec(method, wbits, outer_w, plan.K, plan.alpha_w), signed=True, weight_norm=norm).to(device)
        if act_name in done:
            continue
        done.add(act_name)
        if act_name == image:
            spec = QuantSpec("uniform", INPUT_BITS, outer_a, plan.K, alpha=1.0, learn_alpha=False)
        else:
            spec = QuantSpec(method, abits, outer_a, plan.K, plan.alpha_a)
        parent_name, _, attr = act_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        signed = act_name != image and getattr(modules.get(act_name), "signed", False)
        setattr(parent, attr, QAct(spec, signed=signed).to(device))
    return model


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable alpha/theta parameters of every quantizer in ``model``."""
    return [p for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False) if p.requires_grad]
