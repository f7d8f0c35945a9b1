"""Loading bank versions on an inference worker's second thread, off its serving path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis

from adapters_store.collector import collector_held
from adapters_store.registry import Registry
from worker.bank import LoadedBank

log = logging.getLogger(__name__)
T = TypeVar("T")

# A version that failed to load (bad blob, missing manifest) is retried this much later, so a
# broken stage costs one attempt per interval rather than one per poll.
RETRY_AFTER_S = 5.0


# While a forward runs, a loader pausing waits for it this long at most: forwards run nearly as if
# idle (a chunk of 32 records is about 0.3 ms of parsing), and under back-to-back forwards a
# version still loads, one chunk per wait (measured with 1,000 tasks: a 20 ms bound stretched the
# parse from 0.11 s to 4 s).
MAX_DEFER_S = 0.005


class ServingGate:
    """The serving thread marks its forwards; a loader thread pauses every few records, and a
    pause waits for a running forward to end (up to ``MAX_DEFER_S``) before it takes the GIL
    again. Without the wait a forward queued for the GIL behind the loader op after op: with
    1,000 tasks a one-row forward took up to 354 ms while a version loaded, 27 ms idle (101 ms
    once the loader only slept between chunks)."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()

    @contextmanager
    def forward(self) -> Iterator[None]:
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def pause(self) -> None:
        self._idle.wait(MAX_DEFER_S)
        time.sleep(0)  # releases the GIL even when no forward runs


class VersionPrefetcher:
    """Loads the staged and the live version whenever the bank lacks one, and tells the
    registry once a staged version is loaded, so a publish can wait for its workers.

    Parsing a manifest and loading its new modules takes tens of milliseconds to seconds with
    thousands of tasks; done here, the serving thread only swaps a reference between batches.
    """

    def __init__(self, registry: Registry, bank: LoadedBank, worker_id: str, poll_s: float,
                 serving: Callable[[], str | None], gate: ServingGate | None = None) -> None:
        self.registry = registry
        self.gate = gate or ServingGate()
        self.bank = bank
        self.worker_id = worker_id
        self.poll_s = poll_s
        self.serving = serving  # the version the serving thread holds: never evicted
        self.halt = threading.Event()
        self.live: str | None = None  # the live pointer as of the last poll
        self._prepared: set[str] = set()
        self._failed: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.halt.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="prefetch")
        self._thread.start()

    def stop(self) -> None:
        self.halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.halt.is_set():
            try:
                self.poll_once()
            except redis.RedisError as exc:  # the serving loop reports outages; just wait
                log.debug("prefetch on %s: redis unavailable: %s", self.worker_id, exc)
            self.halt.wait(self.poll_s)

    def poll_once(self) -> None:
        """One look at the staged and live pointers; loads what is missing."""
        staged, live = self.registry.staged_and_live()
        self.live = live
        for version in dict.fromkeys(v for v in (live, staged) if v is not None):
            if self.bank.get(version) is None and not self._load(version):
                continue
            if version == staged and version not in self._prepared:
                self.registry.mark_prepared(version, self.worker_id)
                self._prepared.add(version)

    def _load(self, version: str) -> bool:
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_AFTER_S:
            return False
        serving = self.serving()

        def load() -> None:
            with collector_held():
                manifest = self.registry.manifest(version, pause=self.gate.pause)
                self.bank.sync(manifest, protect=frozenset({serving} if serving else ()),
                               pause=self.gate.pause)

        try:
            on_own_thread(load, f"load-{version}")
        except redis.RedisError:
            raise
        except Exception:  # noqa: BLE001 - a bad version must not stop the prefetcher
            log.exception("worker %s could not prefetch bank %s", self.worker_id, version)
            self._failed[version] = time.monotonic()
            return False
        self._failed.pop(version, None)
        log.info("worker %s prefetched bank %s", self.worker_id, version)
        return True


def on_own_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a thread that ends with it; what it raised is raised here.

    With GNU OpenMP (torch's CPU wheels) every thread that runs a parallel op keeps its own team
    of worker threads until it exits, and once a process has more OpenMP threads than cores,
    libgomp stops spinning between parallel regions in every team: each of a forward's hundreds
    of regions then wakes its workers through the kernel. Measured on 2 CPU cores after one
    load on the long-lived prefetch thread: the serving thread's one-row MiniLM forward took
    22-26 ms instead of 16-17, and the worker's one-row request 28 ms of compute instead of 20.
    A thread that exits takes its team with it.
    """
    result: list[T] = []
    raised: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            raised.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]
    return result[0]
