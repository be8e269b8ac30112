"""The UART's bit-period rule, the one both the gateware and the host side use: pure Python.

:class:`hw.uart.UartTx`/``UartRx`` count :func:`baud_divisor` clock cycles per bit, and
the boards (:func:`boards.boards.uart_baud`) pick the fastest rate this rule accepts.
The FPGA's side of the link is held within 1% of the nominal rate: 8N1 framing
tolerates about 4% between the two ends, and the host's USB-serial bridge has an error
of its own.
"""

import math

MIN_DIVISOR = 4  # the receiver samples mid-bit, two synchronizer cycles behind the line
BAUD_TOLERANCE = 0.01


def baud_divisor(clk_freq, baud) -> int:
    """Clock cycles per bit for ``baud`` from a ``clk_freq`` Hz clock.

    Raises :class:`ValueError`, naming the values, when the nearest whole divisor is
    off by more than :data:`BAUD_TOLERANCE` or below the receiver's minimum of
    :data:`MIN_DIVISOR` cycles per bit.
    """
    for name, value in (("Clock frequency", clk_freq), ("Baud rate", baud)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud!r} needs at least {MIN_DIVISOR} clock cycles per "
                         f"bit, but a {clk_freq!r} Hz clock gives {clk_freq / baud:.2f}")
    actual = clk_freq / divisor
    error = abs(actual - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"Baud rate {baud!r} is not reachable within {BAUD_TOLERANCE:.0%} from a {clk_freq!r} Hz "
                         f"clock: the nearest divisor {divisor} gives {actual:.0f} baud "
                         f"({error:.1%} off)")
    return divisor
