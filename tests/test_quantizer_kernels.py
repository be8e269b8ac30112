"""benchmarks/quantizer_speed.py --part kernels: the operations a quantizer call and a ResNet-20 step queue on
an accelerator, counted on the meta device; and its quantizer timing off the CPU (on the meta device)."""

import json
from types import SimpleNamespace

import torch
from helpers import load_benchmark


def test_views_and_empty_allocations_are_not_kernels():
    bench = load_benchmark("quantizer_speed")
    x = torch.empty(4, 6, device="meta")
    with bench.KernelCount() as views:
        x.view(-1), x[1:], x.detach(), x.t(), torch.empty_like(x)
    with bench.KernelCount() as kernels:
        (x + 1).sum(), torch.zeros_like(x)
    assert (views.count, kernels.count) == (0, 3)


def test_kernel_counts_of_every_resnet20_tensor_and_step(tmp_path):
    bench = load_benchmark("quantizer_speed")
    out = tmp_path / "kernels.json"
    assert bench.main(["--part", "kernels", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    calls, steps = result["kernels"]["calls"], result["kernels"]["resnet20_step"]
    assert {(r["tensor"], r["bits"]) for r in calls} == {(t, b) for t in ("weights", "activations") for b in (2, 3, 4)}
    for r in calls:     # a lone LCQ call builds its tables, more than uniform's work; with its tables built
        lcq, batched, uniform = (sum(r[k].values()) for k in ("lcq", "lcq_batched", "uniform"))   # apart, less
        assert 0 < batched < uniform < lcq
        assert (r["ratio"], r["batched_ratio"]) == (lcq / uniform, batched / uniform)
    batches = result["kernels"]["resnet20_batches"]
    assert [(b["tensor"], b["quantizers"]) for b in batches] == [("weights", 20), ("activations", 18)]
    # a step builds each kind's tables once (lcq_train.batched_tables): 38 builds of ~50 kernels would make
    # it ~2.1x a uniform step, not under it
    assert steps["fp"] < steps["lcq-w3a3"] < steps["uniform-w3a3"]
    assert result["summary"]["kernels"]["step_lcq_vs_uniform"] == steps["lcq-w3a3"] / steps["uniform-w3a3"]


def test_off_the_cpu_the_quantizer_timing_has_calls_with_their_tables_in_a_batch(monkeypatch):
    """On the meta device (no values, no time worth the name) the rows and the table are complete; here on
    one weight and one activation shape at 3 bits."""
    bench = load_benchmark("quantizer_speed")
    monkeypatch.setattr(bench, "BITS", (3,))
    shapes = [("weights", (16, 16, 3, 3)), ("activations", (128, 64, 8, 8))]
    monkeypatch.setattr(bench, "resnet20_tensors", lambda: shapes)
    args = SimpleNamespace(reps=1, warmup=0)
    rows = bench.bench_quantizers(args, torch.device("meta"))
    assert {(r["tensor"], r["batch"]) for r in rows} == {("weights", 20), ("activations", 18)}
    assert all(r["batched_ratio"] == r["lcq_per_call_in_batch_ms"] / r["uniform_per_call_of_n_ms"] for r in rows)
    table = bench.quantizer_table(rows)
    assert "per call of n, tables in a batch" in table and "20 weights, 18 activations" in table
    assert bench.summary({"quantizer": rows, "training": [], "kernels": None, "precision": []})["quantizer"][
        "max_batched_ratio"] == max(r["batched_ratio"] for r in rows)


def test_an_interrupt_keeps_the_parts_before_it(tmp_path, monkeypatch):
    """gpu_session.sh gives the benchmark what time is left and then sends SIGINT."""
    bench = load_benchmark("quantizer_speed")
    monkeypatch.setattr(bench, "bench_training", lambda args, device: [])
    ran = []

    def interrupted(args, device):
        ran.append("quantizer")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_quantizers", interrupted)
    monkeypatch.setattr(bench, "bench_precision", lambda args, device: ran.append("precision") or [])
    out = tmp_path / "speed.json"
    assert bench.main(["--device", "cpu", "--json-out", str(out)]) == 130
    result = json.loads(out.read_text())
    assert ran == ["quantizer"] and result["interrupted_in"] == "quantizer"
    assert result["training"] == [] and result["precision"] == [] and result["kernels"] is None


def test_an_interrupt_before_any_part_finished_leaves_the_results_file_as_it_was(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the first part (the training steps) replaced the results file (by default the committed
    benchmarks/results/quantizer_speed.json) with one that measured nothing; the file is now left as it was."""
    bench = load_benchmark("quantizer_speed")

    def interrupted(args, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_training", interrupted)
    out = tmp_path / "speed.json"
    out.write_text('{"earlier": "results"}\n')
    assert bench.main(["--device", "cpu", "--json-out", str(out)]) == 130
    assert out.read_text() == '{"earlier": "results"}\n' and [p.name for p in tmp_path.iterdir()] == ["speed.json"]
    assert f"nothing measured: {out} left as it was" in capsys.readouterr().out


def test_bad_device_and_threads_are_refused_with_a_message(tmp_path, capsys):
    """--device bogus, --device cuda on a machine without CUDA and --threads -2 crashed with torch's traceback
    (RuntimeError, AssertionError) instead of an error naming the option; --threads 0 was ignored."""
    import pytest

    bench = load_benchmark("quantizer_speed")
    out = tmp_path / "speed.json"
    cuda = [] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda: 'cuda' is not available")]
    for argv, said in [(["--device", "bogus"], "--device bogus: 'bogus' is not a device torch knows"), *cuda,
                       (["--threads", "-2"], "--threads must be >= 1"), (["--threads", "0"], "--threads must be >= 1")]:
        with pytest.raises(SystemExit) as e:
            bench.main([*argv, "--part", "kernels", "--json-out", str(out)])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not out.exists()


def test_one_part_goes_to_its_own_results_file_by_default(tmp_path, monkeypatch):
    """`quantizer_speed.py --part kernels` (as benchmarks/README.md names it) wrote quantizer_speed.json by default,
    replacing the committed timings with empty lists; one part alone now defaults to quantizer_<part>.json."""
    bench = load_benchmark("quantizer_speed")
    calls = [{"ratio": 1.0, "batched_ratio": 1.0}]
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "bench_kernels", lambda: {"calls": calls, "step_lcq_vs_uniform": 0.8})
    monkeypatch.setattr(bench, "kernel_table", lambda kernels: "")
    assert bench.main(["--part", "kernels", "--device", "cpu"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["quantizer_kernels.json"]
    assert json.loads((tmp_path / "quantizer_kernels.json").read_text())["kernels"]["calls"] == calls
