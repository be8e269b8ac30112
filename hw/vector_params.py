"""Parameters of the vector unit (:mod:`hw.vector`), checked, and sized from a compiled model.

:class:`VectorParams` fixes what the generated unit cannot change at run time: the layout of
the two data memories it works on (``lanes`` codes of ``lane_bits`` per code-memory word,
``value_bits`` per value-memory word, their depths) and the shape of its constant memories:
the thresholds of every :class:`~compiler.graph.ActivateNode` (``act_*``, one slot per channel
of every activate node, all resident) and the constants of every
:class:`~compiler.graph.PoolNode` (``pool_*``), and whether it has max-pool hardware
(``maxpool_bits``, the width of the window registers of a :class:`~compiler.graph.MaxPoolNode`).
What changes per op goes into the unit's op registers (:data:`OP_REGISTERS`, computed by
:func:`hw.vector_words.op_registers`).

Pool thresholds come in one of two forms (``pool_form``):

- ``"arithmetic"``: every channel's ``2^b - 1`` thresholds are ``T[c] = ceil((B + c * S) / 2^k)``
  for integers ``B``, ``S >= 0`` and one shift ``k`` (``pool_shift``) for the whole unit
  (:func:`hw.progression.fit_progression`; exact, checked with Python integers). A pooled code feeds a layer
  whose activation quantizer is uniform, so its thresholds are an arithmetic progression up to
  rounding and ``k`` near ``log2(2^b)`` reproduces them. The unit stores ``B' = B - S`` and
  ``S`` per channel next to its pool constants, and no threshold table.
- ``"table"``: every threshold stored, ``2^pool_code_bits`` words per channel.

:meth:`VectorParams.for_model` picks the arithmetic form when every pool node of the model has one.

Pure Python: the host and the compiler side import it without Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from compiler.graph import (CODE_BITS, FRAC_BITS, ActivateNode, AddNode, AvgPoolNode, CompiledModel, MaxPoolNode,
                            PAD_HEADROOM_BITS, PoolNode, SubsampleNode, TensorInfo, Thresholds, signed_bits)

from .memories import memory_bits
from .progression import ProgressionShape, fit_progression, progression_bits, progression_shape, shape_from_dict
from .stage_words import threshold_bits, threshold_unit_word_bits

MAX_LANES = 256
MAX_DEPTH = 1 << 24          # words of a data memory, and constant slots
MAX_VALUE_BITS = 64

# Ops (the ``op`` register) and their names.
OPS = ("activate", "add", "pool", "maxpool", "add_relu", "avgpool", "minpool", "subsample")
# ADD_RELU: ADD, then max(0, sum); MINPOOL: MAXPOOL of the codes' complements, complemented (each window's minimum);
# SUBSAMPLE: values, every stride-th row and column between zero channels (an option-A shortcut)
ACTIVATE, ADD, POOL, MAXPOOL, ADD_RELU, AVGPOOL, MINPOOL, SUBSAMPLE = range(len(OPS))
OP_BITS = 3
# The op registers, sampled with ``start``; MAXPOOL and AVGPOOL also sample their window's (input and
# output sides, kernel, stride, padding, and ``row_step`` = stride * width).
OP_REGISTERS = ("op", "src_a", "src_b", "dst", "channels", "positions", "slot_base", "frac_bits")
MAXPOOL_REGISTERS = ("height", "width", "out_height", "out_width", "kernel", "stride", "padding", "row_step")
# SUBSAMPLE samples the window's too (``kernel`` 1, ``padding`` 0). With ``narrow_adds`` ADD (ADD_RELU) also samples
# the channels of the sum that operand b covers: from ``b_first``, ``b_channels`` of them (an option-A shortcut).
ADD_REGISTERS = ("b_first", "b_channels")
MAX_MAXPOOL_BITS = 16

# Load targets (``load_target``): a channel's activate-threshold word, a pool channel's
# (relu, sign, offset[, B', S]) word, one pool threshold (table form only).
TARGETS = ("act_thresholds", "pool_constants", "pool_thresholds")
ACT_THRESHOLDS, POOL_CONSTANTS, POOL_THRESHOLDS = range(len(TARGETS))
VECTOR_TARGETS = len(TARGETS)
TARGET_BITS = 2

# A POOL_CONSTANTS word: bit 0 relu, bits 1-2 the sign (two's complement), offset from bit 3, then the clip
# (``pool_cap_bits``, two's complement; none where no pool node clips), the term outside the map (``pool_outside_bits``,
# two's complement; none where no average pooling pads); in the arithmetic form then B' (two's complement,
# ``pool_base_bits``) and S (``pool_step_bits``).
POOL_RELU_BIT, POOL_SIGN_SHIFT, POOL_SIGN_BITS, POOL_OFFSET_SHIFT = 0, 1, 2, 3
# The constants memory holds each channel's word as pieces of this many bits (the width of an iCE40
# block RAM: a word of about 100 bits would take 7 blocks side by side, its pieces take 2), read one
# per cycle into a register from the channel's first cycle on, each there POOL_PIECE_LATENCY cycles after
# its read (one more on the ECP5, whose value reads take one more too). The sum first uses relu, sign and
# offset 3 cycles after a value's read: a channel's first value is read with the last POOL_PIECE_SLACK of
# the pieces that hold them, the pieces of B' and S (the search's) while its values are.
POOL_PIECE_BITS = 16
POOL_PIECE_LATENCY = 2
POOL_PIECE_SLACK = 2

# Forms of the pool thresholds (``pool_form``) and the largest shift ``k`` of the arithmetic form.
POOL_FORMS = ("arithmetic", "table")
MAX_POOL_SHIFT = 32
MAX_POOL_BASE_BITS = 128

# Cycles of the pipelines (see :meth:`VectorParams.op_cycles`): ACTIVATE from an element's
# read to its write (read, the read data's register, :class:`hw.thresholds.ThresholdUnit` of latency 3,
# the write register); ADD from operand b's read to its write (read, the read data's register, the write
# register); POOL: cycles from a channel's last read until its search starts (the sum is complete two cycles
# later, as the first step's compare reads it: the step's first two phases need only the constants), and per
# step of the threshold search (two adds or a read, compare in two halves into a register, take the result).
THRESHOLD_LATENCY = 3
START_CYCLES = 1              # the start taken into a register: an op's first read comes a cycle later
ACTIVATE_DEPTH = 2 + THRESHOLD_LATENCY + 1
ADD_DEPTH = 3
POOL_DRAIN = 5
SEARCH_STEP = 5
MAXPOOL_DEPTH = 2             # from a window's last read address: the read, the write register
SUBSAMPLE_DEPTH = 3           # from the last read address: the read, the read data's register, the write register


def pool_sum_bound(node: PoolNode, shape: tuple[int, int, int], bound: int) -> int:
    """Largest ``|sum of u|`` (over all positions, or a window) of ``node`` for inputs ``|x| <= bound`` of
    ``shape``: ``|u| <= bound * 2^frac_bits + |offset|``, or the clip's ``|cap|`` or the term outside the map's
    where larger. (Thresholds are clamped to ``PoolNode.sum_limit``, but an offset of the sign opposite to ``x``
    makes sums up to twice that.)"""
    offset = int(np.abs(np.asarray(node.offset, dtype=np.int64)).max())
    return node.summed(shape) * max((int(bound) << node.frac_bits) + offset, _largest(node.cap),
                                    _largest(getattr(node, "outside", None)))


def _largest(a: np.ndarray | None) -> int:
    """The largest ``|element|`` of an int64 array (0 for None)."""
    return 0 if a is None else int(np.abs(np.asarray(a, dtype=np.int64)).max())


def activate_needs(node: ActivateNode, info: TensorInfo) -> dict[str, int]:
    """Widths one activate node needs: its codes, thresholds, the never-passed threshold that
    pads it to wider codes (``bound + 1``), its input values; and its slots."""
    return {"code_bits": node.stage.bits, "threshold_bits": threshold_bits(node.stage),
            "pad_bits": signed_bits(Thresholds.limit(info.bound)), "value_bits": signed_bits(info.bound),
            "slots": info.shape[0]}


def pool_needs(node: PoolNode, info: TensorInfo) -> dict[str, int]:
    """Widths one pool node needs (as :func:`activate_needs`, plus offsets, sums, fraction bits, its clip and
    its terms ``u``: where any node clips, every node's channels hold a clip, one no term reaches where the node
    has none; an average pooling with padding its terms outside the map); its padding threshold is one above the
    largest sum (:func:`pool_sum_bound`)."""
    total = pool_sum_bound(node, info.shape, info.bound)
    offset = int(np.abs(np.asarray(node.offset, dtype=np.int64)).max())
    cap = 0 if node.cap is None else signed_bits(_largest(node.cap))
    outside = getattr(node, "outside", None)
    return {"code_bits": node.stage.bits, "outside_bits": 0 if outside is None else signed_bits(_largest(outside)),
            "threshold_bits": threshold_bits(node.stage),
            "pad_bits": signed_bits(total + 1), "value_bits": signed_bits(info.bound),
            "offset_bits": signed_bits(offset), "sum_bits": signed_bits(total), "frac_bits": node.frac_bits,
            "slots": info.shape[0], "cap_bits": cap, "term_bits": signed_bits((int(info.bound) << node.frac_bits)
                                                                              + offset)}


def maxpool_bits(node: MaxPoolNode | AvgPoolNode, shape: tuple[int, int, int]) -> int:
    """Width of the window registers that max- or average-pool node ``node`` on input ``shape`` needs: the
    bits of its largest side (input or output), kernel, stride or padding."""
    return max(1, *(int(v).bit_length() for v in (*shape[1:], *node.out_shape(shape)[1:], node.kernel, node.stride,
                                                   getattr(node, "padding", 0))))


def subsample_bits(node: SubsampleNode, shape: tuple[int, int, int]) -> int:
    """Width of the window registers that subsample node ``node`` on input ``shape`` needs: the bits of its
    sides (input and output) and stride."""
    return max(1, *(int(v).bit_length() for v in (*shape[1:], *node.out_shape(shape)[1:], node.stride)))


def pool_rows(node: PoolNode, code_bits: int) -> list[list[int]]:
    """The thresholds of every channel of ``node`` (Python integers), before padding to ``code_bits``."""
    t = np.asarray(node.stage.thresholds, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 2 ** node.stage.bits - 1 or node.stage.bits > code_bits:
        raise ValueError(f"pool node {node.name!r}: {node.stage.bits}-bit thresholds of shape {t.shape} do not "
                         f"fit {code_bits}-bit codes")
    return t.tolist()


def pool_progressions(node: PoolNode, info: TensorInfo, code_bits: int,
                      shift: int) -> list[tuple[int, int]] | None:
    """Each channel's ``(B, S)`` (:func:`fit_progression`) of ``node`` (input ``info``) in a unit of
    ``code_bits`` pooled codes at ``shift``; a narrower node's padding thresholds are never passed
    (above :func:`pool_sum_bound`). None where a channel has none (or its thresholds descend)."""
    if np.asarray(node.stage.descending).any():
        return None
    padding = 2 ** code_bits - 2 ** node.stage.bits
    never = pool_sum_bound(node, info.shape, info.bound) + 1
    fits = []
    for row in pool_rows(node, code_bits):
        fit = fit_progression(row, shift, padding, never)
        if fit is None:
            return None
        fits.append(fit)
    return fits


def pool_shift(node: PoolNode, info: TensorInfo, code_bits: int) -> int | None:
    """The smallest shift ``k`` (0..:data:`MAX_POOL_SHIFT`) at which ``node`` has the arithmetic form
    (:func:`pool_progressions`), or None. A form at ``k`` gives one at every larger ``k``
    (``(2B, 2S)``), so a unit takes the largest of its nodes'."""
    for k in range(MAX_POOL_SHIFT + 1):
        if pool_progressions(node, info, code_bits, k) is not None:
            return k
    return None


def _bits(largest: int) -> int:
    """Unsigned bits of ``0..largest`` (at least 1)."""
    return max(1, int(largest).bit_length())


@dataclass(frozen=True)
class VectorParams:
    """What a :class:`hw.vector.VectorUnit` is generated with.

    - Data memories: ``lanes`` (1..256) codes of ``lane_bits`` (1..8) per code-memory word,
      ``code_depth`` words; values of ``value_bits`` (2..64, signed) per value-memory word,
      ``value_depth`` words (depths 1..2^24).
    - Activate thresholds: ``act_code_bits`` (0: no activate hardware, else 1..8, at most
      ``lane_bits``), ``act_threshold_bits`` (signed width of a stored threshold, 2..``value_bits
      + 1``), ``act_slots`` (channels of all activate nodes together), ``act_progression`` (None, or the
      threshold unit's progression words, :class:`~hw.progression.ProgressionShape`: the activate nodes wider
      than its ``table_code_bits`` are searched, :mod:`hw.thresholds`; ACTIVATE then takes ``act_code_bits``
      cycles more, and so does a code lent to a fused activation, :attr:`act_search_cycles`).
    - Pooling: ``pool_slots`` (channels of all pool nodes; 0: no pool hardware, then every
      ``pool_*`` width and ``max_frac_bits`` is 0 and ``pool_form`` "table"), ``pool_code_bits``
      (1..8, at most ``lane_bits``), ``pool_offset_bits`` (signed,
      1..``value_bits + max_frac_bits``), ``pool_sum_bits`` (signed sums, 2..64),
      ``max_frac_bits`` (0..24), ``pool_form`` (:data:`POOL_FORMS`, module docstring) and its widths:
      "table": ``pool_threshold_bits`` (a stored threshold, signed, 2..65; the arithmetic widths 0);
      "arithmetic": ``pool_shift`` (``k``, 0..32), ``pool_base_bits`` (``B'``, signed, 2..128),
      ``pool_step_bits`` (``S``, 1..128), ``pool_threshold_bits`` 0. ``pool_cap_bits`` (0: no clip hardware,
      else signed, up to ``value_bits + max_frac_bits + 2``): the clip of a ReLU6 before a pooling
      (:class:`~compiler.graph.PoolNode` ``cap``), compared in stage 4 of the pool pipeline.
    - Max pooling: ``maxpool_bits`` (0: no max-pool hardware, else 1..16): width of its window
      counters (input and output sides, kernel, stride, padding). With it, ``channels`` and
      ``positions`` also count codes (up to ``lanes * code_depth``) and ``src_a`` holds a code address.
    - ``minpool``: MINPOOL hardware (the max-pool hardware's complement of the codes read and written: where a
      :class:`~compiler.graph.MaxPoolNode` takes the ``minimum``; needs ``maxpool_bits``).
    - Average pooling: ``avgpool_bits`` (0: no AVGPOOL hardware, else 1..16, with pool hardware): the
      same for the windows of average pooling nodes. The window registers are ``window_bits`` wide.
      ``pool_outside_bits`` (0: windows within the map only; else, with AVGPOOL hardware, signed, up to
      ``value_bits + max_frac_bits + PAD_HEADROOM_BITS + 1``): padded windows, each position outside the map a
      term of the channel's constants (:class:`~compiler.graph.AvgPoolNode` ``outside``) instead of a value's.
    - ``adds``: ADD and ADD_RELU hardware (false where every addition of the model is fused into a conv).
    - ``subsample_bits``: 0: no SUBSAMPLE hardware; else 1..16, the width its window registers need (sides,
      stride: :func:`subsample_bits`).
    - ``narrow_adds``: ADD's operand b may cover some channels of the sum only (:data:`ADD_REGISTERS`,
      ``count_bits``; needs ``adds``).
    """

    lanes: int
    lane_bits: int
    value_bits: int
    value_depth: int
    code_depth: int
    act_code_bits: int = 0
    act_threshold_bits: int = 0
    act_slots: int = 0
    pool_slots: int = 0
    pool_code_bits: int = 0
    pool_threshold_bits: int = 0
    pool_offset_bits: int = 0
    pool_sum_bits: int = 0
    max_frac_bits: int = 0
    pool_form: str = "table"
    pool_shift: int = 0
    pool_base_bits: int = 0
    pool_step_bits: int = 0
    maxpool_bits: int = 0
    avgpool_bits: int = 0
    adds: bool = True
    pool_cap_bits: int = 0
    minpool: bool = False
    act_progression: ProgressionShape | None = None
    subsample_bits: int = 0
    narrow_adds: bool = False
    pool_outside_bits: int = 0

    def __post_init__(self):
        def check(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")

        for name, low, high in (("lanes", 1, MAX_LANES), ("lane_bits", 1, CODE_BITS[1]),
                                ("value_bits", 2, MAX_VALUE_BITS), ("value_depth", 1, MAX_DEPTH),
                                ("code_depth", 1, MAX_DEPTH), ("act_code_bits", 0, CODE_BITS[1]),
                                ("pool_slots", 0, MAX_DEPTH), ("maxpool_bits", 0, MAX_MAXPOOL_BITS),
                                ("avgpool_bits", 0, MAX_MAXPOOL_BITS if self.pool_slots else 0),
                                ("subsample_bits", 0, MAX_MAXPOOL_BITS)):
            check(name, low, high)
        if self.act_progression is not None and (
                not isinstance(self.act_progression, ProgressionShape)
                or not self.act_progression.table_code_bits < self.act_code_bits):
            raise ValueError(f"act_progression must be None or a ProgressionShape whose table_code_bits are below "
                             f"act_code_bits={self.act_code_bits}, got {self.act_progression!r}")
        if self.act_code_bits:
            check("act_code_bits", 1, self.lane_bits)
            check("act_threshold_bits", 2, self.value_bits + 1)
            check("act_slots", 1, MAX_DEPTH)
        else:
            for name in ("act_threshold_bits", "act_slots"):
                check(name, 0, 0)
        if not isinstance(self.adds, bool):
            raise ValueError(f"adds must be true or false, got {self.adds!r}")
        if not isinstance(self.narrow_adds, bool) or (self.narrow_adds and not self.adds):
            raise ValueError(f"narrow_adds must be true or false, and true only with ADD hardware (adds), got "
                             f"{self.narrow_adds!r} with adds={self.adds!r}")
        if not isinstance(self.minpool, bool) or (self.minpool and not self.maxpool_bits):
            raise ValueError(f"minpool must be true or false, and true only with max-pool hardware (maxpool_bits > "
                             f"0), got {self.minpool!r} with maxpool_bits={self.maxpool_bits}")
        if self.pool_form not in POOL_FORMS:
            raise ValueError(f"pool_form must be one of {', '.join(map(repr, POOL_FORMS))}, got {self.pool_form!r}")
        arithmetic = ("pool_shift", "pool_base_bits", "pool_step_bits")
        if self.pool_slots:
            check("max_frac_bits", *FRAC_BITS)
            check("pool_code_bits", 1, self.lane_bits)
            check("pool_sum_bits", 2, MAX_VALUE_BITS)
            check("pool_offset_bits", 1, self.value_bits + self.max_frac_bits)
            check("pool_cap_bits", 0, self.value_bits + self.max_frac_bits + 2)
            check("pool_outside_bits", 0, self.value_bits + self.max_frac_bits + PAD_HEADROOM_BITS + 1
                  if self.avgpool_bits else 0)
            if self.pool_form == "table":
                check("pool_threshold_bits", 2, MAX_VALUE_BITS + 1)
                for name in arithmetic:
                    check(name, 0, 0)
            else:
                check("pool_threshold_bits", 0, 0)
                check("pool_shift", 0, MAX_POOL_SHIFT)
                check("pool_base_bits", 2, MAX_POOL_BASE_BITS)
                check("pool_step_bits", 1, MAX_POOL_BASE_BITS)
        else:
            for name in ("pool_code_bits", "pool_threshold_bits", "pool_offset_bits", "pool_sum_bits",
                         "max_frac_bits", "pool_cap_bits", "pool_outside_bits", *arithmetic):
                check(name, 0, 0)
            if self.pool_form != "table":
                raise ValueError(f"pool_form must be 'table' without pool hardware (pool_slots=0), got "
                                 f"{self.pool_form!r}")

    # Widths of the ports and op registers.

    @property
    def value_addr_bits(self) -> int:
        """``src_a``, ``src_b``, ``val_*_addr``: addresses ``0..value_depth - 1``."""
        return _bits(self.value_depth - 1)

    @property
    def code_addr_bits(self) -> int:
        """``code_write_addr``: addresses ``0..code_depth - 1``."""
        return _bits(self.code_depth - 1)

    @property
    def dst_bits(self) -> int:
        """``dst``: a value address (ADD) or a code address (ACTIVATE, POOL, MAXPOOL)."""
        return max(self.value_addr_bits, self.code_addr_bits)

    @property
    def src_bits(self) -> int:
        """``src_a``: a value address, or with max-pool hardware also a code address."""
        return self.dst_bits if self.maxpool_bits else self.value_addr_bits

    @property
    def count_bits(self) -> int:
        """``channels``, ``positions``: ``1..value_depth`` (a tensor's elements are value words); with
        max-pool hardware ``1..lanes * code_depth`` too (a codes tensor's codes)."""
        return _bits(max(self.value_depth, self.lanes * self.code_depth if self.maxpool_bits else 0))

    @property
    def window_bits(self) -> int:
        """The window registers (:data:`MAXPOOL_REGISTERS` but ``row_step``): 0 without MAXPOOL, AVGPOOL or
        SUBSAMPLE."""
        return max(self.maxpool_bits, self.avgpool_bits, self.subsample_bits)

    @property
    def operand_registers(self) -> tuple[str, ...]:
        """The op registers this unit samples: :data:`OP_REGISTERS`, the window's (:data:`MAXPOOL_REGISTERS`)
        with MAXPOOL, AVGPOOL or SUBSAMPLE hardware, :data:`ADD_REGISTERS` with ``narrow_adds``."""
        return (OP_REGISTERS + (MAXPOOL_REGISTERS if self.window_bits else ())
                + (ADD_REGISTERS if self.narrow_adds else ()))

    @property
    def lane_index_bits(self) -> int:
        """``code_write_lane``: lanes ``0..lanes - 1``."""
        return _bits(self.lanes - 1)

    @property
    def slot_bits(self) -> int:
        """``slot_base``: constant slots of the activate or the pool nodes."""
        return _bits(max(self.act_slots, self.pool_slots, 1) - 1)

    @property
    def frac_field_bits(self) -> int:
        """``frac_bits`` register: ``0..max_frac_bits``."""
        return _bits(self.max_frac_bits)

    @property
    def act_word_bits(self) -> int:
        """An ACT_THRESHOLDS word (:func:`hw.stage_words.threshold_unit_word_bits`); 0 without activate hardware."""
        return (threshold_unit_word_bits(self.act_code_bits, self.act_threshold_bits, self.act_progression)
                if self.act_code_bits else 0)

    @property
    def act_search_cycles(self) -> int:
        """Cycles the activate threshold unit's search adds to ACTIVATE (and to a lent code): ``act_code_bits``
        with ``act_progression``, else 0."""
        return self.act_code_bits if self.act_progression is not None else 0

    @property
    def pool_arithmetic(self) -> bool:
        """Whether the pool thresholds are in the arithmetic form (per channel ``B'`` and ``S``)."""
        return self.pool_form == "arithmetic"

    @property
    def pool_cap_shift(self) -> int:
        """Lowest bit of the clip (``pool_cap_bits``, two's complement) in a POOL_CONSTANTS word."""
        return POOL_OFFSET_SHIFT + self.pool_offset_bits

    @property
    def pool_outside_shift(self) -> int:
        """Lowest bit of the term outside the map (``pool_outside_bits``, two's complement) in a POOL_CONSTANTS
        word."""
        return self.pool_cap_shift + self.pool_cap_bits

    @property
    def pool_base_shift(self) -> int:
        """Lowest bit of ``B'`` in a POOL_CONSTANTS word (arithmetic form)."""
        return self.pool_outside_shift + self.pool_outside_bits

    @property
    def pool_step_shift(self) -> int:
        """Lowest bit of ``S`` in a POOL_CONSTANTS word (arithmetic form)."""
        return self.pool_base_shift + self.pool_base_bits

    @property
    def pool_constant_bits(self) -> int:
        """A POOL_CONSTANTS word: relu, sign, offset, clip, term outside the map (and ``B'``, ``S`` in the
        arithmetic form); 0 without pool hardware."""
        return self.pool_step_shift + self.pool_step_bits if self.pool_slots else 0

    @property
    def pool_pieces(self) -> int:
        """Pieces of a POOL_CONSTANTS word (:data:`POOL_PIECE_BITS` each, the last maybe narrower); 0
        without pool hardware. The unit reads one a cycle from each channel's (window's) first cycle on."""
        return -(-self.pool_constant_bits // POOL_PIECE_BITS)

    @property
    def pool_lead_pieces(self) -> int:
        """Pieces of a POOL_CONSTANTS word read before the channel's (window's) first value: those that hold
        relu, sign, offset, clip and term outside the map, the sum's constants, less :data:`POOL_PIECE_SLACK`;
        the others are read while the values are. 0 without pool hardware."""
        sum_pieces = -(-self.pool_base_shift // POOL_PIECE_BITS) if self.pool_slots else 0
        return max(0, sum_pieces - POOL_PIECE_SLACK)

    @property
    def pool_piece_bits(self) -> int:
        """Width of the constants memory: a piece, or the whole word where it is narrower."""
        return min(POOL_PIECE_BITS, self.pool_constant_bits)

    @property
    def pool_piece_index_bits(self) -> int:
        """Bits of the piece index below the slot in a POOL_CONSTANTS address (``slot << bits | piece``)."""
        return _bits(self.pool_pieces - 1) if self.pool_pieces > 1 else 0

    @property
    def pool_constant_depth(self) -> int:
        """Words of the constants memory: ``2^pool_piece_index_bits`` pieces per slot."""
        return self.pool_slots << self.pool_piece_index_bits

    @property
    def pool_threshold_depth(self) -> int:
        """Words of the pool-threshold memory: ``2^pool_code_bits`` per slot (the last unused); 0 in
        the arithmetic form (no table)."""
        return 0 if self.pool_arithmetic else self.pool_slots << self.pool_code_bits

    @property
    def target_bits(self) -> tuple[int, int, int]:
        """Data bits of a load beat to each target (:data:`TARGETS` order); 0 for one the unit lacks
        (POOL_THRESHOLDS in the arithmetic form)."""
        return self.act_word_bits, self.pool_piece_bits, self.pool_threshold_bits

    @property
    def load_data_bits(self) -> int:
        """Width of ``load_data``: the widest target's (:attr:`target_bits`), at least 1."""
        return max(1, *self.target_bits)

    @property
    def load_addr_bits(self) -> int:
        """Width of ``load_addr``: an activate slot, a pool constant or a pool threshold word."""
        return _bits(max(self.act_slots, self.pool_constant_depth, self.pool_threshold_depth, 1) - 1)

    @property
    def ops(self) -> tuple[int, ...]:
        """The ops this unit runs (ADD and ADD_RELU with ``adds``; ACTIVATE and POOL where it has their
        constants, MAXPOOL, AVGPOOL and SUBSAMPLE where it has ``maxpool_bits``, ``avgpool_bits``,
        ``subsample_bits``, MINPOOL with ``minpool``)."""
        return tuple(op for op, present in ((ACTIVATE, self.act_code_bits), (ADD, self.adds),
                                            (POOL, self.pool_slots), (MAXPOOL, self.maxpool_bits),
                                            (ADD_RELU, self.adds), (AVGPOOL, self.avgpool_bits),
                                            (MINPOOL, self.minpool), (SUBSAMPLE, self.subsample_bits)) if present)

    def op_cycles(self, op: int, channels: int, positions: int, window: int = 1, value_latency: int = 1) -> int:
        """Cycles ``busy`` is high for one op (from the cycle after ``start``; the last is the one
        in which the last write is presented), each with the start's cycle (``START_CYCLES``): ACTIVATE
        ``N + 7`` (``act_search_cycles`` more) and ADD (ADD_RELU) ``2N + 4`` with ``N = channels * positions``;
        POOL ``channels * (max(pool_lead_pieces + positions + 5, pool_pieces + 2) + 5 * pool_code_bits) + 2``; MAXPOOL
        (MINPOOL) ``ceil(channels / lanes) * positions * window + 3`` with ``positions`` the output's and ``window`` =
        kernel^2: one read per cycle, a word of ``lanes`` codes; AVGPOOL ``channels * positions *
        (max(pool_lead_pieces + window + 5, pool_pieces + 2) + 5 * pool_code_bits) + 2`` (each window as POOL's
        channel); SUBSAMPLE ``channels * positions + 4`` with ``positions`` the output's. ``value_latency``: the
        value memory's read cycles (:func:`hw.column_memory.value_read_latency`), each beyond the first one more for
        ACTIVATE, ADD and SUBSAMPLE and one more per channel (window) for POOL (AVGPOOL)."""
        n, extra = channels * positions, value_latency - 1
        if op == ACTIVATE:
            run = n + ACTIVATE_DEPTH + self.act_search_cycles + extra
        elif op in (ADD, ADD_RELU):
            run = 2 * n + ADD_DEPTH + extra
        elif op == POOL:
            run = channels * self._pooled(positions, extra) + 1
        elif op in (MAXPOOL, MINPOOL):
            run = -(-channels // self.lanes) * positions * window + MAXPOOL_DEPTH
        elif op == AVGPOOL:
            run = channels * positions * self._pooled(window, extra) + 1
        elif op == SUBSAMPLE:
            run = n + SUBSAMPLE_DEPTH + extra
        else:
            names = ", ".join(f"{i} ({name})" for i, name in enumerate(OPS))
            raise ValueError(f"op must be one of {names}, got {op!r}")
        return START_CYCLES + run

    def _pooled(self, values: int, extra: int) -> int:
        """Cycles of a pooled channel (window) of ``values`` values: the constants' lead pieces, the values, the
        drain (and the last piece in the constants register), the search; ``extra``: value read cycles beyond one."""
        return (max(self.pool_lead_pieces + values + POOL_DRAIN, self.pool_pieces + POOL_PIECE_LATENCY) + extra
                + SEARCH_STEP * self.pool_code_bits)

    def register_cycles(self, regs: dict[str, int], value_latency: int = 1) -> int:
        """:meth:`op_cycles` of the op that the op registers ``regs`` start (``op_registers``'s dict)."""
        if regs["op"] in (MAXPOOL, AVGPOOL, MINPOOL, SUBSAMPLE):
            return self.op_cycles(regs["op"], regs["channels"], regs["out_height"] * regs["out_width"],
                                  regs["kernel"] ** 2, value_latency)
        return self.op_cycles(regs["op"], regs["channels"], regs["positions"], value_latency=value_latency)

    def memories(self) -> list[tuple[str, int, int, int]]:
        """The unit's constant RAMs as ``(name, width, depth, copies)`` (as
        :meth:`hw.engine_params.EngineParams.memories`; the data memories are the network core's)."""
        mems = []
        if self.act_code_bits:      # (as hw.thresholds.ThresholdUnit builds them)
            listed = self.act_progression.table_code_bits if self.act_progression else self.act_code_bits
            s, tb = 2 ** listed - 1, self.act_threshold_bits
            if s <= 15:
                mems.append(("act_thresholds", self.act_word_bits, self.act_slots, 1))
            else:
                mems += [("act_thresholds", tb, self.act_slots, self.act_word_bits // tb),
                         ("act_descending", self.act_word_bits % tb, self.act_slots, 1)]
        if self.pool_slots:
            mems.append(("pool_constants", self.pool_piece_bits, self.pool_constant_depth, 1))
            if not self.pool_arithmetic:
                mems.append(("pool_thresholds", self.pool_threshold_bits, self.pool_threshold_depth, 1))
        return mems

    def memory_bits(self) -> dict[str, int]:
        """Bits of each constant memory (all copies together)."""
        return memory_bits(self.memories())

    def describe(self) -> dict:
        """Every parameter as JSON-ready values; :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["act_progression"] = None if self.act_progression is None else vars(self.act_progression).copy()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VectorParams:
        """The parameters that :meth:`describe` wrote as ``d`` (each value checked as on construction); a
        ``d`` without ``avgpool_bits`` (written before the unit had AVGPOOL), ``pool_cap_bits`` (before it
        clipped), ``subsample_bits`` (before SUBSAMPLE) or ``pool_outside_bits`` (before padded average pooling)
        means 0, without ``adds`` true, without ``minpool`` (before
        MINPOOL) or ``narrow_adds`` (before those) false, without ``act_progression`` (before the activate thresholds
        were searched) None."""
        names = {f.name for f in fields(cls)}
        for name, value in (("avgpool_bits", 0), ("pool_cap_bits", 0), ("adds", True), ("minpool", False),
                            ("act_progression", None), ("subsample_bits", 0), ("narrow_adds", False),
                            ("pool_outside_bits", 0)):
            if isinstance(d, dict) and name not in d:
                d = {**d, name: value}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"vector parameters must be a dict with the keys {sorted(names)}, not {d!r}")
        return cls(**{**d, "act_progression": shape_from_dict(d["act_progression"], "act_progression")})

    # Sizing.

    @classmethod
    def for_model(cls, model: CompiledModel, lanes: int, lane_bits: int, value_bits: int, value_depth: int,
                  code_depth: int, adds: bool = True, narrow_adds: bool | None = None) -> VectorParams:
        """The smallest unit that runs every activate, add and pool node of ``model`` on data memories
        of the given shape: each width exactly what the widest node needs (from the value bounds
        :meth:`~compiler.graph.CompiledModel.validate` propagates), every node's constants resident.
        The pool thresholds take the arithmetic form where every pool node has one (at the largest of
        the nodes' smallest shifts, :func:`pool_shift`), else the table form. Max-pool hardware is there
        where the model has a max-pool node, its registers as wide as the largest side, kernel, stride
        or padding of one; an average pooling's too, and where one pads, terms outside the map as wide as its
        largest (``pool_outside_bits``). ``adds``: the ADD hardware (see the class). The activate thresholds search the
        nodes that :func:`~hw.progression.progression_shape` picks (``act_progression``).
        SUBSAMPLE hardware is there where the model has a subsample node; ``narrow_adds``: the narrow ADD hardware
        (None: where an addition's operand b covers some channels only; a network core's plan says where an add
        step does, those fused into a conv need none).
        Raises ValueError when ``value_bits`` or ``lane_bits`` cannot hold the model's tensors."""
        info = model.validate()
        acts = [activate_needs(n, info[n.input]) for n in model.nodes if isinstance(n, ActivateNode)]
        pools = [pool_needs(n, info[n.input]) for n in model.nodes if isinstance(n, PoolNode)]
        values = [signed_bits(info[name].bound) for n in model.nodes if isinstance(n, AddNode)
                  for name in (*n.inputs, n.output)]
        values += [signed_bits(info[n.input].bound) for n in model.nodes if isinstance(n, SubsampleNode)]
        values += [need["value_bits"] for need in acts + pools]
        if max(values, default=0) > value_bits:
            raise ValueError(f"value_bits={value_bits} cannot hold the model's values: its activate, add and pool "
                             f"nodes need {max(values)} bits; give the value memory {max(values)}-bit words")
        codes = [need["code_bits"] for need in acts + pools]
        if max(codes, default=0) > lane_bits:
            coders = [n for n in model.nodes if isinstance(n, (ActivateNode, PoolNode))]
            widest = max(coders, key=lambda n: n.stage.bits)
            raise ValueError(f"lane_bits={lane_bits} cannot hold the {max(codes)}-bit codes of {widest.op} node "
                             f"{widest.name!r} (the model's widest activate or pool codes): pass lane_bits="
                             f"{max(codes)} or more, the width of a code in the code memory")

        def shape(needs: list[dict]) -> dict[str, int]:
            """Code bits, threshold bits (never-passed padding included) and slots of some nodes."""
            if not needs:
                return {"code_bits": 0, "threshold_bits": 0, "slots": 0}
            code = max(n["code_bits"] for n in needs)
            width = max(max(2, n["threshold_bits"], n["pad_bits"] if n["code_bits"] < code else 0) for n in needs)
            return {"code_bits": code, "threshold_bits": width, "slots": sum(n["slots"] for n in needs)}

        act, pool = shape(acts), shape(pools)
        staged = [(n.stage, info[n.input].bound) for n in model.nodes if isinstance(n, ActivateNode)]
        act_progression = progression_shape(staged)[0] if staged else None
        if act_progression is not None:     # the listed nodes' thresholds (and their padding) only
            act["threshold_bits"] = shape([n for n in acts if n["code_bits"] <= act_progression.table_code_bits]
                                          )["threshold_bits"] or 2
        form = {"pool_form": "table", "pool_threshold_bits": pool["threshold_bits"]}
        nodes = [(n, info[n.input]) for n in model.nodes if isinstance(n, PoolNode)]
        shifts = [pool_shift(n, i, pool["code_bits"]) for n, i in nodes]
        if nodes and None not in shifts:
            k = max(shifts)
            widths = [progression_bits(pool_progressions(n, i, pool["code_bits"], k)) for n, i in nodes]
            form = {"pool_form": "arithmetic", "pool_threshold_bits": 0, "pool_shift": k,
                    "pool_base_bits": max(w[0] for w in widths), "pool_step_bits": max(w[1] for w in widths)}
        return cls(lanes=lanes, lane_bits=lane_bits, value_bits=value_bits, value_depth=value_depth,
                   code_depth=code_depth, act_code_bits=act["code_bits"], act_threshold_bits=act["threshold_bits"],
                   act_slots=act["slots"], pool_slots=pool["slots"], pool_code_bits=pool["code_bits"], **form,
                   pool_offset_bits=max((n["offset_bits"] for n in pools), default=0),
                   pool_sum_bits=max((max(2, n["sum_bits"]) for n in pools), default=0),
                   max_frac_bits=max((n["frac_bits"] for n in pools), default=0),
                   maxpool_bits=max((maxpool_bits(n, info[n.input].shape) for n in model.nodes
                                     if isinstance(n, MaxPoolNode)), default=0),
                   avgpool_bits=max((maxpool_bits(n, info[n.input].shape) for n in model.nodes
                                     if isinstance(n, AvgPoolNode)), default=0), adds=adds,
                   pool_cap_bits=max((max(n["cap_bits"], n["term_bits"]) for n in pools), default=0)
                   if any(n["cap_bits"] for n in pools) else 0,
                   minpool=any(isinstance(n, MaxPoolNode) and n.minimum for n in model.nodes),
                   act_progression=act_progression,
                   subsample_bits=max((subsample_bits(n, info[n.input].shape) for n in model.nodes
                                       if isinstance(n, SubsampleNode)), default=0),
                   narrow_adds=any(isinstance(n, AddNode) and n.narrow(info) for n in model.nodes)
                   if narrow_adds is None else narrow_adds,
                   pool_outside_bits=max((n["outside_bits"] for n in pools), default=0))
