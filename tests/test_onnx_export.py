"""ONNX export of the fake-quantized model (``lcq export-onnx``): structure, metadata, and the same outputs
as the PyTorch model in eval mode, run by onnx's reference evaluator."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import one_epoch_history, randomize, small_cnn
from lcq.cli import main
from lcq_train.checkpoint import capture_rng, save_checkpoint
from lcq_train.data import load_dataset
from lcq_train.factory import model_from_checkpoint
from lcq_train.layers import QAct
from lcq_train.onnx_export import decision_thresholds, export_onnx
from lcq_train.plan import QuantPlan, quantize_model
from lcq_train.quant import level_scale
from lcq_train.quantizer import QuantSpec
from lcq_train.train import TrainConfig, _bits, build_quantized_model

onnx = pytest.importorskip("onnx", reason="the ONNX export needs onnx (the test extra: pip install -e '.[test]')")
from onnx.reference import ReferenceEvaluator  # noqa: E402

POST_ACT = f"{Path(__file__).parent / 'data' / 'compile_models.py'}:post_act_resnet"


@pytest.fixture(scope="module")
def digits():
    """32 digits test images as the model sees them (float32, pixel / 255)."""
    return load_dataset("digits").test_x[:32].float() / 255


def _run(path, x: torch.Tensor) -> np.ndarray:
    return ReferenceEvaluator(onnx.load(str(path))).run(None, {"image": x.numpy()})[0]


def _ops(proto) -> dict:
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def _assert_same_logits(path, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x).numpy()
    logits = _run(path, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert (logits.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("method", ["lcq", "uniform"])
def test_cnn_export_structure_metadata_and_logits(method, digits, tmp_path):
    model = small_cnn((1, 8, 8), QuantPlan(method, 3, 3), seed=1)
    path = tmp_path / "cnn.onnx"
    summary = export_onnx(model, path, (1, 8, 8))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {node.domain for node in proto.graph.node} == {""}                  # standard operators only
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    ops = _ops(proto)
    assert (ops["Conv"], ops["BatchNormalization"], ops["Gemm"]) == (3, 3, 1)
    assert ops["GreaterOrEqual"] == ops["Gather"] == 4                       # one level table per quantizer
    assert summary["nodes"] == len(proto.graph.node) and summary["bytes"] == path.stat().st_size

    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    gathers = {node.input[0]: node for node in proto.graph.node if node.op_type == "Gather"}
    bits = {"act_in": 8, "act1": 3, "act2": 3, "act_fc": 8}
    assert set(summary["activation_quantizers"]) == set(bits)
    for name, b in bits.items():
        q = model.get_submodule(name)
        record = metadata[f"lcq.activation.{name}"]
        assert (record["method"], record["bits"], record["outer_bits"]) == (q.method, b, 8)
        assert record["levels"] == q.levels().tolist() and len(record["levels"]) == 2**b
        thresholds, table = initializers[f"{name}.thresholds"], initializers[f"{name}.table"]
        assert thresholds.shape == (2**b - 1,) and table.shape == (2**b,)
        assert (np.diff(thresholds) >= 0).all() and thresholds.tolist() == record["thresholds"]
        assert table.tolist() == record["table"]
        assert name in gathers[f"{name}.table"].doc_string
    for layer, b in (("conv0", 8), ("conv1", 3), ("conv2", 3), ("fc", 8)):
        module = model.get_submodule(layer)
        assert metadata[f"lcq.weight.{layer}"]["bits"] == b
        with torch.no_grad():
            assert np.array_equal(initializers[f"{layer}.weight"], module.wq(module.weight).numpy())
    _assert_same_logits(path, model, digits)


@pytest.mark.parametrize("method, bits, outer, signed, alpha, n", [
    ("lcq", 3, 8, False, 2.5, 70000),         # >= 65536 elements: the quantizer's torch path, not numpy's
    ("lcq", 4, 6, True, 1.7, 1000),
    ("uniform", 8, 8, False, 1.0, 1000),      # the input image's quantizer
    ("uniform", 2, None, True, 0.9, 1000),
])
def test_level_table_is_the_quantizers_staircase_bit_for_bit(method, bits, outer, signed, alpha, n, tmp_path):
    torch.manual_seed(bits)
    q = QAct(QuantSpec(method, bits, outer, alpha=alpha), signed=signed)
    if q.method == "lcq":
        with torch.no_grad():
            q.theta.normal_(0, 1.0)
    thresholds, table = decision_thresholds(q)
    below, above = np.nextafter(thresholds, np.float32(-np.inf)), np.nextafter(thresholds, np.float32(np.inf))
    edges = np.concatenate([thresholds, below, above, np.arange(256) / 255, [0.0, 1e-30, alpha, 1e9, np.inf]])
    spread = np.random.default_rng(bits).uniform(-1.2 * alpha, 1.2 * alpha, n)
    x = torch.from_numpy(np.concatenate([edges, -edges, spread]).astype(np.float32)).view(1, 1, 1, -1)
    path = tmp_path / "q.onnx"
    export_onnx(nn.Sequential(q), path, tuple(x.shape[1:]))
    with torch.no_grad():
        expected = q(x).numpy()
    assert np.array_equal(_run(path, x), expected)
    assert len(table) == len(thresholds) + 1 == level_scale(bits, signed) + 1


class _WithFlag(nn.Module):
    """A network whose forward has a defaulted flag (quantize_model traces it at its default)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64, 10)

    def forward(self, x, return_features=False):
        features = torch.relu(self.conv(x)).flatten(1)
        return features if return_features else self.fc(features)


def test_a_forward_with_a_defaulted_flag_exports(digits, tmp_path):
    torch.manual_seed(0)
    model = quantize_model(_WithFlag(), method="lcq", wbits=3, abits=3).eval()
    path = tmp_path / "flag.onnx"
    export_onnx(model, path, (1, 8, 8))
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image"]
    _assert_same_logits(path, model, digits)


def _checkpoint(path: Path, model_ref: str, plan: QuantPlan) -> nn.Module:
    """Write a checkpoint of a randomized ``model_ref`` quantized by ``plan`` (no training); returns the model."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=model_ref, dataset="digits", plan=plan, epochs=1, out=str(path.parent / "run"))
    model = randomize(build_quantized_model(model_ref, (1, 8, 8), 10, plan, allow_factory=True), seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layers = {k: list(v) for k, v in _bits(model, plan).items()}
    metrics = one_epoch_history(cfg.to_dict(), layers)
    save_checkpoint({"config": cfg.to_dict(), "plan": plan.to_dict(), "input_shape": [1, 8, 8], "num_classes": 10,
                     "layers": layers, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": {}, "epoch": 1, "rng": capture_rng(), "metrics": metrics}, path)
    return model


@pytest.fixture(scope="module")
def user_checkpoint(tmp_path_factory):
    """A checkpoint of a post-activation ResNet written the plain PyTorch way (LCQ W3/A3), and its model."""
    path = tmp_path_factory.mktemp("onnx") / "checkpoint.pt"
    return path, _checkpoint(path, POST_ACT, QuantPlan("lcq", 3, 3))


def test_cli_exports_a_user_model_checkpoint(user_checkpoint, digits, tmp_path, capsys):
    checkpoint, model = user_checkpoint
    out = tmp_path / "postact.onnx"
    assert main(["export-onnx", str(checkpoint), "-o", str(out)]) == 2
    assert f"--model {POST_ACT}" in capsys.readouterr().err and not out.exists()
    assert main(["export-onnx", str(checkpoint), "-o", str(out), "--model", POST_ACT]) == 0
    printed = capsys.readouterr().out
    assert "act_block1_conv1: lcq 3 bits (b' 8), 8 levels" in printed
    assert f"wrote {out}: " in printed and "6 activation quantizers as level tables" in printed
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    ops = _ops(proto)
    assert (ops["Conv"], ops["Add"], ops["Gemm"], ops["Gather"]) == (7, 2, 1, 6)   # the shortcut shares its input's
    _assert_same_logits(out, model_from_checkpoint(checkpoint, POST_ACT), digits)
    _assert_same_logits(out, model, digits)


def test_export_onnx_errors_name_the_problem_and_the_fix(user_checkpoint, tmp_path, capsys, monkeypatch):
    checkpoint, _ = user_checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(tmp_path / "absent.pt"), "-o", str(out)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["export-onnx", str(junk), "-o", str(out)]) == 2
    assert str(junk) in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)                         # onnx not installed
    assert main(["export-onnx", str(checkpoint), "-o", str(out), "--model", POST_ACT]) == 2
    assert "pip install onnx" in capsys.readouterr().err
    assert not out.exists()


def test_export_onnx_refuses_to_write_over_its_checkpoint(user_checkpoint, tmp_path, capsys):
    """``-o`` naming the checkpoint (by any path) is refused before anything is read: it replaced the trained run
    with the ONNX file."""
    checkpoint, _ = user_checkpoint
    copy = tmp_path / "checkpoint.pt"
    copy.write_bytes(Path(checkpoint).read_bytes())
    (tmp_path / "link.pt").symlink_to(copy)
    for output in (copy, tmp_path / "link.pt"):
        assert main(["export-onnx", str(copy), "-o", str(output), "--model", POST_ACT]) == 2
        assert f"-o {output}: writing {output} would replace the checkpoint {copy}" in capsys.readouterr().err
    assert copy.read_bytes() == Path(checkpoint).read_bytes()
