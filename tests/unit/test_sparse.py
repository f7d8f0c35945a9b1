"""Sparse adapters (seed 002): masks, training, stored form, serving against a dense reference,
and the merge methods against hand computations."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch

from adapters_store.blobstore import BlobStore
from adapters_store.module_config import LoraConfig, SparseConfig
from adapters_store.strategy_params import StrategyOverrides, resolve
from adapters_store.streams import InputItem
from tests.factories import CPU, keyword_rows, make_settings, random_module, tiny_model
from worker import strategies
from worker.bank import LoadedBank
from worker.merging import merge_layer, ties_dense, uniform_mean, uniform_sparse
from worker.modules import AdapterModule, SparseDelta, SparsePart
from worker.pipeline import TrainSpec, train_version
from worker.routing import Routing
from worker.sparse_mask import masked_sites, select_masks


def _spec(task: str, strategy: str, rows: list, **overrides: object) -> TrainSpec:
    model_layers = 2
    params = resolve(strategy, StrategyOverrides(**overrides), make_settings(), model_layers)
    return TrainSpec(task_id=task, job_id=f"job-{task}", dataset_id=f"ds-{task}", rows=rows,
                     params=params, seed=0, val_fraction=0.2)


@pytest.mark.parametrize("criterion", ["snip", "snip_signed", "magnitude"])
def test_mask_keeps_exact_count_and_gradients_outside_are_zero(criterion: str) -> None:
    model = tiny_model()
    config = SparseConfig(hidden=32, intermediate=64, keep_ratio=0.07,
                          targets=["query", "value", "ffn_in"])
    module = AdapterModule(0, config)
    with torch.no_grad():
        for part in module.parts.values():
            part.delta.normal_(std=0.1)
    head = torch.nn.Linear(32, 2)
    batch = model.base.tokenize([InputItem(text="a red apple"), InputItem(text="blue sky")], CPU)

    def loss() -> torch.Tensor:
        out = head(model.embed(batch, Routing.uniform([module, None])))
        return torch.nn.functional.cross_entropy(out, torch.tensor([0, 1]))

    sites = masked_sites(model, [module])
    select_masks(sites, config.keep_ratio, criterion, loss)
    for site in sites:
        numel = site.part.mask.numel()
        assert int(site.part.mask.sum()) == round(0.07 * numel)
    loss().backward()
    for part in module.parts.values():
        assert isinstance(part, SparsePart)
        assert part.delta.grad is not None
        assert torch.count_nonzero(part.delta.grad[~part.mask]) == 0
        assert torch.count_nonzero(part.delta.grad[part.mask]) > 0
    # The stored form keeps exactly the kept entries, as int32 flat indices.
    tensors = module.tensors()
    assert tensors["parts.query.indices"].dtype == torch.int32
    assert module.num_params == sum(int(p.mask.sum()) for p in module.parts.values())


def test_snip_scores_the_effective_weight() -> None:
    """|∂L/∂W_eff ⊙ (W0+ΔW)| by hand on one site picks the same entries as select_masks."""
    model = tiny_model()
    config = SparseConfig(hidden=32, intermediate=64, keep_ratio=0.1, targets=["key"])
    module = AdapterModule(1, config)
    with torch.no_grad():
        module.parts["key"].delta.normal_(std=0.05)
    batch = model.base.tokenize([InputItem(text="one two three four")], CPU)

    def loss() -> torch.Tensor:
        return model.embed(batch, Routing.uniform([None, module])).pow(2).sum()

    part = module.parts["key"]
    part.probe = True
    loss().backward()
    grad = part.probed.grad.clone()
    part.probe, part.probed = False, None
    weight = model.site_linear(1, "key").weight + part.delta.detach()
    expected = torch.topk((grad * weight).abs().flatten(), round(0.1 * 1024)).indices
    select_masks(masked_sites(model, [module]), 0.1, "snip", loss)
    assert set(part.mask.flatten().nonzero().squeeze(1).tolist()) == set(expected.tolist())


def test_reselection_only_in_first_epoch_at_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = strategies.sparse.select_masks

    def recording(sites, keep_ratio, criterion, loss_fn):  # noqa: ANN001, ANN202
        calls.append(len(steps))
        return real(sites, keep_ratio, criterion, loss_fn)

    steps: list[int] = []
    monkeypatch.setattr(strategies.sparse, "select_masks", recording)
    rows = keyword_rows(25)  # 50 rows: 40 train, batch 4 -> 10 steps per epoch
    spec = _spec("a", "sparse", rows, epochs=3, batch_size=4, mask_update_interval=3)
    out = train_version(tiny_model(), None, spec, 1, CPU, lambda p: steps.append(p.step))
    # Steps 0, 3, 6, 9 of the first epoch (0-based: before those steps); never later.
    assert calls == [0, 3, 6, 9]
    assert out.manifest.modules and all(r.kind == "sparse" for r in out.manifest.modules.values())


def test_sparse_task_trains_publishes_and_serves_like_its_dense_reference() -> None:
    model = tiny_model()
    rows = keyword_rows(30)
    out = train_version(model, None, _spec("colors", "sparse", rows, epochs=3), 1, CPU,
                        lambda p: None)
    assert out.result.val_accuracy >= 0.9
    route = out.manifest.routes["colors"]
    recs = [out.manifest.modules[m] for m in route.layers if m is not None]
    assert len(recs) == 2
    for rec in recs:
        # 5% of q, k, v (32x32 each) stored per layer: the params count the kept values.
        assert rec.params == 3 * round(0.05 * 32 * 32)
    # Served from its stored bytes (CSR), the module equals W0 + M⊙ΔW folded into a copy of the
    # base model's weights.
    loaded = [AdapterModule.from_bytes(r.layer, r.config, out.blobs[r.blob]) for r in recs]
    assert all(isinstance(p, SparseDelta) for m in loaded for p in m.parts.values())
    assert [m.content_id() for m in loaded] == [r.id for r in recs]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for m in loaded:
            for target, part in m.parts.items():
                reference.site_linear(m.layer, target).weight += part.dense()
    batch = model.base.tokenize([InputItem(text=r.text) for r in rows[:6]], CPU)
    with torch.inference_mode():
        served = model.embed(batch, Routing.uniform(list(loaded)))
        dense = reference.embed(batch, None)
        trained = model.embed(batch, Routing.uniform(out.fit.route))
    torch.testing.assert_close(served, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=1e-5)


def test_sparse_params_are_validated() -> None:
    s = make_settings()
    for bad in ({"keep_ratio": 0}, {"keep_ratio": 1.5}, {"mask_update_interval": 0},
                {"sparse_targets": []}, {"mask_criterion": "random"}):
        with pytest.raises(ValueError):
            resolve("sparse", StrategyOverrides(**bad), s, 2)
    with pytest.raises(ValueError, match="do not apply"):
        resolve("sparse", StrategyOverrides(lora_rank=4), s, 2)
    with pytest.raises(ValueError, match="do not apply"):
        resolve("per_task", StrategyOverrides(keep_ratio=0.1), s, 2)
    with pytest.raises(ValueError, match="twice"):
        resolve("sparse", StrategyOverrides(sparse_targets=["query", "query"]), s, 2)
    ok = resolve("sparse", StrategyOverrides(keep_ratio=1.0, sparse_targets=["ffn_out"]), s, 2)
    assert ok.module_kind == "sparse" and ok.keep_ratio == 1.0


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values)


def test_uniform_sparse_equals_hand_computation() -> None:
    a = (_t([0, 2, 5]).int(), _t([1.0, 2.0, 3.0]), None)
    b = (_t([2, 3, 5]).int(), _t([4.0, -1.0, 0.0]), None)  # entry 5 kept but unchanged
    c = (_t([7]).int(), _t([6.0]), None)
    index, values, counts = uniform_sparse([a, b, c])
    # 0: only a (1); 2: a and b ((2+4)/2); 3: only b; 5: a changed it, b did not (3/1); 7: c.
    assert index.tolist() == [0, 2, 3, 5, 7]
    torch.testing.assert_close(values, _t([1.0, 3.0, -1.0, 3.0, 6.0]))
    assert counts.tolist() == [1, 2, 1, 1, 1]
    # A merge carries counts, so merging it with another expert equals merging all at once.
    d = (_t([2, 7]).int(), _t([9.0, -6.0]), None)
    step = uniform_sparse([(index, values, counts), d])
    once = uniform_sparse([a, b, c, d])
    for x, y in zip(step, once, strict=True):
        torch.testing.assert_close(x, y)
    assert uniform_sparse([a, b, c, d])[1][1].item() == pytest.approx(5.0)  # (2+4+9)/3
    # Plain uniform divides by every member, including those without the entry.
    index, values = uniform_mean([a, b, c], 3)
    assert index.tolist() == [0, 2, 3, 5, 7]
    torch.testing.assert_close(values, _t([1 / 3, 2.0, -1 / 3, 1.0, 2.0]))


def test_ties_equals_hand_computation() -> None:
    t1 = _t([[3.0, -1.0], [0.5, 2.0]])
    t2 = _t([[-4.0, 1.5], [0.2, 1.0]])
    t3 = _t([[2.0, -0.1], [-3.0, 0.3]])
    merged = ties_dense([t1, t2, t3], density=0.5)
    # Trim each to its top 2 by magnitude: t1 keeps 3, 2; t2 keeps -4, 1.5; t3 keeps 2, -3.
    # Sign election per entry by total mass: (0,0): 3-4+2=1 -> +, mean of agreeing (3+2)/2;
    # (0,1): 1.5 -> + -> 1.5; (1,0): -3 -> - -> -3; (1,1): 2 -> + -> 2.
    torch.testing.assert_close(merged, _t([[2.5, 1.5], [-3.0, 2.0]]))


def test_merge_layer_kinds() -> None:
    lora = [random_module("lora", 0, seed=s) for s in range(3)]
    merged = merge_layer([lora[0], None, lora[1], lora[2]], "uniform", 64)
    assert isinstance(merged.config, LoraConfig) and merged.config.rank == 12
    for target in ("query", "value"):
        want = sum(m.parts[target].lora_B @ m.parts[target].lora_A * m.parts[target].scale
                   for m in lora) / 4
        got = merged.parts[target].lora_B @ merged.parts[target].lora_A * \
            merged.parts[target].scale
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    as_sparse = merge_layer(lora, "ties", 64)
    assert as_sparse.kind == "sparse"
    sparse = [random_module("sparse", 1, seed=s) for s in range(2)]
    both = merge_layer(sparse, "uniform_sparse", 64)
    for target in ("query", "ffn_in", "ffn_out"):
        dense = [m.parts[target].dense() for m in sparse]
        changed = sum((d != 0).float() for d in dense)
        want = sum(dense) / changed.clamp(min=1)
        torch.testing.assert_close(both.parts[target].dense(), want)
        xin = torch.randn(5, want.shape[1])
        torch.testing.assert_close(both.parts[target](xin), xin @ want.t(), atol=1e-5, rtol=1e-5)
    bottleneck = [random_module("bottleneck", 0, seed=s) for s in range(2)]
    mean = merge_layer(bottleneck + [None], "uniform", 64)
    torch.testing.assert_close(mean.parts["attn"].down.weight, (
        bottleneck[0].parts["attn"].down.weight + bottleneck[1].parts["attn"].down.weight) / 2)
    with pytest.raises(ValueError, match="not additive"):
        merge_layer(bottleneck, "ties", 64)
    with pytest.raises(ValueError, match="different module kinds"):
        merge_layer([lora[0], sparse[0]], "uniform", 64)
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_layer(lora, "slerp", 64)
    assert merge_layer([None, None], "uniform", 64) is None


def test_sparse_merged_moves_every_member_to_one_merged_set() -> None:
    model = tiny_model()
    first = keyword_rows(25, seed=1)
    second = [dataclasses.replace(r, label={"red": "warm", "blue": "cold"}[r.label])
              for r in keyword_rows(25, seed=2)]
    held = {"one": None, "two": None}
    out1 = train_version(model, None, _spec("one", "sparse_merged", first, epochs=2), 1, CPU,
                         lambda p: None)
    held["one"] = (out1.train_rows, out1.val_rows)
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(Path(tmp))
        for data in out1.blobs.values():
            blobs.put(data)
        bank = LoadedBank(blobs, CPU)
        parent = bank.sync(out1.manifest)
        out2 = train_version(model, parent, _spec("two", "sparse_merged", second, epochs=2), 2,
                             CPU, lambda p: None, task_rows=lambda t: held[t])
    routes = out2.manifest.routes
    assert routes["one"].layers == routes["two"].layers
    assert set(out2.manifest.modules) == set(routes["two"].layers)
    assert not set(routes["two"].layers) & set(out1.manifest.modules)
    assert set(out2.result.old_tasks) == {"one"}
    assert out2.fit.replayed == []
