"""Job progress over every stage: planned steps per stage, overall fraction, ETA, stage counters."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    stage: str
    epoch: int
    epochs: int
    step: int  # training steps done in the whole job
    total_steps: int  # training steps planned for the whole job
    stage_step: int
    stage_steps: int
    loss: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    return None


class JobClock:
    """Counts training steps across a job's stages so the ETA covers the whole job.

    A strategy plans every stage it will run before its first step; a stage whose size is only
    known later (tuning after the decision picked what to replay) is planned with an estimate
    and re-planned once known. The ETA is the mean step time so far times the steps left.
    """

    def __init__(self, report: ProgressFn) -> None:
        self.report = report
        self.planned: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.loss: float | None = None
        self.stage: str | None = None
        self.train_s = 0.0
        self._last = 0.0
        self.seconds: dict[str, float] = {}  # wall time per stage, notes included
        self._since = time.monotonic()

    def _switch(self, stage: str) -> None:
        now = time.monotonic()
        if self.stage is not None:
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self._since
        self._since = now

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent in each stage so far (the profile a job result carries)."""
        out = dict(self.seconds)
        if self.stage is not None:
            out[self.stage] = out.get(self.stage, 0.0) + time.monotonic() - self._since
        return {k: round(v, 2) for k, v in out.items()}

    @property
    def total(self) -> int:
        return sum(max(self.planned[s], self.done.get(s, 0)) for s in self.planned)

    @property
    def steps(self) -> int:
        return sum(self.done.values())

    def plan(self, stage: str, steps: int) -> None:
        self.planned[stage] = steps

    def begin(self, stage: str) -> None:
        """Start timing ``stage``; the loss average restarts with it."""
        self.planned.setdefault(stage, 0)
        self._switch(stage)
        self.stage, self.loss = stage, None
        self._last = time.monotonic()

    def step(self, epoch: int, epochs: int, loss: float) -> None:
        now = time.monotonic()
        self.train_s += now - self._last
        self._last = now
        stage = self.stage or "training"
        self.done[stage] = self.done.get(stage, 0) + 1
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        steps, total = self.steps, self.total
        self.report(Progress(stage, epoch, epochs, steps, total, self.done[stage],
                             max(self.planned[stage], self.done[stage]), self.loss,
                             self.train_s / steps * (total - steps)))

    def note(self, stage: str) -> None:
        """A stage without training steps (evaluating, publishing)."""
        self._switch(stage)
        self.stage = stage
        self.report(Progress(stage, 0, 0, self.steps, self.total, 0, 0, None, None))
