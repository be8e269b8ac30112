"""``lcq plot RUN_DIR``: pictures of a training run (matplotlib, the ``plot`` extra).

Writes PNGs to ``--out`` (default ``RUN_DIR/plots``):

- ``quantizer-<layer>.png`` for every quantized layer: the paper's Fig. 2 for its weight and its
  activation quantizer, from the checkpoint's alpha and theta through the quantizer code of
  :mod:`lcq_train.quant`: the learned compander ``f`` on [0, 1] with the b-bit grid it maps back
  (``f^-1(i / s)``), and the quantizer's transfer function ``Q(x)`` with its output levels (weights in
  units of sigma_w, LWN or standardization, over a histogram of the layer's normalized weights);
- ``companders.png``: every layer's ``f`` for weights and for activations on one picture;
- ``curves.png``: the training curves of ``metrics.json`` (loss, top-1, learning rate per epoch);
- ``activation-codes.png``: per activation quantizer, the histogram of its integer codes on a few
  batches of training images (``--images``; needs the run's data set, ``--data-dir``; none for a run
  without integer codes, ``--outer-bits 0``, which the log says).

Checkpoints are read with :func:`lcq_train.checkpoint.load_checkpoint` only (no pickle).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .atomic import AtomicFiles
from .calibrate import activation_codes
from .checkpoint import load_checkpoint
from .factory import model_from_checkpoint
from .metrics import read_metrics
from .plan import _image
from .quant import compander, expand_levels, level_scale

EXTRA_HINT = "pip install -e '.[plot]' (or pip install 'matplotlib>=3.7')"


def _figure_class():
    """matplotlib's Figure with the Agg canvas (no pyplot: no global state, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ModuleNotFoundError(f"lcq plot needs matplotlib, the optional `plot` extra, which is not installed "
                                  f"({e}): {EXTRA_HINT}", name="matplotlib") from None

    def figure(**kwargs):
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig
    return figure


def _save_png(fig, path: Path, files: AtomicFiles) -> Path:
    """``fig`` as a PNG to be at ``path`` once ``files`` commits (a temporary until then, so that a failure of a
    later PNG leaves the previous set as it was)."""
    try:
        files.write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as e:
        raise OSError(f"cannot write {path} ({e.strerror or e})") from None
    return path


def load_run(run_dir: str | Path) -> tuple[dict, dict]:
    """The checkpoint state and the metrics (``metrics.json``, else the checkpoint's) of a run directory
    (or of a checkpoint file)."""
    run_dir = Path(run_dir)
    ckpt = run_dir if run_dir.is_file() else run_dir / "checkpoint.pt"
    if not run_dir.exists():
        raise FileNotFoundError(f"no run {run_dir}: pass the --out directory of an `lcq train` run")
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt: pass the --out directory of an `lcq train` run")
    state = load_checkpoint(ckpt)
    metrics_path = ckpt.parent / "metrics.json"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else state["metrics"]
    return state, metrics


def quantizer_curves(q, points: int = 2001) -> dict:
    """The compander and the transfer function of quantizer ``q`` (a Quantizer, method uniform or lcq).

    ``v, f``: f on [0, 1] (the identity for uniform); ``grid``: f^-1(i / s), i = 0..s, the inputs at
    which the b-bit grid of q_b falls back onto [0, 1]; ``x, y``: Q(x) over 1.25 clip ranges (x in units
    of sigma_w for weights); ``levels``: the output levels alpha * L / s' (alpha * f^-1(i / s) without
    outer bits), i = 0..s; ``alpha``, ``bits``, ``method``, ``signed``.
    """
    theta = q.theta.detach().double() if q.method == "lcq" else None
    s = level_scale(q.spec.bits, q.signed)
    v = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    if theta is None:
        f = v.clone()
    else:
        gamma, beta = compander(theta)
        K = theta.numel()
        k = torch.clamp((v * K).floor().long(), max=K - 1)
        f = gamma[k] * (v - k.double() / K) + beta[k]
    grid, _ = expand_levels(theta, s, torch.float64)
    alpha = float(q.alpha.detach())
    if q.spec.outer_bits is None:
        levels = alpha * grid
    else:
        so = level_scale(q.spec.outer_bits, q.signed)
        levels = alpha * torch.round(grid * so) / so
    lo = -1.25 * alpha if q.signed else -0.1 * alpha
    x = torch.linspace(lo, 1.25 * alpha, points, dtype=torch.float32)
    with torch.no_grad():
        y = q.quantize(x)
    return {"v": v.numpy(), "f": f.numpy(), "grid": grid.numpy(), "x": x.numpy(), "y": y.double().numpy(),
            "levels": levels.numpy(), "alpha": alpha, "bits": q.spec.bits, "method": q.method, "signed": q.signed}


def quantized_layers(model: torch.nn.Module) -> list[tuple[str, object, str, object]]:
    """(layer, its weight quantizer, activation quantizer name, the activation quantizer) in forward order."""
    modules = dict(model.named_modules())
    return [(name, modules[name].wq, act, modules[act]) for name, act in model.quant_layers()]


def _filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _compander_panel(ax, c: dict, title: str) -> None:
    s = len(c["grid"]) - 1
    ax.plot(c["v"], c["f"], color="C0", lw=1.8, label="f (learned)" if c["method"] == "lcq" else "f (uniform: identity)")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="identity")
    for i, g in enumerate(c["grid"]):
        ax.plot([0, g, g], [i / s, i / s, 0], color="C1", lw=0.7, alpha=0.8, label="f^-1(i/s)" if i == 1 else None)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="v = |x| / alpha", ylabel="f(v)", title=title)
    ax.legend(loc="lower right", fontsize=7)


def _transfer_panel(ax, c: dict, title: str, xlabel: str, samples=None) -> None:
    if samples is not None:
        twin = ax.twinx()
        lo, hi = c["x"][0], c["x"][-1]
        twin.hist(samples, bins=120, range=(lo, hi), color="0.85")      # (samples beyond the axis: not drawn)
        beyond = float(((samples < lo) | (samples > hi)).mean()) if len(samples) else 0.0
        if beyond:
            ax.text(0.98, 0.02, f"{100 * beyond:.1f}% of x beyond the axis", transform=ax.transAxes, ha="right",
                    fontsize=7, color="0.4")
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.plot(c["x"], c["x"].clip(-c["alpha"] if c["signed"] else 0, c["alpha"]), color="0.6", lw=0.8, ls="--",
            label="clip(x)")
    ax.plot(c["x"], c["y"], color="C0", lw=1.6, label="Q(x)")
    levels = sorted(set(c["levels"].tolist()) | ({-v for v in c["levels"].tolist()} if c["signed"] else set()))
    for value in levels:
        ax.axhline(value, color="C1", lw=0.5, alpha=0.6)
    ax.set(xlabel=xlabel, ylabel="Q(x)", title=title)
    ax.legend(loc="upper left", fontsize=7)


def _weight_xlabel(q) -> str:
    """What a weight quantizer reads: the weights normalized by LWN (rescaled by sigma_w after Q) or standardized."""
    return "x / sigma_w (after LWN)" if q.weight_norm == "lwn" else "x / sigma_w (standardized, no LWN)"


def _activation_xlabel(q, is_image: bool) -> str:
    """What an activation quantizer reads: the image, a signed value (no ReLU before it), or a BN + ReLU output."""
    if is_image:
        return "x (the input image, pixel / 255)"
    return "x (signed: no ReLU before it)" if q.signed else "x (after BN + ReLU)"


def plot_quantizers(model, out: Path, figure, files: AtomicFiles) -> list[Path]:
    """``quantizer-<layer>.png`` per quantized layer and ``companders.png``, written to ``files``; their paths."""
    written, all_curves = [], []
    seen_acts = set()
    image = _image(model, model.quant_layers())
    for name, wq, act_name, aq in quantized_layers(model):
        weight = dict(model.named_modules())[name].weight.detach()
        normalized = ((weight - weight.mean()) / weight.std()).flatten().numpy()
        fig = figure(figsize=(10, 7.5), layout="constrained")
        axes = fig.subplots(2, 2)
        for row, (q, what, tensor) in enumerate(((wq, "weights", name), (aq, "activations", act_name))):
            if q.method == "fp":
                for ax in axes[row]:
                    ax.text(0.5, 0.5, f"{what}: full precision", ha="center", va="center")
                    ax.set_axis_off()
                continue
            c = quantizer_curves(q)
            desc = f"{what} ({tensor}): {c['method']} {c['bits']}-bit, alpha = {c['alpha']:.3g}"
            _compander_panel(axes[row][0], c, f"compander f, {desc}")
            xlabel = _weight_xlabel(q) if what == "weights" else _activation_xlabel(q, act_name == image)
            s = len(c["levels"]) - 1
            codes = 2 * s + 1 if c["signed"] else s + 1
            levels = len(set(c["levels"].tolist()) | ({-v for v in c["levels"].tolist()} if c["signed"] else set()))
            shared = f" ({codes} codes)" if levels < codes else ""      # codes that the outer rounding merged
            _transfer_panel(axes[row][1], c, f"quantizer Q: {levels} output levels{shared}", xlabel,
                            normalized if what == "weights" else None)
            if what == "weights" or act_name not in seen_acts:
                all_curves.append((f"{tensor}", what, c))
        seen_acts.add(act_name)
        fig.suptitle(f"layer {name}")
        written.append(_save_png(fig, out / f"quantizer-{_filename(name)}.png", files))
    if all_curves:
        fig = figure(figsize=(11, 5), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, what in zip(axes, ("weights", "activations")):
            for label, kind, c in all_curves:
                if kind == what:
                    ax.plot(c["v"], c["f"], lw=1.0, label=f"{label} ({c['bits']}b {c['method']})")
            ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="v", ylabel="f(v)", title=f"companders of the {what}")
            ax.legend(fontsize=6, ncol=2, loc="lower right")
        written.append(_save_png(fig, out / "companders.png", files))
    return written


def plot_curves(metrics: dict, out: Path, figure, files: AtomicFiles) -> Path | None:
    """``curves.png`` from the per-epoch rows of ``metrics``, written to ``files``; None when it has none. The
    top-1 is the last row's: "final" once the run's ``config.epochs`` are done, else "after epoch N of M"."""
    rows = metrics.get("epochs") or []
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig = figure(figsize=(13, 4), layout="constrained")
    ax_loss, ax_top1, ax_lr = fig.subplots(1, 3)
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker=".", label=split)
        ax_top1.plot(epochs, [r[f"{split}_top1"] for r in rows], style, marker=".", label=split)
    ax_lr.plot(epochs, [r["lr"] for r in rows], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    cfg = metrics.get("config", {})
    planned, last = cfg.get("epochs"), rows[-1]
    if isinstance(planned, int) and not isinstance(planned, bool) and last["epoch"] < planned:    # still training
        top1 = f"test {last['test_top1']:.2f}% after epoch {last['epoch']} of {planned}"
    else:
        top1 = f"final test {last['test_top1']:.2f}%"
    ax_top1.set(xlabel="epoch", ylabel="top-1 (%)", title=f"top-1 ({top1}, eval mode)")
    ax_lr.set(xlabel="epoch", ylabel="weight learning rate", title="learning rate (end of epoch)")
    ax_loss.legend()
    ax_top1.legend()
    plan = cfg.get("plan", {})
    bits = "" if plan.get("method") == "fp" else f" W{plan.get('wbits')}/A{plan.get('abits')}"
    fig.suptitle(f"{cfg.get('model')} on {cfg.get('dataset')}, {plan.get('method')}{bits}")
    return _save_png(fig, out / "curves.png", files)


def plot_codes(counts: dict[str, torch.Tensor], out: Path, figure, images: int, files: AtomicFiles) -> Path | None:
    """``activation-codes.png`` from the code counts of each activation quantizer, written to ``files``; None when
    there are none."""
    if not counts:
        return None
    n = len(counts)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (name, c) in zip(axes, counts.items()):
        share = (c.double() / c.sum()).numpy()
        first = -(len(share) // 2) if len(share) % 2 else 0      # a signed quantizer's 2s + 1 codes -s..s
        ax.bar(range(first, first + len(share)), share, width=1.0 if len(share) > 32 else 0.8)
        ax.set_title(f"{name} ({math.ceil(math.log2(len(share)))}-bit)", fontsize=8)
        ax.set_xlabel("code", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"activation codes on {images} training images (share of elements per code)")
    return _save_png(fig, out / "activation-codes.png", files)


def plot_run(run_dir: str | Path, out: str | Path | None = None, *, data_dir: str | None = None,
             images: int = 512, seed: int = 0, factory: str | None = None, log=print) -> list[Path]:
    """Write the run's PNGs to ``out`` (default RUN_DIR/plots), all or none: a failure midway writes none of them
    (any previous ones are left as they were, and an ``out`` made for them is removed); returns their paths.

    ``images``: training images for the activation-code histograms (0: none), drawn at random with
    ``seed``; the data set is the run's, from ``data_dir`` if given, else the run's own ``--data-dir``.
    ``factory``: for a run of your own network, the reference it records, which confirms that its
    code may run (:func:`~lcq_train.factory.model_from_checkpoint`). Raises ModuleNotFoundError
    (naming the ``plot`` extra) without matplotlib.
    """
    figure = _figure_class()
    state, metrics = load_run(run_dir)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else (run_dir.parent if run_dir.is_file() else run_dir) / "plots"
    made = [p for p in (out, *out.parents) if not p.exists()]      # (innermost first)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:                    # a file there or above it, no permission
        raise ValueError(f"cannot make the plot directory {out} ({e.strerror}): give a directory that can be made "
                         "or written with --out DIR") from None
    try:
        with AtomicFiles() as files:
            _draw(state, metrics, run_dir, out, figure, files, data_dir=data_dir, images=images, seed=seed,
                  factory=factory, log=log)
            return files.commit()
    except BaseException:
        for directory in made:                  # the directories made for this plot, once empty
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def _draw(state: dict, metrics: dict, run_dir: Path, out: Path, figure, files: AtomicFiles, *, data_dir, images,
          seed, factory, log) -> None:
    """The PNGs of :func:`plot_run`, written to ``files``."""
    plot_curves(metrics, out, figure, files)
    if state["plan"]["method"] == "fp":
        log(f"{run_dir} is a full-precision run: no quantizers to draw, training curves only")
        return
    try:
        model = model_from_checkpoint(state, factory, option="--model")
    except ValueError as e:                 # weights that do not fit the model, a user model's factory
        raise ValueError(f"{run_dir}: {e}") from None
    plot_quantizers(model, out, figure, files)
    if images > 0:
        from .data import DatasetError, load_dataset

        cfg = state["config"]
        try:
            data = load_dataset(cfg["dataset"], data_dir if data_dir is not None else cfg["data_dir"])
        except DatasetError as e:
            log(f"no activation-code histograms: the run's data set cannot be loaded ({e}); pass --data-dir")
        else:
            generator = torch.Generator().manual_seed(seed)
            pick = torch.randperm(data.train_x.shape[0], generator=generator)[:images]
            images = data.train_x[pick]
            batches = (images[i:i + 256].float() / 255.0 for i in range(0, len(pick), 256))
            counts = activation_codes(model, batches)
            if counts:
                plot_codes(counts, out, figure, len(pick), files)
            else:
                log("no activation-code histograms: no activation quantizer of the run has integer codes (it was "
                    "trained with --outer-bits 0)")
