"""The compiled-model file: one zip (numpy ``.npz``) holding ``manifest.json`` and named arrays.

Readable with numpy alone (no PyTorch). Layout, version 1:

- ``manifest.json`` (a uint8 array of UTF-8 JSON): ``format`` =
  "lcq-compiled-model", ``version``, ``num_classes``, ``logits`` (output
  tensor), ``source`` (checkpoint, sha256, plan, compile options), ``scales``
  (real value of one unit of each value tensor) and ``nodes`` in execution
  order. A node is a dict of its scalar fields; each array field is a
  reference ``{"array": KEY, "dtype": ..., "shape": [...]}`` to a member of
  the zip.
- Conv weights: ``weights`` is the bit stream of ``C_out * C_in * kh * kw``
  fields of ``wbits`` bits (order out, in, ky, kx; each field
  ``sign << (wbits - 1) | k``, sign 1 for negative; LSB first in each byte).
- LUT (``mac`` = "lut"): ``lut`` ``(s_w, s_a)`` unsigned, ``L[k-1][j-1] =
  W[k] * A[j]``, k-major: the ROM image the hardware reads; ``lut_bits``.
- Output ``stage``: ``{"kind": "thresholds", "thresholds", "descending", "bits"}``
  or ``{"kind": "requantize", "multiplier", "bias", "shift"}`` (see
  :mod:`compiler.graph`).

:func:`load` rejects another format or version, a truncated or corrupt file,
missing arrays and inconsistent shapes with a :class:`ModelFormatError`.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from lcq_train.atomic import atomic_write

from .graph import (FORMAT, VERSION, ActivateNode, AddNode, CompiledModel, ConvNode, InputNode, PoolNode,
                    Requantize, Thresholds)


class ModelFormatError(ValueError):
    """A compiled-model file is not readable, of another version, or inconsistent."""


def pack_fields(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``values`` < 2^bits into a little-endian bit stream (uint8)."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    stream = (values[:, None] >> np.arange(bits, dtype=np.uint64)) & 1
    return np.packbits(stream.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_fields(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`: ``count`` unsigned fields (int64)."""
    stream = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (stream.astype(np.int64) << np.arange(bits)).sum(axis=1)


def encode_weights(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes ``sgn * k`` -> packed sign-magnitude fields."""
    codes = codes.astype(np.int64).reshape(-1)
    return pack_fields(((codes < 0).astype(np.int64) << (bits - 1)) | np.abs(codes), bits)


def decode_weights(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Packed sign-magnitude fields -> signed codes (int8) of ``shape``."""
    fields = unpack_fields(packed, bits, int(np.prod(shape)))
    magnitude, negative = fields & ((1 << (bits - 1)) - 1), fields >> (bits - 1)
    return np.where(negative == 1, -magnitude, magnitude).astype(np.int8).reshape(shape)


def _lut_dtype(lut: np.ndarray):
    return np.uint16 if lut.size == 0 or lut.max() < 2**16 else np.uint32


# --------------------------------------------------------------------------- save


class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def ref(self, key: str, array: np.ndarray) -> dict:
        array = np.ascontiguousarray(array)
        self.arrays[key] = array
        return {"array": key, "dtype": array.dtype.name, "shape": list(array.shape)}

    def stage(self, prefix: str, stage) -> dict | None:
        if stage is None:
            return None
        if isinstance(stage, Thresholds):
            return {"kind": "thresholds", "bits": stage.bits,
                    "thresholds": self.ref(f"{prefix}/thresholds", stage.thresholds.astype(np.int64)),
                    "descending": self.ref(f"{prefix}/descending", stage.descending.astype(np.uint8))}
        return {"kind": "requantize",
                "multiplier": self.ref(f"{prefix}/multiplier", stage.multiplier.astype(np.int64)),
                "bias": self.ref(f"{prefix}/bias", stage.bias.astype(np.int64)),
                "shift": self.ref(f"{prefix}/shift", stage.shift.astype(np.int64))}

    def node(self, i: int, node) -> dict:
        p = f"nodes/{i}"
        if isinstance(node, InputNode):
            return {"op": "input", "output": node.output, "shape": list(node.shape), "bits": node.bits,
                    "table": self.ref(f"{p}/table", node.table.astype(np.uint8))}
        if isinstance(node, ConvNode):
            d = {"op": "conv", "name": node.name, "input": node.input, "output": node.output, "kind": node.kind,
                 "in_shape": list(node.in_shape), "out_shape": list(node.out_shape), "kernel": node.kernel,
                 "stride": node.stride, "padding": node.padding, "wbits": node.wbits, "abits": node.abits,
                 "outer_wbits": node.outer_wbits, "outer_abits": node.outer_abits, "mac": node.mac,
                 "acc_bits": node.acc_bits, "scale": node.scale, "out_scale": node.out_scale,
                 "weights": self.ref(f"{p}/weights", encode_weights(node.weight_codes, node.wbits)),
                 "w_levels": self.ref(f"{p}/w_levels", node.w_levels.astype(np.int32)),
                 "a_levels": self.ref(f"{p}/a_levels", node.a_levels.astype(np.int32)),
                 "stage": self.stage(f"{p}/stage", node.stage)}
            if node.mac == "lut":
                lut = node.lut()
                d["lut"] = self.ref(f"{p}/lut", lut.astype(_lut_dtype(lut)))
                d["lut_bits"] = int(lut.max()).bit_length() if lut.size else 0
            return d
        if isinstance(node, ActivateNode):
            return {"op": "activate", "name": node.name, "input": node.input, "output": node.output,
                    "stage": self.stage(f"{p}/stage", node.stage)}
        if isinstance(node, AddNode):
            return {"op": "add", "name": node.name, "inputs": list(node.inputs), "output": node.output}
        if isinstance(node, PoolNode):
            return {"op": "pool", "name": node.name, "input": node.input, "output": node.output,
                    "frac_bits": node.frac_bits, "sign": self.ref(f"{p}/sign", node.sign.astype(np.int8)),
                    "relu": self.ref(f"{p}/relu", node.relu.astype(np.uint8)),
                    "offset": self.ref(f"{p}/offset", node.offset.astype(np.int64)),
                    "stage": self.stage(f"{p}/stage", node.stage)}
        raise TypeError(f"cannot save node {node!r}")


def save(model: CompiledModel, path: str | Path) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring for the layout)."""
    writer = _Writer()
    manifest = {"format": FORMAT, "version": VERSION, "num_classes": model.num_classes, "logits": model.logits,
                "source": model.source, "scales": model.scales,
                "nodes": [writer.node(i, node) for i, node in enumerate(model.nodes)]}
    blob = np.frombuffer(json.dumps(manifest, indent=1).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez_compressed(f, **{"manifest.json": blob}, **writer.arrays))


# --------------------------------------------------------------------------- load


class _Reader:
    def __init__(self, path: Path, npz):
        self.path, self.npz = path, npz

    def error(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {what}; recompile it with `lcq compile CHECKPOINT -o {self.path}`")

    def array(self, ref, where: str, shape: tuple | None = None) -> np.ndarray:
        if not isinstance(ref, dict) or "array" not in ref:
            raise self.error(f"{where}: missing array reference")
        key = ref["array"]
        try:
            array = self.npz[key]
        except KeyError:
            raise self.error(f"{where}: array {key!r} is missing") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise self.error(f"{where}: array {key!r} is corrupt ({e})") from e
        if array.dtype.name != ref.get("dtype") or list(array.shape) != list(ref.get("shape", [])):
            raise self.error(f"{where}: array {key!r} is {array.dtype.name} {list(array.shape)}, "
                             f"the manifest says {ref.get('dtype')} {ref.get('shape')}")
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise self.error(f"{where}: array {key!r} has shape {tuple(array.shape)}, expected {tuple(shape)}")
        return array

    def stage(self, d, where: str, channels: int, codes_only: bool):
        if d is None:
            return None
        if d.get("kind") == "thresholds":
            stage = Thresholds(self.array(d["thresholds"], where).astype(np.int64),
                               self.array(d["descending"], where, (channels,)).astype(bool), int(d["bits"]))
            if stage.thresholds.shape != (channels, 2 ** stage.bits - 1):
                raise self.error(f"{where}: thresholds shape {stage.thresholds.shape} does not match "
                                 f"{channels} channels of {stage.bits}-bit codes")
            return stage
        if d.get("kind") == "requantize" and not codes_only:
            return Requantize(*(self.array(d[k], where, (channels,)) for k in ("multiplier", "bias", "shift")))
        raise self.error(f"{where}: unknown or misplaced output stage {d.get('kind')!r}")


def load(path: str | Path) -> CompiledModel:
    """Read and validate a compiled model written by :func:`save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compiled model at {path}; make one with `lcq compile CHECKPOINT -o {path}`")
    try:
        npz = np.load(path, allow_pickle=False)
        manifest = json.loads(bytes(npz["manifest.json"]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not a readable compiled model ({e}); it may be truncated: "
                               f"recompile it with `lcq compile CHECKPOINT -o {path}`") from e
    with npz:
        reader = _Reader(path, npz)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise reader.error(f"not an {FORMAT} file")
        if manifest.get("version") != VERSION:
            raise ModelFormatError(f"{path} has format version {manifest.get('version')!r}; this lcq reads version "
                                   f"{VERSION}: recompile it with `lcq compile CHECKPOINT -o {path}`")
        try:
            return _build(reader, manifest)
        except (KeyError, TypeError, IndexError) as e:
            raise reader.error(f"malformed manifest ({type(e).__name__}: {e})") from e


def _build(reader: _Reader, manifest: dict) -> CompiledModel:
    nodes, shapes, codes = [], {}, set()   # shapes of tensors defined so far; which of them are codes

    def need(name: str, where: str, want_codes: bool) -> tuple:
        if name not in shapes:
            raise reader.error(f"{where}: input tensor {name!r} is not defined by an earlier node")
        if (name in codes) != want_codes:
            raise reader.error(f"{where}: input {name!r} must be {'codes' if want_codes else 'values'}")
        return shapes[name]

    for i, d in enumerate(manifest["nodes"]):
        where = f"node {i} ({d.get('name', d.get('op'))})"
        op = d["op"]
        if op == "input":
            if i != 0:
                raise reader.error(f"{where}: the input node must come first")
            node = InputNode(d["output"], tuple(d["shape"]), reader.array(d["table"], where, (256,)), int(d["bits"]))
            shape, is_codes = node.shape, True
        elif op == "conv":
            node = _conv(reader, d, where, need(d["input"], where, True))
            shape, is_codes = node.out_shape, node.stage is not None and node.stage.kind == "thresholds"
        elif op == "activate":
            shape = need(d["input"], where, False)
            node = ActivateNode(d["name"], d["input"], d["output"], reader.stage(d["stage"], where, shape[0], False))
            is_codes = node.stage.kind == "thresholds"
        elif op == "add":
            a, b = (need(name, where, False) for name in d["inputs"])
            if a != b:
                raise reader.error(f"{where}: operand shapes {a} and {b} differ")
            node, shape, is_codes = AddNode(d["name"], tuple(d["inputs"]), d["output"]), a, False
        elif op == "pool":
            c = need(d["input"], where, False)[0]
            stage = reader.stage(d["stage"], where, c, True)
            node = PoolNode(d["name"], d["input"], d["output"], reader.array(d["sign"], where, (c,)).astype(np.int64),
                            reader.array(d["relu"], where, (c,)).astype(bool), reader.array(d["offset"], where, (c,)),
                            int(d["frac_bits"]), stage)
            shape, is_codes = (c, 1, 1), True
        else:
            raise reader.error(f"{where}: unknown op {op!r}")
        nodes.append(node)
        shapes[node.output] = tuple(shape)
        if is_codes:
            codes.add(node.output)
    model = CompiledModel(nodes, manifest["logits"], int(manifest["num_classes"]), manifest.get("source", {}),
                          manifest.get("scales", {}))
    if shapes.get(model.logits) != (model.num_classes, 1, 1):
        raise reader.error(f"output {model.logits!r} is not a ({model.num_classes}, 1, 1) tensor")
    return model


def _conv(reader: _Reader, d: dict, where: str, in_shape: tuple) -> ConvNode:
    if tuple(d["in_shape"]) != in_shape:
        raise reader.error(f"{where}: in_shape {d['in_shape']} does not match its input tensor {list(in_shape)}")
    wbits, abits, k = int(d["wbits"]), int(d["abits"]), int(d["kernel"])
    c_out, c_in = int(d["out_shape"][0]), in_shape[0]
    count = c_out * c_in * k * k
    packed = reader.array(d["weights"], where, ((count * wbits + 7) // 8,))
    w_levels = reader.array(d["w_levels"], where, (2 ** (wbits - 1),)).astype(np.int64)
    a_levels = reader.array(d["a_levels"], where, (2 ** abits,)).astype(np.int64)
    node = ConvNode(d["name"], d["input"], d["output"], d["kind"], in_shape, tuple(d["out_shape"]), k,
                    int(d["stride"]), int(d["padding"]), wbits, abits, int(d["outer_wbits"]), int(d["outer_abits"]),
                    d["mac"], decode_weights(packed, wbits, (c_out, c_in, k, k)), w_levels, a_levels,
                    float(d["scale"]), None, d["out_scale"])
    c, h, w = in_shape
    expect = (c_out, (h + 2 * node.padding - k) // node.stride + 1, (w + 2 * node.padding - k) // node.stride + 1)
    if node.out_shape != expect:
        raise reader.error(f"{where}: out_shape {list(node.out_shape)} does not follow from the geometry {list(expect)}")
    if np.abs(node.weight_codes).max(initial=0) > len(w_levels) - 1:
        raise reader.error(f"{where}: weight code beyond the level table")
    if node.mac == "lut":
        lut = reader.array(d["lut"], where, (len(w_levels) - 1, len(a_levels) - 1))
        if not np.array_equal(lut.astype(np.int64), node.lut()):
            raise reader.error(f"{where}: LUT contents differ from the product of the level tables")
    node.stage = reader.stage(d["stage"], where, c_out, False)
    return node
