"""The trainer and `lcq train`: outputs, checkpoints, resume, errors."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import lcq_train.train as train_mod
from lcq_train.checkpoint import load_checkpoint
from lcq_train.cli import main
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, build_quantized_model, train


def _cfg(out, **kw):
    base = dict(model="cnn", dataset="digits", plan=QuantPlan("fp"), epochs=2, batch_size=64, out=str(out),
                progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    train(_cfg(out, epochs=4))
    return out / "checkpoint.pt"


def test_fp_run_writes_checkpoint_and_metrics(fp_checkpoint):
    out = fp_checkpoint.parent
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 4 and metrics["test_top1"] == metrics["epochs"][-1]["test_top1"]
    assert metrics["test_top1"] > 50.0  # 10 classes: chance is 10%
    state = load_checkpoint(fp_checkpoint)
    assert state["epoch"] == 4 and state["input_shape"] == [1, 8, 8] and state["num_classes"] == 10
    assert {"model", "optimizer", "scheduler", "rng", "plan", "config"} <= set(state)


def test_lcq_finetune_from_fp_keeps_accuracy_and_saves_quantizer_state(fp_checkpoint, tmp_path):
    fp_top1 = load_checkpoint(fp_checkpoint)["metrics"]["test_top1"]
    metrics = train(_cfg(tmp_path, plan=QuantPlan("lcq", 4, 4), init=str(fp_checkpoint), epochs=2))
    assert metrics["test_top1"] > fp_top1 - 15.0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["layers"] == {"conv0": [8, 8], "conv1": [4, 4], "conv2": [4, 4], "fc": [8, 8]}
    assert "conv1.wq.theta" in state["model"] and "act1.theta" in state["model"]
    # The checkpoint rebuilds the same model, as the compiler will.
    model = build_quantized_model("cnn", state["input_shape"], state["num_classes"], QuantPlan.from_dict(state["plan"]))
    model.load_state_dict(state["model"])


def test_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    straight = train(_cfg(tmp_path / "a", plan=QuantPlan("lcq", 3, 3), epochs=3))
    calls = {"n": 0}
    real_evaluate = train_mod.evaluate

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", plan=QuantPlan("lcq", 3, 3), epochs=3))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = train(_cfg(tmp_path / "b", plan=QuantPlan("lcq", 3, 3), epochs=3, resume=True))
    assert [r["test_top1"] for r in resumed["epochs"]] == [r["test_top1"] for r in straight["epochs"]]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_existing_run_is_not_overwritten(fp_checkpoint):
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(_cfg(fp_checkpoint.parent))


def test_init_from_another_model_is_rejected(tmp_path, fp_checkpoint):
    state = torch.load(fp_checkpoint, weights_only=False)
    state["model"]["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="does not fit this model"):
        train(_cfg(tmp_path / "run", init=str(bad)))


def test_truncated_checkpoint_gets_a_clear_error(tmp_path, fp_checkpoint):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(fp_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="lcq train"):
        load_checkpoint(tmp_path / "none.pt")


def test_cli_train_with_config_file(tmp_path, fp_checkpoint, capsys):
    config = tmp_path / "mixed.json"
    config.write_text(json.dumps({"method": "lcq", "wbits": 3, "abits": 3, "layer_bits": {"conv2": [2, 4]},
                                  "epochs": 1, "batch_size": 64}))
    out = tmp_path / "run"
    rc = main(["train", "--config", str(config), "--init", str(fp_checkpoint), "--out", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layers"]["conv2"] == [2, 4] and metrics["layers"]["conv1"] == [3, 3]
    assert "test top-1" in capsys.readouterr().out


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    rc = main(["train", "--layer-bits", "nope=3/3", "--epochs", "1", "--out", str(tmp_path / "p"), "--no-progress"])
    assert rc == 2
    assert "unknown layer(s) ['nope']" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("torchrun") is None and not (
        __import__("pathlib").Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_distributed_data_parallel_on_cpu(tmp_path):
    """Two gloo processes through torchrun train one epoch and write one checkpoint."""
    torchrun = str(__import__("pathlib").Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lcq_train.cli", "train", "--dataset", "digits",
           "--method", "lcq", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1
