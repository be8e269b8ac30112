"""Parameters of the layer engine, checked, and sized from a compiled model.

:class:`EngineParams` fixes everything the generated hardware cannot change at run
time: the array (``rows`` x ``cols``), the widths of codes, levels, accumulators and
outputs, which output stages exist, and the depth of every on-chip buffer. What
changes per layer (geometry, bit-widths up to these maxima, buffer base addresses)
goes into the engine's configuration registers (:data:`REGISTERS`), written by the
host (:mod:`hw.program`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from math import ceil

import numpy as np

from compiler.graph import AddNode, CompiledModel, ConvNode, Requantize, Thresholds, act_scale, weight_scale

from .memories import memory_bits
from .pe_words import A_MAX, LEVEL_BITS, PRODUCT_BITS, W_MAX, product_width
from .progression import ProgressionShape, progression_shape, shape_from_dict
from .residency import check_residency
from .stage_words import (bias_bits, max_shift, multiplier_bits, out_bits, requantize_word_bits, threshold_bits,
                          threshold_unit_word_bits)

# The largest PE array side (rows or columns).
MAX_ARRAY = 256
LUT_WBITS = 4                # the widest weights of a LUT layer: the PEs' LUT indices (sign and k) take 2..4 bits

# iCE40 UltraPlus SB_SPRAM256KA: 16K words of 16 bits; the weights buffer of an UP5K engine.
SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16
SPRAM_BLOCKS = 4             # SB_SPRAM256KA blocks of an iCE40 UltraPlus part


def spram_blocks(width: int, depth: int = SPRAM_DEPTH) -> int:
    """``SB_SPRAM256KA`` blocks of a ``width``-bit, ``depth``-word buffer (:class:`hw.spram.SpramBuffer`): side
    by side for the width, one such row per 16K words of depth."""
    return -(-width // SPRAM_WIDTH) * -(-depth // SPRAM_DEPTH)


# Load targets (a load beat's ``target``), their count and width, and configuration registers
# (``addr`` of a CONFIG beat).
TARGETS = 6
TARGET_BITS = (TARGETS - 1).bit_length()
CONFIG, WEIGHTS, TABLE, THRESHOLDS, REQUANTIZE, ACTS = range(TARGETS)
# The weights of multiplying layers where an engine keeps them apart (``wide_depth`` > 0: network
# mode only, so this target is not one of the link's TARGETS).
WIDE_WEIGHTS = TARGETS
REGISTERS = ("stage", "in_h", "in_w", "out_h", "out_w", "kernel", "stride", "padding", "groups",
             "co_tiles", "positions", "plane", "row_step", "top_offset",
             "weight_base", "table_base", "stage_base")
# Registers of an engine generated for the whole network on the chip (``LayerEngine(network=True)``),
# after :data:`REGISTERS`: where the input codes start in the activation buffer, where the outputs
# go (``dst_values``: 1 = values into the value memory, 0 = codes into the activation buffer) and
# how many output channels are real (the last channel tile's padding columns are not written),
# whether the layer's weights are in the wide weights buffer (``wide_depth`` > 0), whether each
# output value is added to the value already at its address (``dst_add``: a fused residual addition),
# and the layer's bands (``band_rows`` output rows each, ``band_positions`` = band_rows * out_w
# positions; ``band_in_rows`` = band_rows * stride, ``band_step`` = band_rows * row_step: how far the
# input moves from one band to the next): the engine computes a channel tile band by band, so
# that each band's write-back overlaps the next band's computation. ``act_fuse`` (with
# ``dst_values``): each value written is also activated by the thresholds of slot ``act_slot`` +
# its channel (lent by the vector unit), its code written into the codes tensor at ``act_dst``.
# ``tile_step``: activation words the reduction moves from one channel tile to the next (a grouped or
# depthwise conv reads only its tile's row groups, :func:`group_span`). ``identity_levels`` (engines with
# ``identity_tables``): the layer has no product table, its codes go to the PEs as their levels.
# ``acc_units``: the bands the accumulator memory holds at once (``out_depth // band_positions``): a band of
# a channel tile begins only while fewer than that are begun and not yet written back (a ring).
# ``tile_cols``: the layer's channel tile, its columns written back (:meth:`EngineParams.layer_cols`: fewer than
# ``cols`` for a multiplying layer on an engine whose PEs multiply in ``multiply_cols`` columns only).
NETWORK_REGISTERS = REGISTERS + ("act_base", "dst_base", "dst_values", "c_out", "wide_weights", "dst_add",
                                 "band_rows", "band_positions", "band_in_rows", "band_step", "act_fuse", "act_dst",
                                 "act_slot", "tile_step", "identity_levels", "acc_units", "tile_cols")
# After those, in engines with ``lane_starts``: ``dst_lane``, the lane of the first output channel's code in its
# word (:func:`network_registers`).
LANE_REGISTERS = ("dst_lane",)
# After those, in engines with ``windowed_adds``: a fused addition adds to the outputs of channels ``add_first`` ..
# ``add_end - 1`` only (an option-A shortcut's operand b covers those), reading the value ``add_shift`` words from
# each output's address (b at a base of its own: ``add_shift = base(b) - base(sum) - add_first * positions``; 0 where
# b is of the sum's shape, in its place).
WINDOW_REGISTERS = ("add_first", "add_end", "add_shift")
# The registers of a layer's geometry (its sides, kernel, stride, padding, and its bands' rows): signed
# ``dim_bits`` wide (:attr:`EngineParams.dim_bits`), as are the engine's counters of rows, columns and
# kernel taps; every other register is ``reg_bits`` wide.
GEOMETRY_REGISTERS = ("in_h", "in_w", "out_h", "out_w", "kernel", "stride", "padding", "band_rows", "band_in_rows")
# The registers of counts that the buffers bound (:meth:`EngineParams.register_bits`).
COUNT_REGISTERS = ("positions", "band_positions", "acc_units", "co_tiles", "c_out", "groups", "tile_cols", "add_first",
                   "add_end")
# Values of the ``stage`` register: what the output stage does. STAGE_REQUANTIZE_RELU (engines whose
# ``requantize.relu`` is set): requantize, then ``max(0, y)``; in network mode after the fused addition,
# if any (a post-activation block's ReLU). STAGE_NONE (the accumulators as they are) only in engines
# without requantize units; the others requantize them by 1 (``hw.program``'s identity constants).
STAGE_NONE, STAGE_THRESHOLDS, STAGE_REQUANTIZE, STAGE_REQUANTIZE_RELU = range(4)


@dataclass(frozen=True)
class RequantizeShape:
    """Widths of the requantize units: ``M`` unsigned, ``B`` signed, shifts ``0..max_shift``, output signed;
    ``relu``: the stage also runs STAGE_REQUANTIZE_RELU."""

    multiplier_bits: int
    bias_bits: int
    max_shift: int
    out_bits: int
    relu: bool = False


@dataclass(frozen=True)
class EngineParams:
    """What a :class:`hw.engine.LayerEngine` is generated with.

    - ``rows`` x ``cols``: the PE array; rows take the reduction (input channels of one
      kernel tap), columns the output channels.
    - ``wbits`` (2..4): largest weight bit-width of a LUT layer; ``abits`` (1..8): largest
      activation code width; ``multiply``: PEs can also multiply levels (8-bit edge
      layers, ``mac == "multiply"``).
    - ``acc_bits``: signed accumulator width; ``code_bits``: largest threshold-stage code
      width (0: no threshold units); ``requantize``: the requantize units' widths (None: none).
    - ``progression``: None, or the threshold units' progression words (:mod:`hw.progression`): the stages
      wider than its ``table_code_bits`` (:attr:`table_code_bits`) are searched, not listed
      (:func:`searched_stage`); the units list thresholds of ``table_code_bits`` bits.
    - Buffer depths, in words: ``act_depth`` (``rows`` codes each), ``weight_depth``
      (``cols`` weight words each), ``table_depth`` (product-table entries of each row),
      ``stage_depth`` (output-stage constant slots of each column), ``pos_depth`` (output
      positions of one layer), ``out_depth`` (``cols`` outputs each; in network mode a ring of a power of
      two words where a layer has more, :func:`hw.bands.ring_depth`).
    - ``threshold_width``: signed width of a stored threshold (0: ``acc_bits + 1``).
    - ``wide_depth``: 0, or the depth of a second weights buffer that holds the multiplying
      layers' weights (``weight_bits`` per column) so that the first holds only the LUT layers'
      at ``wbits`` per column (:attr:`stored_weight_bits`).
    - ``product_bits``: width of a LUT product ``W[k] * A[j]`` in the product tables and PEs, from
      the LUT layers' outer widths b'_w / b'_a (:func:`hw.pe_words.product_width`; 15 at 8/8).
    - ``skip_groups`` (network engines): each channel tile runs only the row groups :func:`group_span`
      gives it (a grouped or depthwise conv skips the other groups' all-zero reduction tiles), and its
      weights hold only those.
    - ``write_pairs`` (network engines): the write-back takes two positions at once (``2q``, ``2q + 1``)
      where a layer's bands have an even number of positions: two output stages, and code and value
      memories of two-position words (:attr:`halves`).
    - ``fused_adds``, ``fused_activations`` (network engines): the write-back's hardware for residual
      additions and activations fused into a conv (registers ``dst_add``, ``act_fuse``); false where no step
      of the model's program fuses one. ``lent_search`` (0..8): cycles the vector unit's threshold search adds
      to a fused activation's code (:attr:`hw.vector_params.VectorParams.act_search_cycles`).
    - ``lane_starts`` (network engines): a conv's codes may start at any lane of their first word (register
      ``dst_lane``, :data:`LANE_REGISTERS`): a concatenation's part inside a word
      (:func:`compiler.network.lane_startable`); false where no part of the model's plan does.
    - ``windowed_adds`` (network engines with ``fused_adds``): a fused addition's operand b may cover some of the
      sum's channels, at a base of its own (registers :data:`WINDOW_REGISTERS`: an option-A shortcut); false where
      every fused addition of the model's plan adds a tensor of the sum's shape.
    - ``max_side``: the largest side (input or output height or width), kernel, stride or padding of any
      layer (:func:`layer_side`): the geometry registers and counters are sized by it (:attr:`dim_bits`);
      0: as wide as the address registers (``reg_bits``).
    - ``identity_tables`` (network engines): a multiplying layer whose activation levels are its codes
      (:func:`identity_levels`: the 8-bit edge layers) has no product table; the row decoders pass its
      codes to the PEs as levels (register ``identity_levels``).
    - ``multiply_cols`` (network engines that multiply): 0, every PE multiplies; else only the PEs of the
      first ``multiply_cols`` columns do, the others only select ``P[k]``, and a multiplying layer runs in
      channel tiles of that many columns (:meth:`layer_cols`), the other columns' weights 0. A PE that
      multiplies in logic cells is three of one that selects (141 LUT4s against 49 on the ECP5,
      ``benchmarks/core_cells.py``), and the 8-bit edge layers are a small share of a network's work.
    """

    rows: int
    cols: int
    wbits: int
    abits: int
    multiply: bool
    acc_bits: int
    code_bits: int
    requantize: RequantizeShape | None
    act_depth: int
    weight_depth: int
    table_depth: int
    stage_depth: int
    pos_depth: int
    out_depth: int
    threshold_width: int = 0
    wide_depth: int = 0
    product_bits: int = PRODUCT_BITS
    skip_groups: bool = False
    write_pairs: bool = False
    identity_tables: bool = False
    max_side: int = 0
    fused_adds: bool = True
    fused_activations: bool = True
    lane_starts: bool = False
    windowed_adds: bool = False
    multiply_cols: int = 0
    progression: ProgressionShape | None = None
    lent_search: int = 0

    def __post_init__(self):
        limits = {"rows": (1, MAX_ARRAY), "cols": (1, MAX_ARRAY), "wbits": (2, LUT_WBITS), "abits": (1, 8),
                  "acc_bits": (2, 48), "code_bits": (0, 8), "product_bits": (1, PRODUCT_BITS),
                  "act_depth": (1, 1 << 24), "weight_depth": (1, 1 << 24),
                  "table_depth": (1, 1 << 24), "stage_depth": (1, 1 << 24), "pos_depth": (1, 1 << 24),
                  "out_depth": (1, 1 << 24)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        if not isinstance(self.max_side, int) or isinstance(self.max_side, bool) or not 0 <= self.max_side <= 1 << 24:
            raise ValueError(f"max_side must be an integer in 0..{1 << 24}, got {self.max_side!r}")
        if not isinstance(self.threshold_width, int) or isinstance(self.threshold_width, bool) or \
                self.threshold_width not in (0, *range(2, self.acc_bits + 2)):
            raise ValueError(f"threshold_width must be 0 (acc_bits + 1) or 2..{self.acc_bits + 1}, "
                             f"got {self.threshold_width!r}")
        if not isinstance(self.wide_depth, int) or isinstance(self.wide_depth, bool) or \
                not 0 <= self.wide_depth <= 1 << 24 or (self.wide_depth and not self.multiply):
            raise ValueError(f"wide_depth must be 0, or an integer in 1..{1 << 24} for an engine that multiplies, "
                             f"got {self.wide_depth!r}")
        for name in ("skip_groups", "write_pairs", "identity_tables", "fused_adds", "fused_activations",
                     "lane_starts", "windowed_adds"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.windowed_adds and not self.fused_adds:
            raise ValueError("windowed_adds is for an engine with fused_adds")
        if not isinstance(self.lent_search, int) or isinstance(self.lent_search, bool) or \
                not 0 <= self.lent_search <= (8 if self.fused_activations else 0):
            raise ValueError(f"lent_search must be an integer in 0..8, and 0 without fused activations, got "
                             f"{self.lent_search!r}")
        check_multiply_cols(self.multiply_cols, self.cols, self.multiply)
        if self.identity_tables and not self.multiply:
            raise ValueError("identity_tables is for an engine that multiplies (multiply: true)")
        if self.progression is not None and (not isinstance(self.progression, ProgressionShape) or
                                             not self.progression.table_code_bits < self.code_bits):
            raise ValueError(f"progression must be None or a ProgressionShape whose table_code_bits are below "
                             f"code_bits={self.code_bits}, got {self.progression!r}")
        if self.code_bits and self.code_bits > self.abits:
            raise ValueError(f"code_bits={self.code_bits} exceeds abits={self.abits}: threshold stages make "
                             f"next-layer codes, raise abits")

    # Derived widths.

    @property
    def table_code_bits(self) -> int:
        """Code width of the thresholds the units list: ``code_bits``, or ``progression.table_code_bits``."""
        return self.progression.table_code_bits if self.progression else self.code_bits

    @property
    def halves(self) -> int:
        """Positions per word of the network core's code and value memories: 2 with ``write_pairs``, else 1."""
        return 2 if self.write_pairs else 1

    def layer_cols(self, node: ConvNode) -> int:
        """Columns of layer ``node``'s channel tiles on this engine (:func:`channel_tile`)."""
        return channel_tile(node, self.cols, self.multiply_cols)

    @property
    def s_w(self) -> int:
        """Largest LUT weight magnitude ``2^(wbits-1) - 1``."""
        return 2 ** (self.wbits - 1) - 1

    @property
    def weight_bits(self) -> int:
        """A PE's weight word: sign + ``k`` (or + the 7-bit level ``W[k]`` where PEs multiply)."""
        return LEVEL_BITS if self.multiply else self.wbits

    @property
    def stored_weight_bits(self) -> int:
        """Bits per column of a word in the weights buffer: ``wbits`` where the multiplying layers'
        weights are kept apart (``wide_depth``), else :attr:`weight_bits`."""
        return self.wbits if self.wide_depth else self.weight_bits

    @property
    def table_bits(self) -> int:
        """A product-table entry: ``s_w`` products of ``product_bits``, or, where PEs multiply,
        ``max(that, 8)`` bits plus a top flag bit that selects multiplication."""
        products = self.s_w * self.product_bits
        return max(products, LEVEL_BITS) + 1 if self.multiply else products

    @property
    def threshold_bits(self) -> int:
        """Signed width of a stored threshold: ``threshold_width``, or ``acc_bits + 1`` (which
        holds any threshold, and the never-passed ones that pad narrower codes) when 0."""
        return self.threshold_width or self.acc_bits + 1

    @property
    def out_bits(self) -> int:
        """Signed width of one output: a code, a requantized value or a raw accumulator."""
        widths = [self.acc_bits, self.code_bits + 1]
        if self.requantize:
            widths.append(self.requantize.out_bits)
        return max(widths)

    @property
    def reg_bits(self) -> int:
        """Signed width of the configuration registers and address arithmetic."""
        largest = max(self.act_depth, self.weight_depth, self.wide_depth, self.table_depth, self.stage_depth,
                      self.out_depth)
        return largest.bit_length() + 2

    @property
    def dim_bits(self) -> int:
        """Signed width of the geometry registers (:data:`GEOMETRY_REGISTERS`) and of the counters of rows,
        columns and kernel taps: they hold ``-max_side .. 4 * max_side`` (an input row or column index runs
        from ``-padding`` to past the last row by a stride); ``reg_bits`` where ``max_side`` is 0."""
        return (4 * self.max_side).bit_length() + 1 if self.max_side else self.reg_bits

    def register_bits(self, name: str, reg_bits: int | None = None) -> int:
        """Signed width of configuration register ``name``: :attr:`dim_bits` for the geometry registers, as
        many bits as the largest value for the counts the buffers bound (``positions`` by ``pos_depth``;
        ``band_positions`` and ``acc_units`` by ``out_depth``; ``co_tiles`` by ``stage_depth`` and ``c_out``,
        ``add_first`` and ``add_end`` by its channels; ``groups`` by ``act_depth``, each group at least a word;
        ``tile_cols`` by ``cols``), and ``reg_bits`` (default :attr:`reg_bits`; a network engine's also covers its
        value memory) for the rest, the addresses. The engine's counters of those counts are as wide; a program
        value that does not fit is refused (:func:`hw.program.check_registers`)."""
        reg_bits = self.reg_bits if reg_bits is None else reg_bits
        if name in GEOMETRY_REGISTERS:
            return self.dim_bits
        channels = self.stage_depth << self.col_bits
        bounds = dict(zip(COUNT_REGISTERS, (self.pos_depth, self.out_depth, self.out_depth, self.stage_depth,
                                            channels, self.act_depth, self.cols, channels, channels)))
        bound = bounds.get(name)
        return reg_bits if bound is None else min(reg_bits, bound.bit_length() + 1)

    @property
    def col_bits(self) -> int:
        """Bits of the column field in a THRESHOLDS / REQUANTIZE ``load_addr``."""
        return max(1, (self.cols - 1).bit_length())

    @property
    def weight_spram_blocks(self) -> int:
        """SPRAM blocks the weights buffer takes there (:func:`spram_blocks`)."""
        return spram_blocks(self.cols * self.stored_weight_bits, self.weight_depth)

    @property
    def weights_fit_spram(self) -> bool:
        """Whether the weights buffer fits an iCE40 UltraPlus's SPRAM (:attr:`weight_spram_blocks` at most
        :data:`SPRAM_BLOCKS`): where builds for the part put it."""
        return self.weight_spram_blocks <= SPRAM_BLOCKS

    @property
    def shared_stage_memory(self) -> bool:
        """Whether the threshold and requantize units read their words from one memory (both units, and
        thresholds of one word a channel: ``2^table_code_bits - 1 <= 15``): the stage slots of a layer hold one
        kind, so the two memories' depths would add up to the one's, and a block RAM is wider than deep."""
        return bool(self.code_bits and self.requantize and 2 ** self.table_code_bits - 1 <= 15)

    @property
    def stage_word_bits(self) -> tuple[int, int]:
        """Bits of a THRESHOLDS word and of a REQUANTIZE word (0 for a unit this engine lacks)."""
        r = self.requantize
        return (threshold_unit_word_bits(self.code_bits, self.threshold_bits, self.progression) if self.code_bits
                else 0,
                requantize_word_bits(r.multiplier_bits, r.bias_bits, r.max_shift) if r else 0)

    @property
    def stage_pieces(self) -> int:
        """Pieces a THRESHOLDS or REQUANTIZE word is loaded in (one load beat each, ``addr << stage_piece_index_bits
        | piece``, lowest bits first), so that a load beat is no wider than the engine's other targets need: the
        threshold words (134 bits at 3-bit codes) would otherwise widen every register the beats pass, link
        bridge included. With the shared stage memory only (its write port takes a piece); else 1."""
        if not self.shared_stage_memory:
            return 1
        others = max(self.reg_bits, self.cols * self.stored_weight_bits, self.table_bits, self.rows * self.abits)
        return -(-max(self.stage_word_bits) // others)

    @property
    def stage_piece_bits(self) -> int:
        """Bits of a piece of a stage word (the shared memory is ``stage_pieces`` of them wide)."""
        return -(-max(self.stage_word_bits) // self.stage_pieces)

    @property
    def stage_piece_index_bits(self) -> int:
        """Bits of the piece index below the channel in a THRESHOLDS / REQUANTIZE ``load_addr``."""
        return (self.stage_pieces - 1).bit_length()

    @property
    def addr_bits(self) -> int:
        """Address width of a load beat: the deepest target's (registers, buffers, tables, stage words in
        pieces)."""
        depths = [len(network_registers(self)), self.act_depth, self.weight_depth, self.wide_depth, self.table_depth,
                  self.stage_depth << self.col_bits << self.stage_piece_index_bits]
        return max(d - 1 for d in depths).bit_length()

    @property
    def target_bits(self) -> tuple[int, ...]:
        """Data bits of a load beat to each target, in target order (CONFIG .. ACTS); 0 for a
        target this engine lacks (no thresholds or no requantize unit); a piece for the stage words
        where they are loaded in pieces (:attr:`stage_pieces`)."""
        stage = self.stage_word_bits
        if self.stage_pieces > 1:
            stage = (self.stage_piece_bits,) * 2
        return (self.reg_bits, self.cols * self.stored_weight_bits, self.table_bits, *stage, self.rows * self.abits)

    @property
    def data_bits(self) -> int:
        """Data width of a load beat: the widest target's (:attr:`target_bits`)."""
        return max(self.target_bits)

    def memories(self) -> list[tuple[str, int, int, int]]:
        """The engine's RAMs as ``(name, width, depth, copies)``: what a fit estimate maps to
        block RAM. ``activations``, ``weights`` and ``tables`` are single-port."""
        stage_depth = self.stage_depth << self.col_bits
        bits = self.target_bits
        mems = [("activations", bits[ACTS] * self.halves, -(-self.act_depth // self.halves), 1),
                ("weights", bits[WEIGHTS], self.weight_depth, 1),
                *([("wide weights", self.cols * self.weight_bits, self.wide_depth, 1)] if self.wide_depth else []),
                ("tables", bits[TABLE], self.table_depth, self.rows),
                ("accumulators", self.acc_bits, self.out_depth, self.cols)]
        thresholds, requantize = self.stage_word_bits
        if self.shared_stage_memory:
            mems.append(("stage constants", self.stage_pieces * self.stage_piece_bits, stage_depth, self.halves))
        elif self.code_bits:
            # Listed thresholds of one word a channel in one memory, else one memory per threshold's bits and the
            # rest (hw.thresholds).
            tb = self.threshold_bits
            if 2 ** self.table_code_bits - 1 <= 15:
                mems.append(("thresholds", thresholds, stage_depth, self.halves))
            else:
                mems.append(("thresholds", tb, stage_depth, thresholds // tb * self.halves))
                if thresholds % tb:
                    mems.append(("descending", thresholds % tb, stage_depth, self.halves))
        if self.requantize and not self.shared_stage_memory:
            mems.append(("requantize", requantize, stage_depth, self.halves))
        return mems

    def memory_bits(self) -> dict[str, int]:
        """Bits of each on-chip buffer (all copies together)."""
        return memory_bits(self.memories())

    def describe(self) -> dict:
        """Every parameter as JSON-ready values; :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["requantize"] = None if self.requantize is None else vars(self.requantize).copy()
        d["progression"] = None if self.progression is None else vars(self.progression).copy()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EngineParams:
        """The parameters that :meth:`describe` wrote as ``d`` (each value checked as on construction);
        a ``d`` without ``product_bits`` (written before products were sized) means 15, a requantize
        shape without ``relu`` (written before the stage had one) and one without ``skip_groups``,
        ``write_pairs`` or ``identity_tables`` mean False, without ``max_side`` 0, without ``fused_adds`` or
        ``fused_activations`` True, without ``multiply_cols`` 0, without ``progression`` None, without
        ``lane_starts`` or ``windowed_adds`` False, without ``lent_search`` 0: what those engines were built
        with."""
        names = {f.name for f in fields(cls)}
        if isinstance(d, dict) and "product_bits" not in d:
            d = {**d, "product_bits": PRODUCT_BITS}
        for flag in ("skip_groups", "write_pairs", "identity_tables", "lane_starts", "windowed_adds"):
            if isinstance(d, dict) and flag not in d:
                d = {**d, flag: False}
        if isinstance(d, dict) and "max_side" not in d:
            d = {**d, "max_side": 0}
        for flag in ("fused_adds", "fused_activations"):
            if isinstance(d, dict) and flag not in d:
                d = {**d, flag: True}
        for name in ("multiply_cols", "lent_search"):
            if isinstance(d, dict) and name not in d:
                d = {**d, name: 0}
        if isinstance(d, dict) and "progression" not in d:
            d = {**d, "progression": None}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"engine parameters must be a dict with the keys {sorted(names)}, not {d!r}")
        shape = d["requantize"]
        if isinstance(shape, dict) and "relu" not in shape:
            shape = {**shape, "relu": False}
        if shape is not None:
            if not isinstance(shape, dict) or set(shape) != {f.name for f in fields(RequantizeShape)}:
                raise ValueError(f"requantize must be null or a dict with the keys "
                                 f"{sorted(f.name for f in fields(RequantizeShape))}, not {shape!r}")
            if not isinstance(shape["relu"], bool):
                raise ValueError(f"requantize.relu must be true or false, not {shape['relu']!r}")
            shape = RequantizeShape(**shape)
        return cls(**{**d, "requantize": shape, "progression": shape_from_dict(d["progression"], "progression")})

    # Sizing.

    @classmethod
    def for_model(cls, model: CompiledModel, rows: int, cols: int, resident: str = "none",
                  split_weights: bool = False, skip_groups: bool = False,
                  identity_tables: bool = False, multiply_cols: int = 0, progressions: bool = True) -> EngineParams:
        """The smallest engine that runs every convolution of ``model`` on a ``rows`` x ``cols`` array.

        ``resident`` (one of :data:`hw.residency.RESIDENCY`): what the buffers hold for every layer at once,
        loaded once before the images: ``"all"`` constants (then an image needs only
        configuration and activations), ``"weights"`` (product tables and stage constants
        still go with each layer), or ``"none"`` (one layer's constants at a time).
        ``split_weights`` (with every layer's weights resident, a model with both multiplying and LUT
        layers): the multiplying layers' weights in a buffer of their own (``wide_depth``), the LUT
        layers' at ``wbits`` per column (the whole-network core's engine). ``skip_groups``,
        ``identity_tables``, ``multiply_cols``: see the class (``multiply_cols`` is 0 for a model without
        multiplying layers). ``progressions``: the units search the stages that
        :func:`~hw.progression.progression_shape` picks (False: they list every threshold).
        """
        for name, value in (("rows", rows), ("cols", cols)):     # (before they divide the layers' sizes)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ARRAY:
                raise ValueError(f"{name} must be an integer in 1..{MAX_ARRAY}, got {value!r}")
        check_residency(resident)
        check_multiply_cols(multiply_cols, cols)
        convs = model.convs
        if not convs:
            raise ValueError("the model has no convolution or linear layer to run")
        for node in convs:
            check_outer_widths(node)
            check_lut_weights(node)
        weights_total = sum if resident != "none" else max
        total = sum if resident == "all" else max
        staged = [n for n in convs if isinstance(n.stage, Thresholds)]
        thresholds = [n.stage for n in staged]
        requant = [n for n in convs if isinstance(n.stage, Requantize)]
        shape = None
        if requant:
            shape = RequantizeShape(
                multiplier_bits=max(multiplier_bits(n.stage) for n in requant),
                bias_bits=max(bias_bits(n.stage) for n in requant),
                max_shift=max(max_shift(n.stage) for n in requant),
                # A layer without a stage goes through the units too (identity constants).
                out_bits=max([out_bits(n.stage, n.acc_bound) for n in requant]
                             + [n.acc_bits for n in convs if n.stage is None]),
                relu=any(n.stage.relu for n in requant) or any(isinstance(n, AddNode) and n.relu for n in model.nodes))
        lut = [n.wbits for n in convs if n.mac == "lut"]
        products = max((product_width(n.outer_wbits, n.outer_abits) for n in convs if n.mac == "lut"),
                       default=PRODUCT_BITS)
        code_bits = max((s.bits for s in thresholds), default=0)
        progression, listed = (progression_shape([(n.stage, n.acc_bound) for n in staged]) if progressions
                               else (None, thresholds))
        # Narrower stored thresholds where no listed stage needs padding to the listed width.
        width = max((threshold_bits(s) for s in listed), default=0)
        if any(s.bits < max(t.bits for t in listed) for s in listed):
            width = 0
        identity_tables = identity_tables and any(identity_levels(n) for n in convs)
        multiplies = any(n.mac == "multiply" for n in convs)
        multiply_cols = multiply_cols if multiplies else 0
        need = [layer_needs(n, rows, channel_tile(n, cols, multiply_cols), skip_groups, identity_tables)
                for n in convs]
        weight_depth, wide_depth = weights_total(x["weight"] for x in need), 0
        if split_weights and resident != "none" and lut and len(lut) < len(convs):
            weight_depth = sum(x["weight"] for x, n in zip(need, convs) if n.mac == "lut")
            wide_depth = sum(x["weight"] for x, n in zip(need, convs) if n.mac == "multiply")
        return cls(
            rows=rows, cols=cols, wbits=max(lut, default=2), abits=max(n.abits for n in convs),
            multiply=multiplies, multiply_cols=multiply_cols, acc_bits=max(n.acc_bits for n in convs),
            code_bits=code_bits, requantize=shape, threshold_width=width, wide_depth=wide_depth,
            product_bits=products, skip_groups=skip_groups, identity_tables=identity_tables, progression=progression,
            max_side=max(layer_side(n) for n in convs),
            act_depth=max(x["act"] for x in need), weight_depth=weight_depth,
            table_depth=max(1, total(x["table"] for x in need)), stage_depth=total(x["stage"] for x in need),
            pos_depth=max(x["positions"] for x in need), out_depth=max(x["out"] for x in need))


def network_registers(params: EngineParams) -> tuple[str, ...]:
    """The configuration registers of a network engine of ``params``, in the order of their ``CONFIG`` addresses:
    :data:`NETWORK_REGISTERS`, then :data:`LANE_REGISTERS` with ``lane_starts``, then :data:`WINDOW_REGISTERS`
    with ``windowed_adds``."""
    return (NETWORK_REGISTERS + (LANE_REGISTERS if params.lane_starts else ())
            + (WINDOW_REGISTERS if params.windowed_adds else ()))


def searched_stage(params: EngineParams, stage: Thresholds) -> bool:
    """Whether the engine of ``params`` searches ``stage``'s codes (progression words) rather than list its
    thresholds: it has progression words and ``stage`` is wider than the listed ones."""
    return params.progression is not None and stage.bits > params.progression.table_code_bits


def check_outer_widths(node: ConvNode) -> None:
    """ValueError naming layer ``node`` and the fix where its outer widths b'_w / b'_a exceed the PEs' 8 bits
    (levels up to :data:`~hw.pe_words.W_MAX` and :data:`~hw.pe_words.A_MAX`), a multiplying layer's as a LUT
    layer's: the PEs take its levels (or their products) as they are."""
    ow, oa = node.outer_wbits, node.outer_abits
    if max(ow, oa) > LEVEL_BITS:
        raise ValueError(f"layer {node.name!r} has outer widths b'_w/b'_a = {ow}/{oa}: the PEs take outer widths of "
                         f"2..{LEVEL_BITS} bits (levels up to {W_MAX} and {A_MAX}); train it with outer widths of "
                         f"{LEVEL_BITS} or narrower (--layer-bits {node.name}={node.wbits}/{node.abits}:"
                         f"{min(ow, LEVEL_BITS)}/{min(oa, LEVEL_BITS)}, or --outer-bits {LEVEL_BITS} for every layer)")


def check_lut_weights(node: ConvNode) -> None:
    """ValueError naming LUT layer ``node`` and the fixes where its weights are wider than the PEs' LUT weight
    indices (2..:data:`LUT_WBITS` bits): a layer of wider weights must multiply."""
    if node.mac == "lut" and node.wbits > LUT_WBITS:
        entries = weight_scale(node.wbits) * act_scale(node.abits)
        raise ValueError(f"layer {node.name!r} selects from a LUT of {entries} products of {node.wbits}-bit weights "
                         f"and {node.abits}-bit activations (the compile option --max-lut-entries let it); the PEs "
                         f"select from LUTs of 2..{LUT_WBITS}-bit weights: compile it as a multiplying layer "
                         f"(lcq compile --max-lut-entries {entries - 1}), or train its weights at {LUT_WBITS} bits or "
                         f"fewer (--layer-bits {node.name}={LUT_WBITS}/{node.abits})")


def check_multiply_cols(multiply_cols, cols: int, multiply: bool = True) -> None:
    """ValueError naming ``multiply_cols`` unless it is 0 (every column) or, for an engine that multiplies
    (``multiply``), 1..``cols``."""
    if not isinstance(multiply_cols, int) or isinstance(multiply_cols, bool) or \
            not 0 <= multiply_cols <= cols or (multiply_cols and not multiply):
        raise ValueError(f"multiply_cols must be 0 (every column), or 1..cols={cols} for an engine that "
                         f"multiplies, got {multiply_cols!r}")


def channel_tile(node: ConvNode, cols: int, multiply_cols: int) -> int:
    """Columns of layer ``node``'s channel tiles on an array of ``cols`` columns whose PEs multiply in the first
    ``multiply_cols`` only (0: in all): ``multiply_cols`` for a multiplying layer where they are fewer, else
    ``cols``."""
    return multiply_cols if multiply_cols and node.mac == "multiply" else cols


def group_span(node: ConvNode, rows: int, cols: int) -> tuple[int, int]:
    """``(step, groups)``: on a ``rows`` x ``cols`` array, channel tile ``t`` of ``node`` needs only the
    ``groups`` row groups (``rows`` input channels each) from ``t * step`` on, the fewest such that every
    nonzero weight of every tile lies among them and no tile reads past the last row group. A depthwise
    conv (dense with zero blocks, :func:`compiler.lower.dense_codes`) on a square array gives (1, 1);
    a dense conv ``(0, ceil(C_in / rows))``."""
    c_out, c_in = node.out_shape[0], node.in_shape[0]
    total, tiles = ceil(c_in / rows), ceil(c_out / cols)
    used = [np.flatnonzero(np.any(node.weight_codes[t * cols:(t + 1) * cols] != 0, axis=(0, 2, 3))) // rows
            for t in range(tiles)]
    spans = [(t, int(u.min()), int(u.max())) for t, u in enumerate(used) if u.size]
    for groups in range(max((hi - lo + 1 for _, lo, hi in spans), default=1), total):
        for step in range(total - groups + 1):
            if (tiles - 1) * step + groups <= total and all(t * step <= lo and hi < t * step + groups
                                                            for t, lo, hi in spans):
                return step, groups
    return 0, total


def layer_side(node: ConvNode) -> int:
    """The largest of layer ``node``'s sides (input and output heights and widths), kernel, stride and padding."""
    return max(*node.in_shape[1:], *node.out_shape[1:], node.kernel, node.stride, node.padding)


def identity_levels(node: ConvNode) -> bool:
    """Whether layer ``node`` multiplies levels that are its codes (``A[j] = j``: the 8-bit edge layers), so
    that an engine with ``identity_tables`` needs no product table for it."""
    a = np.asarray(node.a_levels)
    return node.mac == "multiply" and bool(np.array_equal(a, np.arange(a.size)))


def layer_needs(node: ConvNode, rows: int, cols: int, skip_groups: bool = False,
                identity_tables: bool = False) -> dict[str, int]:
    """Buffer words layer ``node`` takes on a ``rows`` x ``cols`` engine (``skip_groups``: its weights of
    the row groups :func:`group_span` gives each channel tile only; ``identity_tables``: no product table
    where :func:`identity_levels`)."""
    c_in, h, w = node.in_shape
    c_out, ho, wo = node.out_shape
    groups, co_tiles = ceil(c_in / rows), ceil(c_out / cols)
    reduced = group_span(node, rows, cols)[1] if skip_groups else groups
    return {"act": groups * h * w, "weight": co_tiles * node.kernel ** 2 * reduced * rows,
            "table": 0 if identity_tables and identity_levels(node) else 2 ** node.abits, "stage": co_tiles,
            "positions": ho * wo, "out": co_tiles * ho * wo}
