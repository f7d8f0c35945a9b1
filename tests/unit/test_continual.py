"""The continual-learning benchmark end to end on a tiny model and data the test writes: data
loading and caps, seqft/multitask semantics, the accuracy matrix, result files and merging."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from adapterd.cli import main as adapterd_main
from adapters_store.strategy_params import STRATEGY_NAMES, StrategyOverrides, resolve
from tests.factories import keyword_rows, make_settings, tiny_model_layers
from worker.continual.metrics import average, bwt
from worker.continual.sequences import (
    SequenceError,
    load_task,
    resolve_sequence,
    stratified_sample,
)
from worker.sequence import Sequence

CUES = {
    "colors": {"red": "apple cherry tomato", "blue": "ocean sky sapphire"},
    "shapes": {"round": "ball wheel circle", "square": "box tile cube",
               "long": "rope snake stick"},
}


def write_task(root: Path, name: str, n: int, with_test: bool = True, seed: int = 0) -> None:
    rng = random.Random(seed)
    fillers = ["the", "a", "news", "today", "of", "and", "some"]
    folder = root / name
    folder.mkdir(parents=True)
    for split, k in (("train", n), ("test", n // 2)) if with_test else (("train", n),):
        with (folder / f"{split}.jsonl").open("w") as fh:
            for label, cue in CUES[name].items():
                for _ in range(k):
                    words = rng.sample(fillers, 3) + rng.sample(cue.split(), 2)
                    rng.shuffle(words)
                    # an extra field, as the shared datasets have (label_fine, word, ...)
                    fh.write(json.dumps({"text": " ".join(words), "label": label,
                                         "label_fine": label + "_x"}) + "\n")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_task(root, "colors", 30)
    write_task(root, "shapes", 24, seed=1)
    return root


def test_sequences_and_data_loading(data_dir: Path, tmp_path: Path) -> None:
    assert resolve_sequence("olora1") == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert len(resolve_sequence("long15")) == 15
    assert resolve_sequence("colors,shapes") == ["colors", "shapes"]
    for bad in ("nlg5", "nosuch", "colors,colors"):
        with pytest.raises(SequenceError):
            resolve_sequence(bad)
    task = load_task(data_dir, "shapes", train_cap=30, test_cap=None, seed=0)
    assert len(task.train) == 30 and task.labels == ["long", "round", "square"]
    assert {r.label for r in task.train} == set(task.labels)
    assert any("capped at 30 of 72" in n for n in task.notes)
    with pytest.raises(SequenceError, match="no .*train.jsonl"):
        load_task(data_dir, "missing", None, None, 0)
    write_task(tmp_path / "other", "colors", 20, with_test=False)
    held = load_task(tmp_path / "other", "colors", None, None, 0)
    assert len(held.test) == 8 and len(held.train) == 32
    assert any("held out as test" in n for n in held.notes)
    gen = tmp_path / "gen" / "e2e"
    gen.mkdir(parents=True)
    (gen / "train.jsonl").write_text(json.dumps({"input": "x", "output": "y"}) + "\n")
    with pytest.raises(SequenceError, match="generation"):
        load_task(tmp_path / "gen", "e2e", None, None, 0)


def test_stratified_sample_keeps_label_shares() -> None:
    rows = keyword_rows(40) + keyword_rows(10, seed=2)[:10]
    sample = stratified_sample(rows, 25, seed=3)
    assert len(sample) == 25
    assert stratified_sample(rows, 25, seed=3) == sample  # seeded
    counts = {lbl: sum(r.label == lbl for r in sample) for lbl in ("red", "blue")}
    assert abs(counts["red"] - counts["blue"]) <= 3


def test_seqft_trains_one_set_and_old_tasks_follow_it(tmp_path: Path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    v1 = seq.add("a", keyword_rows(20), "seqft").manifest
    out = seq.add("b", keyword_rows(20, seed=4), "seqft")
    v2, fit = out.manifest, out.fit
    assert fit.new_modules == [] and all(d.choice == "reuse" for d in fit.decisions)
    assert v2.routes["a"].layers == v2.routes["b"].layers != v1.routes["a"].layers
    assert v2.routes["a"].head == v1.routes["a"].head  # old heads are kept as they were
    assert len(v2.modules) == 2 and set(fit.old_tasks) == {"a"}
    # The first version still holds the old tensors (immutable versions, rollback works).
    assert set(v1.routes["a"].layers) <= set(v1.modules)


def test_multitask_retrains_every_task_jointly(tmp_path: Path) -> None:
    seq = Sequence(tiny_model_layers(2), tmp_path, make_settings())
    # The gate off: on a tiny random model a member may drop by noise, and this test is about
    # the joint retraining (test_regression_gate covers the gate).
    off = {"regression_gate": "off"}
    seq.add("a", keyword_rows(20), "multitask", **off)
    seq.add("b", keyword_rows(20, seed=4), "multitask", **off)
    out = seq.add("c", keyword_rows(20, seed=5), "multitask", **off)
    v3, fit = out.manifest, out.fit
    assert fit.replayed == ["a", "b"] and set(fit.updated_heads) == {"a", "b"}
    layers = {tuple(r.layers) for r in v3.routes.values()}
    assert len(layers) == 1 and len(v3.modules) == 2


def test_plain_strategies_take_per_task_params() -> None:
    settings = make_settings()
    for name in ("seqft", "multitask"):
        params = resolve(name, StrategyOverrides(epochs=2), settings, 2)
        assert params.epochs == 2 and not hasattr(params, "forced_layers")
        with pytest.raises(ValueError, match="do not apply"):
            resolve(name, StrategyOverrides(alpha=0.2), settings, 2)


def run_bench(data_dir: Path, out: Path, *extra: str) -> int:
    return adapterd_main([
        "bench", "continual", "--sequence", "colors,shapes", "--data-dir", str(data_dir),
        "--out", str(out), "--base-model", "tiny-bert", "--device", "cpu", "--no-progress",
        "--set", "batch_size=8", "--set", "bottleneck_size=8", "--set", "learning_rate=0.01",
        "--set", "safm_learning_rate=0.01", "--set", "max_length=32", "--seed", "0", *extra])


def test_two_task_sequence_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_bench(data_dir, out) == 0
    base = out / "continual-colors-shapes-cpu"
    payload = json.loads(base.with_suffix(".json").read_text())
    results = payload["results"]
    assert set(results) == set(STRATEGY_NAMES)
    for name, r in results.items():
        m = r["matrix"]
        assert len(m) == 2 and m[0][1] is None and all(v is not None for v in m[1])
        assert all(0.0 <= v <= 1.0 for row in m for v in row if v is not None)
        assert r["average"] == pytest.approx(average(m)) and r["bwt"] == pytest.approx(bwt(m))
        assert [s["task"] for s in r["steps"]] == ["colors", "shapes"], name
        assert all(s["test_rows"] == len_test for s, len_test in zip(r["steps"], (30, 36),
                                                                       strict=True))
    one_set = results["seqft"]["bank"]["adapter_params"]
    assert results["per_task"]["bank"]["adapter_params"] == 2 * one_set
    assert results["multitask"]["bank"]["adapter_params"] == one_set
    assert results["safm"]["bank"]["adapter_params"] <= 2 * one_set
    assert len(results["safm"]["steps"][1]["decisions"]) == 2
    assert payload["datasets"]["shapes"]["labels"] == ["long", "round", "square"]
    md = base.with_suffix(".md").read_text()
    for name in results:
        assert f"| {name} |" in md
    assert "Per-layer decisions" in md
    for png in ("matrices", "params"):
        assert (out / f"continual-colors-shapes-cpu-{png}.png").read_bytes()[:4] == b"\x89PNG"
    # A later run of one strategy replaces only that strategy's results.
    before = results["seqft"]
    assert run_bench(data_dir, out, "--strategies", "per_task", "--no-plots") == 0
    merged = json.loads(base.with_suffix(".json").read_text())["results"]
    assert set(merged) == set(results) and merged["seqft"] == before


def test_bad_options_fail_clearly(data_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(data_dir, tmp_path, "--strategies", "nosuch") == 2
    assert "unknown strategies" in capsys.readouterr().err
    assert adapterd_main(["bench", "continual", "--sequence", "nlg5",
                          "--data-dir", str(data_dir)]) == 2
    assert "generation" in capsys.readouterr().err
    assert run_bench(data_dir, tmp_path, "--set", "batch_size=0") == 2
    assert not list(tmp_path.glob("continual-*.json"))


def test_tagged_variants_and_other_configurations(data_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_bench(data_dir, out, "--strategies", "per_task", "--no-plots") == 0
    assert run_bench(data_dir, out, "--strategies", "safm", "--tag", "slr", "--no-plots",
                     "--param", "safm:search_learning_rate=0.05") == 0
    path = out / "continual-colors-shapes-cpu.json"
    payload = json.loads(path.read_text())
    assert set(payload["results"]) == {"per_task", "safm@slr"}
    variant = payload["results"]["safm@slr"]
    assert variant["param_overrides"] == {"search_learning_rate": "0.05"}
    assert variant["steps"][0]["strategy_params"]["search_learning_rate"] == 0.05
    md = out / "continual-colors-shapes-cpu.md"
    assert "| safm@slr |" in md.read_text()
    md.unlink()
    assert run_bench(data_dir, out, "--report-only") == 0  # re-rendered from the JSON alone
    assert "| safm@slr |" in md.read_text() and (out / "continual-colors-shapes-cpu-params.png"
                                                 ).is_file()
    assert run_bench(data_dir, tmp_path / "empty", "--report-only") == 2
    # Another configuration must not silently replace stored results.
    before = path.read_text()
    assert run_bench(data_dir, out, "--strategies", "per_task", "--train-cap", "20") == 2
    assert "another configuration" in capsys.readouterr().err
    assert path.read_text() == before
    assert run_bench(data_dir, out, "--param", "safm:alpha=0.01") == 2  # alpha > beta violated
    assert "alpha > beta" in capsys.readouterr().err
    assert path.read_text() == before


def test_result_files_compare_on_what_ran() -> None:
    from worker.continual.report import differences

    a = {"sequence": "s", "tasks": ["x"], "seed": 1, "base_model": "b",
         "preset": {"name": "cpu", "train_cap": 10, "description": "old words"}}
    assert differences(None, a) == []
    assert differences(a, a | {"preset": a["preset"] | {"description": "new words"}}) == []
    assert differences(a, a | {"preset": a["preset"] | {"train_cap": 20}}) == ["preset"]
    assert differences(a, a | {"seed": 2}) == ["seed"]
