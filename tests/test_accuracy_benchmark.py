"""benchmarks/accuracy.py on the digits set: seeds side by side, mean ± std, one FP run shared by recipes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "accuracy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(capsys, *argv) -> subprocess.CompletedProcess:
    """The script's main(argv) in this process (with ``--jobs N``, its trainings in N worker processes), as the
    command's exit status and output."""
    code = load_script().main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def test_two_seeds_two_recipes_share_the_fp_run(tmp_path, capsys):
    out, tuned, paper = tmp_path / "runs", tmp_path / "tuned.json", tmp_path / "paper.json"
    common = ["--dataset", "digits", "--fp-epochs", "1", "--epochs", "1", "--bits", "3", "--seeds", "0", "1",
              "--methods", "lcq", "--out", str(out)]
    proc = run(capsys, *common, "--jobs", "2", "--json-out", str(tuned))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(tuned.read_text())
    rows = {r["run"]: r for r in data["rows"]}
    assert list(rows) == ["fp", "lcq-w3a3"]
    for name in ("lcq-w3a3",):
        r = rows[name]
        assert r["seeds"] == [0, 1] and len(r["test_top1"]) == 2 and r["clip_init"] == "mse"     # the default
        assert abs(r["test_top1_mean"] - sum(r["test_top1"]) / 2) < 1e-9 and r["test_top1_std"] is not None
        for seed, top1 in zip(r["seeds"], r["test_top1"]):
            m = json.loads((out / "clip-mse-bn-50" / f"seed-{seed}" / name / "metrics.json").read_text())
            assert m["test_top1"] == top1 and m["config"]["seed"] == seed
    assert "| lcq | 3/3 |" in proc.stdout and " ± " in proc.stdout and data["settings"]["seeds"] == [0, 1]
    proc = run(capsys, *common, "--clip-init", "fixed", "--bn-batches", "0", "--json-out", str(paper))   # the paper's
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("done earlier, skipped") == 1                 # the FP run, reused
    rows = {r["run"]: r for r in json.loads(paper.read_text())["rows"]}
    assert rows["lcq-w3a3"]["clip_init"] == "fixed" and rows["lcq-w3a3"]["test_top1_before_bn"] is None


def test_a_table_filled_in_width_by_width_keeps_the_earlier_rows(tmp_path, capsys):
    out, table = tmp_path / "runs", tmp_path / "table.json"
    common = ["--dataset", "digits", "--fp-epochs", "1", "--epochs", "1", "--seeds", "0", "--methods", "lcq",
              "--out", str(out), "--json-out", str(table)]
    assert run(capsys, *common, "--bits", "3").returncode == 0
    first = {r["run"]: r for r in json.loads(table.read_text())["rows"]}
    for name in ("metrics.json", "checkpoint.pt"):     # the W3/A3 run gone, as in a fresh checkout
        (out / "clip-mse-bn-50" / "seed-0" / "lcq-w3a3" / name).unlink()
    proc = run(capsys, *common, "--bits", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"kept lcq-w3a3 from {table}" in proc.stdout
    data = json.loads(table.read_text())
    rows = {r["run"]: r for r in data["rows"]}
    assert list(rows) == ["fp", "lcq-w2a2", "lcq-w3a3"]
    assert rows["lcq-w3a3"] == first["lcq-w3a3"] and data["settings"]["bits"] == [2, 3]
    assert rows["lcq-w2a2"]["torch_threads"] == [json.loads((out / "clip-mse-bn-50" / "seed-0" / "lcq-w2a2" /
                                                             "metrics.json").read_text())["environment"]["torch_threads"]]
    assert " --bits 2 3 " in data["command"] and "| lcq | 3/3 |" in proc.stdout
    accuracy = load_script()                                           # another recipe, another FP: replaced
    rows, settings = data["rows"][:2], {**data["settings"], "bn_batches": 0}
    assert accuracy.carried_rows(str(table), settings, rows, "cpu") == ([], f"replacing {table}: its recipe "
                                                                            "differs (bn_batches)")
    fp = [{**rows[0], "test_top1": [v + 1 for v in rows[0]["test_top1"]]}]
    kept, note = accuracy.carried_rows(str(table), data["settings"], fp, "cpu")
    assert kept == [] and note.startswith(f"replacing {table}: its FP run scored ")
    assert accuracy.carried_rows(str(table), data["settings"], rows, "cuda")[1] == (f"replacing {table}: its "
                                                                                    "recipe differs (device)")


def test_one_recipe_spelled_two_ways_keeps_the_earlier_rows(tmp_path):
    """A data directory given relative and then absolute, and the default device and then ``--device`` naming
    what it resolved to, are the same recipe: the rows of the earlier file are kept."""
    accuracy = load_script()
    settings = {"dataset": "mnist", "data_dir": "data/mnist", "device": None, "clip_init": "mse", "bits": [2],
                "seeds": [0], "fp_epochs": 1, "epochs": 1}
    rows = [{"run": "fp", "method": "fp", "wbits": None, "abits": None, "seeds": [0], "epochs": 1,
             "test_top1": [98.21], "best_test_top1": [98.21], "test_top1_mean": 98.21, "test_top1_std": None,
             "best_test_top1_mean": 98.21, "gap_to_fp": 0.0},
            {"run": "lcq-w2a2", "method": "lcq", "wbits": 2, "abits": 2, "seeds": [0], "epochs": 1,
             "test_top1": [97.9], "best_test_top1": [97.9], "test_top1_mean": 97.9, "test_top1_std": None,
             "best_test_top1_mean": 97.9, "gap_to_fp": 97.9 - 98.21}]
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"settings": settings, "rows": rows, "device": "cpu", "cpu_threads": 2,
                                 "options": {"jobs": 2}}))
    ours = {**settings, "data_dir": str(Path("data/mnist").resolve()), "device": "cpu", "bits": [3]}
    kept, note = accuracy.carried_rows(str(table), ours, rows[:1], "cpu")
    assert [r["run"] for r in kept] == ["lcq-w2a2"] and note == f"kept lcq-w2a2 from {table} (same recipe and FP run)"


def test_the_results_file_records_the_git_state(tmp_path, monkeypatch):
    """The accuracy table depends on the trainer's code: its results file named the torch version, threads and
    device, but not the commit nor the files modified under lcq_train/."""
    accuracy = load_script()
    metrics = {"test_top1": 90.0, "best_test_top1": 91.0, "epochs": [{"test_top1": 90.0}]}
    monkeypatch.setattr(accuracy, "train_or_resume", lambda cfg: (metrics, 0.0, "faked"))
    table = tmp_path / "accuracy.json"
    assert accuracy.main(["--fp-epochs", "1", "--epochs", "1", "--bits", "2", "--seeds", "0", "--out",
                          str(tmp_path / "runs"), "--json-out", str(table)]) == 0
    git = json.loads(table.read_text())["git"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert git["commit"] == head and isinstance(git["modified"], list)


def _fill_in(accuracy, tmp_path, monkeypatch):
    """A results file of --bits 2 and the arguments of a later --bits 3 call, trainings faked."""
    metrics = {"test_top1": 90.0, "best_test_top1": 91.0, "epochs": [{"test_top1": 90.0}]}
    trained = []
    monkeypatch.setattr(accuracy, "train_or_resume", lambda cfg: trained.append(cfg) or (metrics, 0.0, "faked"))
    table = tmp_path / "accuracy.json"
    argv = ["--fp-epochs", "1", "--epochs", "1", "--seeds", "0", "1", "--out", str(tmp_path / "runs"),
            "--json-out", str(table)]
    assert accuracy.main([*argv, "--bits", "2"]) == 0
    trained.clear()
    return table, [*argv, "--bits", "3"], trained


def _edit_row(run, **fields):
    def edit(data):
        row = next(r for r in data["rows"] if r["run"] == run)
        row.update(fields)
        for key in [k for k, v in fields.items() if v is None]:
            del row[key]
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda data: "{" + json.dumps(data)[:100], "it is not JSON"),
    (lambda data: data.pop("rows"), "its 'rows' is not a list of rows"),
    (_edit_row("lcq-w2a2", test_top1_mean=None), "row 'lcq-w2a2' has test_top1_mean None, not the mean of"),
    (_edit_row("lcq-w2a2", test_top1_mean=12.0), "row 'lcq-w2a2' has test_top1_mean 12.0, not the mean of"),
    (_edit_row("lcq-w2a2", method="foo"), "row 'lcq-w2a2' has method 'foo'"),
    (_edit_row("lcq-w2a2", test_top1=["90"] * 2), "row 'lcq-w2a2' has test_top1 ['90', '90'], not a percentage"),
    (_edit_row("lcq-w2a2", seeds=[5, 6]), "row 'lcq-w2a2' is of seeds [5, 6], not [0, 1]"),
    (_edit_row("lcq-w2a2", epochs=7), "row 'lcq-w2a2' has 7 epochs, not 1"),
])
def test_a_damaged_results_file_is_named_before_training(tmp_path, monkeypatch, capsys, edit, message):
    """The rows of an earlier results file were kept unchecked: a row of other seeds or epochs, or whose mean was
    edited, entered the table as it stood, one missing a field stopped it with a KeyError after training, and a
    file cut short was replaced (its rows of other widths dropped); now each is an error naming the file and the
    fix, before any training."""
    accuracy = load_script()
    table, argv, trained = _fill_in(accuracy, tmp_path, monkeypatch)
    data = json.loads(table.read_text())
    edited = edit(data)
    text = edited if isinstance(edited, str) else json.dumps(data)
    table.write_text(text)
    assert accuracy.main(argv) == 2 and trained == []
    err = capsys.readouterr().err
    assert err.startswith(f"accuracy.py: error: {table}: ") and message in err and "--json-out" in err
    assert table.read_text() == text


def test_a_table_filled_in_method_by_method_records_a_command_giving_every_row(tmp_path, monkeypatch, capsys):
    """A --methods lcq call that kept the uniform rows of an earlier --methods uniform one recorded and printed the
    command `... --methods lcq ...`, which reproduces only part of its table: the command now names every method of
    the table, as it names every width."""
    accuracy = load_script()
    metrics = {"test_top1": 90.0, "best_test_top1": 91.0, "epochs": [{"test_top1": 90.0}]}
    monkeypatch.setattr(accuracy, "train_or_resume", lambda cfg: (metrics, 0.0, "faked"))
    table = tmp_path / "accuracy.json"
    argv = ["--fp-epochs", "1", "--epochs", "1", "--bits", "2", "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--json-out", str(table)]
    assert accuracy.main([*argv, "--methods", "uniform"]) == 0
    assert accuracy.main([*argv, "--methods", "lcq"]) == 0
    data = json.loads(table.read_text())
    assert [r["run"] for r in data["rows"]] == ["fp", "uniform-w2a2", "lcq-w2a2"]
    assert " --methods uniform lcq " in data["command"] and data["options"]["methods"] == ["uniform", "lcq"]
    assert " --methods uniform lcq " in capsys.readouterr().out.split("Command:")[-1]


def test_the_help_names_the_results_file_each_recipe_writes(capsys):
    """`--help` gave the results file's default as accuracy-<dataset>-<model>.json, the paper recipe's; the
    default recipe writes accuracy-<dataset>-<model>-clipmse-bn50.json. The help now names the suffix, and the
    defaults are the files it names."""
    accuracy = load_script()
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--help"])
    assert "accuracy-<dataset>-<model>[-clip<C>-bn<N>].json" in "".join(capsys.readouterr().out.split())
    assert accuracy.parse_args(["--dataset", "digits"]).json_out.endswith("/accuracy-digits-cnn-clipmse-bn50.json")
    paper = accuracy.parse_args(["--dataset", "digits", "--clip-init", "fixed", "--bn-batches", "0"])
    assert paper.json_out.endswith("/accuracy-digits-cnn.json")


def test_two_invocations_filling_one_results_file_side_by_side_keep_each_others_rows(tmp_path, monkeypatch):
    """``--bits 2`` and ``--bits 3`` on one --json-out at once: each read the file after its trainings and wrote it
    a moment later, so one that wrote between the other's read and write had its rows dropped. The read, merge and
    write are now one step under the file's lock: the second waits for the first and keeps its rows."""
    import threading

    accuracy = load_script()
    fields = sys.modules["result_fields"]
    monkeypatch.setattr(accuracy, "train_or_resume", lambda cfg: (
        {"test_top1": 60.0 if cfg.plan.method == "fp" else 40.0 + cfg.plan.wbits, "best_test_top1": 70.0,
         "epochs": [{}]}, 0.0, "faked"))
    table = tmp_path / "accuracy.json"
    argv = ["--fp-epochs", "1", "--epochs", "1", "--seeds", "0", "--methods", "lcq", "--out", str(tmp_path / "runs"),
            "--json-out", str(table)]
    other, waiting = [], threading.Event()
    monkeypatch.setattr(fields, "waiting_for", lambda *_: waiting.set(), raising=False)
    read = accuracy.carried_rows

    def read_then_other(*a, **k):
        kept = read(*a, **k)
        if not other:          # --bits 2 read the file: --bits 3 runs whole now, or waits for its lock
            thread = threading.Thread(target=lambda: other.append(accuracy.main([*argv, "--bits", "3"])))
            other.append(thread)
            thread.start()
            for _ in range(600):
                if waiting.wait(0.1) or not thread.is_alive():
                    break
            else:
                raise AssertionError("--bits 3 neither finished nor waited for the lock in 60 s")
        return kept

    monkeypatch.setattr(accuracy, "carried_rows", read_then_other)
    assert accuracy.main([*argv, "--bits", "2"]) == 0
    other[0].join(60)
    assert not other[0].is_alive() and other[1:] == [0]
    assert [r["run"] for r in json.loads(table.read_text())["rows"]] == ["fp", "lcq-w2a2", "lcq-w3a3"]


def test_a_results_file_held_past_the_deadline_is_an_error_naming_its_holder(tmp_path, monkeypatch, capsys):
    """The wait for another invocation's write of the results file has a deadline: past it, an error naming the
    file and the pid that holds it, the file left as it was."""
    accuracy = load_script()
    fields = sys.modules["result_fields"]
    monkeypatch.setattr(fields, "RESULTS_WAIT_S", 0.3)
    monkeypatch.setattr(accuracy, "train_or_resume", lambda cfg: (
        {"test_top1": 60.0, "best_test_top1": 70.0, "epochs": [{}]}, 0.0, "faked"))
    table = tmp_path / "accuracy.json"
    with fields.results_lock(str(table)):           # (as another invocation holds it: a flock of another open file)
        assert accuracy.main(["--fp-epochs", "1", "--epochs", "1", "--seeds", "0", "--bits", "2", "--out",
                              str(tmp_path / "runs"), "--json-out", str(table)]) == 2
    err = capsys.readouterr().err
    assert f"waiting for pid {os.getpid()} to finish writing {table}" in err
    assert f"accuracy.py: error: results file {table} is held by pid {os.getpid()} for over 0.3 s" in err
    assert not table.exists() and (tmp_path / ".accuracy.json.lock").is_file()
