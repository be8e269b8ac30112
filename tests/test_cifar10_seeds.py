"""benchmarks/cifar10_seeds.py: per-seed results of cifar10_resnet20.py combined into mean ± std over seeds."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cifar10_seeds.py"
SCHEDULE = {"name": "short", "fp_epochs": 40, "epochs": 15, "bits": [3], "methods": ["uniform", "lcq"],
            "batch_size": 128, "clip_init": "mse", "bn_batches": 50, "text": "short: FP 40 epochs, ..."}


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location("cifar10_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(tmp_path, seed, top1, lcq_status="trained", **schedule):
    rows = [{"run": "fp", "method": "fp", "wbits": None, "abits": None, "status": "trained", "test_top1": top1[0],
             "paper_lcq_top1": 93.4, "paper_apot_top1": None},
            {"run": "uniform-w3a3-clipmse-bn50", "method": "uniform", "wbits": 3, "abits": 3,
             "status": "done earlier, reused", "test_top1": top1[1], "paper_lcq_top1": None, "paper_apot_top1": 92.2},
            {"run": "lcq-w3a3-clipmse-bn50", "method": "lcq", "wbits": 3, "abits": 3, "status": lcq_status,
             "test_top1": top1[2], "paper_lcq_top1": 92.8, "paper_apot_top1": 92.2}]
    path = tmp_path / f"seed{seed}.json"
    path.write_text(json.dumps({"benchmark": "cifar10-resnet20", "complete": lcq_status == "trained",
                                "seeds": {"seed": seed}, "schedule": {**SCHEDULE, **schedule},
                                "data": {"train_images": 50000, "test_images": 10000}, "machine": {"device": "cuda"},
                                "rows": rows}))
    return path


def test_three_seeds_give_mean_and_std(seeds, tmp_path, capsys):
    files = [result(tmp_path, 0, (90.0, 88.0, 89.0)), result(tmp_path, 1, (91.0, 88.5, 89.5)),
             result(tmp_path, 2, (92.0, 89.0, 90.0), lcq_status="partial: 6 of 15 epochs")]
    out = tmp_path / "combined.json"
    assert seeds.main([*map(str, files), "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| fp | 32/32 | 91.00 ± 1.00 | 93.40 | - |" in text
    assert "| uniform | 3/3 | 88.50 ± 0.50 | - | 92.20 |" in text
    assert "| lcq | 3/3 | 89.25 ± 0.35 (n=2) | 92.80 | 92.20 |" in text     # seed 2's LCQ run unfinished
    data = json.loads(out.read_text())
    assert data["seeds"] == [0, 1, 2] and data["benchmark"] == "cifar10-resnet20-seeds"
    lcq = {r["run"]: r for r in data["runs"]}["lcq-w3a3-clipmse-bn50"]
    assert lcq["seeds"] == [0, 1] and lcq["not_finished"][0]["status"] == "partial: 6 of 15 epochs"


@pytest.mark.parametrize("second, message", [
    (lambda t: result(t, 0, (1, 2, 3)), "seed 0 is given twice"),
    (lambda t: result(t, 1, (1, 2, 3), epochs=30), "its schedule's 'epochs' is 30, .* 15: only runs of one schedule"),
    (lambda t: result(t, 1, (1, 2, 3), clip_init="fixed"), "its schedule's 'clip_init' is 'fixed'"),
    (lambda t: result(t, 1, (1, 2, 300)), "a row is not a run of cifar10_resnet20.py"),
    (lambda t: (t / "x.json").write_text('{"benchmark": "accuracy"}') and t / "x.json", "not a result file"),
    (lambda t: (t / "y.json").write_text("{") and t / "y.json", "not a readable result file"),
])
def test_files_that_do_not_average_are_named(seeds, tmp_path, capsys, second, message):
    files = [result(tmp_path, 0, (90.0, 88.0, 89.0)), second(tmp_path)]
    assert seeds.main([*map(str, files), "--json-out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifar10_seeds.py: error: ") and re.search(message, err)
    assert not (tmp_path / "c.json").exists()


def _edit_rows(path, edit):
    data = json.loads(path.read_text())
    edit(data["rows"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.append(dict(rows[2])), "run 'lcq-w3a3-clipmse-bn50' is in it twice"),
    (lambda rows: rows[2].update(paper_lcq_top1="92.8"), "a row is not a run of cifar10_resnet20.py"),
    (lambda rows: rows[2].pop("method"), "a row is not a run of cifar10_resnet20.py"),
    (lambda rows: rows[2].update(wbits="3"), "a row is not a run of cifar10_resnet20.py"),
])
def test_a_hand_edited_row_is_named_not_averaged(seeds, tmp_path, capsys, edit, message):
    """A run listed twice in one file entered the mean twice (one seed counted as two, std 0 from one run); a row
    whose paper number or method was edited stopped the table with a traceback or printed 'None'."""
    files = [result(tmp_path, 0, (90.0, 88.0, 89.0)), _edit_rows(result(tmp_path, 1, (91.0, 88.5, 89.5)), edit)]
    assert seeds.main([*map(str, files), "--json-out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cifar10_seeds.py: error: {files[1]}: ") and message in err


def test_a_run_of_other_widths_under_the_same_name_is_refused(seeds, tmp_path, capsys):
    files = [result(tmp_path, 0, (90.0, 88.0, 89.0)),
             _edit_rows(result(tmp_path, 1, (91.0, 88.5, 89.5)), lambda rows: rows[2].update(wbits=4, abits=4))]
    assert seeds.main([*map(str, files), "--json-out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert f"{files[1]}: its run 'lcq-w3a3-clipmse-bn50' is lcq W4/A4, {files[0]}'s lcq W3/A3" in err


def test_a_pattern_that_matched_no_file_says_so(seeds, tmp_path, capsys):
    """`cifar10_seeds.py benchmarks/results/cifar10-resnet20-seed*.json` (the README's command) before any GPU
    session's result is committed: the shell passes the pattern as it is, and the error was '[Errno 2] No such
    file or directory' on a name with a '*'. It now says that no file matches and where the files come from."""
    pattern = tmp_path / "cifar10-resnet20-seed*.json"
    assert seeds.main([str(pattern), "--json-out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert f"{pattern}: no file matches this pattern" in err and "gpu_session.sh" in err
    assert not (tmp_path / "out.json").exists()
