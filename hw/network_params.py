"""Parameters of the whole-network core, checked, and sized from a compiled model (no Amaranth).

:class:`NetworkParams` fixes what a :class:`hw.network.NetworkCore` is generated with: its
layer engine (:class:`~hw.engine_params.EngineParams`, every layer's constants resident), its
vector unit (:class:`~hw.vector_params.VectorParams`), the value memory, the program memory and
the input table. The data memories follow the compiler's plan (:func:`compiler.network.plan_network`
with ``lanes`` = the array's rows): the engine's activation buffer is the plan's code memory.

Load targets of the core (a load beat's ``target``): the engine's (:data:`hw.engine_params.TARGETS`
of them, CONFIG .. ACTS, and :data:`~hw.engine_params.WIDE_WEIGHTS`), then :data:`PROGRAM`,
:data:`INPUT_TABLE`, the vector unit's (:data:`hw.vector_params.TARGETS`, from :data:`VECTOR_BASE`)
and :data:`IMAGE` (one pixel per beat into the image staging buffer, at ``channel * positions + y * W + x``;
accepted while the core runs, so that the next image arrives while this one is computed).

Program words (:func:`instruction`): ``op`` (:data:`OP_BITS`), ``reg`` (:data:`REG_FIELD_BITS`),
then a signed ``value`` of ``reg_bits``, lowest first. The ops:

- ``ENGINE_REG``: engine configuration register ``reg`` (:data:`~hw.engine_params.NETWORK_REGISTERS`) = value;
- ``VECTOR_REG``: operand register ``reg`` (:data:`OPERANDS`) = value;
- ``RUN_ENGINE`` / ``RUN_VECTOR``: start the engine (one layer) / the vector unit (one op with
  the operands), wait until it is done;
- ``OUTPUT``: send the ``channels`` values from ``src_a`` on the out stream;
- ``END``: the image is done; the core is idle again.

Every step writes all its registers before it runs (:func:`program_length`): a conv step every
engine register, a vector step :data:`~hw.vector_params.OP_REGISTERS` (a max-pool step also
:data:`~hw.vector_params.MAXPOOL_REGISTERS`, a subsample step those; an add step
:data:`~hw.vector_params.ADD_REGISTERS` too where an addition of the model is narrow, :func:`narrow_adds`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace

from compiler.graph import CompiledModel
from compiler.network import NetworkPlan, NetworkPlanError, plan_network

from .bands import layer_cycles, ring_depth
from .engine_params import (LANE_REGISTERS, NETWORK_REGISTERS, SPRAM_BLOCKS, SPRAM_DEPTH, WIDE_WEIGHTS,
                            WINDOW_REGISTERS, EngineParams, spram_blocks)
from .memories import memory_bits
from .protocol import BUILD_BITS, LinkMode, whole_bytes
from .vector_params import ADD_REGISTERS, MAXPOOL_REGISTERS, OP_REGISTERS, VectorParams
from .vector_params import TARGETS as VECTOR_TARGETS

ENGINE_TARGETS = WIDE_WEIGHTS + 1
PROGRAM, INPUT_TABLE = ENGINE_TARGETS, ENGINE_TARGETS + 1
VECTOR_BASE = ENGINE_TARGETS + 2
IMAGE = VECTOR_BASE + len(VECTOR_TARGETS)
NETWORK_TARGETS = IMAGE + 1
NETWORK_TARGET_BITS = (NETWORK_TARGETS - 1).bit_length()

OPS = ("END", "ENGINE_REG", "VECTOR_REG", "RUN_ENGINE", "RUN_VECTOR", "OUTPUT")
END, ENGINE_REG, VECTOR_REG, RUN_ENGINE, RUN_VECTOR, OUTPUT = range(len(OPS))
OP_BITS = (len(OPS) - 1).bit_length()
# Operand registers: the vector unit's, also used by OUTPUT (src_a, channels); a max- or average-pool or
# subsample step also writes the window's, an add step where some addition is narrow its operand b's channels.
OPERANDS = OP_REGISTERS + MAXPOOL_REGISTERS + ADD_REGISTERS
REG_FIELD_BITS = (max(len(NETWORK_REGISTERS + LANE_REGISTERS + WINDOW_REGISTERS), len(OPERANDS)) - 1).bit_length()
PIXEL_BITS = 8


@dataclass(frozen=True)
class NetworkParams:
    """What a :class:`hw.network.NetworkCore` is generated with.

    - ``engine``: the layer engine (``act_depth`` = the code memory's depth);
    - ``vector``: the vector unit (activations, additions, pooling);
    - ``value_bits`` / ``value_depth``: the value memory (signed values, one per word);
    - ``program_depth``: program words; ``input_bits``: width of the input table's codes;
    - ``image_channels`` x ``image_positions``: the input image (the staging buffer holds one code per
      pixel); ``image_base``: the code-memory word where the plan puts the input tensor (channel
      ``c`` in lane ``c % rows`` of words ``image_base + (c // rows) * image_positions + p``).
    """

    engine: EngineParams
    vector: VectorParams
    value_bits: int
    value_depth: int
    program_depth: int
    input_bits: int
    image_channels: int
    image_positions: int
    image_base: int

    def __post_init__(self):
        if not isinstance(self.engine, EngineParams) or not isinstance(self.vector, VectorParams):
            raise TypeError("engine must be an EngineParams and vector a VectorParams")
        lent = self.vector.act_search_cycles if self.engine.fused_activations else 0
        if self.engine.lent_search != lent:
            raise ValueError(f"the engine waits {self.engine.lent_search} cycles more for a fused activation's code "
                             f"(lent_search), the vector unit's search takes {lent} (act_search_cycles)")
        for name, low, high in (("value_bits", 2, 64), ("value_depth", 1, 1 << 24), ("program_depth", 1, 1 << 16),
                                ("input_bits", 1, self.engine.abits), ("image_channels", 1, 1 << 16),
                                ("image_positions", 1, 1 << 24), ("image_base", 0, self.engine.act_depth - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        end = self.image_base + -(-self.image_channels // self.engine.rows) * self.image_positions
        if end > self.engine.act_depth:
            raise ValueError(f"an input image of {self.image_channels} x {self.image_positions} codes at word "
                             f"{self.image_base} ends at word {end}, past the code memory's {self.engine.act_depth}")

    @property
    def reg_bits(self) -> int:
        """Signed width of a program word's value: the engine's registers and every memory address."""
        largest = max(self.engine.act_depth, self.value_depth, self.vector.value_depth, self.vector.code_depth)
        return max(self.engine.reg_bits, largest.bit_length() + 2)

    @property
    def instruction_bits(self) -> int:
        """Bits of a program word: ``op``, ``reg``, then the signed ``reg_bits`` value."""
        return OP_BITS + REG_FIELD_BITS + self.reg_bits

    @property
    def image_depth(self) -> int:
        """Codes in the image staging buffer: one per pixel of the input image."""
        return self.image_channels * self.image_positions

    @property
    def target_bits(self) -> tuple[int, ...]:
        """Data bits of a load beat to each target, in target order (0: a target this core lacks)."""
        wide = self.engine.cols * self.engine.weight_bits if self.engine.wide_depth else 0
        return (self.engine.target_bits + (wide, self.instruction_bits, self.input_bits)
                + tuple(self.vector.target_bits) + (PIXEL_BITS,))

    @property
    def addr_bits(self) -> int:
        """Address width of a load beat: the engine's, the program's, the vector unit's constants, an IMAGE beat."""
        return max(self.engine.addr_bits, (self.program_depth - 1).bit_length(), PIXEL_BITS,
                   self.vector.load_addr_bits, (self.image_depth - 1).bit_length())

    @property
    def data_bits(self) -> int:
        """Data width of a load beat: the widest target's (:attr:`target_bits`)."""
        return max(self.target_bits)

    def memories(self) -> list[tuple[str, int, int, int]]:
        """Every on-chip memory as ``(name, width, depth, copies)``: the engine's, the vector unit's (``vector``
        before their names; with ``write_pairs`` its activation thresholds twice, a second unit reads them
        for the odd positions of a fused activation), values (``halves`` per word), program, input table,
        image."""
        halves = self.engine.halves
        vector = [(f"vector {name}", w, d, halves * c if name.startswith("act_") else c)
                  for name, w, d, c in self.vector.memories()]
        return self.engine.memories() + vector + [
            ("values", halves * self.value_bits, -(-self.value_depth // halves), 1),
            ("program", self.instruction_bits, self.program_depth, 1),
            ("input table", self.input_bits, 256, 1), ("image staging", self.input_bits, self.image_depth, 1)]

    @property
    def values_single_port(self) -> bool:
        """Whether one port serves the value memory: no step both reads and writes values (no addition, fused
        or not; steps read values, as pooling, activation and OUTPUT do, or write them, as a conv does), one
        value per word, at most :data:`~hw.engine_params.SPRAM_DEPTH` words: the UP5K keeps it in SPRAM."""
        return (not self.vector.adds and not self.engine.fused_adds and self.engine.halves == 1
                and self.value_depth <= SPRAM_DEPTH)

    @property
    def wide_weights_in_spram(self) -> bool:
        """Whether the engine's wide weights buffer goes into SPRAM where its weights buffer does: where the
        part's :data:`~hw.engine_params.SPRAM_BLOCKS` hold it beside the weights and the value memory
        (:attr:`values_single_port`). The UP5K's block RAMs are the scarcer."""
        e = self.engine
        blocks = [e.weight_spram_blocks, spram_blocks(e.cols * e.weight_bits, e.wide_depth)]
        if self.values_single_port:
            blocks.append(spram_blocks(self.value_bits))
        return e.wide_depth > 0 and sum(blocks) <= SPRAM_BLOCKS

    def memory_bits(self) -> dict[str, int]:
        """Bits of each on-chip memory of :meth:`memories` (all copies together)."""
        return memory_bits(self.memories())

    def describe(self) -> dict:
        """Every parameter as JSON-ready values; :meth:`from_dict` reads it back."""
        return {"engine": self.engine.describe(), "vector": self.vector.describe(),
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("engine", "vector")}}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkParams:
        """The parameters that :meth:`describe` wrote as ``d`` (each value checked as on construction)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"network parameters must be a dict with the keys {sorted(names)}, not {d!r}")
        return cls(**{**d, "engine": EngineParams.from_dict(d["engine"]),
                      "vector": VectorParams.from_dict(d["vector"])})

    @classmethod
    def for_model(cls, model: CompiledModel, rows: int, cols: int, write_pairs: bool | None = None,
                  multiply_cols: int = 0) -> NetworkParams:
        """The core that runs all of ``model`` on a ``rows`` x ``cols`` array, every constant resident;
        ``write_pairs`` (:class:`~hw.engine_params.EngineParams`): None (default) where they pay
        (:func:`pairs_pay`) and every tensor can be placed at an even word; ``multiply_cols``: the PEs of the first
        that many columns only multiply (0: all)."""
        engine = EngineParams.for_model(model, rows, cols, resident="all", split_weights=True, skip_groups=True,
                                        identity_tables=True, multiply_cols=multiply_cols)
        chosen = write_pairs is None
        if chosen:
            write_pairs = pairs_pay(model, engine)
        engine = replace(engine, write_pairs=write_pairs)
        try:
            plan = network_plan(model, engine)
        except NetworkPlanError:
            if not (chosen and write_pairs):
                raise
            # pairs put every tensor at an even word, which a concatenation's part may not start at: none then
            engine = replace(engine, write_pairs=False)
            plan = network_plan(model, engine)
        engine = replace(engine, act_depth=plan.memories["codes"].depth, out_depth=ring_depth(engine, model.convs),
                         fused_adds=any(step.fused_add for step in plan.steps),
                         fused_activations=any(step.fused_activate for step in plan.steps),
                         lane_starts=lane_starts(plan), windowed_adds=windowed_adds(plan))
        values = plan.memories["values"]
        image = plan.tensors[model.input.output]
        vector = VectorParams.for_model(model, lanes=rows, lane_bits=engine.abits, value_bits=values.width,
                                        value_depth=values.depth, code_depth=engine.act_depth,
                                        adds=any(step.kind == "add" for step in plan.steps),
                                        narrow_adds=narrow_adds(plan))
        if engine.fused_activations:
            engine = replace(engine, lent_search=vector.act_search_cycles)
        return cls(engine=engine, vector=vector, value_bits=values.width, value_depth=values.depth,
                   program_depth=program_length(plan), input_bits=model.input.bits,
                   image_channels=image.shape[0], image_positions=image.shape[1] * image.shape[2],
                   image_base=image.base)


def build_digest(params: EngineParams | NetworkParams) -> int:
    """The digest of the hardware parameters a bitstream is generated from (INFO's ``build``, link protocol
    version 7): the first :data:`~hw.protocol.BUILD_BITS` bits of the SHA-256 of the canonical JSON (sorted keys,
    no spaces) of the mode (``"layers"`` for an :class:`~hw.engine_params.EngineParams`, ``"network"`` for a
    :class:`NetworkParams`) and every parameter (``describe()``: widths, flags and every memory's depth), as a
    big-endian number (so that ``f"{digest:08x}"`` is the hash's first hex digits). The one function both sides
    call: the gateware generator (:class:`boards.top.AcceleratorCore`, :class:`boards.top.NetworkAcceleratorCore`)
    bakes it into INFO, the runners (:mod:`boards.runtime`) compare it with the parameters they use."""
    if isinstance(params, NetworkParams):
        mode = LinkMode.NETWORK
    elif isinstance(params, EngineParams):
        mode = LinkMode.LAYERS
    else:
        raise TypeError(f"params must be an EngineParams or a NetworkParams, not {params!r}")
    text = json.dumps({"mode": mode.label, "params": params.describe()}, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:whole_bytes(BUILD_BITS)], "big")


def lane_starts(plan: NetworkPlan) -> bool:
    """Whether a tensor of ``plan`` starts inside a code-memory word (a concatenation's part that a conv writes):
    the engine then needs register ``dst_lane`` (``EngineParams.lane_starts``)."""
    return any(t.lane for t in plan.tensors.values())


def windowed_adds(plan: NetworkPlan) -> bool:
    """Whether a conv step of ``plan`` fuses an addition whose operand b covers some channels of the sum only (an
    option-A shortcut): the engine then needs registers ``add_first``, ``add_end`` and ``add_shift``
    (``EngineParams.windowed_adds``)."""
    return any(step.fused_add and plan.tensors[step.inputs[1]].shape != plan.tensors[step.output].shape
               for step in plan.steps)


def program_length(plan: NetworkPlan) -> int:
    """Words of the program of ``plan``'s steps: every step after the input writes its registers
    (a max-pool, average-pool or subsample step the window's too; an add step its operand b's channels where an
    addition is narrow, :func:`narrow_adds`; a conv step ``dst_lane`` too where a part starts inside a word,
    :func:`lane_starts`, and the window registers where a fused addition is narrow, :func:`windowed_adds`), then
    runs; OUTPUT writes the op registers too; END closes
    (:func:`hw.network_program.program_words`)."""
    convs = sum(step.kind == "conv" for step in plan.steps)
    maxpools = sum(step.kind in ("maxpool", "avgpool", "subsample") for step in plan.steps)
    windowed = sum(step.kind == "add" for step in plan.steps) if narrow_adds(plan) else 0
    vector_steps = len(plan.steps) - 1 - convs
    registers = (len(NETWORK_REGISTERS) + len(LANE_REGISTERS) * lane_starts(plan)
                 + len(WINDOW_REGISTERS) * windowed_adds(plan))
    return (convs * (registers + 1) + (vector_steps + 1) * (len(OP_REGISTERS) + 1)
            + maxpools * len(MAXPOOL_REGISTERS) + windowed * len(ADD_REGISTERS) + 1)


def narrow_adds(plan: NetworkPlan) -> bool:
    """Whether an add step of ``plan`` adds an operand b of fewer channels than a (an option-A shortcut): then
    every add step writes :data:`~hw.vector_params.ADD_REGISTERS` (the unit's ``narrow_adds``)."""
    return any(step.kind == "add" and len({plan.tensors[name].shape for name in step.inputs}) > 1
               for step in plan.steps)


def network_plan(model: CompiledModel, params: NetworkParams | EngineParams) -> NetworkPlan:
    """The compiler's plan for ``params``'s lanes (the array's rows), every tensor at a multiple of its
    memories' positions per word (2 with ``write_pairs``)."""
    engine = params.engine if isinstance(params, NetworkParams) else params
    return plan_network(model, lanes=engine.rows, align=engine.halves)


def pairs_pay(model: CompiledModel, engine: EngineParams, saving: float = 0.2) -> bool:
    """Whether writing back in pairs cuts ``model``'s engine cycles (:func:`hw.bands.layer_cycles`, each layer
    at its best band) by at least ``saving``: where the write-back bounds the layers, as for
    16-channel layers on a 16 x 16 array (CIFAR-10 ResNet-20: 28% fewer), not for 8 x 8 (2%), whose
    two output stages would cost block RAM for nothing."""
    def cycles(params: EngineParams) -> int:
        return sum(layer_cycles(params, node) for node in model.convs)

    return cycles(replace(engine, write_pairs=True)) <= (1 - saving) * cycles(replace(engine, write_pairs=False))
