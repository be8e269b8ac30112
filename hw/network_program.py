"""Host side of the whole-network core: a compiled model -> load beats once, then image in, logits out.

:func:`load_beats` is everything a :class:`hw.network.NetworkCore` holds for a model, loaded
once: every layer's constants (resident in the engine), the vector unit's constants, the
input table and the program (:func:`program_words`, the steps of the compiler's plan in model
order). Per image the core takes :func:`image_beats` (into its staging buffer, also while it runs
the previous image), then ``start``, and returns the logits on its out stream (:func:`decode_logits`).
"""

from __future__ import annotations

import numpy as np

from compiler import reference
from compiler.graph import AddNode, CompiledModel, ConvNode, InputNode, Thresholds

from .bands import band_registers
from .engine_params import (CONFIG, STAGE_REQUANTIZE_RELU, EngineParams, group_span, identity_levels,
                            network_registers)
from .network_params import (ENGINE_REG, END, IMAGE, INPUT_TABLE, OP_BITS, OPERANDS, OUTPUT, PROGRAM,
                             REG_FIELD_BITS, RUN_ENGINE, RUN_VECTOR, VECTOR_BASE, VECTOR_REG, NetworkParams,
                             network_plan, program_length)
from .program import check_fits, check_registers, config_values, in_wide_buffer, resident_bases, resident_beats
from .vector_words import constant_beats as vector_constant_beats
from .vector_params import OP_REGISTERS
from .vector_words import op_registers, slot_bases

Beat = tuple[int, int, int]
FIX = "generate the core for this model (NetworkParams.for_model)"


def instruction(params: NetworkParams, op: int, reg: int = 0, value: int = 0) -> int:
    """One program word: ``op``, register ``reg``, signed ``value`` (checked against ``reg_bits``)."""
    bits = params.reg_bits
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"program value {value} does not fit {bits} signed bits")
    return op | reg << OP_BITS | (value & ((1 << bits) - 1)) << (OP_BITS + REG_FIELD_BITS)


def _operands(params: NetworkParams, values: dict[str, int]) -> list[int]:
    """VECTOR_REG words for the operand registers in ``values`` (the op registers at least, 0 if not given)."""
    names = OP_REGISTERS + tuple(name for name in OPERANDS if name in values and name not in OP_REGISTERS)
    return [instruction(params, VECTOR_REG, OPERANDS.index(name), values.get(name, 0)) for name in names]


def vector_registers(params: NetworkParams, plan, node, bases: dict[str, int], slots: dict[str, int]) -> dict[str, int]:
    """The vector unit's op registers (:func:`hw.vector_words.op_registers`) that run ``node`` of ``plan`` (a
    :class:`compiler.network.NetworkPlan`) on its tensors at ``bases``."""
    first = node.inputs[0] if hasattr(node, "inputs") else node.input
    b_channels = plan.tensors[node.inputs[1]].shape[0] if isinstance(node, AddNode) else None
    return op_registers(params.vector, node, plan.tensors[first].shape, bases, slots, b_channels)


def tile_step(params: EngineParams, node: ConvNode) -> int:
    """Register ``tile_step`` of layer ``node``: the activation words its reduction moves from one channel
    tile to the next, ``step * H_in * W_in`` (:func:`~hw.engine_params.group_span`; 0 without ``skip_groups``)."""
    step = group_span(node, params.rows, params.layer_cols(node))[0] if params.skip_groups else 0
    return step * node.in_shape[1] * node.in_shape[2]


def window_registers(plan, step, adds: dict[str, AddNode]) -> dict[str, int]:
    """Registers ``add_first``, ``add_end`` and ``add_shift`` (:data:`~hw.engine_params.WINDOW_REGISTERS`) of conv
    ``step`` of ``plan``: its fused addition's operand b covers channels ``add_first .. add_end - 1`` of the sum and
    lies ``add_shift`` words from where the sum's channel ``add_first`` does (b of the sum's shape: in its place,
    every channel, no shift); 0 without a fused addition."""
    if not step.fused_add:
        return {"add_first": 0, "add_end": 0, "add_shift": 0}
    b, total = plan.tensors[step.inputs[1]], plan.tensors[step.output]
    first = adds[step.fused_add].b_offset
    return {"add_first": first, "add_end": first + b.shape[0],
            "add_shift": b.base - total.base - first * total.shape[1] * total.shape[2]}


def program_words(model: CompiledModel, params: NetworkParams) -> list[int]:
    """The program that runs ``model`` on one image loaded by :func:`image_beats`: every step of the
    compiler's plan after the input in order (a conv with a fused addition adds its outputs into the
    sum's place: ``dst_add``, an option-A shortcut's to the channels it covers, read at its own base:
    :func:`window_registers`, and the stage STAGE_REQUANTIZE_RELU where the addition has a ReLU; with a
    fused activation it also writes their codes: ``act_fuse``), output, end."""
    plan = network_plan(model, params)
    if program_length(plan) != params.program_depth:
        raise ValueError(f"the program of this model takes {program_length(plan)} words, the core's program memory "
                         f"holds {params.program_depth}; {FIX}")
    bases = resident_bases(model, params.engine, "all")
    slots = slot_bases(model)
    base = {name: t.base for name, t in plan.tensors.items()}
    adds = {node.name: node for node in model.nodes if isinstance(node, AddNode)}
    words: list[int] = []
    for step in plan.steps:
        node = model.nodes[step.index]
        if isinstance(node, InputNode):
            continue
        if isinstance(node, ConvNode):
            check_fits(params.engine, node, ring=True)
            values = config_values(params.engine, node, bases[node.name])
            if step.fused_add and adds[step.fused_add].relu:
                values["stage"] = STAGE_REQUANTIZE_RELU     # the fused addition's ReLU, after the addition
            values.update(act_base=base[node.input], dst_base=base[step.output],
                          dst_values=int(not isinstance(node.stage, Thresholds)), c_out=node.out_shape[0],
                          wide_weights=int(in_wide_buffer(params.engine, node)), dst_add=int(bool(step.fused_add)),
                          act_fuse=int(bool(step.fused_activate)),
                          act_dst=base[step.activated] if step.activated else 0,
                          act_slot=slots[step.fused_activate] if step.fused_activate else 0,
                          tile_step=tile_step(params.engine, node),
                          identity_levels=int(params.engine.identity_tables and identity_levels(node)),
                          tile_cols=params.engine.layer_cols(node),
                          dst_lane=plan.tensors[step.output].lane if isinstance(node.stage, Thresholds) else 0,
                          **band_registers(params.engine, node), **window_registers(plan, step, adds))
            check_registers(params.engine, values)
            words += [instruction(params, ENGINE_REG, i, values[name])
                      for i, name in enumerate(network_registers(params.engine))]
            words.append(instruction(params, RUN_ENGINE))
        else:
            words += _operands(params, vector_registers(params, plan, node, base, slots))
            words.append(instruction(params, RUN_VECTOR))
    words += _operands(params, {"src_a": base[model.logits], "channels": model.num_classes})
    words += [instruction(params, OUTPUT), instruction(params, END)]
    assert len(words) == params.program_depth
    return words


def load_beats(model: CompiledModel, params: NetworkParams) -> list[Beat]:
    """Everything the core holds for ``model``: load once, before the first image."""
    beats = [beat for beat in resident_beats(model, params.engine, "all") if beat[0] != CONFIG]
    vector, _ = vector_constant_beats(params.vector, model)
    beats += [(VECTOR_BASE + target, addr, data) for target, addr, data in vector]
    beats += [(INPUT_TABLE, pixel, int(code)) for pixel, code in enumerate(model.input.table)]
    beats += [(PROGRAM, addr, word) for addr, word in enumerate(program_words(model, params))]
    return beats


def image_beats(model: CompiledModel, params: NetworkParams, image: np.ndarray) -> list[Beat]:
    """One uint8 image ``(C, H, W)`` as IMAGE beats: pixel ``(ch, y, x)`` at staging address
    ``ch * H * W + y * W + x`` (``start`` copies the staged codes to the input tensor's place; where the input is
    ``flat``, the address is the pixel's channel in the vector and the vector's one position). Loading them again
    rewrites the same codes."""
    reference.check_images(model, np.asarray(image)[None])
    c, h, w = model.input.tensor_shape
    if (c, h * w) != (params.image_channels, params.image_positions):
        raise ValueError(f"an image of {c} x {h * w} pixels (channels x positions) does not match the core's staging "
                         f"buffer of {params.image_channels} x {params.image_positions}; {FIX}")
    return [(IMAGE, addr, int(v)) for addr, v in enumerate(np.asarray(image).reshape(-1))]


def decode_logits(params: NetworkParams, words: list[int], classes: int) -> np.ndarray:
    """The out stream's ``classes`` words -> int64 logits. Each word is a ``value_bits`` two's complement
    value, sign-extended to the width it came in (the link: whole bytes; a simulator: ``value_bits`` bits,
    or a signed integer); a word whose bits above ``value_bits`` do not repeat its sign is refused."""
    if len(words) != classes:
        raise ValueError(f"expected {classes} logits, got {len(words)} words")
    bits = params.value_bits
    out = []
    for i, word in enumerate(int(w) for w in words):
        top = word >> (bits - 1)        # the sign bit and those above it: -1 or 2^k - 1 where they repeat the sign
        if top & (top + 1):
            raise ValueError(f"logit word {i} ({word:#x}) is not a {bits}-bit two's complement value sign-extended: "
                             f"the core that sent it was built for another model (build and flash it for this "
                             f"one), or the words were damaged")
        v = word & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return np.array(out, dtype=np.int64)


def read_tensor(params: NetworkParams, tensor, code_word, value_word) -> np.ndarray:
    """Tensor ``tensor`` (a :class:`compiler.network.TensorPlan`) as the data memories hold it, as the
    reference has it (``(C, H, W)`` int64): ``code_word(addr)`` / ``value_word(addr)`` read one word
    of the code / value memory (as raw unsigned integers)."""
    c, h, w = tensor.shape
    positions, lanes, bits = h * w, params.engine.rows, params.engine.abits
    out = np.zeros((c, positions), dtype=np.int64)
    if tensor.kind == "codes":
        for group in range((tensor.lane + c + lanes - 1) // lanes):       # each word read once
            for p in range(positions):
                word = int(code_word(tensor.base + group * positions + p))
                for lane in range(lanes):
                    if 0 <= group * lanes + lane - tensor.lane < c:
                        out[group * lanes + lane - tensor.lane, p] = word >> (lane * bits) & ((1 << bits) - 1)
    else:
        top = params.value_bits
        for ch in range(c):
            for p in range(positions):
                v = int(value_word(tensor.base + ch * positions + p)) & ((1 << top) - 1)
                out[ch, p] = v - (1 << top) if v >> (top - 1) else v
    return out.reshape(c, h, w)


class MemoryMirror:
    """The core's data memories as a simulation rebuilds them from the ``probe`` port's writes
    (:class:`hw.network.NetworkSignature`): every tensor of a step can be read once the step is done."""

    def __init__(self, params: NetworkParams):
        self.params = params
        self.codes: dict[int, int] = {}
        self.values: dict[int, int] = {}

    def write(self, code_en: int, code_addr: int, code_data: int, value_en: int, value_addr: int,
              value_data: int) -> None:
        """One cycle of the probe port (raw unsigned integers; words of ``halves`` positions)."""
        bits, lanes, halves = self.params.engine.abits, self.params.engine.rows, self.params.engine.halves
        word_bits, value_bits = lanes * bits, self.params.value_bits
        for h in range(halves):
            en = code_en >> (h * lanes) & ((1 << lanes) - 1)
            if en:
                addr, data = code_addr * halves + h, code_data >> (h * word_bits)
                word = self.codes.get(addr, 0)
                for lane in range(lanes):
                    if en >> lane & 1:
                        mask = ((1 << bits) - 1) << (lane * bits)
                        word = word & ~mask | data & mask
                self.codes[addr] = word
            if value_en >> h & 1:
                self.values[value_addr * halves + h] = value_data >> (h * value_bits) & ((1 << value_bits) - 1)

    def tensor(self, tensor) -> np.ndarray:
        """Tensor ``tensor`` (a :class:`compiler.network.TensorPlan`) as the memories hold it now."""
        return read_tensor(self.params, tensor, lambda a: self.codes.get(a, 0), lambda a: self.values.get(a, 0))
