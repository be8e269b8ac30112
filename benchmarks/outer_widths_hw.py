"""The outer widths b'_w / b'_a in hardware (issue 18): what a narrower LUT saves in logic, block RAM and Fmax.

For each outer width of the ablation study (``benchmarks/ablations.py``, table 3: W3/A3 digits CNN,
inner layers at b'_w / b'_a in {8/8, 6/6, 4/4, 8/4, 4/8}, the 8-bit edge layers at 8/8) it takes
that run's checkpoint from the ablation's ``--out`` directory, compiles it, and builds the layer
engine (``--mode layers``, as its recorded builds were made) for each board of ``--builds`` with
``lcq build``'s own function (:func:`board_builds.run_build`). The engine's products are
``product_bits`` = bits of ``(2^(b'_w - 1) - 1) * (2^b'_a - 1)`` wide
(:func:`hw.pe_words.product_width`; 15 at 8/8), its product-table entries ``s_w`` products (plus a
flag bit where the 8-bit edge layers multiply), so these widths are what the outer width changes in
the generated hardware; the accumulators follow the layers' exact bounds.

Resumable: the results file is written after every build, and a later invocation reuses each record of it
that routed (``status`` "ok") from the same model file (``model_sha256``) for the same width, board and array;
the other builds are run anew (a build cannot pick up where it was stopped), and the records of widths and
boards not asked for now stay in the file. The runs themselves are ``ablations.py``'s to train or resume.

Run:  python benchmarks/ablations.py --dataset digits --schedule full --threads 1 --tables outer --out RUNS
      python benchmarks/outer_widths_hw.py --runs RUNS [--seed 0] [--builds icebreaker ulx3s-85f@2x2]
Writes benchmarks/results/outer_widths_hw.json (atomically; or --json-out): a record per width and board
(the build record of ``board_builds.py`` plus ``outer``, ``product_bits``, ``table_bits``, ``lut_bytes``,
``model_sha256``), and prints a table.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations import OUTERS, edge_layers, outer_plan  # noqa: E402
from board_builds import environment, fmt_res, parse_spec, run_build  # noqa: E402
from result_fields import read_results  # noqa: E402

from boards.boards import BOARDS  # noqa: E402
from boards.build import file_sha256  # noqa: E402
from lcq_train.arguments import output_file, positive_float  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402
from lcq_train.data import load_dataset  # noqa: E402
from lcq_train.metrics import read_metrics  # noqa: E402
from lcq_train.plan import QuantPlan  # noqa: E402

DEFAULT_BUILDS = ("icebreaker", "ulx3s-85f@2x2")


def find_run(seed_dir: Path, plan: QuantPlan) -> Path:
    """The checkpoint of the finished run (as many epoch rows as its config's epochs) under ``seed_dir`` trained
    with ``plan``; FileNotFoundError naming the fix."""
    for path in sorted(seed_dir.glob("*/metrics.json")):
        metrics = read_metrics(path)
        finished = len(metrics["epochs"]) == metrics["config"].get("epochs")
        if finished and QuantPlan.from_dict(metrics["config"]["plan"]) == plan and \
                (path.parent / "checkpoint.pt").is_file():
            return path.parent / "checkpoint.pt"
    raise FileNotFoundError(f"no finished run with outer widths {plan.outer_bits} in {seed_dir} (all its epochs "
                            f"trained; the command resumes an unfinished one); train them first: python "
                            f"benchmarks/ablations.py --dataset digits --tables outer --out {seed_dir.parent}")


def piece(record: dict) -> tuple:
    """What a record is the build of: its outer widths, board and asked array (a later build of it replaces it)."""
    return record.get("outer"), record.get("board"), record.get("asked_rows"), record.get("asked_cols")


def recorded_builds(path: str) -> tuple[dict[tuple, dict], str]:
    """The records of an earlier results file at ``path`` by :func:`piece`, and a line saying what was read;
    ValueError naming the file and the fix where it is not this script's list of records (cut short, or edited):
    replacing it would drop its routed builds."""
    fix = "restore it, or give another --json-out (or delete it) to build every width anew"
    earlier = read_results(path, fix)
    if earlier is None:
        return {}, ""
    if not isinstance(earlier, list) or not all(isinstance(r, dict) and "outer" in r for r in earlier):
        raise ValueError(f"{path}: not a list of this script's records; {fix}")
    return {piece(r): r for r in earlier}, f"read {len(earlier)} recorded builds from {path}" if earlier else ""


def reusable(record: dict, now: dict) -> bool:
    """Whether a recorded build can stand for this one: it routed, from the same model file to the same engine
    widths (``now``: ``model_sha256``, ``product_bits``, ``table_bits``, ``lut_bytes``), with every field
    :func:`table` reads."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return record.get("status") == "ok" and all(record.get(k) == v for k, v in now.items()) \
        and number(record.get("fmax_mhz")) and number(record.get("build_seconds")) \
        and isinstance(record.get("resources"), dict) and isinstance(record.get("engine") or {}, dict)


def table(records: list[dict]) -> str:
    head = ["b'_w/b'_a", "board", "engine", "product bits", "table entry bits", "LUT bytes (paper)", "LUT4 / LC",
            "FF", "EBR", "DSP", "Fmax (MHz)", "build"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        e, res = r.get("engine") or {}, r.get("resources", {})
        logic = "LUT4" if "LUT4" in res else "ICESTORM_LC"
        fmax = f"{r['fmax_mhz']}" if r.get("status") == "ok" else r.get("status", "-")
        lines.append("| " + " | ".join([
            r["outer"], r["board"], f"{e.get('rows')} x {e.get('cols')}" if e else "-", str(r["product_bits"]),
            str(r["table_bits"]), str(r["lut_bytes"]), fmt_res(res, logic), fmt_res(res, "FF", False),
            fmt_res(res, "EBR"), fmt_res(res, "DSP"), fmax, f"{r['build_seconds']:.0f} s"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", required=True, metavar="DIR", help="the --out directory of benchmarks/ablations.py")
    p.add_argument("--seed", type=int, default=0, help="which seed's runs to build")
    p.add_argument("--builds", nargs="+", default=list(DEFAULT_BUILDS), metavar="BOARD[@RxC]",
                   help="boards (and PE arrays; default: the one lcq build chooses) to build each width for")
    p.add_argument("--time-limit", type=positive_float, default=1800, metavar="S", help="seconds per build")
    p.add_argument("--build-root", default=str(ROOT / "build" / "outer-widths"), metavar="DIR")
    p.add_argument("--json-out", type=output_file, metavar="FILE",
                   default=str(ROOT / "benchmarks" / "results" / "outer_widths_hw.json"))
    args = p.parse_args(argv)
    for build in args.builds:
        board, _, array = build.partition("@")
        if board not in BOARDS or (array and not re.fullmatch(r"\d+x\d+", array)):
            p.error(f"--builds {build!r}: expected BOARD[@RxC], BOARD one of {', '.join(BOARDS)}")
    from compiler import format as model_format
    from compiler.lower import compile_checkpoint
    from compiler.report import report
    from hw.engine_params import EngineParams

    seed_dir = Path(args.runs) / f"seed{args.seed}"
    edges = edge_layers(argparse.Namespace(model="cnn"), load_dataset("digits"))
    try:
        checkpoints = {(ow, oa): find_run(seed_dir, outer_plan(ow, oa, edges)) for ow, oa in OUTERS}
    except (FileNotFoundError, ValueError) as e:
        print(f"outer_widths_hw.py: error: {e}", file=sys.stderr)
        return 2
    models = Path(args.build_root) / "models"
    models.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/outer_widths_hw.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        saved, note = recorded_builds(args.json_out)     # (all of them stay in the file; ours: this invocation's)
    except ValueError as e:
        print(f"outer_widths_hw.py: error: {e}", file=sys.stderr)
        return 2
    if note:
        print(note, flush=True)
    env, records = environment(), []
    try:
        for (ow, oa), checkpoint in checkpoints.items():
            compiled = compile_checkpoint(checkpoint)
            path = models / f"digits-w3a3-o{ow}-{oa}.lcq"
            model_format.save(compiled, path)
            sha = file_sha256(path)
            engine, lut_bytes = EngineParams.for_model(compiled, 2, 2), report(compiled)["lut_bytes"]
            for build in args.builds:
                board, _, array = build.partition("@")
                job = parse_spec(f"{board}:{path}" + (f"@{array}" if array else ""), None)
                earlier = saved.get((f"{ow}/{oa}", board, job["rows"], job["cols"]))
                now = {"model_sha256": sha, "product_bits": engine.product_bits, "table_bits": engine.table_bits,
                       "lut_bytes": lut_bytes}
                if earlier is not None and reusable(earlier, now):
                    records.append(earlier)
                    print(table([earlier]).splitlines()[-1] + " done earlier, reused", flush=True)
                    continue
                record = run_build(job, None, args.time_limit, Path(args.build_root), "layers")
                record.update(benchmark="outer_widths_hw", script_command=command, outer=f"{ow}/{oa}",
                              checkpoint=str(checkpoint), model_sha256=sha, product_bits=engine.product_bits,
                              table_bits=engine.table_bits, lut_bytes=lut_bytes,
                              time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), environment=env)
                records.append(record)
                saved[piece(record)] = record
                print(table([record]).splitlines()[-1], flush=True)
                save_json(list(saved.values()), args.json_out)     # after every build: a later call reuses it
    except KeyboardInterrupt:
        print(f"outer_widths_hw.py: interrupted; re-run `{command}` to resume", file=sys.stderr)
        return 130
    print("\n" + table(records))
    print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
