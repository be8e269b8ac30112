"""Fit estimate before synthesis: do an engine's RAMs, multipliers and logic fit the board's part?

- RAM: every memory of :meth:`hw.engine_params.EngineParams.memories` takes, per copy,
  the fewest blocks of any aspect ratio of the part's block RAM (iCE40 EBR: 256 x 16,
  512 x 8, 1024 x 4, 2048 x 2; ECP5 DP16KD: 512 x 36 ... 16384 x 1). On the UP5K the
  weight buffer goes to SPRAM (16K x 16 blocks) as the engine builds it there. The link
  bridge's frame buffer takes one more block.
- DSP: one per PE that multiplies levels (``multiply``), and the requantize unit's
  ``acc_bits x multiplier_bits`` product in 16 x 16 (iCE40) or 18 x 18 (ECP5) pieces.
- LUT4: :data:`BASE_LUTS` for control, output stage, link and UART, plus
  :func:`luts_per_pe` per PE, calibrated on the digits CNN's 2 x 2 iCEBreaker build
  (4,512 LUT4s); within ``logic_share`` of the part, leaving room for routing.

The estimate decides the array before synthesis (:func:`engine_for_board`: the largest array
of :data:`ARRAYS` that fits, with every layer's constants resident where they fit, else every
layer's weights, else one layer's at a time); the build report has the true counts. No
Amaranth here: ``lcq run`` sizes the engine of a flashed board with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from compiler.graph import CompiledModel
from hw.engine_params import SPRAM_DEPTH, SPRAM_WIDTH, EngineParams

from .boards import Board

RAM_SHAPES = {"ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
              "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))}
DSP_WIDTH = {"ice40": 16, "ecp5": 18}
BASE_LUTS = 4150
LINK_BUFFER_BLOCKS = 1


class FitError(ValueError):
    """The design does not fit the part; the message names what (a buffer, DSPs or logic) and the part."""


def ram_blocks(family: str, width: int, depth: int) -> int:
    """Block RAMs of ``family`` holding one ``width`` x ``depth`` memory."""
    return min(ceil(width / w) * ceil(depth / d) for d, w in RAM_SHAPES[family])


def luts_per_pe(params: EngineParams) -> int:
    """Rough LUT4s of one PE: partial-sum adder, the select of one of ``s_w`` 15-bit products,
    and the glue of a 7 x 8 multiplier where the engine multiplies (the product itself in a DSP)."""
    return params.acc_bits + 15 * params.s_w + (16 if params.multiply else 0)


def estimate(board: Board, params: EngineParams) -> dict[str, int]:
    """{resource: estimated use} of the accelerator (engine, link, UART) for ``params`` on ``board``."""
    family = board.family
    use = {"EBR": LINK_BUFFER_BLOCKS, "SPRAM": 0}
    for name, width, depth, copies in params.memories():
        if name == "weights" and "SPRAM" in board.resources and depth <= SPRAM_DEPTH:
            use["SPRAM"] += ceil(width / SPRAM_WIDTH)
        else:
            use["EBR"] += copies * ram_blocks(family, width, depth)
    piece = DSP_WIDTH[family]
    pes = params.rows * params.cols
    use["DSP"] = pes if params.multiply else 0
    if params.requantize:
        use["DSP"] += ceil(params.acc_bits / piece) * ceil(params.requantize.multiplier_bits / piece)
    use["LUT4"] = BASE_LUTS + pes * luts_per_pe(params)
    return use


def check_fit(board: Board, params: EngineParams, logic_share: float = 0.9) -> dict[str, int]:
    """The estimate of :func:`estimate`; :class:`FitError` naming the first resource that does not fit."""
    use = estimate(board, params)
    limits = {name: board.resources.get(name, 0) for name in use}
    limits["LUT4"] = int(logic_share * board.resources["LUT4"])
    for name, used in use.items():
        if used > limits[name]:
            memories = ", ".join(f"{n} {w}x{d}" + (f" (x{c})" if c > 1 else "") for n, w, d, c in params.memories())
            raise FitError(f"{params.rows} x {params.cols} engine on {board.name} ({board.device}): needs about "
                           f"{used} {name} of {limits[name]} (memories: {memories}); use a smaller array or "
                           f"model, or a larger part")
    return use


# Arrays tried, largest first, when the user names none.
ARRAYS = ((16, 16), (8, 16), (8, 8), (4, 8), (4, 4), (2, 4), (2, 2), (1, 2), (1, 1))


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
    :class:`FitError` when none does."""
    arrays = [(r, c) for r, c in ARRAYS if rows in (None, r) and cols in (None, c)]
    if rows and cols and (rows, cols) not in arrays:
        arrays = [(rows, cols)]
    errors = []
    for r, c in arrays:
        for resident in ("all", "weights", "none"):
            params = EngineParams.for_model(model, r, c, resident=resident)
            try:
                return BoardEngine(params, resident, check_fit(board, params))
            except FitError as e:
                errors.append(str(e))
    raise FitError(f"the model does not fit {board.name} ({board.device}) with any array tried; "
                   f"the smallest: {errors[-1]}")
