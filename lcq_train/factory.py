"""Your own network in ``lcq train``: ``--model MODULE:FACTORY`` or ``--model FILE.py:FACTORY``.

A factory reference names a callable that builds the full-precision network (an ``nn.Module``):
``mypackage.nets:vgg_small`` imports module ``mypackage.nets`` (installed, on ``PYTHONPATH`` or in
the current directory) and ``path/to/nets.py:vgg_small`` runs that file as a module (its
directory is added to ``sys.path``, as running it would). Either way **importing runs that code**:
a reference is only ever imported because you passed it (``--model``, ``--config``, a
:class:`~lcq_train.train.TrainConfig`, ``factory=`` of :func:`model_from_checkpoint`).

The factory is called with those of the keyword arguments ``num_classes``, ``in_channels`` and
``input_shape=(C, H, W)`` (the dataset's) that it has parameters of that name for (all three with
``**kwargs``): ``resnet20(num_classes=10)`` gets num_classes=, kuangliu's ``ResNet18()`` nothing, and
what it builds is checked against the dataset on two images (its input channels, its classes); the
trainer then quantizes what it returns with :func:`lcq_train.plan.quantize_model`.

A checkpoint records the reference as the run's ``config.model`` (a file's path made absolute),
and nothing else of the code: loading a checkpoint never imports it. ``lcq train --resume`` of
such a run asks for the same ``--model`` again (the confirmation); :func:`model_from_checkpoint`
for ``factory=`` the recorded reference. If the factory can no longer be imported, or now builds
a network that does not fit the saved weights, the error says so.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

__all__ = ["ModelChoice", "MODEL", "is_factory", "normalize_model", "load_factory", "build_user_model",
           "model_from_checkpoint"]

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _split(ref: str) -> tuple[str, str] | None:
    """(module or file, attribute path) of a factory reference, or None if ``ref`` is not one."""
    if not isinstance(ref, str):
        return None
    where, colon, attr = ref.rpartition(":")
    if not colon or not where or not _DOTTED.match(attr):
        return None
    if where.endswith(".py") or _DOTTED.match(where):
        return where, attr
    return None


def is_factory(ref) -> bool:
    """Whether ``ref`` has the form of a factory reference (MODULE:NAME or FILE.py:NAME; nothing is imported)."""
    return _split(ref) is not None


def normalize_model(value, name: str = "model") -> str:
    """``value`` if it names a built-in model or is a factory reference (a file's path made
    absolute); else ValueError naming ``name`` and the accepted forms."""
    from .models import MODELS

    if isinstance(value, str) and value in MODELS:
        return value
    parts = _split(value)
    if parts is None:
        raise ValueError(f"{name} must be one of {list(MODELS)} or a factory reference MODULE:FACTORY or "
                         f"FILE.py:FACTORY (e.g. mypackage.nets:vgg_small), not {value!r}")
    where, attr = parts
    if where.endswith(".py"):
        return f"{os.path.abspath(where)}:{attr}"
    return value


class ModelChoice:
    """The rule of ``--model`` as an argparse type and a validator (:mod:`lcq_train.arguments` style)."""

    def __init__(self):
        self.__name__ = "model"

    def __call__(self, text: str) -> str:
        import argparse

        try:
            return normalize_model(text, "--model")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("--model ")) from None

    def check(self, value, name: str) -> str:
        return normalize_model(value, name)


MODEL = ModelChoice()


def _import_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"there is no file {path}")
    key = "_lcq_user_model_" + re.sub(r"\W", "_", file.stem) + "_" + hashlib.sha1(str(file).encode()).hexdigest()[:10]
    if key in sys.modules:
        return sys.modules[key]
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(key, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def load_factory(ref: str, where: str = ""):
    """The callable that factory reference ``ref`` names, imported (this runs its module's code).

    ValueError says why it cannot be had (no such module or file, an error while importing it, no
    such name, not callable); ``where`` (e.g. "recorded in runs/x/checkpoint.pt") goes into it."""
    ref = normalize_model(ref, "a model factory")
    parts = _split(ref)
    if parts is None:
        raise ValueError(f"{ref!r} is a built-in model, not a factory reference")
    module_name, attr = parts
    context = f"the model factory {ref!r}{' ' + where if where else ''}"
    try:
        if module_name.endswith(".py"):
            module = _import_file(module_name)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path and "" not in sys.path:
                sys.path.append(cwd)
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.split(".")[0] == e.name.split(".")[0] and module_name.startswith(e.name):
            raise ValueError(f"cannot import {context}: there is no module {e.name!r} (it must be installed, on "
                             "PYTHONPATH or in the current directory; or give FILE.py:FACTORY)") from None
        raise ValueError(f"cannot import {context}: importing it raised ModuleNotFoundError: {e}") from None
    except ValueError as e:
        raise ValueError(f"cannot import {context}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- the user's module failed: say so, with its error
        raise ValueError(f"cannot import {context}: importing it raised {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise ValueError(f"cannot import {context}: {module_name} has no {attr!r}"
                             f"{f' (its callables: {names[:12]})' if names else ''}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{context} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def build_user_model(ref: str, input_shape, num_classes: int, where: str = ""):
    """The full-precision network that factory ``ref`` builds for ``input_shape`` (C, H, W) and
    ``num_classes``: the factory gets those of num_classes=, in_channels= and input_shape= it names (all
    three where it takes ``**kwargs``; a callable whose signature Python cannot read, num_classes= and
    in_channels=), and what it returns must map the dataset's images to ``num_classes`` logits."""
    from torch import nn

    factory = load_factory(ref, where)
    offered = {"num_classes": int(num_classes), "in_channels": int(input_shape[0]),
               "input_shape": tuple(int(n) for n in input_shape)}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is None:
        kwargs = {name: offered[name] for name in ("num_classes", "in_channels")}
    else:
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {name: value for name, value in offered.items()
                  if takes_all or (name in params and params[name].kind in (params[name].POSITIONAL_OR_KEYWORD,
                                                                            params[name].KEYWORD_ONLY))}
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as e:
            raise ValueError(f"the model factory {ref!r} cannot be called as {_call(ref, kwargs)} ({e}); a factory "
                             "takes no parameters but those of the keyword arguments num_classes, in_channels and "
                             "input_shape=(C, H, W) that it names (the others with defaults)") from None
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 -- the user's factory failed: say which, where, and its error
        raise ValueError(f"the model factory {ref!r} raised {type(e).__name__}: {e}{_user_line(e)}, called as "
                         f"{_call(ref, kwargs)}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model factory {ref!r} returned a {type(model).__name__}, not a torch.nn.Module")
    _check_logits(model, ref, tuple(int(n) for n in input_shape), int(num_classes))
    return model


def _check_logits(model, ref: str, input_shape: tuple, num_classes: int, n: int = 2) -> None:
    """ValueError, naming ``ref`` and the fix, unless ``model`` maps ``n`` images of ``input_shape`` to one
    tensor of shape (n, num_classes) in training and in eval mode (what the trainer's loss and the compiler's
    agreement read). Leaves the model as it was: its buffers (BN statistics), mode and torch's generators."""
    import torch
    from torch import nn

    params = [*model.parameters(), *model.buffers()]
    device = params[0].device if params else torch.device("cpu")
    saved = [(b, b.detach().clone()) for b in model.buffers() if not nn.parameter.is_lazy(b)]
    # A lazy BN's statistics have no value to restore: the forward sizes them, and they start again as a fresh BN's.
    lazy_norms = [m for m in model.modules() if any(nn.parameter.is_lazy(b) for b in m.buffers(recurse=False))
                  and callable(getattr(m, "reset_running_stats", None))]
    was_training = model.training
    what = f"the network that {ref!r} builds"
    kinds: dict[str, list[str]] = {}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            for training in (True, False):
                mode = "training mode" if training else "eval mode"
                x = torch.rand(n, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
                try:
                    out = model.train(training)(x)
                except Exception as e:  # noqa: BLE001 -- the user's forward may raise anything
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise ValueError(f"{what} fails on {n} images of shape {input_shape} (the dataset's), in {mode}: "
                                     f"{type(e).__name__}: {first}; its layers must fit in_channels={input_shape[0]} "
                                     f"and {input_shape[1]}x{input_shape[2]} float32 images") from None
                if not isinstance(out, torch.Tensor):
                    kinds.setdefault(type(out).__name__, []).append(mode)
                elif tuple(out.shape) != (n, num_classes):
                    fix = "flatten them (torch.flatten(x, 1))" if out.dim() > 2 and out.shape[:2] == (n, num_classes) \
                        and out[0].numel() == num_classes else "a last layer of num_classes outputs"
                    raise ValueError(f"{what} gives logits of shape {tuple(out.shape)} for {n} images; the dataset "
                                     f"has {num_classes} classes: its output must be of shape (N, {num_classes}) "
                                     f"({fix})")
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
            for m in lazy_norms:
                if not any(nn.parameter.is_lazy(b) for b in m.buffers(recurse=False)):
                    m.reset_running_stats()
        model.train(was_training)
    if kinds:
        kind, modes = next(iter(kinds.items()))
        raise ValueError(f"{what} returns a {kind} in {' and in '.join(modes)}, not a tensor of logits: its forward "
                         f"must return the logits alone, of shape (N, {num_classes})")


def _user_line(e: BaseException) -> str:
    """`` at FILE:LINE``: the innermost frame of ``e``'s traceback outside torch and this module ('' if none)."""
    import traceback

    import torch

    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not (f.filename.startswith(skip[0]) or os.path.abspath(f.filename) == skip[1])]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _call(ref: str, kwargs: dict) -> str:
    return f"{ref.rpartition(':')[2]}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def model_from_checkpoint(checkpoint, factory: str | None = None, option: str | None = None):
    """The trained, quantized network of a checkpoint (a path, or the dict of
    :func:`~lcq_train.checkpoint.load_checkpoint`) with its weights loaded, in eval mode.

    A built-in model is rebuilt from its name. A run of your own network is rebuilt only with
    ``factory`` equal to the reference the checkpoint records (``config.model``; the confirmation
    that its code may run); ValueError says so otherwise (naming the command-line ``option`` that
    gives ``factory``, e.g. ``--model``, where a command calls this), when it cannot be imported,
    and when it now builds a network that does not fit the saved weights."""
    from .calibrate import code_count_problem
    from .checkpoint import load_checkpoint
    from .plan import QuantPlan
    from .train import build_quantized_model

    where = str(checkpoint) if not isinstance(checkpoint, dict) else "the checkpoint"
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    recorded = state["config"]["model"]
    if is_factory(recorded):
        if factory is None:
            how = f"factory={recorded!r}" if option is None else f"{option} {recorded} (factory={recorded!r} in Python)"
            raise ValueError(f"{where} holds a run of the user model {recorded!r}; rebuilding it imports and runs "
                             f"that code, which loading a checkpoint never does by itself: pass {how} to confirm")
        if normalize_model(factory, "factory") != recorded:
            raise ValueError(f"{where} holds a run of the user model {recorded!r}, not of {factory!r}")
    elif factory is not None and factory != recorded:
        raise ValueError(f"{where} holds a run of the built-in model {recorded!r}, not of {factory!r}")
    model = build_quantized_model(recorded, state["input_shape"], state["num_classes"],
                                  QuantPlan.from_dict(state["plan"]), allow_factory=True,
                                  where=f"recorded in {where}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise ValueError(f"the model {recorded!r} no longer fits the weights saved in {where} ({lines[-1]}); "
                         "has its code changed?") from None
    problem = code_count_problem(model, state["metrics"].get("start_code_shares", {}))
    if problem:
        raise ValueError(f"{where}: {problem}")
    return model.eval()

