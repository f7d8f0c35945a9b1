"""Routing equivalence: a mixed batch of tasks equals each task run alone."""

from __future__ import annotations

import torch
from torch import nn

from adapters_store.records import BankManifest, BaseModelInfo, HeadRecord, Route
from adapters_store.streams import InferenceRequest, InputItem
from tests.factories import CPU, random_module, tiny_model
from worker.bank import LoadedVersion, TaskRuntime
from worker.inference import run_batch
from worker.routing import Routing


def _head(n: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(32, n).eval().requires_grad_(False)


def _version(tasks: dict[str, TaskRuntime]) -> LoadedVersion:
    info = BaseModelInfo(name="tiny-bert", fingerprint="x", num_layers=2, hidden_size=32)
    head = HeadRecord(labels=["a", "b"], blob="0" * 64, params=0)
    routes = {t: Route(task_id=t, layers=[None, None], head=head, input_kind=r.input_kind,
                       strategy="per_task", dataset_id="d", job_id="j", trained_in="v1",
                       full_route_params=0) for t, r in tasks.items()}
    manifest = BankManifest(version="v1", number=1, parent=None, base=info, modules={},
                            routes=routes, strategy="per_task")
    modules = {mid: m for t in tasks.values()
               for mid, m in zip(t.module_ids, t.modules, strict=True) if m is not None}
    return LoadedVersion(manifest=manifest, tasks=tasks, modules=modules)


def _runtime(task_id: str, modules: list, head: torch.nn.Linear, labels: list[str],
             kind: str) -> TaskRuntime:
    ids = [None if m is None else m.content_id() for m in modules]
    return TaskRuntime(task_id, ids, modules, head, labels, kind)  # type: ignore[arg-type]


def _tasks() -> dict[str, TaskRuntime]:
    shared = random_module("bottleneck", 0, seed=1)
    return {
        "alpha": _runtime("alpha", [shared, random_module("bottleneck", 1, seed=2)],
                          _head(2, 10), ["neg", "pos"], "single"),
        "beta": _runtime("beta", [shared, None], _head(3, 11), ["x", "y", "z"], "single"),
        "gamma": _runtime("gamma", [random_module("lora", 0, seed=3),
                                    random_module("lora", 1, seed=4)],
                          _head(2, 12), ["same", "diff"], "pair"),
        "delta": _runtime("delta", [None, None], _head(2, 13), ["p", "q"], "single"),
    }


def _req(task: str, inputs: list[InputItem]) -> InferenceRequest:
    return InferenceRequest(request_id=task, task_id=task, inputs=inputs, reply_to="r",
                            deadline=1e12)


def test_mixed_batch_equals_each_task_alone() -> None:
    model = tiny_model()
    loaded = _version(_tasks())
    requests = [
        _req("alpha", [InputItem(text="a fine film"), InputItem(text="dull and slow, too long")]),
        _req("gamma", [InputItem(text="the cat sat", text_pair="a cat was sitting there")]),
        _req("beta", [InputItem(text="stocks rose sharply")]),
        _req("delta", [InputItem(text="plain base model row")]),
        _req("alpha", [InputItem(text="great")]),
    ]
    mixed = run_batch(model, loaded, requests)
    for req, got in zip(requests, mixed, strict=True):
        alone = run_batch(model, loaded, [req])[0]
        for a, b in zip(got, alone, strict=True):
            assert a.label == b.label
            for label in a.scores:
                assert abs(a.scores[label] - b.scores[label]) < 1e-5


def test_routed_embeddings_match_alone_and_modules_matter() -> None:
    model = tiny_model()
    tasks = _tasks()
    items = [InputItem(text=t) for t in ("one two three", "four five", "six", "seven eight")]
    names = ["alpha", "beta", "delta", "alpha"]
    batch = model.base.tokenize(items, CPU)
    with torch.no_grad():
        routing = Routing.from_rows([tasks[n].modules for n in names], 2, CPU)
        mixed = model.embed(batch, routing)
        bare = model.embed(batch, None)
        for row, name in enumerate(names):
            one = model.base.tokenize([items[row]], CPU)
            alone = model.embed(one, Routing.uniform(tasks[name].modules))
            torch.testing.assert_close(mixed[row], alone[0], atol=1e-5, rtol=0)
    # Adapted rows differ from the bare model; the all-empty route is the bare model.
    assert not torch.allclose(mixed[0], bare[0], atol=1e-3)
    torch.testing.assert_close(mixed[2], bare[2], atol=1e-6, rtol=0)
