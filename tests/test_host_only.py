"""The host side of the link runs without Amaranth and without the trainer: ``lcq run`` on a
machine with only numpy and pyserial. Checked in a fresh interpreter where importing the
third-party packages of the other stages (and, for the host modules, the trainer) fails."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"

# Not installed on a host that only talks to a board.
THIRD_PARTY = ("amaranth", "amaranth_boards", "torch", "sklearn", "PIL", "cocotb")

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""

RUN = BLOCKER + """
import json
import re
import boards.link_host, boards.runtime, boards.traffic, hw.protocol
from compiler.reference import predict
from lcq.cli import main

class Port:
    def __init__(self, path, baud, timeout):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        pass

class Runner:
    def __init__(self, host, model, params, resident=None):
        self.model, self.repeated = model, 0
    def classify(self, images, labels, progress):
        return boards.runtime.RunResult(predict(self.model, images), 0.5, labels, load_seconds=0.25)

boards.link_host.SerialPort = Port
boards.runtime.BoardRunner = boards.runtime.NetworkRunner = Runner
code = main(sys.argv[2:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"code": code, "loaded": loaded}))
"""


def _python(script: str, blocked, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter in which importing any package of ``blocked`` fails."""
    return subprocess.run([sys.executable, "-c", script, ",".join(blocked), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_host_modules_import_without_amaranth_or_trainer():
    script = BLOCKER + ("import boards.fit, boards.link_host, boards.runtime, boards.traffic, hw.program, hw.protocol, "
                        "hw.network_params, hw.network_program")
    result = _python(script, (*THIRD_PARTY, "lcq_train"))
    assert result.returncode == 0, result.stderr


def test_gateware_really_is_blocked():
    """The blocker works: the gateware needs Amaranth."""
    result = _python(BLOCKER + "import hw.link", THIRD_PARTY)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


REPORTS = {"layers": {"board": "icebreaker", "pll_mhz": 24.0,
                      "engine": {"rows": 2, "cols": 2, "resident": "weights"}},
           "network": {"board": "icebreaker", "pll_mhz": 24.0, "mode": "network", "network": {"rows": 2, "cols": 4}}}


@pytest.mark.parametrize("mode", REPORTS)
def test_lcq_run_with_numpy_inputs_needs_neither_amaranth_nor_torch(tmp_path, mode):
    from compiler.format import load

    model = load(DIGITS)
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=rng.integers(0, 256, size=(4, *model.input.shape), dtype=np.uint8),
             labels=np.arange(4))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORTS[mode]))
    result = _python(RUN, THIRD_PARTY, "run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1",
                     "--inputs", str(inputs), "--report", str(report), "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    out, status = json.loads(lines[-2]), json.loads(lines[-1])
    assert status == {"code": 0, "loaded": []}
    assert out["images"] == out["equal_to_reference"] == 4 and out["mode"] == mode


def test_lcq_run_classifies_image_files_with_numpy_and_pillow_only(tmp_path):
    """`lcq run --image`: a line per file with the board's classes (here the stub's: the reference's), no top-1
    (no labels); neither torch nor Amaranth imported."""
    from PIL import Image

    from compiler.format import load

    model = load(DIGITS)
    rng = np.random.default_rng(0)
    files = [tmp_path / "a.png", tmp_path / "b.jpg"]
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(files[0])
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(files[1])
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORTS["network"]))
    blocked = tuple(name for name in THIRD_PARTY if name != "PIL")
    run = ("run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--report", str(report), "--image",
           *map(str, files))
    result = _python(RUN, blocked, *run)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "loaded": []}
    assert lines[0].startswith(f"{files[0]}: ") and "logits" in lines[0] and "[" not in lines[0]
    assert lines[1].startswith(f"{files[1]}: ") and lines[1].endswith(
        "[converted from RGB to L; 20x30 cropped to the model's aspect ratio and resized to 8x8]")
    assert lines[2].startswith("icebreaker: 2 images, ") and "top-1" not in lines[2]
    assert "2 of 2 predictions equal the integer reference" in lines[2]
    out = json.loads(_python(RUN, blocked, *run, "--json").stdout.splitlines()[-2])
    assert out["accuracy"] is None and [p["image"] for p in out["predictions"]] == list(map(str, files))
    assert out["predictions"][0]["logits"] == predict_digits(model, files[0]).tolist()
    both = _python(RUN, blocked, *run, "--inputs", str(tmp_path / "x.npz"))
    assert "--image and --inputs both name the images to run: give one of them" in both.stderr


def predict_digits(model, path):
    from compiler.reference import predict
    from lcq_train.image_file import read_image

    return predict(model, read_image(path, model.input.shape)[0][None])[0]


def test_lcq_run_inputs_are_checked(tmp_path, capsys):
    from lcq.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 3, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"board": "icebreaker", "pll_mhz": 24.0,
                                  "engine": {"rows": 2, "cols": 2, "resident": "weights"}}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/null", "--inputs", str(bad),
                 "--report", str(report)]) == 2
    assert "images must be uint8 of shape (N, 1, 8, 8)" in capsys.readouterr().err


IMAGES = np.zeros((2, 1, 8, 8), dtype=np.uint8)


def _npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _npy(path):
    with path.open("wb") as f:            # (np.save would add .npy to the name)
        np.save(f, IMAGES)


def _truncated_npz(path):
    np.savez(path, images=IMAGES, labels=np.arange(2))
    path.write_bytes(path.read_bytes()[:200])


def test_lcq_run_inputs_decompress_only_the_images_they_run(tmp_path):
    """A compressed --inputs file declaring 2^30 bytes of blank images (a 1 MB zip bomb) gives its first
    --images images after decompressing only those, not 8 GiB first; a Fortran-ordered or short array is named."""
    import tracemalloc
    import zipfile

    from boards.inputs import read_inputs

    bomb = tmp_path / "bomb.npz"
    n = 2 ** 24                                      # 2^24 images of 1 x 8 x 8 bytes
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, dtype, shape, size in (("images", "|u1", (n, 1, 8, 8), 64 * n), ("labels", "<i8", (n,), 8 * n)):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
                for _ in range(size // 2 ** 24):
                    f.write(bytes(2 ** 24))
    assert bomb.stat().st_size < 2 ** 24
    tracemalloc.start()
    images, labels = read_inputs(bomb, 3, (1, 8, 8), 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert images.shape == (3, 1, 8, 8) and not images.any() and labels.tolist() == [0, 0, 0]
    assert peak < 2 ** 24, peak

    fortran = tmp_path / "fortran.npz"
    np.savez(fortran, images=np.asfortranarray(np.zeros((2, 1, 8, 8), np.uint8)), labels=np.arange(2))
    with pytest.raises(ValueError, match=r"'images' is saved in Fortran order; save np.ascontiguousarray\(images\)"):
        read_inputs(fortran, 2, (1, 8, 8), 10)
    short = tmp_path / "short.npz"
    with zipfile.ZipFile(short, "w") as zf:
        with zf.open("images.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (2, 1, 8, 8)})
            f.write(bytes(100))
        with zf.open("labels.npy", "w") as f:
            np.save(f, np.arange(2))
    with pytest.raises(ValueError, match=r"'images' is cut short: 100 bytes of data where its header declares at "
                                         r"least 128"):
        read_inputs(short, 2, (1, 8, 8), 10)


@pytest.mark.parametrize("write, message", [
    (os.mkfifo, r"is not a regular file"),                      # (reading it would wait for a writer forever)
    (_npy, r"is a \.npy file \(one array\), not an \.npz"),
    (_bytes(bytes(range(256)) * 4), r"is not an \.npz file \(it does not start as a zip file does\)"),
    (_bytes(b""), r"is not an \.npz file"),
    (_truncated_npz, r"is not an \.npz of plain arrays 'images' and 'labels' \(.+\)"),
    (_npz(images=IMAGES), r"is not an \.npz of plain arrays 'images' and 'labels' \(it holds arrays \['images'\]\)"),
    (_npz(images=IMAGES, labels=np.array([1, None], dtype=object)), r"is not an \.npz of plain arrays"),
    (_npz(images=IMAGES, labels=np.array([0.0, 1.0])), r"labels must be 2 integers, one per image, not float64 \(2,\)"),
    (_npz(images=IMAGES, labels=np.array([0.5, 9.7])), r"labels must be 2 integers, one per image, not float64"),
    (_npz(images=IMAGES, labels=np.array([1 + 0j, 2])), r"labels must be 2 integers, one per image, not complex128"),
    (_npz(images=IMAGES, labels=np.array(["1", "2"])), r"labels must be 2 integers, one per image, not <U1"),
    (_npz(images=IMAGES, labels=np.array([True, False])), r"labels must be 2 integers, one per image, not bool"),
    (_npz(images=IMAGES, labels=np.arange(3)), r"labels must be 2 integers, one per image, not int64 \(3,\)"),
    (_npz(images=IMAGES, labels=np.array([3, 10])), r"label 10 of image 1 is not a class of the model \(0\.\.9\)"),
    (_npz(images=IMAGES, labels=np.array([-1, 0])), r"label -1 of image 0 is not a class of the model \(0\.\.9\)"),
    (_npz(images=IMAGES, labels=np.array([2**40, 0])), r"label 1099511627776 of image 0 is not a class"),
    (_npz(images=np.zeros((0, 1, 8, 8), np.uint8), labels=np.arange(0)),
     r"images must be uint8 of shape \(N, 1, 8, 8\), N >= 1, not uint8 \(0, 1, 8, 8\)"),
    (_npz(images=np.uint8(3), labels=np.arange(1)),
     r"images must be uint8 of shape \(N, 1, 8, 8\), N >= 1, not uint8 \(\)"),
])
def test_lcq_run_takes_only_the_inputs_its_help_describes(tmp_path, capsys, write, message):
    """--inputs: an .npz of uint8 images and one integer class of the model per image, nothing else, named."""
    from lcq.cli import main

    inputs = tmp_path / "inputs.npz"
    write(inputs)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORTS["layers"]))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/null", "--inputs", str(inputs),
                 "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq run: error: {inputs}") and re.search(message, err), err
    assert "--inputs takes an .npz file of arrays 'images' (uint8, N x 1 x 8 x 8) and 'labels' (N integers in 0..9)" \
        in err
