"""The trainer: full-precision pretraining, uniform baseline and LCQ fine-tuning.

Recipe (paper): SGD with Nesterov momentum 0.9, cosine decay per step after an
optional linear warm-up, separate learning rates for weights and quantizer
parameters (alpha, theta; no weight decay on them). Each epoch writes
``OUT/checkpoint.pt`` and ``OUT/metrics.json`` atomically; ``resume=True``
continues from ``OUT/checkpoint.pt``. Under torchrun (WORLD_SIZE > 1) it runs
DistributedDataParallel, one process per GPU (gloo on CPU).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint, save_json
from .data import load_dataset
from .loader import batches
from .models import build_model
from .plan import QuantPlan, apply_plan, layer_bits, quantizer_parameters


@dataclass
class TrainConfig:
    model: str = "cnn"
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
    augment: bool | None = None      # default: crop+flip for 32x32 RGB data
    init: str | None = None          # checkpoint to start from (e.g. the FP one)
    seed: int = 0
    device: str | None = None        # default: cuda if available
    out: str = "runs/default"
    resume: bool = False
    progress: bool = True

    def weight_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.plan.method == "fp" else 0.04)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["plan"] = QuantPlan.from_dict(d["plan"])
        return cls(**d)


def build_quantized_model(model: str, input_shape, num_classes: int, plan: QuantPlan) -> nn.Module:
    """Model with the plan's quantizers installed (what checkpoints and the compiler rebuild)."""
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


def _load_init(model: nn.Module, path: str) -> None:
    state = load_checkpoint(path)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in missing if not k.endswith((".alpha", ".theta"))]
    if bad_missing or unexpected:
        raise ValueError(f"--init {path} does not fit this model: missing {bad_missing[:5]}, unexpected {unexpected[:5]}; "
                         "pretrain with the same --model and --dataset")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, int(os.environ.get("LOCAL_RANK", "0"))


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train(cfg: TrainConfig) -> dict:
    """Run training per ``cfg``; returns the metrics dict also written to OUT/metrics.json."""
    rank, world, local_rank = _distributed()
    device = torch.device(cfg.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    resume_state = load_checkpoint(ckpt_path) if cfg.resume else None
    if resume_state is not None:
        # A resumed run keeps every setting it was started with.
        cfg = TrainConfig.from_dict({**resume_state["config"], "resume": True, "progress": cfg.progress})
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue that run or choose another --out")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    augment = cfg.augment if cfg.augment is not None else data.input_shape == (3, 32, 32)

    model = build_quantized_model(cfg.model, data.input_shape, data.num_classes, cfg.plan)
    if cfg.init and resume_state is None:
        _load_init(model, cfg.init)
    model.to(device)
    q_params = quantizer_parameters(model)
    q_ids = {id(p) for p in q_params}
    w_params = [p for p in model.parameters() if id(p) not in q_ids and p.requires_grad]
    groups = [{"params": w_params, "lr": cfg.weight_lr(), "weight_decay": cfg.weight_decay}]
    if q_params:
        groups.append({"params": q_params, "lr": cfg.q_lr, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = math.ceil((train_x.shape[0] // world) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)))

    metrics = {"config": cfg.to_dict(), "layers": {k: list(v) for k, v in _bits(model, cfg.plan).items()},
               "params": sum(p.numel() for p in w_params), "epochs": []}
    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        _set_rng_state(resume_state["rng"])
        start_epoch = resume_state["epoch"]
        metrics = resume_state["metrics"]
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        loader = batches(train_x, train_y, cfg.batch_size, shuffle=True, seed=cfg.seed * 100003 + epoch,
                         augment=augment, rank=rank, world_size=world)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or rank != 0, leave=False, dynamic_ncols=True)
        for xb, yb in bar:
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += yb.numel()
            loss_sum += loss.item() * yb.numel()
            correct += (logits.argmax(1) == yb).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{100.0 * correct / seen:.1f}")
        if rank == 0:
            test = evaluate(model, test_x, test_y)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                   "test_loss": test["loss"], "test_top1": test["top1"], "lr": optimizer.param_groups[0]["lr"],
                   "time_s": time.perf_counter() - t0}
            metrics["epochs"].append(row)
            metrics["test_top1"] = row["test_top1"]
            metrics["best_test_top1"] = max(r["test_top1"] for r in metrics["epochs"])
            save_checkpoint({"config": cfg.to_dict(), "plan": cfg.plan.to_dict(),
                             "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                             "layers": metrics["layers"], "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "epoch": epoch + 1, "rng": _rng_state(), "metrics": metrics}, ckpt_path)
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


def _bits(model: nn.Module, plan: QuantPlan) -> dict:
    if plan.method == "fp":
        return {}
    return layer_bits(model, plan)
