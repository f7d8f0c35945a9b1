"""peft interop: a task's LoRA route exported as a peft adapter loads with the real
peft.PeftModel onto the same base and gives the service's outputs."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load_file

from adapters_store.blobstore import BlobStore
from adapters_store.module_config import HamConfig
from adapters_store.records import HeadRecord, ModuleRecord, Route
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.streams import InputItem
from service.app import create_app
from tests.api_data import make_manifest
from tests.factories import CPU, random_module, tiny_model
from worker.base_model import load_base
from worker.modules import AdapterModule, head_to_bytes
from worker.routed_model import mean_pool
from worker.routing import Routing
from worker.serving_bench import synthetic


def _record(module: AdapterModule, blobs: BlobStore) -> ModuleRecord:
    return ModuleRecord(id=module.content_id(), kind=module.kind, layer=module.layer,
                        params=module.num_params, config=module.config,
                        blob=blobs.put(module.to_bytes()), created_by="t", created_in="v1")


def _route(task: str, modules: list, head_blob: str) -> Route:
    return Route(task_id=task, layers=[None if m is None else m.content_id() for m in modules],
                 head=HeadRecord(labels=["neg", "pos"], blob=head_blob, params=66),
                 input_kind="single", strategy="per_task", dataset_id="d", job_id="j",
                 trained_in="v1", full_route_params=0)


@pytest.mark.parametrize("layers", ["all", "partial", "ham"])
def test_peft_export_loads_in_peft_and_matches(settings: Settings, registry: Registry,
                                               tmp_path: Path, layers: str) -> None:
    model = tiny_model()
    blobs = BlobStore(settings.data_dir / "blobs")
    route = [random_module("lora", 0, seed=1), random_module("lora", 1, seed=2)]
    if layers == "partial":
        route[0] = None
    if layers == "ham":  # HAM group modules: each part's gain is folded into B
        config = HamConfig(hidden=32, rank=4, alpha=4.0, targets=["query", "value"])
        route = [synthetic.random_module(layer, config, torch.Generator().manual_seed(layer),
                                         std=0.3) for layer in range(2)]
    head = torch.nn.Linear(32, 2)
    head_blob = blobs.put(head_to_bytes(head))
    manifest = make_manifest("v1", routes={"t": _route("t", route, head_blob)},
                             modules=[_record(m, blobs) for m in route if m is not None])
    manifest = manifest.model_copy(update={"base": model.base.info})
    registry.publish(manifest, reason="test")
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/tasks/t/adapter?format=peft")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/zip"
        bad = client.get("/v1/tasks/t/adapter?format=onnx")
        assert bad.status_code == 422
        assert client.get("/v1/tasks/nope/adapter").status_code == 404
    folder = tmp_path / "adapter"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(folder)
    assert json.loads((folder / "labels.json").read_text()) == ["neg", "pos"]
    base = load_base("tiny-bert", CPU, 64).model
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    exported_head = torch.nn.Linear(32, 2)
    exported_head.load_state_dict(load_file(str(folder / "head.safetensors")))
    items = [InputItem(text=t) for t in ("a red apple", "the blue sky and sea", "tomato")]
    batch = model.base.tokenize(items, CPU)
    with torch.no_grad():
        ours = head(model.embed(batch, Routing.uniform(route)))
        theirs = exported_head(mean_pool(peft_model(**batch).last_hidden_state,
                                         batch["attention_mask"]))
        bare = head(model.embed(batch, None))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, bare, atol=1e-4)  # the adapter matters


def test_non_lora_routes_are_refused(settings: Settings, registry: Registry) -> None:
    blobs = BlobStore(settings.data_dir / "blobs")
    module = random_module("bottleneck", 0, seed=3)
    head_blob = blobs.put(head_to_bytes(torch.nn.Linear(32, 2)))
    manifest = make_manifest("v1", routes={"b": _route("b", [module, None], head_blob)},
                             modules=[_record(module, blobs)])
    registry.publish(manifest, reason="test")
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/tasks/b/adapter")
    assert r.status_code == 422 and "peft export covers LoRA" in r.text


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_export_then_import_round_trip_through_the_service(settings: Settings,
                                                           registry: Registry,
                                                           tmp_path: Path) -> None:
    from tests.factories import keyword_rows
    from tests.integration.stack import running_stack, wait_job
    from tests.integration.test_end_to_end import FAST, jsonl, upload

    with running_stack(settings.model_copy(update=FAST), registry, tmp_path / "logs") as procs:
        url = procs["api"].url
        job = upload(url, "orig", jsonl(keyword_rows(30)),
                     query="strategy=per_task&module_kind=lora")
        assert wait_job(registry, job["job_id"], 180, tuple(procs.values())).state == "succeeded"
        exported = httpx.get(f"{url}/v1/tasks/orig/adapter?format=peft", timeout=30).content
        files = {n: zipfile.ZipFile(io.BytesIO(exported)).read(n)
                 for n in zipfile.ZipFile(io.BytesIO(exported)).namelist()}
        jobs = len(registry.jobs(100))
        config = json.loads(files["adapter_config.json"])
        bad = [
            (b"not a zip", "not a zip file"),
            (_zip({k: v for k, v in files.items() if k != "labels.json"}), "must hold"),
            (_zip(files | {"adapter_config.json": json.dumps(config | {"r": 4}).encode()}),
             "expected lora_A 4x32"),
            (_zip(files | {"adapter_config.json": json.dumps(config | {"use_dora": True})
                           .encode()}), "use_dora"),
            (_zip(files | {"labels.json": b'["only"]'}), "at least 2 distinct"),
        ]
        for body, words in bad:
            r = httpx.post(f"{url}/v1/tasks/copy/adapter", timeout=30,
                           files={"file": ("a.zip", body, "application/zip")})
            assert r.status_code == 422 and words in r.text, (words, r.text)
        assert len(registry.jobs(100)) == jobs  # nothing queued
        r = httpx.post(f"{url}/v1/tasks/copy/adapter", timeout=30,
                       files={"file": ("a.zip", exported, "application/zip")})
        assert r.status_code == 202, r.text + procs["api"].log()[-3000:]
        done = wait_job(registry, r.json()["job_id"], 120, tuple(procs.values()))
        assert done.state == "succeeded", done.error
        assert registry.live_manifest().routes["copy"].strategy == "import"
        texts = {"inputs": ["a cherry and a tomato", "the ocean sky", "report news"]}
        a = httpx.post(f"{url}/v1/tasks/orig/predict", json=texts, timeout=30).json()
        b = httpx.post(f"{url}/v1/tasks/copy/predict", json=texts, timeout=30).json()
        for pa, pb in zip(a["predictions"], b["predictions"], strict=True):
            assert pa["label"] == pb["label"]
            assert all(abs(pa["scores"][k] - pb["scores"][k]) < 1e-5 for k in pa["scores"])
