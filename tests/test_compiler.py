"""Compiler + integer reference: the integer path equals the PyTorch fake-quant path code for code."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compiler import reference, stages
from compiler.agreement import compare
from compiler.lower import CompileOptions, compile_checkpoint, compile_model
from compiler.reference import accumulate, lut_accumulate, predict, run
from lcq_train.models.cnn import SmallCNN
from lcq_train.models.resnet import PreActResNet
from lcq_train.plan import QuantPlan, apply_plan
from lcq_train.train import TrainConfig, train

from helpers import images, randomize, small_cnn

BITS = (2, 3, 4)


def code_mismatches(compiled, model, x) -> dict:
    result = compare(compiled, model, x, np.zeros(len(x), dtype=np.int64), batch_size=64)
    assert result.images == len(x)
    return {name: m for name, (_, m) in result.codes.items()} | {"top1": result.disagreements}


@pytest.mark.parametrize("wbits", BITS)
@pytest.mark.parametrize("abits", BITS)
@pytest.mark.parametrize("method", ["lcq", "uniform"])
def test_small_cnn_codes_equal_for_every_bit_width(method, wbits, abits):
    model = small_cnn((1, 8, 8), QuantPlan(method, wbits, abits), seed=wbits * 10 + abits)
    compiled = compile_model(model, (1, 8, 8))
    x = images(40, (1, 8, 8), seed=abits)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


def test_codes_equal_with_activations_at_and_beyond_alpha():
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=1, act_alpha=0.05)   # most activations clip
    compiled = compile_model(model, (1, 8, 8))
    x = images(40, (1, 8, 8), seed=2)
    tensors = run(compiled, x)
    assert (tensors["act1"] == 7).mean() > 0.3
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


def test_weight_edge_cases_zero_clipped_and_boundary_weights():
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 4, 3), seed=3)
    with torch.no_grad():
        w = model.conv1.weight
        w[0] = 0.0                                     # a zero filter
        mu, sigma = w.mean(), w.std()
        alpha = model.conv1.wq.alpha
        w[1, 0, 0, 0] = mu + 10 * alpha * sigma         # far beyond the clip value
        w[1, 0, 0, 1] = mu - 10 * alpha * sigma
    compiled = compile_model(model, (1, 8, 8))
    codes = compiled.convs[1].weight_codes
    assert codes[1, 0, 0, 0] == 7 and codes[1, 0, 0, 1] == -7   # s_w = 7 at 4 bits
    assert codes.min() < 0 < codes.max()
    x = images(30, (1, 8, 8), seed=3)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


def test_pooling_channels_whose_relu_always_or_never_clips():
    """BN scales so small that the ReLU kink lies far outside the accumulator range."""
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=12)
    with torch.no_grad():
        model.bn3.weight[1:5] = torch.tensor([1e-3, -1e-3, 1e-3, -1e-3])
        model.bn3.bias[1:5] = torch.tensor([0.9, 0.9, -0.9, -0.9])     # always on, always on, never, never
    compiled = compile_model(model, (1, 8, 8))
    pool = next(n for n in compiled.nodes if n.op == "pool")
    assert list(pool.relu[1:5]) == [False, False, True, True] and list(pool.sign[3:5]) == [0, 0]
    assert all(v == 0 for v in code_mismatches(compiled, model, images(20, (1, 8, 8), seed=12)).values())


def test_mixed_bit_widths_and_28x28_input():
    plan = QuantPlan("lcq", 3, 3, layer_bits={"conv1": (4, 2), "conv2": (2, 4)})
    model = small_cnn((1, 28, 28), plan, seed=4)
    compiled = compile_model(model, (1, 28, 28))
    assert [(c.wbits, c.abits) for c in compiled.convs] == [(8, 8), (4, 2), (2, 4), (8, 8)]
    assert [c.out_shape for c in compiled.convs] == [(4, 28, 28), (6, 14, 14), (8, 7, 7), (10, 1, 1)]
    x = images(20, (1, 28, 28), seed=4)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


@settings(max_examples=15, deadline=None)
@given(size=st.integers(4, 12), channels=st.integers(1, 3), widths=st.tuples(*[st.integers(1, 6)] * 3),
       wbits=st.sampled_from(BITS), abits=st.sampled_from(BITS), seed=st.integers(0, 2**16))
def test_random_small_cnns_are_exact(size, channels, widths, wbits, abits, seed):
    shape = (channels, size, size)
    model = small_cnn(shape, QuantPlan("lcq", wbits, abits), seed, widths)
    compiled = compile_model(model, shape)
    x = images(8, shape, seed)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


def test_resnet_codes_equal_with_residual_fixed_point():
    torch.manual_seed(0)
    model = randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 3)), seed=5)
    compiled = compile_model(model, (3, 32, 32))
    ops = [n.op for n in compiled.nodes]
    assert ops.count("add") == 3 and ops.count("activate") == 3 and ops.count("pool") == 1
    assert [c.name for c in compiled.convs if "shortcut" in c.name] == ["blocks.1.shortcut", "blocks.2.shortcut"]
    x = images(12, (3, 32, 32), seed=5)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


@pytest.mark.parametrize("depth", [20, 56])
def test_resnet20_and_56_compile_and_run_exactly(depth):
    torch.manual_seed(depth)
    model = randomize(apply_plan(PreActResNet(depth, 10, 3), QuantPlan("lcq", 4, 4)), seed=depth)
    compiled = compile_model(model, (3, 32, 32))
    assert len(compiled.convs) == depth + 2          # depth - 2 block convs, 2 shortcuts, first and last
    x = images(2, (3, 32, 32), seed=depth)
    assert all(v == 0 for v in code_mismatches(compiled, model, x).values())


def test_coarse_residual_stream_shows_its_rounding():
    """With no fraction bits the residual rounding must show up in the codes (and is counted)."""
    torch.manual_seed(0)
    model = randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 3)), seed=5)
    fine = compile_model(model, (3, 32, 32), CompileOptions(residual_frac_bits=8))
    coarse = compile_model(model, (3, 32, 32), CompileOptions(residual_frac_bits=0, logit_frac_bits=0))
    x = images(12, (3, 32, 32), seed=6)
    assert sum(v for k, v in code_mismatches(fine, model, x).items() if k != "top1") == 0
    assert sum(v for k, v in code_mismatches(coarse, model, x).items() if k != "top1") > 0


def test_fixed_point_widths_too_wide_name_the_layer_and_the_options():
    """Residual and pooling fraction bits so wide that the pooled sums would overflow int64: the error names the
    graph node and the options that set the widths, not only the stage kind."""
    torch.manual_seed(0)
    model = randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 3)), seed=5)
    with pytest.raises(ValueError, match=r"PreActResNet: 'act_fc': pooling: field 'frac_bits' = 24: .* overflow 64 "
                                         r"bits; .*\(compiled with --residual-frac-bits 24, .* --pool-frac-bits 24, "
                                         r"--logit-frac-bits 8\)"):
        compile_model(model, (3, 32, 32), CompileOptions(residual_frac_bits=24, pool_frac_bits=24))


def test_lut_accumulation_equals_level_products():
    model = small_cnn((2, 6, 6), QuantPlan("lcq", 4, 3), seed=7)
    compiled = compile_model(model, (2, 6, 6))
    tensors = run(compiled, images(5, (2, 6, 6), seed=7))
    for conv in compiled.convs:
        np.testing.assert_array_equal(lut_accumulate(conv, tensors[conv.input]), tensors[f"{conv.name}.acc"])
        np.testing.assert_array_equal(accumulate(conv, tensors[conv.input]), tensors[f"{conv.name}.acc"])
        assert np.abs(tensors[f"{conv.name}.acc"]).max() <= conv.acc_bound


def test_accumulation_is_exact_in_float64_and_in_int64(monkeypatch):
    """The float64 products (no partial sum reaches 2^53) equal the int64 ones and the LUT sums, on a ResNet's
    padded, strided and 1x1 shortcut convolutions."""
    model = randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 3)), seed=3)
    compiled = compile_model(model, (3, 16, 16))
    tensors = run(compiled, images(3, (3, 16, 16), seed=3))
    assert {(c.kernel, c.stride, c.padding) for c in compiled.convs} >= {(3, 1, 1), (3, 2, 1), (1, 2, 0)}
    for conv in compiled.convs:
        np.testing.assert_array_equal(lut_accumulate(conv, tensors[conv.input]), tensors[f"{conv.name}.acc"])
    monkeypatch.setattr(reference, "EXACT_FLOAT", 0)
    for conv in compiled.convs:
        np.testing.assert_array_equal(accumulate(conv, tensors[conv.input]), tensors[f"{conv.name}.acc"])


def test_level_tables_and_lut_follow_the_contract():
    model = small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=8)
    conv = compile_model(model, (1, 8, 8)).convs[1]
    assert conv.w_levels[0] == 0 and conv.w_levels[-1] == 127 and len(conv.w_levels) == 4
    assert conv.a_levels[0] == 0 and conv.a_levels[-1] == 255 and len(conv.a_levels) == 8
    assert np.all(np.diff(conv.a_levels) >= 0) and conv.lut().shape == (3, 7)
    np.testing.assert_array_equal(conv.w_levels, model.conv1.wq.levels().numpy())
    np.testing.assert_array_equal(conv.lut()[2, 6], 127 * 255)


def test_thresholds_fold_descending_and_constant_channels():
    t = np.array([0.5, 1.5, 2.5])
    stage = stages.thresholds(np.array([1.0, -1.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.0, -1.0]), t, 100, 2)
    np.testing.assert_array_equal(stage.thresholds[0], [1, 2, 3])        # x >= ceil(t)
    np.testing.assert_array_equal(stage.thresholds[1], [-1, -2, -3])     # x <= floor(-t)
    x = np.arange(-4, 5).reshape(1, 1, -1).repeat(4, axis=1)
    codes = stage.apply(x)[0]
    np.testing.assert_array_equal(codes[0], np.clip(np.arange(-4, 5), 0, 3))
    np.testing.assert_array_equal(codes[1], np.clip(-np.arange(-4, 5), 0, 3))
    np.testing.assert_array_equal(codes[2], [2] * 9)    # relu(2.0) passes 0.5 and 1.5
    np.testing.assert_array_equal(codes[3], [0] * 9)


@settings(max_examples=50, deadline=None)
@given(ratio=st.floats(1e-4, 1e4), bias=st.floats(-1e3, 1e3), x=st.lists(st.integers(-10**6, 10**6), min_size=1))
def test_requantize_rounds_half_up(ratio, bias, x):
    stage = stages.requantize(np.array([ratio]), np.array([bias]), 10**6)
    x = np.array(x, dtype=np.int64)[None, :, None, None].transpose(1, 0, 2, 3)
    y = stage.apply(x).reshape(-1)
    exact = x.reshape(-1) * ratio + bias
    assert np.all(np.abs(y - exact) <= 0.5 + 1e-6 * (np.abs(exact) + 1))


def test_unsupported_models_and_layers_are_named():
    with pytest.raises(ValueError, match="cannot compile a Sequential"):
        compile_model(nn.Sequential(nn.Linear(2, 2)), (1, 8, 8))
    fp = SmallCNN((1, 8, 8), 10).eval()
    with pytest.raises(ValueError, match="'act_in' is not quantized"):
        compile_model(fp, (1, 8, 8))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcq")
    train(TrainConfig(model="cnn", dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=2, batch_size=64,
                      out=str(out), progress=False))
    return out / "checkpoint.pt"


def test_trained_model_integer_path_equals_fake_quant(trained_checkpoint):
    from lcq_train.data import load_dataset
    from compiler.lower import load_model

    compiled = compile_checkpoint(trained_checkpoint)
    data = load_dataset("digits")
    x, y = data.test_x.numpy(), data.test_y.numpy()
    result = compare(compiled, load_model(trained_checkpoint)[0], x, y)
    assert result.disagreements == 0 and all(m == 0 for _, m in result.codes.values())
    assert result.correct == result.torch_correct and result.correct > 0.5 * len(y)
    np.testing.assert_array_equal(predict(compiled, x).argmax(1), predict(compiled, x, batch_size=7).argmax(1))
    assert compiled.source["model"] == "cnn" and len(compiled.source["sha256"]) == 64
