"""Upload → train → publish → hot swap → predict, through real API and worker processes."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from adapters_store.keys import INFERENCE_GROUP
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import (
    ApiProcess,
    WorkerProcess,
    api_ready,
    running_stack,
    wait_for,
    wait_job,
    wait_workers,
)

FAST = {"epochs": 8, "batch_size": 8, "learning_rate": 5e-3, "head_learning_rate": 1e-2,
        "bottleneck_size": 16, "max_wait_ms": 2, "heartbeat_s": 0.5, "lease_ttl_s": 5.0,
        "safm_learning_rate": 5e-3, "safm_epochs": 6, "safm_warmup_epochs": 1,
        "safm_search_epochs": 1}


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r.to_dict()) + "\n" for r in rows).encode()


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
def stack(stack_settings: Settings, registry: Registry,
          tmp_path: Path) -> Iterator[dict[str, WorkerProcess]]:
    with running_stack(stack_settings, registry, tmp_path / "logs") as procs:
        yield procs


def upload(url: str, task: str, data: bytes, name: str = "data.jsonl", query: str = "") -> dict:
    r = httpx.post(f"{url}/v1/tasks/{task}/datasets?{query}", files={"file": (name, data)},
                   timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def test_upload_train_publish_predict(stack: dict, registry: Registry) -> None:
    url = stack["api"].url
    procs = tuple(stack.values())
    accepted = upload(url, "colors", jsonl(keyword_rows(40)), query="strategy=per_task")
    job = wait_job(registry, accepted["job_id"], 180, procs)
    assert job.state == "succeeded", job.error
    assert job.result is not None and job.result.version == "v1"
    assert job.result.val_accuracy >= 0.9 and job.result.params_added > 0
    assert job.progress.step == job.progress.total_steps > 0
    shown = httpx.get(f"{url}/v1/jobs/{job.job_id}").json()
    assert shown["state"] == "succeeded" and shown["result"]["version"] == "v1"

    r = httpx.post(f"{url}/v1/tasks/colors/predict", timeout=30, json={"inputs": [
        "a cherry and a tomato today", "the sapphire ocean news", "sky and sapphire story"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["label"] for p in body["predictions"]] == ["red", "blue", "blue"]
    assert body["version"] == r.headers["X-Adapter-Version"] == "v1"
    assert abs(sum(body["predictions"][0]["scores"].values()) - 1) < 1e-5

    bank = httpx.get(f"{url}/v1/adapters").json()
    assert bank["live_version"] == "v1"
    assert len(bank["modules"]) == 2 and all(m["users"] == ["colors"] for m in bank["modules"])
    assert bank["totals"]["adapter_params"] == sum(m["params"] for m in bank["modules"])
    metrics = httpx.get(f"{url}/metrics").text
    assert "colors" in metrics


def test_publish_during_concurrent_predictions_fails_nothing(stack: dict,
                                                             registry: Registry) -> None:
    url = stack["api"].url
    procs = tuple(stack.values())
    first = upload(url, "colors", jsonl(keyword_rows(30)))
    assert wait_job(registry, first["job_id"], 180, procs).state == "succeeded"

    results: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{url}/v1/tasks/colors/predict",
                                json={"inputs": ["cherry apple", "ocean sky"]})
                version = r.json().get("version") if r.status_code == 200 else None
                results.append((r.status_code, version, r.headers.get("X-Adapter-Version")))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(hammer)
        second = upload(url, "shapes", jsonl(keyword_rows(30, seed=9)))
        assert wait_job(registry, second["job_id"], 180, procs).state == "succeeded"
        wait_for(lambda: any(v == "v2" for _, v, _ in results[-20:]), 30, "replies from v2")
        stop.set()
    assert len(results) > 20
    assert all(code == 200 for code, _, _ in results), {c for c, _, _ in results}
    assert all(v == h and v in ("v1", "v2") for _, v, h in results)
    versions = [v for _, v, _ in results]
    assert "v1" in versions and "v2" in versions


def test_worker_killed_mid_stream_is_covered_by_another(stack_settings: Settings,
                                                        registry: Registry,
                                                        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    trainer = WorkerProcess("trainer", stack_settings, logs)
    api = ApiProcess(stack_settings, logs)
    # The victim waits long for a full batch, so requests it has read sit pending, unacked.
    victim = WorkerProcess("inference", stack_settings, logs, max_wait_ms=10_000, max_batch=64)
    procs = (trainer, api, victim)
    try:
        wait_workers(registry, "inference", 1, 120, procs)
        wait_for(lambda: api_ready(api.url), 60, "API ready", procs)
        job = upload(api.url, "colors", jsonl(keyword_rows(30)))
        assert wait_job(registry, job["job_id"], 180, procs).state == "succeeded"
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(httpx.post, f"{api.url}/v1/tasks/colors/predict",
                                   json={"inputs": [f"apple cherry tomato {w}"]}, timeout=60)
                       for w in ("the", "news", "story")]

            def pending() -> int:
                info = registry.r.xpending(registry.keys.infer_stream, INFERENCE_GROUP)
                return info["pending"] >= 3

            wait_for(pending, 30, "requests pending on the victim", procs)
            victim.stop(signal.SIGKILL)
            # The idle-claim path is off (a minute): only "its consumer has no heartbeat any
            # more" can hand the victim's requests over before the predict timeout.
            rescuer = WorkerProcess("inference", stack_settings, logs, claim_idle_ms=60_000)
            try:
                replies = [f.result(timeout=90) for f in futures]
            finally:
                rescuer.stop()
        assert [r.status_code for r in replies] == [200, 200, 200], [r.text for r in replies]
        assert all(r.json()["predictions"][0]["label"] == "red" for r in replies)
    finally:
        for p in procs:
            p.stop()


def test_failed_job_leaves_the_bank_unchanged(stack: dict, registry: Registry,
                                              stack_settings: Settings) -> None:
    url = stack["api"].url
    procs = tuple(stack.values())
    first = upload(url, "colors", jsonl(keyword_rows(20)))
    assert wait_job(registry, first["job_id"], 180, procs).state == "succeeded"
    before = registry.live_manifest()
    # Stop the trainer, lose the second dataset's blob from storage, then let it run the job.
    stack["trainer"].stop()
    second = upload(url, "shapes", jsonl(keyword_rows(20, seed=4)))
    blob = registry.dataset(second["dataset_id"]).blob
    (stack_settings.data_dir / "blobs" / "sha256" / blob[:2] / blob).unlink()
    trainer = WorkerProcess("trainer", stack_settings, stack_settings.data_dir.parent / "logs")
    try:
        job = wait_job(registry, second["job_id"], 180, (*procs[:2], trainer))
    finally:
        trainer.stop()
    assert job.state == "failed" and "missing" in (job.error or "")
    assert registry.live_manifest() == before
    r = httpx.post(f"{url}/v1/tasks/shapes/predict", json={"inputs": ["x"]})
    assert r.status_code == 404
    assert httpx.post(f"{url}/v1/tasks/colors/predict", json={"inputs": ["x"]}).status_code == 200


def test_second_trainer_waits_on_the_lease(stack_settings: Settings, registry: Registry,
                                           tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    trainers = [WorkerProcess("trainer", stack_settings, logs) for _ in range(2)]
    try:
        wait_workers(registry, "trainer", 2, 120, tuple(trainers))
        holder = wait_for(lambda: registry.r.get(registry.keys.trainer_lease), 30, "a lease")
        from adapters_store.blobstore import BlobStore
        from adapters_store.datasets import parse_dataset
        from adapters_store.records import DatasetRecord

        blobs = BlobStore(stack_settings.data_dir / "blobs")
        jobs = []
        for i, task in enumerate(("one", "two")):
            parsed = parse_dataset(jsonl(keyword_rows(15, seed=i)), "jsonl", min_rows_per_label=5,
                                   max_chars=1000, max_rows=1000)
            digest = blobs.put(parsed.to_jsonl())
            record = DatasetRecord(id=f"ds_{digest[:16]}", task_id=task, filename="x.jsonl",
                                   format="jsonl", input_kind="single", rows=len(parsed.rows),
                                   label_counts=parsed.label_counts, blob=digest)
            jobs.append(registry.submit(record, "per_task", {}))
        done = [wait_job(registry, j.job_id, 180, tuple(trainers)) for j in jobs]
        assert all(j.state == "succeeded" for j in done), [j.error for j in done]
        assert {j.trainer_id for j in done} == {holder.decode()}
        assert registry.live_manifest().version == "v2"
    finally:
        for t in trainers:
            t.stop()


def test_safm_sequence_through_the_service(stack: dict, registry: Registry) -> None:
    """Three uploads with the default strategy (safm) publish three versions; the registry's
    parameter total is the sum over distinct modules, and sharing is visible per module."""
    url = stack["api"].url
    procs = tuple(stack.values())
    seeds = {"colors": 0, "colors-b": 0, "colors-c": 5}
    for n, (task, seed) in enumerate(seeds.items(), start=1):
        accepted = upload(url, task, jsonl(keyword_rows(20, seed=seed)) if task != "colors-c"
                          else jsonl(keyword_rows(25, seed=seed)))
        job = wait_job(registry, accepted["job_id"], 240, procs)
        assert job.state == "succeeded", job.error
        assert job.strategy == "safm" and job.result.version == f"v{n}"
        assert len(job.result.decisions) == 2
        assert job.result.strategy_params.alpha == 0.11
        # Over HTTP the job keeps its field names; progress covered the whole job.
        body = httpx.get(f"{url}/v1/jobs/{job.job_id}").json()
        assert body["result"]["strategy_params"]["alpha"] == 0.11
        assert {"layer", "choice", "forced", "module", "weights"} <= set(
            body["result"]["decisions"][0])
        assert body["progress"]["fraction"] == 1.0 and body["progress"]["total_steps"] > 0
    bank = httpx.get(f"{url}/v1/adapters").json()
    assert bank["live_version"] == "v3" and bank["strategy"] == "safm"
    assert bank["totals"]["adapter_params"] == sum(m["params"] for m in bank["modules"])
    assert bank["totals"]["tasks"] == 3
    users = {m["id"]: m["users"] for m in bank["modules"]}
    for task, route in bank["routes"].items():
        for module_id in route["layers"]:
            if module_id is not None:
                assert task in users[module_id]
    detail = httpx.get(f"{url}/v1/tasks/colors-b").json()
    assert detail["route"]["layers"] is not None
    assert len(httpx.get(f"{url}/v1/bank/versions").json()["history"]) == 3
    # colors-b is colors again: the validation decision and the gate's table reach the task.
    result = detail["jobs"][-1]["result"]
    assert {d["method"] for d in result["decisions"] if not d["forced"]} == {"validation"}
    gate = result["gate"]
    assert gate["mode"] == "fallback" and gate["outcome"] in ("passed", "fallback", "unchecked")
    assert set(gate["checks"]) == set(result["old_tasks"])
    for task, check in gate["checks"].items():
        final = result["old_tasks"][task]
        assert final["after"] >= final["before"] - check["tolerance"] - 1e-9
    for layer in bank["layers"]:
        assert set(layer["users"]) == set(layer["modules"])
        assert set(layer["empty"]) | {t for u in layer["users"].values() for t in u} == \
            set(seeds)


def test_strategy_parameters_are_validated_per_upload(stack: dict) -> None:
    url = stack["api"].url
    data = jsonl(keyword_rows(10))
    for query, fragment in (("strategy=safm&alpha=0.01", "alpha > beta"),
                            ("strategy=acm&layer_loss_weight=0.4", "layer_loss_weight"),
                            ("strategy=per_task&beta=0.2", "do not apply"),
                            ("strategy=safm&replay_ratio=-1", "invalid strategy parameters"),
                            ("strategy=safm&bogus=1", "invalid strategy parameters"),
                            ("strategy=nope", "")):
        r = httpx.post(f"{url}/v1/tasks/colors/datasets?{query}",
                       files={"file": ("d.jsonl", data)})
        assert r.status_code == 422, (query, r.text)
        assert fragment in r.text
    assert httpx.get(f"{url}/v1/tasks/colors").status_code == 404  # nothing was stored
    r = httpx.post(f"{url}/v1/tasks/colors/datasets?strategy=acm&epochs=1&forced_layers=0,1"
                   "&search_epochs=0", files={"file": ("d.jsonl", data)})
    assert r.status_code == 202, r.text


@contextmanager
def _job_in_tuning(settings: Settings, registry: Registry,
                   logs: Path) -> Iterator[tuple[WorkerProcess, str]]:
    """A trainer (and the API) with a long safm job that has reached its tuning stage."""
    first = WorkerProcess("trainer", settings, logs)
    api = ApiProcess(settings, logs)
    try:
        wait_workers(registry, "trainer", 1, 120, (first, api))
        wait_for(lambda: httpx.get(f"{api.url}/healthz").status_code == 200, 60, "API")
        job_id = upload(api.url, "colors", jsonl(keyword_rows(30)))["job_id"]
        wait_for(lambda: registry.job(job_id).progress.stage == "tuning", 120, "tuning", (first,))
        yield first, job_id
    finally:
        first.stop()
        api.stop()


def test_trainer_stopped_mid_job_leaves_it_to_the_next(stack_settings: Settings,
                                                       registry: Registry,
                                                       tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    slow = stack_settings.model_copy(update={"safm_epochs": 40})
    with _job_in_tuning(slow, registry, logs) as (first, job_id):
        assert first.stop(timeout_s=15) == 0  # SIGTERM: stops at the next step, exits cleanly
        job = registry.job(job_id)
        assert job.state == "queued" and job.attempts == 0
        assert registry.live_version() is None
        second = WorkerProcess("trainer", slow, logs)
        try:
            done = wait_job(registry, job_id, 60, (second,))
        finally:
            second.stop()
        assert done.state == "succeeded" and done.trainer_id != job.trainer_id


def test_trainer_killed_mid_job_is_taken_over_at_once(stack_settings: Settings,
                                                       registry: Registry,
                                                       tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    # A long lease: only "the lease holder has no heartbeat" can hand the job over in time.
    slow = stack_settings.model_copy(update={"safm_epochs": 40, "lease_ttl_s": 300.0})
    with _job_in_tuning(slow, registry, logs) as (first, job_id):
        dead_id = registry.job(job_id).trainer_id
        first.stop(signal.SIGKILL)
        assert registry.live_version() is None  # the bank never moved
        second = WorkerProcess("trainer", slow, logs)
        try:
            done = wait_job(registry, job_id, 120, (second,))
        finally:
            second.stop()
        assert done.state == "succeeded", done.error
        assert done.reclaimed_from == dead_id and done.trainer_id != dead_id
        assert done.attempts == 2
