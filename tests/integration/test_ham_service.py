"""HAM through the real service: three uploads with G_max 2, groups in the registry, every task
and the task-agnostic route served."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters_store.records import HAM_ALL_TASK
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import running_stack, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload


@pytest.fixture
def stack(settings: Settings, registry: Registry, tmp_path: Path) -> Iterator[dict]:
    with running_stack(settings.model_copy(update=FAST), registry, tmp_path / "logs") as procs:
        yield procs


def test_three_ham_tasks_two_groups_served(stack: dict, registry: Registry) -> None:
    url, procs = stack["api"].url, tuple(stack.values())
    labels = {"fruit": ("red", "blue"), "mood": ("warm", "cold"), "sign": ("plus", "minus")}
    for seed, (task, (a, b)) in enumerate(labels.items()):
        rows = [dataclasses.replace(r, label={"red": a, "blue": b}[r.label])
                for r in keyword_rows(30, seed=seed)]
        # Threshold 1.0: a task opens a group while fewer than max_groups exist.
        accepted = upload(url, task, jsonl(rows),
                          query="strategy=ham&max_groups=2&group_threshold=1.0")
        job = wait_job(registry, accepted["job_id"], 240, procs)
        assert job.state == "succeeded", job.error
        assert job.result.ham is not None and task in job.result.ham.members
    bank = httpx.get(f"{url}/v1/adapters").json()
    ham = bank["ham"]
    assert [g["group"] for g in ham["groups"]] == [0, 1] and ham["max_groups"] == 2
    assert sorted(t for g in ham["groups"] for t in g["members"]) == sorted(labels)
    assert ham["bound_params"] == bank["totals"]["ham_bound_params"]
    assert ham["bound_params"] >= bank["totals"]["adapter_params"]
    for group in ham["groups"]:
        routes = {tuple(bank["routes"][t]["layers"]) for t in group["members"]}
        assert routes == {tuple(group["modules"])}
    for task, names in labels.items():
        r = httpx.post(f"{url}/v1/tasks/{task}/predict", timeout=30,
                       json={"inputs": ["a cherry and a tomato", "ocean and sky"]})
        assert r.status_code == 200, r.text
        assert {p["label"] for p in r.json()["predictions"]} <= set(names)
    r = httpx.post(f"{url}/v1/tasks/{HAM_ALL_TASK}/predict", timeout=30,
                   json={"inputs": ["a cherry and a tomato"]})
    assert r.status_code == 200, r.text
    scores = r.json()["predictions"][0]["scores"]
    assert set(scores) == {f"{t}/{x}" for t, names in labels.items() for x in names}
    # The reserved id cannot be uploaded to.
    refused = httpx.post(f"{url}/v1/tasks/{HAM_ALL_TASK}/datasets",
                         files={"file": ("d.jsonl", jsonl(keyword_rows(10)))}, timeout=30)
    assert refused.status_code == 422 and "reserved" in refused.text
