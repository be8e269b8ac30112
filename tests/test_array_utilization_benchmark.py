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
