"""`lcq compile`, `lcq report`, `lcq eval` as a user runs them, including their errors."""

import json
import shutil

import pytest

from lcq_train.cli import main
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


def test_eval_table_and_image_limit(compiled, capsys):
    _, model = compiled
    capsys.readouterr()
    assert main(["eval", str(model), "--images", "50"]) == 0
    out = capsys.readouterr().out
    assert "50 digits test images: integer top-1" in out and "top-1 agreement 100.000%" in out
    assert "| act2 | 25,600 | 0 |" in out


def test_compile_refuses_a_full_precision_checkpoint(tmp_path, capsys):
    checkpoint = _train(tmp_path / "fp", QuantPlan("fp"), epochs=1)
    assert main(["compile", str(checkpoint), "-o", str(tmp_path / "m.lcq")]) == 2
    assert "full-precision checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.lcq").exists()


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
    assert main(["eval", str(model), "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err
