"""Host side of the layer engine: compiled layers -> load beats, output words -> arrays.

A beat is ``(target, addr, data)`` for the engine's ``load_*`` ports (targets and
registers in :mod:`hw.engine_params`). For one layer (:class:`~compiler.graph.ConvNode`)
:func:`config_beats` gives its configuration, :func:`constant_beats` its weights, product
tables and output-stage constants (:func:`layer_beats`: both; :func:`setup_beats`: what
a run loads on an engine that holds some of them), :func:`act_beats` its input
codes, :func:`output_words` how many words a run returns and :func:`decode_outputs` turns
them into the reference's array. An engine sized ``resident="all"`` keeps every layer's
constants (:func:`resident_beats`, at :func:`resident_bases`), so that an image needs
only configuration and activations; one sized ``resident="weights"`` keeps every layer's
weights, and an image brings each layer's product tables and stage constants.

:func:`model_jobs` runs a whole model as a generator: it computes host-side nodes
(input table, residual additions, activations, pooling) with the integer reference
and yields one :class:`Job` per convolution to run on the engine, receiving its output
words back (``send``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np

from compiler import reference
from compiler.graph import CompiledModel, ConvNode, Requantize, Thresholds

from .engine_params import (ACTS, CONFIG, COUNT_REGISTERS, GEOMETRY_REGISTERS, REGISTERS, REQUANTIZE, STAGE_NONE,
                            STAGE_REQUANTIZE, STAGE_REQUANTIZE_RELU, STAGE_THRESHOLDS, TABLE, THRESHOLDS, WEIGHTS,
                            WIDE_WEIGHTS, EngineParams, group_span, identity_levels, layer_needs, layer_side,
                            searched_stage)
from .memories import word_pieces
from .pe_words import A_MAX, W_MAX, level_entry, row_vector, weight_word
from .residency import check_residency
from .progression import searched_problem
from .stage_words import (bias_bits, max_shift, multiplier_bits, out_bits, progression_words, requantize_words,
                          threshold_bits, threshold_words)

Beat = tuple[int, int, int]


def check_fits(params: EngineParams, node: ConvNode, ring: bool = False) -> None:
    """Raise ValueError naming what of layer ``node`` does not fit the engine, and the fix. ``ring``: the
    accumulators may hold fewer outputs than the layer has, as a ring of bands (a power of two words, a row
    of outputs at least): in network mode, and for the layer's constants alone, which do not depend on them."""
    need = layer_needs(node, params.rows, params.layer_cols(node), params.skip_groups, params.identity_tables)
    problems = []
    if node.mac == "multiply" and not params.multiply:
        problems.append("it multiplies levels (an 8-bit edge layer) but the engine has no multipliers")
    if node.mac == "lut" and node.wbits > params.wbits:
        problems.append(f"weights of {node.wbits} bits exceed wbits={params.wbits}")
    if node.abits > params.abits:
        problems.append(f"activations of {node.abits} bits exceed abits={params.abits}")
    if int(max(node.w_levels)) > W_MAX or int(max(node.a_levels)) > A_MAX:
        problems.append(f"levels up to {int(max(node.w_levels))} (weights) and {int(max(node.a_levels))} "
                        f"(activations) exceed the PEs' {W_MAX} and {A_MAX} (outer widths of 8 bits)")
    products = (int(max(node.w_levels)) * int(max(node.a_levels))).bit_length()
    if node.mac == "lut" and products > params.product_bits:
        problems.append(f"its products W[k] * A[j] need {products} bits (product_bits={params.product_bits})")
    if params.max_side and layer_side(node) > params.max_side:
        problems.append(f"its sides, kernel, stride or padding (up to {layer_side(node)}) exceed "
                        f"max_side={params.max_side}")
    if node.acc_bits > params.acc_bits:
        problems.append(f"accumulators of {node.acc_bits} bits exceed acc_bits={params.acc_bits}")
    if isinstance(node.stage, Thresholds) and node.stage.bits > params.code_bits:
        problems.append(f"output codes of {node.stage.bits} bits exceed code_bits={params.code_bits}")
    elif isinstance(node.stage, Thresholds) and searched_stage(params, node.stage):
        problem = searched_problem(node.stage, node.acc_bound, params.progression)
        if problem:
            problems.append(problem)
    elif isinstance(node.stage, Thresholds):
        if threshold_bits(node.stage) > params.threshold_bits:
            problems.append(f"thresholds of {threshold_bits(node.stage)} bits exceed {params.threshold_bits}")
        if node.stage.bits < params.table_code_bits and params.threshold_bits <= params.acc_bits:
            problems.append(f"its {node.stage.bits}-bit codes need never-passed thresholds, which need "
                            f"threshold_width 0 (acc_bits + 1)")
    if isinstance(node.stage, Requantize) and params.requantize is None:
        problems.append("it requantizes its output but the engine has no requantize units")
    elif node.stage is None and params.requantize and node.acc_bits > params.requantize.out_bits:
        problems.append(f"its {node.acc_bits}-bit accumulators, written through the requantize units, exceed "
                        f"their out_bits={params.requantize.out_bits}")
    elif isinstance(node.stage, Requantize):
        if node.stage.relu and not params.requantize.relu:
            problems.append("its requantize stage has a ReLU but the engine's has none")
        widths = {"multiplier_bits": multiplier_bits(node.stage), "bias_bits": bias_bits(node.stage),
                  "max_shift": max_shift(node.stage), "out_bits": out_bits(node.stage, node.acc_bound)}
        for name, value in widths.items():
            if value > getattr(params.requantize, name):
                problems.append(f"its requantize stage needs {name}={value} (the engine's units have "
                                f"{getattr(params.requantize, name)}; a wider output would wrap)")
    if ring and params.out_depth & (params.out_depth - 1) == 0 and node.out_shape[2] <= params.out_depth:
        need = {**need, "out": 0}
    weights = "wide_depth" if in_wide_buffer(params, node) else "weight_depth"
    for key, depth in (("act", "act_depth"), ("weight", weights), ("table", "table_depth"),
                       ("stage", "stage_depth"), ("positions", "pos_depth"), ("out", "out_depth")):
        if need[key] > getattr(params, depth):
            problems.append(f"it needs {need[key]} words of {depth} (has {getattr(params, depth)})")
    if problems:
        raise ValueError(f"layer {node.name!r} does not fit the engine: {'; '.join(problems)}. "
                         f"Generate the engine for this model (EngineParams.for_model).")


def _stage_kind(params: EngineParams, node: ConvNode) -> int:
    """The ``stage`` register of layer ``node``: a layer that writes its accumulators goes through the
    requantize units with identity constants where the engine has them (:func:`_stage_words`)."""
    if isinstance(node.stage, Thresholds):
        return STAGE_THRESHOLDS
    if isinstance(node.stage, Requantize):
        return STAGE_REQUANTIZE_RELU if node.stage.relu else STAGE_REQUANTIZE
    return STAGE_REQUANTIZE if params.requantize else STAGE_NONE


@dataclass(frozen=True)
class Bases:
    """Where a layer's constants start in the weight (or wide weight: :func:`in_wide_buffer`), table
    and stage buffers."""

    weight: int = 0
    table: int = 0
    stage: int = 0


def resident_bases(model: CompiledModel, params: EngineParams, resident: str = "all") -> dict[str, Bases]:
    """Each layer's :class:`Bases` when the constants ``resident`` names (``"weights"`` or
    ``"all"``) of every layer stay in the buffers at once, the rest at 0 (an engine sized with
    ``EngineParams.for_model(..., resident=resident)``)."""
    check_residency(resident)
    every = {"none": (), "weights": ("weight",), "all": ("weight", "table", "stage")}[resident]
    bases, next_base = {}, {"weight": 0, "wide": 0, "table": 0, "stage": 0}
    for node in model.convs:
        weights = "wide" if in_wide_buffer(params, node) else "weight"
        bases[node.name] = Bases(weight=next_base[weights] if every else 0,
                                 **{kind: next_base[kind] if kind in every else 0 for kind in ("table", "stage")})
        need = layer_needs(node, params.rows, params.layer_cols(node), params.skip_groups, params.identity_tables)
        for kind in every:
            next_base[weights if kind == "weight" else kind] += need[kind]
    if every:
        every += ("wide",)
    depths = {"weight": params.weight_depth, "wide": params.wide_depth, "table": params.table_depth,
              "stage": params.stage_depth}
    if any(next_base[kind] > depths[kind] for kind in every):
        raise ValueError(f"the model's resident constants ({', '.join(f'{next_base[k]} {k} words' for k in every)}) "
                         f"do not fit the engine's buffers ({', '.join(f'{depths[k]}' for k in every)}); size it "
                         f"with EngineParams.for_model(model, ..., resident={resident!r})")
    return bases


def config_values(params: EngineParams, node: ConvNode, bases: Bases = Bases()) -> dict[str, int]:
    """The configuration registers of layer ``node`` with its constants at ``bases`` (``groups``: the row
    groups each channel tile runs, :func:`~hw.engine_params.group_span`'s with ``skip_groups``)."""
    c_in, h, w = node.in_shape
    c_out, ho, wo = node.out_shape
    tile = params.layer_cols(node)
    groups = group_span(node, params.rows, tile)[1] if params.skip_groups else ceil(c_in / params.rows)
    values = {"stage": _stage_kind(params, node), "in_h": h, "in_w": w, "out_h": ho, "out_w": wo,
              "kernel": node.kernel, "stride": node.stride, "padding": node.padding,
              "groups": groups, "co_tiles": ceil(c_out / tile), "positions": ho * wo,
              "plane": h * w, "row_step": node.stride * w, "top_offset": -node.padding * w,
              "weight_base": bases.weight, "table_base": bases.table, "stage_base": bases.stage}
    assert set(values) == set(REGISTERS)
    return values


def in_wide_buffer(params: EngineParams, node: ConvNode) -> bool:
    """Whether layer ``node``'s weights go to the engine's wide weights buffer (``wide_depth``)."""
    return bool(params.wide_depth) and node.mac == "multiply"


def _word_bits(params: EngineParams, node: ConvNode) -> int:
    """Bits per column of layer ``node``'s weight words in the buffer that holds them."""
    return params.weight_bits if in_wide_buffer(params, node) else params.stored_weight_bits


def _weight_word(params: EngineParams, node: ConvNode, code: int) -> int:
    magnitude = abs(code) if node.mac == "lut" else int(node.w_levels[abs(code)])
    return weight_word(int(code < 0), magnitude, _word_bits(params, node))


def weight_words(params: EngineParams, node: ConvNode) -> list[int]:
    """Weight buffer words in the engine's order: channel tile, ky, kx, group, row; ``cols`` codes each, a
    channel tile's in its first :meth:`~hw.engine_params.EngineParams.layer_cols` (0 in the others; with
    ``skip_groups``, channel tile ``t``'s groups from ``t * step`` on only, :func:`group_span`)."""
    R, C = params.rows, params.layer_cols(node)
    c_out, c_in = node.weight_codes.shape[:2]
    codes = np.zeros((ceil(c_out / C) * C, ceil(c_in / R) * R, node.kernel, node.kernel), dtype=np.int64)
    codes[:c_out, :c_in] = node.weight_codes
    step, groups = group_span(node, R, C) if params.skip_groups else (0, ceil(c_in / R))
    bits, words = _word_bits(params, node), []
    for t in range(codes.shape[0] // C):
        for ky in range(node.kernel):
            for kx in range(node.kernel):
                for ci in range(t * step * R, (t * step + groups) * R):
                    word = 0
                    for c in range(C):
                        word |= _weight_word(params, node, int(codes[t * C + c, ci, ky, kx])) << (c * bits)
                    words.append(word)
    return words


def table_words(params: EngineParams, node: ConvNode) -> list[int]:
    """Product-table entries ``j = 0 .. 2^abits - 1`` of layer ``node`` (a multiplying layer's: its levels with
    their multiples, :func:`~hw.pe_words.level_entry`, and the multiply flag); none where the engine passes its
    codes as levels (``identity_tables``, :func:`~hw.engine_params.identity_levels`)."""
    if params.identity_tables and identity_levels(node):
        return []
    a = [int(v) for v in node.a_levels]
    if node.mac == "multiply":
        return [level_entry(a[j], params.wbits, params.product_bits) | 1 << (params.table_bits - 1)
                for j in range(len(a))]
    return [row_vector(node.w_levels, level, params.product_bits) for level in a]


def _stage_words(params: EngineParams, node: ConvNode) -> list[int]:
    """Stage constants of every channel of every channel tile (:meth:`~hw.engine_params.EngineParams.layer_cols`
    channels each); the channels past ``C_out`` in the last tile get constants too (outputs 0), so that no
    output comes from uninitialized memory.
    A layer without a stage (its accumulators written as they are) gets the identity requantization
    ``y = acc * 1 >> 0`` where the engine has requantize units, and no words otherwise."""
    c_out = node.out_shape[0]
    tile = params.layer_cols(node)
    channels = ceil(c_out / tile) * tile
    pad = channels - c_out
    if node.stage is None:
        if params.requantize is None:
            return []
        ones, zeros = np.ones(channels, dtype=np.int64), np.zeros(channels, dtype=np.int64)
        q = params.requantize
        return requantize_words(Requantize(ones, zeros, zeros), q.multiplier_bits, q.bias_bits, q.max_shift)
    if isinstance(node.stage, Requantize):
        q = params.requantize
        m, b, sh = (np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1), np.zeros(pad, dtype=np.int64)])
                    for a in (node.stage.multiplier, node.stage.bias, node.stage.shift))
        return requantize_words(Requantize(m, b, sh), q.multiplier_bits, q.bias_bits, q.max_shift)
    if searched_stage(params, node.stage):
        return progression_words(node.stage, node.acc_bound, params.code_bits, params.threshold_bits,
                                 params.progression, channels)
    # Codes narrower than the units' listed ones hold thresholds that are never passed.
    s, t = 2 ** params.table_code_bits - 1, np.asarray(node.stage.thresholds, dtype=np.int64)
    top = 2 ** (params.threshold_bits - 1) - 1
    desc = np.concatenate([np.asarray(node.stage.descending, dtype=bool), np.zeros(pad, dtype=bool)])
    never = np.where(desc, -top, top)[:, None]
    padded = never.repeat(s, axis=1)
    padded[:c_out, :t.shape[1]] = t
    stage = Thresholds(padded, desc, params.table_code_bits)
    return threshold_words(stage, params.threshold_bits)


def check_registers(params: EngineParams, values: dict[str, int]) -> None:
    """Raise ValueError naming the first register of ``values`` whose value does not fit its width in the
    engine (:meth:`~hw.engine_params.EngineParams.register_bits`: the counts and geometry sized by the
    buffers; the addresses are checked by the program word's or beat's width)."""
    for name, value in values.items():
        if name not in GEOMETRY_REGISTERS + COUNT_REGISTERS:
            continue
        bits = params.register_bits(name)
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"register {name} = {value} does not fit its {bits} signed bits in this engine; "
                             f"generate the engine for the model (EngineParams.for_model)")


def config_beats(params: EngineParams, node: ConvNode, bases: Bases = Bases()) -> list[Beat]:
    """The configuration registers of layer ``node`` (constants at ``bases``)."""
    check_fits(params, node)
    values = config_values(params, node, bases)
    check_registers(params, values)
    mask = (1 << params.reg_bits) - 1
    return [(CONFIG, i, values[name] & mask) for i, name in enumerate(REGISTERS)]


def weight_beats(params: EngineParams, node: ConvNode, bases: Bases = Bases()) -> list[Beat]:
    """The weights of layer ``node``, at ``bases``."""
    check_fits(params, node, ring=True)
    target = WIDE_WEIGHTS if in_wide_buffer(params, node) else WEIGHTS
    return [(target, bases.weight + a, w) for a, w in enumerate(weight_words(params, node))]


def constant_beats(params: EngineParams, node: ConvNode, bases: Bases = Bases(), weights: bool = True) -> list[Beat]:
    """Weights (unless not ``weights``), product tables and output-stage constants of layer
    ``node``, at ``bases``."""
    check_fits(params, node, ring=True)
    beats = weight_beats(params, node, bases) if weights else []
    beats += [(TABLE, bases.table + j, v) for j, v in enumerate(table_words(params, node))]
    if node.stage is not None or params.requantize:
        target = THRESHOLDS if isinstance(node.stage, Thresholds) else REQUANTIZE
        tile = params.layer_cols(node)
        for ch, word in enumerate(_stage_words(params, node)):
            slot = bases.stage + ch // tile
            addr = slot << params.col_bits | ch % tile
            if params.stage_pieces == 1:
                beats.append((target, addr, word))
                continue
            # (the engine writes no lane for the padding pieces' indices)
            pieces = word_pieces(word, params.stage_piece_bits, params.stage_pieces, 1 << params.stage_piece_index_bits)
            beats += [(target, addr << params.stage_piece_index_bits | k, piece) for k, piece in enumerate(pieces)]
    return beats


def layer_beats(params: EngineParams, node: ConvNode) -> list[Beat]:
    """Configuration and constants of layer ``node``, alone in the buffers."""
    return config_beats(params, node) + constant_beats(params, node)


def resident_beats(model: CompiledModel, params: EngineParams, resident: str = "all") -> list[Beat]:
    """Every layer's ``resident`` constants (``"weights"`` or ``"all"``; none for ``"none"``) at
    its :func:`resident_bases`: load once, then run images with ``model_jobs(..., resident=resident)``."""
    bases = resident_bases(model, params, resident)
    if resident == "none":
        return []
    beats = weight_beats if resident == "weights" else constant_beats
    return [beat for node in model.convs for beat in beats(params, node, bases[node.name])]


def setup_beats(params: EngineParams, node: ConvNode, bases: Bases, resident: str) -> list[Beat]:
    """What a run of layer ``node`` loads before its activations on an engine that holds the
    ``resident`` constants (at ``bases``): its configuration and the constants not held."""
    beats = config_beats(params, node, bases)
    if resident != "all":
        beats += constant_beats(params, node, bases, weights=resident == "none")
    return beats


def act_beats(params: EngineParams, node: ConvNode, codes: np.ndarray) -> list[Beat]:
    """The input codes ``(C_in, H, W)`` of one image as activation-buffer beats."""
    if tuple(codes.shape) != tuple(node.in_shape):
        raise ValueError(f"layer {node.name!r} takes codes of shape {node.in_shape}, got {tuple(codes.shape)}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"layer {node.name!r} takes integer codes, got an array of {codes.dtype}")
    top = 2 ** node.abits - 1
    if codes.min() < 0 or codes.max() > top:
        at = np.unravel_index(np.argmax((codes < 0) | (codes > top)), codes.shape)
        raise ValueError(f"layer {node.name!r} takes {node.abits}-bit codes 0..{top}, got {int(codes[at])} at "
                         f"(channel, y, x) = {tuple(int(i) for i in at)}")
    R, (c_in, h, w) = params.rows, node.in_shape
    groups = ceil(c_in / R)
    padded = np.zeros((groups * R, h, w), dtype=object)     # Python integers: words can exceed 64 bits
    padded[:c_in] = codes.astype(np.int64)
    shifts = np.array([r * params.abits for r in range(R)], dtype=object).reshape(1, R, 1, 1)
    words = (padded.reshape(groups, R, h, w) << shifts).sum(axis=1).reshape(-1)
    return [(ACTS, a, int(v)) for a, v in enumerate(words.tolist())]


def output_words(params: EngineParams, node: ConvNode) -> int:
    return layer_needs(node, params.rows, params.cols)["out"]


def decode_outputs(params: EngineParams, node: ConvNode, words: list[int]) -> np.ndarray:
    """The engine's output words of layer ``node`` -> ``(C_out, Ho, Wo)`` int64, as the reference has them."""
    c_out, ho, wo = node.out_shape
    if len(words) != output_words(params, node):
        raise ValueError(f"layer {node.name!r} returns {output_words(params, node)} words, got {len(words)}")
    C, bits = params.cols, params.out_bits
    fields = np.array([[(int(word) >> (c * bits)) & ((1 << bits) - 1) for c in range(C)] for word in words],
                      dtype=np.int64)
    fields = np.where(fields >= 1 << (bits - 1), fields - (1 << bits), fields)
    tiles = fields.reshape(-1, ho * wo, C)                         # (co_tiles, positions, cols)
    return tiles.transpose(0, 2, 1).reshape(-1, ho, wo)[:c_out]


@dataclass
class Job:
    """One layer for the engine: ``index`` (of the node in the model), the beats to load, the words to read."""

    index: int
    node: ConvNode
    beats: list[Beat]
    out_words: int


def model_jobs(model: CompiledModel, params: EngineParams, image: np.ndarray, on_engine: set[int] | None = None,
               upto: int | None = None, resident: str = "none"):
    """Generator running ``model`` on one uint8 image ``(C, H, W)``.

    Convolutions whose node index is in ``on_engine`` (default: all) are yielded as
    :class:`Job`; the caller sends back the output words, which are decoded and feed the
    nodes after it. Everything else runs in the integer reference. Stops after node
    ``upto`` (default: the last); returns the tensors (batch of one). ``resident``: what the
    engine already holds (:func:`resident_beats`); jobs load the configuration, the other
    constants and the activations.
    """
    images = image[None]
    reference.check_images(model, images)
    bases = resident_bases(model, params, resident)
    t: dict[str, np.ndarray] = {}
    for index, node in enumerate(model.nodes[:None if upto is None else upto + 1]):
        if isinstance(node, ConvNode) and (on_engine is None or index in on_engine):
            setup = setup_beats(params, node, bases[node.name], resident)
            words = yield Job(index, node, setup + act_beats(params, node, t[node.input][0]),
                              output_words(params, node))
            out = decode_outputs(params, node, words)
            t[node.output] = (out.astype(np.uint8) if isinstance(node.stage, Thresholds) else out)[None]
        else:
            reference.execute(node, t, images)
    return t
