"""`lcq compile`, `lcq report`, `lcq eval` as a user runs them, including their errors."""

import json
import shutil
import zipfile

import pytest

from compiler import format as model_format
from lcq.cli import main
from lcq_train import checkpoint as checkpoint_format
from lcq_train.checkpoint import load_checkpoint, save_checkpoint
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, train


def _train(out, plan, epochs):
    train(TrainConfig(model="cnn", dataset="digits", plan=plan, epochs=epochs, batch_size=64, out=str(out),
                      progress=False))
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    checkpoint = _train(root / "lcq", QuantPlan("lcq", 3, 3), epochs=2)
    model = root / "model.lcq"
    assert main(["compile", str(checkpoint), "-o", str(model)]) == 0
    return checkpoint, model


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_report_json_lists_layers_and_the_papers_lut_sizes(compiled, capsys):
    _, model = compiled
    capsys.readouterr()
    assert main(["report", str(model), "--json"]) == 0
    rep = _json(capsys)
    layers = {r["name"]: r for r in rep["layers"]}
    assert list(layers) == ["conv0", "conv1", "conv2", "fc"]
    for name in ("conv1", "conv2"):
        assert (layers[name]["wbits"], layers[name]["abits"]) == (3, 3)
        assert (layers[name]["lut_entries"], layers[name]["lut_bytes"]) == (21, 42)
    assert layers["conv1"]["macs"] == 32 * 4 * 4 * 16 * 9 and layers["conv1"]["weight_bytes"] == 32 * 16 * 9 * 3 // 8
    assert layers["conv0"]["lut_entries"] == 0 and layers["fc"]["lut_entries"] == 0    # 8-bit edge layers multiply
    assert rep["total_bytes"] == rep["total_bytes_without_luts"] + 84
    assert rep["total_bytes_without_luts"] == sum(r["weight_bytes"] for r in rep["layers"])


def test_eval_json_reports_top1_and_full_agreement(compiled, capsys):
    _, model = compiled
    capsys.readouterr()
    assert main(["eval", str(model), "--json"]) == 0
    result = _json(capsys)
    assert result["images"] == 360 and result["disagreements"] == 0 and result["agreement"] == 1.0
    assert result["top1"] == result["torch_top1"] > 50.0
    assert all(c["mismatched"] == 0 for c in result["code_mismatches"].values())
    assert result["code_mismatches"]["act1"]["compared"] == 360 * 16 * 8 * 8
    from lcq_train.data import load_dataset

    per_class = result["per_class"]         # digits: ten classes named by their digits
    counts = load_dataset("digits").test_y.bincount().tolist()
    assert [(r["class"], r["name"], r["images"]) for r in per_class] == [(c, str(c), counts[c]) for c in range(10)]
    assert sum(r["top1"] * r["images"] for r in per_class) / 360 == pytest.approx(result["top1"])


def test_eval_table_and_image_limit(compiled, capsys):
    _, model = compiled
    capsys.readouterr()
    assert main(["eval", str(model), "--images", "50"]) == 0
    out = capsys.readouterr().out
    assert "50 digits test images: integer top-1" in out and "top-1 agreement 100.000%" in out
    assert "| act2 | 25,600 | 0 |" in out
    assert main(["eval", str(model), "--images", "1"]) == 0
    assert "1 digits test image: integer top-1" in capsys.readouterr().out
    assert main(["eval", str(model), "--images", "361"]) == 2
    assert "--images 361: the digits test set has 360 images" in capsys.readouterr().err


def test_eval_shows_its_progress_on_a_terminal_only(compiled, capsys, monkeypatch):
    """The images done, carriage return after carriage return, on a terminal; not into a log (`2> eval.log`), where
    the returns would join the counts into one line (as `lcq run` does)."""
    import sys

    _, model = compiled
    capsys.readouterr()
    assert main(["eval", str(model), "--images", "20"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["eval", str(model), "--images", "20"]) == 0
    assert capsys.readouterr().err == "\r20/20 images\n"

def test_compile_refuses_a_full_precision_checkpoint(tmp_path, capsys):
    checkpoint = _train(tmp_path / "fp", QuantPlan("fp"), epochs=1)
    assert main(["compile", str(checkpoint), "-o", str(tmp_path / "m.lcq")]) == 2
    assert "full-precision checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.lcq").exists()


def test_eval_of_another_kind_of_checkpoint_says_it_is_not_the_models(compiled, tmp_path, capsys):
    """``--checkpoint`` of a full-precision run is named as not the checkpoint the model was compiled from (it was
    told to train a quantized one instead), before any model is built from it, and no recompiling of it is advised
    (a full-precision checkpoint compiles to no model)."""
    _, model = compiled
    fp = _train(tmp_path / "fp", QuantPlan("fp"), epochs=1)
    capsys.readouterr()                         # (the training run's own warnings)
    assert main(["eval", str(model), "--checkpoint", str(fp)]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {fp} is not the checkpoint {model} was compiled from" in err and "lcq train" not in err
    assert "lcq compile" not in err and "full-precision" in err


def test_eval_errors_name_the_fix(compiled, tmp_path, capsys):
    checkpoint, model = compiled
    assert main(["eval", str(tmp_path / "absent.lcq")]) == 2
    assert "lcq compile CHECKPOINT" in capsys.readouterr().err
    # The model remembers its checkpoint; when that moves, --checkpoint points to it.
    moved = tmp_path / "moved.lcq"
    shutil.copy(model, moved)
    stash = tmp_path / "checkpoint.pt"
    shutil.move(checkpoint, stash)
    try:
        assert main(["eval", str(moved), "--images", "10"]) == 2
        assert "--checkpoint" in capsys.readouterr().err
        assert main(["eval", str(moved), "--images", "10", "--checkpoint", str(stash), "--json"]) == 0
        assert _json(capsys)["images"] == 10
    finally:
        shutil.move(stash, checkpoint)
    for option in ("--images", "--batch-size"):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", str(model), option, "0"])
        assert exit_.value.code == 2
        assert f"argument {option}: must be an integer >= 1, not '0'" in capsys.readouterr().err


def test_compile_below_a_file_says_so(compiled, tmp_path, capsys):
    """(-o naming a directory is refused with the option: tests/test_hw_cli.py, test_file_outputs_refuse_...)"""
    checkpoint, _ = compiled
    (tmp_path / "file").write_text("x")
    assert main(["compile", str(checkpoint), "-o", str(tmp_path / "file" / "m.lcq")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcq compile: error: ") and f"{tmp_path / 'file'} is a file, not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_compile_refuses_to_write_over_its_checkpoint(compiled, tmp_path, capsys):
    checkpoint, _ = compiled
    copy = tmp_path / "checkpoint.pt"
    shutil.copy(checkpoint, copy)
    (tmp_path / "link.pt").symlink_to(copy)
    for output in (copy, tmp_path / "link.pt", tmp_path / "." / "checkpoint.pt"):
        assert main(["compile", str(copy), "-o", str(output)]) == 2
        assert f"-o {output}: writing {output} would replace the checkpoint {copy}" in capsys.readouterr().err
    assert copy.read_bytes() == checkpoint.read_bytes()


def test_the_model_records_its_checkpoint_and_eval_works_from_anywhere(compiled, tmp_path, monkeypatch, capsys):
    checkpoint, _ = compiled
    monkeypatch.chdir(checkpoint.parent)
    assert main(["compile", "checkpoint.pt", "-o", "relative.lcq"]) == 0     # a relative path on the command line
    source = model_format.load(checkpoint.parent / "relative.lcq").source
    assert source["checkpoint"] == str(checkpoint.resolve())
    assert source["sha256"] == load_checkpoint(checkpoint)["sha256"]       # the checkpoint's own digest
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(checkpoint.parent / "relative.lcq"), "--images", "10", "--json"]) == 0
    assert _json(capsys)["images"] == 10


def test_eval_refuses_a_checkpoint_the_model_was_not_compiled_from(compiled, tmp_path, capsys):
    checkpoint, model = compiled
    state = load_checkpoint(checkpoint)
    state["metrics"]["note"] = "another checkpoint"
    other = tmp_path / "other.pt"
    save_checkpoint(state, other)
    assert main(["eval", str(model), "--images", "10", "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {other} is not the checkpoint {model} was compiled from" in err
    assert f"lcq compile {other} -o {model}" in err
    # The recorded checkpoint replaced by another one in place: said too.
    stash = tmp_path / "stash.pt"
    shutil.copy(checkpoint, stash)
    shutil.copy(other, checkpoint)
    try:
        assert main(["eval", str(model), "--images", "10"]) == 2
        err = capsys.readouterr().err
        assert f"{checkpoint} is not the checkpoint {model} was compiled from: it changed since" in err
    finally:
        shutil.copy(stash, checkpoint)
    assert main(["eval", str(model), "--images", "10", "--json"]) == 0


def test_eval_refuses_a_model_naming_another_dataset_than_its_checkpoint(compiled, tmp_path, capsys, monkeypatch):
    """The test set eval compares on is the one the checkpoint was trained on (its config, digest-checked): a model
    file edited to name another dataset (its own digest rewritten) was evaluated on that one. The mismatch is named,
    with the fix, before any data is read. (Reading the file refuses a dataset of another image shape; MNIST and
    Fashion-MNIST share theirs, so here MNIST's images take the digits' shape.)"""
    from helpers import members

    from compiler.graph import DATASET_SHAPES

    monkeypatch.setitem(DATASET_SHAPES, "mnist", DATASET_SHAPES["digits"])
    checkpoint, model = compiled
    manifest, arrays = members(model)
    manifest["source"]["dataset"] = "mnist"
    edited = tmp_path / "edited.lcq"
    model_format.write_members(edited, manifest, arrays)
    capsys.readouterr()
    assert main(["eval", str(edited), "--images", "10", "--data-dir", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err
    assert (f"{edited} names the dataset 'mnist' (source.dataset), but the checkpoint {checkpoint} it was compiled "
            f"from was trained on 'digits'" in err and f"lcq compile {checkpoint} -o {edited}" in err)


def test_a_directory_where_a_file_is_expected_says_so(compiled, tmp_path, capsys):
    """A run directory given for its checkpoint, or any directory for a model file, is named as a directory, with
    the file to pass (the run's checkpoint.pt where there is one); not 'no checkpoint at DIR' or a fix that
    writes a model to the directory's path."""
    checkpoint, model = compiled
    run = checkpoint.parent
    for argv in (["compile", str(run), "-o", str(tmp_path / "m.lcq")], ["eval", str(model), "--checkpoint", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{run} is a directory, not a checkpoint: pass its checkpoint, {checkpoint}" in err, err
    assert main(["compile", str(tmp_path), "-o", str(tmp_path / "m.lcq")]) == 2
    assert (f"{tmp_path} is a directory, not a checkpoint: pass the checkpoint.pt that `lcq train --out DIR` "
            "writes") in capsys.readouterr().err
    for verb in ("report", "eval"):
        assert main([verb, str(run)]) == 2
        err = capsys.readouterr().err
        assert f"{run} is a directory, not a compiled model: pass the model file that `lcq compile` wrote" in err
        assert "-o " not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_model_and_a_checkpoint_given_for_each_other_are_named(compiled, tmp_path, capsys):
    """A compiled model where a checkpoint is expected is named as one (not as an older lcq's pickle to upgrade),
    and a checkpoint where a model is expected too (not as a damaged model to recompile over itself)."""
    checkpoint, model = compiled
    for argv in (["compile", str(model), "-o", str(tmp_path / "m.lcq")],
                 ["eval", str(model), "--checkpoint", str(model)],
                 ["export-onnx", str(model), "-o", str(tmp_path / "m.onnx")], ["plot", str(model)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{model} is a compiled model (`lcq compile` writes it), not a checkpoint" in err, (argv, err)
        assert "pickle" not in err
    for verb in ("report", "eval"):           # (and every verb that reads a model: compiler.format.load)
        assert main([verb, str(checkpoint)]) == 2, verb
        err = capsys.readouterr().err
        assert (f"{checkpoint} is a checkpoint (`lcq train` writes it), not a compiled model: compile it with "
                f"`lcq compile {checkpoint} -o MODEL.lcq`") in err, (verb, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # The two modules tell each other's files by marks they cannot import (the import rule, the host-only loader).
    assert model_format.CHECKPOINT_MAGIC == checkpoint_format.MAGIC
    assert f"{model_format.MANIFEST}.npy" in zipfile.ZipFile(model).namelist()


def test_a_file_of_another_tool_given_as_a_model_is_not_to_be_recompiled_over(compiled, tmp_path, capsys):
    """A file that is not a zip archive at all (an ONNX file, a JSON file) given as a model is named as not one
    `lcq compile` wrote, without the advice for a damaged model, to compile over it (over the user's file)."""
    _, model = compiled
    for name, data in (("m.onnx", b"\x08\x08\x12\x07pytorch"), ("core.json", b'{"top": "lcq_network"}')):
        other = tmp_path / name
        other.write_bytes(data)
        assert main(["report", str(other)]) == 2
        err = capsys.readouterr().err
        assert err == (f"lcq report: error: {other} is not a readable compiled model: it is not a zip archive, the "
                       "format `lcq compile` writes; pass the model file that `lcq compile` wrote\n"), err
    truncated = tmp_path / "truncated.lcq"
    truncated.write_bytes(model.read_bytes()[:5000])          # a damaged model: the advice to recompile stays
    assert main(["report", str(truncated)]) == 2
    assert f"recompile it with `lcq compile CHECKPOINT -o {truncated}`" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, valid", [
    ("--residual-frac-bits", "25", "an integer in 0..24"), ("--pool-frac-bits", "-1", "an integer in 0..24"),
    ("--logit-frac-bits", "eight", "an integer in 0..24"), ("--max-lut-entries", "0", f"an integer in 1..{2**63}"),
    ("--max-lut-entries", str(2**63 + 1), f"an integer in 1..{2**63}"),
])
def test_compile_options_are_range_checked_as_they_are_parsed(compiled, tmp_path, capsys, option, value, valid):
    """A compile option out of its range is a usage error naming the option and the range, before the checkpoint is
    read or lowered (a --max-lut-entries too large for the model file was taken, and refused only on writing)."""
    checkpoint, _ = compiled
    out = tmp_path / "m.lcq"
    with pytest.raises(SystemExit) as e:
        main(["compile", str(checkpoint), "-o", str(out), option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"lcq compile: error: argument {option}: must be {valid}, not '{value}'" in err, err
    assert not out.exists()


def test_eval_refuses_a_model_whose_codes_are_named_after_no_quantizer(compiled, tmp_path, capsys):
    """Codes are compared per activation quantizer, found by the tensor's name: a model file whose tensor act2 was
    renamed (the same model otherwise, its digest rewritten) was evaluated with that quantizer silently left out of
    the comparison. The name is refused, with the fix."""
    from helpers import members

    checkpoint, model = compiled
    manifest, arrays = members(model)
    for node in manifest["nodes"]:
        node.update({k: "act2b" for k in ("input", "output") if node.get(k) == "act2"})
    edited = tmp_path / "edited.lcq"
    model_format.write_members(edited, manifest, arrays)
    model_format.load(edited)                                    # a valid model file
    capsys.readouterr()
    assert main(["eval", str(edited), "--images", "10"]) == 2
    err = capsys.readouterr().err
    assert (f"{edited} names the codes tensor 'act2b', which is no activation quantizer of the network of {checkpoint}"
            in err and f"lcq compile {checkpoint} -o {edited}" in err), err
