"""The optimizer and learning-rate scheduler states a checkpoint carries for ``--resume``, checked against
the ones the resumed run builds from its (already checked) config before torch loads them.

torch's ``load_state_dict`` takes what it is given (a scheduler copies every key onto itself), so a state
this lcq did not write would crash the run inside torch, an epoch later, or quietly train with other
settings. The rule is the writer's: the same keys as the fresh state, every hyperparameter equal to the
fresh one (the config sets them all), a momentum buffer of its parameter's shape and dtype, and the
schedule at the step the checkpoint's epochs end on (the learning rates the trainer recomputes from it).
"""

from __future__ import annotations

import math

import torch

# the keys whose values change while training: all others must equal the fresh state's
_CHANGING_GROUP_KEYS = {"lr"}
_CHANGING_SCHEDULER_KEYS = {"last_epoch", "_step_count", "_last_lr"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def optimizer_state_problem(saved, optimizer: torch.optim.Optimizer) -> str | None:
    """What makes ``saved`` other than a state dict of ``optimizer`` (as built for this run) that training
    wrote; None when nothing does."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        return f"is not a state dict with exactly the keys {sorted(fresh)}"
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        return f"has param_groups {type(groups).__name__} of {len(groups) if isinstance(groups, list) else '?'} " \
               f"groups, not a list of {len(fresh['param_groups'])}"
    for i, (group, want) in enumerate(zip(groups, fresh["param_groups"])):
        if not isinstance(group, dict) or set(group) != set(want):
            return f"has a parameter group {i} without exactly the keys {sorted(want)}"
        for key, value in group.items():
            if key in _CHANGING_GROUP_KEYS:
                if not _number(value) or value < 0:
                    return f"has group {i}'s {key} {value!r}, not a finite number >= 0"
            elif value != want[key] or type(value) is not type(want[key]):
                return f"has group {i}'s {key} {value!r}, where this run's settings give {want[key]!r}"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["state"]
    if not isinstance(state, dict):
        return "has a state that is not a map of parameter indices"
    for index, entry in state.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(params):
            return f"has state for parameter {index!r}, not an index 0..{len(params) - 1}"
        buffer = entry.get("momentum_buffer") if isinstance(entry, dict) and set(entry) == {"momentum_buffer"} else None
        p = params[index]
        if not isinstance(buffer, torch.Tensor) or buffer.shape != p.shape or buffer.dtype != p.dtype:
            return (f"has state for parameter {index} that is not exactly a momentum_buffer of its shape "
                    f"{tuple(p.shape)} and dtype {p.dtype}")
    return None


def scheduler_state_problem(saved, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> str | None:
    """What makes ``saved`` other than a state dict of ``scheduler`` (as built for this run) that training
    wrote after ``steps`` steps (the checkpoint's epochs times this run's steps per epoch); None when
    nothing does."""
    fresh = scheduler.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        return f"is not a state dict with exactly the keys {sorted(fresh)}"
    for key, want in fresh.items():
        if key not in _CHANGING_SCHEDULER_KEYS and (saved[key] != want or type(saved[key]) is not type(want)):
            return f"has {key} {saved[key]!r}, where this run's settings give {want!r}"
    step = saved["last_epoch"]
    if isinstance(step, bool) or not isinstance(step, int) or step != steps:
        return (f"has last_epoch {step!r}, not the {steps} steps its epochs take here (the training images, "
                "the batch size and the number of processes set the steps per epoch: resume with the run's)")
    if saved["_step_count"] != step + 1 or isinstance(saved["_step_count"], bool):
        return f"has _step_count {saved['_step_count']!r}, not last_epoch + 1 = {step + 1}"
    lrs = saved["_last_lr"]
    if not isinstance(lrs, list) or len(lrs) != len(fresh["_last_lr"]) or not all(_number(v) for v in lrs):
        return f"has _last_lr {lrs!r}, not {len(fresh['_last_lr'])} finite numbers"
    return None
