"""The weights a training run starts from (``lcq train --init PATH``), read without running code.

PATH is one of:

- an lcq checkpoint (``lcq train --out DIR`` writes DIR/checkpoint.pt): its model's state dict;
- a network's state dict as PyTorch saves it, ``torch.save(model.state_dict(), PATH)``, read by
  :func:`~lcq_train.torch_save.read_torch_save` (tensors and dicts only: a pickled model or any other object
  is refused, as loading it would run its code); a dict that holds one such state dict beside numbers and
  other dicts (``{"epoch": 90, "model_state_dict": ..., "optimizer": ...}``, as training scripts save) gives
  that one;
- a safetensors file (``safetensors.torch.save_file(model.state_dict(), PATH)``).

:func:`read_weights` returns ``(state dict, what the file is)``: names as the model's own (a ``module.``
prefix on every name, which ``nn.DataParallel`` and DistributedDataParallel add, taken off), every tensor
floating-point or integer, the floating-point ones finite. Anything else is a :class:`WeightsError` that names
the file, what it holds and how to save the weights instead.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .checkpoint import MAGIC, CheckpointError, is_compiled_model, load_checkpoint, read_tensors, unique_keys
from .torch_save import TorchSaveError, read_torch_save

SAVE = "save the network's weights with torch.save(model.state_dict(), PATH)"
MAX_HEADER = 100 << 20          # a safetensors header's bytes (the library's own limit)
_WRAPPER = "module."            # the prefix nn.DataParallel / DistributedDataParallel put on every name


class WeightsError(ValueError):
    """A file that holds no weights lcq reads, with what it holds and the fix."""


def read_weights(path) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, kind)`` of the weights file at ``path`` (module doc); ``kind`` says what it was ("an lcq
    checkpoint", "a torch.save state dict", "a safetensors file"). FileNotFoundError where there is no file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}" + (" (a directory)" if path.is_dir() else ""))
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise WeightsError(f"{path} is empty (0 bytes): it was truncated; {SAVE}")
    if head.startswith(MAGIC[:len(head)]):
        return _named(load_checkpoint(path)["model"], path), "an lcq checkpoint"
    if head[:4] == b"PK\x03\x04" and is_compiled_model(path):
        raise WeightsError(f"{path} is a compiled model (`lcq compile` writes it), not weights: pass the checkpoint "
                           "it was compiled from (`lcq train --out DIR` writes DIR/checkpoint.pt)")
    if head[:4] == b"PK\x03\x04":
        return _named(_torch_save_state(path), path), "a torch.save state dict"
    if head[:1] == b"\x80":             # a pickle protocol 2+ opcode: torch.save's format before PyTorch 1.6
        raise WeightsError(f"{path} is a pickle in torch.save's legacy format (not the zip archive PyTorch 1.6 and "
                           "later write), which lcq does not read: load it in your code and save it again with "
                           "torch.save(model.state_dict(), PATH) in a current PyTorch")
    if len(head) == 9 and 2 <= struct.unpack_from("<Q", head)[0] <= MAX_HEADER and head[8:] == b"{":
        return _named(_safetensors(path), path), "a safetensors file"
    raise WeightsError(f"{path} is neither an lcq checkpoint, a torch.save state dict nor a safetensors file "
                       f"(it starts with {head!r}); {SAVE}")


def _torch_save_state(path: Path) -> dict:
    """The state dict a torch.save archive holds (or the one state dict inside the dict it holds)."""
    try:
        obj = read_torch_save(path, "a state dict")
    except TorchSaveError as e:
        raise WeightsError(f"{path} cannot be read as a state dict: {e}; {SAVE} (a pickled model, "
                           "torch.save(model, PATH), holds its class, which lcq does not run)") from None
    if _is_state_dict(obj):
        return obj
    inner = [key for key, value in obj.items() if _is_state_dict(value)] if isinstance(obj, dict) else []
    if len(inner) == 1:
        return obj[inner[0]]
    what = (f"a dict of {len(inner)} state dicts ({', '.join(map(repr, inner[:4]))})" if inner else
            f"a {type(obj).__name__}" + (f" with keys {list(obj)[:6]}" if isinstance(obj, dict) else ""))
    raise WeightsError(f"{path} holds {what}, not one state dict (a dict of tensors by parameter name); {SAVE}")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _safetensors(path: Path) -> dict:
    """The tensors of the safetensors file at ``path``: an 8-byte little-endian header length N, N bytes of JSON
    ({NAME: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}), then the tensors' bytes."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    if 8 + n > len(data):
        raise WeightsError(f"{path} is truncated: its safetensors header announces {n} bytes, the file has "
                           f"{len(data)}; save it again")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WeightsError(f"{path} is not a safetensors file: its header is no JSON ({e}); {SAVE}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file: its header is no JSON object; {SAVE}")
    header.pop("__metadata__", None)

    def begin(entry) -> int:            # (the file's order of bytes; read_tensors checks each entry)
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        return offsets[0] if isinstance(offsets, list) and offsets and isinstance(offsets[0], int) else -1

    index = dict(sorted(header.items(), key=lambda item: begin(item[1])))
    try:
        return read_tensors(index, memoryview(data)[8 + n:], path)
    except CheckpointError as e:
        raise WeightsError(f"{e} (a damaged or not a safetensors file); {SAVE}") from None


def _named(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """``state`` with the names a model's own state dict has (a ``module.`` prefix on all taken off), its
    floating-point tensors checked finite (the readers build floating-point, integer and bool ones only)."""
    if state and all(k.startswith(_WRAPPER) for k in state):
        state = {k[len(_WRAPPER):]: v for k, v in state.items()}
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WeightsError(f"{path}: {name!r} holds values that are not finite (NaN or infinity): the training "
                               "that wrote it diverged; save the weights of a finite network")
    return state
