"""Bytes per image over the host link, counted from the protocol, for any model and board.

No simulation: for each board (``--boards``) the model (``--model``, default the digits
CNN and the CIFAR-10 ResNet-20 of ``tests/data``) gets, in each mode (``--modes``), the design
``lcq build`` would choose: network mode the whole-network core (``boards.fit.network_for_board``;
``boards.traffic.network_image_traffic``: the image's pixels, one RUN, the logits), layers mode the
layer engine (``boards.fit.engine_for_board``; ``boards.traffic.image_traffic``), counting the bytes of
every request of one image as ``lcq run`` sends it and of every reply. It reports, per image, bytes to and
from the device, requests, and the images per second the line alone allows (bytes x 10 / baud), the
engine's time left out; ``benchmarks/link_throughput.py`` simulates the whole device. ``--rows`` and
``--cols`` fix the array; in network mode a model that does not fit is then counted at that array anyway
(``"fits": false``; its bytes per image are the pixels and logits whatever the array).

Run:  python benchmarks/link_traffic.py [--boards ulx3s-45f,ulx3s-85f] [--model FILE ...] [--rows R --cols C]
Writes benchmarks/results/link_traffic.json (or --json-out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from boards.boards import get_board, uart_baud
from compiler import format as model_format
from hw.cli import ARRAY_SIZE
from lcq_train.arguments import output_file
from lcq_train.atomic import save_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from repeats import refuse_repeats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = [ROOT / "tests" / "data" / "digits-cnn-lcq-w3a3.lcq",
          ROOT / "tests" / "data" / "cifar10-resnet20-lcq-w3a3.lcq"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--boards", default="icebreaker,ulx3s-45f,ulx3s-85f,orangecrab-25f",
                        help="boards, comma-separated")
    parser.add_argument("--modes", default="network,layers", help="network and/or layers, comma-separated")
    parser.add_argument("--model", nargs="+", default=[str(m) for m in MODELS], help="compiled models (lcq compile)")
    parser.add_argument("--rows", type=ARRAY_SIZE, help="array rows (with --cols: network mode counted even where it "
                        "does not fit)")
    parser.add_argument("--cols", type=ARRAY_SIZE, help="array columns")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "link_traffic.json"))
    args = parser.parse_args(argv)
    missing = [m for m in args.model if not Path(m).is_file()]
    if missing:
        parser.error(f"no compiled model at {', '.join(missing)}: pass files that lcq compile wrote")
    try:
        boards = [get_board(b.strip()).name for b in args.boards.split(",") if b.strip()]
    except KeyError as e:
        parser.error(e.args[0])
    refuse_repeats(parser, "--boards", boards, "board")
    refuse_repeats(parser, "--model", args.model, "model", key=lambda path: Path(path).resolve())
    from boards.boards import LINK_PAYLOAD
    from boards.fit import FitError, engine_for_board, network_for_board
    from hw.network_params import NetworkParams
    from boards.traffic import image_traffic, network_image_traffic

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"network", "layers"}:
        parser.error(f"--modes must name network and/or layers, not {args.modes!r}")
    refuse_repeats(parser, "--modes", modes, "mode")
    head = ["model", "board", "mode", "core", "baud", "loading constants", "bytes to / from device per image",
            "requests per image", "line-bound images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    results = []
    for path in map(Path, args.model):
        model = model_format.load(path)
        for name, mode in ((name, mode) for name in boards for mode in modes):
            board = get_board(name)
            payload = LINK_PAYLOAD[board.family]
            fits = True
            try:
                if mode == "network":
                    try:
                        params = network_for_board(model, board, args.rows, args.cols).params
                    except FitError as e:
                        if not (args.rows and args.cols):
                            raise
                        params, fits = NetworkParams.for_model(model, args.rows, args.cols), False
                        error = str(e)
                    rows, cols, extra = params.engine.rows, params.engine.cols, {}
                    core = f"{rows}x{cols}, whole network" + ("" if fits else " (does not fit)")
                    t = network_image_traffic(model, params, payload)
                else:
                    engine = engine_for_board(model, board, args.rows, args.cols)
                    rows, cols, extra = engine.params.rows, engine.params.cols, {"resident": engine.resident}
                    core = f"{rows}x{cols}, {engine.resident} resident"
                    t = image_traffic(model, engine.params, engine.resident, payload)
            except FitError as e:
                results.append({"model": path.name, "board": name, "mode": mode, "fits": False, "error": str(e)})
                lines.append(f"| {path.name} | {name} | {mode} | does not fit | | | | | |")
                continue
            if not fits:
                extra["error"] = error
            baud = uart_baud(board, board.default_mhz * 1e6)
            rate = baud / 10 / (t["bytes_to_device"] + t["bytes_from_device"])
            results.append({"model": path.name, "board": name, "mode": mode, "fits": fits, "rows": rows,
                            "cols": cols, **extra, "baud": baud, **t,
                            "line_bound_images_per_second": round(rate, 2)})
            load = t["loading"]
            lines.append("| " + " | ".join([
                path.name, name, mode, core,
                f"{baud / 1e6:g} M", f"{load['bytes_to_device']:,} B, {load['requests']} requests" if load["requests"]
                else "-", f"{t['bytes_to_device']:,} / {t['bytes_from_device']:,}", str(t["requests"]),
                f"{rate:.2f}"]) + " |")
    print("\n".join(lines))
    save_json({"benchmark": "link_traffic", "argv": sys.argv[1:], "options": vars(args),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "git": git_state("boards", "hw", "compiler", "tests/data"), "results": results}, args.json_out)
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
