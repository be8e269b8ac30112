"""One-hot state encoding of an Amaranth FSM in synthesis.

Amaranth gives every register an initial value, and Yosys' ``fsm_detect`` leaves a register with
one alone ("Register has an initialization value"): the FSM keeps Amaranth's binary state code,
and every state test and next-state choice decodes all its bits. Yosys extracts and re-encodes a
state register that carries the ``fsm_encoding`` attribute whatever its initial value, taking the
reset state from the domain's reset (every FSM here is in ``sync``, which the board holds in reset
until its PLL locks). One-hot, each state is one flip-flop: a state test reads one bit, and a
next-state bit is an OR of the transitions into its state. The RTL is unchanged; the netlist
simulations (``lcq sim --netlist``) run the re-encoded FSMs.
"""


def one_hot(fsm) -> None:
    """Mark the state register of ``fsm`` (the object of ``with m.FSM() as fsm``, after that block) for
    one-hot encoding by Yosys."""
    fsm.state.attrs["fsm_encoding"] = "one-hot"
