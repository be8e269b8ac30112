"""lcq_train.runs.training_pool: runs side by side in spawned workers, stopped at once by an interrupt."""

import os
import time

import pytest

from lcq_train.runs import training_pool


def test_the_pool_runs_its_jobs_in_other_processes():
    with training_pool(2) as pool:
        pids = {pool.submit(os.getpid).result(timeout=120) for _ in range(4)}
    assert os.getpid() not in pids


def test_an_interrupt_cancels_the_queued_runs_and_stops_those_under_way():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with training_pool(2) as pool:
            futures = [pool.submit(time.sleep, 120) for _ in range(4)]
            while not futures[0].running():           # handed to the workers (spawning them takes seconds)
                assert time.monotonic() - started < 120
                time.sleep(0.1)
            raise KeyboardInterrupt
    assert time.monotonic() - started < 60            # not the 240 s of sleeping the workers were given
    assert futures[3].cancelled()                      # queued: never started
