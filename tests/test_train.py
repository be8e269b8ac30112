"""The trainer and `lcq train`: outputs, checkpoints, resume, errors."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lcq_train.train as train_mod
from lcq_train.arguments import default_device
from lcq_train.checkpoint import load_checkpoint, save_checkpoint
from lcq_train.cli import add_parsers, apply_config_file, train_config
from lcq.cli import main
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
    state = load_checkpoint(fp_checkpoint)
    state["model"]["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    save_checkpoint(state, bad)
    with pytest.raises(ValueError, match="does not fit this model"):
        train(_cfg(tmp_path / "run", init=str(bad)))
    state["model"]["conv0.weight"] = torch.zeros(3, 3)
    save_checkpoint(state, bad)
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


def test_a_diverged_run_stops_keeping_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    """A learning rate far too high: the loss or the weights are not finite after the first epoch, and the run stops
    with an error naming the epoch and the fix instead of training on and saving them; a loss that turns NaN in the
    second epoch stops the run keeping the first epoch's checkpoint and metrics. A first epoch at chance warns,
    naming --lr."""
    with pytest.raises(train_mod.TrainingDiverged, match=r"^epoch 1: the (training loss is nan|weights are not finite "
                       r"\(the training loss .*\)): the run diverged and stops; no checkpoint was written. train "
                       r"again with a lower --lr \(now 1000\), into a new --out$"):
        train(_cfg(tmp_path / "fast", epochs=2, lr=1000.0))
    assert not (tmp_path / "fast" / "checkpoint.pt").exists()

    real, steps = train_mod.train_step, []

    def nan_from_the_second_epoch(*args):
        loss, hits = real(*args)
        steps.append(1)
        return (loss * float("nan") if len(steps) > 25 else loss), hits      # (the digits: 23 steps an epoch)

    monkeypatch.setattr(train_mod, "train_step", nan_from_the_second_epoch)
    out = tmp_path / "nan"
    with pytest.raises(train_mod.TrainingDiverged, match=rf"^epoch 2: the training loss is nan: the run diverged "
                       rf"and stops; the checkpoint of epoch 1 is kept \({re.escape(str(out / 'checkpoint.pt'))}\)"):
        train(_cfg(out, epochs=3))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 1
    capsys.readouterr()
    monkeypatch.setattr(train_mod, "train_step", real)
    train(_cfg(tmp_path / "slow", epochs=1, lr=50.0))
    assert "after epoch 1 the training top-1 is " in capsys.readouterr().err


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    rc = main(["train", "--layer-bits", "nope=3/3", "--epochs", "1", "--out", str(tmp_path / "p"), "--no-progress"])
    assert rc == 2
    assert "unknown layer(s) ['nope']" in capsys.readouterr().err


def test_a_layer_given_twice_on_the_command_line_is_refused_but_the_command_line_overrides_the_config(
        tmp_path, capsys):
    argv = ["train", "--layer-bits", "conv1=4/4", "--layer-bits", "conv1 =3/3", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "--layer-bits gives conv1 more than once" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"layer_bits": {"conv1": [4, 4]}}))
    sub = argparse.ArgumentParser(prog="lcq").add_subparsers()
    add_parsers(sub)
    args = apply_config_file(sub.choices["train"], ["--config", str(config), "--layer-bits", "conv1=3/3"])
    assert train_config(args).plan.layer_bits == {"conv1": (3, 3)}


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "argument --epochs: must be an integer >= 1, not '0'"),
    ("--epochs", "-1", "argument --epochs: must be an integer >= 1, not '-1'"),
    ("--batch-size", "0", "argument --batch-size: must be an integer >= 1"),
    ("--lr", "0", "argument --lr: must be a number > 0 and <= 1000"),
    ("--lr", "nan", "argument --lr: must be a number > 0 and <= 1000, not 'nan'"),
    ("--q-lr", "-0.1", "argument --q-lr: must be a number in [0, 1000]"),
    ("--weight-decay", "inf", "argument --weight-decay: must be a number in [0, 1]"),
    ("--warmup-epochs", "-1", "argument --warmup-epochs: must be a finite number >= 0"),
    ("--K", "0", "argument --K: must be an integer in 1..1024"),
    ("--wbits", "9", "argument --wbits: must be an integer in 2..8, not '9'"),
    ("--abits", "1", "argument --abits: must be an integer in 2..8"),
    ("--edge-bits", "three", "argument --edge-bits: must be an integer in 2..8, not 'three'"),
    ("--outer-bits", "17", "argument --outer-bits: must be 0 or an integer in 2..16"),
    ("--alpha-w", "-3", "argument --alpha-w: must be a number > 0 and <= 1e+06"),
    ("--alpha-a", "1e39", "argument --alpha-a: must be a number > 0 and <= 1e+06"),
    ("--lr", "1e39", "argument --lr: must be a number > 0 and <= 1000"),
    ("--q-lr", "1e39", "argument --q-lr: must be a number in [0, 1000]"),
    ("--weight-decay", "1e39", "argument --weight-decay: must be a number in [0, 1]"),
    ("--seed", "-1", "argument --seed: must be an integer in 0..4294967295"),
    ("--device", "warp9", "argument --device: 'warp9' is not a device torch knows"),
])
def test_cli_range_checks_every_value(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", option, value, "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_checks_devices_and_plans(tmp_path, capsys):
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["train", "--device", "cuda:0", "--out", str(tmp_path / "o")])
        assert "argument --device: 'cuda:0' is not available" in capsys.readouterr().err
    assert main(["train", "--outer-bits", "6", "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--outer-bits 6 is narrower than the widest quantizer (8 bits" in capsys.readouterr().err
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, not 0"):
        _cfg(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="--wbits must be an integer in 2..8, not 9"):
        QuantPlan("lcq", 9, 3)


@pytest.mark.parametrize("gpu, index, expected", [
    (False, None, "cpu"), (False, 1, "cpu"), (True, None, "cuda"), (True, 1, "cuda:1"),
])
def test_default_device_is_the_gpu_when_torch_sees_one(monkeypatch, gpu, index, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert default_device(index) == expected


@pytest.mark.parametrize("values, message", [
    ({"layer_bits": [3]}, "key 'layer_bits' must be an object"),
    ({"layer_bits": {"conv1": [3, 9]}}, "key 'layer_bits' must give layer 'conv1' [WBITS, ABITS], each an integer in 2..8"),
    ({"epochs": "3"}, "key 'epochs' must be an integer >= 1, not '3'"),
    ({"epochs": 0}, "key 'epochs' must be an integer >= 1, not 0"),
    ({"wbits": 3.5}, "key 'wbits' must be an integer in 2..8, not 3.5"),
    ({"lr": -1}, "key 'lr' must be a number > 0 and <= 1000, not -1"),
    ({"method": "apot"}, "key 'method' must be one of ['fp', 'uniform', 'lcq'], not 'apot'"),
    ({"progress": "yes"}, "key 'progress' must be true or false, not 'yes'"),
    ({"data_dir": 7}, "key 'data_dir' must be a string, not 7"),
    ({"bogus": 1}, "unknown key(s) ['bogus']"),
    ([1, 2], "must hold a JSON object of option values, not a list"),
])
def test_config_file_values_are_checked_by_key(tmp_path, capsys, values, message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err, err


def test_out_must_be_new_empty_or_a_run_to_resume(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    assert main(["train", "--epochs", "1", "--out", str(other), "--no-progress"]) == 2
    assert "is not empty and holds no run of lcq train (no checkpoint.pt; it holds ['metrics.json'])" \
        in capsys.readouterr().err
    assert main(["train", "--resume", "--epochs", "1", "--out", str(other), "--no-progress"]) == 2
    assert "holds no checkpoint.pt to continue; drop --resume" in capsys.readouterr().err
    assert json.loads((other / "metrics.json").read_text()) == {}
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json"]      # (refused before any lock file)


def test_resume_checks_settings_and_extends_runs(fp_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fp_checkpoint.parent, run)
    capsys.readouterr()
    # Finished: nothing to do is an error, not a success line.
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "already finished its 4 epochs" in captured.err and "--epochs N with N > 4" in captured.err
    assert "test top-1" not in captured.out
    # Other settings are refused, each difference listed.
    assert main(["train", "--resume", "--out", str(run), "--method", "lcq", "--batch-size", "32", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err
    assert "--method 'fp' there, 'lcq' asked" in err and "--batch-size 64 there, 32 asked" in err
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3"]) == 2
    assert "--epochs 3 is fewer than the 4 epochs of the run" in capsys.readouterr().err
    # More epochs extend the run, and it says so.
    assert main(["train", "--resume", "--out", str(run), "--epochs", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"extending the run in {run} from 4 to 5 epochs: it continues after epoch 4" in out and "test top-1" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 5 and metrics["config"]["epochs"] == 5
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 5 and state["config"]["epochs"] == 5


def test_resume_compares_the_learning_rate_and_augmentation_the_run_had(fp_checkpoint, tmp_path, capsys):
    """--lr and --augment left out when a run started (None: the default, 0.1 and off here) are the values it ran
    with: giving those to continue it continues it (it was refused as "--lr None there, 0.1 asked"), another value
    is refused, naming the default the run had."""
    run = tmp_path / "run"
    shutil.copytree(fp_checkpoint.parent, run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "5", "--lr", "0.05", "--augment"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 (the default) there, 0.05 asked" in err and "--augment False (the default) there, True asked" \
        in err, err
    assert main(["train", "--resume", "--out", str(run), "--epochs", "5", "--lr", "0.1", "--no-augment",
                 "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 5


def test_resume_in_python_takes_the_runs_learning_rate_and_augmentation(tmp_path, monkeypatch):
    """``TrainConfig(resume=True)`` with lr and augment left None continues the run with its own (it was refused:
    "--lr 0.05 there, None asked"), as the run not stopped would have gone on; values given are compared."""
    straight = train(_cfg(tmp_path / "a", epochs=2, lr=0.05, augment=False))
    calls, real_evaluate = [], train_mod.evaluate

    def interrupted(*args, **kwargs):           # (stopped in its second epoch, as test_resume_continues_bit_for_bit)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", epochs=2, lr=0.05, augment=False))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    with pytest.raises(ValueError, match=r"--lr 0.05 there, 0.1 asked"):
        train(_cfg(tmp_path / "b", epochs=2, lr=0.1, resume=True))
    resumed = train(_cfg(tmp_path / "b", epochs=2, resume=True))
    assert [r["test_top1"] for r in resumed["epochs"]] == [r["test_top1"] for r in straight["epochs"]]
    config = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["config"]
    assert config["lr"] == 0.05 and config["augment"] is False


@pytest.mark.skipif(shutil.which("torchrun") is None and not (
        __import__("pathlib").Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
@pytest.mark.parametrize("method", [pytest.param("fp", marks=pytest.mark.slow), "lcq"])
def test_distributed_data_parallel_on_cpu(tmp_path, method):
    """Two gloo processes through torchrun train one epoch and write one checkpoint, with every gradient in its
    parameter's layout (else DDP copies it into its bucket each step, and warns)."""
    torchrun = str(__import__("pathlib").Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lcq.cli", "train", "--dataset", "digits",
           "--method", method, "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Grad strides do not match bucket view strides" not in result.stderr, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1


@pytest.mark.slow           # (three torchrun launches, 36 s on 2 cores; test_checkpoint checks each rank's restore)
@pytest.mark.skipif(shutil.which("torchrun") is None and not (
        __import__("pathlib").Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_a_distributed_run_resumes_each_ranks_random_generators(tmp_path):
    """Two gloo processes whose dropout masks differ by rank: a run stopped after its first epoch and resumed ends
    with the weights of the run not stopped. Every rank resumed with rank 0's generator states (the only ones
    saved), so rank 1 drew rank 0's masks after resuming."""
    torchrun = str(__import__("pathlib").Path(sys.executable).parent / "torchrun")
    stop = tmp_path / "stop_before_epoch_2.py"              # every rank stops as epoch 2 starts, as on Ctrl-C
    stop.write_text("import sys\n"
                    "import lcq_train.train as train_mod\n"
                    "from lcq.cli import main\n"
                    "real = train_mod.tqdm\n\n"
                    "def tqdm(*args, desc='', **kwargs):\n"
                    "    if desc.startswith('epoch 2/'):\n"
                    "        raise KeyboardInterrupt\n"
                    "    return real(*args, desc=desc, **kwargs)\n\n"
                    "train_mod.tqdm = tqdm\n"
                    "sys.exit(main(sys.argv[1:]))\n")
    model = f"{__import__('pathlib').Path(__file__).parent / 'data' / 'user_models.py'}:per_rank_dropout"

    def run(script, out, *extra):
        cmd = [torchrun, "--standalone", "--nproc_per_node", "2", *script, "train", "--dataset", "digits",
               "--model", model, "--method", "fp", "--epochs", "2", "--batch-size", "128", "--out", str(out),
               "--no-progress", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=240)

    straight = run(["-m", "lcq.cli"], tmp_path / "a")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert run([str(stop)], tmp_path / "b").returncode != 0
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = run(["-m", "lcq.cli"], tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not restored" not in resumed.stdout
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_a_distributed_run_on_the_cpu_of_a_gpu_machine_joins_a_gloo_group(tmp_path, monkeypatch):
    """Under torchrun with --device cpu on a machine with GPUs, the process group is gloo's: it was NCCL's
    whenever torch saw a GPU, and NCCL has no collectives for the CPU tensors of the run."""
    import torch.distributed as dist

    class Joined(Exception):
        pass

    backends = []

    def init_process_group(backend, **kwargs):
        backends.append(backend)
        raise Joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    with pytest.raises(Joined):
        train(_cfg(tmp_path / "run", epochs=1, device="cpu"))
    assert backends == ["gloo"]


def test_a_warmup_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="warmup_epochs 1e\\+308 is longer than the run's 2 epochs"):
        _cfg(tmp_path, warmup_epochs=1e308)


def test_a_momentum_that_nesterov_refuses_is_refused_by_the_config(tmp_path):
    """The trainer's SGD is Nesterov's, which torch builds only with a momentum > 0: a config (or a saved run's)
    with 0 passed, then failed after loading the data with torch's message naming no setting."""
    with pytest.raises(ValueError, match="momentum must be a number > 0 and <= 1, not 0.0"):
        _cfg(tmp_path, momentum=0.0)


def test_a_second_training_in_the_same_out_is_refused_while_the_first_runs(tmp_path):
    from lcq_train.run_lock import run_lock

    with run_lock(tmp_path / "run"):                     # (as another lcq train holds it)
        with pytest.raises(FileExistsError, match="is in use by another lcq train"):
            train(_cfg(tmp_path / "run", epochs=1))
    train(_cfg(tmp_path / "run", epochs=1))              # released: the run starts


def test_resume_repairs_a_history_left_behind_and_clears_temporaries(tmp_path):
    """A run killed between its last checkpoint and its metrics.json, and inside an atomic write."""
    out = tmp_path / "run"
    train(_cfg(out, epochs=2))
    saved = json.loads((out / "metrics.json").read_text())
    behind = {**saved, "epochs": saved["epochs"][:1], "test_top1": saved["epochs"][0]["test_top1"],
              "best_test_top1": saved["epochs"][0]["test_top1"]}
    (out / "metrics.json").write_text(json.dumps(behind))
    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"partial")
    with pytest.raises(ValueError, match="already finished its 2 epochs"):
        train(_cfg(out, epochs=2, resume=True), finished_ok=False)
    assert json.loads((out / "metrics.json").read_text()) == load_checkpoint(out / "checkpoint.pt")["metrics"]
    assert not list(out.glob(".*.tmp"))


def test_resume_takes_the_command_that_started_the_run(tmp_path, monkeypatch):
    """The same options again (one the config rewrites: --clip-init mse without --init means fixed), and an
    --init given relative to one directory and absolute from another, name the run's settings."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--out", "fp", "--no-progress"]) == 0
    start = ["train", "--method", "lcq", "--clip-init", "mse", "--init", "fp/checkpoint.pt", "--no-progress"]
    assert main([*start, "--epochs", "1", "--out", "a"]) == 0
    assert main(["train", "--method", "lcq", "--clip-init", "mse", "--epochs", "1", "--out", "b", "--no-progress"]) == 0
    assert main(["train", "--method", "lcq", "--clip-init", "mse", "--epochs", "2", "--out", "b", "--resume",
                 "--no-progress"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--method", "lcq", "--init", str(tmp_path / "fp" / "checkpoint.pt"), "--epochs", "2",
                 "--out", str(tmp_path / "a"), "--resume", "--no-progress"]) == 0


def test_a_config_that_is_no_regular_file_is_refused(tmp_path, capsys):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)                                             # (reading it would wait for a writer forever)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(fifo), "--out", str(tmp_path / "o")])
    assert f"cannot read --config {fifo}: it is not a regular file" in capsys.readouterr().err


def _errors(err: str) -> str:
    """``err`` without the run's warnings (its 12 steps leave the BN statistics lagging: lcq train says so)."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("lcq train: warning:"))


@pytest.mark.parametrize("full_at, hint", [(1, "no epoch had finished: run the same command again, without --resume"),
                                           (2, "the run's last finished epoch is in its checkpoint: run the same "
                                               "command with --resume")])
def test_a_full_disk_says_how_to_go_on(tmp_path, capsys, monkeypatch, full_at, hint):
    """A checkpoint write the disk refuses (ENOSPC): one error line naming the file, what to free and how to go on
    from what is there; the previous checkpoint is intact."""
    import errno

    out, saves = tmp_path / "run", []

    def save(state, path):
        saves.append(path)
        if len(saves) == full_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save_checkpoint(state, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    argv = ["train", "--method", "fp", "--epochs", "2", "--batch-size", "256", "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    assert _errors(capsys.readouterr().err) == f"lcq train: error: [Errno 28] No space left on device: " \
                                               f"'{saves[-1]}'; free space on its disk; {hint}\n"
    if full_at == 2:
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


STOPPED_AT_STEP = """
import signal, sys
import lcq_train.train as train_mod
from lcq.cli import main
step, calls = train_mod.train_step, []
def stopping(*args):
    calls.append(1)
    if len(calls) == int(sys.argv[1]):
        signal.raise_signal(signal.SIGTERM)
    return step(*args)
train_mod.train_step = stopping
sys.exit(main(["train", "--method", "fp", "--epochs", "2", "--batch-size", "256", "--no-progress",
               "--out", sys.argv[2]]))
"""


@pytest.mark.parametrize("step, hint", [(3, "no epoch had finished: run the same command again, without --resume"),
                                        (9, "the run's last finished epoch is in its checkpoint: run the same "
                                            "command with --resume")])
def test_a_stop_signal_ends_lcq_train_as_ctrl_c_does_with_the_way_on(tmp_path, step, hint):
    """SIGTERM to lcq train (a job scheduler's, timeout's) killed it with no word (the signal's default action),
    and Ctrl-C before its first epoch ended told it to resume a run that had no checkpoint (--resume then refused):
    now SIGTERM ends it as Ctrl-C does (status 143, one line), and the line says how to go on from what is there."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", STOPPED_AT_STEP, str(step), str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert _errors(proc.stderr) == f"lcq train: stopped by SIGTERM; files are written whole or not at all; {hint}\n"
    assert (out / "checkpoint.pt").is_file() == (step > 6)           # (digits: 6 steps of 256 per epoch)
