"""lcq_train.calibrate: the MSE clip rule, data-driven initial clips, BN statistics re-estimated."""

import pytest
import torch
from torch import nn

from lcq_train.calibrate import activation_codes, calibrate_clips, mse_clip, reestimate_bn
from lcq_train.plan import QuantPlan, quantize_model, quantizer_parameters
from lcq_train.quant import uniform_quantize
from lcq_train.models import build_model


def test_mse_clip_is_the_least_error_clip_of_the_grid():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g)
    alpha = mse_clip(x, 3, 8, signed=True)
    top = x.abs().max().item()

    def err(a):
        y = uniform_quantize(x.double(), torch.tensor(a, dtype=torch.float64), 3, 8, True)
        return (y - x.double()).square().mean()

    assert all(err(alpha) <= err(top * i / 100) for i in range(1, 101))
    assert 1.5 < alpha < 3.0             # a 3-bit signed quantizer of N(0, 1): about 2 sigma, far below the max
    assert mse_clip(x.relu(), 2, 8, signed=False) < mse_clip(x.relu(), 4, 8, signed=False)   # more bits: wider
    with pytest.raises(ValueError, match="all zero"):
        mse_clip(-x.abs(), 2, 8, signed=False)


def _clip_of_100_passes(x, bits, outer_bits, signed):
    """The rule as first written: each candidate's quantizer run over ``x``, the first least error kept."""
    x = x.flatten().double()
    if not signed:
        x = x.clamp(min=0.0)
    top = x.abs().max().item()
    best, best_err = top, float("inf")
    for i in range(1, 101):
        alpha = torch.tensor(top * i / 100, dtype=torch.float64)
        err = (uniform_quantize(x, alpha, bits, outer_bits, signed) - x).square().mean().item()
        if err < best_err:
            best, best_err = alpha.item(), err
    return best


@pytest.mark.parametrize("name", ["normal", "laplace", "bytes", "tied", "one", "eighths"])
def test_mse_clip_from_one_sort_picks_what_100_quantizer_passes_pick(name):
    """Prefix sums over the sorted values rank the candidates; ties to rounding ("tied": i = 87 and 88 have the
    same error in exact arithmetic) and values on a rounding boundary ("eighths", "bytes") come out the same."""
    g = torch.Generator().manual_seed(1)
    x = {"normal": lambda: torch.randn(40_000, generator=g),
         "laplace": lambda: torch.randn(20_000, generator=g).sign() * torch.rand(20_000, generator=g).log().neg(),
         "bytes": lambda: torch.randint(0, 256, (20_000,), generator=g).float() / 255,
         "tied": lambda: torch.tensor([0.5, 0.5, 1.0, 0.25, 0.0]),
         "one": lambda: torch.tensor([-3.0]),
         "eighths": lambda: torch.arange(-64, 64).float() / 8}[name]()
    for bits in (2, 3, 4):
        for outer in (None, 8, 4):
            for signed in (True, False):
                if signed or x.max() > 0:
                    assert mse_clip(x, bits, outer, signed) == _clip_of_100_passes(x, bits, outer, signed), \
                        (bits, outer, signed)


def _model(method="lcq"):
    torch.manual_seed(0)
    return quantize_model(build_model("cnn", (1, 28, 28), 10), QuantPlan(method, 2, 2))


def test_calibrate_clips_sets_every_learnable_alpha_and_nothing_else():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "alpha" not in k}
    inputs = [torch.rand(32, 1, 28, 28) for _ in range(2)]
    alphas = calibrate_clips(model, inputs, "mse")
    learnable = {name for name, m in model.named_modules() if hasattr(m, "alpha") and m.alpha.requires_grad}
    assert set(alphas) == learnable and len(alphas) >= 4
    for name, value in alphas.items():
        assert model.get_submodule(name).alpha.item() == pytest.approx(value)
        assert value != 8.0 and value != 3.0          # not the fixed start any more
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)      # weights, theta, BN statistics untouched
    assert all(m.method != "fp" for m in model.modules() if hasattr(m, "method") and hasattr(m, "alpha"))
    assert calibrate_clips(_model(), inputs, "fixed") == {}
    with pytest.raises(ValueError, match="clip-init"):
        calibrate_clips(_model(), inputs, "max")


def test_reestimate_bn_gives_the_plain_average_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(5.0)
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) for i in range(3)]
    assert reestimate_bn(model, iter(batches)) == 3 and not model.training and not model[1].training
    with torch.no_grad():
        outs = [model[0](b) for b in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert model[1].momentum == 0.1                                   # restored
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_bn(model, iter([]))


def test_reestimate_bn_estimates_each_layer_behind_the_ones_before_in_eval_mode():
    """bn2's statistics are those of its inputs with bn1 on its own new (population) statistics, not on
    each batch's: what eval mode feeds it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    reestimate_bn(model, batches)
    with torch.no_grad():
        ins = [model[:4](b) for b in batches]                 # bn1 in eval mode, on its re-estimated statistics
    torch.testing.assert_close(model[4].running_mean, torch.stack([o.mean((0, 2, 3)) for o in ins]).mean(0),
                               rtol=1e-5, atol=1e-6)
    model[1].train()
    with torch.no_grad():
        batch_normalized = [model[:4](b) for b in batches]    # bn1 on each batch's own statistics: different
    assert not torch.allclose(torch.stack([o.mean((0, 2, 3)) for o in batch_normalized]).mean(0),
                              model[4].running_mean, rtol=1e-3, atol=1e-3)


def test_quantizer_parameters_unchanged_by_bn_reestimation():
    model = _model()
    before = [p.clone() for p in quantizer_parameters(model)]
    reestimate_bn(model, [torch.rand(16, 1, 28, 28)])
    assert all(torch.equal(a, b) for a, b in zip(before, quantizer_parameters(model)))


def test_activation_codes_of_a_signed_quantizer_count_negative_codes_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 10))
    model = quantize_model(net, method="uniform", wbits=3, abits=3)       # fc "2" reads fc "1" without a ReLU
    name = model.quant_layers()[1][1]
    q = model.get_submodule(name)
    assert q.signed and q.spec.bits == 3
    q.alpha.data.fill_(0.3)
    seen = []
    q.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    counts = activation_codes(model, [torch.rand(32, 1, 8, 8)])
    codes = q.codes(seen[0])
    assert (codes < 0).any() and len(counts[name]) == 7                                 # codes -3..3
    assert counts[name].tolist() == [(codes == c).sum().item() for c in range(-3, 4)]


def test_training_with_clip_init_and_bn_batches(tmp_path):
    """The trainer calibrates once at the start and re-estimates BN after the last epoch; a saved config of
    an lcq from before these settings reads with the paper's values."""
    from lcq_train.train import PAPER_RECIPE, TrainConfig, train

    fp = train(TrainConfig(dataset="digits", plan=QuantPlan("fp"), epochs=1, out=str(tmp_path / "fp"),
                           progress=False))
    cfg = TrainConfig(dataset="digits", plan=QuantPlan("lcq", 2, 2), epochs=2, out=str(tmp_path / "q"),
                      init=str(tmp_path / "fp" / "checkpoint.pt"), clip_init="mse", bn_batches=3, progress=False)
    metrics = train(cfg)
    assert fp["epochs"] and set(metrics["calibrated_clips"]) >= {"act1", "conv1.wq"}
    first, last = metrics["epochs"]
    assert "test_top1_before_bn" not in first and 0.0 <= last["test_top1_before_bn"] <= 100.0
    assert metrics["environment"]["torch"] == torch.__version__
    assert metrics["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()   # AVX2, AVX512...
    shares = metrics["start_code_shares"]
    assert len(shares["act1"]) == len(shares["act2"]) == 4 and len(shares["act_in"]) == 256     # 2-bit; 8-bit image
    assert all(abs(sum(v) - 1) < 1e-3 for v in shares.values())
    assert "start_code_shares" not in fp
    old = {k: v for k, v in cfg.to_dict().items() if k not in PAPER_RECIPE}
    assert TrainConfig.from_dict(old).clip_init == "fixed" and TrainConfig.from_dict(old).bn_batches == 0
    with pytest.raises(ValueError, match="clip_init"):
        TrainConfig(clip_init="max")
    with pytest.raises(ValueError, match="bn_batches"):
        TrainConfig(bn_batches=-1)
