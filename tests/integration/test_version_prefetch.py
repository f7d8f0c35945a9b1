"""Staged publishes: an inference worker's prefetch thread loads a version before it goes live."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest

from adapters_store.blobstore import BlobStore
from adapters_store.collector import collector_held
from adapters_store.errors import Conflict, NotFound
from adapters_store.registry import Registry
from adapters_store.streams import Heartbeat
from tests.factories import CPU, bank_manifest, random_module
from worker import version_prefetch
from worker.bank import LoadedBank
from worker.version_prefetch import VersionPrefetcher


def _beat(registry: Registry, worker_id: str, kind: str = "inference") -> None:
    registry.beat(Heartbeat(worker_id=worker_id, kind=kind, pid=1, version=None), ttl_s=30)


def test_staged_version_loads_off_the_serving_path_and_is_reported_prepared(
        registry: Registry, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    a, b = random_module("lora", 0, seed=1), random_module("lora", 1, seed=2)
    v1 = bank_manifest(blobs, 1, [a], {"t": [0, None]})
    v2 = bank_manifest(blobs, 2, [a, b], {"t": [0, None], "u": [0, 1]}, parent="v1")
    registry.publish(v1, reason="test")
    bank = LoadedBank(blobs, CPU, keep=1)
    serving: list[str | None] = [None]
    prefetch = VersionPrefetcher(registry, bank, "w-1", 0.01, serving=lambda: serving[0])
    prefetch.poll_once()
    assert bank.get("v1") is not None  # the live version, loaded without being staged
    serving[0] = "v1"

    registry.stage(v2)
    assert registry.staged_and_live() == ("v2", "v1")
    prefetch.poll_once()
    assert bank.get("v2") is not None
    assert bank.get("v1") is not None  # keep=1, but the version being served is never evicted
    assert bank.get("v2").tasks["u"].modules[0] is bank.get("v1").tasks["t"].modules[0]

    _beat(registry, "w-1")
    _beat(registry, "trainer-1", kind="trainer")  # only inference workers are waited for
    report = registry.await_prepared("v2", timeout_s=5)
    assert (report.workers, report.prepared) == (1, 1) and report.waited_s < 1

    _beat(registry, "w-2")  # a second worker that never loads it: the wait is bounded
    started = time.monotonic()
    late = registry.publish(v2, reason="test", prepare_timeout_s=0.3)
    assert late is not None and (late.workers, late.prepared) == (2, 1)
    assert 0.3 <= time.monotonic() - started < 3
    assert registry.live_version() == "v2"


def test_a_broken_staged_version_is_skipped_and_the_live_one_still_loads(
        registry: Registry, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    a, b = random_module("bottleneck", 0, seed=3), random_module("bottleneck", 1, seed=4)
    v1 = bank_manifest(blobs, 1, [a], {"t": [0, None]})
    broken = bank_manifest(BlobStore(tmp_path / "elsewhere"), 2, [a, b], {"t": [0, 1]},
                           parent="v1")  # its blobs are not in this worker's store
    registry.publish(v1, reason="test")
    registry.stage(broken)
    bank = LoadedBank(blobs, CPU, keep=2)
    prefetch = VersionPrefetcher(registry, bank, "w-1", 0.01, serving=lambda: None)
    prefetch.poll_once()
    prefetch.poll_once()  # within the retry interval: no second attempt, no exception
    assert bank.get("v1") is not None and bank.get("v2") is None
    _beat(registry, "w-1")
    report = registry.await_prepared("v2", timeout_s=0.1)
    assert (report.workers, report.prepared) == (1, 0)


def test_publish_without_inference_workers_does_not_wait(registry: Registry,
                                                         tmp_path: Path) -> None:
    v1 = bank_manifest(BlobStore(tmp_path), 1, [random_module("lora", 0)], {"t": [0, None]})
    report = registry.publish(v1, reason="test", prepare_timeout_s=30)
    assert report is not None and report.workers == 0 and report.waited_s < 1
    assert registry.live_version() == "v1" and registry.manifest("v1").version == "v1"
    stale = bank_manifest(BlobStore(tmp_path), 2, [random_module("lora", 0)], {"t": [0, None]})
    with pytest.raises(Conflict):  # built on no parent while v1 is live: never published
        registry.publish(stale, reason="test", prepare_timeout_s=30)
    with pytest.raises(NotFound):  # and not left stored, where a rollback could reach it
        registry.manifest("v2")
    assert not registry.is_staged("v2")


def test_a_staged_version_is_not_reachable_by_rollback_until_published(
        registry: Registry, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    v1 = bank_manifest(blobs, 1, [random_module("lora", 0)], {"t": [0, None]})
    v2 = bank_manifest(blobs, 2, [random_module("lora", 0, seed=3)], {"t": [0, None]},
                       parent="v1")
    registry.publish(v1, reason="test")
    registry.stage(v2)  # what publish does first, while it waits for the workers
    assert registry.is_staged("v2") and not registry.is_staged("v1")
    with pytest.raises(Conflict):
        registry.rollback("v2")
    assert registry.live_version() == "v1"
    registry.publish(v2, reason="test", prepare_timeout_s=0.05)
    assert not registry.is_staged("v2") and registry.staged_and_live() == (None, "v2")
    registry.rollback("v1")
    registry.rollback("v2")  # published once: an ordinary earlier version now
    assert registry.live_version() == "v2"


def test_a_loader_pause_waits_for_the_running_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordering, not timing: with a long bound, a pause taken during a forward returns only
    once the forward has ended; outside a forward it returns at once."""
    monkeypatch.setattr(version_prefetch, "MAX_DEFER_S", 30.0)
    gate = version_prefetch.ServingGate()
    gate.pause()  # no forward: no wait
    events: list[str] = []
    with gate.forward():
        loader = threading.Thread(target=lambda: (gate.pause(), events.append("paused")))
        loader.start()
        loader.join(timeout=0.2)
        events.append("forward done")
    loader.join(timeout=30)
    assert events == ["forward done", "paused"]


def test_loading_holds_the_collector_and_freezes_what_it_loaded() -> None:
    enabled = gc.isenabled()
    try:
        gc.enable()
        with collector_held():
            assert not gc.isenabled()  # no full collection can start while a version loads
            loaded = [{"record": n} for n in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(loaded)  # out of later collections' walks
        gc.disable()
        with collector_held():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.unfreeze()
        (gc.enable if enabled else gc.disable)()
