"""Bank loads run on a thread that ends with them, so the OpenMP team a load's parallel ops start
goes away with it instead of slowing every later forward (worker.version_prefetch.on_own_thread)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from worker.version_prefetch import on_own_thread

TASKS = Path("/proc/self/task")


def _threads() -> set[str]:
    """The process's thread ids: compared as sets, threads that other tests left to wind down
    and that exit meanwhile do not count."""
    return set(os.listdir(TASKS))


def _new_since(before: set[str]) -> set[str]:
    """Threads started since ``before`` and still there once exiting ones are gone (a thread
    may linger a moment after its join)."""
    deadline = time.monotonic() + 5
    new = _threads() - before
    while new and time.monotonic() < deadline:
        time.sleep(0.01)
        new = _threads() - before
    return new


def _parallel_op() -> float:
    return float(torch.ones(1 << 22).add_(1).sum())  # large enough for a parallel region


@pytest.mark.skipif(not TASKS.exists(), reason="counts threads through /proc")
def test_a_load_thread_takes_its_openmp_team_with_it() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _parallel_op()  # this thread's own team exists before counting
        before = _threads()
        assert on_own_thread(_parallel_op, "load") == float(2 * (1 << 22))
        left_behind = _new_since(before)
        # The same op on a thread that stays: its team stays too, which is what we avoid.
        ran, leave = threading.Event(), threading.Event()

        def lingering() -> None:
            _parallel_op()
            ran.set()
            leave.wait()

        thread = threading.Thread(target=lingering)
        thread.start()
        ran.wait()
        while_lingering = _threads() - before
        leave.set()
        thread.join()
    finally:
        torch.set_num_threads(threads)
    assert left_behind == set()
    assert len(while_lingering) >= 2  # the thread itself and its OpenMP worker


def test_what_the_load_raised_is_raised_to_the_caller() -> None:
    def broken() -> None:
        raise ValueError("bad blob")

    with pytest.raises(ValueError, match="bad blob"):
        on_own_thread(broken, "load")
