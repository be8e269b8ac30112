"""benchmarks/array_utilization.py: what each --mode keeps of the results file."""

import json

import pytest
from helpers import load_benchmark


def test_layer_mode_keeps_the_network_results_of_the_file(tmp_path, monkeypatch):
    pytest.importorskip("amaranth")
    import sim.runner

    bench = load_benchmark("array_utilization")
    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)
    monkeypatch.setattr(bench, "measure", lambda simulator, rows, cols, *rest: {
        "rows": rows, "cols": cols, "layers": [], "total": {"mismatches": 0}})
    monkeypatch.setattr(bench, "table", lambda result: "")
    out = tmp_path / "array_utilization.json"
    network = {"argv": ["--mode", "network"], "mismatches": 0, "results": [{"rows": 8, "cols": 8}]}
    out.write_text(json.dumps({"benchmark": "array_utilization", "results": [], "network": network}))

    assert bench.main(["--mode", "layer", "--arrays", "2x2", "--json-out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert [(r["rows"], r["cols"]) for r in document["results"]] == [(2, 2)]
    assert document["network"] == network


@pytest.mark.parametrize("mode", ["network", "layer"])
@pytest.mark.parametrize("text, message", [
    ('{"benchmark": "array_utilization", "resu', "is not JSON"),
    ('[1, 2]', "is not a results file of array_utilization.py"),
    ('{"benchmark": "pe_cost", "results": []}', "is not a results file of array_utilization.py"),
    ('{"benchmark": "array_utilization", "network": [1]}', "its \"network\" is not an object"),
])
def test_a_results_file_it_cannot_keep_is_refused_before_simulating(tmp_path, monkeypatch, capsys, mode, text,
                                                                    message):
    """--mode network (and layer) read the results file whose other half they keep only after simulating (12-25
    minutes): a file cut short stopped it there with json's traceback, its results lost, and another benchmark's
    file got a "network" key. The file is now read first and refused with one line, left as it was."""
    pytest.importorskip("amaranth")
    import sim.runner

    bench = load_benchmark("array_utilization")
    monkeypatch.setattr(sim.runner, "unavailable_reason", lambda simulator: None)

    def simulated(*args):
        raise AssertionError("simulated before reading the results file")

    monkeypatch.setattr(bench, "measure", simulated)
    monkeypatch.setattr(bench, "measure_network", simulated)
    out = tmp_path / "array_utilization.json"
    out.write_text(text)
    assert bench.main(["--mode", mode, "--arrays", "2x2", "--json-out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"array_utilization.py: error: {out}" in err and message in err and "Traceback" not in err
    assert out.read_text() == text
