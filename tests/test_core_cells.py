"""benchmarks/core_cells.py's count of Yosys's ``stat -json``: pure function, no synthesis."""

import os
import signal

import pytest
from helpers import ends_within, load_benchmark, running


def test_module_cells_counts_each_modules_own_cells_by_kind():
    module = load_benchmark("core_cells")
    stats = {"modules": {"\\core": {"num_cells_by_type": {}},
                         "\\core.bridge": {"num_cells_by_type": {"SB_LUT4": 10, "SB_DFF": 3, "SB_DFFESR": 4,
                                                                 "SB_CARRY": 2, "SB_RAM40_4K": 1}},
                         "\\core.engine": {"num_cells_by_type": {"SB_SPRAM256KA": 2, "SB_MAC16": 1, "$scopeinfo": 5}}}}
    cells = module.module_cells(stats)
    assert cells["core.bridge"] == {"LUT4": 10, "FF": 7, "CARRY": 2, "MUX": 0, "EBR": 1, "SPRAM": 0, "DSP": 0}
    assert cells["core.engine"] == {"LUT4": 0, "FF": 0, "CARRY": 0, "MUX": 0, "EBR": 0, "SPRAM": 2, "DSP": 1}
    assert not any(cells["core"].values())


def test_ecp5_cells_and_the_copies_of_a_module_summed():
    module = load_benchmark("core_cells")
    pe = {"num_cells_by_type": {"LUT4": 5, "CCU2C": 2, "PFUMX": 1, "L6MUX21": 1, "TRELLIS_FF": 4}}
    stats = {"modules": {"\\core.array": {"num_cells_by_type": {"DP16KD": 2, "MULT18X18D": 1}},
                         "\\core.array.pe_0_0": pe, "\\core.array.pe_0_1": pe, "\\core.array.pe_10_3": pe,
                         "\\core.array.decoder_0": pe}}
    cells = module.grouped(module.module_cells(stats, "ecp5"))
    assert list(cells) == ["core.array", "core.array.pe_N_N", "core.array.decoder_N"]
    assert cells["core.array.pe_N_N"] == {"copies": 3, "LUT4": 15, "FF": 12, "CARRY": 6, "MUX": 6, "EBR": 0,
                                          "SPRAM": 0, "DSP": 0}
    assert cells["core.array"] == {"copies": 1, "LUT4": 0, "FF": 0, "CARRY": 0, "MUX": 0, "EBR": 2, "SPRAM": 0,
                                   "DSP": 1}


HANGING_YOSYS = """#!/bin/sh
sleep 600 &
echo $! > {child}
wait
"""


def test_a_synthesis_past_its_deadline_is_an_error_line(tmp_path, monkeypatch, capsys):
    """Yosys past --synth-timeout: killed with its process group (its child too), and one line says what timed out
    and what to do, not a TimeoutExpired traceback."""
    pytest.importorskip("amaranth", reason="the core needs amaranth: pip install -e '.[hw]'")
    import sim.netlist

    child, yosys = tmp_path / "child.pid", tmp_path / "yosys"
    yosys.write_text(HANGING_YOSYS.format(child=child))
    yosys.chmod(0o755)
    monkeypatch.setattr(sim.netlist, "yosys_executable", lambda: str(yosys))
    try:
        cells = tmp_path / "cells.json"
        assert load_benchmark("core_cells").main(["--synth-timeout", "2", "--json-out", str(cells)]) == 1
        assert ends_within(int(child.read_text()), 5), "Yosys's own child outlived it"
    finally:
        if child.exists() and running(int(child.read_text())):
            os.kill(int(child.read_text()), signal.SIGKILL)
    err = capsys.readouterr().err
    assert "core_cells: error: Yosys's synthesis of the 1 x 1 core did not finish within 2 s and was killed; a " \
           "larger core takes longer: raise --synth-timeout" in err
    assert not (tmp_path / "cells.json").exists()

