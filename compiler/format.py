"""The compiled-model file: a zip of ``manifest.json`` and named arrays, sealed by a SHA-256 digest.

Readable with numpy alone (``np.load`` opens it; no PyTorch). Layout, version 2:

- A zip of deflate-compressed members, each named once: ``manifest.json.npy``
  and one ``KEY.npy`` per array, all ``.npy`` format 1.0, little-endian, C order.
- ``manifest.json`` (a uint8 array of UTF-8 JSON): ``format`` =
  "lcq-compiled-model", ``version``, ``num_classes``, ``logits`` (output
  tensor), ``source`` (checkpoint, sha256, plan, compile options), ``scales``
  (real value of one unit of each value tensor), ``nodes`` in execution
  order and ``sha256`` (see :func:`digest`). A node is a dict of its scalar
  fields; each array field is a reference ``{"array": KEY, "dtype": ...,
  "shape": [...]}`` to a member, ``KEY = nodes/<i>/<field>`` (``nodes/<i>/stage/<field>``
  for the output stage), of the dtype :data:`ARRAY_DTYPES` gives.
- Conv weights: ``weights`` is the bit stream of ``C_out * C_in * kh * kw``
  fields of ``wbits`` bits (order out, in, ky, kx; each field
  ``sign << (wbits - 1) | k``, sign 1 for negative and never with k = 0; LSB
  first in each byte; the last byte's unused bits 0).
- LUT (``mac`` = "lut"): ``lut`` ``(s_w, s_a)`` unsigned (uint16, or uint32
  when an entry needs it), ``L[k-1][j-1] = W[k] * A[j]``, k-major: the ROM
  image the hardware reads; ``lut_bits``. ``acc_bits``: the accumulator width.
- Output ``stage``: ``{"kind": "thresholds", "thresholds", "descending", "bits"}``
  or ``{"kind": "requantize", "multiplier", "bias", "shift"}`` (see
  :mod:`compiler.graph`); flags (``descending``, ``relu``) are uint8 0 or 1.
- Max pooling (``op`` "maxpool"): scalar fields only (``kernel``, ``stride``,
  ``padding``), no arrays. Average pooling (``op`` "avgpool"): a pool node's
  fields plus ``kernel``, ``stride`` and ``"padding": P`` (an int, written only where not 0), then the
  array ``outside`` (int64, a term per channel outside the map). A pool or average pooling node of a
  ReLU6's output has the array ``cap`` (int64, a clip per channel); without it,
  none (:data:`OPTIONAL_ARRAYS`). Channel concatenation (``op``
  "concat"): ``inputs``, a list of tensor names, no arrays. Subsampling (``op`` "subsample", an option-A
  shortcut): ``stride``, no arrays; its addition's ``"b_offset": C`` (an int, written only where not 0: the
  channel of the sum that the shortcut's first adds to). A file without them
  is laid out as before they existed.
- Flags (:data:`FLAG_FIELDS`): ``"relu": true`` on an add node or a
  requantize stage that applies a ReLU, ``"flat": true`` on an input node whose
  codes are the image's pixels as one vector, ``"signed_input": true`` on a conv
  node that reads a signed activation as its positive and negative halves,
  ``"minimum": true`` on a max-pool node that takes each window's smallest code;
  absent otherwise (never ``false``), so a file without one is laid out as
  before they existed.

:func:`save` checks the model against the rules of :mod:`compiler.graph`
before it writes. :func:`load` accepts only what :func:`save` can write: each
member named once and none unexpected, every field and array exactly as
specified (each ``.npy`` header is checked against the manifest, and member
sizes against their compressed size, before any data is read; both refuse
a model whose arrays take more than :data:`MAX_MODEL_BYTES`), the digest
(so any damage to the contents is detected), and then the same rules of
:mod:`compiler.graph`. Every failure is a :class:`ModelFormatError` naming the
file and, where one is to blame, the node, the field and what is allowed.
Version 1 files (written without a digest) are refused with the advice to
recompile.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from .graph import (FORMAT, MAX_NODES, VERSION, ActivateNode, AddNode, AvgPoolNode, CompiledModel, ConcatNode, ConvNode,
                    InputNode, MaxPoolNode, ModelRuleError, PoolNode, Requantize, SubsampleNode, Thresholds, act_scale,
                    node_where, show, weight_scale)

MANIFEST = "manifest.json"
CHECKPOINT_MAGIC = b"LCQCKPT\n"   # lcq_train.checkpoint.MAGIC (not imported: that module needs torch, this one not)
DIGEST_FIELD = "sha256"
MAX_MANIFEST_BYTES = 16 << 20  # the ResNet-20's is 35 KB; parsed JSON takes up to ~24 times its bytes
MAX_MODEL_BYTES = 32 << 20     # all arrays of a file as stored (ResNet-20: 285 KB); load peaks at ~10-25 times this
DEFLATE_MAX_RATIO = 1032      # deflate expands at most ~1032:1, so a member's stated size is bounded by its stored size
NPY_MAGIC = b"\x93NUMPY\x01\x00"
NPY_MAX_HEADER = 65535

#: File dtype of every array field (what :func:`save` writes and :func:`load` requires).
ARRAY_DTYPES = {"table": "|u1", "weights": "|u1", "w_levels": "<i4", "a_levels": "<i4", "lut": ("<u2", "<u4"),
                "thresholds": "<i8", "descending": "|u1", "multiplier": "<i8", "bias": "<i8", "shift": "<i8",
                "sign": "|i1", "relu": "|u1", "offset": "<i8", "cap": "<i8", "outside": "<i8"}
#: Fields of the manifest, of each node by op, and of each output stage by kind.
TOP_FIELDS = ("format", "version", "num_classes", "logits", "source", "scales", "nodes", DIGEST_FIELD)
NODE_FIELDS = {
    "input": ("op", "output", "shape", "bits", "table"),
    "conv": ("op", "name", "input", "output", "kind", "in_shape", "out_shape", "kernel", "stride", "padding", "wbits",
             "abits", "outer_wbits", "outer_abits", "mac", "acc_bits", "scale", "out_scale", "weights", "w_levels",
             "a_levels", "stage"),
    "activate": ("op", "name", "input", "output", "stage"),
    "add": ("op", "name", "inputs", "output"),
    "pool": ("op", "name", "input", "output", "frac_bits", "sign", "relu", "offset", "stage"),
    "avgpool": ("op", "name", "input", "output", "frac_bits", "sign", "relu", "offset", "stage", "kernel", "stride"),
    "maxpool": ("op", "name", "input", "output", "kernel", "stride", "padding"),
    "concat": ("op", "name", "inputs", "output"),
    "subsample": ("op", "name", "input", "output", "stride"),
}
LUT_FIELDS = ("lut", "lut_bits")      # conv nodes with mac "lut" only
STAGE_FIELDS = {"thresholds": ("kind", "bits", "thresholds", "descending"),
                "requantize": ("kind", "multiplier", "bias", "shift")}
#: Optional arrays by node op: a reference where the node has the array, left out where not (None).
OPTIONAL_ARRAYS = {"pool": ("cap",), "avgpool": ("cap", "outside")}
#: Optional scalar fields by node op: written where not 0, left out where 0.
OPTIONAL_FIELDS = {"add": ("b_offset",), "avgpool": ("padding",)}
#: Optional flags by node op or stage kind: written as ``true`` where set, left out where not.
FLAG_FIELDS = {"input": ("flat",), "conv": ("signed_input",), "add": ("relu",), "requantize": ("relu",),
               "maxpool": ("minimum",)}


class ModelFormatError(ValueError):
    """A compiled-model file is not readable, of another version, damaged, or breaks a rule."""


def pack_fields(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``values`` < 2^bits (bits <= 8) into a little-endian bit stream (uint8).

    Works in uint8 throughout: ``bits`` + 1 bytes per value at most.
    """
    values = np.asarray(values, dtype=np.uint8).reshape(-1, 1)
    return np.packbits(np.unpackbits(values, axis=1, count=bits, bitorder="little"), bitorder="little")


def unpack_fields(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`: ``count`` unsigned fields (uint8), ``bits`` + 1 bytes per field at most."""
    stream = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return np.packbits(stream, axis=1, bitorder="little").reshape(count)


def encode_weights(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes ``sgn * k`` -> packed sign-magnitude fields."""
    codes = np.asarray(codes).reshape(-1)
    fields = np.abs(codes).astype(np.uint8)
    fields[codes < 0] |= np.uint8(1 << (bits - 1))
    return pack_fields(fields, bits)


def decode_weights(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Packed sign-magnitude fields -> signed codes (int8) of ``shape``."""
    fields = unpack_fields(packed, bits, math.prod(shape))
    codes = (fields & np.uint8((1 << (bits - 1)) - 1)).astype(np.int8)
    np.negative(codes, out=codes, where=fields >> (bits - 1) == 1)
    return codes.reshape(shape)


def lut_dtype(lut: np.ndarray) -> str:
    """The dtype the file stores a LUT in: uint16, or uint32 where an entry needs it."""
    return ARRAY_DTYPES["lut"][0] if lut.size == 0 or lut.max() < 2**16 else ARRAY_DTYPES["lut"][1]


def _file_array(name: str, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype(ARRAY_DTYPES[name]))


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def digest(manifest: dict, members: dict[str, bytes]) -> str:
    """SHA-256 (hex) of a model file's contents, the ``sha256`` field of its manifest.

    It covers the canonical JSON (sorted keys, no spaces, ASCII) of ``manifest``
    without its ``sha256`` field, and every array member's ``.npy`` bytes
    (``members``: key -> bytes, taken in sorted order, each with its key and
    length). What it leaves out (zip headers, timestamps, compression, the
    manifest's whitespace) does not change the loaded model.
    """
    h = hashlib.sha256(f"{FORMAT} {VERSION}\n".encode())
    body = _canonical({k: v for k, v in manifest.items() if k != DIGEST_FIELD})
    h.update(len(body).to_bytes(8, "little") + body)
    for key in sorted(members):
        name = key.encode()
        h.update(len(name).to_bytes(8, "little") + name + len(members[key]).to_bytes(8, "little"))
        h.update(members[key])
    return h.hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- save


class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def ref(self, key: str, name: str, array: np.ndarray, dtype: str | None = None) -> dict:
        array = np.ascontiguousarray(array, dtype=np.dtype(dtype)) if dtype else _file_array(name, array)
        self.arrays[key] = array
        return {"array": key, "dtype": array.dtype.name, "shape": list(array.shape)}

    def stage(self, prefix: str, stage) -> dict | None:
        if stage is None:
            return None
        if isinstance(stage, Thresholds):
            return {"kind": "thresholds", "bits": int(stage.bits),
                    "thresholds": self.ref(f"{prefix}/thresholds", "thresholds", stage.thresholds),
                    "descending": self.ref(f"{prefix}/descending", "descending", stage.descending)}
        return {"kind": "requantize", **{k: self.ref(f"{prefix}/{k}", k, getattr(stage, k))
                                         for k in ("multiplier", "bias", "shift")}, **_flags(stage, "requantize")}

    def node(self, i: int, node) -> dict:
        p = f"nodes/{i}"
        if isinstance(node, InputNode):
            return {"op": "input", "output": node.output, "shape": [int(v) for v in node.shape], "bits": int(node.bits),
                    "table": self.ref(f"{p}/table", "table", node.table), **_flags(node, "input")}
        if isinstance(node, ConvNode):
            d = {"op": "conv", "name": node.name, "input": node.input, "output": node.output, "kind": node.kind,
                 "in_shape": [int(v) for v in node.in_shape], "out_shape": [int(v) for v in node.out_shape],
                 **{k: int(getattr(node, k)) for k in ("kernel", "stride", "padding", "wbits", "abits",
                                                       "outer_wbits", "outer_abits")},
                 "mac": node.mac, "acc_bits": node.acc_bits, "scale": float(node.scale),
                 "out_scale": None if node.out_scale is None else float(node.out_scale),
                 "weights": self.ref(f"{p}/weights", "weights", encode_weights(node.weight_codes, node.wbits)),
                 "w_levels": self.ref(f"{p}/w_levels", "w_levels", node.w_levels),
                 "a_levels": self.ref(f"{p}/a_levels", "a_levels", node.a_levels),
                 "stage": self.stage(f"{p}/stage", node.stage), **_flags(node, "conv")}
            if node.mac == "lut":
                lut = node.lut()
                d["lut"] = self.ref(f"{p}/lut", "lut", lut, lut_dtype(lut))
                d["lut_bits"] = int(lut.max()).bit_length() if lut.size else 0
            return d
        if isinstance(node, ActivateNode):
            return {"op": "activate", "name": node.name, "input": node.input, "output": node.output,
                    "stage": self.stage(f"{p}/stage", node.stage)}
        if isinstance(node, AddNode):
            return {"op": "add", "name": node.name, "inputs": list(node.inputs), "output": node.output,
                    **_flags(node, "add"), **({"b_offset": int(node.b_offset)} if node.b_offset else {})}
        if isinstance(node, PoolNode):
            window = {k: int(getattr(node, k)) for k in ("kernel", "stride")} if node.op == "avgpool" else {}
            if node.op == "avgpool" and node.padding:
                window.update(padding=int(node.padding), outside=self.ref(f"{p}/outside", "outside", node.outside))
            return {"op": node.op, "name": node.name, "input": node.input, "output": node.output,
                    "frac_bits": int(node.frac_bits), "sign": self.ref(f"{p}/sign", "sign", node.sign),
                    "relu": self.ref(f"{p}/relu", "relu", node.relu),
                    "offset": self.ref(f"{p}/offset", "offset", node.offset),
                    "stage": self.stage(f"{p}/stage", node.stage), **window,
                    **({} if node.cap is None else {"cap": self.ref(f"{p}/cap", "cap", node.cap)})}
        if isinstance(node, MaxPoolNode):
            return {"op": "maxpool", "name": node.name, "input": node.input, "output": node.output,
                    **{k: int(getattr(node, k)) for k in ("kernel", "stride", "padding")}, **_flags(node, "maxpool")}
        if isinstance(node, ConcatNode):
            return {"op": "concat", "name": node.name, "inputs": list(node.inputs), "output": node.output}
        if isinstance(node, SubsampleNode):
            return {"op": "subsample", "name": node.name, "input": node.input, "output": node.output,
                    "stride": int(node.stride)}
        raise TypeError(f"cannot save node {node!r}")


def _flags(obj, kind: str) -> dict:
    """The :data:`FLAG_FIELDS` of ``kind`` that ``obj`` sets, as ``{name: True}``."""
    return {name: True for name in FLAG_FIELDS.get(kind, ()) if getattr(obj, name)}


def save(model: CompiledModel, path: str | Path) -> None:
    """Check ``model`` against the rules of :mod:`compiler.graph`, then write it to ``path`` atomically."""
    model.validate()
    writer = _Writer()
    manifest = {"format": FORMAT, "version": VERSION, "num_classes": int(model.num_classes), "logits": model.logits,
                "source": model.source, "scales": {k: float(v) for k, v in model.scales.items()},
                "nodes": [writer.node(i, node) for i, node in enumerate(model.nodes)]}
    problem = _too_large(sum(a.nbytes for a in writer.arrays.values()))
    if problem:
        raise ModelFormatError(f"{path}: {problem}; compile a smaller model (fewer channels or layers)")
    write_members(path, manifest, writer.arrays)


def _too_large(array_bytes: int) -> str | None:
    """Why a model whose arrays take ``array_bytes`` (as stored) is not written or read; None if it fits."""
    if array_bytes > MAX_MODEL_BYTES:
        return f"the model's arrays take {array_bytes} bytes, more than the {MAX_MODEL_BYTES} bytes a model file holds"
    return None


def write_members(path: str | Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``manifest`` (its ``sha256`` field set to the :func:`digest` of it all) and ``arrays`` as a model file.

    The low level of :func:`save`, which checks nothing: arrays are written as
    they are (for tools and tests that build or edit files).
    """
    from lcq_train.atomic import atomic_write  # here: loading a model (the host runtime) imports no trainer module

    members = {key: _npy(array) for key, array in arrays.items()}
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != DIGEST_FIELD}, allow_nan=False))
    manifest[DIGEST_FIELD] = digest(manifest, members)
    blob = _npy(np.frombuffer(json.dumps(manifest, indent=1, allow_nan=False).encode(), dtype=np.uint8))

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in [(MANIFEST, blob), *members.items()]:
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                z.writestr(info, data)

    atomic_write(path, write)


# --------------------------------------------------------------------------- load


def _unique_keys(pairs: list) -> dict:
    d = {}
    for key, value in pairs:
        if key in d:
            raise ValueError(f"key {show(key)} appears twice in one object")
        d[key] = value
    return d


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):      # 1e400: the writer writes no inf, and the digest could not encode it
        raise ValueError(f"the number {text[:40]} is beyond a float")
    return value


class _Reader:
    """One file being loaded: the zip, its members, and the array references met in the manifest."""

    def __init__(self, path: Path, zf: zipfile.ZipFile):
        self.path, self.zip = path, zf
        self.refs: dict[str, tuple[str, str, dict]] = {}   # key -> (where, field, reference)
        self.infos: dict[str, zipfile.ZipInfo] = {}

    def error(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {what}; recompile it with `lcq compile CHECKPOINT -o {self.path}`")

    # ---- the zip and its members

    def members(self) -> None:
        for info in self.zip.infolist():
            if info.filename in self.infos:
                count = sum(i.filename == info.filename for i in self.zip.infolist())
                raise self.error(f"the zip holds {count} members named {show(info.filename)}; a model file names each "
                                 "member once")
            self.infos[info.filename] = info

    def member(self, key: str, where: str, dtype: str, shape: tuple | None) -> tuple[np.ndarray, bytes]:
        """Array ``key`` (and its .npy bytes) after checking its size and header against ``dtype`` and ``shape``.

        ``shape`` None: a 1-D array (the manifest) of at most MAX_MANIFEST_BYTES.
        """
        name = f"{key}.npy"
        info = self.infos.get(name)
        if info is None:
            raise self.error(f"{where}: array {key!r} is missing")
        if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_DEFLATED:
            raise self.error(f"{where}: member {name!r} is encrypted or not deflate-compressed")
        size = np.dtype(dtype).itemsize
        most = MAX_MANIFEST_BYTES if shape is None else math.prod(shape) * size
        if shape is None and info.file_size > most + 10 + NPY_MAX_HEADER:
            raise self.error(f"member {name!r} holds {info.file_size} bytes, more than the {most} bytes a manifest "
                             "may hold")
        if not 10 < info.file_size <= most + 10 + NPY_MAX_HEADER or (shape is not None and info.file_size <= most + 10):
            raise self.error(f"{where}: member {name!r} holds {info.file_size} bytes, not an .npy of {dtype} "
                             f"{'bytes' if shape is None else list(shape)}")
        if info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 64:
            raise self.error(f"{where}: member {name!r} claims {info.file_size} bytes, more than its "
                             f"{info.compress_size} compressed bytes can hold")
        with self.zip.open(info) as f:
            prefix = f.read(10)
            if len(prefix) != 10 or prefix[:8] != NPY_MAGIC:
                raise self.error(f"{where}: member {name!r} is not an .npy array of format 1.0")
            hlen = int.from_bytes(prefix[8:], "little")
            nbytes = info.file_size - 10 - hlen
            if shape is None:
                shape = (nbytes,)
            if nbytes < 0 or nbytes != math.prod(shape) * size:
                raise self.error(f"{where}: member {name!r} holds {info.file_size} bytes, not an .npy of {dtype} "
                                 f"{list(shape)}")
            header = f.read(hlen)
            got_shape, fortran, got = np.lib.format.read_array_header_1_0(io.BytesIO(prefix[8:] + header),
                                                                           max_header_size=NPY_MAX_HEADER)
            if got.str != dtype or tuple(got_shape) != tuple(shape) or fortran:
                raise self.error(f"{where}: array {key!r} is {got.str} {show(list(got_shape))}"
                                 f"{' (Fortran order)' if fortran else ''}, the manifest says {dtype} {list(shape)}")
            data = f.read(nbytes)
            if len(data) != nbytes or f.read(1):
                raise self.error(f"{where}: array {key!r} is truncated")
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy(), prefix + header + data

    def manifest(self) -> dict:
        if f"{MANIFEST}.npy" not in self.infos:
            raise ModelFormatError(f"{self.path} is not a readable compiled model (the zip has no {MANIFEST}): "
                                   f"recompile it with `lcq compile CHECKPOINT -o {self.path}`")
        blob, _ = self.member(MANIFEST, MANIFEST, "|u1", None)
        try:
            manifest = json.loads(blob.tobytes().decode("utf-8"), object_pairs_hook=_unique_keys,
                                  parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as e:
            raise self.error(f"{MANIFEST} is not valid JSON ({str(e)[:200]})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise self.error(f"not an {FORMAT} file")
        version = manifest.get("version")
        if type(version) is not int or version != VERSION:      # not 2.0 or True: the writer writes the int
            old = " (written before model files carried a SHA-256 digest)" if type(version) is int and version == 1 \
                else ""
            newer = "update lcq (pip install -U), or " if type(version) is int and version > VERSION else ""
            raise ModelFormatError(f"{self.path} has format version {show(version)}{old}; this lcq reads version "
                                   f"{VERSION}: {newer}recompile it with `lcq compile CHECKPOINT -o {self.path}`")
        self.fields(manifest, "manifest", TOP_FIELDS)
        if not isinstance(manifest[DIGEST_FIELD], str) or not re.fullmatch(r"[0-9a-f]{64}", manifest[DIGEST_FIELD]):
            raise self.error(f"manifest: field {DIGEST_FIELD!r} must be 64 hex digits, not "
                             f"{show(manifest[DIGEST_FIELD])}")
        return manifest

    # ---- the manifest's nodes (scalars and array references; no array is read here)

    def fields(self, d, where: str, names: tuple, flags: tuple = ()) -> dict[str, bool]:
        """Check that ``d`` has exactly ``names`` plus any of ``flags`` (each ``true`` where present);
        returns every flag, False where absent."""
        if not isinstance(d, dict):
            raise self.error(f"{where}: must be a JSON object, not {show(d)}")
        for name in names:
            if name not in d:
                raise self.error(f"{where}: field {name!r} is missing")
        for name in d:
            if name not in names and name not in flags:
                raise self.error(f"{where}: unknown field {show(name)}")
            if name in flags and d[name] is not True:
                raise self.error(f"{where}: field {name!r} = {show(d[name])}; it is written only as true (left out "
                                 "where false)")
        return {name: name in d for name in flags}

    def ref(self, d: dict, name: str, where: str, key: str, prefix: str = "") -> str:
        ref = d[name]
        if not isinstance(ref, dict) or set(ref) != {"array", "dtype", "shape"} or ref["array"] != key \
                or not isinstance(ref["dtype"], str) or not isinstance(ref["shape"], list):
            raise self.error(f"{where}: field {prefix + name!r} must be a reference "
                             f"{{\"array\": {key!r}, \"dtype\": ..., \"shape\": [...]}}, not {show(ref)}")
        self.refs[key] = (where, prefix + name, ref)
        return key

    def stage(self, d, where: str, key: str):
        if d is None:
            return None
        kind = d.get("kind") if isinstance(d, dict) else None
        if not isinstance(kind, str) or kind not in STAGE_FIELDS:
            raise self.error(f"{where}: field 'stage' must be null or a thresholds or requantize stage, not {show(d)}")
        flags = self.fields(d, f"{where} stage", STAGE_FIELDS[kind], FLAG_FIELDS.get(kind, ()))
        refs = [self.ref(d, name, where, f"{key}/{name}", "stage.") for name in STAGE_FIELDS[kind][1:]
                if name != "bits"]
        return Thresholds(*refs, d["bits"]) if kind == "thresholds" else Requantize(*refs, **flags)

    def node(self, i: int, d) -> object:
        op = d.get("op") if isinstance(d, dict) else None
        if not isinstance(op, str) or op not in NODE_FIELDS:
            raise self.error(f"node {i}: field 'op' must be one of {', '.join(map(repr, NODE_FIELDS))}, not "
                             f"{show(op if isinstance(d, dict) else d)}")
        where = f"node {i} ({op} {show(d.get('name', d.get('output')))})"
        present = tuple(name for name in OPTIONAL_ARRAYS.get(op, ()) + OPTIONAL_FIELDS.get(op, ())
                        if isinstance(d, dict) and name in d)
        flags = self.fields(d, where, NODE_FIELDS[op] + (LUT_FIELDS if op == "conv" and d.get("mac") == "lut" else ())
                            + present, FLAG_FIELDS.get(op, ()))
        for name in OPTIONAL_FIELDS.get(op, ()):
            if name in present and type(d[name]) is int and d[name] == 0:
                raise self.error(f"{where}: field {name!r} = 0; it is written only where not 0 (left out where 0)")
        p = f"nodes/{i}"
        if op == "input":
            return InputNode(d["output"], d["shape"], self.ref(d, "table", where, f"{p}/table"), d["bits"], **flags)
        if op == "conv":
            refs = [self.ref(d, name, where, f"{p}/{name}") for name in ("weights", "w_levels", "a_levels")]
            if "lut" in d:
                self.ref(d, "lut", where, f"{p}/lut")
            return ConvNode(d["name"], d["input"], d["output"], d["kind"], d["in_shape"], d["out_shape"], d["kernel"],
                            d["stride"], d["padding"], d["wbits"], d["abits"], d["outer_wbits"], d["outer_abits"],
                            d["mac"], *refs, d["scale"], self.stage(d["stage"], where, f"{p}/stage"), d["out_scale"],
                            **flags)
        if op == "activate":
            return ActivateNode(d["name"], d["input"], d["output"], self.stage(d["stage"], where, f"{p}/stage"))
        if op == "add":
            return AddNode(d["name"], d["inputs"], d["output"], **flags, b_offset=d.get("b_offset", 0))
        if op == "maxpool":
            return MaxPoolNode(d["name"], d["input"], d["output"], d["kernel"], d["stride"], d["padding"], **flags)
        if op == "concat":
            return ConcatNode(d["name"], d["inputs"], d["output"])
        if op == "subsample":
            return SubsampleNode(d["name"], d["input"], d["output"], d["stride"])
        pool = (d["name"], d["input"], d["output"], *(self.ref(d, k, where, f"{p}/{k}")
                                                      for k in ("sign", "relu", "offset")),
                d["frac_bits"], self.stage(d["stage"], where, f"{p}/stage"))
        cap = self.ref(d, "cap", where, f"{p}/cap") if "cap" in present else None
        if op == "avgpool":
            outside = self.ref(d, "outside", where, f"{p}/outside") if "outside" in present else None
            return AvgPoolNode(*pool, cap=cap, kernel=d["kernel"], stride=d["stride"], padding=d.get("padding", 0),
                               outside=outside)
        return PoolNode(*pool, cap=cap)

    # ---- what each array must be, from the checked fields

    def expected(self, model: CompiledModel, tensors: dict) -> dict[str, tuple]:
        """key -> (dtype or dtypes, shape) of every array, from the (checked) scalar fields and tensor shapes."""
        want = {}

        def stage(p: str, stage, channels: int):
            if isinstance(stage, Thresholds):
                want[f"{p}/stage/thresholds"] = (ARRAY_DTYPES["thresholds"], (channels, act_scale(stage.bits)))
                want[f"{p}/stage/descending"] = (ARRAY_DTYPES["descending"], (channels,))
            elif isinstance(stage, Requantize):
                for k in ("multiplier", "bias", "shift"):
                    want[f"{p}/stage/{k}"] = (ARRAY_DTYPES[k], (channels,))

        for i, node in enumerate(model.nodes):
            p = f"nodes/{i}"
            if isinstance(node, InputNode):
                want[f"{p}/table"] = (ARRAY_DTYPES["table"], (256,))
            elif isinstance(node, ConvNode):
                co, ci, k = node.out_shape[0], node.in_shape[0], node.kernel
                s_w, s_a = weight_scale(node.wbits), act_scale(node.abits)
                want[f"{p}/weights"] = (ARRAY_DTYPES["weights"], ((co * ci * k * k * node.wbits + 7) // 8,))
                want[f"{p}/w_levels"] = (ARRAY_DTYPES["w_levels"], (s_w + 1,))
                want[f"{p}/a_levels"] = (ARRAY_DTYPES["a_levels"], (s_a + 1,))
                if node.mac == "lut":
                    want[f"{p}/lut"] = (ARRAY_DTYPES["lut"], (s_w, s_a))
                stage(p, node.stage, co)
            elif isinstance(node, ActivateNode):
                stage(p, node.stage, tensors[node.input].shape[0])
            elif isinstance(node, PoolNode):
                c = tensors[node.input].shape[0]
                for k in ("sign", "relu", "offset", "cap", "outside"):
                    if getattr(node, k, None) is not None:
                        want[f"{p}/{k}"] = (ARRAY_DTYPES[k], (c,))
                stage(p, node.stage, c)
        return want

    def arrays(self, want: dict[str, tuple]) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        """Check the references against ``want`` and the members against both, then read every array."""
        if set(want) != set(self.refs):   # a conv whose mac is "lut" and its "lut" field agree by construction
            raise self.error(f"array references {sorted(set(want) ^ set(self.refs))} do not match the fields")
        problem = _too_large(sum(math.prod(shape) * np.dtype(dtypes if isinstance(dtypes, str) else dtypes[0]).itemsize
                                 for dtypes, shape in want.values()))
        if problem:
            raise self.error(problem)
        for name in self.infos:
            if name != f"{MANIFEST}.npy" and (not name.endswith(".npy") or name[:-4] not in want):
                raise self.error(f"unexpected zip member {show(name)}")
        arrays, members = {}, {}
        for key, (dtypes, shape) in want.items():
            where, name, ref = self.refs[key]
            names = {np.dtype(d).name: d for d in ((dtypes,) if isinstance(dtypes, str) else dtypes)}
            if ref["dtype"] not in names or ref["shape"] != list(shape) \
                    or any(type(v) is not int for v in ref["shape"]):       # not [4.0]: the writer writes ints
                raise self.error(f"{where}: field {name!r} is declared {show(ref['dtype'])} {show(ref['shape'])}, "
                                 f"the layer needs {' or '.join(names)} {list(shape)}")
            arrays[key], members[key] = self.member(key, where, names[ref["dtype"]], shape)
        return arrays, members

    # ---- from file arrays to the model's

    def flags(self, where: str, name: str, a: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(a > 1)
        if bad.size:
            raise self.error(f"{where}: field {name!r} [{int(bad[0])}] = {int(a[bad[0]])}; a flag is 0 or 1")
        return a.astype(bool)

    def fill(self, model: CompiledModel, arrays: dict[str, np.ndarray]) -> None:
        """Put the arrays into ``model``'s nodes as the compiler holds them (weight codes, int64, bool flags)."""
        def stage(where: str, stage):
            if isinstance(stage, Thresholds):
                stage.thresholds = arrays[stage.thresholds].astype(np.int64)
                stage.descending = self.flags(where, "stage.descending", arrays[stage.descending])
            elif isinstance(stage, Requantize):
                for k in ("multiplier", "bias", "shift"):
                    setattr(stage, k, arrays[getattr(stage, k)].astype(np.int64))

        for i, node in enumerate(model.nodes):
            where = node_where(i, node)
            if isinstance(node, InputNode):
                node.shape, node.table = tuple(node.shape), arrays[node.table]
            elif isinstance(node, ConvNode):
                node.in_shape, node.out_shape = tuple(node.in_shape), tuple(node.out_shape)
                packed = arrays[node.weight_codes]
                shape = (node.out_shape[0], node.in_shape[0], node.kernel, node.kernel)
                node.weight_codes = decode_weights(packed, node.wbits, shape)
                differ = np.flatnonzero(encode_weights(node.weight_codes, node.wbits) != packed)
                if differ.size:
                    raise self.error(f"{where}: field 'weights' byte {int(differ[0])} is not the compiler's packing "
                                     "(a negative zero, or unused bits that are not 0)")
                node.w_levels = arrays[node.w_levels].astype(np.int64)
                node.a_levels = arrays[node.a_levels].astype(np.int64)
                stage(where, node.stage)
            elif isinstance(node, ActivateNode):
                stage(where, node.stage)
            elif isinstance(node, AddNode):
                node.inputs = tuple(node.inputs)
            elif isinstance(node, PoolNode):
                node.sign = arrays[node.sign].astype(np.int64)
                node.relu = self.flags(where, "relu", arrays[node.relu])
                node.offset = arrays[node.offset].astype(np.int64)
                if node.cap is not None:
                    node.cap = arrays[node.cap].astype(np.int64)
                if getattr(node, "outside", None) is not None:
                    node.outside = arrays[node.outside].astype(np.int64)
                stage(where, node.stage)

    def derived(self, model: CompiledModel, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
        """The redundant conv fields (``acc_bits``, ``lut``, ``lut_bits``) equal what the levels give."""
        for i, (node, d) in enumerate(zip(model.nodes, manifest["nodes"])):
            if not isinstance(node, ConvNode):
                continue
            where = node_where(i, node)
            if type(d["acc_bits"]) is not int or d["acc_bits"] != node.acc_bits:     # not 24.0 or True: an int
                raise self.error(f"{where}: field 'acc_bits' = {show(d['acc_bits'])}; the levels and the reduction "
                                 f"give {node.acc_bits}")
            if node.mac != "lut":
                continue
            lut, want = arrays[f"nodes/{i}/lut"], node.lut()
            if not np.array_equal(lut.astype(np.int64), want):
                raise self.error(f"{where}: field 'lut': LUT contents differ from the product of the level tables")
            if lut.dtype != np.dtype(lut_dtype(want)):
                raise self.error(f"{where}: field 'lut' is {lut.dtype}, the compiler writes "
                                 f"{np.dtype(lut_dtype(want))}")
            bits = int(want.max()).bit_length() if want.size else 0
            if type(d["lut_bits"]) is not int or d["lut_bits"] != bits:
                raise self.error(f"{where}: field 'lut_bits' = {show(d['lut_bits'])}; the LUT needs {bits}")


def load(path: str | Path) -> CompiledModel:
    """Read a compiled model written by :func:`save`, accepting nothing else (see the module docstring).

    Raises FileNotFoundError when there is no file, otherwise :class:`ModelFormatError` for any problem.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory, not a compiled model: pass the model file that `lcq "
                                "compile` wrote")
    if path.exists() and not path.is_file():        # (reading a named pipe would wait for a writer)
        raise FileNotFoundError(f"{path} is not a regular file (a named pipe or a device): pass the model file that "
                                "`lcq compile` wrote")
    if not path.is_file():
        raise FileNotFoundError(f"no compiled model at {path}; make one with `lcq compile CHECKPOINT -o {path}`")
    with open(path, "rb") as f:
        head = f.read(len(CHECKPOINT_MAGIC))
    if head == CHECKPOINT_MAGIC:
        raise ModelFormatError(f"{path} is a checkpoint (`lcq train` writes it), not a compiled model: compile it "
                               f"with `lcq compile {path} -o MODEL.lcq`")
    if head and not head.startswith(b"PK\x03\x04"):       # another tool's file: not to be compiled over
        raise ModelFormatError(f"{path} is not a readable compiled model: it is not a zip archive, the format "
                               "`lcq compile` writes; pass the model file that `lcq compile` wrote")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load(_Reader(path, zf))
    except ModelFormatError:
        raise
    except ModelRuleError as e:
        raise ModelFormatError(f"{path}: {e}; recompile it with `lcq compile CHECKPOINT -o {path}`") from None
    except Exception as e:   # zipfile, zlib, numpy, OverflowError, MemoryError, ...: a damaged file, not a bug to show
        raise ModelFormatError(f"{path} is not a readable compiled model ({type(e).__name__}: {str(e)[:200]}); "
                               f"it may be truncated or damaged: recompile it with "
                               f"`lcq compile CHECKPOINT -o {path}`") from e


def _load(reader: _Reader) -> CompiledModel:
    reader.members()
    manifest = reader.manifest()
    nodes = manifest["nodes"]
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise reader.error(f"manifest: field 'nodes' must be a list of at most {MAX_NODES} nodes")
    model = CompiledModel([reader.node(i, d) for i, d in enumerate(nodes)], manifest["logits"],
                          manifest["num_classes"], manifest["source"], manifest["scales"])
    tensors = model.validate(arrays=False)          # every scalar field and the graph, before any array is read
    arrays, members = reader.arrays(reader.expected(model, tensors))
    if digest(manifest, members) != manifest[DIGEST_FIELD]:
        raise ModelFormatError(f"{reader.path} is damaged: its contents do not match the SHA-256 digest recorded in "
                               f"it; copy it again or recompile it with `lcq compile CHECKPOINT -o {reader.path}`")
    reader.fill(model, arrays)
    model.validate()
    reader.derived(model, manifest, arrays)
    return model
