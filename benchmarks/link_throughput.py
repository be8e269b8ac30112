"""Images per second over the host link, from a cycle-level simulation of each board's design.

For each board (``--boards``) and model (``--models``: the digits CNN and the CIFAR-10 ResNet-20
of ``tests/data``) the board's accelerator core is generated as ``lcq build`` would build it,
built with Verilator, and the unmodified host runtime (what ``lcq run`` uses) classifies
``--images`` test images through it (``sim/board_cocotb.py``): digits test images for a model
trained on digits (8x8), CIFAR-10 test images (``--data-dir``) for one taking 3x32x32 images.

``--mode network`` (the default, as ``lcq build``'s): the whole-network core
(``boards.top.NetworkAcceleratorCore``, array ``boards.fit.network_for_board``) driven by
``NetworkRunner``: constants and program loaded once, then per image its pixels (sent while the
image before computes), RESULT (the image before's logits) and RUN (start it). ``--mode layers``:
the layer engine (``boards.top.AcceleratorCore``, engine ``boards.fit.engine_for_board``) driven by
``BoardRunner``, layer by layer. A model that does not
fit a board is recorded as such (``"fits": false`` and the fit error) and, when ``--rows`` and
``--cols`` are given, simulated anyway at that array (network mode).

Bytes move one each way every ``byte_cycles = clock / baud * 10`` cycles, as the board's 8N1 UART
at its rate moves them, so the simulated cycles are the device's time: line time and engine time
together, the host's own time and USB latency left out. Every logit is compared with the integer
reference (``compiler.reference.predict``), and the bytes per image with the protocol's count
(``boards.traffic.network_image_traffic`` / ``image_traffic``); exit 1 on a difference.

Per board and model it reports the clock (the board's default) and baud rate, loading the
resident constants (bytes, requests; simulated a byte per cycle, its ms computed as bytes x 10 /
baud), and per image: bytes to and from the device, requests (each answered before the next),
device cycles, ms and images per second (``images_per_s``: in the steady state, as a long stream
of images runs, where the link's and the core's time overlap in network mode: over the cycles from
the first image's logits to the last but one's, each interval holding a whole round of requests,
the next image's LOAD included (the last image has no next); fewer than 3 images: the average over
the run, the first image's link and the last one's compute not overlapped), beside two bounds:
the link's (line rate baud / 10 bytes/s over the bytes per image both ways, as the protocol is
request-reply) and the array's (clock over MACs per image / (rows x cols)), and the fraction of the lower bound reached; ``with latency``: the
images per second with ``--round-trip-ms`` per request (a USB-serial bridge answers in about 1 ms
at best: FTDI's latency timer set to 1 ms).

Run:  python benchmarks/link_throughput.py [--mode network|layers] [--boards icebreaker,ulx3s-85f,orangecrab-25f]
          [--models FILE ...] [--images 3] [--rows R --cols C] [--data-dir DIR]
Writes benchmarks/results/link_throughput.json (or --json-out), builds under build/bench/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from boards.boards import get_board, uart_baud
from compiler import format as model_format
from compiler.reference import predict
from lcq_train.arguments import nonnegative_float, output_file
from lcq_train.atomic import save_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from repeats import refuse_repeats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = [ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq",
          ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq"]
DATA_DIR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"


def bounds(clock_hz: float, baud: float, bytes_to_device: float, bytes_from_device: float, macs: int, rows: int,
           cols: int, images_per_s: float | None = None) -> dict:
    """The images per second the link allows (line rate ``baud / 10`` bytes/s over the bytes of one image both
    ways: request-reply, so the two directions do not overlap) and the array does (``clock_hz`` over the
    cycles of ``macs`` on ``rows x cols`` PEs), and ``images_per_s`` as a fraction of the lower of the two."""
    link = baud / 10 / (bytes_to_device + bytes_from_device)
    compute = clock_hz / (macs / (rows * cols))
    out = {"link_bound_images_per_s": link, "compute_bound_images_per_s": compute}
    if images_per_s is not None:
        out["fraction_of_lower_bound"] = images_per_s / min(link, compute)
    return out


def dataset_of(model) -> str:
    """The test set to feed ``model``: the dataset it was trained on, else by its input shape."""
    source = getattr(model, "source", None)
    if isinstance(source, dict) and source.get("dataset"):
        return source["dataset"]
    shape = tuple(model.input.shape)
    if shape == (3, 32, 32):
        return "cifar10"
    if shape == (1, 8, 8):
        return "digits"
    raise ValueError(f"no test images known for a model taking {shape} images")


def test_images(model, n: int, data_dir: str | None, cache: dict) -> np.ndarray:
    """The first ``n`` test images (uint8, N x C x H x W) of ``model``'s dataset (``data_dir`` for CIFAR-10)."""
    from lcq_train.data import load_dataset

    name = dataset_of(model)
    if name not in cache:
        cache[name] = load_dataset(name, None if name == "digits" else data_dir).test_x[:n].numpy()
    return cache[name]


def choose(model, board, mode: str, rows: int | None, cols: int | None) -> dict:
    """The core ``lcq build`` would build for ``model`` on ``board`` in ``mode`` (at ``rows`` x ``cols`` if
    given): ``{"params", "resident", "fits", "fit_error"}``; ``params`` None when it does not fit and no
    array was given to simulate anyway."""
    from boards.fit import FitError, engine_for_board, network_for_board
    from hw.network_params import NetworkParams

    try:
        if mode == "network":
            return {"params": network_for_board(model, board, rows, cols).params, "resident": None, "fits": True}
        engine = engine_for_board(model, board, rows, cols)
        return {"params": engine.params, "resident": engine.resident, "fits": True}
    except FitError as e:
        params = NetworkParams.for_model(model, rows, cols) if mode == "network" and rows and cols else None
        return {"params": params, "resident": None, "fits": False, "fit_error": str(e)}


def measure(board_name: str, mode: str, model_path: Path, model, images: np.ndarray, build_root: Path,
            rows: int | None, cols: int | None) -> dict:
    from boards.boards import LINK_PAYLOAD
    from boards.top import AcceleratorCore, NetworkAcceleratorCore
    from boards.traffic import image_traffic, network_image_traffic
    from sim.board_cocotb import READ_TIMEOUT_CYCLES
    from sim.runner import build, run_test, verilog_of

    board = get_board(board_name)
    clk_hz, payload = board.default_mhz * 1e6, LINK_PAYLOAD[board.family]
    baud = uart_baud(board, clk_hz)
    byte_cycles = round(clk_hz * 10 / baud)
    macs = sum(node.macs for node in model.convs)
    result = {"board": board.name, "model": model_path.name, "mode": mode, "clock_mhz": board.default_mhz,
              "baud": baud, "byte_cycles": byte_cycles, "max_payload": payload, "macs_per_image": macs}
    chosen = choose(model, board, mode, rows, cols)
    result["fits"] = chosen["fits"]
    if not chosen["fits"]:
        result["fit_error"] = chosen["fit_error"]
    params = chosen["params"]
    if params is None:
        print(f"  {board.name}, {model_path.name}: does not fit ({chosen['fit_error']}); not simulated", flush=True)
        return {**result, "simulated": False}
    engine = params.engine if mode == "network" else params
    rows_, cols_ = engine.rows, engine.cols
    result.update(rows=rows_, cols=cols_)
    compute_cycles = math.ceil(macs / (rows_ * cols_))
    data = {"model": str(model_path), "images": images.tolist(), "byte_cycles": byte_cycles}
    if mode == "network":
        name = f"link-network-{model_path.stem}-{board.name}-{rows_}x{cols_}"
        core = NetworkAcceleratorCore(params, model.num_classes, timeout_cycles=20 * byte_cycles, max_payload=payload)
        data.update(mode="network", rows=rows_, cols=cols_, params=params.describe())     # (multiply_cols too)
        traffic = network_image_traffic(model, params, payload)
    else:
        resident = chosen["resident"]
        result["resident"] = resident
        name = f"link-{model_path.stem}-{board.name}-{rows_}x{cols_}"
        core = AcceleratorCore(params, timeout_cycles=20 * byte_cycles, max_payload=payload)
        data.update(params=params.describe(), resident=resident)
        traffic = image_traffic(model, params, resident, payload)
    # A RUN may compute for a while before its first reply byte: the testbench waits (with margin) 16 times
    # the array's bound on cycles beyond its default.
    data["read_timeout_cycles"] = result["read_timeout_cycles"] = READ_TIMEOUT_CYCLES + 16 * compute_cycles
    build_dir = build_root / name
    results = build_dir / "run" / "results.json"
    data["results"] = str(results)
    t0 = time.perf_counter()
    built = build("verilator", [verilog_of(core, "board", build_dir)], "board", build_dir)
    t1 = time.perf_counter()
    run_test(built, "sim.board_cocotb", build_dir / "run", data=data)
    t2 = time.perf_counter()
    out = json.loads(results.read_text())
    differ = int((np.array(out["logits"]) != predict(model, images)).any(axis=1).sum())
    n = len(images)
    loading, run = out["loading"], out["images"]
    per_image = {k: run[k] / n for k in ("bytes_to_device", "bytes_from_device", "requests", "cycles")}
    per_image = {k: int(v) if float(v).is_integer() else v for k, v in per_image.items()}
    bytes_equal = all(run[k] == n * traffic[k] for k in ("bytes_to_device", "bytes_from_device"))
    requests_equal = run["requests"] == n * traffic["requests"]
    cycles = run["cycles"] / n
    done = out["done_cycles"]
    steady = (done[-2] - done[0]) / (n - 2) if n > 2 else cycles
    images_per_s = clk_hz / steady
    b = bounds(clk_hz, baud, per_image["bytes_to_device"], per_image["bytes_from_device"], macs, rows_, cols_,
               images_per_s)
    result.update({
        "simulated": True, "images_per_s": round(images_per_s, 2),
        "link_bound_images_per_s": round(b["link_bound_images_per_s"], 2),
        "compute_bound_images_per_s": round(b["compute_bound_images_per_s"], 2),
        "fraction_of_lower_bound": round(b["fraction_of_lower_bound"], 4),
        "bytes_to_device_per_image": per_image["bytes_to_device"],
        "bytes_from_device_per_image": per_image["bytes_from_device"],
        "requests_per_image": per_image["requests"], "cycles_per_image": per_image["cycles"],
        "compute_bound_cycles_per_image": compute_cycles, "ms_per_image": round(cycles / clk_hz * 1e3, 3),
        "steady_cycles_per_image": steady, "steady_ms_per_image": round(steady / clk_hz * 1e3, 3),
        "bytes_equal_traffic_count": bytes_equal, "requests_equal_traffic_count": requests_equal,
        "traffic_count": {k: traffic[k] for k in ("bytes_to_device", "bytes_from_device", "requests")},
        "loading": {**loading, "line_ms": round(loading["bytes_to_device"] * 10 / baud * 1e3, 2)},
        "retried": out["retried"], "repeated": out.get("repeated", 0),
        "images": n, "images_differing_from_reference": differ,
        "build_seconds": round(t1 - t0, 1), "run_seconds": round(t2 - t1, 1),
    })
    print(f"  {board.name}, {model_path.name}: {mode} {rows_}x{cols_}{'' if chosen['fits'] else ' (does not fit)'}, "
          f"build {result['build_seconds']} s, simulation {result['run_seconds']} s, {result['images_per_s']} "
          f"images/s (link bound {result['link_bound_images_per_s']}, compute bound "
          f"{result['compute_bound_images_per_s']}), {differ} images differ, bytes "
          f"{'equal' if bytes_equal else 'DIFFER FROM'} the traffic count", flush=True)
    return result


def table(results: list[dict], round_trip_ms: float) -> str:
    head = ["board", "model", "core", "clock", "baud", "loading constants", "bytes to / from device per image",
            "requests per image", "device ms per image", "images/s", "link bound", "compute bound",
            "fraction of lower bound", f"images/s with {round_trip_ms:g} ms per request"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if not r["simulated"]:
            lines.append("| " + " | ".join([r["board"], r["model"], f"{r['mode']}: does not fit"]
                                           + [""] * (len(head) - 3)) + " |")
            continue
        load = r["loading"]
        with_latency = 1e3 / (r["steady_ms_per_image"] + r["requests_per_image"] * round_trip_ms)
        core = {"network": "whole network", "none": "layer by layer", "weights": "weights resident",
                "all": "all resident"}[r.get("resident") or r["mode"]]
        loads = f"{load['bytes_to_device']:,} B, {load['requests']} requests, {load['line_ms']:.0f} ms" \
            if load["requests"] > 1 else "-"
        lines.append("| " + " | ".join([
            r["board"], r["model"], f"{r['rows']}x{r['cols']}, {core}" + ("" if r["fits"] else " (does not fit)"),
            f"{r['clock_mhz']:g} MHz", f"{r['baud'] / 1e6:g} M", loads,
            f"{r['bytes_to_device_per_image']:,.0f} / {r['bytes_from_device_per_image']:,.0f}",
            f"{r['requests_per_image']:g}", f"{r['steady_ms_per_image']:.2f}", f"{r['images_per_s']:.1f}",
            f"{r['link_bound_images_per_s']:.1f}", f"{r['compute_bound_images_per_s']:.1f}",
            f"{r['fraction_of_lower_bound']:.3f}", f"{with_latency:.1f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("network", "layers"), default="network",
                        help="whole network on the chip (lcq build's default) or layer by layer")
    parser.add_argument("--boards", default="icebreaker,ulx3s-85f,orangecrab-25f", help="boards, comma-separated")
    parser.add_argument("--models", nargs="+", default=None, metavar="FILE",
                        help="compiled models (lcq compile); default: the digits CNN and CIFAR-10 ResNet-20 of "
                        "tests/data in network mode, the digits CNN in layers mode")
    parser.add_argument("--images", type=int, default=3,
                        help="test images to classify (3 or more for the steady state, see above)")
    parser.add_argument("--rows", type=int, help="array rows (with --cols: simulated even where it does not fit)")
    parser.add_argument("--cols", type=int, help="array columns")
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="CIFAR-10 for models taking 3x32x32 images")
    parser.add_argument("--round-trip-ms", type=nonnegative_float, default=1.0,
                        help="host latency per request, for the last column")
    parser.add_argument("--build-dir", default="build/bench", help="simulation builds go under this directory")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "link_throughput.json"))
    args = parser.parse_args(argv)
    try:
        boards = [get_board(b.strip()).name for b in args.boards.split(",") if b.strip()]
    except KeyError as e:
        parser.error(e.args[0])
    refuse_repeats(parser, "--boards", boards, "board")
    if args.models is not None:
        refuse_repeats(parser, "--models", args.models, "model", key=lambda path: Path(path).resolve())
    if args.images < 1:
        parser.error(f"--images must be at least 1, not {args.images}")
    for name in ("rows", "cols"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.models is None:
        args.models = [str(m) for m in (MODELS if args.mode == "network" else MODELS[:1])]
    from sim.runner import unavailable_reason

    reason = unavailable_reason("verilator")
    if reason is not None:
        parser.error(f"cannot simulate with verilator: {reason}")

    start = time.perf_counter()
    results, cache = [], {}
    for model_path in (Path(m).resolve() for m in args.models):
        model = model_format.load(model_path)
        images = test_images(model, args.images, args.data_dir, cache)
        print(f"{model_path.name}: {len(images)} {dataset_of(model)} test image(s) through each board's simulated "
              f"link, {args.mode} mode", flush=True)
        results += [measure(b, args.mode, model_path, model, images, Path(args.build_dir).resolve(), args.rows,
                            args.cols) for b in boards]
    seconds = round(time.perf_counter() - start, 1)
    print(f"\n{table(results, args.round_trip_ms)}")
    simulated = [r for r in results if r["simulated"]]
    differ = sum(r["images_differing_from_reference"] for r in simulated)
    miscounted = [f"{r['board']}/{r['model']}" for r in simulated
                  if not (r["bytes_equal_traffic_count"] and r["requests_equal_traffic_count"])]
    save_json({
        "benchmark": "link_throughput", "argv": sys.argv[1:], "options": vars(args), "seconds": seconds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {pkg: version(pkg) for pkg in ("amaranth", "cocotb", "verilator")},
        "git": git_state("boards", "sim", "hw", "compiler", "tests/data"),
        "mode": args.mode, "round_trip_ms": args.round_trip_ms, "images_differing_from_reference": differ,
        "traffic_miscounted": miscounted, "results": results,
    }, args.json_out)
    print(f"\n{len(simulated)} of {len(results)} board/model pairs simulated in {seconds} s; {differ} images differ "
          f"from the integer reference; bytes per image {'differ from' if miscounted else 'equal'} the traffic "
          f"count{': ' + ', '.join(miscounted) if miscounted else ''}; wrote {args.json_out}")
    return 0 if differ == 0 and not miscounted else 1


if __name__ == "__main__":
    sys.exit(main())
