"""Cycles of one image on the whole-network core, estimated from its parameters alone (no simulation, no Amaranth).

:func:`image_cycles` sums the steps of the program (:func:`hw.network_program.program_words`) as the core runs them
one after another: the input step converts each pixel in a cycle, and two more; a program word
(``params.program_depth`` of them, :func:`hw.network_params.program_length`) takes a cycle to fetch and write its
register, and a step :data:`STEP_HANDSHAKE` more; a convolution step takes the engine's cycle model
(:func:`hw.bands.layer_cycles`: :func:`hw.bands.network_layer_cycles` at the band :func:`hw.bands.band_rows` picks),
a vector step the unit's (:meth:`hw.vector_params.VectorParams.register_cycles`). Left out: the output stage's
latency once per layer and the block RAM's extra read cycles on the ECP5 (5 to 20 cycles a step), and the logits'
out stream. It was within 0.7% of the cycles Verilator counted for the digits CNN and LeNet at 4 x 4, the CIFAR-10
tutorial net at 1 x 1 and 4 x 4 and ResNet-20 at 8 x 8 and 16 x 16 (the README's, at 88ac717), is 31,738 against
31,794 for the digits CNN at 4 x 4 since the shorter waits of :func:`hw.bands.gap_positions`, and within 1% and 20
cycles a step of every image's steps in ``tests/test_sim_network.py``.
"""

from __future__ import annotations

from compiler.graph import CompiledModel, ConvNode, InputNode

from .bands import layer_cycles
from .network_params import NetworkParams, network_plan
from .network_program import vector_registers
from .vector_words import slot_bases

# Cycles of a step beyond its program words and its unit's cycles: from the sequencer's RUN to the unit's start,
# and from its last busy cycle to the next word's fetch (Verilator, every step of the digits CNN at 4 x 4).
STEP_HANDSHAKE = 3


def image_cycles(model: CompiledModel, params: NetworkParams) -> int:
    """Estimated cycles from an image's start to its logits on the whole-network core of ``params`` for
    ``model`` (see the module)."""
    plan = network_plan(model, params)
    bases = {name: t.base for name, t in plan.tensors.items()}
    slots = slot_bases(model)
    cycles = params.image_depth + 2 + params.program_depth + STEP_HANDSHAKE * (len(plan.steps) - 1)
    for step in plan.steps:
        node = model.nodes[step.index]
        if isinstance(node, ConvNode):
            cycles += layer_cycles(params.engine, node)
        elif not isinstance(node, InputNode):
            cycles += params.vector.register_cycles(vector_registers(params, plan, node, bases, slots))
    return cycles
