"""The ECP5's registered multipliers (hw/dsp.py): the requantize unit as built for the ECP5 instantiates them,
and its Verilog, simulated in Icarus with their model (sim/ecp5_models.v), is bit-exact with Requantize.apply at
the unit's latency."""

import gc
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="hardware tests need amaranth: pip install -e '.[hw]'")

from amaranth import Module, Signal, signed  # noqa: E402
from amaranth.back import verilog  # noqa: E402
from test_hw_output_stage import expected, random_requantize, requantize_items  # noqa: E402

from hw.dsp import registered_multipliers, registered_product  # noqa: E402
from hw.requantize import RequantizeUnit  # noqa: E402
from hw.stage_words import bias_bits, multiplier_bits, out_bits  # noqa: E402
from sim.netlist import MODELS_V  # noqa: E402

ECP5 = SimpleNamespace(device="LFE5U-85F")
# Multipliers built only to check their operands and shapes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def test_only_the_ecp5_gets_registered_multipliers():
    assert registered_multipliers(ECP5) and not registered_multipliers(None)
    assert not registered_multipliers(SimpleNamespace(device="iCE40UP5K"))
    with pytest.raises(ValueError, match="a MULT18X18D operand is at most 18 bits, not 19"):
        registered_product(Module(), "p", Signal(19), Signal(4))
    assert registered_product(Module(), "p", Signal(signed(10)), Signal(16)).shape() == signed(26)
    gc.collect()        # the unused modules' warning now, under this file's filter, not in a later test's output


@pytest.mark.sim
@pytest.mark.parametrize("late_value, registered_inputs, registered_total",
                         [(False, False, False), (True, False, False), (True, True, True)])
def test_requantize_on_ecp5_multipliers_is_exact(tmp_path, late_value, registered_inputs, registered_total):
    if shutil.which("iverilog") is None:
        pytest.skip("needs Icarus Verilog (iverilog): apt-get install iverilog")
    rng = np.random.default_rng(5 + late_value)
    acc_bits, channels = 20, 6
    stage = random_requantize(rng, channels)
    dut = RequantizeUnit(acc_bits, channels, multiplier_bits(stage), bias_bits(stage), 40,
                         out_bits(stage, 2 ** (acc_bits - 1)), registered_constants=True, late_value=late_value,
                         registered_inputs=registered_inputs, registered_total=registered_total)
    text = verilog.convert(dut, name="requantize", platform=ECP5, emit_src=False)
    assert text.count("MULT18X18D") == 4 and '.REG_OUTPUT_CLK("CLK0")' in text
    items = requantize_items(rng, channels, acc_bits, 60)
    words = dut.words(stage)
    lines = ["`timescale 1ns / 1ps", "module tb;", "  reg clk = 0, rst = 0, load_en = 0, valid = 0;",
             f"  reg [{dut.word_bits - 1}:0] load_data = 0; reg [7:0] load_addr = 0, channel = 0;",
             f"  reg signed [{acc_bits - 1}:0] acc = 0; wire out_valid; wire signed [{dut.out_bits - 1}:0] out;",
             "  requantize dut(.clk(clk), .rst(rst), .load_en(load_en), .load_addr(load_addr[%d:0]), "
             ".load_data(load_data), .valid(valid), .acc(acc), .channel(channel[%d:0]), .out_valid(out_valid), "
             ".out(out));" % ((channels - 1).bit_length() - 1, (channels - 1).bit_length() - 1),
             "  always #5 clk = ~clk;",
             "  integer cycle = 0;",
             "  always @(posedge clk) begin",
             "    cycle <= cycle + 1;",
             "    if (valid) $display(\"IN %0d\", cycle);",
             "    if (out_valid) $display(\"OUT %0d %0d\", cycle, out);",
             "  end",
             "  initial begin", "    @(negedge clk); load_en = 1;"]
    for channel, word in enumerate(words):
        lines.append(f"    load_addr = {channel}; load_data = {dut.word_bits}'d{word}; @(negedge clk);")
    lines.append("    load_en = 0;")
    # One value a cycle; with late_value its acc a cycle after its valid and channel.
    for n in range(len(items) + 1):
        now = items[n] if n < len(items) else None
        before = items[n - 1] if n > 0 else None
        step = []
        if now is not None:
            step += ["valid = 1;", f"channel = {now[0]};"]
        else:
            step.append("valid = 0;")
        value = before if late_value else now
        if value is not None:
            step.append(f"acc = {value[1]};" if value[1] >= 0 else f"acc = -{-value[1]};")
        lines.append("    " + " ".join(step) + " @(negedge clk);")
    lines += ["    valid = 0; repeat (8) @(negedge clk);", "    $finish;", "  end", "endmodule"]
    (tmp_path / "requantize.v").write_text(text)
    (tmp_path / "tb.v").write_text("\n".join(lines) + "\n")
    compiled = subprocess.run(["iverilog", "-g2005-sv", "-o", str(tmp_path / "tb.vvp"), "-s", "tb",
                               str(tmp_path / "tb.v"), str(tmp_path / "requantize.v"), str(MODELS_V)],
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    ran = subprocess.run(["vvp", "-n", str(tmp_path / "tb.vvp")], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Each output registered at the edge latency - 1 after the one that samples its value's valid: seen at the
    # clock edge after that, latency edges later (both are printed as the edge finds them).
    ins = [int(line.split()[1]) for line in ran.stdout.splitlines() if line.startswith("IN ")]
    outs = [tuple(map(int, line.split()[1:])) for line in ran.stdout.splitlines() if line.startswith("OUT ")]
    assert [cycle for cycle, _ in outs] == [cycle + dut.latency for cycle in ins]
    assert [value for _, value in outs] == expected(stage, items)
