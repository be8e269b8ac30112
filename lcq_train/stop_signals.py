"""SIGTERM and SIGHUP raised as an exception, so that a command stopped by them cleans up as after Ctrl-C.

Their default action ends the process at once, without its ``finally`` blocks: the child processes it
would have stopped (training workers, a simulator in its own process group) go on running with PPID 1.
Within ``with stop_signals():`` (on the main thread; elsewhere nothing changes, as Python lets only the
main thread set handlers) either signal raises :class:`Stopped`, a ``KeyboardInterrupt``, so that the
code that handles Ctrl-C handles them too; the handlers before are put back after. Within it, ``with
signals_held():`` holds them back over a few statements that must not be cut in two (a child started and
recorded): one that comes meanwhile is raised on leaving it. (They are held by the handler, not blocked: a
blocked mask would be inherited by the child started there, which would then ignore the SIGTERM meant to stop
it, and would not hold a signal that the kernel hands to another thread of the process.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Hold:
    """What :func:`signals_held` holds: how many of them are open, and the first signal that came meanwhile."""
    depth = 0
    pending: int | None = None


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` is its number, ``exit_status`` the shell's for it (128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_status = 128 + signum


@contextmanager
def stop_signals(raising: Callable[[int], BaseException] = Stopped) -> Iterator[None]:
    """Within it, SIGTERM and SIGHUP raise ``raising(signum)`` (default :class:`Stopped`; on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _Hold.depth:
            _Hold.pending = _Hold.pending or signum
            return
        raise raising(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within it (inside :func:`stop_signals`), SIGTERM and SIGHUP wait; on leaving it, the first that came is
    raised as :func:`stop_signals` raises it."""
    _Hold.depth += 1
    try:
        yield
    finally:
        _Hold.depth -= 1
        if not _Hold.depth and _Hold.pending is not None:
            signum, _Hold.pending = _Hold.pending, None
            signal.raise_signal(signum)         # to the handler in place: stop_signals' raises it
