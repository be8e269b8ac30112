"""Fuzz campaign: the host link, model files and checkpoints against damage, counted by outcome.

Runs the case functions of ``tests/test_fuzz.py`` (its scripted link device and faulty port, its
model-file and checkpoint mutations) on ``--inputs`` seeded random inputs per class and counts how
each ended: *correct*, *recovered* (the correct result after a detected fault and a retry), *clean
error* (the project's own error: LinkError, ModelFormatError or CheckpointError naming the file),
*crash* (any other exception), *hang* (past the time bound of one input), *silent wrong answer*
(a result or a loaded file that differs from the expected one without an error) or *gave up early* (a
session that ended in a NACK before its repeated layer runs were spent).

Classes: ``frame`` (one frame, mutated), ``info`` (INFO replies of random parameters), ``session``
(PING, LOADs and RUNs of two layer jobs with a device whose frames are damaged each way at a rate of
0 to 40% per frame, the rates in turn), ``model file`` (byte edits, truncations, zip members edited
with a recomputed CRC), ``checkpoint`` (byte edits, truncations, appended bytes) and ``dup+drop`` (a
session whose first RUN of two or more OUT frames loses one of them and gets another twice, so that
the word count still matches: the index of its first word that each OUT frame carries gives it away).

Input ``i`` of class ``c`` draws from ``random.Random(f"{seed}:{c}:{i}")``, so that any input can be
replayed alone. Exits 1 when any class has a crash, hang, silent wrong answer or early give-up.

Run:  python benchmarks/fuzz.py [--inputs 5000] [--seed 0] [--classes session,frame]
Writes benchmarks/results/fuzz.json (or --json-out).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))          # the suite's fuzzing machinery and the file tests' helpers

import test_fuzz as fz  # noqa: E402

from lcq_train.arguments import IntRange, output_file, positive_int  # noqa: E402
from lcq_train.atomic import save_json  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from git_state import git_state  # noqa: E402

CLASSES = ("frame", "info", "session", "model file", "checkpoint", "dup+drop")
BAD = ("crash", "hang", "silent wrong answer", "gave up early")
SEED = IntRange(0, 2**63 - 1)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "hypothesis", "lcq-accel"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def campaign(name: str, inputs: int, seed: int, workdir: Path) -> dict:
    """``inputs`` inputs of class ``name``: counts of outcomes, time, faults injected, examples of bad outcomes."""
    faults: Counter = Counter()
    by_rate: dict[float, Counter] = {}
    if name == "model file":
        case = fz.ModelFiles(workdir).case
    elif name == "checkpoint":
        case = fz.Checkpoints(workdir).case
    else:
        case = {"frame": fz.frame_case, "info": fz.info_case}.get(name)
    counts: Counter = Counter()
    examples = []
    start = time.perf_counter()
    for i in range(inputs):
        rnd = random.Random(f"{seed}:{name}:{i}")
        if name in ("session", "dup+drop"):
            rate = fz.RATES[i % len(fz.RATES)] if name == "session" else 0.0
            outcome, detail = fz.session_case(rnd, rate, dup_drop=name == "dup+drop", faults=faults)
            by_rate.setdefault(rate, Counter())[outcome] += 1
        else:
            outcome, detail = case(rnd)
        counts[outcome] += 1
        if outcome in BAD and len(examples) < 5:
            examples.append({"input": i, "outcome": outcome, "detail": detail[:2000]})
    result = {"inputs": inputs, "outcomes": {o: counts[o] for o in fz.OUTCOMES},
              "seconds": round(time.perf_counter() - start, 1), "examples": examples}
    if faults:
        result["faults_injected"] = dict(sorted(faults.items()))
    if name == "session":
        result["by_rate"] = {str(r): {o: c[o] for o in fz.OUTCOMES} for r, c in sorted(by_rate.items())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--inputs", type=positive_int, default=5000, metavar="N", help="inputs per class, N >= 1")
    parser.add_argument("--seed", type=SEED, default=0, help=f"campaign seed, {SEED.describe()}")
    parser.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, of: {', '.join(CLASSES)}")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        parser.error(f"argument --classes: unknown {unknown}; choose from {', '.join(CLASSES)}" if unknown
                     else "argument --classes: names no class")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in classes:
            print(f"{name}: {args.inputs} inputs...", file=sys.stderr, flush=True)
            results[name] = campaign(name, args.inputs, args.seed, Path(tmp) / name.replace(" ", "-"))

    head = ["class", "inputs", *fz.OUTCOMES, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        lines.append("| " + " | ".join([name, f"{r['inputs']:,}", *(f"{r['outcomes'][o]:,}" for o in fz.OUTCOMES),
                                        f"{r['seconds']:.0f}"]) + " |")
    print("\n".join(lines))
    if "session" in results:
        print("\nsessions by fault rate (per frame, each way):\n")
        print("| rate | " + " | ".join(fz.OUTCOMES) + " |\n|" + "---|" * (len(fz.OUTCOMES) + 1))
        for rate, c in results["session"]["by_rate"].items():
            print(f"| {float(rate):.0%} | " + " | ".join(f"{c[o]:,}" for o in fz.OUTCOMES) + " |")
    failing = [n for n, r in results.items() if any(r["outcomes"][o] for o in BAD)]
    save_json({"benchmark": "fuzz", "argv": sys.argv[1:] if argv is None else argv, "options": vars(args),
               "seed": args.seed, "inputs_per_class": args.inputs,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
               "git": git_state("boards", "hw", "compiler", "lcq_train", "tests/test_fuzz.py"),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
               "outcomes": list(fz.OUTCOMES), "classes": results, "failing_classes": failing}, args.json_out)
    print(f"\nwrote {args.json_out}")
    if failing:
        print(f"crashes, hangs, silent wrong answers or early give-ups in: {', '.join(failing)}", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
