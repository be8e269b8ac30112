"""lcq_train.stop_signals: SIGTERM and SIGHUP raised like Ctrl-C, and held over statements that must not be cut."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lcq_train.stop_signals import Stopped, signals_held, stop_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_raises_stopped_with_the_shells_status(sig):
    before = signal.getsignal(sig)
    with pytest.raises(Stopped) as stopped:
        with stop_signals():
            os.kill(os.getpid(), sig)
    assert stopped.value.signum == sig and stopped.value.exit_status == 128 + sig
    assert signal.getsignal(sig) == before          # the handler before is put back


def test_a_signal_while_held_is_raised_on_leaving_the_hold():
    done = []
    with pytest.raises(Stopped) as stopped:
        with stop_signals():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGHUP)
                done.append("the rest of the held statements")
            done.append("after the hold")
    assert done == ["the rest of the held statements"] and stopped.value.signum == signal.SIGTERM


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc to read a signal mask")
def test_a_child_started_while_held_does_not_inherit_blocked_signals():
    """(A blocked mask would be inherited, and the child would ignore the SIGTERM meant to stop it.)"""
    with stop_signals(), signals_held():
        out = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"], capture_output=True,
                             text=True, timeout=60).stdout
    blocked = int(next(line for line in out.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    assert not blocked & ((1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1)))
