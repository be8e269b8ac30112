"""A run's history (metrics.json, the checkpoint's copy) is read only as ``lcq train`` writes it."""

import json
import math

import pytest

from lcq_train.metrics import MetricsError, metrics_problem, read_metrics


def history(epochs=2, **changes):
    rows = [{"epoch": i, "train_loss": 1.0 / i, "train_top1": 80.0 + i, "test_loss": 1.2 / i, "test_top1": 78.0 + i,
             "lr": 0.1 / i, "time_s": 2.5} for i in range(1, epochs + 1)]
    if rows:
        rows[-1]["test_top1_before_bn"] = 77.5
        rows[-1]["settled_weights"] = 2
    metrics = {"config": {"model": "cnn"}, "layers": {"conv0": [8, 8]}, "epochs": rows,
               "start_code_shares": {"act1": [0.25, 0.75]},
               **({"test_top1": rows[-1]["test_top1"], "best_test_top1": max(r["test_top1"] for r in rows)}
                  if rows else {})}
    for path, value in changes.items():       # "epochs.1.lr" -> metrics["epochs"][1]["lr"]
        *parents, key = path.split(".")
        target = metrics
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[int(key) if isinstance(target, list) else key] = value
    return metrics


def test_what_the_trainer_writes_is_a_history():
    assert metrics_problem(history()) is None and metrics_problem(history(), epochs=2) is None
    assert metrics_problem(history(0)) is None                       # no epoch finished
    diverged = history(**{"epochs.1.train_loss": math.nan, "epochs.1.test_loss": math.inf})
    assert metrics_problem(diverged) is None                         # a diverged run writes NaN losses


@pytest.mark.parametrize("metrics, problem", [
    ([], "is list, not a JSON object"),
    ({"epochs": []}, "has no 'config' object"),
    ({"config": {}, "epochs": {"1": {}}}, "has no 'epochs' list"),
    ({"config": {"plan": "lcq"}, "epochs": []}, "has a 'config.plan' that is str, not an object"),
    (history(**{"epochs.1": [1]}), "epoch row 2 is list, not an object"),
    (history(**{"epochs.1.epoch": 3}), "epoch row 2 has epoch 3, not 2"),
    (history(**{"epochs.0.epoch": True}), "epoch row 1 has epoch True, not 1"),
    (history(**{"epochs.0.train_top1": 100.5}), "epoch 1's 'train_top1' is 100.5, not a percentage"),
    (history(**{"epochs.0.test_loss": "0.3"}), "epoch 1's 'test_loss' is '0.3', not a number"),
    (history(**{"epochs.1.lr": -0.1}), "epoch 2's 'lr' is -0.1, not a finite number >= 0"),
    (history(**{"epochs.1.time_s": math.inf}), "epoch 2's 'time_s' is inf, not a finite number >= 0"),
    (history(**{"epochs.1.test_top1_before_bn": None}), "epoch 2's 'test_top1_before_bn' is None, not a percentage"),
    (history(**{"epochs.1.settled_weights": -1}), "epoch 2's 'settled_weights' is -1, not an integer >= 0"),
    (history(**{"epochs.1.settled_weights": 1.0}), "epoch 2's 'settled_weights' is 1.0, not an integer >= 0"),
    (history(start_code_shares=[0.5, 0.5]), "has a 'start_code_shares' that is not a map of quantizer names to "
                                            "lists of shares in 0..1"),
    (history(start_code_shares={"act1": [0.5, 1.5]}), "has a 'start_code_shares' that is not a map of quantizer "
                                                       "names to lists of shares in 0..1"),
    (history(start_code_shares={"act1": []}), "has a 'start_code_shares' that is not a map of quantizer names to "
                                              "lists of shares in 0..1"),
    (history(test_top1=79.0), "has test_top1 79.0, not its last epoch's 80.0"),
    (history(best_test_top1=81.0), "has best_test_top1 81.0, not its epochs' best 80.0"),
])
def test_anything_else_is_named(metrics, problem):
    assert metrics_problem(metrics) == problem


def test_a_checkpoint_history_has_as_many_rows_as_epochs():
    assert metrics_problem(history(), epochs=3) == "has 2 epoch rows, not 3"


def test_read_metrics_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(history()))
    assert read_metrics(path) == history()
    path.write_text(json.dumps(history(**{"epochs.0.test_top1": -1})))
    with pytest.raises(MetricsError, match=r"metrics.json epoch 1's 'test_top1' is -1, not a percentage; it is not a "
                                           r"metrics.json that lcq train wrote, and no checkpoint.pt beside it holds "
                                           r"the history: restore it, or delete the run and train it again$"):
        read_metrics(path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(MetricsError, match=r"metrics.json that lcq train wrote: restore it or delete it \(the run's "
                                           r"checkpoint.pt holds the same history\)$"):
        read_metrics(path)
    path.write_bytes(b'{"epochs": [')
    with pytest.raises(MetricsError, match="metrics.json: it is not JSON"):
        read_metrics(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(MetricsError, match="metrics.json: it is not JSON"):
        read_metrics(path)
    path.write_text('{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MetricsError, match="metrics.json: its arrays and objects nest too deeply"):
        read_metrics(path)
    path.write_text('{"config": {}, "epochs": [], "x": ' + "9" * 5000 + "}")
    with pytest.raises(MetricsError, match="metrics.json: it holds an integer of more than"):
        read_metrics(path)
