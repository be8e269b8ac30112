"""Images per second over the host link, from a cycle-level simulation of each board's design.

For each board (``--boards``) the digits CNN (``tests/data``, or ``--model``) gets the engine
``lcq build`` would choose (``boards.fit.engine_for_board``); the board's accelerator core
(engine + link bridge with the board's frame buffer) is generated, built with Verilator,
and the unmodified host runtime (``LinkHost`` + ``BoardRunner``, what ``lcq run`` uses)
classifies ``--images`` digits test images through it (``sim/board_cocotb.py``). Bytes
move one each way every ``byte_cycles = clock / baud * 10`` cycles, as the board's 8N1 UART
at its rate moves them, so the simulated cycles are the device's time: line time and
engine time together, the host's own time and USB latency left out. Every logit is
compared with the integer reference (exit 1 on a difference).

Per board it reports the clock (the board's default) and baud rate, loading the resident
constants (bytes, requests; simulated a byte per cycle, its ms computed as bytes x 10 /
baud), and per image: bytes to and from the device, requests
(LOAD and RUN frames, each answered before the next), device ms and images per second;
``with latency``: the same plus ``--round-trip-ms`` per request (a USB-serial bridge
answers in about 1 ms at best: FTDI's latency timer set to 1 ms).

Run:  python benchmarks/link_throughput.py [--boards icebreaker,ulx3s-85f,orangecrab-25f] [--images 2]
Writes benchmarks/results/link_throughput.json (or --json-out), builds under build/bench/.
"""

from __future__ import annotations

import argparse
import json
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
from lcq_train.atomic import save_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq"


def measure(board_name: str, model_path: Path, model, images: np.ndarray, build_root: Path) -> dict:
    from boards.boards import LINK_PAYLOAD
    from boards.fit import engine_for_board
    from boards.top import AcceleratorCore
    from sim.runner import build, run_test, verilog_of

    board = get_board(board_name)
    engine = engine_for_board(model, board)
    params, clk_hz = engine.params, board.default_mhz * 1e6
    baud = uart_baud(board, clk_hz)
    byte_cycles = round(clk_hz * 10 / baud)
    build_dir = build_root / f"link-{board.name}-{params.rows}x{params.cols}"
    t0 = time.perf_counter()
    core = AcceleratorCore(params, timeout_cycles=20 * byte_cycles, max_payload=LINK_PAYLOAD[board.family])
    built = build("verilator", [verilog_of(core, "board", build_dir)], "board", build_dir)
    t1 = time.perf_counter()
    results = build_dir / "run" / "results.json"
    run_test(built, "sim.board_cocotb", build_dir / "run", data={
        "model": str(model_path), "params": params.describe(), "resident": engine.resident,
        "images": images.tolist(), "byte_cycles": byte_cycles, "results": str(results)})
    t2 = time.perf_counter()
    out = json.loads(results.read_text())
    differ = int((np.array(out["logits"]) != predict(model, images)).any(axis=1).sum())
    n = len(images)
    loading, run = out["loading"], out["images"]
    image_s = run["cycles"] / n / clk_hz
    requests = run["requests"] / n
    result = {
        "board": board.name, "rows": params.rows, "cols": params.cols, "resident": engine.resident,
        "clock_mhz": board.default_mhz, "baud": baud, "byte_cycles": byte_cycles,
        "max_payload": LINK_PAYLOAD[board.family],
        "loading": {**loading, "line_ms": round(loading["bytes_to_device"] * 10 / baud * 1e3, 2)},
        "per_image": {"bytes_to_device": run["bytes_to_device"] / n, "bytes_from_device": run["bytes_from_device"] / n,
                      "requests": requests, "cycles": run["cycles"] / n, "ms": round(image_s * 1e3, 2)},
        "images_per_second": round(1 / image_s, 1),
        "retried": out["retried"], "images": n, "images_differing_from_reference": differ,
        "build_seconds": round(t1 - t0, 1), "run_seconds": round(t2 - t1, 1),
    }
    print(f"  {board.name}: {params.rows}x{params.cols}, build {result['build_seconds']} s, simulation "
          f"{result['run_seconds']} s, {result['images_per_second']} images/s, {differ} images differ", flush=True)
    return result


def table(results: list[dict], round_trip_ms: float) -> str:
    head = ["board", "engine", "clock", "baud", "loading constants", "bytes to / from device per image",
            "requests per image", "device ms per image", "images/s", f"images/s with {round_trip_ms:g} ms per request"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        p, load = r["per_image"], r["loading"]
        with_latency = 1e3 / (p["ms"] + p["requests"] * round_trip_ms)
        loads = f"{load['bytes_to_device']:,} B, {load['requests']} requests, {load['line_ms']:.0f} ms" \
            if r["resident"] != "none" else "-"
        lines.append("| " + " | ".join([
            r["board"], f"{r['rows']}x{r['cols']}, " + {"none": "layer by layer", "weights": "weights resident",
                                                     "all": "all resident"}[r["resident"]], f"{r['clock_mhz']:g} MHz",
            f"{r['baud'] / 1e6:g} M", loads, f"{p['bytes_to_device']:,.0f} / {p['bytes_from_device']:,.0f}",
            f"{p['requests']:g}", f"{p['ms']:.1f}", f"{r['images_per_second']:.1f}", f"{with_latency:.1f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--boards", default="icebreaker,ulx3s-85f,orangecrab-25f", help="boards, comma-separated")
    parser.add_argument("--model", default=str(MODEL), help="compiled model (lcq compile) taking 8x8 digits")
    parser.add_argument("--images", type=int, default=2, help="digits test images to classify")
    parser.add_argument("--round-trip-ms", type=float, default=1.0, help="host latency per request, for the last column")
    parser.add_argument("--build-dir", default="build/bench", help="simulation builds go under this directory")
    parser.add_argument("--json-out", metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "link_throughput.json"))
    args = parser.parse_args(argv)
    try:
        boards = [get_board(b.strip()).name for b in args.boards.split(",") if b.strip()]
    except KeyError as e:
        parser.error(e.args[0])
    if args.images < 1:
        parser.error(f"--images must be at least 1, not {args.images}")
    from sim.runner import unavailable_reason

    reason = unavailable_reason("verilator")
    if reason is not None:
        parser.error(f"cannot simulate with verilator: {reason}")
    from lcq_train.data import load_dataset

    model_path = Path(args.model).resolve()
    model = model_format.load(model_path)
    images = load_dataset("digits").test_x[:args.images].numpy()
    start = time.perf_counter()
    print(f"{model_path.name}: {args.images} digits test image(s) through each board's simulated link", flush=True)
    results = [measure(b, model_path, model, images, Path(args.build_dir).resolve()) for b in boards]
    seconds = round(time.perf_counter() - start, 1)
    print(f"\n{table(results, args.round_trip_ms)}")
    differ = sum(r["images_differing_from_reference"] for r in results)
    save_json({
        "benchmark": "link_throughput", "argv": sys.argv[1:], "options": vars(args), "seconds": seconds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {pkg: version(pkg) for pkg in ("amaranth", "cocotb", "verilator")},
        "round_trip_ms": args.round_trip_ms, "images_differing_from_reference": differ, "results": results,
    }, args.json_out)
    print(f"\n{len(results)} boards in {seconds} s; {differ} images differ from the integer reference; "
          f"wrote {args.json_out}")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
