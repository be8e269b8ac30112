"""The compiled-model file: round trip, bit packing, and clear errors on corrupt or foreign input."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compiler import format as fmt
from compiler.graph import weight_scale
from compiler.lower import compile_model
from compiler.reference import run
from lcq_train.models.resnet import PreActResNet
from lcq_train.plan import QuantPlan, apply_plan


@pytest.fixture(scope="module")
def compiled(randomize):
    torch.manual_seed(0)
    model = randomize(apply_plan(PreActResNet(8, 10, 3), QuantPlan("lcq", 3, 4, layer_bits={"blocks.1.conv2": (2, 2)})),
                      seed=1)
    return compile_model(model, (3, 32, 32))


@pytest.fixture
def saved(compiled, tmp_path):
    path = tmp_path / "model.lcq"
    fmt.save(compiled, path)
    return path


def rewrite(path, edit):
    """Load the zip members, let ``edit(manifest, arrays)`` change them, write them back.

    Like a deliberate editor, it records the new contents' digest, so that the
    loader's other checks are what must catch the edit.
    """
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    manifest = json.loads(bytes(arrays.pop("manifest.json")).decode())
    edit(manifest, arrays)
    fmt.write_members(path, manifest, arrays)


def test_round_trip_preserves_every_array_and_result(compiled, saved, images):
    loaded = fmt.load(saved)
    assert [type(n) for n in loaded.nodes] == [type(n) for n in compiled.nodes]
    for a, b in zip(compiled.convs, loaded.convs):
        np.testing.assert_array_equal(a.weight_codes, b.weight_codes)
        np.testing.assert_array_equal(a.w_levels, b.w_levels)
        np.testing.assert_array_equal(a.a_levels, b.a_levels)
        assert (a.name, a.in_shape, a.out_shape, a.kernel, a.stride, a.padding, a.wbits, a.abits, a.mac) == \
               (b.name, b.in_shape, b.out_shape, b.kernel, b.stride, b.padding, b.wbits, b.abits, b.mac)
    x = images(4, (3, 32, 32), seed=0)
    want, got = run(compiled, x), run(loaded, x)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(want[k], got[k])


def test_manifest_documents_luts_and_weight_packing(saved):
    with np.load(saved) as npz:
        manifest = json.loads(bytes(npz["manifest.json"]).decode())
        convs = [n for n in manifest["nodes"] if n["op"] == "conv"]
        mixed = next(n for n in convs if n["name"] == "blocks.1.conv2")
        assert (mixed["wbits"], mixed["abits"]) == (2, 2) and mixed["mac"] == "lut"
        assert npz[mixed["lut"]["array"]].shape == (1, 3) and npz[mixed["lut"]["array"]].dtype == np.uint16
        inner = next(n for n in convs if n["name"] == "blocks.0.conv1")
        assert npz[inner["lut"]["array"]].shape == (3, 15)                     # W3/A4: 45 entries
        assert npz[inner["weights"]["array"]].size == (16 * 16 * 9 * 3 + 7) // 8
        assert convs[0]["mac"] == "multiply" and "lut" not in convs[0]       # the 8-bit first layer
        members = {k: fmt._npy(npz[k]) for k in npz.files if k != "manifest.json"}
    assert manifest["format"] == "lcq-compiled-model" and manifest["version"] == 2
    assert manifest["sha256"] == fmt.digest(manifest, members)


@given(bits=st.integers(2, 8), data=st.data())
def test_weight_packing_round_trips(bits, data):
    s = 2 ** (bits - 1) - 1
    codes = np.array(data.draw(st.lists(st.integers(-s, s), min_size=1, max_size=200)), dtype=np.int8)
    packed = fmt.encode_weights(codes, bits)
    assert packed.size == (codes.size * bits + 7) // 8
    np.testing.assert_array_equal(fmt.decode_weights(packed, bits, codes.shape), codes)


def test_packing_is_little_endian_sign_magnitude():
    packed = fmt.encode_weights(np.array([1, -1, 3, 0]), 3)   # fields 001, 101, 011, 000 LSB first
    assert list(packed) == [0b11101001, 0b0000]


def test_weight_packing_needs_little_memory():
    """Unpacking a layer's weights takes a small multiple of their packed bytes (it once took ~150 times)."""
    for bits in (2, 3, 8):
        codes = np.random.default_rng(bits).integers(-weight_scale(bits), weight_scale(bits) + 1, 1 << 20,
                                                     dtype=np.int8)
        tracemalloc.start()
        packed = fmt.encode_weights(codes, bits)
        assert tracemalloc.get_traced_memory()[1] < 12 * codes.size
        tracemalloc.reset_peak()
        decoded = fmt.decode_weights(packed, bits, codes.shape)
        assert tracemalloc.get_traced_memory()[1] < 12 * codes.size
        tracemalloc.stop()
        np.testing.assert_array_equal(decoded, codes)


def test_loader_needs_no_torch(saved):
    code = (f"import sys; sys.modules['torch'] = None\n"
            f"from compiler import format, reference\nm = format.load({str(saved)!r})\nprint(len(m.nodes))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 10


def test_wrong_version_is_rejected(saved):
    rewrite(saved, lambda m, a: m.update(version=99))
    with pytest.raises(fmt.ModelFormatError, match="version 99.*reads version 2"):
        fmt.load(saved)


def test_foreign_format_is_rejected(saved):
    rewrite(saved, lambda m, a: m.update(format="something-else"))
    with pytest.raises(fmt.ModelFormatError, match="not an lcq-compiled-model"):
        fmt.load(saved)


def test_truncated_file_is_rejected(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.ModelFormatError, match="not a readable compiled model.*truncated"):
        fmt.load(saved)


def test_not_a_zip_and_missing_file(tmp_path):
    bad = tmp_path / "bad.lcq"
    bad.write_text("hello")
    with pytest.raises(fmt.ModelFormatError, match="not a readable compiled model"):
        fmt.load(bad)
    with pytest.raises(FileNotFoundError, match="lcq compile"):
        fmt.load(tmp_path / "absent.lcq")


def test_missing_array_is_named(saved):
    rewrite(saved, lambda m, a: a.pop("nodes/1/w_levels"))
    with pytest.raises(fmt.ModelFormatError, match="'nodes/1/w_levels' is missing"):
        fmt.load(saved)


def test_inconsistent_shapes_are_rejected(saved):
    def bad_geometry(m, a):
        m["nodes"][1]["out_shape"][1] += 1

    rewrite(saved, bad_geometry)
    with pytest.raises(fmt.ModelFormatError, match="does not follow from the geometry"):
        fmt.load(saved)


def test_array_shape_differing_from_manifest_is_rejected(saved):
    def shorter_weights(m, a):
        a["nodes/1/weights"] = a["nodes/1/weights"][:-1]

    rewrite(saved, shorter_weights)
    with pytest.raises(fmt.ModelFormatError, match="nodes/1/weights"):
        fmt.load(saved)


def test_tampered_lut_is_rejected(saved):
    def tamper(m, a):
        key = next(n["lut"]["array"] for n in m["nodes"] if n.get("mac") == "lut")
        a[key] = a[key].copy()
        a[key][0, 0] += 1

    rewrite(saved, tamper)
    with pytest.raises(fmt.ModelFormatError, match="LUT contents differ"):
        fmt.load(saved)


def test_undefined_input_tensor_is_rejected(saved):
    rewrite(saved, lambda m, a: m["nodes"][1].update(input="nowhere"))
    with pytest.raises(fmt.ModelFormatError, match="'nowhere' is not defined"):
        fmt.load(saved)
