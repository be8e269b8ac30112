"""The checkpoint format: no code in a checkpoint, corruption detected, every field checked, old files refused."""

import hashlib
import json
import pickle
import random
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import lcq_train.checkpoint as ckpt
from lcq.cli import main
from lcq_train.checkpoint import (CheckpointError, capture_rng, load_checkpoint, restore_rank_rng, restore_rng,
                                  save_checkpoint, upgrade_checkpoint)
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, train

from helpers import RunsCodeWhenUnpickled

FRAME = struct.Struct("<8sIQ32s")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch LCQ W3/A3 run of the digits CNN, and the model compiled from it."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="cnn", dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=1, batch_size=64,
                      out=str(out / "lcq"), progress=False))
    assert main(["compile", str(out / "lcq" / "checkpoint.pt"), "-o", str(out / "model.lcq")]) == 0
    return out / "lcq" / "checkpoint.pt", out / "model.lcq"


def _frame(header: dict, data: bytes, version: int = 2) -> bytes:
    """A checkpoint file of ``header`` and ``data`` with a correct digest (the layout the module documents)."""
    raw = json.dumps(header).encode()
    return FRAME.pack(b"LCQCKPT\n", version, len(raw), hashlib.sha256(raw + data).digest()) + raw + data


def _split(path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    _, _, n, _ = FRAME.unpack_from(blob)
    return json.loads(blob[FRAME.size:FRAME.size + n]), blob[FRAME.size + n:]


def _tensors(state) -> dict:
    """Every tensor of a checkpoint dict by its path."""
    out = {}

    def walk(obj, where):
        if isinstance(obj, torch.Tensor):
            out[where] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}/{i}")
    walk(state, "")
    return out


def test_round_trip_keeps_every_tensor_and_value(run, tmp_path):
    path, _ = run
    state = load_checkpoint(path)
    assert len(state["sha256"]) == 64 and path.read_bytes()[:8] == b"LCQCKPT\n"
    # Unusual tensors survive too: other dtypes, 0-d, empty, non-contiguous.
    state["model"].update({"x.bf16": torch.randn(3, dtype=torch.bfloat16), "x.bool": torch.tensor([True, False]),
                           "x.scalar": torch.tensor(2.5, dtype=torch.float64), "x.empty": torch.zeros(0, 3),
                           "x.strided": torch.arange(12, dtype=torch.int16).view(3, 4).t()})
    digest = save_checkpoint(state, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    assert again["sha256"] == digest != state["sha256"]
    a, b = _tensors({k: v for k, v in state.items() if k != "sha256"}), _tensors(again)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    assert again["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert set(again["optimizer"]["state"]) == set(state["optimizer"]["state"])     # integer keys stay integers
    assert again["config"] == state["config"] and again["metrics"] == state["metrics"]
    restore_rng(again["rng"])


def test_loading_never_unpickles(run, monkeypatch):
    path, _ = run

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load reached pickle")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert load_checkpoint(path)["epoch"] == 1


def test_a_crafted_pickle_is_refused_everywhere_and_runs_nothing(run, tmp_path, capsys):
    path, model = run
    # The payload is live: unpickling it does write its marker.
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(RunsCodeWhenUnpickled(live)))
    assert live.read_text() == "code ran"

    marker = tmp_path / "marker"
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = evil_dir / "checkpoint.pt"
    torch.save({"format": "lcq-checkpoint", "version": 1, "model": RunsCodeWhenUnpickled(marker)}, evil)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": RunsCodeWhenUnpickled(marker)}, protocol=2))
    for file, refusal in ((evil, "it names __builtin__.exec, which an lcq checkpoint never holds"),
                          (raw, "it is not a zip archive, the format torch.save writes")):
        with pytest.raises(CheckpointError, match="pickle file.*can run any code.*upgrade"):
            load_checkpoint(file)
        with pytest.raises(CheckpointError, match=f"{file} cannot be converted: {refusal}"):
            upgrade_checkpoint(file, tmp_path / "converted.pt")
        assert not (tmp_path / "converted.pt").exists()
    capsys.readouterr()
    commands = [["compile", str(evil), "-o", str(tmp_path / "m.lcq")],
                ["train", "--resume", "--out", str(evil_dir), "--no-progress"],
                ["eval", str(model), "--checkpoint", str(evil)]]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "does not load pickle files" in err and str(evil) in err, (argv, err)
    # --init reads a torch.save state dict too (tests/test_init_weights.py), with the unpickler that runs nothing
    assert main(["train", "--init", str(evil), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{evil} cannot be read as a state dict: it names __builtin__.exec, which a state dict never holds; a " \
           "pickle that does could run any code, so it is not loaded" in err, err
    assert not marker.exists()
    assert not (tmp_path / "m.lcq").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_random_bit_flips_are_detected(run, tmp_path):
    path, _ = run
    blob = path.read_bytes()
    reference = _tensors(load_checkpoint(path))
    rng = random.Random(1234)
    offsets = [rng.randrange(len(blob)) for _ in range(50)] + list(range(0, FRAME.size, 3))  # and the frame
    damaged = tmp_path / "checkpoint.pt"
    for offset in offsets:
        flipped = bytearray(blob)
        flipped[offset] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(flipped))
        try:
            state = load_checkpoint(damaged)
        except CheckpointError as e:
            assert str(damaged) in str(e)
            continue
        tensors = _tensors(state)      # loaded: then provably harmless, every tensor identical
        assert tensors.keys() == reference.keys()
        for key in tensors:
            torch.testing.assert_close(tensors[key], reference[key], atol=0, rtol=0)
    for length in (0, 5, 40, FRAME.size, FRAME.size + 10, len(blob) // 2, len(blob) - 1):
        damaged.write_bytes(blob[:length])
        with pytest.raises(CheckpointError, match="truncated|empty"):
            load_checkpoint(damaged)


def test_a_damaged_run_does_not_resume(run, tmp_path, capsys):
    path, _ = run
    out = tmp_path / "run"
    out.mkdir()
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    (out / "checkpoint.pt").write_bytes(bytes(blob))
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "is damaged" in captured.err and "SHA-256" in captured.err and str(out / "checkpoint.pt") in captured.err
    assert "top-1" not in captured.out



def test_a_generator_state_torch_refuses_is_named_with_its_file(run, tmp_path, capsys):
    """A torch RNG state of the right form that torch's generator rejects (an all-zero Mersenne Twister):
    --resume stops with an error naming the checkpoint."""
    path, _ = run
    state = load_checkpoint(path)
    state["rng"]["torch"] = torch.zeros_like(state["rng"]["torch"])
    out = tmp_path / "run"
    save_checkpoint(state, out / "checkpoint.pt")
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint.pt'}: its torch generator state does not fit this torch" in err, err

class _CudaGenerator:
    """A CUDA device's default generator as torch.cuda.set_rng_state reaches it (this machine has no GPU)."""

    def __init__(self):
        self.state = None

    def set_state(self, state):
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")          # (torch's CUDAGeneratorImpl::set_state)
        self.state = state


def _gpus(monkeypatch, count: int) -> list[_CudaGenerator]:
    """Make torch see ``count`` initialized GPUs; their generators."""
    generators = [_CudaGenerator() for _ in range(count)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda.random, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", tuple(generators))
    return generators


@pytest.mark.parametrize("gpus", [0, 1, 2, 3])
def test_a_run_of_two_gpus_resumes_on_fewer_or_more(run, monkeypatch, gpus):
    """The CUDA generator states of a 2-GPU machine's run: restored on the GPUs this machine has, the
    others skipped with a notice naming the file, never a traceback (torch indexes devices by position)."""
    path, _ = run
    rng = load_checkpoint(path)["rng"]
    rng["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    generators = _gpus(monkeypatch, gpus)
    notice = restore_rng(rng, "saved.pt")
    assert [g.state for g in generators][2:] == [None] * (gpus - 2)
    assert [g.state.tolist() for g in generators[:2]] == [[1] * 16, [2] * 16][:gpus]
    assert notice == {0: "saved.pt holds the CUDA generator states of 2 GPUs and this machine has none: those of "
                         "GPUs 0..1 are not restored (random numbers drawn there differ from the saved run's)",
                      1: "saved.pt holds the CUDA generator states of 2 GPUs and this machine has 1: that of GPU 1 "
                         "is not restored (random numbers drawn there differ from the saved run's)"}.get(gpus)
    torch.testing.assert_close(torch.get_rng_state(), rng["torch"], atol=0, rtol=0)


def test_a_gpu_run_resumes_on_this_machine_without_gpus(run, tmp_path, capsys):
    """``lcq train --resume`` of a 2-GPU run's checkpoint here: it trains on, saying what it skipped."""
    path, _ = run
    state = load_checkpoint(path)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    out = tmp_path / "run"
    save_checkpoint(state, out / "checkpoint.pt")
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert f"{out / 'checkpoint.pt'} holds the CUDA generator states of 2 GPUs and this machine has none: those " \
           "of GPUs 0..1 are not restored" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_a_cuda_generator_state_torch_refuses_is_named_with_its_file(run, monkeypatch):
    path, _ = run
    rng = load_checkpoint(path)["rng"]
    rng["cuda"] = [torch.zeros(5, dtype=torch.uint8)]
    _gpus(monkeypatch, 1)
    with pytest.raises(CheckpointError, match="saved.pt: its CUDA generator state of GPU 0 does not fit this torch"):
        restore_rng(rng, "saved.pt")


def test_a_cpu_run_leaves_the_gpus_of_its_machine_alone(tmp_path, monkeypatch):
    """A run on the CPU of a machine with a GPU saves no CUDA generator states: it drew nothing from them
    (``torch.manual_seed`` seeds them again on resuming), and reading them starts CUDA, which a GPU busy in
    exclusive mode or a broken driver refuses: the run failed at its first checkpoint, an epoch lost."""
    def busy(*args):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", busy)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", busy)
    out = tmp_path / "run"
    train(TrainConfig(model="cnn", dataset="digits", plan=QuantPlan("fp"), epochs=1, batch_size=64, device="cpu",
                      out=str(out), progress=False))
    assert "cuda" not in load_checkpoint(out / "checkpoint.pt")["rng"]


def _rank_rngs(ranks: int) -> list[dict]:
    """Generator states of ``ranks`` processes, each its own (torch's seeded by its rank)."""
    states = []
    for rank in range(ranks):
        torch.manual_seed(rank)
        states.append(capture_rng())
    return states


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_of_a_distributed_run_resumes_its_own_generators(run, tmp_path, world):
    """A checkpoint of 2 processes holds rank 1's states in rank_rng, checked on loading; resumed by 1, 2 or 3
    processes, each rank that has saved states gets its own, and a notice names the ranks whose are not restored."""
    path, _ = run
    state = load_checkpoint(path)
    state["rng"], rank1 = _rank_rngs(2)
    state["rank_rng"] = [rank1]
    save_checkpoint(state, tmp_path / "two.pt")
    saved = load_checkpoint(tmp_path / "two.pt")
    notices = {}
    for rank in range(world):
        notices[rank] = restore_rank_rng(saved, rank, world, "two.pt")
        if rank < 2:
            torch.testing.assert_close(torch.get_rng_state(), [state["rng"], rank1][rank]["torch"], atol=0, rtol=0)
    notice = {1: ["two.pt holds the random generator states of 2 processes and this run has 1: those of rank 1 "
                  "are not restored (random numbers drawn there differ from the saved run's)"],
              3: ["two.pt holds the random generator states of 2 processes and this run has 3: those of rank 2 "
                  "are not restored (random numbers drawn there differ from the saved run's)"]}.get(world, [])
    assert notices == {rank: notice for rank in range(world)}


def test_the_generator_states_of_other_ranks_are_checked(run, tmp_path):
    path, _ = run
    state = load_checkpoint(path)
    for value, match in (([], "rank_rng is not a list of the generator states of ranks 1..N-1"),
                         ({"torch": 1}, "rank_rng is not a list"),
                         ([state["rng"], {"torch": 1}], "rank_rng of rank 2 needs the generator states torch")):
        state["rank_rng"] = value
        with pytest.raises(CheckpointError, match=match):
            save_checkpoint(state, tmp_path / "bad.pt")
    state["rank_rng"] = [state["rng"]]
    save_checkpoint(state, tmp_path / "two.pt")
    header, data = _split(tmp_path / "two.pt")
    header["state"]["rank_rng"][0]["python"] = None
    (tmp_path / "bad.pt").write_bytes(_frame(header, data))
    with pytest.raises(CheckpointError, match="rank_rng of rank 1 python is not a version-3 random state"):
        load_checkpoint(tmp_path / "bad.pt")


def test_fields_are_checked_even_with_a_good_digest(run, tmp_path):
    path, _ = run
    header, data = _split(path)
    bad = tmp_path / "bad.pt"

    def refused(edit, match, version=2):
        h = json.loads(json.dumps(header))
        edit(h)
        bad.write_bytes(_frame(h, data, version))
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(bad)

    refused(lambda h: None, "format version 3", version=3)
    refused(lambda h: h["state"]["config"].update(epochs=0), "config is invalid: epochs must be an integer >= 1")
    refused(lambda h: h["state"]["config"]["plan"].update(wbits=9), "config is invalid: --wbits must be an integer in 2..8")
    refused(lambda h: h["state"].update(epoch=5), "epoch is 5, not an integer in 1..1")
    refused(lambda h: h["state"].update(num_classes=10**30), "num_classes is 10{30}, not an integer in 2..65536")
    refused(lambda h: h["state"].update(extra=1), "unknown \\['extra'\\]")
    refused(lambda h: h["state"]["rng"]["numpy"].update(pos=10**6), "rng numpy is not an MT19937 state")
    refused(lambda h: h["state"]["model"].update({"w": {"__tensor__": "nowhere"}}), "refers to no tensor")
    refused(lambda h: h["state"]["model"].update({"w": {"__pickle__": "x"}}), "unknown tag")
    refused(lambda h: next(iter(h["tensors"].values())).update(dtype="OBJECT"), "has dtype 'OBJECT'")
    refused(lambda h: next(iter(h["tensors"].values())).update(dtype=["F32"]), "has dtype \\['F32'\\], not one of")
    refused(lambda h: next(iter(h["tensors"].values())).update(shape=[10**9]), "needs \\[0, ")
    end = len(data)
    refused(lambda h: h["tensors"].update(extra={"dtype": "F32", "shape": [0, 2**63 - 1, 2**63 - 1],
                                                 "data_offsets": [end, end]}), "not a list of sizes of at most")
    refused(lambda h: h.update(format="other"), "not 'lcq-checkpoint'")


@pytest.mark.parametrize("shape", [[10**9, 8, 8], [1, 28, 28], [3, 8, 8], [True, 8, 8]])
def test_an_input_shape_other_than_its_datasets_is_refused_before_compiling(run, tmp_path, capsys, shape):
    """The trainer writes its dataset's image shape (digits: 1x8x8); another (10^9 channels: lcq compile built a
    576 GB first convolution, torch's allocation error) is refused by name, with the file and the fix."""
    path, _ = run
    header, data = _split(path)
    header["state"]["input_shape"] = shape
    bad = tmp_path / "bad.pt"
    bad.write_bytes(_frame(header, data))
    assert main(["compile", str(bad), "-o", str(tmp_path / "model.lcq")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: input_shape is {shape!r}, not [1, 8, 8], the image shape of its dataset digits; it is not a " \
           "checkpoint this lcq wrote (retrain, or restore it from a copy)" in err, err
    assert not (tmp_path / "model.lcq").exists()


@pytest.mark.parametrize("tensor", ["conv0.weight", "act1.theta", "act_in.alpha"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_of_a_diverged_run_is_refused_by_lcq_compile_naming_the_tensor(run, tmp_path, capsys, tensor,
                                                                                      value):
    """A run that diverged writes NaN weights (and its loss NaN): lcq compile refused them with a message of
    the stage that met them first ("sigma_w must be positive"; "field 'a_levels' must be non-decreasing, but
    [0] = 0 > [1] = -9223372036854775808"), which says nothing of the checkpoint or of the fix."""
    path, _ = run
    state = load_checkpoint(path)
    state["model"][tensor].view(-1)[0] = value
    bad = tmp_path / "diverged.pt"
    save_checkpoint(state, bad)
    assert main(["compile", str(bad), "-o", str(tmp_path / "model.lcq")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: its model tensor {tensor} holds 1 values that are NaN or infinite: the run diverged" in err, err
    assert "retrain it with a lower --lr" in err, err
    assert not (tmp_path / "model.lcq").exists()


def _version_1(path) -> dict:
    """The checkpoint at ``path`` as the previous lcq pickled it (torch.save of the dict, numpy and Python
    RNG states as tuples)."""
    state = load_checkpoint(path)
    state.pop("sha256")
    n, p = state["rng"]["numpy"], state["rng"]["python"]
    state["rng"] = {"torch": state["rng"]["torch"],
                    "numpy": ("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]),
                    "python": (p["version"], tuple(p["state"]), p["gauss_next"])}
    return {"format": "lcq-checkpoint", "version": 1, **state}


def test_a_version_1_checkpoint_is_refused_and_can_be_upgraded(run, tmp_path):
    path, _ = run
    old = tmp_path / "old.pt"
    torch.save(_version_1(path), old)
    with pytest.raises(CheckpointError, match="older lcq's checkpoints \\(version 1\\).*lcq_train.checkpoint upgrade"):
        load_checkpoint(old)
    assert ckpt.main(["upgrade", str(old), str(tmp_path / "new.pt")]) == 0
    new = load_checkpoint(tmp_path / "new.pt")
    for key, tensor in load_checkpoint(path)["model"].items():
        torch.testing.assert_close(new["model"][key], tensor, atol=0, rtol=0)
    saved_rng = load_checkpoint(path)["rng"]
    assert new["rng"]["numpy"] == saved_rng["numpy"] and new["rng"]["python"] == saved_rng["python"]
    torch.testing.assert_close(new["rng"]["torch"], saved_rng["torch"], atol=0, rtol=0)
    with pytest.raises(FileExistsError):
        upgrade_checkpoint(old, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="already in checkpoint format version 2"):
        upgrade_checkpoint(tmp_path / "new.pt", tmp_path / "newer.pt")



def test_an_upgrade_refused_by_a_field_names_the_old_file(run, tmp_path):
    path, _ = run
    state = _version_1(path)
    state["epoch"] = 7
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match=rf"^{old}: epoch is 7, not an integer in 1..1"):
        upgrade_checkpoint(old, new)
    assert not new.exists()

def test_an_upgrade_of_what_no_lcq_wrote_is_refused_by_name(run, tmp_path, capsys):
    """A version-1 file holding a value this format cannot store (a uint32 array outside the RNG state),
    and one naming a Python global: clear errors, no traceback."""
    path, _ = run
    state = _version_1(path)
    state["metrics"]["note"] = np.zeros(3, dtype=np.uint32)
    old = tmp_path / "odd.pt"
    torch.save(state, old)
    assert ckpt.main(["upgrade", str(old), str(tmp_path / "new.pt")]) == 2
    assert "is not an lcq checkpoint of format version 1: a checkpoint holds tensors" in capsys.readouterr().err
    evil = tmp_path / "evil.pt"
    torch.save({"format": "lcq-checkpoint", "version": 1, "x": print}, evil)
    with pytest.raises(CheckpointError, match="it names __builtin__.print, which an lcq checkpoint never holds"):
        upgrade_checkpoint(evil, tmp_path / "evil-new.pt")


def test_a_header_with_a_duplicate_key_among_many_is_refused_at_once(tmp_path):
    """Finding the repeated key must not take time quadratic in the keys (30,000: 20 s before)."""
    state = "{" + ",".join(f'"k{i}":0' for i in range(30_000)) + ',"k7":1}'
    raw = ('{"format":"lcq-checkpoint","version":2,"tensors":{},"state":' + state + "}").encode()
    path = tmp_path / "dup.pt"
    path.write_bytes(FRAME.pack(b"LCQCKPT\n", 2, len(raw), hashlib.sha256(raw).digest()) + raw)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"dup.pt has an unreadable header \(duplicate keys \['k7'\]\)"):
        load_checkpoint(path)
    assert time.perf_counter() - t0 < 3.0



def test_an_upgrade_refuses_values_a_pickle_refers_to_many_times(run, tmp_path):
    """Nested lists each holding the next twice: pickle stores each once, 20 of them stand for 2^20 values
    (the converted header grew 5x per 64 bytes of the file; 40 would be 2^40)."""
    path, _ = run
    state = _version_1(path)
    nested = []
    for _ in range(20):
        nested = [nested, nested]
    state["scheduler"]["nested"] = nested
    old = tmp_path / "old.pt"
    torch.save(state, old)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"{old} cannot be converted: it refers to more values than its "
                                              r"\d+ bytes can hold"):
        upgrade_checkpoint(old, tmp_path / "new.pt")
    assert time.perf_counter() - t0 < 5.0

def _unicode(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _encode(inner: bytes, codec: str) -> bytes:
    """Opcodes of _codecs.encode(INNER, CODEC), as protocol 2 pickles bytes (with "latin1")."""
    return b"c_codecs\nencode\n(" + inner + _unicode(codec) + b"tR"


_RECONSTRUCT = f"c{np.ndarray.__reduce__(np.zeros(1))[0].__module__}\n_reconstruct\n(cnumpy\nndarray\n".encode()
CRAFTED_VERSION_1 = {   # a value of a version-1 checkpoint that torch.load(weights_only=True) builds unchecked
    # _codecs.encode nested with "hex": each call doubles its input (64 MB here from 1 KB; 30 calls make 64 GB)
    "hex": (_encode(_encode(_unicode("x" * 64), "latin1"), "hex"), 20,
            r"it calls _codecs\.encode with 'hex' on bytes, where a pickle of bytes uses 'latin1' on str"),
    # the key of numpy's generator state from _reconstruct(ndarray, (10^6,), b"B"): an array of any size,
    # uninitialised, which the conversion then copies into a list element by element
    "reconstruct-shape": (b"(" + _unicode("MT19937") + _RECONSTRUCT + b"J@B\x0f\x00\x85"
                          + _encode(_unicode("B"), "latin1") + b"tRK\x00K\x00G" + bytes(8) + b"t", 1,
                          r"it calls numpy's _reconstruct with shape \(1000000,\)"),
    # uint32 (allowed for that key) whose BUILD sets the flag 'holds objects': numpy then reads bytes as pointers
    "dtype-flags": (b"cnumpy\ndtype\n(" + _unicode("u4") + b"\x89\x88tR(K\x03" + _unicode("|")
                    + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ftb", 1,
                    r"it sets a numpy dtype state numpy never writes"),
}


def _version_1_zip(path, value: bytes, storages: dict[str, bytes] | None = None) -> None:
    """A torch.save archive of {"format": "lcq-checkpoint", "version": 1, "rng": {"numpy": VALUE}} (opcodes)."""
    pkl = (b"\x80\x02}(" + _unicode("format") + _unicode("lcq-checkpoint") + _unicode("version") + b"K\x01"
           + _unicode("rng") + b"}(" + _unicode("numpy") + value + b"u" + b"u.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)


@pytest.mark.parametrize("name", CRAFTED_VERSION_1)
def test_an_upgrade_builds_numpy_objects_only_as_numpy_writes_them(tmp_path, name):
    opcodes, nesting, refusal = CRAFTED_VERSION_1[name]
    for _ in range(nesting - 1):
        opcodes = _encode(opcodes, "hex")
    old = tmp_path / "old.pt"
    _version_1_zip(old, opcodes)
    with pytest.raises(CheckpointError, match=rf"{old} cannot be converted: {refusal}"):
        upgrade_checkpoint(old, tmp_path / "new.pt")
    assert not (tmp_path / "new.pt").exists()


_DEEP_TUPLE = b")" + b"\x85" * 1_000_000          # EMPTY_TUPLE, then TUPLE1 around it 10^6 times


@pytest.mark.parametrize("opcodes, refusal", [
    (b"}" + _DEEP_TUPLE + b"K\x01s", "it keys a dict or set by a tuple, which an lcq checkpoint never does"),
    (b"ccollections\nOrderedDict\n]" + _DEEP_TUPLE + b"K\x01\x86a\x85R",
     "it calls OrderedDict with arguments, where torch.save writes an empty one and sets its items"),
], ids=["setitem", "OrderedDict"])
def test_an_upgrade_of_a_pickle_keyed_by_a_deeply_nested_tuple_is_refused_not_a_crash(tmp_path, opcodes, refusal):
    """Python hashes a tuple by hashing its items, with no depth limit: a dict key of 10^6 nested tuples (1 MB)
    overflowed the C stack where the unpickler stored it, and the upgrade died of SIGSEGV without a word."""
    old = tmp_path / "old.pt"
    _version_1_zip(old, opcodes)
    result = subprocess.run([sys.executable, "-m", "lcq_train.checkpoint", "upgrade", str(old),
                             str(tmp_path / "new.pt")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{old} cannot be converted: {refusal}" in result.stderr, result.stderr[-2000:]


def test_an_upgrade_builds_tensors_only_within_their_stored_bytes(tmp_path):
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n(("
    storage = _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") + _unicode("cpu")
    hooks = b"ccollections\nOrderedDict\n)R"
    cases = {   # (the tensor's opcodes, the bytes stored, the refusal)
        "zero stride": (rebuild + storage + b"K\x01tQK\x00J\x00\xca\x9a;\x85K\x00\x85\x89" + hooks + b"tR", bytes(4),
                        r"it views a tensor of shape \(1000000000,\) beyond its storage of 1"),
        "beyond": (rebuild + storage + b"K\x04tQK\x02K\x03\x85K\x01\x85\x89" + hooks + b"tR", bytes(16),
                   r"it views a tensor of shape \(3,\) beyond its storage of 4"),
        "size": (rebuild + storage + b"K\x05tQK\x00K\x05\x85K\x01\x85\x89" + hooks + b"tR", bytes(16),
                 r"its storage 0 holds 16 bytes, not the 20 of 5 elements"),
    }
    for name, (opcodes, data, refusal) in cases.items():
        old = tmp_path / f"{name}.pt"
        _version_1_zip(old, opcodes, {"0": data})
        with pytest.raises(CheckpointError, match=rf"cannot be converted: {refusal}"):
            upgrade_checkpoint(old, tmp_path / "new.pt")


def test_a_large_file_of_another_kind_is_refused_by_its_first_bytes(tmp_path):
    """A file passed by mistake (an archive, a dataset), or of a newer format version, is refused without
    reading it whole."""
    import tracemalloc

    cases = {"other.tar": (bytes(64 << 20), "is not an lcq checkpoint"),
             "newer.pt": (FRAME.pack(b"LCQCKPT\n", 3, 2, bytes(32)) + bytes(64 << 20),
                          "has checkpoint format version 3")}
    for name, (blob, refusal) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        tracemalloc.start()
        with pytest.raises(CheckpointError, match=f"{path} {refusal}"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20, (name, peak)
