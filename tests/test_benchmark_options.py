"""Benchmarks refuse a bad option or a missing input file with one line naming it, before any work (no
traceback from torch or the loader halfway through)."""

import os
from pathlib import Path

import pytest
from helpers import load_benchmark, within

DIGITS = Path(__file__).resolve().parent / "data" / "digits-cnn-lcq-w3a3.lcq"


@pytest.mark.parametrize("name, argv, message", [
    ("residual_width", ["--threads", "-1"], "argument --threads: must be an integer >= 1, not '-1'"),
    ("residual_width", ["--frac-bits", "30"], "argument --frac-bits: must be an integer in 0..24, not '30'"),
    ("residual_width", ["--checkpoint", "/nonexistent.pt"], "no checkpoint at --checkpoint /nonexistent.pt"),
    # (a fraction given twice was compiled once but tabulated and recorded as two rows)
    ("residual_width", ["--frac-bits", "3", "3"], "argument --frac-bits: 3 is given twice"),
    ("resnet20_eval", ["--no-train", "--threads", "0"], "argument --threads: must be an integer >= 1, not '0'"),
    # (--no-train with no committed model, e.g. the default path run outside the repository root, evaluated
    # nothing, printed an empty table and exited 0 with a results file holding only the error)
    ("resnet20_eval", ["--no-train", "--committed", "/nonexistent.lcq"],
     "--no-train evaluates the committed model only, and it cannot be loaded: no compiled model at "
     "/nonexistent.lcq"),
    ("link_traffic", ["--model", "/nonexistent.lcq"], "no compiled model at /nonexistent.lcq"),
    # (a board or mode given twice was measured, or simulated, twice: duplicate rows in the table and the file)
    ("link_traffic", ["--boards", "icebreaker, ulx3s-85f,icebreaker"],
     "argument --boards: icebreaker is given twice; name each board once"),
    ("link_traffic", ["--modes", "layers,layers"], "argument --modes: layers is given twice; name each mode once"),
    ("link_throughput", ["--boards", "icebreaker,icebreaker"],
     "argument --boards: icebreaker is given twice; name each board once"),
    # (a model given twice, by any path to its file, likewise)
    ("link_traffic", ["--boards", "icebreaker", "--model", str(DIGITS), f"{DIGITS.parent}/../data/{DIGITS.name}"],
     f"argument --model: {DIGITS.parent}/../data/{DIGITS.name} is given twice; name each model once"),
    ("link_throughput", ["--models", str(DIGITS), str(DIGITS)],
     f"argument --models: {DIGITS} is given twice; name each model once"),
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


# every benchmark with a results file, and what else its command line needs to parse
JSON_OUT_BENCHMARKS = [
    ("ablations", []), ("accuracy", []), ("array_utilization", []), ("board_builds", []), ("cifar10_resnet20", []),
    ("cifar10_seeds", ["seed0.json"]), ("core_cells", []), ("fuzz", []), ("integer_agreement", ["--runs", "runs"]),
    ("link_throughput", []), ("link_traffic", []), ("outer_widths_hw", []), ("pe_cost", []), ("quantizer_speed", []),
    ("residual_width", []), ("resnet20_eval", []),
]


@pytest.mark.parametrize("name, argv", JSON_OUT_BENCHMARKS, ids=[n for n, _ in JSON_OUT_BENCHMARKS])
@pytest.mark.parametrize("where", ["directory", "trailing separator"])
def test_json_out_naming_a_directory_is_refused_when_parsed(name, argv, where, tmp_path, capsys):
    """--json-out naming a directory was taken, and the results file failed to be written only at the end, after
    the whole run (minutes to hours), with a traceback: refused when parsed, as lcq's -o is."""
    json_out = str(tmp_path) if where == "directory" else str(tmp_path / "new") + "/"
    with pytest.raises(SystemExit) as exit_:
        load_benchmark(name).main([*argv, "--json-out", json_out])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --json-out: must name a file to write, not a directory" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# the benchmarks that read their --json-out before any work (the results an earlier invocation wrote there)
READING_BENCHMARKS = ["ablations", "accuracy", "array_utilization", "outer_widths_hw"]


@pytest.mark.parametrize("name", READING_BENCHMARKS)
def test_json_out_naming_a_pipe_is_refused_when_parsed(name, tmp_path, capsys):
    """--json-out naming a named pipe (or /dev/stdout, to see the results: a pipe under `| tee`, a terminal) was
    opened to read the earlier results, which waited for a writer forever, before any work and without a word;
    refused when parsed, as a directory is (the results file is written anew and renamed over it)."""
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    with within(20, f"{name}.py --json-out FIFO"), pytest.raises(SystemExit) as exit_:
        load_benchmark(name).main(["--json-out", str(fifo)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --json-out: must name a file to write, not a named pipe: {str(fifo)!r}" in err
    assert "Traceback" not in err and sorted(tmp_path.iterdir()) == [fifo]


@pytest.mark.parametrize("argv, message", [
    (["--builds", "icebreaker:digits", "--mhz", "500"],
     "--mhz 500: the icebreaker's PLL makes 16..275 MHz"),
    (["--builds", "ulx3s-85f:digits", "icebreaker:digits", "--mhz", "300"],
     "--mhz 300: the icebreaker's PLL makes 16..275 MHz"),
    (["--mhz", "nan"], "argument --mhz: must be a finite number > 0, not 'nan'"),
    (["--mhz", "0"], "argument --mhz: must be a finite number > 0, not '0'"),
    (["--time-limit", "nan"], "argument --time-limit: must be a finite number > 0, not 'nan'"),
    (["--time-limit", "0"], "argument --time-limit: must be a finite number > 0, not '0'"),
])
def test_board_builds_refuses_a_clock_or_time_limit_it_cannot_build_with(argv, message, tmp_path, monkeypatch,
                                                                         capsys):
    """A --mhz outside a board's PLL range went to every build: each child failed, and the benchmark then stopped
    with pll_plan's ValueError traceback while recording the first; --time-limit nan was taken as a limit. Both are
    refused before any build."""
    bench = load_benchmark("board_builds")

    def no_build(*args, **kwargs):
        raise AssertionError("a build was started")

    monkeypatch.setattr(bench, "run_build", no_build)
    with pytest.raises(SystemExit) as exit_:
        bench.main([*argv, "--build-root", str(tmp_path), "--json-out", str(tmp_path / "out.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, argv, message", [
    ("link_throughput", ["--round-trip-ms", "-1"], "argument --round-trip-ms: must be a finite number >= 0, not '-1'"),
    ("link_throughput", ["--round-trip-ms", "nan"],
     "argument --round-trip-ms: must be a finite number >= 0, not 'nan'"),
    ("outer_widths_hw", ["--runs", "runs", "--time-limit", "0"],
     "argument --time-limit: must be a finite number > 0, not '0'"),
    ("outer_widths_hw", ["--runs", "runs", "--time-limit", "nan"],
     "argument --time-limit: must be a finite number > 0, not 'nan'"),
    ("array_utilization", ["--seed", "-1"], "argument --seed: must be an integer >= 0, not '-1'"),
    ("core_cells", ["--multiply-cols", "-1"], "argument --multiply-cols: must be an integer in 0..256, not '-1'"),
])
def test_unchecked_numbers_are_refused_when_parsed(name, argv, message, capsys):
    """link_throughput.py's --round-trip-ms -1 or nan gave a column of negative or nan images/s after the whole
    simulation; outer_widths_hw.py's --time-limit 0 recorded every build as timed out; array_utilization.py's
    --seed -1 and core_cells.py's --multiply-cols -1 stopped with numpy's or NetworkParams' traceback."""
    with pytest.raises(SystemExit) as exit_:
        load_benchmark(name).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name, argv, message", [
    ("accuracy", ["--lr", "nan"], "argument --lr: must be a number > 0 and <= 1000, not 'nan'"),
    ("accuracy", ["--lr", "-1"], "argument --lr: must be a number > 0 and <= 1000, not '-1'"),
    ("accuracy", ["--q-lr", "-1"], "argument --q-lr: must be a number in [0, 1000], not '-1'"),
    ("accuracy", ["--seeds", "0", "-1"], "argument --seeds: must be an integer in 0..4294967295, not '-1'"),
    ("accuracy", ["--bits", "9"], "argument --bits: must be an integer in 2..8, not '9'"),
    ("ablations", ["--seeds", "4294967296"], "argument --seeds: must be an integer in 0..4294967295, not '4294967296'"),
    ("cifar10_resnet20", ["--seed", "-1"], "argument --seed: must be an integer in 0..4294967295, not '-1'"),
])
def test_training_options_are_checked_as_lcq_train_checks_them(name, argv, message, tmp_path, capsys):
    """accuracy.py --lr nan, --q-lr -1, --seeds -1 or --bits 9 (ablations.py --seeds 2**32) stopped with the
    trainer's ValueError traceback; cifar10_resnet20.py --seed -1 started every run into lcq train's refusal.
    Each is refused when parsed, with lcq train's own range."""
    with pytest.raises(SystemExit) as exit_:
        load_benchmark(name).main([*argv, "--out", str(tmp_path / "runs"), "--json-out", str(tmp_path / "r.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_board_builds_keeps_the_earlier_records_of_its_results_file(tmp_path, monkeypatch, capsys):
    """board_builds.py rewrote its results file with this run's builds alone: one build run with the default
    --json-out (as the README's ResNet-20 row was) dropped the 178 earlier records behind the README's other rows.
    This run's records now follow the file's earlier ones; a file that is not a list of records is refused,
    untouched."""
    import json
    bench = load_benchmark("board_builds")
    monkeypatch.setattr(bench, "run_build", lambda job, *args: {"spec": job["spec"], "board": job["board"],
                                                                "model": "m.lcq", "status": "does not fit",
                                                                "build_seconds": 0.0})
    monkeypatch.setattr(bench, "environment", lambda: {})
    out = tmp_path / "out.json"
    out.write_text(json.dumps([{"spec": "earlier:one", "status": "ok"}]))
    assert bench.main(["--builds", "icebreaker:digits", "--build-root", str(tmp_path), "--json-out", str(out)]) == 0
    assert [r["spec"] for r in json.loads(out.read_text())] == ["earlier:one", "icebreaker:digits"]
    out.write_text('{"not": "a list"}')
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--builds", "icebreaker:digits", "--build-root", str(tmp_path), "--json-out", str(out)])
    assert exit_.value.code == 2
    assert f"{out}: not a list of build records" in capsys.readouterr().err
    assert out.read_text() == '{"not": "a list"}'
