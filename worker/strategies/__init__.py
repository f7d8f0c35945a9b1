"""Continual-learning strategies: each decides a new task's route and trains what it adds."""

from __future__ import annotations

from collections.abc import Callable

from worker.strategies.fit import FitContext, FitResult
from worker.strategies.per_task import fit_per_task
from worker.strategies.safm import fit_acm, fit_safm

STRATEGIES: dict[str, Callable[[FitContext], FitResult]] = {
    "safm": fit_safm, "acm": fit_acm, "per_task": fit_per_task}

__all__ = ["STRATEGIES", "FitContext", "FitResult"]
