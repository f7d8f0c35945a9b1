"""SAFM / ACM on tiny random models: decisions, parameter cost, path masking, layer-wise loss."""

from __future__ import annotations

import pytest
import torch

from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides, resolve
from tests.factories import CPU, keyword_rows, make_settings, random_module, tiny_model_layers
from worker.bank import LoadedBank
from worker.evaluation import items_of
from worker.fit_loop import layer_cosine
from worker.routing import Routing
from worker.sequence import Sequence


@pytest.mark.parametrize("decision", ["paper", "validation"])
def test_same_data_again_reuses_old_modules(tmp_path, decision: str) -> None:
    seq = Sequence(tiny_model_layers(4), tmp_path, make_settings())
    rows = keyword_rows(30)
    first, _ = _add(seq, "colors", rows, "per_task")
    given: dict[str, object] = {"search_learning_rate": 0.05} if decision == "paper" else {}
    manifest, fit = _add(seq, "colors-again", rows, decision=decision, **given)
    searched = [d for d in fit.decisions if not d.forced]
    assert len(searched) == 3
    reused = [d for d in searched if d.choice == "reuse"]
    assert len(reused) >= 2, fit.decisions
    assert all(d.choice == "new" for d in fit.decisions if d.forced)
    assert [d.layer for d in fit.decisions if d.choice == "new"] == [1]  # the forced one
    assert all(d.method == decision for d in searched)
    scores = [d.weights if decision == "paper" else d.losses for d in searched]
    assert all(set(s) >= {"empty", "new"} and len(s) == 3 for s in scores)
    route = manifest.routes["colors-again"]
    assert set(route.layers[i] for i in (0, 2, 3)) & set(manifest.routes["colors"].layers)
    assert fit.replayed == ["colors"]
    assert fit.replayed_rows["colors"] > 0
    stages = {"warmup", "tuning", "checking earlier tasks", "evaluating"}
    stages |= {"searching"} if decision == "paper" else {"deciding"}
    assert set(fit.stage_seconds) == stages and all(v >= 0 for v in fit.stage_seconds.values())


def test_zero_search_epochs_is_empty_except_forced(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(4), tmp_path, make_settings())
    seq.add("colors", keyword_rows(20), "per_task")
    manifest, fit = _add(seq, "shades", keyword_rows(20, seed=3), search_epochs=0,
                            forced_layers=[2])
    assert [d.choice for d in fit.decisions] == ["empty", "empty", "new", "empty"]
    assert all(d.weights["empty"] > d.weights["new"] for d in fit.decisions
               if not d.forced)
    route = manifest.routes["shades"]
    assert route.layers[0] is None and route.layers[2] is not None
    one_module = manifest.modules[route.layers[2]].params
    assert manifest.route_params("shades") == one_module
    assert fit.replayed == []  # nothing shared, nothing to replay


def test_acm_has_no_empty_candidate(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(20), "per_task")
    _, fit = _add(seq, "shades", keyword_rows(20, seed=2), "acm", search_epochs=0)
    assert all("empty" not in d.weights for d in fit.decisions)
    assert all(d.choice in ("reuse", "new") for d in fit.decisions)


def _add(seq: Sequence, task_id: str, rows: list, strategy: str = "safm", **given: object):
    # These tests pin the paper's logit search unless they name a decision.
    if strategy in ("safm", "acm"):
        given.setdefault("decision", "paper")
    out = seq.add(task_id, rows, strategy, **given)
    return out.manifest, out.result


def _tensors(bank: LoadedBank, module_id: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bank.modules[module_id].state_dict().items()}


def test_path_masking_replay_and_immutable_versions(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(20), "per_task")
    v2, _ = _add(seq, "shapes", keyword_rows(20, seed=7), "per_task")
    old_colors = list(v2.routes["colors"].layers)
    old_shapes = list(v2.routes["shapes"].layers)
    bank = LoadedBank(seq.blobs, CPU, keep=8)
    loaded_v2 = bank.sync(v2)
    before = {m: _tensors(bank, m) for m in old_colors}
    # ACM with no search: ties between old modules go to the oldest (colors'), at every layer.
    v3, fit = _add(seq, "colors-too", keyword_rows(20, seed=1), "acm", search_epochs=0,
                      forced_layers=[])
    assert [d.module for d in fit.decisions] == old_colors
    assert fit.replayed == ["colors"]
    # shapes is on no trained route: its modules keep their ids and bytes.
    assert v3.routes["shapes"].layers == old_shapes
    assert v3.routes["shapes"].head == v2.routes["shapes"].head
    # colors' modules were tuned (shared + replay): new ids, used by both tasks.
    new_colors = v3.routes["colors"].layers
    assert all(n != o for n, o in zip(new_colors, old_colors, strict=True))
    assert v3.routes["colors-too"].layers == new_colors
    assert v3.routes["colors"].head != v2.routes["colors"].head
    assert set(fit.old_tasks) == {"colors"}
    # The previous version still serves the old tensors, bit for bit.
    fresh = LoadedBank(seq.blobs, CPU, keep=8)
    fresh.sync(v2)
    for module_id in old_colors:
        for k, v in _tensors(fresh, module_id).items():
            assert torch.equal(v, before[module_id][k])
    loaded_v3 = fresh.sync(v3)
    assert not torch.equal(loaded_v3.tasks["colors"].modules[0].parts["attn"].down.weight,
                           loaded_v2.tasks["colors"].modules[0].parts["attn"].down.weight)
    assert seq.live.totals()["adapter_params"] == sum(m.params for m in v3.modules.values())
    assert len(v3.modules) == 4  # colors (tuned) + shapes; nothing new for colors-too


def test_layer_loss_over_non_empty_layers_and_gradient_on_route_only() -> None:
    model = tiny_model_layers(4)
    on0, on2 = random_module("bottleneck", 0, seed=1), random_module("bottleneck", 2, seed=2)
    off = random_module("bottleneck", 1, seed=3)  # in the bank, not on this route
    for m in (on0, on2, off):
        m.requires_grad_(True)
    route = [on0, None, on2, None]
    batch = model.base.tokenize(items_of(keyword_rows(4)[:4]), CPU)
    _, states = model.embed_with_layers(batch, Routing.uniform(route))
    mask = batch["attention_mask"]
    loss = layer_cosine(states, mask, [i for i, m in enumerate(route) if m is not None])
    m = mask.float()
    manual = torch.stack([
        (torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1) * m).sum()
        / m.sum() for i in (0, 2)]).mean()
    torch.testing.assert_close(loss, manual)
    everywhere = layer_cosine(states, mask, [0, 1, 2, 3])
    assert not torch.allclose(loss, everywhere)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in on0.parameters()
               if p.dim() > 1)
    assert all(p.grad is not None for p in on2.parameters())
    assert all(p.grad is None for p in off.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert float(layer_cosine(states, mask, [])) == 0.0


def test_resolve_validates_ranges_and_rules() -> None:
    s = Settings(base_model="tiny-bert")
    def resolve_(strategy: str, given: dict, layers: int):  # noqa: ANN202
        return resolve(strategy, StrategyOverrides.model_validate(given), s, layers)

    params = resolve_("safm", {}, 6)
    assert params.forced_layers == [2] and params.layer_loss_weight == 0.4
    assert params.alpha == 0.11 and params.beta == 0.08
    assert resolve_("acm", {}, 6).layer_loss_weight == 0.0
    with pytest.raises(ValueError, match="alpha > beta"):
        resolve_("safm", {"alpha": 0.01}, 6)
    with pytest.raises(ValueError, match="out of range"):
        resolve_("safm", {"forced_layers": [6]}, 6)
    with pytest.raises(ValueError, match="layer_loss_weight"):
        resolve_("acm", {"layer_loss_weight": 0.3}, 6)
    with pytest.raises(ValueError, match="do not apply"):
        resolve_("per_task", {"alpha": 0.2}, 6)
    with pytest.raises(ValueError):
        resolve_("safm", {"replay_ratio": -1}, 6)


def test_safm_with_lora_modules(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings(module_kind="lora", lora_rank=4))
    first, _ = _add(seq, "colors", keyword_rows(20), "per_task")
    manifest, fit = _add(seq, "colors-again", keyword_rows(20), search_learning_rate=0.05)
    assert {m.kind for m in manifest.modules.values()} == {"lora"}
    old = first.routes["colors"].layers[1]
    assert set(fit.decisions[1].weights) == {"empty", old, "new"}
    assert fit.decisions[0].choice == "new" and fit.decisions[0].forced
    loaded = seq.bank.sync(manifest)
    assert set(loaded.tasks["colors-again"].modules[0].parts) == {"query", "value"}


def test_retraining_a_task_may_reuse_its_own_modules(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    first, _ = _add(seq, "colors", keyword_rows(20), "per_task")
    manifest, fit = _add(seq, "colors", keyword_rows(20, seed=2), "acm", search_epochs=0,
                            forced_layers=[])
    assert [d.module for d in fit.decisions] == first.routes["colors"].layers
    assert fit.replayed == []
    assert set(manifest.routes) == {"colors"}
    assert len(manifest.modules) == 2  # tuned copies replace the originals


def test_adaptive_replay_follows_how_much_of_each_path_is_reused() -> None:
    from worker.strategies.tuning import replay_counts

    assert replay_counts(100, ["a", "b"], 0.2, None) == {"a": 10, "b": 10}
    # a's whole path is reused, b's at one layer in five: a replays as much as the new task
    # trains, then both scale down to |D_new| in all; neither drops under the even split.
    assert replay_counts(100, ["a", "b"], 0.2, {"a": 1.0, "b": 0.2}) == {"a": 83, "b": 16}
    assert replay_counts(100, ["a"], 0.2, {"a": 0.5}) == {"a": 50}
    assert replay_counts(100, ["a", "b"], 0.2, {"a": 0.0, "b": 0.0}) == {"a": 10, "b": 10}


def test_budget_decision_scales_the_logit_rate_to_the_search_steps(tmp_path) -> None:
    from worker.strategies.decision import PAPER_LOGIT_BUDGET

    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(20), "per_task")
    _, fit = _add(seq, "shades", keyword_rows(20, seed=3), decision="budget", search_epochs=2,
                  forced_layers=[])
    # 32 training rows (20% held out) in batches of 8: 4 steps an epoch, 8 search steps, so a
    # logit may move by up to the paper's budget; each layer's logits left their start.
    searched = [d for d in fit.decisions if not d.forced]
    assert all(d.method == "budget" for d in searched)
    moved = [max(abs(a - b) for a, b in zip(d.logits, (0.11, 0.08, -0.08), strict=True))
             for d in searched]
    assert all(0.1 * PAPER_LOGIT_BUDGET < m <= PAPER_LOGIT_BUDGET + 1e-6 for m in moved), moved
