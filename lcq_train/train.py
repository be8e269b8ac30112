"""The trainer: full-precision pretraining, uniform baseline and LCQ fine-tuning.

Recipe (paper): SGD with Nesterov momentum 0.9, cosine decay per step after an
optional linear warm-up, separate learning rates for weights and quantizer
parameters (alpha, theta; no weight decay on them). After the last step the
weights are settled off their quantizers' thresholds
(:func:`~lcq_train.weight_codes.settle_weight_codes`) and BN statistics
re-estimated (``bn_batches``) before the last evaluation. Each epoch writes
``OUT/checkpoint.pt`` (:mod:`lcq_train.checkpoint`) and ``OUT/metrics.json``
atomically; ``resume=True`` continues from ``OUT/checkpoint.pt`` (same settings,
or more epochs to extend the run). Under torchrun (WORLD_SIZE > 1) it runs
DistributedDataParallel, one process per GPU (gloo on CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .arguments import (FloatRange, IntRange, decay_rate, default_device, device_problem, learning_rate,
                        nonnegative_float, nonnegative_int, positive_int, quantizer_rate)
from .atomic import leftovers
from .calibrate import (CLIP_INITS, activation_codes, calibrate_clips, code_count_problem, code_shares,
                        reestimate_bn)
from .checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rank_rng, save_checkpoint, save_json
from .data import DATASETS, load_dataset
from .loader import batches
from .factory import build_user_model, is_factory, normalize_model
from .models import build_model
from .plan import QuantPlan, apply_plan, layer_bits, quantizer_parameters
from .quantizer import Quantizer
from .run_lock import LOCK_NAME, run_lock
from .training_state import optimizer_state_problem, scheduler_state_problem
from .weight_codes import settle_weight_codes
from .weights_file import read_weights

SEED = IntRange(0, 2**32 - 1)        # what numpy's generator accepts
MOMENTUM = FloatRange(0.0, 1.0, lo_open=True)     # Nesterov momentum: torch refuses 0
# The settings a resumed run keeps: --resume refuses others. ``epochs`` may grow (extending the run);
# data_dir, device, out, progress may change.
RECIPE = ("model", "dataset", "plan", "batch_size", "lr", "q_lr", "weight_decay", "momentum", "warmup_epochs",
          "augment", "seed", "init", "init_skip", "clip_init", "bn_batches")
# RECIPE settings whose None means a default (of the plan, of the data set): left None, a resumed run keeps the
# saved run's; given, they are compared with the value the saved run had.
UNSET_IS_SAVED = ("lr", "augment")
# Settings added since the first saved configs, with the value every run before them had: the paper's
# recipe (``--clip-init fixed --bn-batches 0``), which the defaults below improve on (README, Results).
PAPER_RECIPE = {"clip_init": "fixed", "bn_batches": 0}
# Settings added since the first checkpoints, and the value runs had before them (a file without one takes it).
LATER_SETTINGS = {"init_skip": []}
# What `train` may ask of a new run's network before it trains: (model, input_shape, plan); ValueError refuses it.
CheckModel = Callable[[nn.Module, tuple, QuantPlan], None]
CALIBRATION_BATCHES = 4      # training batches (unaugmented) that --clip-init mse looks at


@dataclass
class TrainConfig:
    """One ``lcq train`` run: the model, data, quantization ``plan``, schedule and where it writes (``out``).
    Checked when made (ValueError naming the setting); saved in every checkpoint, so ``--resume`` and the benchmarks
    read back the run's own settings."""

    model: str = "cnn"               # a built-in model, or a factory reference MODULE:NAME / FILE.py:NAME
    dataset: str = "digits"
    data_dir: str | None = None
    plan: QuantPlan = field(default_factory=QuantPlan)
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None          # weights; default 0.1 for fp, 0.04 quantized
    q_lr: float = 0.02               # quantizer parameters (alpha, theta)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    augment: bool | None = None      # default: crop+flip for CIFAR-10
    # quantized runs only (an FP run records PAPER_RECIPE's values):
    clip_init: str = "mse"           # initial clips: "mse" (lcq_train.calibrate; from the init checkpoint, so
                                     # "fixed" without one), or "fixed": the plan's alpha_w/alpha_a
    bn_batches: int = 50             # after the last epoch, BN statistics re-estimated on this many batches
    init: str | None = None          # weights to start from (lcq_train.weights_file: e.g. the FP checkpoint)
    init_skip: list[str] = field(default_factory=list)     # layers whose --init weights are left out (a new head)
    seed: int = 0
    device: str | None = None        # default: cuda if available
    out: str = "runs/default"
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        """The rules of ``lcq train``'s options (:mod:`lcq_train.arguments`), for every way a config is made."""
        self.model = normalize_model(self.model, "model")     # a built-in name or a factory reference
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, not {self.dataset!r}")
        if not isinstance(self.plan, QuantPlan):
            raise ValueError(f"plan must be a QuantPlan, not {type(self.plan).__name__}")
        positive_int.check(self.epochs, "epochs")
        positive_int.check(self.batch_size, "batch_size")
        if self.lr is not None:
            learning_rate.check(self.lr, "lr")
        quantizer_rate.check(self.q_lr, "q_lr")
        decay_rate.check(self.weight_decay, "weight_decay")
        MOMENTUM.check(self.momentum, "momentum")
        nonnegative_float.check(self.warmup_epochs, "warmup_epochs")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} is longer than the run's {self.epochs} epochs: "
                             f"warm up for at most {self.epochs} (--warmup-epochs)")
        SEED.check(self.seed, "seed")
        if self.clip_init not in CLIP_INITS:
            raise ValueError(f"clip_init must be one of {CLIP_INITS}, not {self.clip_init!r}")
        nonnegative_int.check(self.bn_batches, "bn_batches")
        if self.plan.method == "fp":      # neither applies without quantizers: an FP run records the paper's values
            self.clip_init, self.bn_batches = PAPER_RECIPE["clip_init"], PAPER_RECIPE["bn_batches"]
        if self.init is None:             # the clip rule reads a pretrained model: from scratch, the fixed clips
            self.clip_init = PAPER_RECIPE["clip_init"]
        for name in ("augment", "resume", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "augment" and value is None):
                raise ValueError(f"{name} must be true or false{' or null' if name == 'augment' else ''}, not {value!r}")
        if not isinstance(self.init_skip, list) or not all(isinstance(n, str) and n.strip() == n and n
                                                              for n in self.init_skip):
            raise ValueError(f"init_skip must be a list of layer names, not {self.init_skip!r}")
        for name in ("data_dir", "init", "device", "out"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name != "out" and value is None):
                raise ValueError(f"{name} must be a path or name (a string), not {value!r}")

    def weight_lr(self) -> float:
        """The weights' learning rate: ``lr``, or the method's default where it is unset."""
        return self.lr if self.lr is not None else default_lr(self.plan.method)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of :meth:`to_dict`'s ``d``; ValueError names a key that does not belong or a bad value.
        Keys of :data:`PAPER_RECIPE` and :data:`LATER_SETTINGS` missing (a file written before them) take the
        value runs had then."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a JSON object, not {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        missing = sorted(known - set(d) - set(PAPER_RECIPE) - set(LATER_SETTINGS))
        if unknown or missing:
            raise ValueError(f"a training config has the keys {sorted(known)} (unknown here: {unknown}, "
                             f"missing: {missing})")
        d = {**PAPER_RECIPE, **LATER_SETTINGS, **d}
        d["plan"] = QuantPlan.from_dict(d["plan"])
        return cls(**d)


def build_quantized_model(model: str, input_shape, num_classes: int, plan: QuantPlan, *,
                          allow_factory: bool = False, where: str = "") -> nn.Module:
    """Model with the plan's quantizers installed (what checkpoints and the compiler rebuild).

    ``model``: a built-in name, or a factory reference (:mod:`lcq_train.factory`) built only with
    ``allow_factory`` (importing it runs its code: the caller vouches that the user gave it; a
    reference read from a checkpoint alone is refused, with the way to confirm it)."""
    if is_factory(model):
        if not allow_factory:
            raise ValueError(f"the model {model!r} is a user model factory; building it imports and runs that code, "
                             "which a checkpoint alone never does: rebuild it with "
                             f"lcq_train.model_from_checkpoint(checkpoint, factory={model!r})")
        return apply_plan(build_user_model(model, tuple(input_shape), num_classes, where), plan)
    return apply_plan(build_model(model, tuple(input_shape), num_classes), plan)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on uint8 images ``x``."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        n += yb.numel()
    model.train(was_training)
    return {"top1": 100.0 * correct / n, "loss": loss / n}


def _load_init(model: nn.Module, path: str, skip: list[str]) -> None:
    """Load the weights of ``--init path`` (:func:`~lcq_train.weights_file.read_weights`: an lcq checkpoint, a
    torch.save state dict or a safetensors file) into ``model``, but for those of the layers ``skip`` names
    (each a module name: its parameters and buffers keep the model's own initialization); ValueError naming the
    names and shapes that do not fit, or a skipped name that is no module's. The quantizers' clips and slopes
    (``alpha``, ``theta``) may be absent (an FP network has none), and so may a BN's ``num_batches_tracked``."""
    state, kind = read_weights(path)
    own = model.state_dict()
    modules = dict(model.named_modules())
    unknown = [name for name in skip if name not in modules or not name]
    if unknown:
        layers = [n for n, m in modules.items() if not isinstance(m, Quantizer) and list(m.parameters(recurse=False))]
        raise ValueError(f"--init-skip {unknown[0]!r} names no layer of this model; its layers: {layers[:12]}"
                         + (f" (and {len(layers) - 12} more)" if len(layers) > 12 else ""))

    def skipped(key: str) -> bool:
        return any(key.startswith(f"{name}.") for name in skip)

    state = {k: v for k, v in state.items() if not skipped(k)}
    own = {k: v for k, v in own.items() if not skipped(k)}
    fix = ("pretrain with the same --model and --dataset" if kind == "an lcq checkpoint" else
           "save the state dict of the same network, built for this dataset's image shape and classes")
    shapes = [f"{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    quantizers = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, Quantizer)
                  for p in ("alpha", "theta")}
    missing = [k for k in own if k not in state and k not in quantizers and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        problems = [f"{what} {names[:5]}" + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")
                    for what, names in (("shapes differ:", shapes), ("the file lacks", missing),
                                        ("the model has no", unexpected)) if names]
        heads = sorted({k.rpartition(".")[0] for k, v in state.items() if k in own and v.shape != own[k].shape})
        if heads and not (missing or unexpected):
            fix += f", or leave those layers out (--init-skip {' --init-skip '.join(heads)}: a new classifier)"
        raise ValueError(f"--init {path} ({kind}) does not fit this model: {'; '.join(problems)}; {fix}")
    model.load_state_dict(state, strict=False)


def _check_weight_spread(model: nn.Module, where: str) -> None:
    """ValueError naming a quantized layer whose weights (from ``where``) are all equal (a zero-initialized
    one): its weight quantizer divides them by their standard deviation, 0, and every loss would be NaN."""
    for name, module in model.named_modules():
        wq = getattr(module, "wq", None)
        if isinstance(wq, Quantizer) and wq.method != "fp" and wq.weight_norm:
            sigma = wq.normalization(module.weight)[1]
            if not (torch.isfinite(sigma) and sigma > 0):
                raise ValueError(f"layer {name!r} of {where} has weights of standard deviation {sigma.item():g} (all "
                                 "equal, e.g. zero-initialized, or not finite); its weight quantizer divides them "
                                 "by it (either --weight-norm), so training would give NaN: initialize them randomly "
                                 "(torch.nn's default), or pretrain with --method fp and pass that checkpoint as "
                                 "--init")


def _check_out_dir(out: Path, resume: bool) -> None:
    """``--out`` holds the run to resume (``resume``), or is new or empty: nothing there is overwritten."""
    ckpt_path = out / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint.pt to continue; drop --resume to start "
                                    "a new run there")
        return
    if ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue that run or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and p not in _temporaries(out)) \
        if out.is_dir() else []
    if others:
        raise FileExistsError(f"--out {out} is not empty and holds no run of lcq train (no checkpoint.pt; it holds "
                              f"{others[:5]}{' ...' if len(others) > 5 else ''}); choose a new or empty directory, "
                              "so that nothing there is overwritten")


def _temporaries(out: Path) -> list[Path]:
    """The temporary files a run killed inside :func:`~lcq_train.atomic.atomic_write` left in ``out``
    (:func:`~lcq_train.atomic.leftovers` of its checkpoint and history)."""
    return [p for name in ("checkpoint.pt", "metrics.json") for p in leftovers(out / name)]


def _option(name: str) -> str:
    """The command-line option of a TrainConfig or QuantPlan field."""
    return "momentum" if name == "momentum" else "--" + name.replace("_", "-")


def _same_path(a: str | None, b: str | None) -> bool:
    return a == b or (a is not None and b is not None and os.path.abspath(a) == os.path.abspath(b))


def default_lr(method: str) -> float:
    """The weights' learning rate when none is given: 0.1 for FP training, 0.04 for fine-tuning a quantized one."""
    return 0.1 if method == "fp" else 0.04


def default_augment(dataset: str) -> bool:
    """Augmentation when none is asked: on (crop and flip) for CIFAR-10, off otherwise (a flipped digit is no
    digit, and your own images' may not be either: --augment turns it on)."""
    return dataset == "cifar10"


def _ran_with(name: str, config: dict):
    """The value a run of ``config`` (``to_dict`` form) had for ``lr`` or ``augment``, which None leaves to a
    default of its plan or data set; other settings as they are."""
    value = config[name]
    if value is None and name == "lr":
        return default_lr(config["plan"]["method"])
    if value is None and name == "augment":
        return default_augment(config["dataset"])
    return value


def check_continues(ckpt_path: Path, saved: dict, asked: dict, given=None) -> None:
    """Raise ValueError listing the RECIPE settings in which config dict ``asked`` (``to_dict`` form;
    only the names in ``given`` when not None) differs from the ``saved`` run's. ``lr`` and ``augment`` are
    compared as the run had them (None: the default); left None in ``asked``, they are the saved run's."""
    lines = []
    for name in RECIPE:
        old, new = saved[name], asked[name]
        if name == "plan":
            lines += [f"{_option(key)} {old[key]!r} there, {new[key]!r} asked" for key in (f.name for f in fields(QuantPlan))
                      if (given is None or key in given) and old[key] != new[key]]
        elif name in UNSET_IS_SAVED:
            if (given is None or name in given) and new is not None and _ran_with(name, saved) != new:
                default = " (the default)" if old is None else ""
                lines.append(f"{_option(name)} {_ran_with(name, saved)!r}{default} there, {new!r} asked")
        elif (given is None or name in given) and not (_same_path(old, new) if name == "init" else old == new):
            lines.append(f"{_option(name)} {old!r} there, {new!r} asked")
    if lines:
        raise ValueError(f"{ckpt_path} holds a run with other settings, and resuming continues a run only as it "
                         f"was started: {'; '.join(lines)}. Drop those options (or give the saved values) to "
                         "continue it, or choose another --out for a new run")


def _resume_state(ckpt_path: Path, cfg: TrainConfig, finished_ok: bool) -> tuple[dict, TrainConfig]:
    """The checkpoint to resume and the saved run's config, after checking that ``cfg`` continues it. The
    run's metrics.json is rewritten from the checkpoint's history (a run killed between writing the two
    left it an epoch behind)."""
    state = load_checkpoint(ckpt_path)
    if process_rank() == 0:
        save_json(state["metrics"], ckpt_path.parent / "metrics.json")
    saved = TrainConfig.from_dict(state["config"])
    check_continues(ckpt_path, saved.to_dict(), cfg.to_dict())
    done = state["epoch"]
    if cfg.epochs < saved.epochs:
        raise ValueError(f"--epochs {cfg.epochs} is fewer than the {saved.epochs} epochs of the run in {ckpt_path.parent}; "
                         f"omit --epochs to finish it, or pass more than {saved.epochs} to extend it")
    if done >= cfg.epochs and not finished_ok:
        raise ValueError(f"the run in {ckpt_path.parent} already finished its {done} epochs (test top-1 "
                         f"{state['metrics']['test_top1']:.2f}%): nothing to train. Pass --epochs N with N > {done} "
                         "to extend it, or choose another --out for a new run")
    return state, saved


def process_rank() -> int:
    """This process's rank, from the launcher's environment (0 without one), before any process group."""
    return int(os.environ.get("RANK", "0"))


PEER_TIMEOUT = timedelta(minutes=30)
"""The longest one training process waits for the others (at an epoch's end, rank 0 evaluates while the rest
wait to send it their generator states, then writes the checkpoint while they wait at a barrier); then its
collective raises."""


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size), joining the launcher's process group (torchrun) when there is one: NCCL's for a run on
    ``device`` CUDA, else gloo's (NCCL has no collectives for CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PEER_TIMEOUT)
    return (dist.get_rank() if world > 1 else 0), world


def _gather_rng(world: int) -> list[dict] | None:
    """Every process's :func:`~lcq_train.checkpoint.capture_rng`, by rank, on rank 0 (None on the others). Under
    torchrun (``world`` > 1) a collective: every rank calls it at the same point."""
    if world == 1:
        return [capture_rng()]
    states = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(capture_rng(), states, dst=0)
    return states


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train(cfg: TrainConfig, *, finished_ok: bool = True, check_model: CheckModel | None = None) -> dict:
    """Run training per ``cfg``; returns the metrics dict also written to OUT/metrics.json.

    ``check_model(model, input_shape, plan)``, where given, sees the network of a new run (not a resumed one)
    as built, before anything trains, and raises ValueError to refuse it (nothing is written; ``lcq train``
    passes :func:`compiler.preflight.check_network`).

    ``cfg.out`` must be new or empty, or, with ``cfg.resume``, hold the run to continue: its
    RECIPE settings must equal ``cfg``'s (ValueError lists the differences; ``lr`` and ``augment`` left None
    are the saved run's), and ``cfg.epochs``
    larger than the saved run's extends it (said on stdout). A resumed run that has already
    finished its epochs returns its saved metrics, or with ``finished_ok=False`` (``lcq train``)
    raises ValueError: nothing to train is an error there. The writing process holds OUT's lock
    (:mod:`lcq_train.run_lock`) throughout: a second training there is refused at once.
    """
    if cfg.device is not None and device_problem(cfg.device):
        raise ValueError(f"--device {cfg.device}: {device_problem(cfg.device)}")
    if cfg.init_skip and cfg.init is None and not cfg.resume:      # (a resumed run's --init is the saved one)
        raise ValueError(f"--init-skip {' '.join(cfg.init_skip)} leaves layers out of --init weights: give "
                         "--init too")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a directory")
    _check_out_dir(out, cfg.resume)            # (also before the lock, so a refused directory gets no lock file)
    with run_lock(out) if process_rank() == 0 else contextlib.nullcontext():
        return _train(cfg, out, finished_ok, check_model)


def _train(cfg: TrainConfig, out: Path, finished_ok: bool, check_model: CheckModel | None) -> dict:
    ckpt_path = out / "checkpoint.pt"
    _check_out_dir(out, cfg.resume)            # (again under the lock: nothing came in meanwhile)
    if process_rank() == 0:
        for path in _temporaries(out):          # no other lcq train writes here (the lock): left by a killed one
            path.unlink()
    resume_state, saved = _resume_state(ckpt_path, cfg, finished_ok) if cfg.resume else (None, None)
    if saved is not None:                      # settings left None: the saved run's (recorded so in the checkpoint)
        cfg = replace(cfg, **{name: getattr(saved, name) for name in UNSET_IS_SAVED if getattr(cfg, name) is None})
    if resume_state is not None and resume_state["epoch"] >= cfg.epochs:
        return resume_state["metrics"]
    device = torch.device(cfg.device or default_device(int(os.environ.get("LOCAL_RANK", "0"))))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    rank, world = _distributed(device)
    if resume_state is not None and rank == 0:
        done = resume_state["epoch"]
        if cfg.epochs > saved.epochs:
            print(f"extending the run in {out} from {saved.epochs} to {cfg.epochs} epochs: it continues after epoch "
                  f"{done}, with its cosine learning-rate schedule stretched over {cfg.epochs} epochs", flush=True)
        else:
            print(f"resuming the run in {out} after epoch {done} of {cfg.epochs}", flush=True)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    if resume_state is not None:
        data.check_trained_on(resume_state["input_shape"], resume_state.get("classes"), cfg.data_dir)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    augment = cfg.augment if cfg.augment is not None else default_augment(cfg.dataset)

    model = build_quantized_model(cfg.model, data.input_shape, data.num_classes, cfg.plan, allow_factory=True)
    if cfg.init and resume_state is None:
        _load_init(model, cfg.init, cfg.init_skip)
    if resume_state is None:
        _check_weight_spread(model, f"--init {cfg.init}" if cfg.init else f"--model {cfg.model}")
        if check_model is not None:
            check_model(model, data.input_shape, cfg.plan)
    model.to(device)
    clips, start_codes = {}, {}
    if resume_state is None and cfg.plan.method != "fp":
        calibration = list(_inputs(train_x, train_y, cfg, CALIBRATION_BATCHES))
        if cfg.clip_init != "fixed":
            clips = calibrate_clips(model, calibration, cfg.clip_init)
        model.eval()                                          # where the activations start (eval mode)
        start_codes = code_shares(activation_codes(model, calibration))
    q_params = quantizer_parameters(model)
    q_ids = {id(p) for p in q_params}
    w_params = [p for p in model.parameters() if id(p) not in q_ids and p.requires_grad]
    groups = [{"params": w_params, "lr": cfg.weight_lr(), "weight_decay": cfg.weight_decay}]
    if q_params:
        groups.append({"params": q_params, "lr": cfg.q_lr, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = math.ceil((train_x.shape[0] // world) / cfg.batch_size)
    warning = few_steps_warning(model, cfg.epochs, steps_per_epoch, train_x.shape[0], cfg.batch_size)
    if warning and rank == 0:
        print(f"lcq train: warning: {warning}", file=sys.stderr, flush=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)))

    metrics = {"config": cfg.to_dict(), "layers": {k: list(v) for k, v in _bits(model, cfg.plan).items()},
               "params": sum(p.numel() for p in w_params), "epochs": []}
    if clips:
        metrics["calibrated_clips"] = clips
    if start_codes:
        metrics["start_code_shares"] = start_codes        # per activation quantizer: each code's share
    start_epoch = 0
    if resume_state is not None:
        problems = {"optimizer": optimizer_state_problem(resume_state["optimizer"], optimizer),
                    "scheduler": scheduler_state_problem(resume_state["scheduler"], scheduler,
                                                         resume_state["epoch"] * steps_per_epoch),
                    "layers": None if resume_state["layers"] == metrics["layers"] else
                    f"are {resume_state['layers']}, where this run's model and plan give {metrics['layers']}"}
        for what, problem in problems.items():
            if problem:
                raise CheckpointError(f"{ckpt_path}: its {what} {problem}; it is not a checkpoint this lcq wrote "
                                      "for these settings")
        for what, target in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
            try:
                target.load_state_dict(resume_state[what])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                raise CheckpointError(f"{ckpt_path}: its {what} state does not fit this run ({e}); it is not a "
                                      "checkpoint this lcq wrote for these settings") from None
        problem = code_count_problem(model, resume_state["metrics"].get("start_code_shares", {}))
        if problem:
            raise CheckpointError(f"{ckpt_path}: {problem}")
        # the learning rates at the saved step of this run's schedule (the same values where it is the saved
        # run's; an extended run's schedule is stretched)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        for notice in restore_rank_rng(resume_state, rank, world, str(ckpt_path)):
            if rank == 0:
                print(notice, flush=True)
        start_epoch = resume_state["epoch"]
        metrics = {**resume_state["metrics"], "config": cfg.to_dict(), "layers": metrics["layers"],
                   "params": metrics["params"]}
    metrics["environment"] = _environment(device)        # of the latest start (a resumed run: of the resumption)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # sums stay on the device: reading them each step would make the host wait on the GPU each step
        seen, correct, loss_sum = 0, torch.zeros((), dtype=torch.long, device=device), \
            torch.zeros((), dtype=torch.float64, device=device)
        loader = batches(train_x, train_y, cfg.batch_size, shuffle=True, seed=cfg.seed * 100003 + epoch,
                         augment=augment, rank=rank, world_size=world)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or rank != 0 or not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
        for xb, yb in bar:
            loss, hits = train_step(net, optimizer, scheduler, xb, yb)
            seen += yb.numel()
            loss_sum += loss.double() * yb.numel()
            correct += hits
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", top1=f"{100.0 * correct.item() / seen:.1f}")
        loss_sum, correct = loss_sum.item(), correct.item()
        lr = cfg.weight_lr()
        check_diverged(model, epoch, loss_sum / seen, ckpt_path, lr, device, world)
        if epoch == start_epoch and rank == 0 and correct <= 1.2 * seen / data.num_classes:
            print(f"lcq train: warning: {chance_warning(model, epoch, 100.0 * correct / seen, data.num_classes, lr)}",
                  file=sys.stderr, flush=True)
        before_bn, settled = None, None
        if epoch + 1 == cfg.epochs:     # every rank alike: the same weights give the same moves
            settled = sum(settle_weight_codes(model).values())
            if cfg.bn_batches:
                before_bn = evaluate(model, test_x, test_y)["top1"] if rank == 0 else None
                reestimate_bn(model, _inputs(train_x, train_y, cfg, cfg.bn_batches, augment=augment, rank=rank,
                                             world=world))
        test = evaluate(model, test_x, test_y) if rank == 0 else None
        rngs = _gather_rng(world)                  # (after rank 0's evaluation, which may draw)
        if rank == 0:
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                   "test_loss": test["loss"], "test_top1": test["top1"], "lr": optimizer.param_groups[0]["lr"],
                   "time_s": time.perf_counter() - t0}
            if before_bn is not None:
                row["test_top1_before_bn"] = before_bn
            if settled is not None:
                row["settled_weights"] = settled
            metrics["epochs"].append(row)
            metrics["test_top1"] = row["test_top1"]
            metrics["best_test_top1"] = max(r["test_top1"] for r in metrics["epochs"])
            save_checkpoint({"config": cfg.to_dict(), "plan": cfg.plan.to_dict(),
                             "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                             "classes": list(data.classes),
                             "layers": metrics["layers"], "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "epoch": epoch + 1, "rng": rngs[0], **({"rank_rng": rngs[1:]} if world > 1 else {}),
                             "metrics": metrics}, ckpt_path)
            save_json(metrics, out / "metrics.json")
            if cfg.progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f}  "
                      f"train top-1 {row['train_top1']:.2f}%  test top-1 {row['test_top1']:.2f}%  "
                      f"({row['time_s']:.1f} s)", flush=True)
        if world > 1:
            dist.barrier()
    if "test_top1" not in metrics and rank == 0:
        metrics["test_top1"] = evaluate(model, test_x, test_y)["top1"]
    return metrics


class TrainingDiverged(ValueError):
    """An epoch's training loss or the weights after it are not finite: the run stops before it saves them."""


def _lr_advice(model: nn.Module, lr: float) -> str:
    """How to lower the run's learning rate ``lr``, for a network with or without BatchNorm."""
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return (f"train again with a lower --lr (now {lr:g}" + (")" if batch_norm else
            "; a network without BatchNorm often needs 0.01 to 0.02: the PyTorch CIFAR-10 tutorial's Net trains at "
            "0.02 in full precision and 0.01 with LCQ)"))


def check_diverged(model: nn.Module, epoch: int, loss: float, ckpt_path: Path, lr: float, device: torch.device,
                   world: int) -> None:
    """:class:`TrainingDiverged` where the epoch's mean training ``loss`` or a parameter or buffer of ``model``
    after it is not finite (on any process of a distributed run: all of them stop), naming the checkpoint kept
    (the epoch before's) and the fix."""
    weights = torch.stack([torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()])
    diverged = not (math.isfinite(loss) and bool(weights.all()))
    if world > 1:
        flag = torch.tensor([float(diverged)], device=device)
        dist.all_reduce(flag)
        diverged = flag.item() > 0
    if diverged:
        kept = (f"the checkpoint of epoch {epoch} is kept ({ckpt_path})" if epoch else "no checkpoint was written")
        what = (f"the training loss is {loss:g}" if not math.isfinite(loss) else
                f"the weights are not finite (the training loss {loss:.3g})")
        raise TrainingDiverged(f"epoch {epoch + 1}: {what}: the run diverged and stops; {kept}. "
                               f"{_lr_advice(model, lr)}, into a new --out")


def few_steps_warning(model: nn.Module, epochs: int, steps_per_epoch: int, images: int, batch_size: int) -> str | None:
    """What to say where a run's ``epochs`` x ``steps_per_epoch`` steps leave over 5% of their starting values in
    the running statistics of ``model``'s BN layers (each step keeps ``1 - momentum`` of them): eval mode (the
    test top-1, and the compiled model) then lags training, as on a small folder of images; None otherwise."""
    kept = max(((1 - m.momentum) ** (epochs * steps_per_epoch) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None), default=0.0)
    if kept <= 0.05:
        return None
    return (f"the run takes {epochs * steps_per_epoch} steps ({epochs} epoch(s) of {steps_per_epoch}: {images} "
            f"training images at --batch-size {batch_size}), after which the BN layers' running statistics keep "
            f"{100 * kept:.0f}% of their starting values, so eval mode (the test top-1, the compiled model) lags "
            "training: train more epochs (--epochs) or take smaller batches (--batch-size)")


def chance_warning(model: nn.Module, epoch: int, top1: float, classes: int, lr: float) -> str:
    """What to say where the run's first epoch trained to ``top1`` (%), about chance for ``classes`` classes."""
    return (f"after epoch {epoch + 1} the training top-1 is {top1:.2f}%, about chance for {classes} classes: the "
            f"network may not be learning; if it stays there, {_lr_advice(model, lr)}")


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, scheduler, xb: torch.Tensor,
               yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the batch ``(xb, yb)``, then one scheduler step: (mean loss, correct count), both
    0-d tensors on the batch's device. Reads no value back to the host, so on a GPU the step only queues
    work (tests/test_train_step_device.py runs it on the "meta" device, where any read would raise)."""
    logits = net(xb)
    loss = F.cross_entropy(logits, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.argmax(1) == yb).sum()


def _inputs(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, count: int, *, augment: bool = False, rank: int = 0,
            world: int = 1):
    """The images of ``count`` shuffled training batches (an order of their own, not an epoch's)."""
    loader = batches(x, y, cfg.batch_size, shuffle=True, seed=cfg.seed * 100003 - 1, augment=augment, rank=rank,
                     world_size=world)
    return (xb for xb, _ in itertools.islice(loader, count))


def _environment(device: torch.device) -> dict:
    """What a run's numbers depend on besides its config: versions, the device, the CPU threads and the CPU's
    vector instructions that torch's kernels use (``cpu_capability``: AVX2 and AVX512 kernels sum in other orders,
    so a CPU run repeats bit for bit only on the same)."""
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
           "python": platform.python_version(), "device": str(device), "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "host": platform.node()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def _bits(model: nn.Module, plan: QuantPlan) -> dict:
    if plan.method == "fp":
        return {}
    return layer_bits(model, plan)
