"""``torch.save`` archives read without running code: the pickle in the zip may name only the tensors, storages and
state dicts that torch.save writes (and numpy's integer arrays), each tensor built within its stored bytes.

:func:`read_torch_save` is how an older lcq's checkpoint (format version 1) is converted
(:func:`lcq_train.checkpoint.upgrade_checkpoint`) and how a network's own state dict
(``torch.save(model.state_dict(), PATH)``) starts a training run (:mod:`lcq_train.weights_file`). Anything else
in the pickle (a whole pickled model, an argparse namespace, a numpy float array) is a
:class:`TorchSaveError` that names it.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from .arguments import IntRange
from .safe_pickle import NUMPY_GLOBALS, NumpyUnpickler

_STORAGES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
             "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
             "BoolStorage": torch.bool}


class _StorageType:
    """What a name ``torch.XStorage`` resolves to: the dtype of the storages the pickle says are X."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` as ``torch.save`` calls it for a plain tensor: a copy of the
    elements it views, each within its storage, and no more elements than the storage holds (a zero
    stride would make any number from one)."""
    sizes = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) \
        and all(IntRange(0).accepts(n) for n in (offset, *size, *stride))
    if not isinstance(storage, torch.Tensor) or not sizes or not isinstance(requires_grad, bool) \
            or not isinstance(hooks, OrderedDict) or hooks or metadata not in (None, {}):
        raise pickle.UnpicklingError("it rebuilds a tensor with arguments torch.save never writes")
    count = math.prod(size)
    if count and (count > storage.numel() - offset
                  or offset + sum((n - 1) * step for n, step in zip(size, stride)) >= storage.numel()):
        raise pickle.UnpicklingError(f"it views a tensor of shape {size} beyond its storage of {storage.numel()}")
    return storage.as_strided(size, stride, offset).clone() if count else torch.empty(size, dtype=storage.dtype)


def _ordered_dict(*args):
    """``collections.OrderedDict`` as ``torch.save`` calls it: with no arguments (the pickle then sets its items,
    whose keys :class:`~lcq_train.safe_pickle.NumpyUnpickler` checks; items passed here would not be)."""
    if args:
        raise pickle.UnpicklingError("it calls OrderedDict with arguments, where torch.save writes an empty one and "
                                     "sets its items")
    return OrderedDict()


class _TorchSaveUnpickler(NumpyUnpickler):
    """The unpickler of a torch.save archive's ``data.pkl`` (:class:`~lcq_train.safe_pickle.NumpyUnpickler`):
    tensors, their storages (read from ``zip``'s members under ``prefix``), state dicts, and numpy integer arrays
    (an lcq checkpoint's generator state); nothing else is looked up. ``holds``: what the file should be, for
    the refusals."""

    STAND_INS = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("collections", "OrderedDict"): _ordered_dict,
                 **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()}}
    GLOBALS = NUMPY_GLOBALS.union(STAND_INS)

    def __init__(self, file, zip: zipfile.ZipFile, prefix: str, holds: str):
        super().__init__(file)
        self.zip, self.prefix, self.storages, self.HOLDS = zip, prefix, {}, holds

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[3], str) and IntRange(0).accepts(pid[4])):
            raise pickle.UnpicklingError(f"it refers to {pid!r:.80}, not to a storage of the file")
        _, kind, key, _, count = pid
        if key not in self.storages:
            info = _stored_member(self.zip, f"{self.prefix}data/{key}")
            size = count * torch.empty((), dtype=kind.dtype).element_size()
            if info.file_size != size:
                raise pickle.UnpicklingError(f"its storage {key} holds {info.file_size} bytes, not the {size} of "
                                             f"{count} elements")
            data = bytearray(self.zip.read(info))
            self.storages[key] = torch.frombuffer(data, dtype=kind.dtype) if data else torch.empty(0, dtype=kind.dtype)
        if self.storages[key].dtype != kind.dtype:
            raise pickle.UnpicklingError(f"it reads storage {key} as two dtypes")
        return self.storages[key]

    def build_problem(self, inst, state) -> str | None:
        if isinstance(inst, OrderedDict):        # a state dict's _metadata
            return None if isinstance(state, dict) and set(state) <= {"_metadata"} else "it sets an OrderedDict's state"
        return super().build_problem(inst, state)


def _stored_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """The member ``name`` of ``archive``, stored uncompressed as torch.save stores each (so that the bytes it
    declares are bytes of the file, not of a decompression)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise pickle.UnpicklingError(f"it has no member {name}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise pickle.UnpicklingError(f"its member {name} is compressed; torch.save stores them as they are")
    return info


class TorchSaveError(ValueError):
    """Why a file is not read as a torch.save archive (its message: "it names os.system, ...")."""


def read_torch_save(path: Path, holds: str):
    """The object the ``torch.save`` zip archive at ``path`` holds, read by :class:`_TorchSaveUnpickler`;
    :class:`TorchSaveError` saying why not (``holds``: what the file should be, as "a state dict")."""
    try:
        return _read(path, holds)
    except Exception as e:  # noqa: BLE001 -- unpickling garbage can raise almost any exception type
        reason = str(e) if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}"
        raise TorchSaveError(reason) from None


def _read(path: Path, holds: str):
    if not zipfile.is_zipfile(path):
        raise pickle.UnpicklingError("it is not a zip archive, the format torch.save writes")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise pickle.UnpicklingError(f"it holds {len(pickles)} data.pkl members, not the one torch.save writes")
        prefix = pickles[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist() \
                and archive.read(_stored_member(archive, f"{prefix}byteorder")) != b"little":
            raise pickle.UnpicklingError("its tensors are big-endian")
        with archive.open(_stored_member(archive, pickles[0])) as f:
            state = _TorchSaveUnpickler(f, archive, prefix, holds).load()
    _check_values(state, path.stat().st_size)
    return state


def _check_values(obj, limit: int) -> None:
    """UnpicklingError if ``obj``, counted as a tree, has more than ``limit`` values (keys, items, leaves).
    A pickle stores a value once however often it is referred to: nested lists holding the next one twice
    stand for 2^N values in a few bytes each, which converting would write out one by one. A file holds
    each of its values in a byte at least (an lcq checkpoint of 220 KB has about 1,100)."""
    stack, count = [obj], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            raise pickle.UnpicklingError(f"it refers to more values than its {limit} bytes can hold (one value "
                                         "referred to many times)")
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple)):
            stack += value
