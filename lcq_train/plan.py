"""Quantization plan: which method and bit-widths each layer of a model gets.

A model lists its quantized layers with ``model.quant_layers()`` as (layer,
activation quantizer feeding it) pairs. :func:`apply_plan` installs weight and
activation quantizers per the plan: the first and last layers at
``edge_bits`` with the uniform quantizer, the input image at 8 bits with a
fixed alpha = 1 (pixel values in [0, 1] map to their uint8 codes), every other
layer at (wbits, abits) unless ``layer_bits`` overrides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .layers import QAct
from .quantizer import METHODS, Quantizer, QuantSpec


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
        if self.method != "fp":
            for what, bits in (("--wbits", self.wbits), ("--abits", self.abits), ("edge bits", self.edge_bits)):
                if not isinstance(bits, int) or not 2 <= bits <= 8:
                    raise ValueError(f"{what} must be an integer in 2..8 for method {self.method!r}, not {bits!r}")
        for name, pair in self.layer_bits.items():
            if len(pair) != 2 or not all(isinstance(b, int) and 2 <= b <= 8 for b in pair):
                raise ValueError(f"layer {name!r}: bits must be (wbits, abits) integers in 2..8, not {pair!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_bits"] = {k: list(v) for k, v in self.layer_bits.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantPlan":
        d = dict(d)
        d["layer_bits"] = {k: tuple(v) for k, v in d.get("layer_bits", {}).items()}
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
    pairs = model.quant_layers()
    names = [layer for layer, _ in pairs]
    unknown = sorted(set(plan.layer_bits) - set(names))
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown} in per-layer bit-widths; the model's layers are {names}")
    bits = {}
    for i, name in enumerate(names):
        edge = i in (0, len(names) - 1)
        bits[name] = plan.layer_bits.get(name, (plan.edge_bits, plan.edge_bits) if edge else (plan.wbits, plan.abits))
    return bits


def apply_plan(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """Install the plan's quantizers in ``model`` (in place; returns it). ``fp`` leaves it unchanged."""
    if plan.method == "fp":
        return model
    bits = layer_bits(model, plan)
    pairs = model.quant_layers()
    modules = dict(model.named_modules())
    act_bits: dict[str, int] = {}
    for i, (name, act_name) in enumerate(pairs):
        wbits, abits = bits[name]
        edge = i in (0, len(pairs) - 1)
        method = "uniform" if edge else plan.method
        modules[name].wq = Quantizer(
            QuantSpec(method, wbits, plan.outer_bits, plan.K, plan.alpha_w), signed=True, weight_norm=True)
        if act_name in act_bits:
            if act_bits[act_name] != abits:
                raise ValueError(f"layers sharing input {act_name!r} need the same activation bits, "
                                 f"but {name!r} asks for {abits} and another for {act_bits[act_name]}")
            continue
        act_bits[act_name] = abits
        if i == 0:
            spec = QuantSpec("uniform", 8, plan.outer_bits, plan.K, alpha=1.0, learn_alpha=False)
        else:
            spec = QuantSpec(method, abits, plan.outer_bits, plan.K, plan.alpha_a)
        parent_name, _, attr = act_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, QAct(spec))
    return model


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable alpha/theta parameters of every quantizer in ``model``."""
    return [p for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False) if p.requires_grad]
