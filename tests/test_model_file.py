"""The model-file loader accepts only what the compiler writes.

Each class of damage (an edited field, an edited array, a damaged zip, random
bit flips) must end in a :class:`compiler.format.ModelFormatError` that names
the file, the node and field to blame and what is allowed, quickly and without
a large allocation. Edits go through :func:`compiler.format.write_members`,
which records the new contents' digest (a deliberate editor), so that the
rules, not the digest, must catch them; the digest tests edit without it.
"""

import dataclasses
import json
import re
import shutil
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler import format as fmt
from compiler.graph import ModelRuleError
from compiler.reference import run

from helpers import members

DATA = Path(__file__).parent / "data"
# nodes: 0 input act_in, 1 conv0 (8-bit, multiply, thresholds), 2 conv1 (W3/A3 lut, 3x3 stride 2 pad 1, 16x8x8 ->
# 32x4x4, thresholds), 3 conv2 (lut, raw accumulator), 4 pool act_fc, 5 fc (linear, multiply, requantize -> logits)
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"
RESNET = DATA / "cifar10-resnet20-lcq-w3a3.lcq"


def edited(tmp_path, edit, source=DIGITS):
    """A copy of ``source`` with ``edit(manifest, arrays)`` applied and a matching digest."""
    manifest, arrays = members(source)
    edit(manifest, arrays)
    path = tmp_path / "edited.lcq"
    fmt.write_members(path, manifest, arrays)
    return path


def raw_members(path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_raw(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def rejected(path, *patterns) -> str:
    """Load ``path``: it must fail with a ModelFormatError naming the file and matching every pattern."""
    with pytest.raises(fmt.ModelFormatError) as info:
        fmt.load(path)
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return message


def same(a, b) -> bool:
    """Models (nodes, arrays with dtypes, scalars) equal in every field."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def setitem(key, index, value):
    def edit(m, a):
        a[key] = a[key].copy()
        a[key][index] = value
    return edit


def setfield(node, in_stage=False, **fields):
    def edit(m, a):
        (m["nodes"][node]["stage"] if in_stage else m["nodes"][node]).update(fields)
    return edit


# --------------------------------------------------------------------------- the committed files


def test_committed_models_are_version_2_and_obey_the_rules():
    for path in (DIGITS, RESNET):
        manifest, _ = members(path)
        assert manifest["version"] == 2 and re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"])
        model = fmt.load(path)
        model.validate()


def test_version_1_files_are_refused_with_advice_to_recompile(tmp_path):
    def old(m, a):
        m["version"] = 1
    path = edited(tmp_path, old)
    rejected(path, r"format version 1 \(written before model files carried a SHA-256 digest\)",
             "reads version 2", "lcq compile")


def test_version_is_the_integer_the_writer_writes(tmp_path):
    for version, shown in ((2.0, "2.0"), ("2", "'2'"), (True, "True"), (3, "3")):
        rejected(edited(tmp_path, lambda m, a: m.update(version=version)), f"format version {shown};",
                 "reads version 2")


def test_a_newer_version_asks_for_a_newer_lcq(tmp_path):
    rejected(edited(tmp_path, lambda m, a: m.update(version=3)), "format version 3;",
             r"reads version 2: update lcq \(pip install -U\), or recompile it")


# --------------------------------------------------------------------------- edited fields and arrays: one per rule

CASES = {
    # pool fraction bits: the compiler allows 0..24 (and the file's compile options say 8)
    "pool frac_bits -1": (setfield(4, frac_bits=-1), [r"node 4 \(pool 'act_fc'\)", r"'frac_bits' = -1", r"0\.\.24"]),
    "pool frac_bits 64": (setfield(4, frac_bits=64), [r"'frac_bits' = 64 is out of range; allowed 0\.\.24"]),
    "pool frac_bits 2^20": (setfield(4, frac_bits=2**20), [r"'frac_bits' = 1048576 is out of range"]),
    "pool frac_bits not the compiled one": (setfield(4, frac_bits=7), [r"'frac_bits' = 7.*pool_frac_bits 8"]),
    # level tables: A[0] = W[0] = 0 (the LUT leaves index 0 out), end points s', non-decreasing
    "a_levels[0] != 0": (setitem("nodes/2/a_levels", 0, 3),
                         [r"node 2 \(conv 'conv1'\)", r"'a_levels' \[0\] = 3; must be 0"]),
    "w_levels[0] != 0": (setitem("nodes/2/w_levels", 0, 1), [r"'w_levels' \[0\] = 1; must be 0"]),
    "w_levels end point": (setitem("nodes/2/w_levels", 3, 126), [r"'w_levels' \[3\] = 126; must be 127"]),
    "a_levels decreasing": (setitem("nodes/2/a_levels", 1, 250), [r"'a_levels' must be non-decreasing"]),
    "8-bit a_levels end point": (setitem("nodes/1/a_levels", 255, 254), [r"node 1 .*'a_levels' \[255\] = 254"]),
    # flags are exactly 0 or 1, sign is -1, 0 or 1
    "descending = 2": (setitem("nodes/2/stage/descending", 0, 2), [r"'stage\.descending' \[0\] = 2; a flag is 0 or 1"]),
    "relu = 7": (setitem("nodes/4/relu", 3, 7), [r"node 4 .*'relu' \[3\] = 7; a flag is 0 or 1"]),
    "sign = 5": (setitem("nodes/4/sign", 0, 5), [r"'sign' \[0\] = 5 is out of range; allowed -1\.\.1"]),
    # requantize: shift, multiplier, bias, int64 overflow
    "negative shift": (setitem("nodes/5/stage/shift", 2, -1),
                       [r"node 5 \(conv 'fc'\)", r"'stage\.shift' \[2\] = -1 is out of range; allowed 0\.\.62"]),
    "shift 64": (setitem("nodes/5/stage/shift", 0, 64), [r"'stage\.shift' \[0\] = 64 is out of range"]),
    "multiplier beyond its 24 bits": (setitem("nodes/5/stage/multiplier", 0, 2**30),
                                      [r"'stage\.multiplier' \[0\] = 1073741824 is out of range for shift"]),
    "multiplier overflowing int64": (lambda m, a: (setitem("nodes/5/stage/shift", 0, 0)(m, a),
                                                   setitem("nodes/5/stage/multiplier", 0, 2**62)(m, a)),
                                     [r"'stage\.multiplier'.*overflows 64 bits"]),
    "multiplier 0": (setitem("nodes/5/stage/multiplier", 0, 0), [r"'stage\.multiplier' \[0\] = 0 is out of range"]),
    "bias far from the rounding half": (setitem("nodes/5/stage/bias", 0, 2**62 + 2**20), [r"'stage\.bias' \[0\]"]),
    # geometry: stride >= 1, padding up to kernel // 2, the output shape follows exactly
    "stride 0": (setfield(2, stride=0), [r"node 2 \(conv 'conv1'\)", r"'stride' = 0 is out of range; allowed 1\.\.16"]),
    "stride 3 padding 2, same output shape": (setfield(2, stride=3, padding=2),
                                              [r"'padding' = 2 is out of range; allowed 0\.\.1"]),
    "stride 1, other output shape": (setfield(2, stride=1), [r"'out_shape'.*does not follow from the geometry"]),
    "negative padding": (setfield(1, padding=-1), [r"'padding' = -1 is out of range"]),
    "kernel beyond the limit": (setfield(1, kernel=2**40), [r"'kernel' = 1099511627776 is out of range"]),
    "linear layer with a kernel": (setfield(5, kernel=3, padding=1), [r"node 5 .*'kind' 'linear' needs kernel 1"]),
    "in_shape not its input's": (setfield(3, in_shape=[32, 4, 5], out_shape=[64, 4, 5]),
                                 [r"node 3 .*'in_shape' = \[32, 4, 5\] does not match its input tensor 'act2'"]),
    "negative channels": (setfield(0, shape=[-1, 8, 8]), [r"node 0 .*'shape\[0\]' = -1 is out of range"]),
    # weight codes: the canonical sign-magnitude packing (no negative zero)
    "negative zero weight": (lambda m, a: _negative_zero(a, "nodes/2/weights", 3), [r"node 2 .*'weights' byte \d+"]),
    # thresholds: range within the accumulator bound, order, 2^bits - 1 per channel
    "threshold beyond the bound": (setitem("nodes/2/stage/thresholds", (0, 6), 10**9),
                                   [r"'stage\.thresholds' \[0, 6\] = 1000000000 is out of range; allowed "
                                    r"-4663441\.\.4663441"]),
    "thresholds out of order": (lambda m, a: _unsort(a, "nodes/2/stage/thresholds"),
                                [r"'stage\.thresholds' \[\d+, :\] must be non-decreasing"]),
    "pool offset beyond the bound": (setitem("nodes/4/offset", 0, 2**61), [r"node 4 .*'offset' \[0\]"]),
    "input table[0] != 0": (setitem("nodes/0/table", 0, 1), [r"node 0 .*'table' \[0\] = 1; must be 0"]),
    # bit-widths and exponent-like fields, checked before any 2 ** bits
    "stage bits 2^63": (setfield(2, in_stage=True, bits=2**63), [r"'stage\.bits' = 9223372036854775808 is out of "
                                                              r"range; allowed 2\.\.8"]),
    "wbits 0": (setfield(2, wbits=0), [r"'wbits' = 0 is out of range; allowed 2\.\.8"]),
    "input bits 2^64": (setfield(0, bits=2**64), [r"node 0 .*'bits' = 18446744073709551616 is out of range"]),
    "abits unlike its input codes": (setfield(2, abits=4), [r"'abits' = 4 differs from the 3-bit codes"]),
    "outer bits 40": (setfield(2, outer_wbits=40), [r"'outer_wbits' = 40 is out of range; allowed 2\.\.16"]),
    # types: what used to print "invalid literal for int()"
    "stride a string": (setfield(2, stride="2"), [r"node 2 .*'stride' must be an integer in 1\.\.16, not '2'"]),
    "bits a float": (setfield(2, in_stage=True, bits=3.0), [r"'stage\.bits' must be an integer"]),
    "bits a bool": (setfield(0, bits=True), [r"'bits' must be an integer"]),
    "scale negative": (setfield(2, scale=-1.0), [r"'scale' must be a finite number > 0"]),
    "node a string": (lambda m, a: m["nodes"].__setitem__(3, "conv"), [r"node 3: field 'op' must be one of"]),
    "stage a list": (setfield(2, stage=[1, 2]), [r"node 2 .*'stage' must be null or a thresholds"]),
    "stage kind unhashable": (setfield(2, stage={"kind": []}), [r"'stage' must be null or a thresholds"]),
    "scales a list": (lambda m, a: m.update(scales=[]), [r"'scales' must be a dict"]),
    "source a string": (lambda m, a: m.update(source="x"), [r"'source' must be a dict"]),
    "num_classes huge": (lambda m, a: m.update(num_classes=10**30), [r"'num_classes' = .* is out of range"]),
    # fields: none missing, none unknown, derived ones equal what they derive from
    "missing field": (lambda m, a: m["nodes"][2].pop("kernel"), [r"node 2 .*field 'kernel' is missing"]),
    "unknown field": (setfield(2, extra=1), [r"node 2 .*unknown field 'extra'"]),
    "acc_bits edited": (setfield(2, acc_bits=30), [r"'acc_bits' = 30; the levels and the reduction give 24"]),
    "lut_bits edited": (setfield(2, lut_bits=16), [r"'lut_bits' = 16; the LUT needs 15"]),
    "LUT edited": (setitem("nodes/2/lut", (2, 6), 1), [r"'lut': LUT contents differ"]),
    "mac unlike the compile options": (lambda m, a: (m["nodes"][2].update(mac="multiply"), m["nodes"][2].pop("lut"),
                                                     m["nodes"][2].pop("lut_bits"), a.pop("nodes/2/lut")),
                                       [r"'mac' = 'multiply'; with max_lut_entries 1024 the compiler makes it 'lut'"]),
    "array reference to another key": (lambda m, a: m["nodes"][2]["weights"].update(array="nodes/3/weights"),
                                       [r"'weights' must be a reference"]),
    "array declared with another shape": (lambda m, a: m["nodes"][2]["w_levels"].update(shape=[5]),
                                          [r"'w_levels' is declared 'int32' \[5\], the layer needs int32 \[4\]"]),
    "big-endian array": (lambda m, a: a.update({"nodes/5/stage/shift": a["nodes/5/stage/shift"].astype(">i8")}),
                         [r"'nodes/5/stage/shift' is >i8 \[10\], the manifest says <i8 \[10\]"]),
    "array missing": (lambda m, a: a.pop("nodes/1/w_levels"), [r"array 'nodes/1/w_levels' is missing"]),
    "extra member": (lambda m, a: a.update(extra=np.zeros(3)), [r"unexpected zip member 'extra\.npy'"]),
    # graph: tensors defined once and in order, logits the last node's values, scales of value tensors
    "undefined input": (setfield(3, input="nowhere"), [r"'input' tensor 'nowhere' is not defined"]),
    "tensor defined twice": (setfield(3, output="act1"), [r"'output' tensor 'act1' is already defined"]),
    "codes where values are needed": (setfield(4, input="act2"), [r"'input' tensor 'act2' must be values"]),
    "logits elsewhere": (lambda m, a: m.update(logits="conv2"), [r"'logits' = 'conv2'; must be the value tensor"]),
    "num_classes unlike the logits": (lambda m, a: m.update(num_classes=11), [r"must be \[11, 1, 1\]"]),
    "scale of a value tensor missing": (lambda m, a: m["scales"].pop("conv2"), [r"'scales' has no entry for 'conv2'|"
                                                                                r"scales\['conv2'\]"]),
    "out_scale unlike the scales": (setfield(5, out_scale=1.0), [r"node 5 .*'out_scale' = 1\.0 differs"]),
    "odd tensor name": (setfield(3, output="x\x1b[2J"), [r"'output' must be a name"]),
    "source without its options": (lambda m, a: m["source"].pop("options"), [r"'source\.options' must be dict"]),
    "source options unknown": (lambda m, a: m["source"]["options"].update(speed=1),
                               [r"'source\.options' has unknown entries \[\"'speed'\"\]"]),
    "source checkpoint empty": (lambda m, a: m["source"].update(checkpoint=""),     # Path("") is ".", a directory
                                [r"'source\.checkpoint' must be the path of the checkpoint the model was compiled "
                                 r"from, not ''"]),
}


def _negative_zero(arrays, key, bits):
    packed = arrays[key].copy()
    fields = fmt.unpack_fields(packed, bits, packed.size * 8 // bits)
    i = int(np.flatnonzero(fields == 0)[0])      # a zero weight: set its sign bit
    bit = i * bits + bits - 1
    packed[bit // 8] |= 1 << (bit % 8)
    arrays[key] = packed


def _unsort(arrays, key):
    t = arrays[key].copy()
    n = int(np.flatnonzero(t[:, 0] < t[:, -1])[0])
    t[n] = t[n][::-1]
    arrays[key] = t


@pytest.mark.parametrize("case", CASES)
def test_each_class_of_damage_is_named(case, tmp_path):
    edit, patterns = CASES[case]
    path = edited(tmp_path, edit)
    t0 = time.perf_counter()
    rejected(path, *patterns, "recompile it with `lcq compile")
    assert time.perf_counter() - t0 < 2.0


def test_residual_graph_rules(tmp_path):
    manifest, _ = members(RESNET)
    add = next(i for i, n in enumerate(manifest["nodes"]) if n["op"] == "add")
    act = next(i for i, n in enumerate(manifest["nodes"]) if n["op"] == "activate")

    def scale(m, a):
        m["scales"][m["nodes"][add]["inputs"][0]] *= 2
        m["nodes"][add - 1]["out_scale"] *= 2       # the conv whose output is added
    rejected(edited(tmp_path, scale, RESNET), rf"node {add} \(add 'blocks\.0\.add'\).*scales differ")
    rejected(edited(tmp_path, setfield(add, inputs=["conv1", "blocks.0.act1"]), RESNET),
             r"'inputs\[1\]' tensor 'blocks\.0\.act1' must be values")
    rejected(edited(tmp_path, setitem(f"nodes/{act}/stage/thresholds", (0, 0), -2**61), RESNET),
             rf"node {act} \(activate 'blocks\.0\.act1'\).*'stage\.thresholds' \[0, 0\].*out of range")
    rejected(edited(tmp_path, setfield(act, stage=None), RESNET), r"'stage' must be thresholds, not None")


# --------------------------------------------------------------------------- the zip and the .npy members


def test_duplicate_members_are_rejected(tmp_path):
    entries = raw_members(DIGITS)
    levels = next(e for e in entries if e[0] == "nodes/1/w_levels.npy")
    changed = fmt._npy(np.arange(256, dtype=np.int32))       # the second copy would win in np.load
    for second in (levels[1], changed):
        with pytest.warns(UserWarning, match="Duplicate name"):
            path = write_raw(tmp_path / "dup.lcq", [*entries, (levels[0], second)])
        rejected(path, r"the zip holds 2 members named 'nodes/1/w_levels\.npy'")


def test_npy_header_claiming_a_huge_shape_fails_fast_without_allocating(tmp_path):
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1125899906842624,), }"   # 2^50 elements
    header += " " * (118 - len(header)) + "\n"
    bomb = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(80)
    for key in ("nodes/5/stage/multiplier.npy", "manifest.json.npy"):
        entries = [(n, bomb if n == key else d) for n, d in raw_members(DIGITS)]
        path = write_raw(tmp_path / "huge.lcq", entries)
        tracemalloc.start()
        t0 = time.perf_counter()
        rejected(path)
        seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seconds < 2.0 and peak < 32 << 20


def test_manifest_declaring_a_huge_array_fails_fast(tmp_path):
    def huge(m, a):
        m["nodes"][5]["stage"]["shift"]["shape"] = [2**50]
    tracemalloc.start()
    rejected(edited(tmp_path, huge), r"'stage\.shift' is declared 'int64' \[1125899906842624\], the layer needs")
    assert tracemalloc.get_traced_memory()[1] < 32 << 20
    tracemalloc.stop()


def test_a_model_declaring_more_array_bytes_than_a_file_holds_fails_before_reading(tmp_path):
    """Fields that chain into a model of 64 MiB of weights (each array under the old 1 GiB limit per array)."""
    def wide(m, a):
        m["nodes"][3]["out_shape"][0] = 1024                  # conv2 -> pool act_fc -> fc: 1024 channels
        m["nodes"][5]["in_shape"][0] = 1024
        m["nodes"][5]["out_shape"][0] = m["num_classes"] = 65536
    tracemalloc.start()
    rejected(edited(tmp_path, wide), r"the model's arrays take 70900660 bytes, more than the 33554432 bytes a model "
                                     r"file holds")
    assert tracemalloc.get_traced_memory()[1] < 32 << 20
    tracemalloc.stop()


def test_save_refuses_the_model_load_would_refuse_for_its_size(tmp_path, monkeypatch):
    model = fmt.load(DIGITS)
    monkeypatch.setattr(fmt, "MAX_MODEL_BYTES", 100_000)        # the digits model's arrays take 147,172 bytes
    with pytest.raises(fmt.ModelFormatError, match=r"the model's arrays take 147172 bytes, more than the 100000"):
        fmt.save(model, tmp_path / "big.lcq")
    assert not (tmp_path / "big.lcq").exists()
    rejected(DIGITS, r"the model's arrays take 147172 bytes, more than the 100000 bytes a model file holds")


def test_a_huge_manifest_fails_before_it_is_parsed(tmp_path):
    """16 MiB of JSON would take ~24 times that as Python objects: refused from its size (the ResNet-20's: 35 KB)."""
    blob = fmt._npy(np.frombuffer(b"[" + b"{}," * (6 << 20) + b"{}]", np.uint8))
    path = write_raw(tmp_path / "m.lcq", [(n, blob if n == "manifest.json.npy" else d) for n, d in raw_members(DIGITS)])
    tracemalloc.start()
    rejected(path, r"manifest\.json\.npy' holds 18874\d{3} bytes, more than the 16777216 bytes a manifest may hold")
    assert tracemalloc.get_traced_memory()[1] < 64 << 20
    tracemalloc.stop()


def _patch_central_sizes(path, name, file_size=None, compress_size=None):
    """Change the sizes a zip's central directory states for member ``name``."""
    data = bytearray(path.read_bytes())
    key = name.encode()
    for pos in (m.start() for m in re.finditer(b"PK\x01\x02", data)):
        if data[pos + 46:pos + 46 + len(key)] == key and int.from_bytes(data[pos + 28:pos + 30], "little") == len(key):
            if compress_size is not None:
                data[pos + 20:pos + 24] = compress_size.to_bytes(4, "little")
            if file_size is not None:
                data[pos + 24:pos + 28] = file_size.to_bytes(4, "little")
            path.write_bytes(bytes(data))
            return
    raise AssertionError(name)


def test_member_sizes_are_bounded_before_reading(tmp_path):
    path = tmp_path / "m.lcq"
    shutil.copy(DIGITS, path)
    _patch_central_sizes(path, "nodes/4/stage/thresholds.npy", file_size=2**31 - 1)
    rejected(path, r"member 'nodes/4/stage/thresholds\.npy' holds 2147483647 bytes, not an \.npy of <i8 \[64, 255\]")
    shutil.copy(DIGITS, path)
    _patch_central_sizes(path, "nodes/4/stage/thresholds.npy", compress_size=20)
    rejected(path, r"claims 130688 bytes, more than its 20 compressed bytes can hold")


def test_broken_deflate_stream_is_a_format_error(tmp_path):
    data = bytearray(DIGITS.read_bytes())
    with zipfile.ZipFile(DIGITS) as z:
        info = z.getinfo("nodes/4/stage/thresholds.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start] |= 0b110                        # block type 3: reserved, zlib.error
    path = tmp_path / "m.lcq"
    path.write_bytes(bytes(data))
    rejected(path, r"not a readable compiled model \(error: .*invalid block type")


def test_manifest_json_must_be_strict(tmp_path):
    manifest, arrays = members(DIGITS)
    text = json.dumps(manifest)
    for bad, pattern in ((text.replace('"format": ', '"logits": "x", "format": ', 1), r"'logits' appears twice"),
                         (text.replace('"scale": 2', '"scale": NaN, "x": 2', 1), r"NaN is not a JSON number"),
                         (text.replace('"epoch": 30', '"epoch": ' + "9" * 5000, 1), r"not valid JSON"),
                         (re.sub(r'"test_top1": [0-9.]+', '"test_top1": 1e400', text), r"1e400 is beyond a float"),
                         ("[" * 100000 + "]" * 100000, r"not valid JSON|not an lcq")):
        entries = [(n, fmt._npy(np.frombuffer(bad.encode(), np.uint8)) if n == "manifest.json.npy" else d)
                   for n, d in raw_members(DIGITS)]
        rejected(write_raw(tmp_path / "j.lcq", entries), pattern)


# --------------------------------------------------------------------------- the digest: damage is detected


def test_edits_without_a_new_digest_are_detected(tmp_path):
    manifest, arrays = members(DIGITS)
    text = json.dumps(manifest, indent=1)
    entries = raw_members(DIGITS)
    manifest_bytes = dict(entries)["manifest.json.npy"]

    def variant(manifest_text=None, key=None, array=None):
        out = []
        for n, d in entries:
            if n == "manifest.json.npy" and manifest_text is not None:
                d = fmt._npy(np.frombuffer(manifest_text.encode(), np.uint8))
            if n == f"{key}.npy":
                d = fmt._npy(array)
            out.append((n, d))
        return write_raw(tmp_path / "d.lcq", out)

    scale = json.dumps(manifest["scales"]["conv2"])
    damaged = r"is damaged: its contents do not match the SHA-256 digest"
    rejected(variant(text.replace(scale, json.dumps(manifest["scales"]["conv2"] * 2))), damaged)
    t = arrays["nodes/2/stage/thresholds"].copy()
    t[5, 3] += 1                                          # still a valid model: only the digest can tell
    rejected(variant(key="nodes/2/stage/thresholds", array=t), damaged)
    # what the digest leaves out cannot change the model: the manifest's layout, the zip's metadata
    reformatted = variant(json.dumps(json.loads(text), indent=4, sort_keys=True))
    assert same(fmt.load(reformatted), fmt.load(DIGITS))
    assert manifest_bytes != dict(raw_members(reformatted))["manifest.json.npy"]


def _flip_outcome(path, original) -> str:
    """"detected" (a ModelFormatError naming the file) or "harmless" (the identical model); anything else fails."""
    try:
        loaded = fmt.load(path)
    except fmt.ModelFormatError as e:
        assert str(path) in str(e)
        return "digest" if "SHA-256 digest" in str(e) else "detected"
    assert same(loaded, original)
    return "harmless"


def test_random_bit_flips_of_the_file_are_detected_or_harmless(tmp_path):
    """A flipped bit anywhere in the file (seeded offsets, the zip directory included; ~2 s)."""
    data = DIGITS.read_bytes()
    original = fmt.load(DIGITS)
    rng = np.random.default_rng(20240601)
    path = tmp_path / "flip.lcq"
    outcomes = []
    offsets = list(rng.integers(0, len(data), 90)) + list(rng.integers(len(data) - 3000, len(data), 30))
    for offset in offsets:
        damaged = bytearray(data)
        damaged[int(offset)] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        outcomes.append(_flip_outcome(path, original))
    assert outcomes.count("harmless") < 20


def test_random_bit_flips_of_the_contents_are_detected_or_harmless(tmp_path):
    """A flipped bit in a member's contents, re-zipped with a valid CRC (so only the loader can tell; ~1.5 s)."""
    entries = raw_members(DIGITS)
    original = fmt.load(DIGITS)
    rng = np.random.default_rng(7)
    path = tmp_path / "flip.lcq"
    outcomes = []
    for _ in range(60):
        i = int(rng.integers(len(entries)))
        name, data = entries[i]
        damaged = bytearray(data)
        damaged[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        write_raw(path, [*entries[:i], (name, bytes(damaged)), *entries[i + 1:]])
        outcomes.append(_flip_outcome(path, original))
    assert outcomes.count("digest") > 20 and outcomes.count("harmless") < 5


# --------------------------------------------------------------------------- writer and reader share the rules


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = fmt.load(DIGITS)
    model.nodes[4].frac_bits = 30
    with pytest.raises(ModelRuleError, match=r"node 4 \(pool 'act_fc'\): field 'frac_bits' = 30 is out of range; "
                                             r"allowed 0\.\.24"):
        fmt.save(model, tmp_path / "bad.lcq")
    assert not (tmp_path / "bad.lcq").exists()
    model = fmt.load(DIGITS)
    model.nodes[2].a_levels = model.nodes[2].a_levels.copy()
    model.nodes[2].a_levels[0] = 3
    with pytest.raises(ModelRuleError, match=r"'a_levels' \[0\] = 3; must be 0"):
        fmt.save(model, tmp_path / "bad.lcq")


def test_loaded_model_runs_as_the_saved_one(tmp_path):
    model = fmt.load(RESNET)
    path = tmp_path / "again.lcq"
    fmt.save(model, path)
    again = fmt.load(path)
    assert same(model, again)
    fmt.save(again, tmp_path / "twice.lcq")                 # the writer is deterministic
    assert (tmp_path / "twice.lcq").read_bytes() == path.read_bytes()
    assert fmt.digest(*_digest_inputs(path)) == members(path)[0]["sha256"]
    x = np.random.default_rng(3).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(run(model, x)["logits"], run(again, x)["logits"])


def _digest_inputs(path):
    manifest, _ = members(path)
    return manifest, {n[:-4]: d for n, d in raw_members(path) if n != "manifest.json.npy"}


def test_cli_prints_the_error_without_a_traceback(tmp_path, capsys):
    from lcq.cli import main

    path = edited(tmp_path, setfield(2, stride=0))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq report: error: {path}: node 2 (conv 'conv1'): field 'stride' = 0")
    assert "Traceback" not in err
    path.write_bytes(DIGITS.read_bytes()[:5000])
    assert main(["report", str(path)]) == 2
    assert "not a readable compiled model" in capsys.readouterr().err


def test_npy_members_stay_readable_with_numpy_alone(tmp_path):
    with np.load(DIGITS) as npz:
        assert npz["nodes/2/lut"].shape == (3, 7)
        manifest = json.loads(bytes(npz["manifest.json"]).decode())
    assert manifest["nodes"][2]["lut"] == {"array": "nodes/2/lut", "dtype": "uint16", "shape": [3, 7]}
