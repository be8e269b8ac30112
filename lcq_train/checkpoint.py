"""The training checkpoint format: tensors and JSON, never pickle, with a SHA-256 digest; written atomically.

A checkpoint cannot carry code: it is read with :mod:`json` and byte copies, nothing else.
File layout, checkpoint format version 2 (integers little-endian):

    bytes 0-7    magic b"LCQCKPT\\n"
    bytes 8-11   format version (uint32): 2
    bytes 12-19  H, the length of the header in bytes (uint64)
    bytes 20-51  digest: SHA-256 of every byte after byte 51 (the header and the data)
    next H       header, UTF-8 JSON: {"format": "lcq-checkpoint", "version": 2,
                 "tensors": {NAME: {"dtype": "F32", "shape": [16, 1, 3, 3], "data_offsets": [BEGIN, END]}, ...},
                 "state": STATE}
    the rest     data: every tensor's bytes (C order, little-endian), back to back in the order of
                 "tensors"; BEGIN and END count from the first data byte (safetensors' dtype names and
                 offsets: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)

STATE is the checkpoint dict as JSON, where a tensor is ``{"__tensor__": NAME}``, a tuple
``{"__tuple__": [...]}`` and a dict whose keys are not all plain strings (the optimizer's parameter
indices) ``{"__items__": [[KEY, VALUE], ...]}``. The dict holds what the compiler needs: ``config``
(the run's :class:`~lcq_train.train.TrainConfig`), ``plan`` (its quantization plan), ``input_shape``,
``num_classes``, ``classes`` (their names, in label order; a checkpoint written before lcq recorded them has
none), ``layers`` (per-layer bit-widths), ``model`` (state dict: weights, BN, alpha,
theta); and what ``--resume`` needs: ``optimizer``, ``scheduler``, ``epoch`` (completed), ``rng``
(:func:`capture_rng` of the process of rank 0, the only one of a single-process run) and ``metrics``
(the history that metrics.json shows). A run of N > 1 processes (torchrun) adds ``rank_rng``: the
states of ranks 1..N-1, in rank order, which :func:`restore_rank_rng` gives back to each rank. (A
field added with a meaning for the files before it, as here "a single process", needs no new
format version: the version is the frame's and the encoding's.)

:func:`load_checkpoint` checks the magic (an older lcq's pickle checkpoint, format version 1, is
refused with the way to convert it: :func:`upgrade_checkpoint`), the version, the length, the
digest, and then every field against the rule that wrote it (TrainConfig, QuantPlan, the RNG
forms below); a failure raises :class:`CheckpointError` naming the file. It returns the dict with
``sha256`` added: the digest in hex, the checkpoint's identity that ``lcq compile`` records in the
compiled model and ``lcq eval`` checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .arguments import IntRange
from .atomic import atomic_write, save_json
from .metrics import metrics_problem
from .torch_save import TorchSaveError, read_torch_save

__all__ = ["FORMAT", "VERSION", "MAGIC", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "upgrade_checkpoint", "capture_rng", "restore_rng", "restore_rank_rng", "save_json", "read_tensors",
           "unique_keys", "is_compiled_model"]

FORMAT = "lcq-checkpoint"
VERSION = 2
MAGIC = b"LCQCKPT\n"
_PREFIX = struct.Struct("<8sIQ32s")      # magic, version, header length, SHA-256 of the rest: 52 bytes
KEYS = ("config", "plan", "input_shape", "num_classes", "layers", "model", "optimizer", "scheduler", "epoch",
        "rng", "metrics")
OPTIONAL_KEYS = ("rank_rng", "classes")      # a multi-process run's only; written since lcq recorded them
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
MAX_ELEMENTS = 2**40      # a tensor's elements, its zero sizes counted as 1 (torch cannot make larger shapes)
_TAGS = ("__tensor__", "__tuple__", "__items__")
_UPGRADE = "python -m lcq_train.checkpoint upgrade OLD.pt NEW.pt"

_WORD = IntRange(0, 2**32 - 1)
_MT_WORDS = 624          # words of a Mersenne Twister state (numpy's and Python's generators)


class CheckpointError(ValueError):
    """A file that is not an intact checkpoint of this lcq; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------- writing

def save_checkpoint(state: dict, path) -> str:
    """Write checkpoint dict ``state`` (the keys of :data:`KEYS`, and any of :data:`OPTIONAL_KEYS`) to ``path``
    atomically (a crash leaves the previous file intact); returns its SHA-256 digest in hex. The dict is checked
    against the rules :func:`load_checkpoint` applies, so that every checkpoint written can be read."""
    if sys.byteorder != "little":
        raise CheckpointError("lcq checkpoints are little-endian; this machine is big-endian")
    state = {k: v for k, v in state.items() if k != "sha256"}
    _check_state(state, f"the checkpoint for {path}")
    tensors: dict[str, torch.Tensor] = {}
    body = _encode(state, (), tensors)
    index, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = _tensor_bytes(tensor, name)
        index[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header = json.dumps({"format": FORMAT, "version": VERSION, "tensors": index, "state": body},
                        separators=(",", ":")).encode()
    digest = hashlib.sha256(header)
    for chunk in chunks:
        digest.update(chunk)
    prefix = _PREFIX.pack(MAGIC, VERSION, len(header), digest.digest())

    def write(f):
        f.write(prefix)
        f.write(header)
        for chunk in chunks:
            f.write(chunk)

    atomic_write(path, write)
    return digest.hexdigest()


def _encode(obj, where: tuple, tensors: dict):
    """JSON form of ``obj``; its tensors go to ``tensors`` under their path of keys."""
    if isinstance(obj, torch.Tensor):
        name = "/".join(where) or "tensor"
        if name in tensors:
            name = f"{name}#{len(tensors)}"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, (*where, str(i)), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, (*where, str(i)), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, (*where, k), tensors) for k, v in obj.items()}
        for k in obj:
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"a checkpoint's dict keys are strings or integers, not {k!r} (at {'/'.join(where)})")
        return {"__items__": [[k, _encode(v, (*where, str(k)), tensors)] for k, v in obj.items()]}
    raise TypeError(f"a checkpoint holds tensors, numbers, strings, None, lists, tuples and dicts, "
                    f"not a {type(obj).__name__} (at {'/'.join(where)})")


def _tensor_bytes(tensor: torch.Tensor, name: str) -> bytes:
    if tensor.dtype not in _DTYPE_NAMES or tensor.layout != torch.strided:
        raise TypeError(f"tensor {name}: a checkpoint holds dense tensors of {sorted(_DTYPES)}, not {tensor.dtype}")
    t = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------------------------- reading

def load_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``, every field checked, with ``sha256`` (its digest, hex) added.

    Raises FileNotFoundError when there is no file, :class:`CheckpointError` (a ValueError) when the
    file is not an intact checkpoint of this format: an older lcq's pickle, another file, a
    truncated or damaged one, or one whose fields break the rules that wrote them."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.pt"
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint: " + (
            f"pass its checkpoint, {inside}" if inside.is_file() else
            "pass the checkpoint.pt that `lcq train --out DIR` writes"))
    if path.exists() and not path.is_file():        # (reading a named pipe would wait for a writer)
        raise FileNotFoundError(f"{path} is not a regular file (a named pipe or a device): pass the checkpoint.pt "
                                "that `lcq train --out DIR` writes")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `lcq train ... --out DIR` "
                                "(writes DIR/checkpoint.pt)")
    with open(path, "rb") as f:
        data = f.read(_PREFIX.size)
        if data[:len(MAGIC)] == MAGIC and len(data) == _PREFIX.size and _PREFIX.unpack(data)[1] == VERSION:
            data += f.read()         # (a file of another kind or version is refused by its frame, not read whole)
    digest, header_len = _check_frame(data, path)
    header = _parse_header(data[_PREFIX.size:_PREFIX.size + header_len], path)
    tensors = read_tensors(header["tensors"], memoryview(data)[_PREFIX.size + header_len:], path)
    used: set[str] = set()
    try:
        state = _decode(header["state"], tensors, used)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a checkpoint this lcq wrote: {e}") from None
    unused = sorted(set(tensors) - used)
    if unused:
        raise CheckpointError(f"{path} is not a checkpoint this lcq wrote: tensors {unused[:5]} belong to no field")
    _check_state(state, str(path))
    state["sha256"] = digest
    return state


def is_compiled_model(path: Path) -> bool:
    """Whether the zip archive at ``path`` is a compiled model (:mod:`compiler.format`: its manifest member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "manifest.json.npy" in archive.namelist()     # (compiler.format.MANIFEST; not imported upward)
    except (zipfile.BadZipFile, OSError):
        return False


def _check_frame(data: bytes, path: Path) -> tuple[str, int]:
    """The digest (hex) and header length of checkpoint bytes ``data``, after checking magic,
    version, length and digest."""
    if data[:4] == b"PK\x03\x04" and is_compiled_model(path):
        raise CheckpointError(f"{path} is a compiled model (`lcq compile` writes it), not a checkpoint: pass the "
                              "checkpoint.pt it was compiled from (`lcq train --out DIR` writes DIR/checkpoint.pt)")
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle file (torch.save), the format of an older lcq's checkpoints (version 1); this lcq "
            "does not load pickle files, since loading one can run any code it holds. If it is an old checkpoint, "
            f"retrain it, or, if you trust where it came from, convert it with `{_UPGRADE}` (reads it "
            "without running any code it names)")
    if not data:
        raise CheckpointError(f"{path} is empty (0 bytes): it was truncated; retrain or restore it from a copy")
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        if data and MAGIC.startswith(data[:len(MAGIC)]):
            raise CheckpointError(f"{path} is truncated ({len(data)} bytes); retrain or restore it from a copy")
        raise CheckpointError(f"{path} is not an lcq checkpoint (it does not start with {MAGIC!r}); pass the "
                              "checkpoint.pt that `lcq train --out DIR` writes")
    if len(data) < _PREFIX.size:
        raise CheckpointError(f"{path} is truncated ({len(data)} bytes, less than its {_PREFIX.size}-byte frame); "
                              "retrain or restore it from a copy")
    _, version, header_len, digest = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this lcq reads version {VERSION} "
                              "(a newer lcq wrote it, or the file is damaged)")
    if header_len > len(data) - _PREFIX.size:
        raise CheckpointError(f"{path} is truncated or damaged: its frame announces a {header_len}-byte header, "
                              f"the file has {len(data)} bytes in all; retrain or restore it from a copy")
    if hashlib.sha256(memoryview(data)[_PREFIX.size:]).digest() != digest:
        raise CheckpointError(f"{path} is damaged: its contents do not match the SHA-256 digest in its frame (bytes "
                              "changed on disk or in transit, or the file was truncated or edited); restore it "
                              "from a copy or retrain")
    return digest.hex(), header_len


def unique_keys(pairs):
    """A JSON object's ``pairs`` as a dict; ValueError where a key repeats (JSON would keep the last silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError(f"duplicate keys {sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)}")
    return out


def _parse_header(raw: bytes, path: Path) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} has an unreadable header ({e}); retrain or restore it from a copy") from None
    if not isinstance(header, dict) or set(header) != {"format", "version", "tensors", "state"}:
        raise CheckpointError(f"{path} has a header without the fields format, version, tensors, state")
    if header["format"] != FORMAT or header["version"] != VERSION:
        raise CheckpointError(f"{path}: its header says format {header['format']!r} version {header['version']!r}, "
                              f"not {FORMAT!r} version {VERSION}")
    if not isinstance(header["tensors"], dict):
        raise CheckpointError(f"{path}: the header's tensors are not a JSON object")
    return header


def read_tensors(index: dict, data: memoryview, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors-style ``index`` ({NAME: {"dtype", "shape", "data_offsets"}}, in the order of
    their bytes) over ``data``, each a copy; :class:`CheckpointError` (naming ``path``) unless the tensors tile
    the data exactly, each of its dtype's size."""
    tensors, end = {}, 0
    for name, entry in index.items():
        def bad(what):
            raise CheckpointError(f"{path}: tensor {name!r} {what}")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            bad("needs exactly dtype, shape, data_offsets")
        dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, offsets = entry["shape"], entry["data_offsets"]
        if dtype is None:
            bad(f"has dtype {entry['dtype']!r}, not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(IntRange(0).accepts(n) for n in shape) \
                or math.prod(max(n, 1) for n in shape) > MAX_ELEMENTS:
            bad(f"has shape {shape!r}, not a list of sizes of at most {MAX_ELEMENTS} elements (even when empty)")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(IntRange(0).accepts(n) for n in offsets):
            bad(f"has data_offsets {offsets!r}, not [BEGIN, END]")
        begin, stop = offsets
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if begin != end or stop - begin != size or stop > len(data):
            bad(f"has data_offsets {offsets!r}; a {entry['dtype']} tensor of shape {shape} after byte {end} "
                f"needs [{end}, {end + size}] within the {len(data)} data bytes")
        tensors[name] = (torch.frombuffer(bytearray(data[begin:stop]), dtype=dtype).reshape(shape) if size
                         else torch.empty(shape, dtype=dtype))
        end = stop
    if end != len(data):
        raise CheckpointError(f"{path}: {len(data) - end} data bytes after the last tensor belong to none")
    return tensors


def _decode(obj, tensors: dict, used: set):
    if isinstance(obj, list):
        return [_decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        tag, value = next(iter(obj.items()))
        if tag == "__tensor__":
            if not isinstance(value, str) or value not in tensors or value in used:
                raise ValueError(f"{obj!r} refers to no tensor of the file, or to one used twice")
            used.add(value)
            return tensors[value]
        if not isinstance(value, list):
            raise ValueError(f"{tag} holds {type(value).__name__}, not a list")
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, used) for v in value)
        out = {}
        for pair in value:
            if not isinstance(pair, list) or len(pair) != 2 or isinstance(pair[0], bool) \
                    or not isinstance(pair[0], (str, int)) or pair[0] in out:
                raise ValueError(f"__items__ holds {pair!r}, not a [KEY, VALUE] pair with a new string or integer key")
            out[pair[0]] = _decode(pair[1], tensors, used)
        return out
    if any(k.startswith("__") for k in obj):
        raise ValueError(f"unknown tag(s) {sorted(k for k in obj if k.startswith('__'))}")
    return {k: _decode(v, tensors, used) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------- the fields

def _check_state(state, where: str) -> None:
    """Check checkpoint dict ``state`` field by field; CheckpointError names ``where`` and the field."""
    from .dataset_rules import MAX_CLASSES, class_names_problem, image_shape_problem
    from .plan import QuantPlan
    from .quantizer import BITS
    from .train import TrainConfig

    def bad(field: str, what: str):
        raise CheckpointError(f"{where}: {field} {what}; it is not a checkpoint this lcq wrote (retrain, or "
                              "restore it from a copy)")

    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the checkpoint is a {type(state).__name__}, not a dict")
    missing, unknown = sorted(set(KEYS) - set(state)), sorted(set(state) - set(KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        bad("the fields", f"are wrong (missing {missing}, unknown {unknown})")
    try:
        config = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        bad("config", f"is invalid: {e}")
    try:
        plan = QuantPlan.from_dict(state["plan"])
    except (ValueError, TypeError) as e:
        bad("plan", f"is invalid: {e}")
    if plan != config.plan:
        bad("plan", "differs from the plan in its config")
    problem = image_shape_problem(config.dataset, state["input_shape"])     # (the loader's rule)
    if problem:
        bad("input_shape", problem)
    classes = IntRange(2, MAX_CLASSES)       # the rule of the datasets' class lists
    if not classes.accepts(state["num_classes"]):
        bad("num_classes", f"is {state['num_classes']!r}, not {classes.describe()}")
    if "classes" in state:
        names = state["classes"]
        problem = class_names_problem(names) if isinstance(names, list) else f"a {type(names).__name__}, not a list"
        if problem is None and len(names) != state["num_classes"]:
            problem = f"{len(names)} names for {state['num_classes']} classes"
        if problem:
            bad("classes", f"is wrong: {problem}")
    elif config.dataset == "folder":
        bad("classes", "is missing: a run on a folder of images records its class names")
    layers = state["layers"]
    if not isinstance(layers, dict) or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2 and all(BITS.accepts(b) for b in v)
            for k, v in layers.items()):
        bad("layers", f"is not a map of layer names to [wbits, abits], each {BITS.describe()}")
    model = state["model"]
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        bad("model", "is not a state dict of named tensors")
    opt = state["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list) or not all(isinstance(g, dict) for g in opt["param_groups"]):
        bad("optimizer", "is not an optimizer state dict (state, param_groups)")
    if not isinstance(state["scheduler"], dict):
        bad("scheduler", "is not a scheduler state dict")
    if not IntRange(1, config.epochs).accepts(state["epoch"]):
        bad("epoch", f"is {state['epoch']!r}, not an integer in 1..{config.epochs} (the run's epochs)")
    problem = _rng_problem(state["rng"])
    if problem:
        bad("rng", problem)
    if "rank_rng" in state:
        ranks = state["rank_rng"]
        if not isinstance(ranks, list) or not ranks:
            bad("rank_rng", "is not a list of the generator states of ranks 1..N-1 (N > 1 processes)")
        for rank, rng in enumerate(ranks, 1):
            problem = _rng_problem(rng)
            if problem:
                bad("rank_rng", f"of rank {rank} {problem}")
    problem = metrics_problem(state["metrics"], state["epoch"])
    if problem:
        bad("metrics", problem)


def capture_rng() -> dict:
    """The state of every random generator the trainer uses, in the form checkpoints store. CUDA's only where
    this process has started CUDA: a run that has not drew nothing from its generators (``torch.manual_seed``
    seeds them again on resuming), and reading them would start it (a GPU busy in exclusive mode refuses)."""
    numpy = np.random.get_state(legacy=False)
    version, words, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": numpy["bit_generator"], "key": [int(w) for w in numpy["state"]["key"]],
                       "pos": int(numpy["state"]["pos"]), "has_gauss": int(numpy["has_gauss"]),
                       "gauss": float(numpy["gauss"])},
             "python": {"version": version, "state": list(words), "gauss_next": gauss_next}}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_problem(rng) -> str | None:
    """Why ``rng`` is not the form :func:`capture_rng` writes (None: it is)."""
    if not isinstance(rng, dict) or not {"torch", "numpy", "python"} <= set(rng) <= {"torch", "numpy", "python", "cuda"}:
        return "needs the generator states torch, numpy, python (and cuda)"
    byte_tensor = lambda t: isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1  # noqa: E731
    if not byte_tensor(rng["torch"]):
        return "torch is not a byte tensor"
    if "cuda" in rng and not (isinstance(rng["cuda"], list) and all(byte_tensor(t) for t in rng["cuda"])):
        return "cuda is not a list of byte tensors"
    n = rng["numpy"]
    if not isinstance(n, dict) or set(n) != {"bit_generator", "key", "pos", "has_gauss", "gauss"} \
            or n["bit_generator"] != "MT19937" or not isinstance(n["key"], list) or len(n["key"]) != _MT_WORDS \
            or not all(_WORD.accepts(w) for w in n["key"]) or not IntRange(0, _MT_WORDS).accepts(n["pos"]) \
            or n["has_gauss"] not in (0, 1) or isinstance(n["gauss"], bool) or not isinstance(n["gauss"], (int, float)):
        return "numpy is not an MT19937 state"
    p = rng["python"]
    if not isinstance(p, dict) or set(p) != {"version", "state", "gauss_next"} or p["version"] != 3 \
            or not isinstance(p["state"], list) or len(p["state"]) != _MT_WORDS + 1 \
            or not all(_WORD.accepts(w) for w in p["state"][:-1]) or not IntRange(0, _MT_WORDS).accepts(p["state"][-1]) \
            or not (p["gauss_next"] is None or (isinstance(p["gauss_next"], float))):
        return "python is not a version-3 random state"
    return None


def restore_rng(rng: dict, where: str = "the checkpoint") -> str | None:
    """Set every generator to the state :func:`capture_rng` returned (checked by :func:`load_checkpoint`);
    CheckpointError names ``where`` (the file) if torch refuses a state. The CUDA states of GPUs this machine
    lacks (a GPU run resumed on fewer or none) are skipped: returns a one-line notice saying so, else None."""
    try:
        torch.set_rng_state(rng["torch"])
    except RuntimeError as e:
        raise CheckpointError(f"{where}: its torch generator state does not fit this torch ({e}); resume the run "
                              "with the torch that wrote it, or retrain") from None
    n = rng["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    random.setstate((rng["python"]["version"], tuple(rng["python"]["state"]), rng["python"]["gauss_next"]))
    saved = rng.get("cuda", [])
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and saved:
        torch.cuda.init()               # (so that torch sets the states now, not when CUDA starts later)
    for i, state in enumerate(saved[:gpus]):
        try:
            torch.cuda.set_rng_state(state, i)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: its CUDA generator state of GPU {i} does not fit this torch ({e}); "
                                  "resume the run with the torch that wrote it, or retrain") from None
    if len(saved) <= gpus:
        return None
    skipped = f"that of GPU {gpus} is" if len(saved) - gpus == 1 else f"those of GPUs {gpus}..{len(saved) - 1} are"
    return (f"{where} holds the CUDA generator states of {len(saved)} GPUs and this machine has {gpus or 'none'}: "
            f"{skipped} not restored (random numbers drawn there differ from the saved run's)")


def restore_rank_rng(state: dict, rank: int, world: int, where: str = "the checkpoint") -> list[str]:
    """Set the generators of this process, rank ``rank`` of ``world``, to the states its rank saved in checkpoint
    dict ``state`` (``rng`` rank 0's, ``rank_rng`` the others') with :func:`restore_rng`. Returns one-line
    notices: restore_rng's, and, where the saved run had another number of processes, which ranks' states are
    not restored (a rank without one keeps its generators as they are)."""
    saved = [state["rng"], *state.get("rank_rng", [])]
    notice = restore_rng(saved[rank], where) if rank < len(saved) else None
    notices = [notice] if notice else []
    if len(saved) != world:
        lo, hi = min(len(saved), world), max(len(saved), world) - 1
        ranks = f"rank {lo}" if lo == hi else f"ranks {lo}..{hi}"
        notices.append(f"{where} holds the random generator states of {len(saved)} processes and this run has "
                       f"{world}: those of {ranks} are not restored (random numbers drawn there differ from the "
                       "saved run's)")
    return notices


def upgrade_checkpoint(old, new) -> str:
    """Convert an older lcq's checkpoint (format version 1, a ``torch.save`` zip archive) at ``old`` to
    this format at ``new``; returns the new digest.

    The old file's pickle is read by :func:`~lcq_train.torch_save.read_torch_save`, which runs no code it names
    and builds tensors (each within its stored bytes), containers, numbers and numpy's integer arrays only, as
    torch.save and numpy write them; then every field is checked as :func:`load_checkpoint` checks it."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"no checkpoint at {old}")
    if new.exists():
        raise FileExistsError(f"{new} exists; choose another name for the converted checkpoint")
    with open(old, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise CheckpointError(f"{old} is already in checkpoint format version {VERSION}; nothing to convert")
    try:
        state = read_torch_save(old, "an lcq checkpoint")
    except TorchSaveError as e:
        raise CheckpointError(f"{old} cannot be converted: {e}; it is not an lcq checkpoint as torch.save "
                              "wrote it") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != 1:
        raise CheckpointError(f"{old} is not an lcq checkpoint of format version 1")
    try:
        rng = state["rng"]
        name, key, pos, has_gauss, gauss = rng["numpy"]
        version, words, gauss_next = rng["python"]
        state["rng"] = {**{k: v for k, v in rng.items() if k == "torch" or k == "cuda"},
                        "numpy": {"bit_generator": name, "key": [int(w) for w in key], "pos": int(pos),
                                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
                        "python": {"version": version, "state": list(words), "gauss_next": gauss_next}}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{old}: its random generator states are not those of an lcq checkpoint ({e})") from None
    state = {k: state.get(k) for k in KEYS}
    _check_state(state, str(old))          # (save_checkpoint checks again, naming the new file)
    try:
        return save_checkpoint(state, new)
    except TypeError as e:                  # a value the format cannot hold: no lcq checkpoint held one
        raise CheckpointError(f"{old} is not an lcq checkpoint of format version 1: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m lcq_train.checkpoint upgrade OLD NEW``: convert a version-1 checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lcq_train.checkpoint",
                                     description="convert an older lcq's pickle checkpoint (format version 1) "
                                                 f"to checkpoint format version {VERSION}, without running code")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("upgrade", help="convert OLD (version 1) to NEW (version 2)")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    args = parser.parse_args(argv)
    try:
        digest = upgrade_checkpoint(args.old, args.new)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lcq_train.checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.new} (checkpoint format version {VERSION}, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
