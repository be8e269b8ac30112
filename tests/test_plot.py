"""``lcq plot``: PNGs of a tiny run (the small CNN, one epoch on the digits); matplotlib is the ``plot`` extra."""

import sys
from pathlib import Path

import pytest
import torch

from lcq.cli import main
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"


def _train(out, plan, **kw):
    train(TrainConfig(model="cnn", dataset="digits", plan=plan, epochs=1, batch_size=128, out=str(out),
                      progress=False, **kw))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    fp = _train(root / "fp", QuantPlan("fp"))
    lcq = _train(root / "lcq", QuantPlan("lcq", 3, 3), init=str(fp / "checkpoint.pt"), clip_init="fixed",
                 bn_batches=0)                  # (the paper's recipe: the mse rule's calibration is of no plot's)
    return fp, lcq


def test_plot_writes_companders_curves_and_codes(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    _, lcq = runs
    assert main(["plot", str(lcq), "--out", str(tmp_path), "--images", "64"]) == 0
    names = {"curves.png", "companders.png", "activation-codes.png",
             *(f"quantizer-{layer}.png" for layer in ("conv0", "conv1", "conv2", "fc"))}
    assert {p.name for p in tmp_path.iterdir()} == names
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert set(capsys.readouterr().out.split()) == {str(tmp_path / n) for n in names}


def test_quantizer_curves_follow_the_quantizer(runs):
    from lcq_train.checkpoint import load_checkpoint
    from lcq_train.calibrate import activation_codes
    from lcq_train.factory import model_from_checkpoint
    from lcq_train.plot import quantized_layers, quantizer_curves

    _, lcq = runs
    model = model_from_checkpoint(load_checkpoint(lcq / "checkpoint.pt"))
    _, wq, _, aq = [row for row in quantized_layers(model) if row[0] == "conv1"][0]
    with torch.no_grad():
        aq.theta.copy_(torch.linspace(-1.0, 1.0, aq.theta.numel()))      # a compander far from the identity
    c = quantizer_curves(aq)
    assert c["f"][0] == 0.0 and abs(c["f"][-1] - 1.0) < 1e-12 and (c["f"][1:] >= c["f"][:-1]).all()
    assert len(c["levels"]) == 8 and c["levels"][0] == 0.0 and c["levels"][-1] == pytest.approx(c["alpha"])
    # every output of Q is one of the drawn levels, and those are alpha * L / s' of the integer table
    y, levels = torch.as_tensor(c["y"]), torch.as_tensor(c["levels"])
    assert ((y[:, None] - levels[None, :]).abs().min(1).values < 1e-5 * c["alpha"]).all()
    assert len(set(y.tolist())) == 8                                   # and Q takes all of them
    torch.testing.assert_close(torch.as_tensor(c["levels"]), aq.levels().double() * aq.step(), rtol=1e-6, atol=1e-9)
    w = quantizer_curves(wq)
    assert w["signed"] and len(w["levels"]) == 4 and w["x"][0] < 0
    counts = activation_codes(model, [torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8).float() / 255.0])
    assert list(counts) == ["act_in", "act1", "act2", "act_fc"]
    assert len(counts["act1"]) == 8 and len(counts["act_in"]) == 256 and counts["act_in"].sum() == 16 * 64


def test_full_precision_run_gets_curves_only(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    fp, _ = runs
    assert main(["plot", str(fp), "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    assert "full-precision run" in capsys.readouterr().out


def test_without_matplotlib_the_error_names_the_extra(runs, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib now fails
    assert main(["plot", str(runs[1]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install -e '.[plot]'" in err
    assert not any(tmp_path.iterdir())


def test_plot_of_a_directory_without_a_run(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nosuch")]) == 2              # a mistyped name: not "holds no checkpoint"
    assert capsys.readouterr().err == f"lcq plot: error: no run {tmp_path / 'nosuch'}: pass the --out directory of " \
                                      "an `lcq train` run; no PNG written, any previous ones are left as they were\n"


@pytest.mark.parametrize("under", [False, True])
def test_plot_out_naming_a_file_says_so(runs, tmp_path, capsys, under):
    """``--out`` naming a file, or a path under one, is an error naming the option and the fix, not an errno."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "plots" if under else blocker
    assert main(["plot", str(runs[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq plot: error: cannot make the plot directory {out} (") and "--out DIR" in err, err
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_plot_of_a_run_whose_metrics_json_lcq_did_not_write(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    (run / "metrics.json").write_text('{"config": {}, "epochs": [{"epoch": 1, "train_top1": null}]}')
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'metrics.json'} " in err and "epoch 1's 'train_loss' is None, not a number" in err
    assert not (tmp_path / "png").exists()


def _run_whose_weights_do_not_fit(source, run):
    """A copy of run ``source`` at ``run`` whose checkpoint's conv1.weight no longer fits its model (the checkpoint
    resaved with a new digest, so that it loads); ``run``."""
    import shutil

    from lcq_train.checkpoint import load_checkpoint, save_checkpoint

    shutil.copytree(source, run)
    state = load_checkpoint(run / "checkpoint.pt")
    del state["sha256"]
    state["model"]["conv1.weight"] = torch.zeros(3)
    save_checkpoint(state, run / "checkpoint.pt")
    return run


def test_plot_of_a_checkpoint_whose_weights_do_not_fit_its_model(runs, tmp_path, capsys):
    run = _run_whose_weights_do_not_fit(runs[1], tmp_path / "run")
    assert main(["plot", str(run), "--out", str(tmp_path / "png"), "--images", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq plot: error: {run}: the model 'cnn' no longer fits the weights saved in the checkpoint "
                          "(size mismatch for conv1.weight") and "Traceback" not in err, err


def test_a_png_that_cannot_be_written_leaves_the_previous_one(runs, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from matplotlib.figure import Figure

    fp, _ = runs
    assert main(["plot", str(fp), "--out", str(tmp_path)]) == 0
    before = (tmp_path / "curves.png").read_bytes()
    capsys.readouterr()

    def disk_full(self, fname, *args, **kwargs):       # the first bytes of a PNG, then the disk is full
        if hasattr(fname, "write"):
            fname.write(PNG)
        else:
            Path(fname).write_bytes(PNG)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    assert main(["plot", str(fp), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"lcq plot: error: cannot write {tmp_path / 'curves.png'} (No space left on device); no PNG written, " \
        "any previous ones are left as they were" in err
    assert (tmp_path / "curves.png").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_a_plot_that_fails_midway_writes_none_of_its_pngs(runs, tmp_path, monkeypatch, capsys):
    """A failure after some PNGs are drawn (a checkpoint whose weights do not fit its model, a PNG that cannot be
    written) leaves no PNG of this plot: the directory holds the previous set, as it was, or nothing new."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from matplotlib.figure import Figure

    run = _run_whose_weights_do_not_fit(runs[1], tmp_path / "run")
    assert main(["plot", str(run), "--out", str(tmp_path / "png"), "--images", "0"]) == 2     # (after curves.png)
    assert not (tmp_path / "png").exists()
    assert "no PNG written" in capsys.readouterr().err

    out = tmp_path / "plots"
    assert main(["plot", str(runs[0]), "--out", str(out)]) == 0                  # the previous set: the FP run's
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert list(before) == ["curves.png"]
    capsys.readouterr()
    calls = []
    real = Figure.savefig

    def third_fails(self, fname, *args, **kwargs):
        calls.append(fname)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", third_fails)
    assert main(["plot", str(runs[1]), "--out", str(out), "--images", "0"]) == 2    # curves.png anew, then 2 more
    assert len(calls) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "no PNG written" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_negative_image_count_is_refused_by_argparse_as_every_count_of_every_verb(tmp_path, capsys):
    """``--images -1``: the verb's usage and 'argument --images: ...', as `lcq sim --images 0` says it, before
    the run is read."""
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "no-run"), "--images", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: lcq plot ")
    assert err.splitlines()[-1] == "lcq plot: error: argument --images: must be an integer >= 0, not '-1'", err


def _figures(monkeypatch):
    """{PNG name: its matplotlib Figure} of the next plots, each figure as built, to read its labels and data; none
    is rendered to its PNG (~0.5 s each: test_plot_writes_companders_curves_and_codes renders every one)."""
    import lcq_train.plot as plot

    figures = {}

    def spy(fig, path, files):
        figures[Path(path).name] = fig
        return path
    monkeypatch.setattr(plot, "_save_png", spy)
    return figures


def test_the_curves_of_a_run_still_training_do_not_call_its_last_epoch_final(runs, tmp_path, monkeypatch):
    """A run read between epochs (epoch 1 of 5 written): the top-1 title names the epoch it has reached, not a
    'final' top-1; a finished run's says final."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    import json
    import shutil

    figures = _figures(monkeypatch)
    assert main(["plot", str(runs[0]), "--out", str(tmp_path / "done")]) == 0
    top1 = figures["curves.png"].axes[1].get_title()
    last = json.loads((runs[0] / "metrics.json").read_text())["test_top1"]
    assert top1 == f"top-1 (final test {last:.2f}%, eval mode)", top1

    run = tmp_path / "live"
    shutil.copytree(runs[0], run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["config"]["epochs"] = 5                                   # as metrics.json reads after epoch 1 of 5
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["plot", str(run), "--out", str(tmp_path / "live-png")]) == 0
    top1 = figures["curves.png"].axes[1].get_title()
    assert top1 == f"top-1 (test {last:.2f}% after epoch 1 of 5, eval mode)", top1


def test_the_x_axis_of_an_activation_quantizer_says_what_it_reads(runs, tmp_path, monkeypatch):
    """'after BN + ReLU' only where that is so: the first layer's quantizer reads the image (pixel / 255), and a
    signed activation quantizer (quantize_model: an input that can be negative) reads values without a ReLU."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from torch import nn

    from lcq_train.atomic import AtomicFiles
    from lcq_train.plan import quantize_model
    from lcq_train.plot import _figure_class, plot_quantizers

    figures = _figures(monkeypatch)
    assert main(["plot", str(runs[1]), "--out", str(tmp_path / "cnn"), "--images", "0"]) == 0
    xlabels = {name: figures[f"quantizer-{name}.png"].axes[3].get_xlabel() for name in ("conv0", "conv1", "fc")}
    assert xlabels == {"conv0": "x (the input image, pixel / 255)", "conv1": "x (after BN + ReLU)",
                       "fc": "x (after BN + ReLU)"}, xlabels

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),           # no ReLU: a signed input next
                        nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 10))
    model = quantize_model(net, method="lcq", wbits=3, abits=3).eval()
    assert model.act_5.signed and not model.act_3.signed
    with AtomicFiles() as files:
        plot_quantizers(model, tmp_path, _figure_class(), files)
    assert figures["quantizer-5.png"].axes[3].get_xlabel() == "x (signed: no ReLU before it)"
    assert figures["quantizer-3.png"].axes[3].get_xlabel() == "x (after BN + ReLU)"


@pytest.mark.parametrize("weight_norm, xlabel", [("lwn", "x / sigma_w (after LWN)"),
                                                 ("standardize", "x / sigma_w (standardized, no LWN)")])
def test_the_x_axis_of_a_weight_quantizer_names_its_weight_normalization(tmp_path, monkeypatch, weight_norm, xlabel):
    """A run with --weight-norm standardize (APoT's, not rescaled by sigma_w; inner layers only) is not labelled
    LWN."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from torch import nn

    from lcq_train.atomic import AtomicFiles
    from lcq_train.plan import quantize_model
    from lcq_train.plot import _figure_class, plot_quantizers

    figures = _figures(monkeypatch)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 64, 10))
    model = quantize_model(net, method="lcq", wbits=3, abits=3, weight_norm=weight_norm).eval()
    with AtomicFiles() as files:
        plot_quantizers(model, tmp_path, _figure_class(), files)
    xlabels = {n: figures[f"quantizer-{n}.png"].axes[1].get_xlabel() for n in ("0", "2", "5")}
    lwn = "x / sigma_w (after LWN)"                                    # (the 8-bit edge layers keep LWN)
    assert xlabels == {"0": lwn, "2": xlabel, "5": lwn}, xlabels


def test_the_count_of_output_levels_is_of_distinct_levels(tmp_path, monkeypatch):
    """A steep compander at a narrow outer width rounds several codes to one level (A = [0, 14, 14, 14, 15, ...] at
    3 bits, b'_a = 4): the title counts the levels Q takes, as drawn, and says how many codes share them."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from torch import nn

    from lcq_train.atomic import AtomicFiles
    from lcq_train.plan import quantize_model
    from lcq_train.plot import _figure_class, plot_quantizers

    figures = _figures(monkeypatch)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 64, 10))
    model = quantize_model(net, method="lcq", wbits=3, abits=3, outer_bits=(6, 4),
                           layer_bits={"0": (8, 8, 8, 8), "5": (8, 8, 8, 8)}).eval()
    with torch.no_grad():
        model.act_2.theta[-1] = 12.0                                   # f rises almost wholly in its last interval
    levels = model.act_2.levels().tolist()
    assert levels == [0, 14, 14, 14, 15, 15, 15, 15]
    with AtomicFiles() as files:
        plot_quantizers(model, tmp_path, _figure_class(), files)
    axes = figures["quantizer-2.png"].axes
    assert axes[1].get_title() == "quantizer Q: 7 output levels"         # the weights': 2 s + 1, all distinct
    assert axes[3].get_title() == "quantizer Q: 3 output levels (8 codes)"
    drawn = {round(line.get_ydata()[0], 9) for line in axes[3].get_lines()[2:]}
    assert len(drawn) == 3 and len(set(axes[3].get_lines()[1].get_ydata().tolist())) == 3


def test_a_run_without_outer_widths_says_why_it_has_no_code_histograms(runs, tmp_path, monkeypatch, capsys):
    """--outer-bits 0: no quantizer has integer codes, so no activation-codes.png, and the run says so."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    run = _train(tmp_path / "run", QuantPlan("lcq", 3, 3, outer_bits=None), init=str(runs[0] / "checkpoint.pt"),
                 clip_init="fixed", bn_batches=0)
    capsys.readouterr()
    figures = _figures(monkeypatch)                                   # every PNG the plot writes
    assert main(["plot", str(run), "--out", str(tmp_path / "png"), "--images", "16"]) == 0
    out = capsys.readouterr().out
    assert "quantizer-conv1.png" in figures and "activation-codes.png" not in figures
    assert "no activation-code histograms: no activation quantizer of the run has integer codes (it was trained " \
        "with --outer-bits 0)" in out, out


def test_weights_beyond_the_axis_are_counted_not_piled_at_its_edges(tmp_path, monkeypatch):
    """The weight histogram behind Q spans the axis (about +-1.25 alpha): weights beyond it were clipped onto its
    edge bins, spikes that read as mass there; they are left out and their share is written on the panel."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra: pip install -e '.[plot]') is not installed")
    from torch import nn

    from lcq_train.atomic import AtomicFiles
    from lcq_train.plan import quantize_model
    from lcq_train.plot import _figure_class, plot_quantizers

    figures = _figures(monkeypatch)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 64, 10))
    model = quantize_model(net, method="lcq", wbits=3, abits=3).eval()
    from lcq_train.plot import quantized_layers, quantizer_curves

    wq = {name: wq for name, wq, _, _ in quantized_layers(model)}["2"]
    with torch.no_grad():
        wq.alpha.fill_(0.4)                                              # most weights beyond +-1.25 alpha
    weight = dict(model.named_modules())["2"].weight.detach()
    normalized = ((weight - weight.mean()) / weight.std()).flatten()
    with AtomicFiles() as files:
        plot_quantizers(model, tmp_path, _figure_class(), files)
    panel, histogram = figures["quantizer-2.png"].axes[1], figures["quantizer-2.png"].axes[-1]
    x = quantizer_curves(wq)["x"]
    lo, hi = x[0], x[-1]
    heights = [bar.get_height() for bar in histogram.patches]
    inside = int(((normalized >= lo) & (normalized <= hi)).sum())
    assert sum(heights) == inside < len(normalized) and max(heights[0], heights[-1]) < max(heights)
    share = 100 * (len(normalized) - inside) / len(normalized)
    assert [t.get_text() for t in panel.texts] == [f"{share:.1f}% of x beyond the axis"]
