"""benchmarks/integer_agreement.py: its options."""

import pytest
from helpers import load_benchmark


@pytest.mark.parametrize("images", ["0", "-5"])
def test_images_below_one_are_refused(tmp_path, capsys, images):
    """--images -5 evaluated all but the last 5 test images (a slice x[:-5]) and --images 0 all of them, both
    recorded as if asked for; "first N test images" needs N >= 1."""
    with pytest.raises(SystemExit) as e:
        load_benchmark("integer_agreement").main(["--runs", str(tmp_path), "--images", images])
    assert e.value.code == 2 and "--images must be >= 1" in capsys.readouterr().err


def test_a_damaged_checkpoint_under_runs_is_one_line(tmp_path, capsys):
    """A checkpoint.pt under --runs that is not an intact checkpoint (a run's file cut short, a stray file)
    stopped the benchmark with CheckpointError's traceback; it is now one line naming the file, exit 2."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"x\n")
    assert load_benchmark("integer_agreement").main(["--runs", str(tmp_path), "--json-out",
                                                     str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert f"integer_agreement.py: error: {tmp_path / 'bad' / 'checkpoint.pt'} is not an lcq checkpoint" in err
    assert "Traceback" not in err and not (tmp_path / "out.json").exists()


def test_a_check_on_the_first_images_does_not_replace_the_whole_test_sets_results(tmp_path):
    """--images 100 wrote the default results file of the whole test set (integer-agreement-<runs>.json, the
    README's numbers): a quick check silently replaced them. It is now ...-first100.json."""
    bench = load_benchmark("integer_agreement")
    whole, first = bench.default_json_out(tmp_path / "digits-cnn", None), bench.default_json_out(
        tmp_path / "digits-cnn", 100)
    assert whole.endswith("results/integer-agreement-digits-cnn.json")
    assert first.endswith("results/integer-agreement-digits-cnn-first100.json")


def test_a_checkpoint_the_compiler_refuses_is_one_line_before_anything_is_written(tmp_path, capsys):
    """A run whose checkpoint loads but does not compile (here a weight of the wrong shape) stopped the benchmark
    with a traceback, after the runs before it had written their model.lcq; it is now one line naming the
    checkpoint and the fix, exit 2, before any file is written."""
    import torch
    from test_fuzz import tiny_checkpoint

    from lcq_train.checkpoint import load_checkpoint, save_checkpoint

    (tmp_path / "a-good").mkdir()
    (tmp_path / "b-bad").mkdir()
    good = tiny_checkpoint(tmp_path / "a-good" / "checkpoint.pt")
    state = load_checkpoint(good)
    state["model"]["conv0.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "b-bad" / "checkpoint.pt"
    save_checkpoint(state, bad)
    assert load_benchmark("integer_agreement").main(["--runs", str(tmp_path), "--json-out",
                                                     str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"integer_agreement.py: error: {bad}: ") and "size mismatch for conv0.weight" in err
    assert "move it out of --runs" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "a-good" / "model.lcq").exists()


def test_the_runs_of_an_accuracy_grid_are_found_where_accuracy_py_writes_them(tmp_path, capsys):
    """benchmarks/accuracy.py writes its quantized runs to OUT/clip-C-bn-N/seed-S/<run>, but
    `integer_agreement.py --runs OUT` (the README's command) looked one level down only and said 'no quantized
    runs with checkpoint.pt under OUT; run benchmarks/accuracy.py first' right after that had run. Every
    checkpoint under --runs is found now, each row named by its path below --runs."""
    from test_fuzz import tiny_checkpoint

    grid = tmp_path / "digits-cnn"
    run = grid / "clip-mse-bn-50" / "seed-0" / "lcq-w3a3"
    run.mkdir(parents=True)
    tiny_checkpoint(run / "checkpoint.pt")
    out = tmp_path / "out.json"
    assert load_benchmark("integer_agreement").main(["--runs", str(grid), "--images", "20",
                                                     "--json-out", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["run"] for r in rows] == ["clip-mse-bn-50/seed-0/lcq-w3a3"] and rows[0]["images"] == 20
    assert "| clip-mse-bn-50/seed-0/lcq-w3a3 | 3/3 |" in capsys.readouterr().out
