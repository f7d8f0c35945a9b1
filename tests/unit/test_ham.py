"""HAM (seed 001): grouping by similarity under G_max, consolidation by concatenation, the SVD
rank cap, pruning, versioned group gains, and the task-agnostic route."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch

from adapters_store.module_config import HamConfig
from adapters_store.records import HAM_ALL_TASK
from tests.factories import CPU, keyword_rows, make_settings, tiny_model
from worker.bank import LoadedBank
from worker.ham_groups import concat, merge_sets, prune_, similarity, svd_cap
from worker.modules import AdapterModule
from worker.sequence import Sequence
from worker.strategies.ham import choose_group


def _ham_module(layer: int, seed: int, rank: int = 4, gain: float = 1.0) -> AdapterModule:
    module = AdapterModule(layer, HamConfig(hidden=32, rank=rank, alpha=8.0,
                                            targets=["query", "value"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in module.parts.values():
            part.lora_A.copy_(torch.randn(part.lora_A.shape, generator=gen))
            part.lora_B.copy_(torch.randn(part.lora_B.shape, generator=gen))
            part.gain.fill_(gain)
    return module


def test_concatenation_equals_the_sum_of_scaled_deltas() -> None:
    parts = [_ham_module(0, s, rank=r, gain=g).parts["query"]
             for s, r, g in ((1, 4, 0.5), (2, 2, 1.7), (3, 4, -0.3))]
    b, a = concat(parts, None)
    assert b.shape == (32, 10) and a.shape == (10, 32)
    want = sum(p.lora_B @ p.lora_A * p.scale * p.gain for p in parts)
    torch.testing.assert_close(b @ a, want.detach(), atol=1e-4, rtol=1e-5)
    merged = merge_sets([[_ham_module(0, 1, gain=0.5)], [_ham_module(0, 2, gain=1.7)]], None)[0]
    x = torch.randn(3, 32)
    expected = _ham_module(0, 1, gain=0.5).parts["value"](x) + \
        _ham_module(0, 2, gain=1.7).parts["value"](x)
    torch.testing.assert_close(merged.parts["value"](x), expected.detach(), atol=1e-4, rtol=1e-4)
    assert merged.config.rank == 8 and float(merged.parts["value"].gain.detach()) == 1.0


def test_svd_cap_gives_the_best_rank_k_approximation() -> None:
    gen = torch.Generator().manual_seed(0)
    b, a = torch.randn(20, 12, generator=gen), torch.randn(12, 16, generator=gen)
    full = b @ a
    bk, ak = svd_cap(b, a, 5)
    assert bk.shape == (20, 5) and ak.shape == (5, 16)
    s = torch.linalg.svdvals(full.double())
    # Eckart–Young: the error of the best rank-5 approximation is the tail's energy.
    err = torch.linalg.norm((full - bk @ ak).double())
    assert float(err) == pytest.approx(float(s[5:].pow(2).sum().sqrt()), rel=1e-4)
    other_b, other_a = b[:, :5], a[:5]  # any other rank-5 factorisation does no better
    assert float(err) <= float(torch.linalg.norm(full - other_b @ other_a))
    capped = merge_sets([[_ham_module(0, s)] for s in range(3)], rank_cap=6)[0]
    assert capped.config.rank == 6


def test_prune_keeps_the_top_entries_of_the_delta() -> None:
    part = _ham_module(0, 4, rank=4, gain=2.0).parts["query"]
    before = part.delta().detach().clone()
    fraction = prune_(part, 0.25)
    assert fraction == pytest.approx(0.75, abs=1e-3)
    kept = before.abs().flatten().topk(round(0.25 * before.numel())).indices
    pruned = torch.zeros_like(before).flatten()
    pruned[kept] = before.flatten()[kept]
    want = pruned.view_as(before)
    # The rank-4 refactorisation is the best rank-4 approximation of the pruned delta.
    u, s, vh = torch.linalg.svd(want.double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close(part.delta().detach().double(), best, atol=1e-4, rtol=1e-4)
    assert float(part.gain.detach()) == 1.0


def test_grouping_by_similarity_never_exceeds_g_max() -> None:
    a, b = _ham_module(0, 1), _ham_module(0, 2)
    assert similarity([a], [a], per_layer=False) == pytest.approx(1.0, abs=1e-6)
    flipped = _ham_module(0, 1, gain=-1.0)
    assert similarity([a], [flipped], per_layer=True) == pytest.approx(-1.0, abs=1e-6)
    assert abs(similarity([a], [b], per_layer=False)) < 0.2  # independent random adapters
    assert choose_group({}, 2, 0.2) == (None, True)  # the first task opens group 0
    assert choose_group({0: 0.9}, 2, 0.2) == (0, False)  # similar: joins it
    assert choose_group({0: 0.05}, 2, 0.2) == (0, True)  # dissimilar, room left: opens one
    assert choose_group({0: 0.05, 1: -0.3}, 2, 0.2) == (0, False)  # G_max reached: nearest
    assert choose_group({0: -0.4, 1: -0.1}, 2, 0.2) == (1, False)


def _colors(seed: int, labels: tuple[str, str]) -> list:
    return [dataclasses.replace(r, label={"red": labels[0], "blue": labels[1]}[r.label])
            for r in keyword_rows(25, seed=seed)]


def test_ham_sequence_groups_versions_and_task_agnostic_route() -> None:
    model = tiny_model()
    settings = make_settings(ham_max_groups=2, epochs=8)
    with tempfile.TemporaryDirectory() as tmp:
        seq = Sequence(model, Path(tmp), settings)
        seq.add("a", _colors(0, ("red", "blue")), "ham")
        v1 = seq.live
        # Threshold above any cosine: every task opens a group while room remains.
        out2 = seq.add("b", _colors(1, ("warm", "cold")), "ham", group_threshold=1.0)
        out3 = seq.add("c", _colors(2, ("x", "y")), "ham", group_threshold=1.0)
        v3 = seq.live
        groups = {t: r.ham_group for t, r in v3.routes.items() if r.ham_group is not None}
        assert groups == {"a": 0, "b": 1, "c": out3.result.ham.group}
        assert out2.result.ham.new_group and not out3.result.ham.new_group  # G_max 2 reached
        assert set(out3.result.ham.similarities) == {"0", "1"}
        assert out3.result.ham.members == sorted(
            [t for t, g in groups.items() if g == out3.result.ham.group])
        assert out3.result.ham.rank_after == 16 and out3.result.ham.rank_before == 8
        assert set(out3.result.old_tasks) == {"a", "b"}
        # Members of a group share its modules; the bank holds G_max groups + the all-groups
        # module set, whatever the number of tasks.
        layers = {t: v3.routes[t].layers for t in groups}
        joined = [t for t, g in groups.items() if g == out3.result.ham.group]
        assert len({tuple(layers[t]) for t in joined}) == 1
        assert len(v3.modules) == 3 * model.num_layers
        # Training b changed group 0's gain: a new module id in v2; v1 still holds the old one,
        # and the loaded v1 serves the old tensors.
        assert v1.routes["a"].layers != seq.manifests[1].routes["a"].layers
        bank = LoadedBank(seq.blobs, CPU, keep=4)
        old = bank.sync(v1).tasks["a"].modules[0]
        new = bank.sync(seq.manifests[1]).tasks["a"].modules[0]
        assert not torch.equal(old.parts["query"].gain, new.parts["query"].gain)
        # The task-agnostic route: every group at once, one head over every task's labels.
        agnostic = v3.routes[HAM_ALL_TASK]
        assert agnostic.head.labels == ["a/blue", "a/red", "b/cold", "b/warm", "c/x", "c/y"]
        assert agnostic.ham_group is None
        ranks = [v3.modules[m].config.rank for m in agnostic.layers]
        assert ranks == [8 + 16] * model.num_layers  # group ranks 8 and 16, concatenated


def test_refit_head_fits_the_route_it_will_be_served_on() -> None:
    from adapters_store.strategy_params import StrategyOverrides, resolve
    from worker.evaluation import mean_loss
    from worker.progress import JobClock
    from worker.strategies.fit import FitContext, refit_head

    model = tiny_model()
    rows = keyword_rows(20)
    labels = sorted({r.label for r in rows})
    params = resolve("ham", StrategyOverrides(), make_settings(), model.num_layers)
    ctx = FitContext(model=model, parent=None, task_id="colors", train_rows=rows, labels=labels,
                     params=params, clock=JobClock(lambda _: None), device=CPU, seed=0)
    # A head fitted beside one module set, then served on another (here: the bare base).
    route = [_ham_module(layer, seed=layer) for layer in range(model.num_layers)]
    head = ctx.new_head()
    index = ctx.label_index
    refit_head(ctx, route, head, rows, index)
    bare = [None] * model.num_layers
    before = mean_loss(model, bare, head, rows, index)
    weight = head.weight.clone()
    refit_head(ctx, bare, head, rows, index)
    assert mean_loss(model, bare, head, rows, index) < before
    assert not torch.equal(weight, head.weight) and not head.weight.requires_grad
