"""On-chip memory lists: ``(name, width, depth, copies)`` as the parameter classes describe them; how
synthesis may map the generated memories (:data:`UNDEFINED_COLLISIONS`); words loaded in pieces."""

from __future__ import annotations

from .fabric import is_ecp5


def word_pieces(word: int, bits: int, count: int, slots: int | None = None) -> list[int]:
    """``word`` as ``count`` pieces of ``bits`` bits, lowest first: a memory word loaded a piece a beat; then zero
    pieces up to ``slots`` (the addresses a word's pieces take, a power of two), which the hardware never uses,
    so that consecutive words' pieces form one run of addresses: one LOAD frame, not one per word."""
    pieces = [word >> (k * bits) & ((1 << bits) - 1) for k in range(count)]
    return pieces + [0] * ((count if slots is None else slots) - count)


# Yosys command for the design as read (RTLIL from Amaranth; Verilog after ``proc; memory_dff``): a read
# of an address in the cycle it is written may return anything, on every synchronous read port of a memory
# with one write port. The generated hardware never uses such a read: constants (weights, tables, stage
# constants, program, input table) are written while idle and read while running; the staging buffer is
# not written while it is copied; the link's frame buffer is written while a frame arrives and read after;
# the data memories' reads of an address come at least a cycle before its write (fused addition, vector
# ops, whose writes lag their reads by a pipeline) or after it (partial sums: the engine's spacing of
# tiles), and no step reads the tensor it writes. Without it Yosys keeps Amaranth's read-first semantics on
# block RAMs that lack them by delaying every write a cycle and bypassing it around the RAM: on the digits
# core for the UP5K (1 x 2) 1,089 flip-flops and 370 LUTs of a 5,280-cell part.
UNDEFINED_COLLISIONS = "setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2 r:COLLISION_X_MASK=1'0 %i"


def memory_bits(memories) -> dict[str, int]:
    """Bits of each named memory (all copies together, entries of one name summed)."""
    bits: dict[str, int] = {}
    for name, width, depth, copies in memories:
        bits[name] = bits.get(name, 0) + width * depth * copies
    return bits


def slow_block_ram(platform) -> bool:
    """Whether ``platform`` (an Amaranth platform, or None in simulation) is an ECP5, whose block RAM output
    takes 5.8 ns of a cycle and whose flip-flops are plentiful: where the output stage registers its block
    RAM words before logic (``ThresholdUnit(registered_word=)``, ``RequantizeUnit(registered_constants=)``).
    Not the iCE40: the UP5K has no cells to spare."""
    return is_ecp5(platform)


# The (depth, width) shapes one block RAM holds, per FPGA family: the iCE40's 4 Kbit and the ECP5's 18 Kbit blocks.
BLOCK_RAM_SHAPES = {"ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
                    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))}


def bank_depth(width: int) -> int:
    """Words of one bank of ``width``-bit words (:func:`hw.banked.banked_buffer`): the depth of the ECP5 shape with
    the fewest blocks per word (``ceil(width / shape width) / shape depth``), the shallowest of those."""
    return min(BLOCK_RAM_SHAPES["ecp5"], key=lambda shape: (-(-width // shape[1]) / shape[0], shape[0]))[0]


def column_bits(depth: int, family: str = "ecp5") -> int:
    """The width of one block RAM of ``family`` at least ``depth`` deep (its widest such shape); ValueError
    where no block is that deep."""
    widths = [w for d, w in BLOCK_RAM_SHAPES[family] if d >= depth]
    if not widths:
        raise ValueError(f"no {family} block RAM is {depth} words deep (at most {BLOCK_RAM_SHAPES[family][-1][0]})")
    return max(widths)


def column_spans(width: int, depth: int, granularity: int, family: str = "ecp5") -> list[tuple[int, int]]:
    """``(low, bits)`` of each column of a ``width`` x ``depth`` memory built as columns (:mod:`hw.column_memory`):
    each ``granularity``-bit granule of the word in columns of :func:`column_bits` bits, a memory each."""
    bits = column_bits(depth, family)
    return [(granule + low, min(bits, granularity - low)) for granule in range(0, width, granularity)
            for low in range(0, granularity, bits)]


def column_blocks(width: int, depth: int, granularity: int, family: str = "ecp5") -> int:
    """Block RAMs of a ``width`` x ``depth`` memory built as columns (:func:`column_spans`), one block each."""
    return len(column_spans(width, depth, granularity, family))
