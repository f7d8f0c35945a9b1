"""Continual-learning strategies: each decides a new task's route and trains what it adds.

A strategy is one file with one ``fit_<name>(FitContext) -> FitResult`` and one line here; its
name joins ``StrategyName`` and its hyperparameters one of the typed params models."""

from __future__ import annotations

from collections.abc import Callable

from worker.strategies.fit import FitContext, FitResult
from worker.strategies.ham import fit_ham
from worker.strategies.multitask import fit_multitask
from worker.strategies.per_task import fit_per_task
from worker.strategies.safm import fit_acm, fit_safm
from worker.strategies.seqft import fit_seqft
from worker.strategies.sparse import fit_sparse, fit_sparse_merged

STRATEGIES: dict[str, Callable[[FitContext], FitResult]] = {
    "safm": fit_safm, "acm": fit_acm, "per_task": fit_per_task, "seqft": fit_seqft,
    "multitask": fit_multitask, "sparse": fit_sparse, "sparse_merged": fit_sparse_merged,
    "ham": fit_ham}

__all__ = ["STRATEGIES", "FitContext", "FitResult"]
