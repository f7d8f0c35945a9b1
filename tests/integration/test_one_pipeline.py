"""The service and the benchmark run one pipeline: the same task trained through upload → job and
through the in-process sequence gives the same modules, bit for bit; other encoder families
serve end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as st_load

from adapters_store.blobstore import BlobStore
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import WorkerProcess, running_stack, wait_for, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload
from worker.base_model import load_base
from worker.routed_model import RoutedEncoder
from worker.sequence import Sequence


@pytest.fixture
def family_stack(request: pytest.FixtureRequest, settings: Settings, registry: Registry,
                 tmp_path: Path) -> Iterator[tuple[Settings, dict[str, WorkerProcess]]]:
    stack_settings = settings.model_copy(update=FAST | {"base_model": request.param})
    with running_stack(stack_settings, registry, tmp_path / "logs") as procs:
        yield stack_settings, procs


@pytest.mark.parametrize("family_stack", ["tiny-bert:3"], indirect=True)
def test_service_and_benchmark_path_train_identical_modules(
        family_stack: tuple[Settings, dict[str, WorkerProcess]], registry: Registry,
        tmp_path: Path) -> None:
    stack_settings, stack = family_stack
    url, procs = stack["api"].url, tuple(stack.values())
    # per_task first, then safm on top of it: the second job reads the parent bank, searches,
    # replays the first task's stored rows and may re-tune its modules.
    # A duplicate of the first task with a search that moves: the decision reuses its modules,
    # so tuning replays "colors" and writes tuned copies of its shared modules.
    search = {"search_learning_rate": 0.2, "warmup_epochs": 2, "search_epochs": 2}
    tasks = [("colors", keyword_rows(20), "per_task", {}),
             ("colors-again", keyword_rows(20), "safm", search)]
    for task_id, rows, strategy, given in tasks:
        query = "&".join([f"strategy={strategy}", *(f"{k}={v}" for k, v in given.items())])
        job = wait_job(registry, upload(url, task_id, jsonl(rows), query=query)["job_id"], 240,
                       procs)
        assert job.state == "succeeded", job.error
    assert job.result is not None and job.result.replayed == ["colors"]
    assert any(d.choice == "reuse" for d in job.result.decisions)
    served = registry.live_manifest()
    assert served is not None and served.version == "v2"

    threads = torch.get_num_threads()
    torch.set_num_threads(stack_settings.torch_threads)  # the trainer's thread count
    try:
        model = RoutedEncoder(load_base(stack_settings.base_model, torch.device("cpu"),
                                        stack_settings.max_length))
        seq = Sequence(model, tmp_path / "bench-blobs", stack_settings)
        for task_id, rows, strategy, given in tasks:
            seq.add(task_id, rows, strategy, **given)
    finally:
        torch.set_num_threads(threads)
    bench = seq.live
    assert bench is not None
    for task_id, *_ in tasks:
        assert bench.routes[task_id].layers == served.routes[task_id].layers, task_id
        assert bench.routes[task_id].head.blob == served.routes[task_id].head.blob, task_id
        assert [d.model_dump() for d in bench.routes[task_id].decisions] == \
            [d.model_dump() for d in served.routes[task_id].decisions]
        assert bench.routes[task_id].metrics == served.routes[task_id].metrics
    assert bench.modules.keys() == served.modules.keys()
    service_blobs = BlobStore(stack_settings.data_dir / "blobs")
    for module_id, rec in served.modules.items():
        # Ids are sha256 of the tensors; compare the tensors themselves as well.
        ours = st_load(seq.blobs.get(bench.modules[module_id].blob))
        theirs = st_load(service_blobs.get(rec.blob))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert bench.modules[module_id].blob == rec.blob  # and the files, byte for byte


@pytest.mark.parametrize("family_stack", ["tiny-roberta", "tiny-distilbert"], indirect=True)
def test_other_encoder_families_upload_train_predict(
        family_stack: tuple[Settings, dict[str, WorkerProcess]], registry: Registry) -> None:
    stack_settings, stack = family_stack
    url, procs = stack["api"].url, tuple(stack.values())
    # A bottleneck task (post-sublayer sites) and a LoRA task (the q/k/v projections).
    for task_id, kind in (("colors", "bottleneck"), ("colors-lora", "lora")):
        accepted = upload(url, task_id, jsonl(keyword_rows(40)),
                          query=f"strategy=per_task&module_kind={kind}")
        job = wait_job(registry, accepted["job_id"], 240, procs)
        assert job.state == "succeeded", job.error
        assert job.result is not None and job.result.val_accuracy >= 0.75
    manifest = registry.live_manifest()
    assert manifest is not None
    assert manifest.base.family == stack_settings.base_model.removeprefix("tiny-")
    assert {m.kind for m in manifest.modules.values()} == {"bottleneck", "lora"}
    wait_for(lambda: any(h.version == "v2" for h in registry.heartbeats()
                         if h.kind == "inference"), 30, "worker on v2", procs)
    for task_id in ("colors", "colors-lora"):
        r = httpx.post(f"{url}/v1/tasks/{task_id}/predict", timeout=30, json={"inputs": [
            "a cherry and a tomato today", "the sapphire ocean news"]})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == ["red", "blue"]
