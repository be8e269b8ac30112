"""Where the simulation tests build, and how they skip when a simulator is missing.

``BUILD_ROOT`` is ``build/sim`` at the top of the checkout, or ``$LCQ_SIM_BUILD``; builds there are
reused across runs (Verilator rebuilds only what changed). :func:`require_simulators` skips the calling
test, naming the simulator and the reason, when one of them cannot run here.
"""

import os
from pathlib import Path

import pytest

from sim.runner import unavailable_reason

BUILD_ROOT = Path(os.environ.get("LCQ_SIM_BUILD", Path(__file__).resolve().parents[1] / "build" / "sim"))


def require_simulators(*sims: str) -> None:
    """Skip the test unless every simulator in ``sims`` ("icarus", "verilator") can run here."""
    for sim in sims:
        reason = unavailable_reason(sim)
        if reason is not None:
            pytest.skip(f"{sim} simulation skipped: {reason}")
