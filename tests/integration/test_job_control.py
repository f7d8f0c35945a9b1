"""Job control through the real service: cancel a running and a queued job (nothing published),
delete a task (a new version without its route; rollback brings it back)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapterd.cli import main as cli
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import running_stack, wait_for, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload


@pytest.fixture
def stack(settings: Settings, registry: Registry, tmp_path: Path) -> Iterator[dict]:
    with running_stack(settings.model_copy(update=FAST), registry, tmp_path / "logs") as procs:
        yield procs


def test_cancel_running_and_queued_jobs_then_delete_a_task(
        stack: dict, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    url, procs = stack["api"].url, tuple(stack.values())
    first = upload(url, "colors", jsonl(keyword_rows(30)), query="strategy=per_task")
    assert wait_job(registry, first["job_id"], 180, procs).state == "succeeded"
    live = registry.live_version()

    # A long job and one queued behind it.
    long = upload(url, "shapes", jsonl(keyword_rows(60, seed=3)),
                  query="strategy=per_task&epochs=100")
    queued = upload(url, "more", jsonl(keyword_rows(30, seed=4)), query="strategy=per_task")
    wait_for(lambda: registry.job(long["job_id"]).progress.step > 0, 120,
             "the long job training", procs)
    r = httpx.delete(f"{url}/v1/jobs/{queued['job_id']}", timeout=10)
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert cli(["--url", url, "cancel", long["job_id"]]) == 0
    assert "cancelling" in capsys.readouterr().out
    job = wait_job(registry, long["job_id"], 60, procs)
    assert job.state == "cancelled" and job.result is None
    assert job.progress.step < job.progress.total_steps
    assert registry.live_version() == live  # nothing published
    assert registry.job(queued["job_id"]).state == "cancelled"
    again = httpx.delete(f"{url}/v1/jobs/{long['job_id']}", timeout=10)
    assert again.status_code == 409 and "already cancelled" in again.text
    assert httpx.get(f"{url}/v1/tasks/shapes").json()["state"] == "cancelled"

    # The trainer is free again: a new upload trains and publishes.
    second = upload(url, "shapes", jsonl(keyword_rows(30, seed=5)), query="strategy=per_task")
    assert wait_job(registry, second["job_id"], 180, procs).state == "succeeded"
    before = registry.live_version()

    r = httpx.delete(f"{url}/v1/tasks/colors", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == registry.live_version() != before
    manifest = registry.live_manifest()
    assert "colors" not in manifest.routes and "shapes" in manifest.routes
    assert all(m in {x for rt in manifest.routes.values() for x in rt.layers}
               for m in manifest.modules)  # the deleted task's own modules left the version
    wait_for(lambda: httpx.post(f"{url}/v1/tasks/colors/predict", timeout=10,
                                json={"inputs": ["cherry"]}).status_code == 404, 30,
             "colors gone", procs)
    ok = httpx.post(f"{url}/v1/tasks/shapes/predict", timeout=30, json={"inputs": ["sky"]})
    assert ok.status_code == 200
    assert "colors" not in [t["task_id"] for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]]
    assert httpx.delete(f"{url}/v1/tasks/colors", timeout=10).status_code == 404
    # Older versions keep the task: a rollback serves it again.
    httpx.post(f"{url}/v1/bank/rollback", json={"version": before}, timeout=10)
    wait_for(lambda: httpx.post(f"{url}/v1/tasks/colors/predict", timeout=10,
                                json={"inputs": ["cherry"]}).status_code == 200, 30,
             "colors back", procs)
