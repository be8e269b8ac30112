"""The paper's ablation options: ``--weight-norm standardize`` and separate outer widths ``--outer-bits BW/BA``.

Each trains (a step or one short epoch on digits), compiles and agrees with PyTorch bit for bit; the
LUT bytes of the report follow ``2^-3 (b'_w + b'_a) m``; the command line refuses bad widths with the
value and the fix; the plan survives a checkpoint (and old plans read as LWN); one layer-engine
simulation of a 6/4 model in Verilator.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compiler.agreement import compare
from compiler.lower import compile_checkpoint, compile_model
from compiler.report import format_table, report
from hw.engine_params import EngineParams
from lcq.cli import main
from lcq_train.checkpoint import load_checkpoint
from lcq_train.data import load_dataset
from lcq_train.models import build_model
from lcq_train.plan import OUTER_BITS_OPTION, QuantPlan, apply_plan, outer_widths, parse_layer_bits
from lcq_train.quant import level_scale
from lcq_train.train import TrainConfig

SHAPE = (1, 8, 8)
EDGES = {"conv0": (8, 8, 8, 8), "fc": (8, 8, 8, 8)}     # the digits CNN's 8-bit first and last layers


@pytest.fixture(autouse=True)
def _torch_threads():
    """ablations.main sets torch's threads (``--threads``: 2 on 2 cores): put back for the tests after this one,
    which under pytest-xdist share the worker's one thread per core."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained_step(plan: QuantPlan, digits, steps: int = 2):
    """The digits CNN under ``plan`` after a few SGD steps on training images (train mode: BN statistics move)."""
    torch.manual_seed(0)
    model = apply_plan(build_model("cnn", SHAPE, 10), plan)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(steps):
        x = digits.train_x[i * 64:(i + 1) * 64].float() / 255.0
        loss = F.cross_entropy(model(x), digits.train_y[i * 64:(i + 1) * 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _agreement(model, digits, n: int = 64) -> dict:
    compiled = compile_model(model, SHAPE)
    result = compare(compiled, model, digits.test_x[:n].numpy(), digits.test_y[:n].numpy()).to_dict()
    return compiled, result


def test_standardize_is_not_rescaled_and_compiles_bit_exactly(digits):
    plan = QuantPlan("lcq", 3, 3, weight_norm="standardize")
    model = _trained_step(plan, digits)
    wq, w = model.conv1.wq, model.conv1.weight.detach()
    assert wq.weight_norm == "standardize" and model.conv0.wq.weight_norm == "lwn"     # edge layers keep LWN
    mu, sigma = w.mean(), w.std()
    assert torch.equal(wq(w), wq.quantize((w - mu) / sigma))                          # no sigma after Q
    assert wq.step(w) == pytest.approx(wq.alpha.item() / level_scale(8, True))       # so no sigma in the step
    lwn = apply_plan(build_model("cnn", SHAPE, 10), QuantPlan("lcq", 3, 3)).conv1.wq
    lwn.load_state_dict(wq.state_dict())
    assert torch.allclose(lwn(w), sigma * wq(w))
    compiled, result = _agreement(model, digits)
    conv1 = next(n for n in compiled.convs if n.name == "conv1")
    assert conv1.scale == pytest.approx(wq.step(w) * model.act1.step())
    assert result["agreement"] == 1.0 and result["disagreements"] == 0
    assert all(c["mismatched"] == 0 for c in result["code_mismatches"].values())


def test_outer_widths_6_4_compile_report_and_agree(digits):
    plan = QuantPlan("lcq", 3, 3, outer_bits=(6, 4), layer_bits=EDGES)
    model = _trained_step(plan, digits)
    assert outer_widths(model, plan) == {"conv0": (8, 8), "conv1": (6, 4), "conv2": (6, 4), "fc": (8, 8)}
    compiled, result = _agreement(model, digits)
    assert result["agreement"] == 1.0 and all(c["mismatched"] == 0 for c in result["code_mismatches"].values())
    rep = report(compiled)
    rows = {r["name"]: r for r in rep["layers"]}
    for name in ("conv1", "conv2"):
        node = next(n for n in compiled.convs if n.name == name)
        assert (node.outer_wbits, node.outer_abits) == (6, 4)
        assert node.w_levels[-1] == 31 and node.a_levels[-1] == 15 and node.lut().max() <= 31 * 15
        r = rows[name]
        assert (r["lut_entries"], r["lut_entry_bits"]) == (21, 10)
        assert r["lut_bytes"] == math.ceil(2**-3 * (6 + 4) * 21) == 27
        assert r["lut_file_bytes"] == 21 * 2                 # the model file holds each entry as a uint16
        assert r["lut_bits_needed"] <= 9
    assert rows["conv0"]["lut_bytes"] == rows["fc"]["lut_bytes"] == 0            # 8-bit edges multiply
    assert rows["conv0"]["lut_file_bytes"] == rows["fc"]["lut_file_bytes"] == 0
    assert rep["lut_bytes"] == 54 and rep["total_bytes"] == rep["total_bytes_without_luts"] + 54
    assert rep["lut_file_bytes"] == 84
    table = format_table(rep)
    assert "| conv1 | conv | 3/3 | 6/4 | lut |" in table
    # the LUT bytes column says it is the paper's formula, and the bytes the file holds stand beside it
    assert "| LUT entries | LUT bytes (paper: m (b'_w + b'_a) / 8) | LUT bytes in the file |" in table
    assert "| 21 | 27 | 42 |" in table and "LUTs 54 bytes by the paper's formula, 84 in the model file" in table
    engine = EngineParams.for_model(compiled, 2, 2)          # 31 x 15 products: 9 bits, not 15
    assert engine.product_bits == 9 and engine.table_bits == 3 * 9 + 1          # + the multiply flag bit


def test_outer_widths_8_8_report_unchanged(digits):
    rep = report(compile_model(_trained_step(QuantPlan("lcq", 3, 3), digits, steps=1), SHAPE))
    assert [(r["lut_entries"], r["lut_bytes"], r["lut_file_bytes"]) for r in rep["layers"]
            if r["mac"] == "lut"] == [(21, 42, 42)] * 2


@pytest.mark.parametrize("text, value", [("8", 8), ("0", None), ("6/4", (6, 4)), ("6/6", 6), (" 4/8 ", (4, 8))])
def test_outer_bits_parses(text, value):
    assert OUTER_BITS_OPTION.parse(text) == value


@pytest.mark.parametrize("argv, message", [
    (["--outer-bits", "6/"], "argument --outer-bits: must be 0 or an integer in 2..16 (b'_w = b'_a), or BW/BA"),
    (["--outer-bits", "6/4/2"], "not '6/4/2'"),
    (["--outer-bits", "3/17"], "e.g. 8 or 6/4, not '3/17'"),
    (["--outer-bits", "1/8"], "not '1/8'"),
    (["--outer-bits", "x"], "not 'x'"),
])
def test_cli_refuses_malformed_outer_bits(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *argv, "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--wbits", "4", "--outer-bits", "3/9"],
     "--outer-bits 3/9: b'_w = 3 is narrower than --wbits 4; each outer width must be at least its quantizer's bits "
     "and at most 16 (e.g. --outer-bits 4/9)"),
    (["--abits", "4", "--outer-bits", "8/3"], "b'_a = 3 is narrower than --abits 4"),
    (["--outer-bits", "6/4"], "--outer-bits 6/4 is narrower than the widest quantizer (8-bit weights, 8-bit "
     "activations, the 8-bit input image included); widen it (--outer-bits 8/8"),
    (["--outer-bits", "6/4", "--layer-bits", "fc=8/8:8/8"], "--outer-bits 6/4 is narrower than the widest quantizer "
     "(8-bit weights, 8-bit activations: layer 'conv0', the 8-bit input image included); widen it (--outer-bits 8/8, "
     "at most 16, or 0 for none), or give that layer outer widths of its own (--layer-bits conv0=8/8:8/8)"),
    (["--outer-bits", "6/4", "--layer-bits", "conv0=8/8:8/4", "--layer-bits", "fc=8/8:8/8"],
     "layer 'conv0': outer widths 8/4 are narrower than its bits 8/8"),
    (["--outer-bits", "6/4", "--layer-bits", "conv0=3/3:4/4", "--layer-bits", "fc=8/8:8/8"],
     "layer 'conv0' reads the 8-bit input image, so its b'_a must be at least 8, not 4 (e.g. conv0=3/3:4/8)"),
    (["--layer-bits", "conv1=3/3:6"], "must look like NAME=W/A or NAME=W/A:BW/BA (outer widths)"),
])
def test_cli_refuses_widths_below_the_bits_with_the_fix(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_plan_round_trip_through_a_checkpoint_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--outer-bits", "6/4", "--layer-bits", "conv0=8/8:8/8", "--layer-bits", "fc=8/8:8/8",
            "--weight-norm", "standardize", "--epochs", "1", "--batch-size", "256", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    plan = QuantPlan.from_dict(state["plan"])
    assert plan == QuantPlan("lcq", 3, 3, outer_bits=(6, 4), layer_bits=EDGES, weight_norm="standardize")
    assert state["plan"]["outer_bits"] == [6, 4] and state["plan"]["layer_bits"]["conv0"] == [8, 8, 8, 8]
    assert QuantPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert TrainConfig.from_dict(state["config"]).plan == plan
    # the compiled model follows the recorded plan
    compiled = compile_checkpoint(out / "checkpoint.pt")
    assert [(n.outer_wbits, n.outer_abits) for n in compiled.convs] == [(8, 8), (6, 4), (6, 4), (8, 8)]
    # --resume with the options left out continues the run as it was started
    assert main(["train", "--resume", "--epochs", "2", "--no-progress", "--out", str(out)]) == 0
    again = load_checkpoint(out / "checkpoint.pt")
    assert again["epoch"] == 2 and QuantPlan.from_dict(again["plan"]) == plan
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "3", "--weight-norm", "lwn", "--no-progress", "--out", str(out)]) == 2
    assert "--weight-norm 'standardize' there, 'lwn' asked" in capsys.readouterr().err


def test_old_plans_read_as_lwn_and_file_values_are_checked():
    old = {"method": "lcq", "wbits": 3, "abits": 3, "outer_bits": 8, "K": 16, "alpha_w": 3.0, "alpha_a": 8.0,
           "edge_bits": 8, "layer_bits": {}}                   # a plan written before weight_norm existed
    plan = QuantPlan.from_dict(old)
    assert plan.weight_norm == "lwn" and plan == QuantPlan("lcq", 3, 3)
    assert QuantPlan.from_dict({**old, "outer_bits": [8, 8]}) == plan        # an equal pair is one width
    for bad, match in [({"weight_norm": "apot"}, "--weight-norm must be one of"),
                       ({"outer_bits": [6]}, "--outer-bits must be"),
                       ({"outer_bits": [6, 4, 2]}, "--outer-bits must be"),
                       ({"outer_bits": "6/4"}, "--outer-bits must be"), ({"outer_bits": 0}, "--outer-bits must be"),
                       ({"outer_bits": [2, 8]}, "b'_w = 2 is narrower than --wbits 3"),
                       ({"layer_bits": {"conv1": [3, 3, 6]}}, "bits must be (wbits, abits)"),
                       ({"layer_bits": {"conv1": [3, 3, 2, 4]}}, "outer widths 2/4 are narrower than its bits 3/3")]:
        with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
            QuantPlan.from_dict({**old, **bad})
    assert parse_layer_bits(["a=3/3:6/4", "b=4/4"]) == {"a": (3, 3, 6, 4), "b": (4, 4)}


def test_config_file_outer_bits(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"outer_bits": [6, 4], "layer_bits": {"conv0": [8, 8, 8, 8], "fc": [8, 8, 8, 8]},
                                  "weight_norm": "standardize"}))
    from lcq_train.cli import _train_parser, apply_config_file, train_config
    import argparse

    parser = _train_parser(argparse.ArgumentParser().add_subparsers())
    cfg = train_config(apply_config_file(parser, ["--config", str(config), "--out", str(tmp_path / "o")]))
    assert cfg.plan == QuantPlan("lcq", 3, 3, outer_bits=(6, 4), layer_bits=EDGES, weight_norm="standardize")
    config.write_text(json.dumps({"outer_bits": [6, 1]}))
    with pytest.raises(SystemExit):
        apply_config_file(parser, ["--config", str(config)])
    assert "key 'outer_bits' must be 0 or an integer in 2..16" in capsys.readouterr().err


def test_ablation_benchmark_plans_each_run_once(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ablations.py"
    spec = importlib.util.spec_from_file_location("ablations", path)
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    args = ablations.parse_args(["--dataset", "digits", "--seeds", "0", "--out", str(tmp_path)])
    runs = ablations.plans(args, ("conv0", "fc"))
    assert len(runs) == 18                    # 10 K runs, 4 more norm runs, 4 more outer-width runs
    assert runs["w3a3-o8-4"] == QuantPlan("lcq", 3, 3, outer_bits=(8, 4), layer_bits=EDGES)
    assert ablations.label_of(runs, ablations.outer_plan(8, 8, ("conv0", "fc"))) == "w3a3-K16"
    assert ablations.label_of(runs, QuantPlan("lcq", 2, 2, weight_norm="lwn")) == "w2a2-K16"
    three = ablations.parse_args(["--bits", "3"])              # one width of tables 1 and 2; table 3 as ever
    assert sorted(ablations.plans(three, ("conv0", "fc"))) == sorted(
        [f"w3a3-K{K}" for K in (1, 2, 4, 8, 16)] + ["w3a3-standardize"] + [
            f"w3a3-o{ow}-{oa}" for ow, oa in ((6, 6), (4, 4), (8, 4), (4, 8))])
    assert "--tables K norm outer --bits 3 " in ablations.reproduce_command(three)
    with pytest.raises(SystemExit):
        ablations.parse_args(["--tables", "K", "norm", "--bits", "4"])
    assert "--bits 4 leaves table K no width: it is at 2, 3; add one of them" in capsys.readouterr().err
    assert ablations.main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none")]) == 2
    assert "fashion-mnist is absent" in capsys.readouterr().err
    short = ablations.parse_args(["--dataset", "cifar10", "--model", "resnet20", "--schedule", "short"])
    assert (short.fp_epochs, short.epochs) == (40, 15)          # the CIFAR-10 benchmark's GPU schedule
    with pytest.raises(SystemExit):
        ablations.parse_args(["--dataset", "mnist", "--schedule", "short"])
    assert "--schedule short is for cifar10 only; for mnist use --schedule quick or full" in capsys.readouterr().err


def test_outer_width_builds_find_the_ablation_runs_or_say_how_to_train_them(tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("outer_widths_hw", bench / "outer_widths_hw.py")
    hw_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hw_sweep)
    with pytest.raises(SystemExit):
        hw_sweep.main(["--runs", str(tmp_path), "--builds", "icebreaker@2by2"])
    assert "--builds 'icebreaker@2by2': expected BOARD[@RxC]" in capsys.readouterr().err
    run = tmp_path / "seed0" / "w3a3-o6-6"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    plan = hw_sweep.outer_plan(6, 6, ("conv0", "fc"))
    (run / "metrics.json").write_text(json.dumps({"config": {"plan": plan.to_dict(), "epochs": 1}, "epochs": []}))
    with pytest.raises(FileNotFoundError, match="no finished run with outer widths"):    # stopped before its epoch
        hw_sweep.find_run(tmp_path / "seed0", plan)
    row = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_top1": 50.0, "test_top1": 50.0, "lr": 0.1,
           "time_s": 1.0}
    (run / "metrics.json").write_text(json.dumps({"config": {"plan": plan.to_dict(), "epochs": 1}, "epochs": [row],
                                                  "test_top1": 50.0, "best_test_top1": 50.0}))
    assert hw_sweep.find_run(tmp_path / "seed0", plan) == run / "checkpoint.pt"
    assert hw_sweep.main(["--runs", str(tmp_path)]) == 2          # the 8/8 run is missing
    err = capsys.readouterr().err
    assert "no finished run with outer widths 8 in " in err and "train them first: python benchmarks" in err


def test_outer_width_builds_resume_an_interrupted_sweep(tmp_path, monkeypatch, capsys):
    """outer_widths_hw.py run again built every width anew (two boards: ~45 min): now a build recorded in its
    results file (written after each) is reused where it routed from the same model file, and the others built."""
    from helpers import load_benchmark

    from lcq_train.train import train

    hw_sweep = load_benchmark("outer_widths_hw")
    runs, table = tmp_path / "runs", tmp_path / "outer_widths_hw.json"
    for ow, oa in hw_sweep.OUTERS:         # finished runs as ablations.py leaves them (its tiniest: one epoch)
        train(TrainConfig(model="cnn", dataset="digits", plan=hw_sweep.outer_plan(ow, oa, ("conv0", "fc")), epochs=1,
                          batch_size=256, bn_batches=0, clip_init="fixed", out=str(runs / "seed0" / f"o{ow}-{oa}"),
                          progress=False))
    built, stop_at, status = [], [None], {}

    def build(job, mhz, time_limit, build_root, mode):          # run_build's record, at once
        built.append((job["model_path"].stem, job["board"]))
        if len(built) == stop_at[0]:
            raise KeyboardInterrupt
        return {"board": job["board"], "asked_rows": job["rows"], "asked_cols": job["cols"], "mode": mode,
                "engine": {"rows": 2, "cols": 2}, "resources": {}, "fmax_mhz": 20.0, "build_seconds": 1.0,
                "status": status.get(built[-1], "ok")}

    monkeypatch.setattr(hw_sweep, "run_build", build)
    argv = ["--runs", str(runs), "--build-root", str(tmp_path / "build"), "--json-out", str(table)]
    stop_at[0], status[("digits-w3a3-o6-6", "icebreaker")] = 4, "timeout"
    assert hw_sweep.main(argv) == 130 and "interrupted; re-run" in capsys.readouterr().err
    assert [(r["outer"], r["board"], r["status"]) for r in json.loads(table.read_text())] == [
        ("8/8", "icebreaker", "ok"), ("8/8", "ulx3s-85f", "ok"), ("6/6", "icebreaker", "timeout")]
    built.clear()
    stop_at[0] = None
    status.clear()
    assert hw_sweep.main(argv) == 0                 # the two routed builds reused; the timed-out one and the rest
    assert built == [(f"digits-w3a3-o{ow}-{oa}", board) for ow, oa in hw_sweep.OUTERS
                     for board in ("icebreaker", "ulx3s-85f")][2:]
    assert "read 3 recorded builds" in capsys.readouterr().out
    records = json.loads(table.read_text())
    assert len(records) == 10 and all(r["status"] == "ok" for r in records)
    records[3]["model_sha256"] = "0" * 64           # 6/6 on the ULX3S built from another model file: built anew
    records.append({**records[0], "board": "orangecrab-25f"})     # a board not asked for now: kept
    table.write_text(json.dumps(records))
    built.clear()
    assert hw_sweep.main(argv) == 0 and built == [("digits-w3a3-o6-6", "ulx3s-85f")]
    assert [r["board"] for r in json.loads(table.read_text())][-1] == "orangecrab-25f"


@pytest.mark.sim
def test_6_4_model_layers_in_verilator_bit_exact(tmp_path, capsys, small_cnn):
    from sim.runner import unavailable_reason

    reason = unavailable_reason("verilator")
    if reason:
        pytest.skip(reason)
    from compiler import format as model_format

    plan = QuantPlan("lcq", 3, 3, outer_bits=(6, 4), layer_bits={"conv0": (8, 8, 8, 8), "fc": (8, 8, 8, 8)})
    model = small_cnn(SHAPE, plan, seed=3)
    compiled = compile_model(model, SHAPE)
    assert [(n.outer_wbits, n.outer_abits) for n in compiled.convs][1] == (6, 4)
    path = tmp_path / "w3a3-o6-4.lcq"
    model_format.save(compiled, path)
    capsys.readouterr()
    rc = main(["sim", str(path), "--mode", "layers", "--simulator", "verilator", "--random", "--images", "1",
               "--rows", "2", "--cols", "2", "--build-dir", str(tmp_path / "build"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["mismatches"] == 0
    assert [layer["index"] for layer in out["layers"]][:2] == [0, 1]       # layer 0 (8/8) and a 6/4 LUT layer
    assert all(layer["mismatches"] == 0 for layer in out["layers"])
    assert np.sum([layer["outputs"] for layer in out["layers"]]) > 0


def test_ablation_tables_fill_in_over_sessions_from_the_recorded_runs(tmp_path, capsys):
    """Each session is one call of the script's main() (its runs trained by its own pool of worker processes);
    table 2 at W3/A3 alone (``--bits 3``) with the paper's recipe keeps each run to a few seconds."""
    import shutil

    from helpers import load_benchmark

    module = load_benchmark("ablations")
    table, out = tmp_path / "ablations.json", tmp_path / "runs"

    def ablations(*argv):
        rc = module.main(["--dataset", "digits", "--tables", "norm", "--bits", "3", "--fp-epochs", "1", "--epochs",
                          "1", "--clip-init", "fixed", "--bn-batches", "0", "--eval-images", "0", "--threads", "1",
                          "--out", str(out), "--json-out", str(table), *argv])
        return rc, *capsys.readouterr()

    rc, stdout, stderr = ablations("--seeds", "0", "--jobs", "2")
    assert rc == 0, stdout[-2000:] + stderr[-2000:]
    assert "[3/3] seed 0" in stdout                                      # the FP run and 2 norm runs at W3/A3
    first = json.loads(table.read_text())
    assert sorted(first["results"]["0"]) == sorted(["fp", *first["runs"]]) and first["settings"]["threads_per_run"] == 1
    shutil.rmtree(out)                                                   # a fresh checkout: only the results file
    rc, stdout, stderr = ablations("--seeds", "0", "1", "--jobs", "2")
    assert rc == 0, stdout[-2000:] + stderr[-2000:]
    assert f"read 3 recorded runs from {table}" in stdout and "[3/3] seed 1" in stdout
    assert not [line for line in stdout.splitlines() if line.startswith("[") and " seed 0 " in line]
    second = json.loads(table.read_text())
    assert second["results"]["0"] == first["results"]["0"]
    assert len(second["tables"]["norm"]["w3a3"]["lwn"]["values"]) == 2
    del second["results"]["1"]["w3a3-standardize"]                       # one run left, and its seed's FP recorded
    second["results"]["1"]["fp"]["test_top1"] += 1.0                     # ... as another FP model scored
    table.write_text(json.dumps(second))
    shutil.rmtree(out)
    rc, stdout, stderr = ablations("--seeds", "0", "1", "--jobs", "2")
    assert rc == 2 and "seed 1's FP run scored" in stderr and "started from another FP" in stderr
    # other settings: replaced
    assert module.recorded_results(str(table), {**second["settings"], "threads_per_run": 2}, {}) == (
        {}, {}, f"replacing {table}: its settings differ (threads_per_run)")


def test_ablations_keep_the_recorded_runs_of_other_seeds_and_tables(tmp_path):
    """A later invocation of ablations.py with fewer --seeds or other --tables than its results file holds kept
    only its own: the runs of the other seeds and tables were dropped from the file without a word."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ablations.py"
    spec = importlib.util.spec_from_file_location("ablations", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = tmp_path / "ablations.json"
    argv = ["--dataset", "digits", "--tables", "norm", "--fp-epochs", "1", "--epochs", "1", "--eval-images", "0",
            "--out", str(tmp_path / "runs"), "--json-out", str(table)]
    args = module.parse_args([*argv, "--seeds", "0", "1"])
    runs = module.plans(args, ("conv0", "fc"))
    other = module.QuantPlan("lcq", 2, 2, K=1)                   # a run of table 1, recorded by an earlier call
    row = {"test_top1": 50.0, "best_test_top1": 50.0, "epochs": 1, "out": "somewhere"}
    results = {str(seed): {label: dict(row) for label in ["fp", *runs]} for seed in (0, 1)}
    results["0"]["w2a2-K1"] = dict(row)
    table.write_text(json.dumps({"settings": module.settings(args), "results": results,
                                 "runs": {"w2a2-K1": other.to_dict(),
                                          **{label: plan.to_dict() for label, plan in runs.items()}}}))
    assert module.main([*argv, "--seeds", "0"]) == 0            # every run of seed 0 recorded: nothing trains
    saved = json.loads(table.read_text())
    assert saved["results"]["1"] == results["1"]
    assert saved["results"]["0"] == results["0"] and saved["runs"]["w2a2-K1"] == other.to_dict()
    assert saved["tables"]["norm"]["w3a3"]["lwn"]["n"] == 1      # the table is of the seeds asked for


def test_ablation_results_record_the_git_state(tmp_path, monkeypatch):
    """The results file named the versions, device and threads but not the commit; a run recorded in one session
    and kept by later ones (at other commits) now carries the commit it was trained at."""
    import subprocess
    from pathlib import Path

    from helpers import load_benchmark

    ablations = load_benchmark("ablations")
    metrics = {"test_top1": 50.0, "best_test_top1": 50.0, "epochs": [{}]}
    monkeypatch.setattr(ablations, "train_or_resume", lambda cfg: (metrics, 0.0, "faked"))
    table = tmp_path / "ablations.json"
    assert ablations.main(["--dataset", "digits", "--tables", "norm", "--seeds", "0", "--fp-epochs", "1", "--epochs",
                           "1", "--out", str(tmp_path / "runs"), "--json-out", str(table)]) == 0
    saved = json.loads(table.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True).stdout.strip()
    assert saved["git"]["commit"] == head and isinstance(saved["git"]["modified"], list)
    assert {row["git_commit"] for row in saved["results"]["0"].values()} == {head}


@pytest.mark.parametrize("edit, message", [
    (lambda text: text[:200], "not JSON"),
    (lambda text: json.dumps({**json.loads(text), "results": []}), "'results' is not an object of seeds"),
    (lambda text: text.replace('"1": {', '"01": {'), "seed '01' is not a seed"),
    (lambda text: text.replace('"test_top1": 50.0', '"test_top1": "50"', 1), "seed 0's run 'fp' has test_top1 '50'"),
    (lambda text: text.replace('"test_top1": 50.0, ', '', 1), "seed 0's run 'fp' has test_top1 None"),
    (lambda text: text.replace('"epochs": 1, "out"', '"epochs": 7, "out"', 1), "seed 0's run 'fp' has 7 epochs, not 1"),
    (lambda text: text.replace('"best_test_top1": 50.0', '"best_test_top1": 500.0', 1), "best_test_top1 500.0"),
])
def test_a_damaged_results_file_is_named_not_replaced(tmp_path, monkeypatch, capsys, edit, message):
    """A results file cut short or edited by hand was replaced (its recorded runs, maybe hours of a GPU, dropped and
    trained again) or stopped the tables with a traceback; now it is an error naming the file and the fix."""
    from helpers import load_benchmark

    ablations = load_benchmark("ablations")
    table = tmp_path / "ablations.json"
    argv = ["--dataset", "digits", "--tables", "norm", "--fp-epochs", "1", "--epochs", "1", "--eval-images", "0",
            "--seeds", "0", "1", "--out", str(tmp_path / "runs"), "--json-out", str(table)]
    args = ablations.parse_args(argv)
    runs = ablations.plans(args, ("conv0", "fc"))
    row = {"test_top1": 50.0, "best_test_top1": 50.0, "epochs": 1, "out": "somewhere"}
    text = json.dumps({"settings": ablations.settings(args), "runs": {k: p.to_dict() for k, p in runs.items()},
                       "results": {str(s): {label: dict(row) for label in ["fp", *runs]} for s in (0, 1)}})
    table.write_text(edit(text))
    trained = []
    monkeypatch.setattr(ablations, "train_or_resume", lambda cfg: trained.append(cfg) or (
        {"test_top1": 50.0, "best_test_top1": 50.0, "epochs": [{}]}, 0.0, "faked"))
    assert ablations.main(argv) == 2 and trained == []
    err = capsys.readouterr().err
    assert err.startswith(f"ablations.py: error: {table}: ") and message in err and "--json-out" in err
    assert table.read_text() == edit(text)


def test_a_results_file_of_an_older_version_is_replaced(tmp_path):
    """The committed ablations-digits.json predates the settings a later invocation compares: replaced, as before."""
    from helpers import load_benchmark

    ablations = load_benchmark("ablations")
    table = tmp_path / "ablations.json"
    table.write_text(json.dumps({"benchmark": "ablations", "results": {"0": {}}, "runs": {}}))
    assert ablations.recorded_results(str(table), {}, {}) == (
        {}, {}, f"replacing {table}: written by an older ablations.py, with no settings to extend")


@pytest.mark.parametrize("text, message", [
    ('[{"outer": "8/8", "board": "icebreaker", "status": "ok"', "it is not JSON"),
    ('{"outer": "8/8"}', "not a list of this script's records"),
    ("null", "it holds null"),
])
def test_outer_width_builds_refuse_a_damaged_results_file(tmp_path, text, message):
    """A results file of outer_widths_hw.py cut short or edited was replaced at the first build: its routed builds
    (~45 min on 2 cores) dropped; now it is an error naming the file and the fix."""
    from helpers import load_benchmark

    hw_sweep = load_benchmark("outer_widths_hw")
    table = tmp_path / "outer_widths_hw.json"
    table.write_text(text)
    with pytest.raises(ValueError, match=f"^{table}: {message}.*--json-out"):
        hw_sweep.recorded_builds(str(table))


def test_outer_width_builds_reuse_only_a_complete_record_of_this_model():
    """A recorded build was reused on its status and model hash alone: one missing its Fmax or build time stopped
    the sweep with a KeyError, and one of other product or table widths (another engine) entered the table."""
    from helpers import load_benchmark

    hw_sweep = load_benchmark("outer_widths_hw")
    record = {"outer": "6/6", "board": "icebreaker", "status": "ok", "model_sha256": "ab", "product_bits": 13,
              "table_bits": 40, "lut_bytes": 100, "fmax_mhz": 20.5, "build_seconds": 60.0, "resources": {},
              "engine": {"rows": 2, "cols": 2}}
    now = {"model_sha256": "ab", "product_bits": 13, "table_bits": 40, "lut_bytes": 100}
    assert hw_sweep.reusable(record, now)
    for change in ({"status": "timeout"}, {"model_sha256": "cd"}, {"product_bits": 15}, {"fmax_mhz": None},
                   {"build_seconds": "60"}, {"resources": []}, {"engine": 5}):
        assert not hw_sweep.reusable({**record, **change}, now), change


def test_two_invocations_filling_one_results_file_side_by_side_keep_each_others_runs(tmp_path, monkeypatch):
    """``--seeds 0`` and ``--seeds 1`` started side by side on one --json-out: each read the file once at its start
    and rewrote it from what it held after every run, so the one that wrote last dropped the other's runs. Every
    save now re-reads the file under its lock and keeps the runs that this process did not train."""
    from helpers import load_benchmark

    ablations = load_benchmark("ablations")
    table = tmp_path / "ablations.json"
    argv = ["--dataset", "digits", "--tables", "norm", "--fp-epochs", "1", "--epochs", "1", "--eval-images", "0",
            "--out", str(tmp_path / "runs"), "--json-out", str(table)]
    other = []

    def faked(cfg):
        if not other:          # the first run of --seeds 0, read the file already: --seeds 1 runs whole meanwhile
            other.append("started")
            other.append(ablations.main([*argv, "--seeds", "1"]))
        return {"test_top1": 50.0 + cfg.seed, "best_test_top1": 50.0 + cfg.seed, "epochs": [{}]}, 0.0, "faked"

    monkeypatch.setattr(ablations, "train_or_resume", faked)
    assert ablations.main([*argv, "--seeds", "0"]) == 0 and other == ["started", 0]
    saved = json.loads(table.read_text())
    labels = sorted(["fp", *saved["runs"]])
    assert sorted(saved["results"]) == ["0", "1"]
    assert sorted(saved["results"]["0"]) == labels and sorted(saved["results"]["1"]) == labels
    assert {row["test_top1"] for row in saved["results"]["1"].values()} == {51.0}
