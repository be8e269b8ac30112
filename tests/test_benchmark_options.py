"""Benchmarks refuse a bad option or a missing input file with one line naming it, before any work (no
traceback from torch or the loader halfway through)."""

import pytest
from helpers import load_benchmark


@pytest.mark.parametrize("name, argv, message", [
    ("residual_width", ["--threads", "-1"], "argument --threads: must be an integer >= 1, not '-1'"),
    ("residual_width", ["--frac-bits", "30"], "argument --frac-bits: must be an integer in 0..24, not '30'"),
    ("residual_width", ["--checkpoint", "/nonexistent.pt"], "no checkpoint at --checkpoint /nonexistent.pt"),
    ("resnet20_eval", ["--no-train", "--threads", "0"], "argument --threads: must be an integer >= 1, not '0'"),
    ("link_traffic", ["--model", "/nonexistent.lcq"], "no compiled model at /nonexistent.lcq"),
    ("link_traffic", ["--rows", "0", "--cols", "2"], "argument --rows: must be an integer in 1..256, not '0'"),
    ("core_cells", ["--model", "/nonexistent.lcq"], "no compiled model at --model /nonexistent.lcq"),
    ("core_cells", ["--cols", "300"], "argument --cols: must be an integer in 1..256, not '300'"),
])
def test_bad_options_and_missing_inputs_are_one_line(name, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_benchmark(name).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_board_builds_refuses_force_in_layers_mode(tmp_path, capsys):
    """--force goes past the whole-network fit estimate (lcq build --force): in --mode layers every build failed."""
    argv = ["--mode", "layers", "--force", "--build-root", str(tmp_path), "--json-out", str(tmp_path / "out.json")]
    with pytest.raises(SystemExit) as exit_:
        load_benchmark("board_builds").main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--force is for --mode network" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_link_traffic_records_the_git_state(tmp_path):
    """A result file says which code made it: the commit and the files modified (git_state.py), as the others do."""
    import json
    from pathlib import Path

    digits = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"
    out = tmp_path / "traffic.json"
    assert load_benchmark("link_traffic").main(["--boards", "icebreaker", "--modes", "layers", "--model", str(digits),
                                                "--json-out", str(out)]) == 0
    git = json.loads(out.read_text())["git"]
    assert set(git) == {"commit", "modified"} and (git["commit"] is None or len(git["commit"]) == 40)
