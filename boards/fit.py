"""Fit estimate before synthesis: do an engine's RAMs, multipliers and logic fit the board's part?

- RAM: every memory of :meth:`hw.engine_params.EngineParams.memories` takes, per copy, the blocks Yosys maps it
  to: on the ECP5 (DP16KD: 512 x 36 ... 16384 x 1) those of the shape of least cost, blocks and the multiplexer of a
  memory deeper than a block (:func:`ram_blocks`), on the iCE40 (EBR: 256 x 16, 512 x 8, 1024 x 4, 2048 x 2) the
  same with the chunks of such a memory side by side in its bits (:func:`ice40_blocks`). On the UP5K the
  weight buffer goes to SPRAM (16K x 16 blocks) as the engine builds it there. The link
  bridge's frame buffer takes one more block. On the ECP5 a memory written in pieces (the shared stage
  memory) takes whole 9-bit write-enable lanes a piece (:func:`lane_blocks`), the network core's code buffer
  is a memory per lane, and a memory Yosys builds in logic cells takes none (:func:`in_logic_cells`); the
  network core's weights buffers count bank by bank (:func:`banked_blocks`).
- DSP: on iCE40, one per PE that multiplies levels (``multiply``, in the first ``multiply_cols`` columns; ECP5
  engines multiply in logic cells, :func:`hw.pe_words.logic_multiplies`), and the requantize unit's
  ``acc_bits x multiplier_bits`` product in 16 x 16 (iCE40) or 18 x 18 (ECP5) pieces, and the link bridge's
  frame length where Yosys maps it to one (:func:`bridge_dsps`: on the ECP5 only).
- LUT4: :data:`BASE_LUTS` for control, output stage, link and UART, plus
  :func:`pe_luts` for the PEs, calibrated on the digits CNN's 2 x 2 iCEBreaker build
  (4,512 LUT4s) and, for PEs that multiply in logic, the ResNet-20 8 x 8 ULX3S-85F build
  (34,738), and :func:`search_luts` for output stages that search progressions; within ``logic_share`` of the
  part, leaving room for routing.

The estimate decides the array before synthesis (:func:`engine_for_board`: the largest array
of :data:`ARRAYS` that fits, with every layer's constants resident where they fit, else every
layer's weights, else one layer's at a time); the build report has the true counts. No
Amaranth here: ``lcq run`` sizes the engine of a flashed board with it.

The whole-network core (:class:`hw.network_params.NetworkParams`) is estimated the same way over
all of its memories (the engine's, the vector unit's, the value memory, the program and the input
table) plus :data:`VECTOR_LUTS` of logic (on the iCE40 the logic cells its routed builds count,
:data:`NETWORK_CELLS_ICE40`, within :data:`NETWORK_LOGIC_SHARE_ICE40` of the part: what nextpnr has placed
there); :func:`network_for_board` picks its array: of those that fit, the smallest whose computation keeps up
with the link (:func:`image_pace`, from the cycle model :func:`hw.network_cycles.image_cycles` and the protocol's
bytes), else the fastest. A model whose memories fit no array is refused naming the largest buffers, their sizes
and the part.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from compiler.graph import CompiledModel, ConvNode, MaxPoolNode, Thresholds
from hw.engine_params import LUT_WBITS, SPRAM_BLOCKS, EngineParams, spram_blocks
from hw.memories import BLOCK_RAM_SHAPES, bank_depth, column_spans
from hw.network_params import NetworkParams
from hw.pe_words import logic_multiplies
from hw.progression import PROGRESSION_MIN_BITS, stage_shift
from hw.protocol import OUT_HEAD_BYTES, payload_bytes, whole_bytes
from hw.residency import DESCRIPTION
from hw.vector_params import VectorParams

from .boards import LINK_PAYLOAD, Board

DSP_WIDTH = {"ice40": 16, "ecp5": 18}
# The narrowest product Yosys puts in a DSP (its mul2dsp's DSP_Y_MINWIDTH: synth_ice40 -dsp sets 11, synth_ecp5 none).
DSP_PRODUCT_BITS = {"ice40": 11, "ecp5": 0}
LANE_BITS = 9           # bits of an ECP5 DP16KD's write-enable lane (its 9-, 18- and 36-bit ports)
# Yosys's costs of mapping a memory (memory_libmap; techlibs/lattice brams_16kd.txt, lutrams.txt): a DP16KD,
# and the ECP5's distributed RAM (TRELLIS_DPR16X4: words, bits, cost).
BLOCK_RAM_COST = 128
# Yosys's costs of mapping a memory to iCE40 block RAM (memory_libmap, techlibs/ice40/brams.txt): an SB_RAM40_4K, and
# a bit of the multiplexer (reads) or decoder (writes) choosing among the chunks of a memory deeper than a block.
ICE40_BLOCK_COST = 64
ICE40_MUX_COST = 0.5
# The same for the ECP5 (techlibs/lattice/brams_16kd.txt: DP16KD and PDPW16KD alike).
ECP5_BLOCK_COST = 128
DISTRIBUTED_RAM = (16, 4, 4)
BASE_LUTS = 4150
# A PE's 7 x 8 multiplier in logic cells and its registers (ResNet-20 on the ECP5): 376 as seven shifted copies of
# the level (8 x 8); 34 fewer as four two-bit weight digits, each selecting a multiple (hw.pe: 36,811 LUT4 against
# 41,202 for the 8 x 16 core). Above what one PE that multiplies costs now: benchmarks/core_cells.py counts about
# 150 (141 LUT4s and 43 carry cells against 49 and 14 for a PE that only selects), and the routed 8 x 16 core with 4
# multiplying columns took 22,786 LUT4s where this estimates 26,182; kept until a larger array it would pick is built.
LOGIC_MULTIPLY_LUTS = 342
LINK_BUFFER_BLOCKS = 1
# LUT4s of the whole-network core beyond the engine: the vector unit (1,382 LUT4 and 329 carry cells
# for ResNet-20's in a 16-lane ECP5 synthesis) and the sequencer.
VECTOR_LUTS = 2000
# The whole-network core's logic cells on an iCE40, as routed builds count them (packing included): a base
# and a PE's, from the digits CNN's UP5K builds (1 x 1: 5,128 cells at 048587d and 27e9aab, board_builds.json #181;
# the first calibration, afb53c9, counted 5,213; 1 x 2: 168 more at ccc8cce).
NETWORK_CELLS_ICE40 = (4960, 168)
# What the units a model needs beyond the digits CNN's add to that on an iCE40 (1 x 1 UP5K builds packed at
# d7d7c6d and 689931a, board_builds.json #182 and #184 .. #186, against the digits CNN's 5,128): the vector
# unit's max pooling (the max-pooling VGG 5,441 cells, the SqueezeNet-style net 5,560: the larger); additions and
# activations on values (the vector unit's ADD and ACTIVATE, the write-back's fused additions and activations,
# wider values: the torchvision-style ResNet, 6,023). The average-pooling net packed in 5,098 (its AVGPOOL in
# place of the engine's thresholds): nothing added.
NETWORK_UNIT_CELLS_ICE40 = {"maxpool": 432, "values": 895}
# Of the part's LUT4s, what an estimate may take: 90%, leaving room for routing; the iCE40 whole-network core's
# estimate (routed cells) up to 5,203 of the UP5K's 5,280 (98.5%): nextpnr found no placement for the digits CNN's
# 1 x 1 core packed in 5,204 to 5,283 cells (10 placements: 7 builds, board_builds.json #69 .. #122 at 9785cf2 ..
# 777e5dc, and the first seed of 3 builds a second seed placed, 5,215 .. 5,250), placed each of the 27 packed in
# 5,051 to 5,201 cells, and of the 33 over 5,203 (to 5,257) some with one seed and not with another.
# What an output stage that searches progressions (hw.thresholds, EngineParams.progression) adds to one that lists
# 3-bit thresholds, a code bit (a search stage: a subtraction, its remainder, code and constants registered): the
# threshold unit of LeNet's 1 x 1 core (24-bit accumulators, 8-bit codes) against the digits CNN's in
# benchmarks/core_cells.py (core_cells-lenet-*.json against core_cells.json and core_cells-ulx3s-12f.json): on the
# ECP5 612 more LUT4s (a CCU2C counted as two) and 644 flip-flops, on the iCE40 486 LUT4s, 305 carries and 650
# flip-flops more, about 700 logic cells packed.
SEARCH_LUTS_PER_BIT = 78
SEARCH_CELLS_ICE40_PER_BIT = 88
LOGIC_SHARE = 0.9
NETWORK_LOGIC_SHARE_ICE40 = 0.9855
# The whole-network core's memories built in banks (hw.engine's buffers in network mode, hw.banked).
NETWORK_BANKED = ("weights", "wide weights")


class FitError(ValueError):
    """The design does not fit the part; the message names what (a buffer, DSPs or logic) and the part."""


def ram_blocks(family: str, width: int, depth: int) -> int:
    """Block RAMs of ``family`` holding one ``width`` x ``depth`` memory as Yosys maps it: on the iCE40
    :func:`ice40_blocks`; on the ECP5, as its memory_libmap does with techlibs/lattice/brams_16kd.txt, the shape
    (:data:`hw.memories.BLOCK_RAM_SHAPES`) of the least cost, ``ceil(width / w) * ceil(depth / d)`` blocks of
    :data:`ECP5_BLOCK_COST` each and, where the memory takes several chunks of ``d`` words, :data:`ICE40_MUX_COST` a
    bit of its read multiplexer and write decoder (the same rule): a 33-bit x 7,680-word pool threshold table takes
    16 blocks of 9 bits by 2,048 words (4 chunks), where 15 of 36 bits by 512 would need a 15-way multiplexer
    (board_builds.json: the average-pooling net at 2 x 2 on the ULX3S-85F)."""
    if family == "ice40":
        return ice40_blocks(depth, [width])
    best = None
    for words, bits in sorted(BLOCK_RAM_SHAPES[family], key=lambda shape: shape[1]):
        chunks = ceil(depth / words)
        blocks = ceil(width / bits) * chunks
        decode = decode_cost(chunks, width, 1)
        if best is None or ECP5_BLOCK_COST * blocks + decode < best[0]:
            best = (ECP5_BLOCK_COST * blocks + decode, blocks)
    return best[1]


def decode_cost(chunks: int, width: int, pieces: int) -> float:
    """Yosys memory_libmap's cost of the read multiplexer and write decoder of a ``width``-bit memory of ``pieces``
    write enables cut in ``chunks`` chunks of a block's depth (:data:`ICE40_MUX_COST` a bit; none for one chunk)."""
    return ICE40_MUX_COST * ((chunks - 1) * width + chunks * pieces) if chunks > 1 else 0


def ice40_blocks(depth: int, pieces: list[int]) -> int:
    """SB_RAM40_4Ks that Yosys maps a ``depth``-word memory to whose words are ``pieces`` bits written alone (one
    piece: written whole), as its memory_libmap does with techlibs/ice40/brams.txt: for each shape of
    :data:`hw.memories.BLOCK_RAM_SHAPES` (``u`` bits by ``4096 / u`` words) the memory is cut in chunks of the
    shape's depth laid side by side in the blocks' bits, ``ceil(chunks * bits / u)`` blocks, where ``bits`` is the
    word's where the block is written with per-bit masks (any shape) and, written ``u`` bits at a time (2, 4 and 8
    bits), its pieces' each padded to whole ``u``; the cheapest (:data:`ICE40_BLOCK_COST` a block,
    :data:`ICE40_MUX_COST` a bit of the read multiplexer and write decoder of a memory of several chunks), the first
    of a tie. A 22-bit x 528-word memory: 3 chunks of 256 words, 66 bits, 5 blocks of 16 bits, where one shape
    holding the memory whole takes 6."""
    width, best = sum(pieces), None
    shapes = sorted(BLOCK_RAM_SHAPES["ice40"], key=lambda shape: shape[1])
    for masked in (False, True):
        for words, u in shapes:
            if not masked and u == shapes[-1][1]:
                continue        # (the widest is written with masks only)
            chunks = ceil(depth / words)
            bits = width if masked else sum(ceil(piece / u) * u for piece in pieces)
            blocks = ceil(chunks * bits / u)
            decode = decode_cost(chunks, width, len(pieces))
            if best is None or ICE40_BLOCK_COST * blocks + decode < best[0]:
                best = (ICE40_BLOCK_COST * blocks + decode, blocks)
    return best[1]


def column_ram_blocks(width: int, depth: int, granularity: int) -> int:
    """Block RAMs of an ECP5 ``width`` x ``depth`` memory built as columns (:func:`hw.memories.column_spans`), a
    memory each, less the columns Yosys builds in logic cells (:func:`in_logic_cells`: a few words deep)."""
    return sum(not in_logic_cells("ecp5", bits, depth, 1) for _, bits in column_spans(width, depth, granularity))


def in_logic_cells(family: str, width: int, depth: int, blocks: int) -> bool:
    """Whether Yosys builds a ``width`` x ``depth`` memory with one read port of ``family`` in logic cells rather
    than its ``blocks`` block RAMs: on the ECP5 where its cost of distributed RAM (:data:`DISTRIBUTED_RAM`: 16 x 4
    cells at 4 each, each 16 words of the width padded to whole cells, a multiplexer bit per word beyond the
    first 16 and a write decode at half a bit each) is below :data:`BLOCK_RAM_COST` a block RAM: the digits CNN's
    16-word product tables and 64-pixel image, and a 16 x 16 core's 128-word code lanes; 64-word accumulators
    and the MobileNetV2's 60-word product tables of 46 bits (263 against 256) stay in block RAM. Never on the
    iCE40 (no distributed RAM)."""
    if family != "ecp5":
        return False
    words, bits, cost = DISTRIBUTED_RAM
    rows = ceil(depth / words)
    # (each row of cells holds the word padded to whole cells: memory_libmap's swizzle pads it to the unit width)
    logic = cost * rows * ceil(width / bits) + 0.5 * (rows - 1) * width + (0.5 * rows if rows > 1 else 0)
    return logic < BLOCK_RAM_COST * blocks


def banked_blocks(family: str, width: int, depth: int) -> int:
    """Block RAMs of ``family`` holding a ``width`` x ``depth`` buffer built in banks (:func:`hw.banked.banked_buffer`:
    :func:`hw.memories.bank_depth` words each, the last the rest), each bank mapped alone."""
    words = bank_depth(width)
    return sum(ram_blocks(family, width, min(words, depth - low)) for low in range(0, depth, words))


def lane_blocks(family: str, depth: int, granularity: int, read_bits: int) -> int:
    """Block RAMs of ``family`` holding a ``depth``-deep memory written ``granularity`` bits at a time of which
    ``read_bits`` (from the lowest) are read: Yosys keeps only the read bits, and on the ECP5 puts each piece in
    whole :data:`LANE_BITS`-bit lanes of a DP16KD's 9-, 18- or 36-bit port (one write enable a lane; two pieces
    never share one), in columns of their own on its narrower ones. On the iCE40, :func:`ice40_blocks` of the
    read bits' pieces."""
    pieces = [min(granularity, read_bits - low) for low in range(0, read_bits, granularity)]
    if family != "ecp5":
        return ice40_blocks(depth, pieces)
    lanes = sum(ceil(piece / LANE_BITS) for piece in pieces)
    return min((ceil(lanes * LANE_BITS / w) if w >= LANE_BITS else sum(ceil(piece / w) for piece in pieces))
               * ceil(depth / d) for d, w in BLOCK_RAM_SHAPES[family])


def written_in_pieces(params: EngineParams) -> dict[str, tuple[int, int]]:
    """``{name: (granularity, read_bits)}`` of the engine's memories written in pieces (:func:`lane_blocks`):
    the shared stage memory where a stage word takes more than one (:attr:`~EngineParams.stage_pieces`)."""
    if params.stage_pieces == 1:
        return {}
    return {"stage constants": (params.stage_piece_bits, max(params.stage_word_bits))}


def multiplying_pes(params: EngineParams) -> int:
    """PEs of ``params``'s array that multiply: those of its first ``multiply_cols`` columns (all where 0), none
    where the engine does not multiply."""
    return params.rows * (params.multiply_cols or params.cols) if params.multiply else 0


def board_multiply_cols(board: Board, cols: int) -> int:
    """The columns whose PEs multiply in a core for ``board`` with ``cols`` columns unless the user says: a quarter
    of them (at least one) where PEs multiply in logic cells (:func:`hw.pe_words.logic_multiplies`: the ECP5, where
    such a PE is three of one that only selects, and the 8-bit edge layers then take ResNet-20 6% more cycles on an
    8 x 16 array), else all (0; the iCE40's multipliers are DSPs)."""
    return max(1, cols // 4) if logic_multiplies(board.device) else 0


def pe_luts(params: EngineParams, logic_multiply: bool) -> int:
    """Rough LUT4s of the array's PEs: each a partial-sum adder and the select of one of ``s_w``
    ``product_bits``-bit products, and each that multiplies (:func:`multiplying_pes`) the glue of a 7 x 8
    multiplier in a DSP, or the whole shift-and-add multiplier (``logic_multiply``)."""
    multiplier = LOGIC_MULTIPLY_LUTS if logic_multiply else 16
    return (params.rows * params.cols * (params.acc_bits + params.product_bits * params.s_w)
            + multiplying_pes(params) * multiplier)


def memory_blocks(board: Board, memories, spram=("weights",), columns=None,
                  pieces=None, banked=(), lanes=None) -> list[tuple[str, int, str, int]]:
    """``(name, bits, kind, blocks)`` of each ``(name, width, depth, copies)`` memory on ``board``:
    SPRAM for the memories named in ``spram`` where the part has it and the memory fits its blocks (as the
    engine builds its weights buffer, :attr:`~hw.engine_params.EngineParams.weights_fit_spram`, and the network
    core its value memory), block RAM ("EBR") otherwise; on the ECP5, those named in ``columns`` (name: the
    granularity of its writes) as the network core builds its value memory there (:mod:`hw.column_memory`); those
    named in ``pieces`` (:func:`written_in_pieces`) by :func:`lane_blocks`, those named in ``banked`` (the network
    core's weights buffers, :data:`NETWORK_BANKED`) by :func:`banked_blocks`, those named in ``lanes`` (name:
    ``(lanes, lane_bits)``, :func:`network_lanes`) as that many memories of a lane's share of the word, each
    written ``lane_bits`` at a time (:func:`lane_blocks`). A memory (a lane's, in ``lanes``) that Yosys builds in
    logic cells (:func:`in_logic_cells`) takes none."""
    out = []
    for name, width, depth, copies in memories:
        if name in spram and "SPRAM" in board.resources and spram_blocks(width, depth) <= SPRAM_BLOCKS:
            out.append((name, width * depth * copies, "SPRAM", spram_blocks(width, depth)))
        elif name in (pieces or {}):
            out.append((name, width * depth * copies, "EBR", copies * lane_blocks(board.family, depth, *pieces[name])))
        elif name in (lanes or {}):
            parts, bits = lanes[name]
            blocks = lane_blocks(board.family, depth, bits, width // parts)
            if in_logic_cells(board.family, width // parts, depth, blocks):
                blocks = 0
            out.append((name, width * depth * copies, "EBR", copies * parts * blocks))
        elif name in banked:
            out.append((name, width * depth * copies, "EBR", copies * banked_blocks(board.family, width, depth)))
        elif board.family == "ecp5" and name in (columns or {}):
            out.append((name, width * depth * copies, "EBR", copies * column_ram_blocks(width, depth, columns[name])))
        else:
            blocks = ram_blocks(board.family, width, depth)
            if in_logic_cells(board.family, width, depth, blocks):
                blocks = 0
            out.append((name, width * depth * copies, "EBR", copies * blocks))
    return out


def bridge_dsps(board: Board, out_bits: int, code_out_bits: int = 0) -> int:
    """DSPs of the link bridge on ``board`` for OUT words of ``out_bits`` (``code_out_bits`` in the CODES format):
    an OUT frame's length is its count of words (``k`` at most, a ``k.bit_length()``-bit operand) times a word's
    bytes (:class:`hw.link.LinkBridge`), which Yosys maps to a DSP where those bytes are not a power of two
    (ResNet-20's 35-bit logits: 5 bytes), both operands are 2 bits or more and the product is at least
    :data:`DSP_PRODUCT_BITS` wide, one per distinct size: a MULT18X18D on the ECP5 (2,048-byte frames, 408 words of
    5 bytes), none on the iCE40 (512-byte frames: 101 words, a 9-bit product, in logic cells)."""
    sizes = {whole_bytes(bits) for bits in (out_bits, code_out_bits) if bits}
    words = {size: (LINK_PAYLOAD[board.family] - OUT_HEAD_BYTES) // size for size in sizes}
    return sum(1 for size, k in words.items()
               if size & (size - 1) and k > 1 and (k * size).bit_length() >= DSP_PRODUCT_BITS[board.family])


def estimate(board: Board, params: EngineParams, bridge_out: tuple[int, int] | None = None) -> dict[str, int]:
    """{resource: estimated use} of the accelerator (engine, link, UART) for ``params`` on ``board``; ``bridge_out``:
    the bridge's OUT word and CODES word bits (:func:`bridge_dsps`; default the layer engine's, ``cols`` fields)."""
    family = board.family
    use = {"EBR": LINK_BUFFER_BLOCKS, "SPRAM": 0}
    for _, _, kind, blocks in memory_blocks(board, params.memories(), pieces=written_in_pieces(params)):
        use[kind] += blocks
    piece = DSP_WIDTH[family]
    logic_multiply = logic_multiplies(board.device)
    use["DSP"] = 0 if logic_multiply else multiplying_pes(params)
    if params.requantize:
        use["DSP"] += ceil(params.acc_bits / piece) * ceil(params.requantize.multiplier_bits / piece)
    use["DSP"] += bridge_dsps(board, *(bridge_out or (params.cols * params.out_bits, params.cols * params.code_bits)))
    use["LUT4"] = BASE_LUTS + pe_luts(params, logic_multiply) + search_luts(params, SEARCH_LUTS_PER_BIT)
    return use


def search_luts(params: EngineParams, per_bit: int) -> int:
    """Logic of the output stages' progression searches (:attr:`~hw.engine_params.EngineParams.progression`):
    ``per_bit`` a code bit, in each output stage (two with ``write_pairs``); 0 without."""
    return per_bit * params.code_bits * params.halves if params.progression else 0


def vector_search_luts(params: VectorParams, per_bit: int) -> int:
    """Logic of the vector unit's activate search (:attr:`~hw.vector_params.VectorParams.act_progression`), counted
    as an output stage's (the same search: ``per_bit`` a code bit); 0 without."""
    return per_bit * params.act_search_cycles


def check_link_payload(board: Board, what: str, addr_bits: int, target_bits, out_bits: int,
                       code_out_bits: int = 0) -> None:
    """:class:`FitError` where a payload of the link to ``what`` (:func:`hw.protocol.payload_bytes` of its widths,
    the rule :class:`hw.link.LinkBridge` builds by) is more than the board's frame buffer holds
    (:data:`boards.boards.LINK_PAYLOAD`): a bridge for it cannot be built."""
    holds = LINK_PAYLOAD[board.family]
    for payload, size in payload_bytes(addr_bits, target_bits, out_bits, code_out_bits).items():
        if size > holds:
            raise FitError(f"{what} on {board.name} ({board.device}): {payload} takes {size} bytes, the link's "
                           f"frame buffer holds {holds} bytes; use a model with fewer activation bits (a threshold "
                           f"word holds 2^bits - 1 thresholds) or a smaller array, or a part with a larger frame "
                           f"buffer ({', '.join(f'{family}: {n} bytes' for family, n in LINK_PAYLOAD.items())})")


def logic_limit(board: Board, network: bool = False, logic_share: float | None = None) -> int:
    """The LUT4s an estimate may take on ``board``: ``logic_share`` of the part's (None: :data:`LOGIC_SHARE`, or for
    the iCE40 whole-network core, ``network``, :data:`NETWORK_LOGIC_SHARE_ICE40`)."""
    if logic_share is None:
        logic_share = NETWORK_LOGIC_SHARE_ICE40 if network and board.family == "ice40" else LOGIC_SHARE
    return int(logic_share * board.resources["LUT4"])


def _of_part(board: Board, name: str, limit: int) -> str:
    """Where the ``limit`` of ``name`` is a share of the part's (LUT4): how many the part has, and why the limit
    is lower."""
    part = board.resources.get(name, 0)
    return f" (of the part's {part}: the rest is left for placement)" if limit < part else ""


def check_fit(board: Board, params: EngineParams, logic_share: float = LOGIC_SHARE) -> dict[str, int]:
    """The estimate of :func:`estimate`; :class:`FitError` naming the first resource that does not fit, then a link
    payload the board's frame buffer cannot hold (:func:`check_link_payload`; after the resources, whose error
    names the fix that works where both fail)."""
    use = estimate(board, params)
    limits = {name: board.resources.get(name, 0) for name in use}
    limits["LUT4"] = logic_limit(board, logic_share=logic_share)
    for name, used in use.items():
        if used > limits[name]:
            memories = ", ".join(f"{n} {w}x{d}" + (f" (x{c})" if c > 1 else "") for n, w, d, c in params.memories())
            raise FitError(f"{params.rows} x {params.cols} engine on {board.name} ({board.device}): needs about "
                           f"{used} {name} of {limits[name]}{_of_part(board, name, limits[name])} (memories: "
                           f"{memories}); use a smaller array or model, or a larger part")
    check_link_payload(board, f"{params.rows} x {params.cols} engine", params.addr_bits, params.target_bits,
                       params.cols * params.out_bits, params.cols * params.code_bits)
    return use


def network_memories(params: NetworkParams) -> list[tuple[str, int, int, int]]:
    """Every memory of the whole-network core (:meth:`~hw.network_params.NetworkParams.memories`); the
    accumulator memories count twice (network mode reads them through two ports while writing through a
    third, which block RAM holds as two copies)."""
    return [(name, w, d, 2 * c if name == "accumulators" else c) for name, w, d, c in params.memories()]


def network_spram(params: NetworkParams) -> tuple[str, ...]:
    """The memories the whole-network core keeps in SPRAM on a part that has it: the weights buffer, the wide
    weights buffer (:attr:`~hw.network_params.NetworkParams.wide_weights_in_spram`) and the value memory where
    one port serves it (:attr:`~hw.network_params.NetworkParams.values_single_port`)."""
    return (("weights",) + (("wide weights",) if params.wide_weights_in_spram else ())
            + (("values",) if params.values_single_port else ()))


def network_columns(params: NetworkParams) -> dict[str, int]:
    """The memories the whole-network core builds as columns of block RAM on the ECP5 (:mod:`hw.column_memory`),
    with the granularity of their writes: the value memory (a value a granule)."""
    return {"values": params.value_bits}


def check_network_columns(board: Board, params: NetworkParams) -> None:
    """:class:`FitError` where a memory the whole-network core builds as columns of block RAM on ``board``
    (:func:`network_columns`) is deeper than the part's deepest block RAM: no column holds it
    (:func:`hw.memories.column_bits`)."""
    if board.family != "ecp5":
        return
    deepest, bits = max(BLOCK_RAM_SHAPES[board.family])
    columns = network_columns(params)
    for name, width, depth, _ in network_memories(params):
        if name in columns and depth > deepest:
            raise FitError(f"{params.engine.rows} x {params.engine.cols} whole-network core on {board.name} "
                           f"({board.device}): its {name} memory is {depth:,} words deep ({width} bits a word), built "
                           f"as columns of block RAM as deep as itself, and the deepest {board.family} block RAM is "
                           f"{deepest} x {bits}; use a smaller input or fewer channels (the value memory holds the "
                           f"network's live values, one a word: `lcq report MODEL --lanes R` lists them)")


def network_lanes(board: Board, params: NetworkParams) -> dict[str, tuple[int, int]]:
    """The whole-network core's memories built as a memory per lane on ``board`` (``memory_blocks``'s ``lanes``):
    on the ECP5 the code buffer, one lane of ``abits``-bit codes (both halves of a word pair) each
    (:func:`hw.code_buffer.code_buffer`'s registered writes)."""
    return {"activations": (params.engine.rows, params.engine.abits)} if board.family == "ecp5" else {}


def network_blocks(board: Board, params: NetworkParams) -> list[tuple[str, int, str, int]]:
    """:func:`memory_blocks` of every memory of the whole-network core on ``board``, as the core builds them."""
    return memory_blocks(board, network_memories(params), network_spram(params), network_columns(params),
                         written_in_pieces(params.engine), NETWORK_BANKED, network_lanes(board, params))


def network_estimate(board: Board, params: NetworkParams) -> dict[str, int]:
    """{resource: estimated use} of the whole-network core (with link and UART) on ``board``; :class:`FitError`
    where a memory cannot be built at all (:func:`check_network_columns`)."""
    check_network_columns(board, params)
    use = estimate(board, params.engine, bridge_out=(params.value_bits, 0))     # a logit a word, no CODES
    blocks = network_blocks(board, params)
    use["EBR"] = LINK_BUFFER_BLOCKS + sum(b for _, _, kind, b in blocks if kind == "EBR")
    use["SPRAM"] = sum(b for _, _, kind, b in blocks if kind == "SPRAM")
    if board.family == "ice40":
        base, per_pe = NETWORK_CELLS_ICE40
        units = {"maxpool": params.vector.maxpool_bits > 0,
                 "values": params.vector.adds or params.vector.act_slots > 0 or params.engine.fused_adds
                 or params.engine.fused_activations}
        use["LUT4"] = (base + per_pe * params.engine.rows * params.engine.cols
                       + sum(NETWORK_UNIT_CELLS_ICE40[unit] for unit, needed in units.items() if needed)
                       + search_luts(params.engine, SEARCH_CELLS_ICE40_PER_BIT)
                       + vector_search_luts(params.vector, SEARCH_CELLS_ICE40_PER_BIT))
    else:
        use["LUT4"] += VECTOR_LUTS + vector_search_luts(params.vector, SEARCH_LUTS_PER_BIT)
    return use


def check_network_link(board: Board, params: NetworkParams) -> None:
    """:func:`check_link_payload` of the whole-network core's link (one ``value_bits`` logit a word)."""
    check_link_payload(board, f"{params.engine.rows} x {params.engine.cols} whole-network core", params.addr_bits,
                       params.target_bits, params.value_bits)


def check_network_fit(board: Board, params: NetworkParams, logic_share: float | None = None) -> dict[str, int]:
    """The estimate of :func:`network_estimate`; :class:`FitError` naming the resource that does not fit
    and, for RAM, the largest buffers, their sizes and the part. ``logic_share``: of the part's LUT4s the
    estimate may take (default: :func:`logic_limit`'s; on the iCE40, whose estimate counts routed cells, what
    nextpnr has placed). Then the link's payloads, as :func:`check_fit`."""
    use = network_estimate(board, params)
    limits = {name: board.resources.get(name, 0) for name in use}
    limits["LUT4"] = logic_limit(board, network=True, logic_share=logic_share)
    engine = f"{params.engine.rows} x {params.engine.cols} whole-network core"
    for name, used in use.items():
        if used <= limits[name]:
            continue
        if name in ("EBR", "SPRAM"):
            blocks = network_blocks(board, params)
            largest = sorted((b for b in blocks if b[2] == name), key=lambda b: -b[3])[:3]
            buffers = "; ".join(f"{n}: {bits:,} bits in {count} blocks" for n, bits, _, count in largest)
            raise FitError(f"{engine} on {board.name} ({board.device}): its buffers need {used} {name} blocks, "
                           f"the part has {limits[name]}; the largest: {buffers}. Use a smaller model or array "
                           f"(`lcq report MODEL --lanes R` lists the network's buffers), or a larger part")
        raise FitError(f"{engine} on {board.name} ({board.device}): needs about {used} {name} of {limits[name]}"
                       f"{_of_part(board, name, limits[name])}; use a smaller array or model, or a larger part")
    check_network_link(board, params)
    return use


@dataclass(frozen=True)
class BoardNetwork:
    """The whole-network core chosen for a model on a board, with its resource estimate and ``pace``
    (:func:`image_pace`; None where not estimated)."""

    params: NetworkParams
    estimate: dict
    pace: dict | None = None


# An array keeps up with the link where an image's computation takes at most this share of the time its pixels
# take on the line (the host sends them while the core computes the image before): a fifth to spare for the
# estimate, the stalls of the line and a clock that the build lowers where timing does not close at the target.
LINK_SHARE = 0.8


def image_pace(model: CompiledModel, board: Board, params: NetworkParams, clock_hz: float) -> dict:
    """Estimated images per second of the whole-network core ``params`` for ``model`` on ``board`` at ``clock_hz``:
    ``compute``, the clock over :func:`hw.network_cycles.image_cycles`; ``link``, the line's rate (the board's
    baud at that clock, 10 bits a byte) over an image's bytes both ways (:func:`boards.traffic.network_image_traffic`:
    each request is answered before the next); ``pixels``, the line's rate over the pixels' frames and their ACKs,
    the transfer the computation of the image before hides behind; ``stream``, both together (an image takes the
    longer of its computation and its pixels' transfer, then the rest of its requests); ``keeps_up``: the
    computation takes at most :data:`LINK_SHARE` of the pixels' transfer, so the link alone bounds the stream."""
    from hw.network_cycles import image_cycles

    from .boards import uart_baud
    from .traffic import network_image_traffic

    traffic = network_image_traffic(model, params, LINK_PAYLOAD[board.family], loading=False)
    byte_rate = uart_baud(board, clock_hz) / 10
    compute = clock_hz / image_cycles(model, params)
    pixels = byte_rate / traffic["pixel_bytes"]
    link = byte_rate / (traffic["bytes_to_device"] + traffic["bytes_from_device"])
    stream = 1 / (max(1 / compute, 1 / pixels) + 1 / link - 1 / pixels)
    return {"compute": compute, "link": link, "pixels": pixels, "stream": stream,
            "keeps_up": compute * LINK_SHARE >= pixels, "clock_hz": clock_hz}


# Arrays tried, largest first, when the user names none.
ARRAYS = ((16, 16), (8, 16), (8, 8), (4, 8), (4, 4), (2, 4), (2, 2), (1, 2), (1, 1))


def arrays_to_try(rows: int | None, cols: int | None) -> list[tuple[int, int]]:
    """The arrays to try, largest first: ``rows`` x ``cols`` where both are given, else those of :data:`ARRAYS`
    with the side given (any where none is); a ValueError naming the fix where no array of them has it."""
    if rows and cols:
        return [(rows, cols)]
    arrays = [(r, c) for r, c in ARRAYS if rows in (None, r) and cols in (None, c)]
    if not arrays:
        side = f"{rows} rows" if rows else f"{cols} columns"
        tried = ", ".join(f"{r} x {c}" for r, c in ARRAYS)
        raise ValueError(f"no array tried ({tried}) has {side}: give both --rows and --cols (that array alone is "
                         f"tried), or a side one of them has")
    return arrays


@dataclass(frozen=True)
class BoardEngine:
    """The engine chosen for a model on a board; ``resident``: what it keeps of every layer
    (:data:`hw.residency.RESIDENCY`)."""

    params: EngineParams
    resident: str
    estimate: dict


def engine_for_board(model: CompiledModel, board: Board, rows: int | None = None,
                     cols: int | None = None) -> BoardEngine:
    """The engine for ``model`` on ``board``: ``rows`` x ``cols`` (each defaulting to the sizes of
    :data:`ARRAYS`), largest array first, then every layer's constants resident before only its
    weights before one layer's at a time, the first that :func:`boards.fit.check_fit` accepts;
    :class:`FitError` when none does, naming the last one's reason. One that cannot hold the model at all
    (:meth:`EngineParams.for_model`'s ValueError: a buffer deeper than an engine addresses) is skipped; where
    every one tried is, the first's ValueError is raised as it is."""
    arrays = arrays_to_try(rows, cols)
    errors, unsized = [], []
    for r, c in arrays:
        for resident in ("all", "weights", "none"):
            try:
                params = EngineParams.for_model(model, r, c, resident=resident)
            except ValueError as e:
                unsized.append(e)
                errors.append(f"{r} x {c} engine ({DESCRIPTION[resident]}) cannot hold the model: {e}")
                continue
            try:
                return BoardEngine(params, resident, check_fit(board, params))
            except FitError as e:
                errors.append(str(e))
    if len(unsized) == len(errors):
        raise unsized[0]
    raise FitError(f"the model does not fit {board.name} ({board.device}) with any array tried; "
                   f"the smallest: {errors[-1]}")


def describe_pace(network: BoardNetwork, chosen: bool) -> str:
    """One line on the array of ``network`` and its :func:`image_pace`: why it was ``chosen`` (by
    :func:`network_for_board`, not given), what it computes and what the link carries."""
    pace, engine = network.pace, network.params.engine
    rates = (f"about {pace['stream']:,.0f} images/s (computing alone {pace['compute']:,.0f} at "
             f"{pace['clock_hz'] / 1e6:g} MHz, the link alone {pace['link']:,.0f})")
    if not chosen:
        return f"{engine.rows} x {engine.cols}, as asked: {rates}"
    if pace["keeps_up"]:
        return (f"{engine.rows} x {engine.cols}, the smallest array that keeps up with the link: {rates}; a larger "
                "one adds no image a second (--rows and --cols build another)")
    return f"{engine.rows} x {engine.cols}, the fastest array that fits: {rates}"


def _multiplying(board: Board, multiply_cols: int | None):
    """``cols -> multiplying columns`` of an array of ``cols`` columns on ``board``: ``multiply_cols`` at most
    (0: every column), or :func:`board_multiply_cols` where None; a ValueError for anything else."""
    if multiply_cols is not None and (not isinstance(multiply_cols, int) or isinstance(multiply_cols, bool)
                                      or multiply_cols < 0):
        raise ValueError(f"multiply_cols must be None (the board's default), 0 (every column) or a number of "
                         f"columns (an array's at most), got {multiply_cols!r}")
    return lambda cols: board_multiply_cols(board, cols) if multiply_cols is None else min(multiply_cols, cols)


def network_arrays(model: CompiledModel, board: Board, rows: int | None = None, cols: int | None = None,
                   multiply_cols: int | None = None, clock_hz: float | None = None) -> list[dict]:
    """Every array :func:`network_for_board` may try for ``model`` on ``board`` (the same arguments), largest
    first, each ``{"rows", "cols", "multiply_cols", "estimate", "fits", "pace", "error"}``: the resource estimate
    (:func:`network_estimate`), whether :func:`check_network_fit` accepts it, its :func:`image_pace`, and the
    reason it is refused (None where it fits). An array that cannot hold the model at all has only the error;
    one whose memories cannot be built, no estimate."""
    narrowed = _multiplying(board, multiply_cols)
    clock_hz = board.default_mhz * 1e6 if clock_hz is None else clock_hz
    arrays = []
    for r, c in arrays_to_try(rows, cols):
        row = {"rows": r, "cols": c, "multiply_cols": narrowed(c), "estimate": None, "fits": False, "pace": None,
               "error": None}
        arrays.append(row)
        try:
            params = NetworkParams.for_model(model, r, c, multiply_cols=narrowed(c))
        except ValueError as e:
            row["error"] = f"cannot hold the model: {e}"
            continue
        row["pace"] = image_pace(model, board, params, clock_hz)
        try:
            row["estimate"] = network_estimate(board, params)
            check_network_fit(board, params)
            row["fits"] = True
        except FitError as e:
            row["error"] = str(e)
    return arrays


def network_for_board(model: CompiledModel, board: Board, rows: int | None = None,
                      cols: int | None = None, force: bool = False,
                      multiply_cols: int | None = None, clock_hz: float | None = None) -> BoardNetwork:
    """The whole-network core for ``model`` on ``board``: of the ``rows`` x ``cols`` arrays (each defaulting to
    the sizes of :data:`ARRAYS`) that :func:`check_network_fit` accepts, the smallest whose computation keeps up
    with the link at ``clock_hz`` (default: the board's clock; :func:`image_pace`), where one does: a larger
    array would add no image a second, only logic, block RAM and build time; else the fastest by
    :func:`image_pace` (the arrays are tried largest first, until one falls behind the link after one that
    kept up). :class:`FitError` naming the smallest one's largest buffers when none fits (or its ValueError: an
    array that cannot hold the model at all, skipped as :func:`engine_for_board` skips it). ``force`` (with both ``rows`` and ``cols``):
    that array whatever the estimate says (the synthesis and placement tools decide), but not past a link payload
    the board's frame buffer cannot hold (:func:`check_network_link`: no bridge could be built) or a memory no block
    RAM is deep enough for (:func:`check_network_columns`). ``multiply_cols``
    (:class:`~hw.engine_params.EngineParams`): PEs multiply in that many columns only (at most the array's;
    0: in all; None: :func:`board_multiply_cols`)."""

    narrowed = _multiplying(board, multiply_cols)
    clock_hz = board.default_mhz * 1e6 if clock_hz is None else clock_hz
    if force:
        if not rows or not cols:
            raise ValueError("forcing a build past the fit estimate needs the array: give --rows and --cols")
        params = NetworkParams.for_model(model, rows, cols, multiply_cols=narrowed(cols))
        check_network_link(board, params)
        return BoardNetwork(params, network_estimate(board, params), image_pace(model, board, params, clock_hz))
    arrays = arrays_to_try(rows, cols)
    error, unsized, fitting = None, [], []
    for r, c in arrays:
        try:
            params = NetworkParams.for_model(model, r, c, multiply_cols=narrowed(c))
        except ValueError as e:
            unsized.append(e)
            error = f"{r} x {c} whole-network core cannot hold the model: {e}"
            continue
        try:
            use = check_network_fit(board, params)
        except FitError as e:
            error = e
            continue
        fitting.append(BoardNetwork(params, use, image_pace(model, board, params, clock_hz)))
        if not fitting[-1].pace["keeps_up"] and any(n.pace["keeps_up"] for n in fitting):
            break
    keeping_up = [n for n in fitting if n.pace["keeps_up"]]
    if keeping_up:
        return keeping_up[-1]
    if fitting:
        return max(fitting, key=lambda n: n.pace["compute"])
    if len(unsized) == len(arrays):
        raise unsized[0]
    try:
        engine = engine_for_board(model, board, rows, cols)
        fallback = (f"; the layer engine fits ({engine.params.rows} x {engine.params.cols}: `lcq build --mode "
                    "layers`, each convolution over the link, the rest of the network on the host)")
    except ValueError:                  # (a FitError too)
        fallback = ""
    raise FitError(f"the whole network does not fit {board.name} ({board.device}) with any array tried; the "
                   f"smallest: {error}{wide_codes_hint(model)}{fallback}")


def board_verdict(model: CompiledModel, board: Board) -> tuple[bool, str]:
    """Whether the whole network of ``model`` fits ``board`` (:func:`network_for_board`, at the board's clock), and
    a sentence saying so: the array it would take and its pace, or why none fits."""
    try:
        network = network_for_board(model, board)
    except FitError as e:
        return False, str(e)
    return True, (f"the whole network fits {board.name} ({board.device}) by the estimate before synthesis: "
                  f"{describe_pace(network, chosen=True)}")


def code_reader(model: CompiledModel, tensor: str) -> ConvNode | None:
    """The layer that reads the codes ``tensor`` of ``model``, through max pooling (which keeps them), or None."""
    for node in model.nodes:
        if getattr(node, "input", None) == tensor and isinstance(node, ConvNode):
            return node
        if getattr(node, "input", None) == tensor and isinstance(node, MaxPoolNode):
            return code_reader(model, node.output)
    return None


def wide_codes_hint(model: CompiledModel) -> str:
    """Where a layer's output stage writes wide codes (:data:`~hw.progression.PROGRESSION_MIN_BITS` bits or more:
    the last layer's 8-bit input, by the paper's rule, read from a linear layer before it) whose thresholds are no
    arithmetic progression (a uniform quantizer's are searched, :mod:`hw.progression`), what that costs on the
    chip and the fix: the reader trained at the inner activation width; "" where none does."""
    plan = model.source.get("plan") or {}
    inner = plan.get("abits", 3)
    for node in model.convs:
        stage, reader = node.stage, code_reader(model, node.output)
        if isinstance(stage, Thresholds) and stage.bits >= PROGRESSION_MIN_BITS and reader is not None and \
                stage_shift(stage, node.acc_bound) is None:
            return (f"; layer {node.name!r} writes {stage.bits}-bit codes, the input of {reader.name!r}, whose "
                    f"thresholds are no arithmetic progression (a learned quantizer's, or a uniform one's taken "
                    f"back through an activation such as sigmoid, tanh or GELU), so every "
                    f"output stage lists {2 ** stage.bits - 1} thresholds a channel: train {reader.name!r} "
                    f"to read the inner width (lcq train ... --layer-bits {reader.name}="
                    f"{min(reader.wbits, LUT_WBITS)}/{inner})")
    return ""
