"""Continual-learning metrics over an accuracy matrix R[i][j] (task j after training task i)."""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _check(r: Matrix) -> int:
    n = len(r)
    if n == 0:
        raise ValueError("the accuracy matrix is empty")
    for i, row in enumerate(r):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} entries; the matrix must be {n}x{n}")
        if any(row[j] is None for j in range(i + 1)):
            raise ValueError(f"row {i} lacks a score for a task seen by then")
    return n


def average(r: Matrix) -> float:
    """Mean score over all tasks after the last one: (1/N) Σ_j R[N][j]."""
    n = _check(r)
    return sum(r[n - 1][j] for j in range(n)) / n  # type: ignore[misc]


def bwt(r: Matrix) -> float | None:
    """Backward transfer: mean over j < N of R[N][j] − R[j][j]; negative means forgetting.
    None for a single task, where it is undefined."""
    n = _check(r)
    if n < 2:
        return None
    return sum(r[n - 1][j] - r[j][j] for j in range(n - 1)) / (n - 1)  # type: ignore[operator]


def forgetting(r: Matrix) -> list[float]:
    """Per earlier task: best score it ever had minus its final score (0 for the last task)."""
    n = _check(r)
    return [max(r[i][j] for i in range(j, n)) - r[n - 1][j]  # type: ignore[type-var, operator]
            for j in range(n)]


def average_se(r: Matrix, test_rows: Sequence[int]) -> float:
    """Binomial standard error of ``average``: each final score is a share of its task's test
    rows, so differences well under two of these are noise, not method."""
    n = _check(r)
    if len(test_rows) != n or any(k <= 0 for k in test_rows):
        raise ValueError("need a positive test-row count per task")
    var = sum(r[n - 1][j] * (1 - r[n - 1][j]) / test_rows[j] for j in range(n))  # type: ignore[operator]
    return var ** 0.5 / n
