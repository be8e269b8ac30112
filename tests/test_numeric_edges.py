"""Numeric edge cases of a checkpoint's parameters: the compiled integer model agrees with the float64
PyTorch model code for code, or the compiler refuses, naming the layer, the parameter and the fix."""

import re

import numpy as np
import pytest
import torch

from compiler.agreement import compare
from compiler.lower import CompileOptions, compile_model
from lcq_train.models.resnet import PreActResNet
from lcq_train.plan import QuantPlan, apply_plan

from helpers import images, randomize, small_cnn


def mismatches(compiled, model, x) -> dict:
    """Per activation quantizer the codes that differ, and ``top1``: the images whose predictions differ."""
    result = compare(compiled, model, x, np.zeros(len(x), dtype=np.int64), batch_size=64)
    return {name: m for name, (_, m) in result.codes.items()} | {"top1": result.disagreements}


def refused_then_exact_with_the_bits_named(model, shape, option: str, match: str, n: int, seed: int) -> None:
    """Compiling ``model`` is refused (``match``) naming ``--option B``; compiled with B, its codes and top-1 equal
    the PyTorch model's on ``n`` random images."""
    with pytest.raises(ValueError, match=match) as e:
        compile_model(model, shape)
    bits = int(re.search(rf"with --{option} (\d+) ", str(e.value)).group(1))
    compiled = compile_model(model, shape, CompileOptions(**{option.replace("-", "_"): bits}))
    assert not any(mismatches(compiled, model, images(n, shape, seed=seed)).values())


def resnet8(seed: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 3)), seed=seed)


def test_residual_stream_coarser_than_an_operand_is_refused_with_the_frac_bits_that_fit():
    """The first conv's output (read by a BN too) fixes the residual stream's scale; 2^20 times coarser
    than the block's conv2 step, conv2's accumulator would round away (codes differed silently)."""
    model = resnet8()
    with torch.no_grad():
        model.conv1.weight.mul_(2.0**20)
    refused_then_exact_with_the_bits_named(model, (3, 32, 32), "residual-frac-bits",
                                           r"blocks\.0\.conv2.*conv1.*--residual-frac-bits 2[0-4]", 8, seed=5)


def test_logits_whose_bias_the_fixed_point_rounds_away_are_refused():
    """A huge weight clip quantizes every fc weight to 0, so the bias alone decides the class; at the
    accumulator's scale the bias rounded to 0 and every prediction differed silently."""
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=7)
    with torch.no_grad():
        model.fc.wq.alpha.fill_(1e30)
    with pytest.raises(ValueError, match=r"'fc'.*bias.*rounds? to 0.*wq\.alpha"):
        compile_model(model, (1, 8, 8))


@pytest.mark.parametrize("edit", ["weight", "fc.wq.alpha"])
def test_logit_bias_too_large_for_int64_names_the_layer(edit):
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=7)
    with torch.no_grad():
        model.fc.weight.mul_(1e-30) if edit == "weight" else model.fc.wq.alpha.fill_(1e-30)
    with pytest.raises(ValueError, match=r"'fc'.*bias.*int64"):
        compile_model(model, (1, 8, 8))


def test_pooling_whose_fixed_point_is_coarser_than_the_next_codes_is_refused():
    """With act2's clip at 1e6 conv2's accumulator step (times BN) is far above act_fc's first code
    threshold: the pooled sum's unit rounded the BN offset away and act_fc's codes differed silently."""
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=7)
    with torch.no_grad():
        model.act2.alpha.fill_(1e6)
    refused_then_exact_with_the_bits_named(model, (1, 8, 8), "pool-frac-bits",
                                           r"conv2.*act_fc.*--pool-frac-bits (1[6-9]|2[0-4])", 40, seed=1)


def test_pooling_into_a_quantizer_of_tiny_clip_is_refused_naming_it():
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=7)
    with torch.no_grad():
        model.act_fc.alpha.fill_(1e-30)
    with pytest.raises(ValueError, match=r"act_fc\.alpha"):
        compile_model(model, (1, 8, 8))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.conv1.weight.data.fill_(0.3), r"layer 'conv1': its weights are all equal, so the weight "
                                               r"normalization's sigma_w \(LWN or standardization\) is 0"),
    (lambda m: m.conv1.wq.alpha.data.fill_(0.0), r"layer 'conv1': its weight clip conv1\.wq\.alpha = 0 must be "
                                                 r"positive"),
])
def test_a_layer_without_a_weight_scale_names_which_part_is_missing(edit, message):
    """A layer whose weights are all equal (sigma_w = 0) and one whose weight clip is 0 were refused alike: 'weight
    clip alpha and the weight normalization's sigma_w must be positive', not saying which, or why."""
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=7)
    with torch.no_grad():
        edit(model)
    with pytest.raises(ValueError, match=message):
        compile_model(model, (1, 8, 8))
