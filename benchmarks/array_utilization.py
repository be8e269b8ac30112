"""PE array utilization of the layer engine on every ResNet-20 layer, from simulation cycles.

For each array size (``--arrays``, R x C PEs) the engine is generated for the trained
CIFAR-10 ResNet-20 W3/A3 model (``EngineParams.for_model``, one layer's constants at a
time, not resident), built with the simulator (Verilator by default) and the whole model
runs on it for ``--images`` random images (fixed seed): every convolution and the FC layer
on the engine, the host-side nodes (input table, residual additions, pooling) in the
integer reference, every engine output compared bit for bit with the reference
(``sim.engine_run.simulate_model``; no stalls, no back-pressure).

Per layer and array it reports:

- ``compute``: simulated cycles from the clock edge that samples ``start`` to the first
  output word offered (``compute_cycles`` of ``sim.engine_run``: the array's work and the
  pipeline drain); ``cycles``: to the edge that accepts the last output word (compute plus
  read-back through the shared output stage); loading the layer's beats is not counted;
- ``bound`` = ceil(MACs / (R*C)), the cycles an array busy on every PE every cycle needs;
  ``compute / bound``; MACs per compute cycle; utilization = MACs / compute cycle / (R*C),
  and the same over all cycles (``utilization incl. read-back``);
- ``analytic``: the cycle counts of the formula in ``hw/engine.py``'s docstring: compute
  ``tiles * (R + positions + 1 + max(0, C + 2 - positions)) + R + C + 6`` with
  ``tiles = co_tiles * kernel^2 * groups``, ``groups = ceil(C_in / R)``,
  ``co_tiles = ceil(C_out / C)``, ``positions = H_out * W_out``; read-back ``(C + 9)`` per
  output word, ``out_words = co_tiles * positions``;
- ``fill`` = MACs / (tiles * positions * R * C): the share of PE slots of the streamed
  positions that do real work (below 1 where C_in is not a multiple of R or C_out not of C).
  Utilization = fill * (tiles * positions) / compute.

Network mode (``--mode network`` or ``both``): the whole ResNet-20 runs on the
:class:`hw.network.NetworkCore` (``sim.network_run``: engine in network mode, the vector unit
for activations, additions and pooling, every step's tensor compared with the reference). Per
convolution step it reports the step's cycles (from the end of the step before: the
sequencer's register writes and fetches included), MACs per cycle and utilization, and the
engine's cycles by the network-mode formula (``hw.bands.network_layer_cycles``): ``band`` (output
rows per band, as the program runs the layer), ``overlapped`` (each band of each channel tile
written back while the next computes), and with one band per channel tile and no overlap:
``compute`` (as above), ``write_back`` = ``co_tiles * positions * (C + 1)`` (with the write-back in
pairs, ``hw.bands.write_back_cycles``: ``positions / 2 * (C + 2)`` per channel tile) and ``serial`` =
compute + write-back + 3 (the engine before the overlap); ``overhead`` = step cycles - overlapped
(the sequencer's). The core is ``NetworkParams.for_model``'s: the write-back in pairs where it pays
(16 x 16). Totals: all steps, the convolution steps, and the 3x3 convolutions.

Run:  python benchmarks/array_utilization.py [--arrays 8x8,16x16] [--images 1] [--simulator verilator]
                                             [--mode layer|network|both]
Writes benchmarks/results/array_utilization.json (or --json-out; ``--mode network`` replaces only
its ``"network"`` key, ``--mode layer`` all but that key), builds under build/bench/, prints markdown
tables; exits 1 if any output differs from the reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from importlib.metadata import version
from math import ceil
from pathlib import Path

import numpy as np

from compiler import format as model_format
from hw.engine_params import EngineParams
from lcq_train.arguments import nonnegative_int, output_file
from lcq_train.atomic import save_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from result_fields import read_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq"


def parse_arrays(text: str) -> list[tuple[int, int]]:
    arrays = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not match or min(map(int, match.groups())) < 1:
            raise argparse.ArgumentTypeError(f"arrays must be RxC[,RxC...] (e.g. 8x8,16x16), not {item!r}")
        arrays.append((int(match[1]), int(match[2])))
    return arrays


def analytic(node, rows: int, cols: int) -> dict:
    """The engine's cycle formula (hw/engine.py docstring) for ``node`` on ``rows`` x ``cols``, by part."""
    from hw.engine import LayerEngine
    from hw.pe_words import ARRAY_PIPELINE

    c_in, _, _ = node.in_shape
    c_out, ho, wo = node.out_shape
    positions = ho * wo
    groups, co_tiles = ceil(c_in / rows), ceil(c_out / cols)
    tiles = co_tiles * node.kernel ** 2 * groups
    per_tile_overhead = rows + 1 + max(0, cols + 2 - positions)
    parts = {"stream": tiles * positions, "tile_overhead": tiles * per_tile_overhead,
             "drain": rows + cols + 4 + ARRAY_PIPELINE,
             "read_back": (cols + LayerEngine.STAGE_LATENCY + 3) * co_tiles * positions}
    return {"groups": groups, "co_tiles": co_tiles, "tiles": tiles, "positions": positions,
            "per_tile_overhead": per_tile_overhead, "parts": parts, "cycles": sum(parts.values()),
            "compute": sum(parts.values()) - parts["read_back"],
            "fill": node.macs / (tiles * positions * rows * cols)}


CYCLE_FORMULA = ("overlapped (hw.bands.network_layer_cycles): 1 + rows - load + max(k*T + units*W, units*k*T + W) "
                 "- gap + drain + L, k = kernel^2 * groups, units = co_tiles * bands, P = band_rows * out_w, "
                 "load = 0 if P >= rows + cols + 3 (the next tile's weights read while one issues) else rows, "
                 "T = load + P + 1 + gap, W = P * (cols + 1) (with write_pairs and an even P: P / 2 * (cols + 2)), "
                 "L = STAGE_LATENCY (+ FUSED_LATENCY with a fused activation); "
                 "serial: one band per channel tile, compute + co_tiles * W + STAGE_LATENCY")


def network_analytic(node, params, fused_activation: bool = False) -> dict:
    """The engine's network-mode cycle formula (``hw.bands.network_layer_cycles``) for ``node`` on the
    engine ``params`` (with an activation fused into its write-back or not): ``band_rows`` (the
    program's), ``overlapped`` (with them), and with one band per channel tile: ``compute``,
    ``write_back`` and ``serial`` (the write-back after the computation)."""
    from hw.bands import band_rows, network_layer_cycles, write_back_cycles
    from hw.engine import LayerEngine
    from hw.pe_words import ARRAY_PIPELINE

    rows, cols, tile = params.rows, params.cols, params.layer_cols(node)
    a = analytic(node, rows, tile)
    positions, co_tiles = a["positions"], a["co_tiles"]
    k = node.kernel ** 2 * a["groups"]
    gap = max(0, cols + 2 - positions)
    T, drain = rows + positions + 1 + gap, rows + cols + 4 + ARRAY_PIPELINE
    W = write_back_cycles(params, positions, tile)
    latency = LayerEngine.STAGE_LATENCY + (LayerEngine.FUSED_LATENCY if fused_activation else 0)
    compute = co_tiles * k * T - gap + drain
    band = band_rows(params, node)
    return {"band_rows": band, "compute": compute, "write_back": co_tiles * W,
            "serial": compute + co_tiles * W + latency, "overlapped": network_layer_cycles(params, node, band, latency)}


def geometry(node) -> str:
    c_in, h, w = node.in_shape
    c_out, ho, wo = node.out_shape
    size = f"{h}x{w}" if (h, w) == (ho, wo) else f"{h}x{w}->{ho}x{wo}"
    return f"{c_in}->{c_out}, {size}, {node.kernel}x{node.kernel}/{node.stride}"


def measure(sim: str, rows: int, cols: int, model, images: np.ndarray, build_root: Path) -> dict:
    from sim.engine_run import engine_build, simulate_model

    params = EngineParams.for_model(model, rows, cols)
    build_dir = build_root / f"resnet20-{rows}x{cols}-{sim}"
    t0 = time.perf_counter()
    built = engine_build(sim, params, build_dir)
    t1 = time.perf_counter()
    report = simulate_model(built, params, MODEL, model, images, build_dir / "run")
    t2 = time.perf_counter()
    rc, n = rows * cols, len(images)
    layers = []
    for r in report.layers:
        node = model.convs[r.index]
        a = analytic(node, rows, cols)
        bound = ceil(r.macs / rc)
        compute = r.compute_cycles
        layers.append({
            "index": r.index, "name": r.name, "kind": node.kind, "mac": node.mac, "geometry": geometry(node),
            "in_shape": list(node.in_shape), "out_shape": list(node.out_shape), "kernel": node.kernel,
            "stride": node.stride, "macs": r.macs, "compute_cycles": compute, "cycles": r.cycles,
            "lower_bound": bound, "compute_over_bound": round(compute / bound, 4),
            "cycles_over_bound": round(r.cycles / bound, 4), "macs_per_cycle": round(r.macs / compute, 4),
            "utilization": round(r.macs / compute / rc, 4), "utilization_with_read_back": round(r.macs / r.cycles / rc, 4),
            "analytic_compute_cycles": a["compute"] * n, "analytic_cycles": a["cycles"] * n, "analytic_parts": {k: v * n for k, v in a["parts"].items()},
            "tiles": a["tiles"], "groups": a["groups"], "co_tiles": a["co_tiles"], "positions": a["positions"],
            "per_tile_overhead": a["per_tile_overhead"], "fill": round(a["fill"], 4),
            "outputs": r.outputs, "mismatches": r.mismatches, "first_mismatch": r.first_mismatch,
        })
    macs, cycles = sum(x["macs"] for x in layers), sum(x["cycles"] for x in layers)
    compute = sum(x["compute_cycles"] for x in layers)
    total = {"macs": macs, "compute_cycles": compute, "cycles": cycles, "lower_bound": ceil(macs / rc),
             "compute_over_bound": round(compute / ceil(macs / rc), 4),
             "cycles_over_bound": round(cycles / ceil(macs / rc), 4), "macs_per_cycle": round(macs / compute, 4),
             "utilization": round(macs / compute / rc, 4), "utilization_with_read_back": round(macs / cycles / rc, 4),
             "analytic_compute_cycles": sum(x["analytic_compute_cycles"] for x in layers),
             "analytic_cycles": sum(x["analytic_cycles"] for x in layers),
             "mismatches": sum(x["mismatches"] for x in layers)}
    result = {"rows": rows, "cols": cols, "params": params.describe(), "build_dir": str(build_dir),
              "build_seconds": round(t1 - t0, 1), "run_seconds": round(t2 - t1, 1), "layers": layers, "total": total}
    print(f"  {rows}x{cols}: build {result['build_seconds']} s, simulation {result['run_seconds']} s, "
          f"{cycles:,} cycles, {total['mismatches']} mismatches", flush=True)
    return result


def measure_network(sim: str, rows: int, cols: int, model, images: np.ndarray, build_root: Path) -> dict:
    from hw.network_params import NetworkParams
    from sim.network_run import network_build, simulate_network

    params = NetworkParams.for_model(model, rows, cols)
    build_dir = build_root / f"resnet20-network-{rows}x{cols}-{sim}"
    t0 = time.perf_counter()
    built = network_build(sim, params, build_dir)
    t1 = time.perf_counter()
    report = simulate_network(built, params, MODEL, model, images, build_dir / "run")
    t2 = time.perf_counter()
    rc, n = rows * cols, len(images)
    convs = {node.name: node for node in model.convs}
    steps = []
    for s in report.steps:
        entry = {"index": s.index, "name": s.name, "kind": s.kind, "cycles": s.cycles // n, "macs": s.macs // n,
                 "mismatches": s.mismatches, "first_mismatch": s.first_mismatch}
        if s.kind == "conv":
            node = convs[s.name]
            a = network_analytic(node, params.engine, s.activated is not None)
            entry.update({"geometry": geometry(node), "macs_per_cycle": round(s.macs / s.cycles, 4),
                          "utilization": round(s.macs / s.cycles / rc, 4), "lower_bound": ceil(node.macs / rc),
                          "analytic": a, "overhead": s.cycles // n - a["overlapped"]})
        steps.append(entry)
    cycles = [im.cycles for im in report.images]
    macs = report.macs_per_image
    conv_cycles = sum(x["cycles"] for x in steps if x["kind"] == "conv")
    square = [x for x in steps if x["kind"] == "conv" and convs[x["name"]].kernel == 3]
    total = {"cycles_per_image": cycles, "macs_per_image": macs, "macs_per_cycle": round(macs / cycles[0], 4),
             "utilization": round(macs / cycles[0] / rc, 4), "conv_cycles": conv_cycles,
             "conv_utilization": round(macs / conv_cycles / rc, 4),
             "conv3x3_utilization": round(sum(x["macs"] for x in square) / sum(x["cycles"] for x in square) / rc, 4),
             "analytic_overlapped": sum(x["analytic"]["overlapped"] for x in steps if x["kind"] == "conv"),
             "analytic_serial": sum(x["analytic"]["serial"] for x in steps if x["kind"] == "conv"),
             "mismatches": report.mismatches}
    result = {"rows": rows, "cols": cols, "write_pairs": params.engine.write_pairs, "build_dir": str(build_dir),
              "build_seconds": round(t1 - t0, 1),
              "run_seconds": round(t2 - t1, 1), "steps": steps, "total": total}
    print(f"  network {rows}x{cols}: build {result['build_seconds']} s, simulation {result['run_seconds']} s, "
          f"{cycles[0]:,} cycles per image, {report.mismatches} mismatches", flush=True)
    return result


def network_table(result: dict) -> str:
    head = ["step", "layer", "geometry (C_in->C_out, HxW, k/s)", "MACs", "cycles", "MACs/cycle", "of R*C",
            "bound", "band", "overlapped", "compute", "write-back", "serial", "overhead", "mismatches"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in result["steps"]:
        if x["kind"] != "conv":
            continue
        a = x["analytic"]
        row = [str(x["index"]), x["name"], x["geometry"], f"{x['macs']:,}", f"{x['cycles']:,}",
               f"{x['macs_per_cycle']:.1f}", f"{100 * x['utilization']:.1f}%", f"{x['lower_bound']:,}",
               str(a["band_rows"]), f"{a['overlapped']:,}", f"{a['compute']:,}", f"{a['write_back']:,}",
               f"{a['serial']:,}",
               str(x["overhead"]), str(x["mismatches"])]
        lines.append("| " + " | ".join(row) + " |")
    t = result["total"]
    lines.append(f"\nper image: {t['cycles_per_image'][0]:,} cycles, {t['macs_per_cycle']:.2f} MACs/cycle "
                 f"({100 * t['utilization']:.1f}% of R*C); convolution steps {t['conv_cycles']:,} cycles "
                 f"({100 * t['conv_utilization']:.1f}%; the 3x3 ones {100 * t['conv3x3_utilization']:.1f}%), "
                 f"write-back in pairs: {'yes' if result['write_pairs'] else 'no'}, "
                 f"engine formula {t['analytic_overlapped']:,} "
                 f"(serial write-back: {t['analytic_serial']:,}); {t['mismatches']} mismatches")
    return "\n".join(lines)


def table(result: dict) -> str:
    head = ["#", "layer", "geometry (C_in->C_out, HxW, k/s)", "MACs", "compute", "analytic", "bound",
            "compute/bound", "MACs/cycle", "utilization", "fill", "tiles x (pos + ovh)", "cycles incl. read-back",
            "analytic", "util. incl. read-back", "mismatches"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in result["layers"]:
        row = [str(x["index"]), x["name"], x["geometry"], f"{x['macs']:,}", f"{x['compute_cycles']:,}",
               f"{x['analytic_compute_cycles']:,}", f"{x['lower_bound']:,}", f"{x['compute_over_bound']:.2f}",
               f"{x['macs_per_cycle']:.1f}", f"{100 * x['utilization']:.1f}%", f"{100 * x['fill']:.0f}%",
               f"{x['tiles']} x ({x['positions']} + {x['per_tile_overhead']})", f"{x['cycles']:,}",
               f"{x['analytic_cycles']:,}", f"{100 * x['utilization_with_read_back']:.1f}%", str(x["mismatches"])]
        lines.append("| " + " | ".join(row) + " |")
    t = result["total"]
    lines.append("| " + " | ".join(["", "**total**", "", f"{t['macs']:,}", f"{t['compute_cycles']:,}",
                                     f"{t['analytic_compute_cycles']:,}", f"{t['lower_bound']:,}",
                                     f"{t['compute_over_bound']:.2f}", f"{t['macs_per_cycle']:.1f}",
                                     f"{100 * t['utilization']:.1f}%", "", "", f"{t['cycles']:,}",
                                     f"{t['analytic_cycles']:,}", f"{100 * t['utilization_with_read_back']:.1f}%",
                                     str(t["mismatches"])]) + " |")
    return "\n".join(lines)


def earlier_results(path: str) -> dict | None:
    """The results file an earlier invocation wrote at ``path`` (None: there is none), whose layer or network half
    this one keeps; ValueError naming the file where it is not one of this script's (cut short, another
    benchmark's): rewriting it would drop or mix what it holds."""
    fix = "restore it, or give another --json-out (or delete it)"
    data = read_results(path, fix)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("benchmark") != "array_utilization":
        raise ValueError(f"{path} is not a results file of array_utilization.py (no \"benchmark\": "
                         f"\"array_utilization\"): {fix}")
    if not isinstance(data.get("network", {}), dict):
        raise ValueError(f"{path}: its \"network\" is not an object: {fix}")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arrays", type=parse_arrays, default="8x8,16x16", help="PE arrays RxC, comma-separated")
    parser.add_argument("--images", type=int, default=1, help="random images (uint8, fixed seed) to run")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random images")
    parser.add_argument("--simulator", choices=("icarus", "verilator"), default="verilator")
    parser.add_argument("--build-dir", default="build/bench", help="simulation builds go under this directory")
    parser.add_argument("--mode", choices=("layer", "network", "both"), default="both",
                        help="layer: per-layer engine runs; network: the whole network on the core")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "array_utilization.json"))
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, not {args.images}")
    try:
        earlier = earlier_results(args.json_out)      # (read before simulating: the half this run keeps)
    except ValueError as e:
        print(f"array_utilization.py: error: {e}", file=sys.stderr)
        return 2
    from sim.runner import unavailable_reason

    reason = unavailable_reason(args.simulator)
    if reason is not None:
        parser.error(f"cannot simulate with {args.simulator}: {reason}")

    model = model_format.load(MODEL)
    images = np.random.default_rng(args.seed).integers(0, 256, (args.images, *model.input.shape), dtype=np.uint8)
    load_before = os.getloadavg()
    start = time.perf_counter()
    print(f"{MODEL.name}: {len(model.convs)} layers on the engine, {args.images} image(s), {args.simulator}",
          flush=True)
    layer_mode = args.mode in ("layer", "both")
    results = [measure(args.simulator, rows, cols, model, images, Path(args.build_dir))
               for rows, cols in args.arrays] if layer_mode else []
    network = [measure_network(args.simulator, rows, cols, model, images, Path(args.build_dir))
               for rows, cols in args.arrays] if args.mode != "layer" else []
    seconds = round(time.perf_counter() - start, 1)
    for r in network:
        print(f"\nnetwork mode: {r['rows']} x {r['cols']} array, {args.simulator}\n\n{network_table(r)}")
        for x in r["steps"]:
            if x["first_mismatch"]:
                print(x["first_mismatch"])
    network_mismatches = sum(r["total"]["mismatches"] for r in network)
    network_entry = {"argv": sys.argv[1:], "seconds": seconds, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "git": git_state("hw", "sim"), "images": args.images, "seed": args.seed,
                     "simulator": args.simulator,
                     "cycle_formula": CYCLE_FORMULA,
                     "mismatches": network_mismatches, "results": network}
    if not layer_mode:
        document = earlier or {"benchmark": "array_utilization"}
        document["network"] = network_entry
        save_json(document, args.json_out)
        print(f"\n{len(network)} arrays in {seconds} s (network mode); {network_mismatches} values differ "
              f"from the integer reference; wrote the \"network\" key of {args.json_out}")
        return 0 if network_mismatches == 0 else 1

    for r in results:
        print(f"\n{r['rows']} x {r['cols']} array ({r['rows'] * r['cols']} PEs), {args.simulator}, "
              f"{args.images} image(s)\n\n{table(r)}")
        for x in r["layers"]:
            if x["first_mismatch"]:
                print(x["first_mismatch"])
    mismatches = sum(r["total"]["mismatches"] for r in results)
    if not network:  # --mode layer: the file's network results stay
        network_entry = earlier.get("network") if earlier else None
    options = dict(vars(args), arrays=[f"{rows}x{cols}" for rows, cols in args.arrays])
    save_json({
        "benchmark": "array_utilization", "argv": sys.argv[1:], "options": options, "seconds": seconds,
        "model": str(MODEL.relative_to(ROOT)),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {pkg: version(pkg) for pkg in ("amaranth", "cocotb", "verilator", "numpy")},
        "cycle_formula": "compute: tiles * (rows + positions + 1 + max(0, cols + 2 - positions)) + rows + cols + 6, "
                     "tiles = co_tiles * kernel^2 * groups; read-back: (cols + 9) * out_words",
    "git": git_state("hw", "sim"),
        "mismatches": mismatches + network_mismatches,
        "results": results,
        **({"network": network_entry} if network_entry else {}),
    }, args.json_out)
    print(f"\n{len(results)} arrays in {seconds} s; {mismatches} outputs differ from the integer reference; "
          f"wrote {args.json_out}")
    return 0 if mismatches + network_mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
