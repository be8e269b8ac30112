"""Bands of a layer in network mode: the engine's cycle model and the band height it runs with.

In network mode (:class:`hw.engine.LayerEngine` with ``value_depth``) the engine computes each
channel tile band by band (``band_rows`` output rows each, a divisor of the output height), all
reduction tiles of a band before the next band, and writes each band back while the array
computes the next one. Smaller bands shorten the write-back left over after the last band; each
band costs a weight load (``rows`` cycles) per reduction tile (none where the band has
:func:`overlap_positions`: the next tile's weights load while it issues), and bands of fewer than
:func:`gap_positions` positions wait a few cycles. The accumulators hold two of the largest bands, or more
where a layer would wait for them (:func:`ring_depth`), not the layer: a band waits while the ring is full.
:func:`network_layer_cycles` is the engine's cycle model (``hw/engine.py``), :func:`band_rows` picks the band
that it says is fastest and :func:`band_registers` writes it into the engine's band registers
(:data:`hw.engine_params.NETWORK_REGISTERS`). No Amaranth here.
"""

from __future__ import annotations

from dataclasses import replace
from math import ceil

from compiler.graph import ConvNode

from .engine_params import EngineParams, group_span
from .memories import BLOCK_RAM_SHAPES
from .pe_words import ARRAY_PIPELINE

# Network mode: registers on the code buffer's read path, its read address and its read data.
CODE_READ_REGISTERS = 2
# Network mode, a full accumulator ring: cycles from the write-back of the unit ``acc_units`` before to the
# first issue of the next unit (counted as :func:`network_layer_cycles` counts issues).
RING_RESUME = 1
# The depth of the shallowest block RAM of either family (the iCE40's 256 x 16, the ECP5's 512 x 36): a ring of
# accumulators no deeper takes no more blocks than a shallower one.
RING_FREE_DEPTH = min(depth for shapes in BLOCK_RAM_SHAPES.values() for depth, _ in shapes)


def network_drain(params: EngineParams) -> int:
    """Cycles from a band's last issued position until its accumulators are final, in network mode:
    ``rows + cols + 4 + CODE_READ_REGISTERS + ARRAY_PIPELINE`` (the code buffer's read address and read
    data each pass a register, :data:`CODE_READ_REGISTERS`)."""
    return params.rows + params.cols + 4 + CODE_READ_REGISTERS + ARRAY_PIPELINE


def network_layer_cycles(params: EngineParams, node: ConvNode, rows_per_band: int, stage_latency: int) -> int:
    """Cycles ``busy`` is high for layer ``node`` on the engine in network mode with bands of
    ``rows_per_band`` output rows (``stage_latency``: the engine's ``STAGE_LATENCY``).

    With ``k = kernel^2 * groups`` reduction tiles (``groups`` = ``ceil(C_in / rows)``, or
    :func:`~hw.engine_params.group_span`'s with ``skip_groups``), ``units = ceil(C_out / C) * bands``
    (band of a channel tile of ``C`` = :meth:`~hw.engine_params.EngineParams.layer_cols` channels), ``P =
    rows_per_band * W_out`` positions per band, ``gap = max(0, G - P)`` (``G``: :func:`gap_positions`), ``load`` = 0
    where the next tile's weights are read while a tile issues (:func:`overlaps`), else ``rows``, ``T = load + P +
    1 + gap`` cycles per reduction tile and ``W`` cycles of write-back per unit (:func:`write_back_cycles`: ``P *
    (C + 1)``, or ``P / 2 * (C + 2)`` in pairs): unit ``u``
    issues from ``i_u = rows - load + u * k * T`` on (after the engine's twice registered ``start``, and
    with the overlap the first tile's weights ``rows``), its accumulators are final at ``i_u + k * T - gap +
    drain`` (``drain`` = :func:`network_drain`), its write-back runs ``W`` cycles from the cycle after that or
    after the previous unit's, whichever is later, and ``1 + stage_latency`` cycles follow the last one's. With
    ``K = out_depth // P`` < ``units`` the accumulators are a ring of ``K`` units: unit ``u`` issues no
    earlier than :data:`RING_RESUME` cycles after unit ``u - K``'s write-back ends. Without stalls this is
    ``2 + rows - load + max(k*T + units*W, units*k*T + W) - gap + drain + stage_latency``."""
    c_in, c_out, (_, ho, wo) = node.in_shape[0], node.out_shape[0], node.out_shape
    if rows_per_band < 1 or ho % rows_per_band:
        raise ValueError(f"a band of {rows_per_band} rows does not divide {node.name}'s {ho} output rows")
    tile = params.layer_cols(node)
    k = node.kernel ** 2 * (group_span(node, params.rows, tile)[1] if params.skip_groups
                            else ceil(c_in / params.rows))
    units = ceil(c_out / tile) * (ho // rows_per_band)
    positions = rows_per_band * wo
    held = params.out_depth // positions
    if held < 1:
        raise ValueError(f"a band of {positions} positions of {node.name} does not fit the {params.out_depth} "
                         f"accumulators of a column")
    gap = max(0, gap_positions(params) - positions)
    load = 0 if overlaps(params, positions) else params.rows
    T, W = load + positions + 1 + gap, write_back_cycles(params, positions, tile)
    drain = network_drain(params)
    issue, end, ends = params.rows - load, 0, []
    for u in range(units):
        if u:
            issue += k * T
        if u >= held:
            issue = max(issue, ends[u - held] + RING_RESUME)
        end = max(issue + k * T - gap + drain + 1, end + 1) + W - 1
        ends.append(end)
    return 2 + end + stage_latency


def ring_depth(params: EngineParams, nodes) -> int:
    """Accumulator words per column for the layers ``nodes`` in network mode: a ring (a power of two words, its
    addresses wrap by dropping their high bits) of at least twice the largest band (:func:`band_rows`'s with the
    layer's whole output held), doubled up to :data:`RING_FREE_DEPTH` (no block RAM more) while a layer takes
    more cycles in it (:func:`network_layer_cycles` with the :func:`band_rows` it picks there) than with its
    whole output held (its bands wait for the ring: 16 x 16 ResNet-20's 16-channel layers, whose write-back of a
    64-position band outlasts the next band's computation by more than the drain, 224 cycles a layer in a ring
    of two), where that is less than the largest layer's outputs (``out_depth``)."""
    largest = max(band_rows(params, node) * node.out_shape[2] for node in nodes)
    ring = 1 << (2 * largest - 1).bit_length()
    while ring < min(params.out_depth, RING_FREE_DEPTH) and any(
            layer_cycles(replace(params, out_depth=ring), node) > layer_cycles(params, node) for node in nodes):
        ring *= 2
    return ring if ring < params.out_depth else params.out_depth


def write_back_cycles(params: EngineParams, positions: int, tile_cols: int) -> int:
    """Cycles the engine writes a band of ``positions`` back in, for channel tiles of ``tile_cols`` columns: per
    position a read cycle and ``tile_cols`` cycles through the output stage; with ``write_pairs`` and an even
    band, per pair of positions two read cycles and ``tile_cols`` through the two stages."""
    if params.write_pairs and positions % 2 == 0:
        return positions // 2 * (tile_cols + 2)
    return positions * (tile_cols + 1)


def gap_positions(params: EngineParams) -> int:
    """Network mode: a band of ``P`` positions fewer than this, ``max(2, cols - rows - 1)``, waits ``gap = this - P``
    cycles after each reduction tile before the next one's weights load, so that a tile takes ``T = rows + P + 1 +
    gap >= max(rows + 3, cols)`` cycles: the next tile reads a position's partial sum after this one wrote it
    (``rows + 1`` cycles after its read; on the ECP5 the read is a cycle early, and a read in the write's cycle
    returns either), and a row's weight word, which its PEs take a column a cycle as the positions reach them,
    holds for ``cols`` cycles."""
    return max(2, params.cols - params.rows - 1)


def overlap_positions(params: EngineParams) -> int:
    """Network mode: a band of at least this many positions, ``max(rows + 2, cols - 1)``, has the next reduction
    tile's weights read while it issues its last ``rows`` positions, not between tiles: ``T = P + 1 >= max(rows
    + 3, cols)`` cycles (:func:`gap_positions`), and the loads begin two positions after the tile's first, so that
    each row's shadow weights take the next tile's after the swap that copies this tile's."""
    return max(params.rows + 2, params.cols - 1)


def overlaps(params: EngineParams, positions: int) -> bool:
    """Whether the engine reads the next reduction tile's weights while it issues the last ``rows``
    positions of a band of ``positions`` (at least :func:`overlap_positions`), instead of loading them between
    tiles."""
    return positions >= overlap_positions(params)


def band_rows(params: EngineParams, node: ConvNode) -> int:
    """The band height (a divisor of the output height) with the fewest cycles by
    :func:`network_layer_cycles` among those whose band fits the accumulators; the tallest of equals."""
    ho, wo = node.out_shape[1:]
    fits = [r for r in range(1, ho + 1) if ho % r == 0 and r * wo <= params.out_depth]
    if not fits:
        raise ValueError(f"no band of {node.name} ({wo} positions a row) fits the {params.out_depth} accumulators "
                         f"of a column")
    return min(fits, key=lambda r: (network_layer_cycles(params, node, r, 0), -r))


def layer_cycles(params: EngineParams, node: ConvNode) -> int:
    """:func:`network_layer_cycles` of layer ``node`` at the band :func:`band_rows` picks, the output stage's
    latency left out."""
    return network_layer_cycles(params, node, band_rows(params, node), 0)


def band_registers(params: EngineParams, node: ConvNode) -> dict[str, int]:
    """The band registers of layer ``node``: ``band_rows`` (:func:`band_rows`), ``band_positions``,
    ``band_in_rows`` (input rows the band moves, ``band_rows * stride``), ``band_step`` (activation
    words it moves, ``band_rows * stride * W_in``), ``acc_units`` (bands the accumulators hold,
    ``out_depth // band_positions``)."""
    rows = band_rows(params, node)
    positions = rows * node.out_shape[2]
    return {"band_rows": rows, "band_positions": positions, "band_in_rows": rows * node.stride,
            "band_step": rows * node.stride * node.in_shape[2], "acc_units": params.out_depth // positions}
