"""The regression gate before a publish: a harmful reuse is caught, reverted or refused."""

from __future__ import annotations

import random

import pytest

from adapters_store.datasets import Row
from adapters_store.errors import Regression
from tests.factories import CPU, keyword_rows, make_settings, tiny_model_layers
from worker.bank import LoadedBank
from worker.evaluation import accuracy
from worker.regression_gate import drop_tolerance
from worker.sequence import Sequence

# acm with no search reuses the oldest module at every layer; no replay and a rate this high
# then rewrite the shared modules for the new task, whatever the old one needed.
HARMFUL = dict(decision="paper", search_epochs=0, warmup_epochs=1, forced_layers=[],
               replay_ratio=0.0, learning_rate=0.5, epochs=6)


def conflicting_rows(n_per_label: int = 30, seed: int = 11) -> list[Row]:
    """Labels set by filler words while the colour cues of ``keyword_rows`` appear at random."""
    rng = random.Random(seed)
    cues = "apple cherry tomato ocean sky sapphire".split()
    rows = []
    for label, marker in (("news", "news report story"), ("chat", "today about some")):
        for _ in range(n_per_label):
            words = rng.sample(marker.split(), 2) + rng.sample(cues, 3)
            rng.shuffle(words)
            rows.append(Row(text=" ".join(words), label=label))
    rng.shuffle(rows)
    return rows


def _colors(tmp_path) -> tuple[Sequence, list[str | None]]:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(60), "per_task", epochs=8)
    return seq, list(seq.live.routes["colors"].layers)  # type: ignore[union-attr]


def _colors_accuracy(seq: Sequence) -> float:
    bank = LoadedBank(seq.blobs, CPU, keep=4)
    task = bank.sync(seq.live).tasks["colors"]
    return accuracy(seq.model, task.modules, task.head, seq.data["colors"][1], task.label_index)


def test_fallback_keeps_the_old_task_and_unshares_the_new_one(tmp_path) -> None:
    seq, old_layers = _colors(tmp_path)
    before = _colors_accuracy(seq)
    out = seq.add("topics", conflicting_rows(), "acm", regression_gate="fallback", **HARMFUL)
    gate = out.result.gate
    assert gate is not None and gate.mode == "fallback"
    check = gate.checks["colors"]
    assert check.before == pytest.approx(before)
    assert not check.passed, "the harmful reuse was not harmful: the test proves nothing"
    assert check.after < check.before - check.tolerance
    assert gate.outcome == "fallback"
    assert set(gate.reverted_modules) == {m for m in old_layers if m is not None}
    assert gate.unshared_layers == [0, 1]
    manifest = out.manifest
    # The old task serves exactly what it served, and scores as before.
    assert manifest.routes["colors"].layers == old_layers
    assert manifest.routes["colors"].head == seq.manifests[0].routes["colors"].head
    assert _colors_accuracy(seq) == pytest.approx(before)
    final = out.result.old_tasks["colors"]
    assert final.after == pytest.approx(before)
    # The new task kept its tuned copies as modules of its own.
    new_layers = manifest.routes["topics"].layers
    assert all(m is not None and m not in old_layers for m in new_layers)
    assert [d.choice for d in out.result.decisions] == ["new", "new"]
    assert out.result.params_added >= sum(manifest.modules[m].params for m in new_layers)


def test_fail_mode_fails_the_job_and_publishes_nothing(tmp_path) -> None:
    seq, _ = _colors(tmp_path)
    live = seq.live
    with pytest.raises(Regression) as caught:
        seq.add("topics", conflicting_rows(), "acm", regression_gate="fail", **HARMFUL)
    assert "colors" in caught.value.details
    assert seq.live is live and len(seq.manifests) == 1


def test_off_records_the_drop_and_publishes_it(tmp_path) -> None:
    seq, old_layers = _colors(tmp_path)
    out = seq.add("topics", conflicting_rows(), "acm", regression_gate="off", **HARMFUL)
    gate = out.result.gate
    assert gate is not None and gate.outcome == "unchecked" and not gate.checks["colors"].passed
    assert out.manifest.routes["colors"].layers != old_layers  # moved to the tuned modules
    assert out.result.old_tasks["colors"].after == pytest.approx(gate.checks["colors"].after)


def test_a_harmless_reuse_passes_and_shares(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(30), "per_task")
    out = seq.add("colors-again", keyword_rows(30, seed=4), "acm", decision="paper",
                  search_epochs=0, forced_layers=[], replay_ratio=1.0)
    gate = out.result.gate
    assert gate is not None and gate.outcome == "passed" and gate.checks["colors"].passed
    assert out.manifest.routes["colors"].layers == out.manifest.routes["colors-again"].layers
    assert out.result.replayed_rows["colors"] > 0


def test_the_gate_checks_nothing_when_nothing_is_shared(tmp_path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    seq.add("colors", keyword_rows(20), "per_task")
    out = seq.add("shades", keyword_rows(20, seed=3), "per_task")
    assert out.result.gate is not None and out.result.gate.outcome == "unchecked"
    assert out.result.gate.checks == {} and out.result.old_tasks == {}


def test_drop_tolerance_is_a_point_or_two_standard_errors() -> None:
    assert drop_tolerance(1.0, 50) == 0.01
    assert drop_tolerance(0.5, 100) == pytest.approx(0.1)
    assert drop_tolerance(float("nan"), 10) == 0.01
