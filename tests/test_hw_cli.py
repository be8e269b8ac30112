"""`lcq generate` and `lcq sim` as a user runs them."""

import json
from pathlib import Path

import pytest

pytest.importorskip("amaranth", reason="the hardware verbs need amaranth: pip install -e '.[hw]'")

from lcq.cli import main  # noqa: E402
from sim.runner import unavailable_reason  # noqa: E402

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"


def test_generate_writes_verilog_and_its_parameters(tmp_path, capsys):
    out = tmp_path / "engine.v"
    assert main(["generate", str(DIGITS), "-o", str(out), "--rows", "2", "--cols", "3", "--resident", "weights"]) == 0
    verilog = out.read_text()
    assert "module lcq_engine(" in verilog
    info = json.loads(out.with_suffix(".json").read_text())
    for port, width in (("load__payload", sum(info["ports"]["load__payload"].values())),
                        ("out__payload", info["ports"]["out__payload"])):
        assert f"input [{width - 1}:0] {port};" in verilog or f"output [{width - 1}:0] {port};" in verilog
    assert info["params"]["rows"] == 2 and info["params"]["cols"] == 3 and info["params"]["multiply"]
    load = info["ports"]["load__payload"]
    assert info["resident"] == "weights" and max(info["target_bits"]) == load["data"] and load["target"] == 3
    assert info["ports"]["out__payload"] == 3 * info["ports"]["out_bits_per_column"]
    assert "2 x 3 PEs" in capsys.readouterr().out


@pytest.mark.sim
def test_sim_one_layer_json(tmp_path, capsys):
    reason = unavailable_reason("icarus")
    if reason is not None:
        pytest.skip(f"icarus simulation skipped: {reason}")
    assert main(["sim", str(DIGITS), "--layer", "3", "--simulator", "icarus", "--rows", "2", "--cols", "4",
                 "--images", "2", "--backpressure", "0.3", "--build-dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mismatches"] == 0 and result["images"] == 2
    (layer,) = result["layers"]
    assert layer["index"] == 3 and layer["name"] == "fc" and layer["macs"] == 2 * 640
    assert layer["cycles"] > layer["compute_cycles"] > 0 and layer["first_mismatch"] is None


def test_sim_rejects_a_missing_layer(capsys):
    assert main(["sim", str(DIGITS), "--layer", "7", "--simulator", "icarus"]) == 2
    assert "--layer 7 does not exist: the model has layers 0..3" in capsys.readouterr().err
