"""Quantization plan: which method and bit-widths each layer of a model gets.

A model lists its quantized layers with ``model.quant_layers()`` as (layer,
activation quantizer feeding it) pairs; :func:`quantize_model` gives any other
``nn.Module`` that form by tracing it (:mod:`lcq_train.graph`). It (and
:func:`apply_plan`, the same with a plan) installs weight and activation
quantizers per the plan: the first and last layers at
``edge_bits`` with the uniform quantizer, the input image at 8 bits with a
fixed alpha = 1 (pixel values in [0, 1] map to their uint8 codes), every other
layer at (wbits, abits) unless ``layer_bits`` overrides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from torch import nn

from .arguments import IntRange
from .layers import QAct
from .quantizer import BITS, CLIP, INTERVALS, MAX_OUTER_BITS, METHODS, Quantizer, QuantSpec

INPUT_BITS = 8      # the input image is quantized to its own uint8 codes


@dataclass(frozen=True)
class QuantPlan:
    method: str = "fp"
    wbits: int = 32
    abits: int = 32
    outer_bits: int | None = 8
    K: int = 16
    alpha_w: float = 3.0
    alpha_a: float = 8.0
    edge_bits: int = 8
    layer_bits: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.outer_bits is not None:
            IntRange(BITS.lo, MAX_OUTER_BITS).check(self.outer_bits, "--outer-bits")
        INTERVALS.check(self.K, "--K (compander intervals)")
        CLIP.check(self.alpha_w, "--alpha-w")
        CLIP.check(self.alpha_a, "--alpha-a")
        if not isinstance(self.layer_bits, dict):
            raise ValueError(f"per-layer bit-widths must map layer names to (wbits, abits), not {self.layer_bits!r}")
        for name, pair in self.layer_bits.items():
            if not isinstance(name, str) or not isinstance(pair, (tuple, list)) or len(pair) != 2 \
                    or not all(BITS.accepts(b) for b in pair):
                raise ValueError(f"layer {name!r}: bits must be (wbits, abits), each {BITS.describe()}, not {pair!r}")
        object.__setattr__(self, "layer_bits", {name: tuple(pair) for name, pair in self.layer_bits.items()})
        if self.method == "fp":
            return
        for what, bits in (("--wbits", self.wbits), ("--abits", self.abits), ("--edge-bits", self.edge_bits)):
            BITS.check(bits, what)
        if self.outer_bits is not None:
            widest = max(INPUT_BITS, self.edge_bits, self.wbits, self.abits, *(b for p in self.layer_bits.values() for b in p))
            if self.outer_bits < widest:
                raise ValueError(f"--outer-bits {self.outer_bits} is narrower than the widest quantizer ({widest} bits, "
                                 f"the {INPUT_BITS}-bit input image included); b' must be in {widest}..{MAX_OUTER_BITS}, "
                                 "or 0 for none")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_bits"] = {k: list(v) for k, v in self.layer_bits.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantPlan":
        """The plan of :meth:`to_dict`'s ``d``; ValueError names a key that does not belong or a bad value."""
        if not isinstance(d, dict):
            raise ValueError(f"a quantization plan must be a JSON object, not {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown quantization plan key(s) {unknown}; the keys are {sorted(known)}")
        return cls(**d)


def parse_layer_bits(items: list[str]) -> dict[str, tuple[int, int]]:
    """Parse ``NAME=W/A`` strings (e.g. ``blocks.0.conv1=4/3``) into {name: (W, A)}."""
    out = {}
    for item in items:
        try:
            name, bits = item.split("=")
            w, a = (int(b) for b in bits.split("/"))
        except ValueError:
            raise ValueError(f"layer bit-width {item!r} must look like NAME=W/A, e.g. blocks.0.conv1=4/3") from None
        out[name.strip()] = (w, a)
    return out


def layer_bits(model: nn.Module, plan: QuantPlan) -> dict[str, tuple[int, int]]:
    """(wbits, abits) of every quantized layer under ``plan``, in forward order."""
    return _bits_of(model.quant_layers(), plan)


def _bits_of(pairs: list[tuple[str, str]], plan: QuantPlan) -> dict[str, tuple[int, int]]:
    names = [layer for layer, _ in pairs]
    unknown = sorted(set(plan.layer_bits) - set(names))
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown} in per-layer bit-widths; the model's layers are {names}")
    bits = {}
    for i, name in enumerate(names):
        edge = i in (0, len(names) - 1)
        bits[name] = plan.layer_bits.get(name, (plan.edge_bits, plan.edge_bits) if edge else (plan.wbits, plan.abits))
    if plan.method != "fp":
        shared: dict[str, tuple[str, int]] = {}
        for name, act_name in pairs:
            abits = bits[name][1]
            first, other = shared.setdefault(act_name, (name, abits))
            if other != abits:
                raise ValueError(f"layers sharing input {act_name!r} need the same activation bits, "
                                 f"but {name!r} asks for {abits} and {first!r} for {other}")
    return bits


def quantize_model(model: nn.Module, plan: QuantPlan | None = None, **fields) -> nn.Module:
    """``model`` with the quantizers of ``plan`` (a :class:`QuantPlan`, or its fields as keywords:
    ``method="lcq", wbits=3, abits=3`` by default, ``edge_bits=8``, ``layer_bits={NAME: (W, A)}``,
    ``outer_bits``, ``K``, ``alpha_w``, ``alpha_a``; keywords next to ``plan`` replace its fields).

    The paper's rules: the weights of every conv and linear layer go through an LWN weight
    quantizer, activations are quantized where they enter those layers (unsigned after ReLU),
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
    which a later ``--init`` carries over). Raises ValueError for what cannot be quantized."""
    from .graph import prepare, quantizable

    if plan is None:
        plan = QuantPlan(**{"method": "lcq", "wbits": 3, "abits": 3, **fields})
    elif fields:
        plan = replace(plan, **fields)
    if not isinstance(model, nn.Module):
        raise ValueError(f"a model to quantize must be a torch.nn.Module, not {type(model).__name__}")
    if not quantizable(model):
        model = prepare(model, check=lambda pairs: _bits_of(pairs, plan))
    if plan.method == "fp":
        return model
    return _install(model, plan)


def apply_plan(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """Install the plan's quantizers in ``model`` (in place; returns it). ``fp`` leaves it unchanged.

    :func:`quantize_model` with a plan; for a model without ``quant_layers()`` it returns a new module."""
    return quantize_model(model, plan)


def _install(model: nn.Module, plan: QuantPlan) -> nn.Module:
    bits = layer_bits(model, plan)
    pairs = model.quant_layers()
    image = model.image_input() if callable(getattr(model, "image_input", None)) else pairs[0][1]
    modules = dict(model.named_modules())
    done: set[str] = set()
    for i, (name, act_name) in enumerate(pairs):
        wbits, abits = bits[name]
        edge = i in (0, len(pairs) - 1)
        method = "uniform" if edge else plan.method
        layer = modules[name]
        device = layer.weight.device
        layer.wq = Quantizer(
            QuantSpec(method, wbits, plan.outer_bits, plan.K, plan.alpha_w), signed=True, weight_norm=True).to(device)
        if act_name in done:
            continue
        done.add(act_name)
        if act_name == image:
            spec = QuantSpec("uniform", INPUT_BITS, plan.outer_bits, plan.K, alpha=1.0, learn_alpha=False)
        else:
            spec = QuantSpec(method, abits, plan.outer_bits, plan.K, plan.alpha_a)
        parent_name, _, attr = act_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        signed = act_name != image and getattr(modules.get(act_name), "signed", False)
        setattr(parent, attr, QAct(spec, signed=signed).to(device))
    return model


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable alpha/theta parameters of every quantizer in ``model``."""
    return [p for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False) if p.requires_grad]
