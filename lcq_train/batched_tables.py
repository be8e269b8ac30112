"""A model's LCQ tables built together, once per forward, on an accelerator.

Off the CPU each LCQ quantizer call builds its compander's tables in some twenty small torch operations
and turns its per-segment sums into alpha and theta gradients in some thirty more; on a GPU each costs
about one kernel launch, far more than the work in it. :func:`batch_tables` registers a forward pre-hook
on a model that builds the tables of all its LCQ quantizers of one kind (K, levels, outer levels, sign,
dtypes, which parameters learn) in one batch (:func:`lcq_train.quant_device.build_tables`), and a
forward hook that drops them, also when the forward raises (so no tables, nor the autograd graph they
belong to, outlive it): within that forward each quantizer quantizes with its row, and the backward
computes every quantizer's alpha and theta gradients of that kind together. The operations are those
of each quantizer's own call, row by row (on the CPU the same bits, tests/test_batched_tables.py; a GPU's
kernel for a batch may round a cumulative sum differently in the last bit than its kernel for one row).
A quantizer of a batch whose output goes unused gets zero alpha and theta gradients rather than none.
CPU models are left to the host path (:mod:`lcq_train.quant`), the faster one there.
"""

from __future__ import annotations

from torch import nn

from .quant import level_scale
from .quant_device import build_tables, working_dtype
from .quantizer import Quantizer


def _on_device(q: Quantizer) -> bool:
    """Whether ``q`` takes the device path (its parameters are off the CPU)."""
    return q.theta.device.type != "cpu"


def _lcq_quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer) and m.method == "lcq"]


def _build(model: nn.Module, _args) -> None:
    """Forward pre-hook: every off-CPU LCQ quantizer of ``model`` gets its row of its kind's tables."""
    kinds: dict[tuple, list[Quantizer]] = {}
    for q in _lcq_quantizers(model):
        q.tables = None
        if _on_device(q):
            kind = (q.spec.K, q.spec.bits, q.spec.outer_bits, q.signed, q.theta.dtype, q.alpha.dtype, q.theta.device,
                    q.alpha.requires_grad, q.theta.requires_grad)      # (frozen ones: no gradient work at all)
            kinds.setdefault(kind, []).append(q)
    for qs in kinds.values():
        spec, signed = qs[0].spec, qs[0].signed
        s_outer = None if spec.outer_bits is None else level_scale(spec.outer_bits, signed)
        tables = build_tables([q.alpha for q in qs], [q.theta for q in qs], level_scale(spec.bits, signed), s_outer,
                              signed, working_dtype(qs[0].theta.dtype))
        for q, t in zip(qs, tables):
            q.tables = t


def _drop(model: nn.Module, _args, _output) -> None:
    """Forward hook (also when the forward raised): the tables of this forward are not used again."""
    for q in _lcq_quantizers(model):
        q.tables = None


def batch_tables(model: nn.Module) -> nn.Module:
    """Make each forward of ``model`` build its LCQ quantizers' tables in batches (once; returns it)."""
    if not getattr(model, "_lcq_batched_tables", False):
        model.register_forward_pre_hook(_build)
        model.register_forward_hook(_drop, always_call=True)
        model._lcq_batched_tables = True
    return model
