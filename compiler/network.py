"""The whole network on the chip: the data memories and the step program of a compiled model.

With every layer on the FPGA (image in, logits out) the hardware walks a
program of *steps*, one per node of the :class:`~compiler.graph.CompiledModel`
in model order, with no host between layers. Its tensors live in two on-chip
data memories:

- the **code memory** holds activation codes, ``lanes`` codes per word
  (``lanes`` = the PE array's rows). A codes tensor ``(C, H, W)`` takes
  ``ceil(C / lanes) * H * W`` words: channel ``ch`` at position
  ``p = y * W + x`` is lane ``ch % lanes`` of word
  ``base + (ch // lanes) * H * W + p``. Word width: ``lanes`` times the widest
  code of any codes tensor (the 8-bit input and pooled codes set it in the
  models of :mod:`lcq_train.models`).
- the **value memory** holds signed integers, one per word: conv outputs with a
  requantize stage or none (raw accumulators), residual sums, the logits.
  Channel ``ch`` at position ``p`` is word ``base + ch * H * W + p``. Word
  width: the widest value tensor, ``signed_bits(bound)`` with the exact bounds
  that :meth:`~compiler.graph.CompiledModel.validate` propagates.

A channel concatenation has no step: its tensor is one region of the code memory, and each part is
placed inside it, at the word of its first channel, so the step that writes a part writes it into the
concatenation (``within``: the concatenation whose region holds a part). A part starts a word (its first
channel a multiple of ``lanes``; with ``align`` 2 at an even word), or inside one (``lane``: its first
channel's) where a conv writes it, from that lane on, and only its concatenation reads it (readers take a
tensor from lane 0 of its words); else :class:`NetworkPlanError` names the part and the lanes that fit.

Steps (``kind`` is the node's ``op``): ``input`` (pixels -> input table ->
codes), ``conv`` (codes -> codes with a thresholds stage, else values),
``activate`` (values -> codes), ``add`` (values + values -> values), ``pool``
(values ``(C, H, W)`` -> codes ``(C, 1, 1)``), ``avgpool`` (values -> codes, window by
window), ``maxpool`` (codes -> codes, word by
word: a window's words, each ``lanes`` codes of one channel group, give one word of maxima), ``subsample`` (values ->
values: an option-A shortcut, every stride-th row and column; its addition's operand covers some channels of the
sum). The logits, the last step's
values, are what the host reads back.

A residual addition right after the conv that computes one of its operands is
*fused* into that conv (:func:`fuse_additions`) when the conv's values are read
by nothing else and the other operand dies at the addition: the conv's
write-back adds each output to the other operand's element and writes the sum
in its place. That conv step (``fused_add``: the addition's name) reads the
codes and the other operand and writes the sum; its own values are never stored
(``stored`` false), and the addition has no step of its own. This halves the
residual stream's memory (one value tensor alive instead of two) and saves the
addition's pass over it. An option-A shortcut's operand, which covers some channels
of the sum only, is fused the same way where the conv writes the other operand: the
write-back adds it to those channels, read at its own base (the sum goes elsewhere,
so only the pass is saved). An activation right after a conv that writes values (the
conv's own, or a fused addition's sum) is *fused* into it too (:func:`fuse_activations`):
as the conv writes each value, it also writes the value's code through the activation's
thresholds (``fused_activate``: the activation's name; ``activated``: its codes tensor,
first written at the conv's step), and the activation has no step of its own: its pass
over the values (one cycle per element) is saved.

Each tensor is alive from the step that writes it to the last step that reads
it (the logits to the end). :func:`plan_network` places every tensor at a base
address of its memory (a multiple of ``align``: 2 where the hardware's memories hold two
positions per word; first fit, in order of definition or largest first,
whichever needs fewer words) so that no two tensors alive at one step overlap;
as the intervals are inclusive, a step's output never overlaps its own inputs,
with two exceptions: a residual sum is written *in place* over an operand of its shape that
this addition reads for the last time (the vector unit reads both operands of
an element before it writes the sum), and a subsampling's output over its input where that dies there (each
element is read before it and every later one are written, at or above their words). A region (a tensor and those
written in place over it or into it) holds each of its tensors' words only while that is alive. A memory's depth is
the high-water mark of its regions. A
graph the planned hardware cannot run (a conv on values, pooling or activating codes, max pooling
values, an add of codes) raises :class:`NetworkPlanError`.

Numpy only (no torch, no amaranth), like the rest of the compiler's file side.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .graph import (ActivateNode, AddNode, AvgPoolNode, CompiledModel, ConcatNode, ConvNode, InputNode, MaxPoolNode,
                    PoolNode, Requantize, SubsampleNode, TensorInfo, Thresholds, node_inputs, node_where, signed_bits)

# Largest number of code lanes (the PE array's rows); the same limit as hw.engine_params.MAX_ARRAY,
# stated here because the compiler does not import the hardware package.
MAX_LANES = 256

MEMORIES = ("codes", "values")
# Logical buffers (roles of tensors), in the order the report lists them, with the memory that holds them.
ROLES = {
    "activations": ("codes", "activation codes between layers (input codes included): the ping-pong"),
    "residual": ("values", "residual stream: requantized conv outputs and residual sums"),
    "accumulators": ("values", "raw conv accumulators (a conv without output stage, before pooling)"),
    "pooled": ("codes", "pooled vector: global average pooling's codes"),
    "logits": ("values", "logits, read back by the host"),
}


class NetworkPlanError(ValueError):
    """The planned hardware cannot run this graph: ``where`` (the node) and why."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Step:
    """One step of the program: node ``name`` of ``kind`` (input, conv, activate, add, pool, avgpool, maxpool), node
    ``index`` of the model; a conv with ``fused_add`` (the addition's name) also reads the addition's
    other operand (``inputs[1]``) and writes the sum (``output``); a conv with ``fused_activate`` (the
    activation's name) also writes the codes of its values (``output``) into ``activated``."""

    index: int
    name: str
    kind: str
    inputs: tuple[str, ...]
    output: str
    fused_add: str | None = None
    fused_activate: str | None = None
    activated: str | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The tensors the step writes: ``output``, then ``activated`` if any."""
        return (self.output,) if self.activated is None else (self.output, self.activated)

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "output": self.output, "fused_add": self.fused_add, "fused_activate": self.fused_activate,
                "activated": self.activated}


@dataclass
class TensorPlan:
    """Where a tensor lives: ``kind`` (its memory, "codes" or "values"), ``shape`` (C, H, W), element
    width ``bits``, ``words`` of its memory from ``base``, alive from step ``first`` to ``last``
    (inclusive), ``role`` (its logical buffer, :data:`ROLES`), for values ``bound`` (largest |x|), and
    for an addition's sum (or a subsampling's output) ``in_place``: the operand (input) whose region it overwrites
    from its first word (or None); for a part of a
    concatenation ``within``: the concatenation, whose region holds it (or None), and ``lane``: the lane of its
    first channel in its first word (0 but for a part that starts inside a word: its channel ``ch`` is where
    channel ``lane + ch`` of a tensor at ``base`` would be, :func:`code_address`). A conv's
    values that a fused addition consumes are not ``stored`` (no region; ``base`` is the sum's)."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    bits: int
    words: int
    first: int
    last: int
    role: str
    bound: int | None = None
    base: int = 0
    in_place: str | None = None
    within: str | None = None
    stored: bool = True
    lane: int = 0

    @property
    def end(self) -> int:
        """One past the last word."""
        return self.base + self.words

    def alive(self, step: int) -> bool:
        return self.first <= step <= self.last

    def overlaps_in_time(self, other: TensorPlan) -> bool:
        return self.first <= other.last and other.first <= self.last

    def to_dict(self) -> dict:
        return {"kind": self.kind, "role": self.role, "shape": list(self.shape), "bits": self.bits,
                "bound": self.bound, "words": self.words, "base": self.base, "first": self.first, "last": self.last,
                "in_place": self.in_place, "within": self.within, "stored": self.stored, "lane": self.lane}


@dataclass
class MemoryPlan:
    """One data memory: ``depth`` words (the high-water mark) of ``width`` bits; ``peak_live_words``:
    the most words alive at one step (no placement can need fewer than this)."""

    name: str
    depth: int
    width: int
    peak_live_words: int

    @property
    def bits(self) -> int:
        return self.depth * self.width

    def to_dict(self) -> dict:
        return {"depth": self.depth, "width": self.width, "bits": self.bits, "peak_live_words": self.peak_live_words}


@dataclass
class NetworkPlan:
    """Steps, tensors (by name, in order of definition) and the two memories of a network on the chip."""

    lanes: int
    steps: list[Step]
    tensors: dict[str, TensorPlan]
    memories: dict[str, MemoryPlan] = field(default_factory=dict)

    @property
    def total_bits(self) -> int:
        """On-chip bits of the data memories (code memory + value memory)."""
        return sum(m.bits for m in self.memories.values())

    def alive(self, step: int, memory: str | None = None) -> list[TensorPlan]:
        """Stored tensors alive at ``step`` (of ``memory`` only, if given)."""
        return [t for t in self.tensors.values()
                if t.stored and t.alive(step) and (memory is None or t.kind == memory)]

    def peak_words(self, select) -> int:
        """The most words, over steps, of the alive tensors for which ``select(tensor)`` holds (a sum
        written in place over its operand, and a part inside its concatenation, counted once)."""
        def holders(t: TensorPlan):                 # the concatenations whose regions hold ``t``, innermost first
            while t.within is not None:
                t = self.tensors[t.within]
                yield t.name

        def words(step: int) -> int:
            alive = self.alive(step)
            names = {t.name for t in alive}
            return sum(t.words for t in alive if select(t) and t.in_place not in names
                       and not any(h in names for h in holders(t)))
        return max((words(s.index) for s in self.steps), default=0)

    def buffers(self) -> dict[str, dict]:
        """The logical buffers (:data:`ROLES`): activation ping-pong, residual stream, raw accumulators,
        pooled vector, logits. Each: its memory, what it holds, its tensors, ``words`` (the most words of
        its tensors alive at one step), ``bits`` (those words at the memory's width) and
        ``largest_tensor_words``. Buffers share their memory; the memories' sizes are the plan's truth."""
        out = {}
        for role, (memory, what) in ROLES.items():
            names = [t.name for t in self.tensors.values() if t.role == role and t.stored]
            words = self.peak_words(lambda t, role=role: t.role == role)
            out[role] = {"memory": memory, "holds": what, "tensors": names, "words": words,
                         "bits": words * self.memories[memory].width,
                         "largest_tensor_words": max((self.tensors[n].words for n in names), default=0)}
        return out

    def describe(self) -> dict:
        """The plan as a JSON-ready dict."""
        return {"lanes": self.lanes, "total_bits": self.total_bits,
                "memories": {name: m.to_dict() for name, m in self.memories.items()},
                "buffers": self.buffers(),
                "steps": [s.to_dict() for s in self.steps],
                "tensors": {name: t.to_dict() for name, t in self.tensors.items()}}


def code_words(shape: tuple[int, int, int], lanes: int) -> int:
    """Words of the code memory a codes tensor ``(C, H, W)`` takes: ``ceil(C / lanes) * H * W``."""
    c, h, w = shape
    return -(-c // lanes) * h * w


def value_words(shape: tuple[int, int, int]) -> int:
    """Words of the value memory a value tensor takes: ``C * H * W``."""
    c, h, w = shape
    return c * h * w


def code_address(base: int, shape: tuple[int, int, int], lanes: int, ch: int, y: int, x: int,
                 lane: int = 0) -> tuple[int, int]:
    """(word, lane) of code ``[ch, y, x]`` of a codes tensor at ``base`` whose first channel is at ``lane``."""
    _, h, w = shape
    return base + ((lane + ch) // lanes) * h * w + y * w + x, (lane + ch) % lanes


def value_address(base: int, shape: tuple[int, int, int], ch: int, y: int, x: int) -> int:
    """Word of value ``[ch, y, x]`` of a value tensor at ``base``."""
    _, h, w = shape
    return base + (ch * h + y) * w + x


def _steps(model: CompiledModel) -> list[Step]:
    """The step program, refusing what the planned hardware cannot do (before the model's own rules, so
    that the error says what the hardware needs)."""
    if not isinstance(model.nodes, list):
        raise NetworkPlanError("model", "nodes must be a list")
    kinds: dict[str, str] = {}      # tensor -> "codes" | "values", as far as defined
    steps = []

    def need(where: str, node_kind: str, tensor: str, kind: str, why: str) -> None:
        have = kinds.get(tensor)
        if have is not None and have != kind:
            raise NetworkPlanError(where, f"{node_kind} reads {have} {tensor!r}, but {why}")

    for i, node in enumerate(model.nodes):
        where = node_where(i, node)
        if isinstance(node, InputNode):
            steps.append(Step(i, node.output, "input", (), node.output))
            kinds[node.output] = "codes"
        elif isinstance(node, ConvNode):
            need(where, "the conv", node.input, "codes", "a conv step reads activation codes from the code memory "
                 "(apply thresholds first: an activate step)")
            steps.append(Step(i, node.name, "conv", (node.input,), node.output))
            kinds[node.output] = "codes" if isinstance(node.stage, Thresholds) else "values"
        elif isinstance(node, ActivateNode):
            need(where, "the activate step", node.input, "values", "an activate step turns values of the value "
                 "memory into codes")
            steps.append(Step(i, node.name, "activate", (node.input,), node.output))
            kinds[node.output] = "codes"
        elif isinstance(node, AddNode):
            inputs = tuple(node.inputs) if isinstance(node.inputs, (tuple, list)) else ()
            for name in inputs:
                need(where, "the add", name, "values", "an add step sums two value tensors of the value memory "
                     "(codes cannot be added)")
            steps.append(Step(i, node.name, "add", inputs, node.output))
            kinds[node.output] = "values"
        elif isinstance(node, PoolNode):
            need(where, "the pool step", node.input, "values", "a pool step sums values of the value memory "
                 "(BN + ReLU on values; pooling of codes is not supported)")
            steps.append(Step(i, node.name, node.op, (node.input,), node.output))
            kinds[node.output] = "codes"
        elif isinstance(node, MaxPoolNode):
            need(where, "the maxpool step", node.input, "codes", "a maxpool step takes maxima of codes of the code "
                 "memory")
            steps.append(Step(i, node.name, "maxpool", (node.input,), node.output))
            kinds[node.output] = "codes"
        elif isinstance(node, SubsampleNode):
            need(where, "the subsample step", node.input, "values", "a subsample step copies values of the value "
                 "memory")
            steps.append(Step(i, node.name, "subsample", (node.input,), node.output))
            kinds[node.output] = "values"
        elif isinstance(node, ConcatNode):            # no step: its parts are written into its region
            for name in node.inputs if isinstance(node.inputs, (tuple, list)) else ():
                need(where, "the concatenation", name, "codes", "a concatenation joins codes of the code memory")
            kinds[node.output] = "codes"
        else:
            raise NetworkPlanError(where, f"a {type(node).__name__} is not a step the hardware runs")
    return steps


def _role(node, model: CompiledModel) -> str:
    if isinstance(node, ConcatNode):                  # its parts' (the first's)
        return _role(next(n for n in model.nodes if n.output == node.inputs[0]), model)
    if node.output == model.logits:
        return "logits"
    if isinstance(node, PoolNode) and not isinstance(node, AvgPoolNode):
        return "pooled"
    if isinstance(node, (InputNode, ActivateNode, AvgPoolNode, MaxPoolNode)):
        return "activations"
    if isinstance(node, ConvNode) and isinstance(node.stage, Thresholds):
        return "activations"
    if isinstance(node, (AddNode, SubsampleNode)) or (isinstance(node, ConvNode)
                                                       and isinstance(node.stage, Requantize)):
        return "residual"
    return "accumulators"


def _lowest_base(members: list[tuple[TensorPlan, int]], placed: list[TensorPlan], align: int) -> int:
    """The lowest base (a multiple of ``align``) for a region of ``members`` (each a tensor and its offset in the
    region) at which no member overlaps a ``placed`` tensor alive at one step with it."""
    candidates = sorted({0} | {max(0, -(-(p.end - offset) // align) * align) for t, offset in members
                               for p in placed if p.overlaps_in_time(t)})
    for base in candidates:
        if not any(p.overlaps_in_time(t) and p.base < base + offset + t.words and base + offset < p.end
                   for t, offset in members for p in placed):
            return base
    raise AssertionError("the highest candidate base is above every placed tensor")


def allocate_regions(tensors: list[TensorPlan], offsets: dict[str, tuple[str, int]], align: int = 1) -> int:
    """Place ``tensors`` (in order of definition) in one memory, every base a multiple of ``align``, each tensor that
    ``offsets`` names inside another's region, ``offsets[name] = (holder, words)`` ``words`` after the holder's base
    (a sum in place over its operand at 0, a subsampling's output over its input at 0, a part of a concatenation at
    its first channel's word), so that no two tensors of different regions alive at one step overlap: each region
    at the lowest base where none of its tensors overlaps one placed before it while both are alive (a region's
    tensors each their own lifetime and words: a subsampling's output in place takes only its own words after its
    input dies), the regions in order of definition and largest first; keeps the shallower (definition order on a
    tie). Returns the depth."""
    regions: dict[str, list[tuple[TensorPlan, int]]] = {}
    for t in tensors:
        head, offset = t.name, 0
        while head in offsets:
            head, words = offsets[head]
            offset += words
        regions.setdefault(head, []).append((t, offset))
    extent = {head: max(offset + t.words for t, offset in members) for head, members in regions.items()}
    orders = [list(regions), sorted(regions, key=lambda head: -extent[head])]   # sorted() is stable
    best = None
    for order in orders:
        placed: list[TensorPlan] = []
        bases = {}
        for head in order:
            bases[head] = _lowest_base(regions[head], placed, align)
            placed += [replace(t, base=bases[head] + offset) for t, offset in regions[head]]
        depth = max((t.end for t in placed), default=0)
        if best is None or depth < best[0]:
            best = depth, bases
    for head, members in regions.items():
        for t, offset in members:
            t.base = best[1][head] + offset
    return best[0]


def concat_offsets(model: CompiledModel, tensors: dict[str, TensorPlan], lanes: int,
                   align: int) -> dict[str, tuple[str, int, int]]:
    """``{part: (concatenation, words, lane)}``: where each part of each concatenation of ``model`` starts in the
    concatenation's region (its first channel's word and lane; ``tensors`` planned, ``lanes`` codes a word, every
    base a multiple of ``align``). :class:`NetworkPlanError` where a part starts inside a word and is not
    :func:`lane_startable`, starts at a word not a multiple of ``align``, or is a part twice."""
    offsets: dict[str, tuple[str, int, int]] = {}
    for i, node in enumerate(model.nodes):
        if not isinstance(node, ConcatNode):
            continue
        where, (_, h, w) = node_where(i, node), tensors[node.output].shape
        channels = 0
        for k, part in enumerate(node.inputs):
            if part in offsets:
                raise NetworkPlanError(where, f"joins {part!r}, a part of {offsets[part][0]!r} already: a tensor is "
                                              "placed in one concatenation")
            inside = channels % lanes != 0 and not lane_startable(model, part)
            if inside or (channels // lanes * h * w) % align:
                fit = [n for n in range(1, MAX_LANES + 1) if all(sum(tensors[p].shape[0] for p in node.inputs[:j])
                                                                 % n == 0 for j in range(1, len(node.inputs)))]
                raise NetworkPlanError(where, f"part {k} ({part!r}) starts at channel {channels}, inside a word of "
                                       f"{lanes} codes" + (" (at an odd word: positions are written in pairs)"
                                                           if not inside else "")
                                       + "; on the chip a part starts a word, but for one that a conv writes and "
                                       "only its concatenation reads: build with rows (code lanes) dividing every "
                                       f"part's first channel ({', '.join(map(str, fit[-4:]))} would), or give the "
                                       "parts multiples of the rows as channels")
            offsets[part] = (node.output, channels // lanes * h * w, channels % lanes)
            channels += tensors[part].shape[0]
    return offsets


def lane_startable(model: CompiledModel, part: str) -> bool:
    """Whether concatenation part ``part`` of ``model`` may start inside a code-memory word: a conv writes it (its
    write-back starts at any lane, register ``dst_lane``) and nothing but concatenations reads it (a step reads a
    tensor from lane 0 of its words)."""
    writer = next(n for n in model.nodes if n.output == part)
    readers = [n for n in model.nodes if part in node_inputs(n)]
    return isinstance(writer, ConvNode) and all(isinstance(n, ConcatNode) for n in readers)


def fuse_additions(steps: list[Step], model: CompiledModel, info: dict[str, TensorInfo]) -> list[Step]:
    """``steps`` with each addition folded into the conv step right before it, where the conv writes values
    (a requantize stage without ReLU, or none where the addition has no ReLU either) that only this
    addition reads and that are not the logits, and the addition's other operand is a different tensor
    that the addition reads last, of the sum's shape (so that the sum can take its place) or, an option-A
    shortcut, some of its channels (operand b of a narrow addition, the conv's values its operand a: the sum
    goes elsewhere, and the conv's write-back reads b at its own base; ``info``: the model's tensors,
    :meth:`~compiler.graph.CompiledModel.validate`). The addition's step is dropped."""
    readers: dict[str, int] = {}
    last_use: dict[str, int] = {}
    for step in steps:
        for name in step.inputs:
            readers[name] = readers.get(name, 0) + 1
            last_use[name] = step.index
    out: list[Step] = []
    for step in steps:
        conv = out[-1] if out else None
        if step.kind == "add" and conv is not None and conv.kind == "conv" and conv.fused_add is None:
            node = model.nodes[conv.index]
            others = [name for name in step.inputs if name != conv.output]
            add = model.nodes[step.index]
            stage_ok = (isinstance(node.stage, Requantize) and not node.stage.relu) or (node.stage is None
                                                                                       and not add.relu)
            wide_side = not add.narrow(info) or conv.output == add.inputs[0]
            if (stage_ok and wide_side and conv.output in step.inputs and len(others) == 1
                    and readers.get(conv.output) == 1 and conv.output != model.logits
                    and others[0] != model.logits and last_use.get(others[0]) == step.index):
                out[-1] = replace(conv, inputs=(conv.inputs[0], others[0]), output=step.output, fused_add=step.name)
                continue
        out.append(step)
    return out


def fuse_activations(steps: list[Step], model: CompiledModel) -> list[Step]:
    """``steps`` with each activation folded into the conv step right before it, where that conv writes
    values (a requantize stage or none, with or without a fused addition) and the activation reads
    them: the conv writes the values and their codes. The activation's step is dropped."""
    out: list[Step] = []
    for step in steps:
        conv = out[-1] if out else None
        if (step.kind == "activate" and conv is not None and conv.kind == "conv" and conv.fused_activate is None
                and not isinstance(model.nodes[conv.index].stage, Thresholds) and step.inputs == (conv.output,)):
            out[-1] = replace(conv, fused_activate=step.name, activated=step.output)
            continue
        out.append(step)
    return out


def plan_network(model: CompiledModel, lanes: int = 1, align: int = 1) -> NetworkPlan:
    """The network plan of ``model`` for a code memory of ``lanes`` codes per word (1..MAX_LANES), every
    tensor at a multiple of ``align`` words (1 or 2: 2 for a core that writes positions in pairs, whose
    memories hold two positions per word).

    Raises :class:`NetworkPlanError` for a graph the planned hardware cannot run and
    :class:`~compiler.graph.ModelRuleError` for a model that breaks the compiled model's rules.
    """
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be an integer in 1..{MAX_LANES}, not {lanes!r}")
    if align not in (1, 2) or isinstance(align, bool):
        raise ValueError(f"align must be 1 or 2, not {align!r}")
    steps = _steps(model)
    info = model.validate()          # shapes, code bits and exact value bounds, as the compiler propagates them
    steps = fuse_activations(fuse_additions(steps, model, info), model)
    written = {name: step.index for step in steps for name in step.outputs}
    fused = {model.nodes[step.index].output: step for step in steps if step.fused_add}   # conv values -> step
    last_use = {}
    for step in steps:
        for name in step.inputs:
            last_use[name] = step.index
    end = steps[-1].index
    tensors: dict[str, TensorPlan] = {}
    for node in model.nodes:
        t = info[node.output]
        shape = tuple(int(d) for d in t.shape)
        if isinstance(node, ConcatNode):              # written by its parts' steps
            first = min(tensors[part].first for part in node.inputs)
        else:
            first = fused[node.output].index if node.output in fused else written[node.output]
        last = end if node.output == model.logits else last_use.get(node.output, first)
        if t.bits is not None:
            tensors[node.output] = TensorPlan(node.output, "codes", shape, t.bits, code_words(shape, lanes),
                                              first, last, _role(node, model))
        else:
            tensors[node.output] = TensorPlan(node.output, "values", shape, signed_bits(t.bound), value_words(shape),
                                              first, last, _role(node, model), bound=int(t.bound),
                                              stored=node.output not in fused)
    plan = NetworkPlan(lanes, steps, tensors)
    for node in model.nodes:
        if isinstance(node, AddNode):
            total = tensors[node.output]
            dying = [tensors[n] for n in node.inputs if tensors[n].stored and tensors[n].last == total.first
                     and n != model.logits and tensors[n].shape == total.shape]
            if dying:
                total.in_place = dying[0].name
        elif isinstance(node, SubsampleNode):
            made, source = tensors[node.output], tensors[node.input]
            if source.stored and source.last == made.first and node.input != model.logits:
                made.in_place = node.input
    offsets = {t.name: (t.in_place, 0) for t in tensors.values() if t.in_place is not None}
    for part, (concat, words, lane) in concat_offsets(model, tensors, lanes, align).items():
        t = tensors[part]
        t.within, t.lane, offsets[part] = concat, lane, (concat, words)
        t.words = code_words((t.shape[0] + lane, *t.shape[1:]), lanes)      # its words, from its first lane on
    for memory in MEMORIES:
        held = [t for t in tensors.values() if t.kind == memory and t.stored]
        depth = allocate_regions(held, offsets, align)
        bits = max((t.bits for t in tensors.values() if t.kind == memory), default=0)
        width = lanes * bits if memory == "codes" else bits
        plan.memories[memory] = MemoryPlan(memory, depth, width, plan.peak_words(lambda t, m=memory: t.kind == m))
    for name, step in fused.items():
        tensors[name].base = tensors[step.output].base
    return plan
