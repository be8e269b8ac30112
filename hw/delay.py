"""Delay lines: a value through a chain of registers, the pipelining that every unit uses; registers
that keep their own flip-flops (:func:`own`, :mod:`hw.flip_flops`); where data registers ignore the reset
(:func:`reset_less_data`)."""

from __future__ import annotations

from amaranth import Module, Signal, Value

from .fabric import is_ecp5
from .flip_flops import OWN_FLIP_FLOP


def reset_less_data(platform) -> bool:
    """Whether data registers (values that count only where a register with the reset says they are valid)
    ignore the ``sync`` domain's reset on ``platform`` (an Amaranth platform, or None in simulation): on an
    ECP5, whose reset reaches each flip-flop through general routing (the ULX3S-85F's PLL-lock reset reached
    2,743 endpoints after 10 ns at fda0f40, 15.8 ns the latest). Not on the iCE40, whose logic blocks' eight
    flip-flops share one reset net: registers without it pack apart, and the UP5K digits core, 99% full,
    found no legal placement at 0e077f7."""
    return is_ecp5(platform)


def own(register):
    """``register`` (a Signal, or a View of one, assigned in ``sync``) marked to keep its own flip-flops
    (:data:`hw.flip_flops.OWN_FLIP_FLOP`)."""
    Value.cast(register).attrs[OWN_FLIP_FLOP] = 1
    return register


def delays(m: Module, value, cycles: int, name: str, *, own_flip_flops: bool = False,
           reset_less: bool = False) -> list:
    """``value`` and its copies through 1..``cycles`` registers of module ``m`` (named ``{name}_1`` ...):
    ``[value, value_1, ..., value_cycles]``; ``own_flip_flops``: the registers keep their own flip-flops
    (:func:`own`); ``reset_less``: they ignore the domain's reset (data whose value matters only
    where a reset register says it is valid)."""
    stages = [value]
    for n in range(1, cycles + 1):
        register = Signal(value.shape(), name=f"{name}_{n}", reset_less=reset_less)
        if own_flip_flops:
            own(register)
        m.d.sync += register.eq(stages[-1])
        stages.append(register)
    return stages


def delayed(m: Module, value, cycles: int, name: str, *, own_flip_flops: bool = False, reset_less: bool = False):
    """``value`` through ``cycles`` registers: the last of :func:`delays`."""
    return delays(m, value, cycles, name, own_flip_flops=own_flip_flops, reset_less=reset_less)[-1]


def late_write(m: Module, ports, name: str, parts, *, reset_less: bool = False) -> list:
    """The ports of a memory write (its enable first, then its address and data...) each a cycle later, from a
    register of its own (:func:`own`) named ``{name}_{part}_1``: flip-flops that can sit by the block RAM they
    write, for writes that come while idle, long before anything reads what they wrote. ``reset_less``: the
    registers after the enable ignore the domain's reset (:func:`reset_less_data`)."""
    return [delayed(m, port, 1, f"{name}_{part}", own_flip_flops=True, reset_less=reset_less and n > 0)
            for n, (port, part) in enumerate(zip(ports, parts, strict=True))]
