"""A reset tree: blocks that take the ``sync`` domain's reset from a flip-flop of their own, a cycle later.

On an ECP5 the reset reaches each flip-flop through general routing. At 665409a the ULX3S-85F's ResNet-20
core had one reset net from the PLL-lock synchronizer to 2,725 flip-flops and ~460 logic cells across the die;
its worst path ran from that synchronizer into the link bridge's FSM, 11.2 of its 14.5 ns in routing. A
block given its own copy of the reset (:func:`own_reset_submodule`) has a net of its own, driven from a
flip-flop that the placer puts among the block's loads; the nets from the synchronizer to the copies have a
cycle to themselves.

Each level of copies leaves reset a cycle after the level above it, so a core whose blocks hold copies of
their own takes nothing from outside while :func:`settling` says a block below it is still held.
"""

from __future__ import annotations

from amaranth import C, Cat, ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal, Value

from .delay import own
from .fabric import is_ecp5


def reset_tree(platform) -> bool:
    """Whether the blocks of a design on ``platform`` (an Amaranth platform, or None in simulation) take the
    reset from copies of their own (:func:`own_reset_submodule`): on an ECP5. Not on the iCE40 (untried there:
    the UP5K's whole-network core nearly fills the part)."""
    return is_ecp5(platform)


def own_reset_submodule(m: Module, name: str, elaboratable, platform, domain: str):
    """Add ``elaboratable`` to ``m`` as submodule ``name``. Where :func:`reset_tree` holds for ``platform``, it
    runs in ``domain`` (a name no other domain of the design has), local to ``m``: ``sync``'s clock, and
    ``sync``'s reset one cycle later from a register of its own (:func:`hw.delay.own`; itself without reset), so
    the block enters and leaves reset a cycle after ``sync`` does. The copy is 0 from configuration, when every
    register already holds its reset value: a block is not held for a cycle that ``sync`` is not (a simulation
    without reset starts loading at once). Elsewhere the block is added as it is. Returns ``elaboratable``."""
    if not reset_tree(platform):
        m.submodules[name] = elaboratable
        return elaboratable
    m.domains += (cd := ClockDomain(domain, local=True))
    rst = own(Signal(reset_less=True, name=f"{domain}_rst"))
    m.d.sync += rst.eq(ResetSignal("sync"))
    m.d.comb += [cd.clk.eq(ClockSignal("sync")), cd.rst.eq(rst)]
    m.submodules[name] = DomainRenamer({"sync": domain})(elaboratable)
    return elaboratable


def settling(m: Module, platform, levels: int) -> Value:
    """1 while a block ``levels`` copies of the reset below ``m`` (:func:`own_reset_submodule` within ``levels``
    of them) may still be held after ``sync``'s reset: from the cycle after the reset's first edge until the
    ``levels`` cycles after its last have passed, where :func:`reset_tree` holds for ``platform`` (else a
    constant 0). A core stops taking input while it is 1, so that nothing it passes on reaches a block still in
    reset (at 7b02bc5 a PE row's table entry loaded in the cycle after a reset was lost). It comes from a
    register of ``levels`` bits without reset, 0 from configuration: a core out of configuration takes input at
    once."""
    if not reset_tree(platform):
        return C(0, 1)
    held = Signal(levels, name="settling", reset_less=True)
    m.d.sync += held.eq(Cat(ResetSignal("sync"), held[:-1]))
    return held.any()


def when_settled(m: Module, platform, levels: int):
    """A function of a 1-bit value: the value ANDed with "no block ``levels`` below may still be held"
    (:func:`settling`) where :func:`reset_tree` holds for ``platform``; elsewhere the value itself, with no
    logic added (the UP5K's nearly full core then synthesizes as it did before the tree)."""
    if not reset_tree(platform):
        return lambda value: value
    held = settling(m, platform, levels)
    return lambda value: value & ~held
