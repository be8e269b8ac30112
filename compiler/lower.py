"""Lower a trained, quantized PyTorch model to a :class:`compiler.graph.CompiledModel`.

``compile_checkpoint(path)`` rebuilds the model from an ``lcq train``
checkpoint and lowers it: per layer the weight codes and level tables from the
layer's quantizers, and the output stage that the layer's successor needs
(thresholds folding BN + ReLU + next compander; requantize into the residual
stream or the logits; the raw accumulator before global average pooling).
Supported: the small CNN and pre-activation ResNets of :mod:`lcq_train.models`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lcq_train.checkpoint import load_checkpoint
from lcq_train.layers import QAct, QConv2d, QLinear
from lcq_train.models.cnn import SmallCNN
from lcq_train.models.resnet import PreActResNet
from lcq_train.plan import QuantPlan
from lcq_train.quant import level_scale
from lcq_train.train import build_quantized_model

from . import stages
from .graph import FRAC_BITS, ActivateNode, AddNode, CompiledModel, ConvNode, InputNode, PoolNode, mac_kind


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
        if self.max_lut_entries < 1:
            raise ValueError(f"max-lut-entries must be positive, not {self.max_lut_entries}")


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """The quantized model of an ``lcq train`` checkpoint (eval mode, CPU) and the checkpoint dict
    (:func:`lcq_train.checkpoint.load_checkpoint`: no pickle, digest and fields checked; its
    ``sha256`` is the checkpoint's digest)."""
    state = load_checkpoint(path)
    plan = QuantPlan.from_dict(state["plan"])
    if plan.method == "fp":
        raise ValueError(f"{path} is a full-precision checkpoint; compile a quantized one "
                         "(lcq train --method lcq --wbits B --abits B --init THIS_CHECKPOINT ...)")
    if plan.outer_bits is None:
        raise ValueError(f"{path} was trained without outer re-quantization (--outer-bits 0); "
                         "integer LUTs need b' (retrain with --outer-bits 8)")
    model = build_quantized_model(state["config"]["model"], state["input_shape"], state["num_classes"], plan)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit a {state['config']['model']} with its plan "
                         f"({str(e).splitlines()[-1].strip()}); it is not a checkpoint lcq train wrote") from None
    return model.eval(), state


def compile_checkpoint(path: str | Path, options: CompileOptions = CompileOptions()) -> CompiledModel:
    """Compile the checkpoint at ``path`` (see :func:`compile_model`), recording its origin in
    ``source``: ``checkpoint``, its absolute path (so that ``lcq eval`` finds it from any working
    directory), and ``sha256``, the checkpoint's digest (the SHA-256 its frame records and
    :func:`~lcq_train.checkpoint.load_checkpoint` verifies), which ``lcq eval`` compares."""
    model, state = load_model(path)
    compiled = compile_model(model, tuple(state["input_shape"]), options)
    cfg = state["config"]
    compiled.source = {"checkpoint": str(Path(path).resolve()), "sha256": state["sha256"],
                       "model": cfg["model"], "dataset": cfg["dataset"], "plan": state["plan"],
                       "epoch": state["epoch"], "test_top1": state["metrics"].get("test_top1"),
                       "options": options.__dict__}
    return compiled


@torch.no_grad()
def compile_model(model: nn.Module, input_shape: tuple[int, int, int],
                  options: CompileOptions = CompileOptions()) -> CompiledModel:
    """Lower ``model`` (quantizers installed, trained) for inputs of ``input_shape`` (C, H, W).

    Codes, levels and constants are computed from a float64 copy of ``model``, so
    that float32 rounding cannot decide a weight code lying on a quantizer
    threshold; the agreement check runs the PyTorch model in float64 too.
    """
    model = copy.deepcopy(model).double().eval()
    lowering = _Lowering(model, options)
    if isinstance(model, SmallCNN):
        lowering.small_cnn(model, input_shape)
    elif isinstance(model, PreActResNet):
        lowering.resnet(model, input_shape)
    else:
        raise ValueError(f"cannot compile a {type(model).__name__}: supported models are SmallCNN and PreActResNet")
    num_classes = lowering.nodes[-1].out_shape[0]
    compiled = CompiledModel(lowering.nodes, "logits", num_classes, scales=lowering.scales)
    compiled.validate()   # the rules of compiler.graph, which the loader applies to every file
    return compiled


def _bn_affine(bn: nn.BatchNorm2d, gain: float, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``bn(gain * x + bias)`` as per-channel ``(a, b)`` with ``a * x + b`` (eval-mode statistics)."""
    inv = bn.weight.double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    return inv * gain, inv * (bias - bn.running_mean.double().numpy()) + bn.bias.double().numpy()


class _Lowering:
    """Appends nodes while tracking every tensor's shape, bound (largest |value|) and scale."""

    def __init__(self, model: nn.Module, options: CompileOptions):
        self.modules = dict(model.named_modules())
        self.options = options
        self.nodes: list = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.bounds: dict[str, int] = {}
        self.scales: dict[str, float] = {}
        self.biases: dict[str, np.ndarray] = {}  # real bias (output units) of raw accumulator tensors

    # ------------------------------------------------------------------ building blocks

    def module(self, name: str, kind: type) -> nn.Module:
        m = self.modules.get(name)
        if not isinstance(m, kind):
            raise ValueError(f"layer {name!r} is a {type(m).__name__}, the compiler expects a {kind.__name__}")
        return m

    def act(self, name: str) -> QAct:
        act = self.module(name, QAct)
        if act.method == "fp":
            raise ValueError(f"activation {name!r} is not quantized; compile a model trained with --method lcq/uniform")
        if not act.alpha.item() > 0:
            raise ValueError(f"activation {name!r} has a non-positive clip alpha {act.alpha.item()}")
        return act

    def code_thresholds(self, act_name: str) -> np.ndarray:
        act = self.act(act_name)
        theta = act.theta.double().numpy() if act.method == "lcq" else None
        return stages.code_thresholds(act.alpha.item(), theta, level_scale(act.spec.bits, False))

    def input(self, act_name: str, shape: tuple[int, int, int]) -> None:
        act = self.act(act_name)
        pixels = torch.arange(256, dtype=torch.float64) / 255.0   # as the loader scales uint8 images
        table = act.codes(pixels).numpy().astype(np.uint8)
        self.nodes.append(InputNode(act_name, tuple(shape), table, act.spec.bits))
        self.shapes[act_name] = tuple(shape)

    def conv(self, name: str, input: str, output: str) -> ConvNode:
        """A ConvNode without output stage; its raw accumulator is tensor ``output``."""
        layer = self.modules.get(name)
        c, h, w = self.shapes[input]
        if isinstance(layer, QConv2d):
            if layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros":
                raise ValueError(f"layer {name!r}: grouped, dilated or non-zero-padded convolutions are not supported")
            k, stride, pad = layer.kernel_size[0], layer.stride[0], layer.padding[0]
            if layer.kernel_size != (k, k) or layer.stride != (stride, stride) or layer.padding != (pad, pad):
                raise ValueError(f"layer {name!r}: only square kernels, strides and paddings are supported")
            kind, out_shape = "conv", (layer.out_channels, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
            weight = layer.weight
        elif isinstance(layer, QLinear):
            if (h, w) != (1, 1):
                raise ValueError(f"layer {name!r}: a linear layer needs a (C, 1, 1) input, got {(c, h, w)}")
            kind, k, stride, pad, out_shape = "linear", 1, 1, 0, (layer.out_features, 1, 1)
            weight = layer.weight[:, :, None, None]
        else:
            raise ValueError(f"unsupported layer {name!r} ({type(layer).__name__}): the compiler lowers "
                             "QConv2d and QLinear layers")
        if weight.shape[1] != c:
            raise ValueError(f"layer {name!r} expects {weight.shape[1]} input channels, its input has {c}")
        wq, act = layer.wq, self.act(input)
        if wq.method == "fp":
            raise ValueError(f"layer {name!r} has full-precision weights; compile a quantized model")
        if not wq.alpha.item() > 0 or not wq.normalization(weight)[1].item() > 0:
            raise ValueError(f"layer {name!r}: weight clip alpha and LWN sigma must be positive")
        w_levels, a_levels = wq.levels().numpy(), act.levels().numpy()
        node = ConvNode(
            name=name, input=input, output=output, kind=kind, in_shape=(c, h, w), out_shape=out_shape,
            kernel=k, stride=stride, padding=pad, wbits=wq.spec.bits, abits=act.spec.bits,
            outer_wbits=wq.spec.outer_bits, outer_abits=act.spec.outer_bits,
            mac=mac_kind(wq.spec.bits, act.spec.bits, self.options.max_lut_entries),
            weight_codes=wq.codes(weight).numpy().astype(np.int8),
            w_levels=w_levels.astype(np.int64), a_levels=a_levels.astype(np.int64),
            scale=wq.step(weight) * act.step(), out_scale=None)
        node.out_scale = node.scale
        self.nodes.append(node)
        self.shapes[output], self.bounds[output], self.scales[output] = out_shape, node.acc_bound, node.scale
        bias = layer.bias.double().numpy() if layer.bias is not None else np.zeros(out_shape[0])
        self.biases[output] = bias
        return node

    def affine(self, tensor: str, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
        """BN of value tensor ``tensor`` as per-channel ``a * x + b`` on its integers."""
        bias = self.biases.get(tensor, np.zeros(self.shapes[tensor][0]))
        return _bn_affine(bn, self.scales[tensor], bias)

    def threshold_stage(self, tensor: str, bn_name: str, act_name: str):
        gain, offset = self.affine(tensor, self.module(bn_name, nn.BatchNorm2d))
        act = self.act(act_name)
        return stages.thresholds(gain, offset, self.code_thresholds(act_name), self.bounds[tensor], act.spec.bits)

    def conv_to_codes(self, name: str, input: str, bn_name: str, act_name: str) -> None:
        """Conv -> BN -> ReLU -> activation quantizer ``act_name``, folded into thresholds."""
        node = self.conv(name, input, act_name)
        node.stage = self.threshold_stage(act_name, bn_name, act_name)
        node.out_scale = None
        self._codes(act_name, node.out_shape)

    def activate(self, tensor: str, bn_name: str, act_name: str) -> None:
        """BN -> ReLU -> activation quantizer on a value tensor (the residual stream)."""
        stage = self.threshold_stage(tensor, bn_name, act_name)
        self.nodes.append(ActivateNode(act_name, tensor, act_name, stage))
        self._codes(act_name, self.shapes[tensor])

    def requantize(self, node: ConvNode, out_scale: float) -> None:
        """Requantize ``node``'s accumulator (and bias) to ``out_scale``."""
        out = node.output
        ratio = np.full(node.out_shape[0], node.scale / out_scale)
        node.stage = stages.requantize(ratio, self.biases.pop(out) / out_scale, self.bounds[out])
        node.out_scale = out_scale
        self.bounds[out] = node.stage.bound(self.bounds[out])
        self.scales[out] = out_scale

    def add(self, name: str, a: str, b: str, output: str) -> None:
        if self.scales[a] != self.scales[b] or self.shapes[a] != self.shapes[b]:
            raise ValueError(f"{name}: residual operands {a!r} and {b!r} differ in scale or shape")
        self.nodes.append(AddNode(name, (a, b), output))
        self.shapes[output], self.scales[output] = self.shapes[a], self.scales[a]
        self.bounds[output] = self.bounds[a] + self.bounds[b]

    def pool(self, tensor: str, bn_name: str, act_name: str) -> None:
        """BN -> ReLU -> global average pooling -> activation quantizer ``act_name``."""
        gain, offset = self.affine(tensor, self.module(bn_name, nn.BatchNorm2d))
        c, h, w = self.shapes[tensor]
        sign, relu, off, stage = stages.pool_constants(gain, offset, self.code_thresholds(act_name), h * w,
                                                 self.options.pool_frac_bits, self.bounds[tensor],
                                                 self.act(act_name).spec.bits)
        self.nodes.append(PoolNode(act_name, tensor, act_name, sign, relu, off, self.options.pool_frac_bits, stage))
        self._codes(act_name, (c, 1, 1))

    def logits(self, name: str, input: str) -> None:
        node = self.conv(name, input, "logits")
        self.requantize(node, node.scale / 2.0**self.options.logit_frac_bits)

    def _codes(self, name: str, shape) -> None:
        self.shapes[name] = tuple(shape)
        self.bounds.pop(name, None)
        self.scales.pop(name, None)
        self.biases.pop(name, None)

    # ------------------------------------------------------------------ models

    def small_cnn(self, model: SmallCNN, input_shape) -> None:
        self.input("act_in", input_shape)
        self.conv_to_codes("conv0", "act_in", "bn1", "act1")
        self.conv_to_codes("conv1", "act1", "bn2", "act2")
        self.conv("conv2", "act2", "conv2")
        self.pool("conv2", "bn3", "act_fc")
        self.logits("fc", "act_fc")

    def resnet(self, model: PreActResNet, input_shape) -> None:
        frac = self.options.residual_frac_bits
        self.input("act_in", input_shape)
        stem = self.conv("conv1", "act_in", "conv1")
        self.requantize(stem, stem.scale / 2.0**frac)
        stream = "conv1"
        for i, block in enumerate(model.blocks):
            p = f"blocks.{i}."
            self.activate(stream, p + "bn1", p + "act1")
            self.conv_to_codes(p + "conv1", p + "act1", p + "bn2", p + "act2")
            conv2 = self.conv(p + "conv2", p + "act2", p + "conv2")
            if block.shortcut is None:
                self.requantize(conv2, self.scales[stream])
                skip = stream
            else:
                short = self.conv(p + "shortcut", p + "act1", p + "shortcut")
                scale = stages.fraction_scale([conv2.scale, short.scale], frac)
                self.requantize(conv2, scale)
                self.requantize(short, scale)
                skip = p + "shortcut"
            self.add(p + "add", p + "conv2", skip, p + "out")
            stream = p + "out"
        self.pool(stream, "bn", "act_fc")
        self.logits("fc", "act_fc")
