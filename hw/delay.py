"""Delay lines: a value through a chain of registers, the pipelining that every unit uses."""

from __future__ import annotations

from amaranth import Module, Signal


def delays(m: Module, value, cycles: int, name: str) -> list:
    """``value`` and its copies through 1..``cycles`` registers of module ``m`` (named ``{name}_1`` ...):
    ``[value, value_1, ..., value_cycles]``."""
    stages = [value]
    for n in range(1, cycles + 1):
        register = Signal(value.shape(), name=f"{name}_{n}")
        m.d.sync += register.eq(stages[-1])
        stages.append(register)
    return stages


def delayed(m: Module, value, cycles: int, name: str):
    """``value`` through ``cycles`` registers: the last of :func:`delays`."""
    return delays(m, value, cycles, name)[-1]
