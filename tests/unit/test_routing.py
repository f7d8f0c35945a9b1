"""Routing equivalence: a mixed batch of tasks equals each task run alone."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from adapters_store.records import BankManifest, BaseModelInfo, HeadRecord, Route
from adapters_store.streams import InferenceRequest, InputItem
from tests.factories import CPU, random_module, tiny_model
from worker.bank import LoadedVersion, TaskRuntime
from worker.inference import length_chunks, run_batch
from worker.routing import Routing, SegmentRouting, route_order


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
        "eps": _runtime("eps", [random_module("sparse", 0, seed=5),
                                random_module("sparse", 1, seed=6)],
                        _head(2, 14), ["u", "v"], "single"),
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
        _req("eps", [InputItem(text="sparse rows"), InputItem(text="and another one")]),
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


def _random_routes(rng: random.Random, modules: list, n_rows: int, layers: int) -> list[list]:
    # Tasks with routes that share some modules, in random arrival order.
    tasks = [[rng.choice(modules[layer] + [None]) for layer in range(layers)] for _ in range(5)]
    return [rng.choice(tasks) for _ in range(n_rows)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segment_routing_equals_per_group_routing_in_any_order(seed: int) -> None:
    rng = random.Random(seed)
    model = tiny_model()
    modules = [[random_module(kind, layer, seed=10 * layer + k)
                for k, kind in enumerate(("bottleneck", "lora", "bottleneck", "lora", "sparse"))]
               for layer in range(2)]
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    items = [InputItem(text=" ".join(rng.sample(words, rng.randint(1, 12)))) for _ in range(12)]
    routes = _random_routes(rng, modules, len(items), 2)
    keys = [tuple("" if m is None else m.content_id() for m in r) for r in routes]
    order = route_order(keys)
    sorted_items = [items[k] for k in order]
    sorted_routes = [routes[k] for k in order]
    batch = model.base.tokenize(sorted_items, CPU)
    with torch.inference_mode():
        grouped = model.embed(batch, Routing.from_rows(sorted_routes, 2, CPU))
        segmented = model.embed(batch, SegmentRouting.from_sorted_rows(sorted_routes, 2))
        for row, route in enumerate(sorted_routes):
            alone = model.embed(model.base.tokenize([sorted_items[row]], CPU),
                                Routing.uniform(route))
            torch.testing.assert_close(segmented[row], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(segmented, grouped, atol=1e-5, rtol=0)
    # With autograd on, the out-of-place path gives the same values and trains the modules.
    for layer in modules:
        for m in layer:
            m.requires_grad_(True)
    out = model.embed(batch, SegmentRouting.from_sorted_rows(sorted_routes, 2))
    torch.testing.assert_close(out.detach(), grouped, atol=1e-5, rtol=0)
    out.sum().backward()
    used = {m for r in routes for m in r if m is not None}
    assert all(p.grad is not None for m in used for p in m.parameters())


def test_token_budget_chunks_and_equal_answers() -> None:
    lengths = [5, 40, 6, 7, 41, 5, 120]
    chunks = length_chunks(lengths, 100)
    assert sorted(k for c in chunks for k in c) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * max(lengths[k] for k in chunk) <= 100
    assert [6] in chunks  # a row longer than the budget goes alone
    model = tiny_model()
    loaded = _version(_tasks())
    rng = random.Random(3)
    words = "a fine film dull slow long great stocks rose the cat sat".split()
    requests = [_req(t, [InputItem(text=" ".join(rng.sample(words, rng.randint(1, 11))))
                         for _ in range(rng.randint(1, 4))])
                for t in ("alpha", "beta", "delta", "alpha", "beta")]
    one = run_batch(model, loaded, requests, max_tokens=100_000)
    many = run_batch(model, loaded, requests, max_tokens=16)
    for a_req, b_req in zip(one, many, strict=True):
        for a, b in zip(a_req, b_req, strict=True):
            assert a.label == b.label
            assert all(abs(a.scores[k] - b.scores[k]) < 1e-5 for k in a.scores)


def test_collate_pads_like_the_tokenizer() -> None:
    base = tiny_model().base
    items = [InputItem(text="one two three four"), InputItem(text="five"),
             InputItem(text="the cat", text_pair="a cat sat there")]
    collated = base.collate(base.encode(items), CPU)
    for rows in (slice(0, 2), slice(2, 3)):
        direct = base.tokenize(items[rows], CPU)
        for key, value in direct.items():
            width = value.shape[1]
            torch.testing.assert_close(collated[key][rows, :width], value)
            assert not collated["attention_mask"][rows, width:].any()


def test_bfloat16_serving_stays_close_to_float32() -> None:
    import copy

    model = tiny_model()
    tasks = _tasks()
    requests = [_req("alpha", [InputItem(text="a fine film"), InputItem(text="dull, too long")]),
                _req("beta", [InputItem(text="stocks rose sharply")]),
                _req("delta", [InputItem(text="plain base model row")])]
    full = run_batch(model, _version(tasks), requests)
    half_tasks = {t: _runtime(t, [None if m is None else copy.deepcopy(m).to(torch.bfloat16)
                                  for m in r.modules], copy.deepcopy(r.head).to(torch.bfloat16),
                              r.labels, r.input_kind) for t, r in tasks.items()
                  if t != "gamma"}
    half = run_batch(copy.deepcopy(model).to(torch.bfloat16), _version(half_tasks), requests)
    for a_req, b_req in zip(full, half, strict=True):
        for a, b in zip(a_req, b_req, strict=True):
            assert all(abs(a.scores[k] - b.scores[k]) < 0.05 for k in a.scores)


def test_batched_lora_segments_equal_one_segment_at_a_time() -> None:
    from adapters_store.module_config import LoraConfig
    from worker.modules import AdapterModule

    gen = torch.Generator().manual_seed(4)

    def lora(rank: int) -> AdapterModule:
        module = AdapterModule(0, LoraConfig(hidden=32, rank=rank, alpha=8.0,
                                             targets=["query", "value"]))
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return module

    a, b, c, wide = lora(4), lora(4), lora(4), lora(8)
    bottleneck = random_module("bottleneck", 0, seed=9)
    # Rank-4 rows 0-1, 2, 5-6 (a gap where the bottleneck and rank-8 rows sit), then more.
    routes = [[a], [a], [b], [bottleneck], [wide], [c], [c], [None], [a]]
    x = torch.randn(len(routes), 5, 32, generator=gen)
    y = torch.randn(len(routes), 5, 32, generator=gen)
    _assert_site_equals_row_by_row(routes, "query", "parallel", x, y)


def _assert_site_equals_row_by_row(routes: list, part: str, mode: str, x: torch.Tensor,
                                   y: torch.Tensor) -> None:
    """One site of a segment-routed batch equals each row's module applied to that row alone."""
    routing = SegmentRouting.from_sorted_rows(routes, 1)
    with torch.inference_mode():
        batched = routing.apply(0, part, mode, x, y.clone())
        expected = y.clone()
        for row, (module,) in enumerate(routes):
            if module is not None and part in module.parts:
                fn = module.parts[part]
                expected[row] = (y[row] + fn(x[row:row + 1])[0] if mode == "parallel"
                                 else fn(y[row:row + 1])[0])
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=0)


def test_batched_bottleneck_segments_equal_one_segment_at_a_time() -> None:
    modules = [random_module("bottleneck", 0, seed=s) for s in range(5)]
    lora = random_module("lora", 0, seed=7)
    routes = [[modules[0]], [modules[0]], [modules[1]], [lora], [modules[2]], [None],
              [modules[3]], [modules[4]], [modules[4]]]
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(len(routes), 4, 32, generator=gen)
    _assert_site_equals_row_by_row(routes, "attn", "post", y, y)
