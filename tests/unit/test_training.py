"""Training touches only the modules it trains; per_task learns a trivially learnable task;
progress covers the whole job."""

from __future__ import annotations

import torch

from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides, resolve
from tests.factories import CPU, keyword_rows, random_module, tiny_model
from worker.evaluation import accuracy
from worker.pipeline import split_rows
from worker.progress import JobClock
from worker.strategies import STRATEGIES, FitContext
from worker.strategies.fit import train_plain


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _ctx(model, rows, settings: Settings, progress=None) -> FitContext:  # noqa: ANN001
    return FitContext(model=model, parent=None, task_id="colors", train_rows=rows,
                      labels=["blue", "red"],
                      params=resolve("per_task", StrategyOverrides(), settings, 2),
                      clock=JobClock(progress or (lambda p: None)), device=CPU, seed=0)


def test_module_not_on_route_is_untouched_by_training() -> None:
    model = tiny_model()
    old = random_module("bottleneck", 0, seed=5)  # another task's module, not on this route
    new = random_module("bottleneck", 0, seed=7)
    head = torch.nn.Linear(32, 2)
    before_old, before_new = _snapshot(old), _snapshot(new)
    before_base = _snapshot(model.encoder)
    settings = Settings(base_model="tiny-bert", epochs=1, batch_size=8, learning_rate=1e-2)
    train_plain(_ctx(model, keyword_rows(8), settings), [new, None], head)
    for k, v in _snapshot(old).items():
        assert torch.equal(v, before_old[k])
    for k, v in _snapshot(model.encoder).items():
        assert torch.equal(v, before_base[k]), k
    assert any(not torch.equal(v, before_new[k]) for k, v in _snapshot(new).items())
    assert not any(p.requires_grad for p in new.parameters())  # frozen again afterwards


def test_per_task_learns_keyword_task() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    train, val = split_rows(keyword_rows(40), 0.2, seed=1)
    settings = Settings(base_model="tiny-bert", epochs=6, batch_size=8, learning_rate=5e-3,
                        head_learning_rate=1e-2, bottleneck_size=16)
    progress = []
    ctx = _ctx(model, train, settings, progress.append)
    fit = STRATEGIES["per_task"](ctx)
    assert len(fit.new_modules) == 2 and all(m is not None for m in fit.route)
    last = progress[-1]
    assert last.step == last.total_steps == 6 * 8 and last.epoch == 6 and last.fraction == 1.0
    assert accuracy(model, fit.route, fit.head, val, ctx.label_index) >= 0.9


def test_split_is_seeded_stratified_and_disjoint() -> None:
    rows = keyword_rows(20)
    train, val = split_rows(rows, 0.25, seed=3)
    again, _ = split_rows(rows, 0.25, seed=3)
    assert train == again
    assert len(train) + len(val) == len(rows)
    assert {r.label for r in val} == {"red", "blue"}
    assert sum(r.label == "red" for r in val) == 5


def test_job_clock_plans_every_stage_and_replans() -> None:
    seen = []
    clock = JobClock(seen.append)
    clock.plan("warmup", 2)
    clock.plan("tuning", 4)  # an estimate
    clock.begin("warmup")
    for _ in range(2):
        clock.step(1, 1, 1.0)
    assert seen[-1].total_steps == 6 and seen[-1].fraction == 2 / 6
    assert seen[-1].stage_step == seen[-1].stage_steps == 2
    assert seen[-1].eta_s is not None and seen[-1].eta_s >= 0
    clock.plan("tuning", 2)  # known now: smaller
    clock.begin("tuning")
    clock.step(1, 1, 0.5)
    assert seen[-1].total_steps == 4 and seen[-1].step == 3 and seen[-1].stage == "tuning"
    clock.step(1, 1, 0.5)
    assert seen[-1].fraction == 1.0 and seen[-1].eta_s == 0.0
    clock.note("evaluating")
    assert seen[-1].stage == "evaluating" and seen[-1].step == 4
