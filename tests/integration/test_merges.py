"""Sparse tasks and merges through the real service: train, merge as a versioned bank job,
serve the merged task, refuse a merge that would hurt a member, reject bad merge requests."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import running_stack, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload


@pytest.fixture
def stack(settings: Settings, registry: Registry, tmp_path: Path) -> Iterator[dict]:
    with running_stack(settings.model_copy(update=FAST), registry, tmp_path / "logs") as procs:
        yield procs


def _train(url: str, registry: Registry, procs: tuple, task: str, rows: list,
           query: str) -> None:
    job = wait_job(registry, upload(url, task, jsonl(rows), query=query)["job_id"], 180, procs)
    assert job.state == "succeeded", job.error


def _merge(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/merges", json=body, timeout=30)


def test_sparse_tasks_merge_serve_and_refuse(stack: dict, registry: Registry) -> None:
    url, procs = stack["api"].url, tuple(stack.values())
    _train(url, registry, procs, "red1", keyword_rows(30, seed=1), "strategy=sparse")
    _train(url, registry, procs, "red2", keyword_rows(30, seed=2), "strategy=sparse")
    bank = httpx.get(f"{url}/v1/adapters").json()
    sparse = [m for m in bank["modules"] if m["kind"] == "sparse"]
    assert len(sparse) == 4 and all(0 < m["density"] <= 0.06 for m in sparse)
    _train(url, registry, procs, "warm", [dataclasses.replace(r, label={"red": "warm",
                                                                         "blue": "cold"}[r.label])
                                          for r in keyword_rows(30, seed=3)],
           "strategy=per_task")
    rng = random.Random(0)
    noise = [dataclasses.replace(r, label=rng.choice(["red", "blue"]))
             for r in keyword_rows(30, seed=4)]
    _train(url, registry, procs, "noise", noise,
           "strategy=sparse&keep_ratio=1.0&learning_rate=0.05&epochs=10")
    live = registry.live_version()
    jobs_before = len(registry.jobs(1000))

    # Bad requests: a clear 4xx each, nothing stored, the bank unchanged.
    bad = [
        ({"tasks": ["red1", "nope"], "method": "uniform", "name": "m"}, 404, "unknown tasks"),
        ({"tasks": ["red1"], "method": "uniform", "name": "m"}, 422, "at least 2"),
        ({"tasks": ["red1", "red2"], "method": "slerp", "name": "m"}, 422, "method"),
        ({"tasks": ["red1", "warm"], "method": "uniform", "replace": True}, 422,
         "different module kinds"),
        ({"tasks": ["red1", "red2"], "method": "uniform"}, 422, "needs a name"),
        ({"tasks": ["red1", "red2"], "method": "uniform", "name": "warm"}, 409, "exists"),
        ({"tasks": ["red1", "red1"], "method": "uniform", "name": "m"}, 422, "twice"),
    ]
    for body, status, words in bad:
        r = _merge(url, body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, (words, r.text)
    assert registry.live_version() == live and len(registry.jobs(1000)) == jobs_before

    # A named merge: one new version; the merged task serves, with its members recorded.
    r = _merge(url, {"tasks": ["red1", "red2"], "method": "uniform_sparse", "name": "reds"})
    assert r.status_code == 202, r.text
    job = wait_job(registry, r.json()["job_id"], 120, procs)
    assert job.state == "succeeded", job.error
    number = int(live.lstrip("v")) + 1
    assert registry.live_version() == job.result.version == f"v{number}"
    assert job.result.merge.members == ["red1", "red2"]
    assert set(job.result.old_tasks) == {"red1", "red2"}
    detail = httpx.get(f"{url}/v1/tasks/reds").json()
    assert detail["route"]["merge"]["method"] == "uniform_sparse"
    assert detail["route"]["strategy"] == "merge"
    pred = httpx.post(f"{url}/v1/tasks/reds/predict", timeout=30,
                      json={"inputs": ["a cherry and a tomato", "ocean and sky"]})
    assert pred.status_code == 200, pred.text
    assert [p["label"] for p in pred.json()["predictions"]] == ["red", "blue"]
    listed = httpx.get(f"{url}/v1/merges").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job.job_id]

    # A replace that would hurt a member is refused: job failed, bank unchanged.
    live = registry.live_version()
    routes = httpx.get(f"{url}/v1/adapters").json()["routes"]
    r = _merge(url, {"tasks": ["red1", "noise"], "method": "uniform_sparse", "replace": True,
                     "tolerance": 0.0})
    refused = wait_job(registry, r.json()["job_id"], 120, procs)
    assert refused.state == "failed" and "refused" in (refused.error or "")
    assert registry.live_version() == live
    assert httpx.get(f"{url}/v1/adapters").json()["routes"] == routes

    # A replace within tolerance shrinks the bank: the members share the merged set.
    before = httpx.get(f"{url}/v1/adapters").json()["totals"]
    r = _merge(url, {"tasks": ["red1", "red2"], "method": "uniform_sparse", "replace": True,
                     "tolerance": 1.0})
    assert wait_job(registry, r.json()["job_id"], 120, procs).state == "succeeded"
    after = httpx.get(f"{url}/v1/adapters").json()
    assert after["routes"]["red1"]["layers"] == after["routes"]["red2"]["layers"] == \
        after["routes"]["reds"]["layers"]  # same merge, same content, same module ids
    assert after["totals"]["adapter_params"] < before["adapter_params"]
    assert after["totals"]["modules"] == before["modules"] - 4
