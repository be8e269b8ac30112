"""Several components under one Verilog top, so that one simulator build serves many test cases.

A Verilator build costs ~10-25 s of C++ compilation, most of it Verilator's runtime, the
same for a small design as for a few of them; designs whose constants differ (the PE
array's level ROMs, per bit width and variant) can share that cost side by side::

    top = Bundle({"rom_w2a2": PEArray(...), "rom_w3a3": PEArray(...)})

The ports of member ``name`` keep their names behind the prefix ``name__``
(``rom_w2a2__a_valid__0``); ``clk`` and ``rst`` are shared.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out


class Bundle(wiring.Component):
    """``members`` (name -> ``wiring.Component``) as submodules, each one's ports exposed under ``name__``."""

    def __init__(self, members: dict):
        self.members = dict(members)
        super().__init__({name: Out(component.signature) for name, component in self.members.items()})

    @staticmethod
    def prefix(name: str) -> str:
        """The Verilog port-name prefix of member ``name``."""
        return f"{name}__"

    def elaborate(self, platform):
        m = Module()
        for name, component in self.members.items():
            m.submodules[name] = component
            wiring.connect(m, wiring.flipped(getattr(self, name)), component)
        return m
