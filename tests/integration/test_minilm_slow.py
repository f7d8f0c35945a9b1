"""The real MiniLM end to end on an examples/ dataset: held-out accuracy far above the majority."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.integration.stack import ApiProcess, WorkerProcess, wait_for, wait_job, wait_workers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_minilm_learns_the_sentiment_example(settings: Settings, registry: Registry,
                                             tmp_path: Path) -> None:
    real = settings.model_copy(update={"base_model": "all-MiniLM-L6-v2", "torch_threads": 0})
    logs = tmp_path / "logs"
    procs = (ApiProcess(real, logs), WorkerProcess("inference", real, logs),
             WorkerProcess("trainer", real, logs))
    api = procs[0]
    try:
        wait_workers(registry, "inference", 1, 180, procs)
        wait_for(lambda: httpx.get(f"{api.url}/healthz").status_code == 200, 60, "API", procs)
        data = (EXAMPLES / "sentiment.jsonl").read_bytes()
        r = httpx.post(f"{api.url}/v1/tasks/sentiment/datasets",
                       files={"file": ("sentiment.jsonl", data)}, timeout=60)
        assert r.status_code == 202, r.text
        job = wait_job(registry, r.json()["job_id"], 600, procs)
        assert job.state == "succeeded", job.error
        result = job.result
        assert result is not None and result.val_rows >= 40
        assert result.val_accuracy >= 0.85
        assert result.val_accuracy >= result.majority_baseline + 0.3
        r = httpx.post(f"{api.url}/v1/tasks/sentiment/predict", timeout=60, json={"inputs": [
            "An absolutely wonderful experience, I loved every minute of it.",
            "Terrible. The worst purchase I have ever made, it broke in a day."]})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == ["positive", "negative"]
    finally:
        for p in procs:
            p.stop()
