"""Torch-free factories for API tests: dataset files, hand-built bank manifests, heartbeats."""

from __future__ import annotations

import csv
import io
import json
import os

from adapters_store.records import BankManifest, BaseModelInfo, HeadRecord, ModuleRecord, Route
from adapters_store.streams import Heartbeat

FAKE_BLOB = "0" * 64


def make_rows(labels: tuple[str, ...] = ("pos", "neg"), per_label: int = 6,
              pair: bool = False) -> list[dict]:
    rows = []
    for label in labels:
        for i in range(per_label):
            row = {"text": f"{label} example number {i}", "label": label}
            if pair:
                row["text_pair"] = f"second text {i}"
            rows.append(row)
    return rows


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def to_csv(rows: list[dict], header: tuple[str, ...] = ("text", "label")) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def make_module(module_id: str, layer: int, params: int = 100) -> ModuleRecord:
    return ModuleRecord(id=module_id, kind="bottleneck", layer=layer, params=params,
                        config={"hidden": 32, "size": 8}, blob=FAKE_BLOB, created_by="job_test",
                        created_in="v1")


def make_route(task_id: str, layers: list[str | None], input_kind: str = "single",
               labels: tuple[str, ...] = ("pos", "neg"), version: str = "v1") -> Route:
    return Route(task_id=task_id, layers=layers,
                 head=HeadRecord(labels=list(labels), blob=FAKE_BLOB, params=10 * len(labels)),
                 input_kind=input_kind, strategy="per_task", dataset_id="ds_test",
                 job_id="job_test", trained_in=version, full_route_params=300,
                 metrics={"val_accuracy": 0.9})


def make_manifest(version: str = "v1", parent: str | None = None,
                  routes: dict[str, Route] | None = None,
                  modules: list[ModuleRecord] | None = None) -> BankManifest:
    """Two layers; by default task alpha alone on module m-a (layer 0)."""
    modules = modules if modules is not None else [make_module("m-a", 0)]
    routes = routes if routes is not None else {"alpha": make_route("alpha", ["m-a", None])}
    return BankManifest(
        version=version, number=int(version[1:]), parent=parent,
        base=BaseModelInfo(name="tiny-bert", fingerprint="f" * 16, num_layers=2, hidden_size=32),
        modules={m.id: m for m in modules}, routes=routes, strategy="per_task",
    )


def shared_manifest(version: str = "v1", parent: str | None = None) -> BankManifest:
    """alpha and beta share m-a at layer 0 and each own a module at layer 1."""
    modules = [make_module("m-a", 0, 100), make_module("m-b", 1, 50), make_module("m-c", 1, 70)]
    routes = {"alpha": make_route("alpha", ["m-a", "m-b"], version=version),
              "beta": make_route("beta", ["m-a", "m-c"], version=version)}
    return make_manifest(version, parent, routes, modules)


def inference_heartbeat(worker_id: str = "w-test") -> Heartbeat:
    return Heartbeat(worker_id=worker_id, kind="inference", pid=os.getpid(), version="v1")
