"""The serving benchmark runs end to end at toy scale (tiny model, short levels) and writes its
result files; its numbers are not checked here (no timing assertions), its invariants are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterd.cli import main as adapterd_main


@pytest.mark.slow
def test_serving_benchmark_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = adapterd_main([
        "bench", "serving", "--base-model", "tiny-bert", "--device", "cpu", "--threads", "1",
        "--tasks", "1,4", "--reps", "2", "--batch-rows", "8", "--words", "8",
        "--http-tasks", "4", "--concurrency", "1,2", "--duration", "2", "--swap-versions", "2",
        "--overhead-requests", "5",
        "--memory-tasks", "1,4", "--memory-shapes", "lora,lora@bfloat16", "--out", str(out)])
    assert code == 0
    payload = json.loads((out / "serving.json").read_text())
    engine = payload["engine"]
    assert {r["shape"] for r in engine} == {"bottleneck", "lora", "safm"}
    for row in engine:
        # Every contender computes the same embeddings; the adapters change them.
        assert all(d < 1e-4 for d in row["max_abs_diff_vs_per_group"].values()), row
        assert row["adapter_effect_max_abs"] > 1e-4
    assert {"peft_mixed", "peft_naive"} <= set(next(r for r in engine
                                                    if r["shape"] == "lora")["ratio_to_bare"])
    assert [r["concurrency"] for r in payload["http"]] == [1, 2]
    assert all(r["failed"] == 0 and r["requests"] > 0 for r in payload["http"])
    breakdown = payload["http_overhead"]
    assert [r["client"] for r in breakdown] == ["httpx", "raw"]
    assert all(r["failed"] == 0 and r["requests"] == 5 for r in breakdown)
    floors = payload["http_floors"]
    assert floors["samples"] == 5
    assert 0 < floors["bare_asgi_rtt_p50_ms"] and 0 < floors["redis_round_trip_p50_ms"]
    swap = payload["swap"]
    assert swap["summary"]["failed"] == 0 and swap["stale_replies"] == 0
    assert swap["versions_published"] == 2
    assert swap["prepare_s"]["max"] is not None  # every publish was staged and prepared
    heap = payload["heap"]  # the bare forward under both heap policies, stepped in turn
    assert heap["reps"] == 2 and heap["glibc_default"]["median_ms"] > 0
    assert heap["kept"]["median_ms"] > 0 and heap["speedup"] > 0
    memory = payload["memory"]
    assert [(r["tasks"], r["dtype"]) for r in memory] == [
        (1, "float32"), (4, "float32"), (1, "bfloat16"), (4, "bfloat16")]
    assert all(r["prepare_one_more_task_s"] > 0 for r in memory)
    md = (out / "serving.md").read_text()
    assert "Hot swap under load" in md and "serving-engine.png" in md
    assert "Host heap (the bare forward)" in md
    assert "Where the overhead goes at concurrency 1" in md and "Floors on this host" in md
    assert (out / "serving-engine.png").stat().st_size > 0
