"""Run compiled layers on the generated layer engine in cocotb and compare with the integer reference.

- :func:`simulate_model`: a compiled model image by image, some or all of its
  convolutions on the engine (the others, and every host-side node, in the reference);
  every engine output is compared bit for bit with ``compiler.reference.run``.
- :func:`simulate_jobs`: explicit :class:`hw.program.Job` lists (tests of single layers).

Both return a :class:`SimReport`; its ``as_dict()`` is the ``lcq sim --json`` object:
``{"mismatches": total, "layers": [{"index", "name", "cycles", "macs", "mismatches", ...}]}``.
Layers are numbered as ``model.convs`` (the rows of ``lcq report``); cycles and MACs of a
layer are summed over the images; ``compute_cycles`` leave out the read-back, and MACs
per cycle and utilization are computed from them. The first wrong output of a
layer is described by layer, channel, position and the cycle its word was read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler import reference
from compiler.graph import CompiledModel, ConvNode
from hw.engine import EngineSignature, LayerEngine
from hw.engine_params import EngineParams
from hw.program import Job, decode_outputs

from .runner import Build, SimulationFailed, build_core, check_stalls, run_test, verilog_of

TOP, TESTBENCH = "engine", "sim.engine_cocotb"


@dataclass
class LayerResult:
    index: int
    name: str
    cycles: int = 0
    compute_cycles: int = 0
    macs: int = 0
    outputs: int = 0
    mismatches: int = 0
    first_mismatch: str | None = None

    @property
    def macs_per_cycle(self) -> float:
        """MACs per computing cycle (read-back excluded: it is paced by the host link)."""
        return self.macs / self.compute_cycles if self.compute_cycles else 0.0


@dataclass
class SimReport:
    simulator: str
    params: EngineParams
    images: int
    layers: list[LayerResult] = field(default_factory=list)
    logits: np.ndarray | None = None   # (images, classes) from the engine, where its last layer ran there

    @property
    def mismatches(self) -> int:
        return sum(layer.mismatches for layer in self.layers)

    def as_dict(self) -> dict:
        rc = self.params.rows * self.params.cols
        return {
            "simulator": self.simulator, "images": self.images, "rows": self.params.rows, "cols": self.params.cols,
            "mismatches": self.mismatches,
            "layers": [{"index": r.index, "name": r.name, "cycles": r.cycles, "compute_cycles": r.compute_cycles,
                        "macs": r.macs,
                        "macs_per_cycle": round(r.macs_per_cycle, 4),
                        "utilization": round(r.macs_per_cycle / rc, 4),
                        "outputs": r.outputs, "mismatches": r.mismatches, "first_mismatch": r.first_mismatch}
                       for r in self.layers],
        }


def engine_build(sim: str, params: EngineParams, build_dir, *, spram: bool = False) -> Build:
    """The engine's Verilog for ``params``, built for ``sim`` in ``build_dir`` (Verilator reuses an unchanged build).
    ``spram``: the weights buffer in iCE40 UltraPlus SPRAM, as the UP5K build has it, simulated with
    Yosys's model of ``SB_SPRAM256KA`` (:func:`sim.runner.ice40_cells_sim`)."""
    build_dir = Path(build_dir)
    source = verilog_of(LayerEngine(params, spram=spram), TOP, build_dir)
    return build_core(sim, source, TOP, build_dir, spram)


def compare(params: EngineParams, node: ConvNode, index: int, result: dict, expected: np.ndarray,
            image: int) -> tuple[int, str | None]:
    """(number of wrong outputs, description of the first) of one engine run against ``expected`` ``(C, Ho, Wo)``."""
    got = decode_outputs(params, node, result["words"])
    bad = np.argwhere(got != expected)
    if not len(bad):
        return 0, None
    _, ho, wo = node.out_shape
    word = lambda ch, y, x: (ch // params.cols) * ho * wo + y * wo + x  # noqa: E731
    ch, y, x = min(bad.tolist(), key=lambda b: word(*b))
    return len(bad), (f"layer {index} ({node.name}), image {image}: {len(bad)} of {got.size} outputs differ; first "
                      f"at channel {ch}, position (y={y}, x={x}): engine {int(got[ch, y, x])}, reference "
                      f"{int(expected[ch, y, x])} (output word {word(ch, y, x)}, read at cycle "
                      f"{result['word_cycles'][word(ch, y, x)]} after start)")


def _run(built: Build, test_dir, params: EngineParams, work: dict, stall: float, backpressure: float,
         seed: int) -> list:
    check_stalls(stall, backpressure)
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "engine-results.json"
    results.unlink(missing_ok=True)
    load_fields = {name: member.offset for name, member in EngineSignature.for_params(params).load_layout}
    data = {"params": params.describe(), "load_fields": load_fields, "stall": stall, "backpressure": backpressure,
            "seed": seed, "results": str(results.resolve()), **work}
    run_test(built, TESTBENCH, test_dir, data=data)
    return json.loads(results.read_text())


def simulate_jobs(built: Build, params: EngineParams, jobs: list[Job], expected: list[np.ndarray], test_dir, *,
                  stall: float = 0.0, backpressure: float = 0.0, seed: int = 0) -> SimReport:
    """Run ``jobs`` (each job's node, beats and output count) and compare job i with ``expected[i]``."""
    work = {"jobs": [{"index": j.index, "beats": j.beats, "out_words": j.out_words, "macs": j.node.macs}
                     for j in jobs]}
    results = _run(built, test_dir, params, work, stall, backpressure, seed)[0]
    if [result["index"] for result in results] != [job.index for job in jobs] or len(expected) != len(jobs):
        raise SimulationFailed(f"the testbench returned results for layers {[r['index'] for r in results]}, not "
                               f"{[job.index for job in jobs]} ({len(expected)} expected outputs): they were not "
                               "all compared")
    report = SimReport(built.sim, params, 1)
    for job, result, want in zip(jobs, results, expected):
        layer = LayerResult(job.index, job.node.name, result["cycles"], result["compute_cycles"], job.node.macs,
                            want.size)
        layer.mismatches, layer.first_mismatch = compare(params, job.node, job.index, result, want, 0)
        report.layers.append(layer)
    return report


def simulate_model(built: Build, params: EngineParams, model_path, model: CompiledModel, images: np.ndarray,
                   test_dir, *, on_engine: set[int] | None = None, upto: int | None = None, resident: str = "none",
                   stall: float = 0.0, backpressure: float = 0.0, seed: int = 0) -> SimReport:
    """Run ``images`` (uint8 ``(N, C, H, W)``) through ``model`` with the convolutions in ``on_engine``
    (node indices; default all) on the engine, up to node ``upto``; compare with the reference.
    ``resident``: the engine (sized so) is loaded with every layer's weights (``"weights"``) or constants
    (``"all"``) once, before the images."""
    reference.check_images(model, images)
    work = {"model": {"path": str(Path(model_path).resolve()), "images": images.tolist(),
                      "on_engine": None if on_engine is None else sorted(on_engine), "upto": upto,
                      "resident": resident}}
    results = _run(built, test_dir, params, work, stall, backpressure, seed)
    runs = [i for i, n in enumerate(model.nodes[:None if upto is None else upto + 1])
            if isinstance(n, ConvNode) and (on_engine is None or i in on_engine)]
    got = [[result["index"] for result in per_image] for per_image in results]
    wrong = next((image for image, layers in enumerate(got) if layers != runs), None)
    if not runs or len(got) != len(images) or wrong is not None:
        raise SimulationFailed(f"the testbench returned results for {len(got)} of {len(images)} images"
                               + ("" if wrong is None else f", for layers {got[wrong]} of image {wrong}")
                               + f", not for layers {runs} of each: it skipped some, and they were not compared")
    expected = reference.run(model, images)
    report = SimReport(built.sim, params, len(images))
    layers: dict[int, LayerResult] = {}
    position = {id(n): i for i, n in enumerate(model.convs)}
    for image, per_image in enumerate(results):
        for result in per_image:
            node = model.nodes[result["index"]]
            index = position[id(node)]
            layer = layers.setdefault(index, LayerResult(index, node.name))
            layer.cycles += result["cycles"]
            layer.compute_cycles += result["compute_cycles"]
            layer.macs += node.macs
            layer.outputs += int(np.prod(node.out_shape))
            if node.output == model.logits:
                if report.logits is None:
                    report.logits = np.zeros((len(images), model.num_classes), dtype=np.int64)
                report.logits[image] = decode_outputs(params, node, result["words"]).reshape(-1)
            wrong, first = compare(params, node, index, result, expected[node.output][image], image)
            layer.mismatches += wrong
            layer.first_mismatch = layer.first_mismatch or first
    report.layers = [layers[i] for i in sorted(layers)]
    return report
