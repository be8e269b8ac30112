"""Run a compiled model on the generated whole-network core in cocotb and compare with the integer reference.

:func:`network_build` writes and builds the Verilog of a :class:`hw.network.NetworkCore`;
:func:`simulate_network` loads the model once, then runs images through it with only the
image going in (its pixels, loaded while the core is idle) and the logits coming out (``out``
stream), and compares
bit for bit with ``compiler.reference.run``: the logits received, and every step's output
tensor as the probe port showed it written to the data memories (read when the step ends,
not over the stream). It returns a :class:`NetworkReport`; its ``as_dict()`` is the
``lcq sim --json`` object of network mode::

    {"mode": "network", "simulator", "images", "rows", "cols", "write_pairs", "multiply_cols",
     "cycles_per_image": [...], "macs_per_image", "bytes_in_per_image", "bytes_out_per_image",
     "mismatches": total (logits and every step),
     "per_image": [{"image", "cycles", "macs_per_cycle", "utilization", "pixels", "out_beats",
                    "logit_mismatches", "mismatches"}],
     "logits": {"values": [[...] per image], "mismatches", "first_mismatch"},
     "steps": [{"index", "name", "kind", "output", "cycles", "macs", "macs_per_cycle", "utilization",
                "outputs", "mismatches", "first_mismatch"}]}

Cycles of an image run from the clock edge that samples ``start`` until ``busy`` falls. A step's
cycles and MACs are summed over the images; its cycles count from the end of the step before it
(from ``start`` for the first, the input: the staged image copied into the code memory) to its own
end, so program fetch and register writes count to the step they precede. MACs
are the convolutions' (``ConvNode.macs``); utilization is MACs per cycle over ``rows * cols``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler import reference
from compiler.graph import CompiledModel, ConvNode
from hw.bands import layer_cycles
from hw.network import NetworkCore, NetworkSignature
from hw.network_params import PIXEL_BITS, NetworkParams, network_plan
from hw.network_program import decode_logits

from .runner import Build, SimulationFailed, build_core, check_stalls, run_test, verilog_of

TOP, TESTBENCH = "network", "sim.network_cocotb"


@dataclass
class StepResult:
    index: int          # the node's index in model.nodes (the step's)
    name: str
    kind: str
    output: str
    activated: str | None = None    # the codes of a fused activation, also written by the step
    cycles: int = 0
    macs: int = 0
    outputs: int = 0
    mismatches: int = 0
    first_mismatch: str | None = None


@dataclass
class ImageResult:
    image: int
    cycles: int
    pixels: int
    out_beats: int
    logits: list[int]
    logit_mismatches: int = 0
    mismatches: int = 0         # logits and every step's tensor


@dataclass
class NetworkReport:
    simulator: str
    params: NetworkParams
    macs_per_image: int
    bytes_in_per_image: int
    bytes_out_per_image: int
    images: list[ImageResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    logit_mismatches: int = 0
    first_logit_mismatch: str | None = None

    @property
    def mismatches(self) -> int:
        return self.logit_mismatches + sum(s.mismatches for s in self.steps)

    @property
    def logits(self) -> np.ndarray:
        """(images, classes) int64 logits as the out stream sent them."""
        return np.array([im.logits for im in self.images], dtype=np.int64)

    def first_mismatch(self) -> str | None:
        return self.first_logit_mismatch or next((s.first_mismatch for s in self.steps if s.first_mismatch), None)

    def as_dict(self) -> dict:
        rc = self.params.engine.rows * self.params.engine.cols

        def rate(macs, cycles):
            per_cycle = macs / cycles if cycles else 0.0
            return round(per_cycle, 4), round(per_cycle / rc, 4)

        per_image = []
        for im in self.images:
            per_cycle, utilization = rate(self.macs_per_image, im.cycles)
            per_image.append({"image": im.image, "cycles": im.cycles, "macs_per_cycle": per_cycle,
                              "utilization": utilization, "pixels": im.pixels, "out_beats": im.out_beats,
                              "logit_mismatches": im.logit_mismatches, "mismatches": im.mismatches})
        steps = []
        for s in self.steps:
            per_cycle, utilization = rate(s.macs, s.cycles)
            steps.append({"index": s.index, "name": s.name, "kind": s.kind, "output": s.output,
                          "activated": s.activated, "cycles": s.cycles,
                          "macs": s.macs, "macs_per_cycle": per_cycle, "utilization": utilization,
                          "outputs": s.outputs, "mismatches": s.mismatches, "first_mismatch": s.first_mismatch})
        return {
            "mode": "network", "simulator": self.simulator, "images": len(self.images),
            "rows": self.params.engine.rows, "cols": self.params.engine.cols,
            "write_pairs": self.params.engine.write_pairs, "multiply_cols": self.params.engine.multiply_cols,
            "cycles_per_image": [im.cycles for im in self.images], "macs_per_image": self.macs_per_image,
            "bytes_in_per_image": self.bytes_in_per_image, "bytes_out_per_image": self.bytes_out_per_image,
            "mismatches": self.mismatches, "per_image": per_image,
            "logits": {"values": [im.logits for im in self.images], "mismatches": self.logit_mismatches,
                       "first_mismatch": self.first_logit_mismatch},
            "steps": steps,
        }


def network_build(sim: str, params: NetworkParams, build_dir, *, spram: bool = False) -> Build:
    """The whole-network core's Verilog for ``params``, built for ``sim`` in ``build_dir`` (Verilator
    reuses an unchanged build). ``spram``: its memories in iCE40 UltraPlus SPRAM as the UP5K build has them
    (:class:`hw.network.NetworkCore`), simulated with Yosys's model of ``SB_SPRAM256KA``."""
    build_dir = Path(build_dir)
    source = verilog_of(NetworkCore(params, spram=spram), TOP, build_dir)
    return build_core(sim, source, TOP, build_dir, spram)


def load_fields(params: NetworkParams) -> dict[str, int]:
    """Bit offset of each field (target, addr, data) of ``load__payload``."""
    layout = NetworkSignature(params).members["load"].signature.members["payload"].shape
    return {name: member.offset for name, member in layout}


def deadlines(model: CompiledModel, params: NetworkParams, stall: float, backpressure: float) -> tuple[int, int]:
    """(cycles an image may take, cycles the core may go without progress: no pixel taken, no memory
    written, no step ended, no logit sent): generous bounds that only a hung core or testbench exceeds. A conv
    writes nothing until its first band's accumulators are final, every reduction tile of the band issued: on a
    small array that can take most of the layer, so the second bound covers the longest layer's cycle model
    (:func:`hw.bands.layer_cycles`; a 3 x 3 conv of 16 channels over a 32 x 32 map on a 1 x 2 array
    writes its first value after about 150,000 cycles)."""
    slow = 1 / max(0.02, 1 - max(stall, backpressure))
    elements = sum(int(np.prod(t.shape)) for t in network_plan(model, params).tensors.values())
    macs = sum(node.macs for node in model.convs)
    per_output = max(node.macs // int(np.prod(node.out_shape)) for node in model.convs)   # C_in * K * K
    longest = max(layer_cycles(params.engine, node) for node in model.convs)
    per_image = 20_000 + 8 * macs // min(params.engine.rows, params.engine.cols) + 64 * elements
    return int(per_image * slow), int((20_000 + max(64 * per_output, 2 * longest)) * slow)


def describe(where: str, got: np.ndarray, expected: np.ndarray, image: int) -> tuple[int, str | None]:
    """(number of elements that differ, description of the first in (channel, y, x) order)."""
    bad = np.argwhere(got != expected)
    if not len(bad):
        return 0, None
    first = tuple(int(v) for v in bad[0])
    position = "" if len(first) < 3 else f", position (y={first[1]}, x={first[2]})"
    return len(bad), (f"{where}, image {image}: {len(bad)} of {got.size} differ; first at channel {first[0]}"
                      f"{position}: core {int(got[first])}, reference {int(expected[first])}")


def simulate_network(built: Build, params: NetworkParams, model_path, model: CompiledModel, images: np.ndarray,
                     test_dir, *, stall: float = 0.0, backpressure: float = 0.0, seed: int = 0,
                     expected: dict[str, np.ndarray] | None = None) -> NetworkReport:
    """Run ``images`` (uint8 ``(N, C, H, W)``) through ``model`` (saved at ``model_path``) on the
    core built for ``params`` (``NetworkParams.for_model(model, rows, cols, write_pairs, multiply_cols)``);
    compare with ``expected`` (default: ``compiler.reference.run(model, images)``)."""
    reference.check_images(model, images)
    check_stalls(stall, backpressure)
    pairs, multiply_cols = params.engine.write_pairs, params.engine.multiply_cols
    if params != NetworkParams.for_model(model, params.engine.rows, params.engine.cols, write_pairs=pairs,
                                         multiply_cols=multiply_cols):
        raise ValueError("params must be NetworkParams.for_model(model, rows, cols, write_pairs, multiply_cols): "
                         "the testbench recomputes them")
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results_file = test_dir / "network-results.json"
    results_file.unlink(missing_ok=True)
    max_cycles, idle_cycles = deadlines(model, params, stall, backpressure)
    data = {"model": str(Path(model_path).resolve()), "rows": params.engine.rows, "cols": params.engine.cols,
            "write_pairs": pairs, "multiply_cols": multiply_cols,
            "load_fields": load_fields(params), "images": np.asarray(images).tolist(), "stall": stall,
            "backpressure": backpressure, "seed": seed, "max_cycles": max_cycles, "idle_cycles": idle_cycles,
            "results": str(results_file.resolve())}
    run_test(built, TESTBENCH, test_dir, data=data)
    results = json.loads(results_file.read_text())
    return compare(params, model, images, results, built.sim,
                   reference.run(model, images) if expected is None else expected)


def compare(params: NetworkParams, model: CompiledModel, images: np.ndarray, results: list[dict], simulator: str,
            expected: dict[str, np.ndarray]) -> NetworkReport:
    """The report of the testbench's ``results`` against the reference tensors ``expected``."""
    plan = network_plan(model, params)
    classes = model.num_classes
    report = NetworkReport(simulator, params, sum(node.macs for node in model.convs),
                           int(np.prod(model.input.shape)) * PIXEL_BITS // 8,
                           classes * -(-params.value_bits // 8))
    report.steps = [StepResult(s.index, s.name, s.kind, s.output, s.activated) for s in plan.steps]
    timed = [len(result["step_cycles"]) for result in results]
    if timed != [len(report.steps)] * len(images):
        raise SimulationFailed(f"the testbench returned results for {len(results)} of {len(images)} images, with the "
                               f"cycles of {timed} of the {len(report.steps)} steps: the rest were not compared")
    for n, result in enumerate(results):
        logits = decode_logits(params, result["logits"], classes)
        want = np.asarray(expected[model.logits][n]).reshape(-1)
        wrong, first = describe("logits (out stream)", logits, want, n)
        image = ImageResult(n, result["cycles"], result["pixels"], result["out_beats"], logits.tolist(), wrong, wrong)
        report.logit_mismatches += wrong
        report.first_logit_mismatch = report.first_logit_mismatch or first
        previous = 0
        for step, end in zip(report.steps, result["step_cycles"]):
            step.cycles += end - previous
            previous = end
            node = model.nodes[step.index]
            step.macs += node.macs if isinstance(node, ConvNode) else 0
            for output in (step.output, step.activated) if step.activated else (step.output,):
                got = np.asarray(result["probes"][output], dtype=np.int64)
                want = np.asarray(expected[output][n])
                step.outputs += want.size
                if got.shape != want.shape:
                    wrong, first = want.size, (f"step {step.index} ({step.kind} {step.name}), image {n}: probed "
                                               f"{output} has shape {list(got.shape)}, reference {list(want.shape)}")
                else:
                    wrong, first = describe(f"step {step.index} ({step.kind} {step.name}) output {output}",
                                            got, want, n)
                step.mismatches += wrong
                step.first_mismatch = step.first_mismatch or first
                image.mismatches += wrong
        report.images.append(image)
    return report
