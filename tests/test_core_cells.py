"""benchmarks/core_cells.py's count of Yosys's ``stat -json``: pure function, no synthesis."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_module_cells_counts_each_modules_own_cells_by_kind():
    spec = importlib.util.spec_from_file_location("core_cells", REPO / "benchmarks" / "core_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stats = {"modules": {"\\core": {"num_cells_by_type": {}},
                         "\\core.bridge": {"num_cells_by_type": {"SB_LUT4": 10, "SB_DFF": 3, "SB_DFFESR": 4,
                                                                 "SB_CARRY": 2, "SB_RAM40_4K": 1}},
                         "\\core.engine": {"num_cells_by_type": {"SB_SPRAM256KA": 2, "SB_MAC16": 1, "$scopeinfo": 5}}}}
    cells = module.module_cells(stats)
    assert cells["core.bridge"] == {"LUT4": 10, "FF": 7, "CARRY": 2, "EBR": 1, "SPRAM": 0, "DSP": 0}
    assert cells["core.engine"] == {"LUT4": 0, "FF": 0, "CARRY": 0, "EBR": 0, "SPRAM": 2, "DSP": 1}
    assert not any(cells["core"].values())
