"""``lcq train --init PATH`` starts from a network's own weights: an lcq checkpoint, a ``torch.save``d state dict
(read without running code) or a safetensors file; a file that holds anything else, or weights of another
network, is refused naming what it holds and how to save the weights."""

import json
import pickle
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lcq.cli import main
from lcq_train.checkpoint import load_checkpoint
from lcq_train.models.cnn import SmallCNN
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, train
from lcq_train.weights_file import WeightsError, read_weights


def _cfg(out, **kw):
    base = dict(model="cnn", dataset="digits", plan=QuantPlan("lcq", wbits=3, abits=3), epochs=1, batch_size=64,
                out=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An FP SmallCNN trained 3 epochs on the digits: its checkpoint, and its state dict."""
    out = tmp_path_factory.mktemp("fp")
    train(_cfg(out, plan=QuantPlan("fp"), epochs=3))
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    return out / "checkpoint.pt", state


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_file_kind_reads_as_the_same_state_dict(pretrained, tmp_path):
    checkpoint, state = pretrained
    torch.save(state, tmp_path / "sd.pt")
    torch.save({"epoch": 3, "model_state_dict": state, "best_acc1": 97.5, "arch": "cnn"}, tmp_path / "dict.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "parallel.pt")      # nn.DataParallel's
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "sd.safetensors", metadata={"epoch": "3"})
    for path, kind in ((checkpoint, "an lcq checkpoint"), (tmp_path / "sd.pt", "a torch.save state dict"),
                       (tmp_path / "dict.pth", "a torch.save state dict"),
                       (tmp_path / "parallel.pt", "a torch.save state dict"),
                       (tmp_path / "sd.safetensors", "a safetensors file")):
        read, found = read_weights(path)
        assert found == kind and _same_weights(read, state), path.name


def test_a_run_from_a_state_dict_is_the_run_from_its_checkpoint(pretrained, tmp_path):
    """The same weights, the same seed: the LCQ fine-tuning from the torch.save'd state dict and from the
    safetensors file ends with the weights of the one from the lcq checkpoint."""
    checkpoint, state = pretrained
    torch.save(state, tmp_path / "sd.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "sd.safetensors")
    runs = {}
    for name, init in (("checkpoint", checkpoint), ("pt", tmp_path / "sd.pt"),
                       ("safetensors", tmp_path / "sd.safetensors")):
        train(_cfg(tmp_path / name, init=str(init)))
        runs[name] = load_checkpoint(tmp_path / name / "checkpoint.pt")
    assert _same_weights(runs["pt"]["model"], runs["checkpoint"]["model"])
    assert _same_weights(runs["safetensors"]["model"], runs["checkpoint"]["model"])
    first = json.loads((tmp_path / "checkpoint" / "metrics.json").read_text())["epochs"][0]["test_top1"]
    assert first > 80                   # (the pretrained weights, not a fresh start)


def test_lcq_train_starts_from_a_state_dict_on_the_command_line(pretrained, tmp_path, capsys):
    _, state = pretrained
    torch.save(state, tmp_path / "sd.pt")
    assert main(["train", "--model", "cnn", "--dataset", "digits", "--method", "lcq", "--wbits", "3", "--abits", "3",
                 "--epochs", "1", "--init", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["init"] == str(tmp_path / "sd.pt")


class _Whole(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)


@pytest.mark.parametrize("case,pattern", [
    ("whole model", r"whole\.pt cannot be read as a state dict: it names test_init_weights\._Whole, which a state "
                    r"dict never holds; a pickle that does could run any code, so it is not loaded; save the "
                    r"network's weights with torch\.save\(model\.state_dict\(\), PATH\) \(a pickled model"),
    ("two state dicts", r"two\.pt holds a dict of 2 state dicts \('a', 'b'\), not one state dict"),
    ("a list", r"list\.pt holds a list, not one state dict \(a dict of tensors by parameter name\)"),
    ("empty", r"empty\.pt is empty \(0 bytes\)"),
    ("text", r"text\.pt is neither an lcq checkpoint, a torch\.save state dict nor a safetensors file"),
    ("legacy", r"legacy\.pt is a pickle in torch\.save's legacy format \(not the zip archive PyTorch 1\.6 and later "
               r"write\), which lcq does not read"),
    ("not finite", r"nan\.pt: 'conv0\.weight' holds values that are not finite"),
    ("truncated safetensors", r"cut\.safetensors is truncated: its safetensors header announces"),
    ("bad offsets", r"offsets\.safetensors: tensor 'w' has data_offsets \[0, 8\]; a F32 tensor of shape \[3\] "
                    r"after byte 0 needs \[0, 12\]"),
    ("compiled model", r"model\.lcq is a compiled model \(`lcq compile` writes it\), not weights: pass the "
                       r"checkpoint it was compiled from"),
])
def test_a_file_that_holds_no_state_dict_is_refused_naming_what_it_holds(pretrained, tmp_path, case, pattern):
    _, state = pretrained
    name = {"whole model": "whole.pt", "two state dicts": "two.pt", "a list": "list.pt", "empty": "empty.pt",
            "text": "text.pt", "legacy": "legacy.pt", "not finite": "nan.pt",
            "truncated safetensors": "cut.safetensors", "bad offsets": "offsets.safetensors",
            "compiled model": "model.lcq"}[case]
    path = tmp_path / name
    if case == "whole model":
        torch.save(_Whole(), path)
    elif case == "two state dicts":
        torch.save({"a": state, "b": state}, path)
    elif case == "a list":
        torch.save([state], path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("weights, please\n")
    elif case == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif case == "not finite":
        torch.save({**state, "conv0.weight": torch.full_like(state["conv0.weight"], float("nan"))}, path)
    elif case == "truncated safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "compiled model":
        path.write_bytes((Path(__file__).parent / "data" / "digits-cnn-lcq-w3a3.lcq").read_bytes())
    else:
        header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(WeightsError, match=pattern):
        read_weights(path)
    with pytest.raises(ValueError, match=pattern):
        train(_cfg(tmp_path / "run", init=str(path)))


def test_weights_of_another_network_are_refused_naming_the_names_and_shapes(pretrained, tmp_path, capsys):
    """A state dict of the same network for another number of classes, one without a layer, one with an extra
    tensor: each names what differs and says what to save."""
    _, state = pretrained
    other = SmallCNN((1, 8, 8), 4).state_dict()
    torch.save(other, tmp_path / "four.pt")
    with pytest.raises(ValueError, match=r"--init .*four\.pt \(a torch\.save state dict\) does not fit this model: "
                                         r"shapes differ: \['fc\.weight \(4, \d+\) in the file, \(10, \d+\) in the "
                                         r"model', 'fc\.bias \(4,\) in the file, \(10,\) in the model'\]; save the "
                                         r"state dict of the same network, built for this dataset's image shape and "
                                         r"classes"):
        train(_cfg(tmp_path / "run", init=str(tmp_path / "four.pt")))
    torch.save({k: v for k, v in state.items() if not k.startswith("conv1.")}, tmp_path / "less.pt")
    with pytest.raises(ValueError, match=r"the file lacks \['conv1\.weight'"):
        train(_cfg(tmp_path / "run", init=str(tmp_path / "less.pt")))
    torch.save({**state, "head.weight": torch.zeros(2)}, tmp_path / "more.pt")
    with pytest.raises(ValueError, match=r"the model has no \['head\.weight'\]"):
        train(_cfg(tmp_path / "run", init=str(tmp_path / "more.pt")))
    assert main(["train", "--model", "cnn", "--dataset", "digits", "--epochs", "1", "--init",
                 str(tmp_path / "more.pt"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    assert "the model has no ['head.weight']" in capsys.readouterr().err


def test_init_skip_leaves_a_layer_out_for_a_new_classifier(pretrained, tmp_path, capsys):
    """Weights of the same network for 4 classes: refused, naming --init-skip fc; with it, every other layer
    starts from the file and fc from the model's own initialization (the run's seed)."""
    _, state = pretrained
    four = SmallCNN((1, 8, 8), 4)
    four.load_state_dict({k: (v[:4] if k.startswith("fc.") else v) for k, v in state.items()})
    torch.save(four.state_dict(), tmp_path / "four.pt")
    with pytest.raises(ValueError, match=r"or leave those layers out \(--init-skip fc: a new classifier\)"):
        train(_cfg(tmp_path / "refused", init=str(tmp_path / "four.pt")))
    loaded = {}
    original = torch.nn.Module.load_state_dict

    def spy(module, weights, strict=True, **kw):        # the weights --init loads, before training changes them
        loaded.update(weights)
        return original(module, weights, strict, **kw)

    torch.nn.Module.load_state_dict = spy
    try:
        train(_cfg(tmp_path / "skip", init=str(tmp_path / "four.pt"), init_skip=["fc"], epochs=1))
    finally:
        torch.nn.Module.load_state_dict = original
    assert sorted(loaded) == sorted(k for k in state if not k.startswith("fc."))
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    saved = load_checkpoint(tmp_path / "skip" / "checkpoint.pt")
    assert saved["config"]["init_skip"] == ["fc"] and saved["model"]["fc.weight"].shape[0] == 10
    with pytest.raises(ValueError, match=r"--init-skip 'head' names no layer of this model; its layers: \['conv0'"):
        train(_cfg(tmp_path / "unknown", init=str(tmp_path / "four.pt"), init_skip=["head"]))
    with pytest.raises(ValueError, match=r"--init-skip fc leaves layers out of --init weights: give --init too"):
        train(_cfg(tmp_path / "alone", init_skip=["fc"]))
    with pytest.raises(ValueError, match=r"holds a run with other settings.*--init-skip \['fc'\] there, \['conv1'\] "
                                         r"asked"):
        train(_cfg(tmp_path / "skip", init_skip=["conv1"], epochs=2, resume=True))
    assert main(["train", "--model", "cnn", "--dataset", "digits", "--method", "lcq", "--epochs", "1", "--init",
                 str(tmp_path / "four.pt"), "--init-skip", "fc", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"init_skip": "fc"}))
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--config", str(config), "--out", str(tmp_path / "bad")])
    assert "key 'init_skip' must be a list of layer names" in capsys.readouterr().err


def test_the_readme_example_of_own_training_starts_an_lcq_run(tmp_path, capsys):
    """tests/data/own_training.py (the README's example): its saved dict of model, optimizer and epoch starts
    `lcq train --model tests/data/own_training.py:Net --init`, above chance after the first epoch."""
    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from own_training import main as own_training

    own_training(str(tmp_path / "own.pth"))
    assert "own training, full precision: test top-1" in capsys.readouterr().out
    model = f"{Path(__file__).parent / 'data' / 'own_training.py'}:Net"
    assert main(["train", "--model", model, "--dataset", "digits", "--method", "lcq", "--wbits", "3", "--abits",
                 "3", "--init", str(tmp_path / "own.pth"), "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"][0]["test_top1"] > 80


def test_no_code_runs_while_a_file_is_read(tmp_path):
    """A pickle whose state dict would call os.system when loaded by torch.load(weights_only=False)."""
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "boom.pt"
    torch.save({"conv0.weight": torch.zeros(1), "x": Boom()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(WeightsError, match=r"it names builtins\.print, which a state dict never holds"):
        read_weights(path)
