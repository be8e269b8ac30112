"""Host and compile side of the vector unit (:mod:`hw.vector`): constants as load beats, op registers.

A beat is ``(target, addr, data)`` for the unit's ``load_*`` ports (targets in
:mod:`hw.vector_params`, re-exported here). :func:`constant_beats` gives the constants of every
:class:`~compiler.graph.ActivateNode` and :class:`~compiler.graph.PoolNode` of a model, each node
at its own slots (all resident: load once); :func:`op_registers` gives the op registers that run
one node on its tensors at given base addresses of the data memories (a network plan's); a
:class:`~compiler.graph.MaxPoolNode` has no constants, only op registers (:func:`maxpool_registers`).

Words:

- ACT_THRESHOLDS, address ``slot``: the channel's :func:`hw.stage_words.threshold_words` word of
  ``act_threshold_bits`` thresholds; a node with narrower codes than ``act_code_bits`` is padded
  with thresholds that no value passes (``bound + 1``, ascending; ``-(bound + 1)``, descending). Where
  the unit searches (``act_progression``), a node wider than its listed codes has
  :func:`hw.stage_words.progression_words` instead, and the listed ones are padded to the listed width.
- POOL_CONSTANTS, address ``slot << pool_piece_index_bits | piece``: piece ``piece`` (bits
  ``16 * piece`` up, :data:`~hw.vector_params.POOL_PIECE_BITS`) of the channel's word
  ``relu | sign << 1 | offset << 3`` (sign and offset two's
  complement, :data:`~hw.vector_params.POOL_SIGN_BITS` and ``pool_offset_bits`` wide), then, where the
  unit clips, the clip (``pool_cap_bits``, from bit ``pool_cap_shift``; the largest where the node has none); where
  it pads, the term outside the map (``pool_outside_bits``, from bit ``pool_outside_shift``; 0 where the node has
  none: a pool node, or an average pooling without padding); in the arithmetic form (``pool_form``) then
  ``B' = B - S`` (two's complement, ``pool_base_bits``, from bit ``pool_base_shift``) and ``S``
  (``pool_step_bits``, from ``pool_step_shift``) of the channel's thresholds ``T[c] = ceil((B + c * S) /
  2^pool_shift)`` (:func:`~hw.progression.fit_progression`; a narrower node's padding indices lie above the
  largest sum).
- POOL_THRESHOLDS (table form only), address ``slot << pool_code_bits | i``: threshold ``i``
  (``0..2^pool_code_bits - 2``) of the channel, two's complement; narrower codes are padded with
  ``largest sum + 1``.

Pure Python (no Amaranth).
"""

from __future__ import annotations

import numpy as np

from compiler.graph import (ActivateNode, AddNode, AvgPoolNode, CompiledModel, MaxPoolNode, PoolNode, SubsampleNode,
                            TensorInfo, Thresholds, signed_bits)

from .memories import word_pieces
from .stage_words import progression_words, thresholds_array, threshold_words
from .progression import progression_bits, searched_problem
from .vector_params import (ACT_THRESHOLDS, ACTIVATE, ADD, ADD_RELU, AVGPOOL, MAXPOOL, MAXPOOL_REGISTERS, MINPOOL,
                            OPS, OP_REGISTERS, POOL, POOL_CONSTANTS, POOL_OFFSET_SHIFT, POOL_SIGN_BITS, POOL_SIGN_SHIFT,
                            POOL_THRESHOLDS, SUBSAMPLE, TARGETS, VectorParams, activate_needs, maxpool_bits,
                            pool_needs, pool_progressions, pool_sum_bound, subsample_bits)

__all__ = ["ACT_THRESHOLDS", "POOL_CONSTANTS", "POOL_THRESHOLDS", "TARGETS", "Beat", "constant_beats",
           "op_registers", "subsample_registers", "slot_bases", "activate_words", "pool_constant_beats",
           "pool_constant_words", "pool_threshold_words", "node_progressions"]

Beat = tuple[int, int, int]
FIX = "generate the unit for this model (VectorParams.for_model)"


def slot_bases(model: CompiledModel) -> dict[str, int]:
    """The first constant slot of every activate and pool node (by name): activate nodes one after
    the other from slot 0 in model order, pool nodes likewise in their own memories."""
    info = model.validate(arrays=False)
    bases, next_slot = {}, {ActivateNode: 0, PoolNode: 0}
    for node in model.nodes:
        if isinstance(node, (ActivateNode, PoolNode)):
            memory = ActivateNode if isinstance(node, ActivateNode) else PoolNode
            bases[node.name] = next_slot[memory]
            next_slot[memory] += info[node.input].shape[0]
    return bases


def _padded(stage: Thresholds, code_bits: int, never: int) -> Thresholds:
    """``stage`` widened to ``code_bits`` codes: the extra thresholds are never passed by values
    ``|x| < never`` (``+never`` on ascending channels, ``-never`` on descending ones)."""
    t = thresholds_array(stage)
    desc = np.asarray(stage.descending, dtype=bool)
    padded = np.where(desc, -never, never)[:, None].repeat(2 ** code_bits - 1, axis=1)
    padded[:, :t.shape[1]] = t
    return Thresholds(padded, desc, code_bits)


def activate_words(params: VectorParams, node: ActivateNode, bound: int) -> list[int]:
    """ACT_THRESHOLDS words of ``node`` (input values ``|x| <= bound``), one per channel: its progression words
    where the unit searches codes that wide (``act_progression``), else its thresholds listed."""
    shape = params.act_progression
    if shape is not None and node.stage.bits > shape.table_code_bits:
        return progression_words(node.stage, bound, params.act_code_bits, params.act_threshold_bits, shape,
                                 len(node.stage.descending))
    stage = _padded(node.stage, shape.table_code_bits if shape else params.act_code_bits, Thresholds.limit(bound))
    return threshold_words(stage, params.act_threshold_bits)


def node_progressions(params: VectorParams, node: PoolNode, info: TensorInfo) -> list[tuple[int, int]]:
    """Each channel's ``(B, S)`` of ``node`` (input ``info``) at the unit's ``pool_shift``
    (:func:`~hw.vector_params.pool_progressions`); ValueError where the node has none there."""
    fits = pool_progressions(node, info, params.pool_code_bits, params.pool_shift)
    if fits is None:
        raise ValueError(f"pool node {node.name!r}: its thresholds are not ceil((B + c * S) / 2^{params.pool_shift}) "
                         f"in every channel (the unit's arithmetic form, pool_shift={params.pool_shift}); {FIX}")
    return fits


def pool_constant_words(params: VectorParams, node: PoolNode, info: TensorInfo,
                        fits: list[tuple[int, int]] | None = None) -> list[int]:
    """POOL_CONSTANTS words of ``node`` (input ``info``), one per channel; ``fits``: its progressions
    (:func:`node_progressions`) where the caller has them."""
    sign_mask, offset_mask = (1 << POOL_SIGN_BITS) - 1, (1 << params.pool_offset_bits) - 1
    words = [int(r) | (int(s) & sign_mask) << POOL_SIGN_SHIFT | (int(o) & offset_mask) << POOL_OFFSET_SHIFT
             for s, r, o in zip(np.asarray(node.sign).tolist(), np.asarray(node.relu).tolist(),
                                np.asarray(node.offset).tolist())]
    if params.pool_cap_bits:        # (a node without a clip: the largest, which no term reaches)
        bits = params.pool_cap_bits
        caps = [(1 << (bits - 1)) - 1] * len(words) if node.cap is None else np.asarray(node.cap).tolist()
        if max(abs(int(c)) for c in caps) >= 1 << (bits - 1):
            raise ValueError(f"pool node {node.name!r}: its clips need more than pool_cap_bits={bits}; {FIX}")
        words = [w | (int(c) & ((1 << bits) - 1)) << params.pool_cap_shift for w, c in zip(words, caps)]
    outside = getattr(node, "outside", None)
    if outside is not None:
        bits = params.pool_outside_bits
        terms = np.asarray(outside).tolist()
        if not bits or max(abs(int(t)) for t in terms) >= 1 << (bits - 1):
            raise ValueError(f"pool node {node.name!r}: its terms outside the map need more than pool_outside_bits="
                             f"{bits}; {FIX}")
        words = [w | (int(t) & ((1 << bits) - 1)) << params.pool_outside_shift for w, t in zip(words, terms)]
    if not params.pool_arithmetic:
        return words
    fits = fits or node_progressions(params, node, info)
    base_bits, step_bits = progression_bits(fits)
    if base_bits > params.pool_base_bits or step_bits > params.pool_step_bits:
        raise ValueError(f"pool node {node.name!r}: B' and S need {base_bits} and {step_bits} bits "
                         f"(pool_base_bits={params.pool_base_bits}, pool_step_bits={params.pool_step_bits}); {FIX}")
    base_mask = (1 << params.pool_base_bits) - 1
    return [w | ((b - s) & base_mask) << params.pool_base_shift | s << params.pool_step_shift
            for w, (b, s) in zip(words, fits)]


def pool_constant_beats(params: VectorParams, base: int, words: list[int]) -> list[Beat]:
    """POOL_CONSTANTS beats of ``words`` (:func:`pool_constant_words`) at slots ``base`` on: each word's
    pieces, lowest first, padded to ``2^pool_piece_index_bits`` (words of the slot that are never read:
    :func:`hw.memories.word_pieces`)."""
    shift = params.pool_piece_index_bits
    return [(POOL_CONSTANTS, (base + ch) << shift | k, piece) for ch, word in enumerate(words)
            for k, piece in enumerate(word_pieces(word, params.pool_piece_bits, params.pool_pieces, 1 << shift))]


def pool_threshold_words(params: VectorParams, node: PoolNode, info: TensorInfo) -> list[list[int]]:
    """POOL_THRESHOLDS words of ``node`` (input ``info``): per channel, its ``2^pool_code_bits - 1``
    thresholds, ascending (the unit searches them binarily). Table form only."""
    if params.pool_arithmetic:
        raise ValueError("the unit holds its pool thresholds in the arithmetic form (pool_form='arithmetic'): "
                         "no threshold table; see pool_constant_words")
    stage = _padded(node.stage, params.pool_code_bits, pool_sum_bound(node, info.shape, info.bound) + 1)
    t = thresholds_array(stage)
    if np.asarray(stage.descending).any() or (np.diff(t, axis=1) < 0).any():
        raise ValueError(f"pool node {node.name!r}: thresholds must be ascending and non-decreasing in every "
                         f"channel (the unit finds a code by binary search)")
    mask = (1 << params.pool_threshold_bits) - 1
    return [[v & mask for v in row] for row in t.tolist()]


def check_node(params: VectorParams, node, info: dict[str, TensorInfo]) -> list[tuple[int, int]] | None:
    """Raise ValueError naming what of ``node`` (an activate, add or pool node, tensors ``info``)
    does not fit the unit, and the fix. Returns a pool node's progressions (:func:`node_progressions`) where the
    unit holds its thresholds in the arithmetic form, else None."""
    problems, fits = [], None
    if isinstance(node, AddNode):
        bits = signed_bits(max(info[name].bound for name in (*node.inputs, node.output)))
        if bits > params.value_bits:
            problems.append(f"its values need {bits} bits (value_bits={params.value_bits})")
    else:
        act = isinstance(node, ActivateNode)
        need = (activate_needs if act else pool_needs)(node, info[node.input])
        code, width = ((params.act_code_bits, params.act_threshold_bits) if act
                       else (params.pool_code_bits, params.pool_threshold_bits))
        kind = "act" if act else "pool"
        if not code:
            problems.append(f"the unit has no {'activate' if act else 'pool'} hardware")
        else:
            if need["code_bits"] > code:
                problems.append(f"its {need['code_bits']}-bit codes exceed {kind}_code_bits={code}")
            elif not act and params.pool_arithmetic:
                fits = pool_progressions(node, info[node.input], code, params.pool_shift)
                if fits is None:
                    problems.append(f"its thresholds are not ceil((B + c * S) / 2^{params.pool_shift}) in every "
                                    f"channel (the unit's arithmetic form, pool_shift={params.pool_shift})")
                else:
                    base_bits, step_bits = progression_bits(fits)
                    if base_bits > params.pool_base_bits:
                        problems.append(f"its B' need {base_bits} bits (pool_base_bits={params.pool_base_bits})")
                    if step_bits > params.pool_step_bits:
                        problems.append(f"its S need {step_bits} bits (pool_step_bits={params.pool_step_bits})")
            shape = params.act_progression if act else None
            if shape is not None and need["code_bits"] > shape.table_code_bits:     # searched
                problem = searched_problem(node.stage, info[node.input].bound, shape)
                if problem:
                    problems.append(problem)
            elif act or not params.pool_arithmetic:
                listed = shape.table_code_bits if shape is not None else code
                threshold = max(need["threshold_bits"], need["pad_bits"] if need["code_bits"] < listed else 0)
                if threshold > width:
                    problems.append(f"its thresholds need {threshold} bits ({kind}_threshold_bits={width})")
        if need["value_bits"] > params.value_bits:
            problems.append(f"its input values need {need['value_bits']} bits (value_bits={params.value_bits})")
        if not act and params.pool_slots:
            for name, what in (("offset_bits", "offsets"), ("sum_bits", "sums")):
                if need[name] > getattr(params, f"pool_{name}"):
                    have = getattr(params, f"pool_{name}")
                    problems.append(f"its {what} need {need[name]} bits (pool_{name}={have})")
            if need["frac_bits"] > params.max_frac_bits:
                problems.append(f"frac_bits={need['frac_bits']} exceeds max_frac_bits={params.max_frac_bits}")
    if problems:
        raise ValueError(f"node {node.name!r} does not fit the vector unit: {'; '.join(problems)}; {FIX}")
    return fits


def constant_beats(params: VectorParams, model: CompiledModel) -> tuple[list[Beat], dict[str, int]]:
    """Every activate and pool node's constants as load beats, and each node's first slot
    (:func:`slot_bases`). Checks that every activate, add and pool node fits the unit and that
    all slots fit its constant memories."""
    info = model.validate()
    slots = slot_bases(model)
    beats: list[Beat] = []
    for node in model.nodes:
        if not isinstance(node, (ActivateNode, AddNode, PoolNode)):
            continue
        fits = check_node(params, node, info)
        if isinstance(node, AddNode):
            continue
        base, channels = slots[node.name], info[node.input].shape[0]
        have = params.act_slots if isinstance(node, ActivateNode) else params.pool_slots
        if base + channels > have:
            raise ValueError(f"node {node.name!r} needs slots {base}..{base + channels - 1}, the unit has "
                             f"{have}; {FIX}")
        if isinstance(node, ActivateNode):
            words = activate_words(params, node, info[node.input].bound)
            beats += [(ACT_THRESHOLDS, base + ch, w) for ch, w in enumerate(words)]
            continue
        beats += pool_constant_beats(params, base, pool_constant_words(params, node, info[node.input], fits))
        if params.pool_arithmetic:
            continue
        for ch, row in enumerate(pool_threshold_words(params, node, info[node.input])):
            beats += [(POOL_THRESHOLDS, (base + ch) << params.pool_code_bits | i, w) for i, w in enumerate(row)]
    return beats, slots


def _check_shape(shape) -> tuple[int, int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or \
            not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"shape must be 3 positive integers (C, H, W), not {shape!r}")
    return tuple(int(d) for d in shape)


def op_registers(params: VectorParams, node, shape: tuple[int, int, int], bases: dict[str, int],
                 slots: dict[str, int] | None = None, b_channels: int | None = None) -> dict[str, int]:
    """The op registers (:data:`~hw.vector_params.OP_REGISTERS`) that run ``node`` (an activate,
    add or pool node) on its input tensor(s) of ``shape`` (C, H, W), an average-pool node's window's
    too (:data:`~hw.vector_params.MAXPOOL_REGISTERS`, ``row_step`` = stride * W in values, ``src_a`` the value
    word of the first window's top left corner, ``base - padding * (W + 1)`` modulo ``2^value_addr_bits``); for a
    max-pool node :func:`maxpool_registers`, for a subsample node :func:`subsample_registers`.

    ``bases``: the base address of each tensor by name (a network plan's), at least the node's
    inputs (value memory) and output (code memory; value memory for an add, where the output may
    start at an input's base but not overlap it otherwise). ``slots``: each activate and pool
    node's first constant slot by name (:func:`constant_beats`' second result). ``b_channels``: an add node's
    operand b's channels where fewer than ``shape``'s (from channel ``node.b_offset`` of the sum; with
    ``params.narrow_adds`` the registers :data:`~hw.vector_params.ADD_REGISTERS` say so)."""
    if isinstance(node, MaxPoolNode):
        return maxpool_registers(params, node, shape, bases)
    if isinstance(node, SubsampleNode):
        return subsample_registers(params, node, shape, bases)
    c, h, w = _check_shape(shape)
    positions = h * w
    ops = {ActivateNode: ACTIVATE, AddNode: ADD, PoolNode: POOL, AvgPoolNode: AVGPOOL}
    if type(node) not in ops:
        raise ValueError(f"the vector unit runs activate, add, pool, average-pool and max-pool nodes, not "
                         f"{type(node).__name__}")
    op = ADD_RELU if isinstance(node, AddNode) and node.relu else ops[type(node)]
    name = f"node {node.name!r}"
    tensors = list(node.inputs) if isinstance(node, AddNode) else [node.input]
    for tensor in (*tensors, node.output):
        if tensor not in bases:
            raise ValueError(f"{name}: bases has no address for tensor {tensor!r}; give every input's and the "
                             f"output's base (the network plan's)")
    inputs, output = [bases[t] for t in tensors], bases[node.output]
    slot_base = 0
    if not isinstance(node, AddNode):
        if slots is None or node.name not in slots:
            raise ValueError(f"{name}: slots has no first slot for the node; pass the slots constant_beats returns")
        slot_base = slots[node.name]
    words = c * positions

    def check_range(what: str, base, size: int, depth: int, memory: str) -> int:
        if not isinstance(base, (int, np.integer)) or isinstance(base, bool) or base < 0 or base + size > depth:
            raise ValueError(f"{name}: {what} at {base!r} takes {size} words of the {memory} memory, which has "
                             f"{depth}; plan the tensors within the memory (or generate a deeper one)")
        return int(base)

    narrow = isinstance(node, AddNode) and (node.b_offset or (b_channels is not None and b_channels != c))
    b_channels = c if b_channels is None else b_channels
    if isinstance(node, AddNode) and (not isinstance(b_channels, int) or b_channels < 1
                                      or node.b_offset + b_channels > c):
        raise ValueError(f"{name}: operand b of {b_channels!r} channels from channel {node.b_offset} does not fit "
                         f"the sum's {c}")
    sizes = [words, b_channels * positions]
    src = [check_range(f"input {t!r}", b, size, params.value_depth, "value")
           for t, b, size in zip(tensors, inputs, sizes)]
    if narrow and not params.narrow_adds:
        raise ValueError(f"{name}: its operand b covers channels {node.b_offset}..{node.b_offset + b_channels - 1} "
                         f"of {c} only, and the unit has no narrow ADD hardware (narrow_adds); {FIX}")
    if isinstance(node, AddNode):
        dst = check_range(f"output {node.output!r}", output, words, params.value_depth, "value")
        for t, s, size in zip(tensors, src, sizes):
            if (s != dst or size != words) and s < dst + words and dst < s + size:
                raise ValueError(f"{name}: output {node.output!r} at {dst} overlaps input {t!r} at {s} without "
                                 f"starting there; an add may only write over an input of its size exactly")
    else:
        _, out_h, out_w = (c, h, w) if op == ACTIVATE else node.out_shape((c, h, w))   # a pool: 1 x 1 or windowed
        out_positions = out_h * out_w
        dst = check_range(f"output {node.output!r}", output, -(-c // params.lanes) * out_positions,
                          params.code_depth, "code")
        if op not in params.ops:
            raise ValueError(f"{name}: the unit has no {OPS[op]} hardware; {FIX}")
        have = params.act_slots if op == ACTIVATE else params.pool_slots
        if not isinstance(slot_base, (int, np.integer)) or isinstance(slot_base, bool) or slot_base < 0 \
                or slot_base + c > have:
            raise ValueError(f"{name}: slots {slot_base!r}.. for {c} channels do not fit the unit's {have}; "
                             f"pass the slots constant_beats returns")
        if c > len(node.stage.thresholds):
            raise ValueError(f"{name}: shape has {c} channels, the node's constants {len(node.stage.thresholds)}; "
                             f"give the shape of its input tensor")
    frac = node.frac_bits if isinstance(node, PoolNode) else 0
    if frac > params.max_frac_bits:
        raise ValueError(f"{name}: frac_bits={frac} exceeds max_frac_bits={params.max_frac_bits}; {FIX}")
    values = {"op": op, "src_a": src[0], "src_b": src[1] if isinstance(node, AddNode) else 0, "dst": dst, "channels": c,
              "positions": positions, "slot_base": int(slot_base), "frac_bits": frac}
    assert tuple(values) == OP_REGISTERS
    if isinstance(node, AddNode) and params.narrow_adds:
        values.update(b_first=node.b_offset, b_channels=b_channels)
    if op == AVGPOOL:
        k, stride, pad = node.kernel, node.stride, node.padding
        if min(h, w) + 2 * pad < k or maxpool_bits(node, (c, h, w)) > params.avgpool_bits \
                or (pad and not params.pool_outside_bits):
            raise ValueError(f"{name}: its window (input {h}x{w}, kernel {k}, stride {stride}, padding {pad}) does "
                             f"not fit the padded input, avgpool_bits={params.avgpool_bits} or the unit's padding "
                             f"(pool_outside_bits={params.pool_outside_bits}); {FIX}")
        _, ho, wo = node.out_shape((c, h, w))
        values.update(src_a=_window_corner(src[0], pad, w, params.value_addr_bits), height=h, width=w,
                      out_height=ho, out_width=wo, kernel=k, stride=stride, padding=pad, row_step=stride * w)
        assert tuple(values) == OP_REGISTERS + MAXPOOL_REGISTERS
    return values


def _window_corner(base: int, padding: int, width: int, addr_bits: int) -> int:
    """The word of a padded pooling's first window's top left corner, ``padding`` rows and columns before the map
    at ``base`` (``width`` words a row), modulo ``2^addr_bits``: the unit's address arithmetic wraps there."""
    return (base - padding * (width + 1)) & ((1 << addr_bits) - 1)


def _apart(name: str, node, bases: dict[str, int], in_words: int, out_words: int, depth: int, memory: str,
           doing: str, in_place: bool = False) -> tuple[int, int]:
    """The bases of ``node``'s input (``in_words`` words) and output (``out_words``) in ``bases``, each within the
    ``memory`` memory of ``depth`` words and the two apart (``doing``: what reads the input while it writes), or,
    with ``in_place``, the output at the input's base; ValueError naming the node (``name``) otherwise."""
    for tensor in (node.input, node.output):
        if tensor not in bases:
            raise ValueError(f"{name}: bases has no address for tensor {tensor!r}; give the input's and the "
                             f"output's base (the network plan's)")
    regions = []
    for what, tensor, words in (("input", node.input, in_words), ("output", node.output, out_words)):
        base = bases[tensor]
        if not isinstance(base, (int, np.integer)) or isinstance(base, bool) or base < 0 or base + words > depth:
            raise ValueError(f"{name}: {what} {tensor!r} at {base!r} takes {words} words of the {memory} memory, which "
                             f"has {depth}; plan the tensors within the memory (or generate a deeper one)")
        regions.append((int(base), int(base) + words))
    (a, b), (x, y) = regions
    if a < y and x < b and not (in_place and a == x):
        raise ValueError(f"{name}: output {node.output!r} overlaps input {node.input!r}"
                         + (" without starting at its base" if in_place else "")
                         + f"; {doing} reads its input while it writes")
    return a, x


def subsample_registers(params: VectorParams, node: SubsampleNode, shape: tuple[int, int, int],
                        bases: dict[str, int]) -> dict[str, int]:
    """The op registers (:data:`~hw.vector_params.OP_REGISTERS`, then :data:`~hw.vector_params.MAXPOOL_REGISTERS`)
    that run subsample node ``node`` on its input values of
    ``shape`` (C, H, W) at ``bases[node.input]`` into ``bases[node.output]`` (value memory; the output apart from
    the input or in place, at its base: each element is read before it and every later one are written, at or
    above their words): ``positions`` the input's ``H * W`` (a channel's step), ``row_step`` = ``stride * W``."""
    c, h, w = _check_shape(shape)
    name = f"node {node.name!r}"
    if SUBSAMPLE not in params.ops:
        raise ValueError(f"{name}: the unit has no subsample hardware; {FIX}")
    _, ho, wo = node.out_shape((c, h, w))
    a, x = _apart(name, node, bases, c * h * w, c * ho * wo, params.value_depth, "value", "subsampling",
                  in_place=True)
    if subsample_bits(node, (c, h, w)) > params.subsample_bits:
        raise ValueError(f"{name}: its sides (input {h}x{w}, stride {node.stride}) do not fit subsample_bits="
                         f"{params.subsample_bits}; {FIX}")
    values = {"op": SUBSAMPLE, "src_a": a, "src_b": 0, "dst": x, "channels": c, "positions": h * w,
              "slot_base": 0, "frac_bits": 0, "height": h, "width": w, "out_height": ho, "out_width": wo, "kernel": 1,
              "stride": node.stride, "padding": 0, "row_step": node.stride * w}
    assert tuple(values) == OP_REGISTERS + MAXPOOL_REGISTERS
    return values


def maxpool_registers(params: VectorParams, node: MaxPoolNode, shape: tuple[int, int, int],
                      bases: dict[str, int]) -> dict[str, int]:
    """The op registers (:data:`~hw.vector_params.OP_REGISTERS`, then
    :data:`~hw.vector_params.MAXPOOL_REGISTERS`) that run max-pool node ``node`` on its input codes of
    ``shape`` (C, H, W) at ``bases[node.input]`` into ``bases[node.output]`` (code memory; the two
    regions must not overlap). ``src_a`` is the word of the first window's top left corner,
    ``base - padding * (W + 1)``, and ``row_step`` = ``stride * W``, both modulo ``2^code_addr_bits``
    (the unit's address arithmetic wraps there; every address it reads lies in the input)."""
    c, h, w = _check_shape(shape)
    name = f"node {node.name!r}"
    op = MINPOOL if node.minimum else MAXPOOL
    if op not in params.ops:
        raise ValueError(f"{name}: the unit has no {'min' if node.minimum else 'max'}-pool hardware; {FIX}")
    _, ho, wo = node.out_shape((c, h, w))
    groups = -(-c // params.lanes)
    a, x = _apart(name, node, bases, groups * h * w, groups * ho * wo, params.code_depth, "code", "max pooling")
    if min(h, w) + 2 * node.padding < node.kernel or maxpool_bits(node, (c, h, w)) > params.maxpool_bits:
        raise ValueError(f"{name}: its window (input {h}x{w}, kernel {node.kernel}, stride {node.stride}, padding "
                         f"{node.padding}) does not fit the padded input or maxpool_bits={params.maxpool_bits}; "
                         f"{FIX}")
    if max(c, h * w) >= 1 << params.count_bits:
        raise ValueError(f"{name}: {c} channels of {h * w} positions exceed count_bits={params.count_bits}; {FIX}")
    mask = (1 << params.code_addr_bits) - 1
    values = {"op": op, "src_a": _window_corner(a, node.padding, w, params.code_addr_bits), "src_b": 0, "dst": x,
              "channels": c, "positions": h * w, "slot_base": 0, "frac_bits": 0, "height": h, "width": w,
              "out_height": ho, "out_width": wo, "kernel": node.kernel, "stride": node.stride, "padding": node.padding,
              "row_step": node.stride * w & mask}
    assert tuple(values) == OP_REGISTERS + MAXPOOL_REGISTERS
    return values
