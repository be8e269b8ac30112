"""Before training: can ``lcq compile`` lower the network?

``lcq train`` builds the network, then (through the ``lcq`` command, which sits above the trainer: the
trainer imports no other stage) hands it to :func:`check_network` before its first epoch, so that an
operation or a geometry the compiler refuses stops the run at once instead of after its last epoch.
The untrained network lowers as the trained one will: what the compiler refuses is the graph (its
operations, kernels, strides and paddings, where quantizers and ReLUs sit), not the values of the
weights. ``lcq train --no-compile-check`` trains without it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lcq_train.plan import QuantPlan, quantize_model

from .graph import CompiledModel
from .lower import compile_model

# An FP run (the pretraining of a quantized one) is checked as the default LCQ W3/A3 network it will start.
FP_CHECK_BITS = 3


def check_network(model: nn.Module, input_shape: tuple[int, int, int], plan: QuantPlan) -> CompiledModel:
    """Lower ``model`` (as ``lcq train`` built it for ``plan``, untrained; an FP run's network with its
    conv and linear layers drawn afresh and quantized with the default LCQ plan at W3/A3) for inputs of
    ``input_shape`` (C, H, W) as ``lcq compile`` does.

    Returns the compiled (untrained) network: its layers, bits and memories are the trained one's. Raises
    ValueError where the compiler refuses it: its reason (the operation and where the user's code calls it, or
    the rule broken) and the way on. ``model`` is not changed."""
    if plan.method == "fp":
        model = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):     # (the run's random numbers stay as they were)
            for layer in model.modules():           # (an FP run may start anywhere, all-zero weights too: it trains)
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.reset_parameters()
        model = quantize_model(model, plan, method="lcq", wbits=FP_CHECK_BITS, abits=FP_CHECK_BITS)
    try:
        return compile_model(model, input_shape)
    except ValueError as e:
        raise ValueError(f"`lcq compile` would refuse this network after training (checked before the first "
                         f"epoch): {e}. Change the network, or pass --no-compile-check to train it anyway") from None
