"""Training touches only the modules it trains; per_task learns a trivially learnable task."""

from __future__ import annotations

import torch

from adapters_store.settings import Settings
from adapters_store.strategy_params import resolve
from tests.factories import CPU, keyword_rows, random_module, tiny_model
from worker.strategies import STRATEGIES, FitContext
from worker.train_job import split_rows
from worker.training import TrainConfig, accuracy, train_route


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_module_not_on_route_is_untouched_by_training() -> None:
    model = tiny_model()
    old = random_module("bottleneck", 0, seed=5)  # another task's module, not on this route
    shared_frozen = random_module("bottleneck", 1, seed=6)  # on the route but frozen (reused)
    new = random_module("bottleneck", 0, seed=7)
    head = torch.nn.Linear(32, 2)
    before_old, before_shared = _snapshot(old), _snapshot(shared_frozen)
    before_new = _snapshot(new)
    before_base = _snapshot(model.encoder)
    rows = keyword_rows(8)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, head_lr=1e-2, weight_decay=0.01, seed=0)
    train_route(model, [new, shared_frozen], [new], head, rows, {"red": 0, "blue": 1}, cfg,
                lambda p: None)
    for k, v in _snapshot(old).items():
        assert torch.equal(v, before_old[k])
    for k, v in _snapshot(shared_frozen).items():
        assert torch.equal(v, before_shared[k])
    for k, v in _snapshot(model.encoder).items():
        assert torch.equal(v, before_base[k]), k
    assert any(not torch.equal(v, before_new[k]) for k, v in _snapshot(new).items())


def test_per_task_learns_keyword_task() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    train, val = split_rows(keyword_rows(40), 0.2, seed=1)
    settings = Settings(base_model="tiny-bert", epochs=6, batch_size=8, learning_rate=5e-3,
                        head_learning_rate=1e-2, bottleneck_size=16)
    progress = []
    ctx = FitContext(model=model, parent=None, task_id="colors", train_rows=train,
                     labels=["blue", "red"], params=resolve("per_task", {}, settings, 2),
                     progress=progress.append, device=CPU, seed=0)
    fit = STRATEGIES["per_task"](ctx)
    assert len(fit.new_modules) == 2 and all(m is not None for m in fit.route)
    assert progress[-1].step == progress[-1].total_steps and progress[-1].epoch == 6
    assert accuracy(model, fit.route, fit.head, val, ctx.label_index) >= 0.9


def test_split_is_seeded_stratified_and_disjoint() -> None:
    rows = keyword_rows(20)
    train, val = split_rows(rows, 0.25, seed=3)
    again, _ = split_rows(rows, 0.25, seed=3)
    assert train == again
    assert len(train) + len(val) == len(rows)
    assert {r.label for r in val} == {"red", "blue"}
    assert sum(r.label == "red" for r in val) == 5
