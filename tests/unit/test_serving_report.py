"""The serving benchmark's result file: a run of some parts keeps the others, and lists only the
commands whose parts the file still holds."""

from __future__ import annotations

import json
from pathlib import Path

from worker.serving_bench.cli import recorded_argv
from worker.serving_bench.report import merge


def _run(command: str, **parts: object) -> dict[str, object]:
    return {"base_model": "m", "command": command, **parts}


def _write(path: Path, payload: dict[str, object]) -> dict[str, object]:
    merged = merge(payload, path)
    path.write_text(json.dumps(merged))
    return merged


def test_partial_runs_keep_other_parts_and_only_their_live_commands(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    _write(path, _run("all", engine=[1], http=[1], memory=[1]))
    merged = _write(path, _run("mem", memory=[2]))
    assert (merged["engine"], merged["http"], merged["memory"]) == ([1], [1], [2])
    assert merged["commands"] == ["all", "mem"]
    merged = _write(path, _run("all again", engine=[3], http=[3], memory=[3]))
    assert merged["commands"] == ["all again"]  # nothing of the earlier runs is left
    merged = _write(path, _run("mem", memory=[4]))
    merged = _write(path, _run("mem", memory=[5]))
    assert merged["commands"] == ["all again", "mem"]  # the same command, listed once


def test_notes_stay_with_the_commands_whose_parts_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    _write(path, {**_run("all", engine=[1], http=[1]), "notes": ["full run"]})
    merged = _write(path, {**_run("http", http=[2]), "notes": ["http rerun"]})
    assert merged["notes"] == ["full run", "http rerun"]
    merged = _write(path, {**_run("all again", engine=[3], http=[3]), "notes": []})
    assert merged["notes"] == []


def test_another_base_model_starts_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    _write(path, _run("all", engine=[1], http=[1]))
    merged = _write(path, {**_run("other", memory=[1]), "base_model": "n"})
    assert "engine" not in merged and merged["commands"] == ["other"]


def test_files_from_before_part_commands_credit_their_last_command(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"base_model": "m", "command": "b", "commands": ["a", "b"],
                                "engine": [1], "memory": [1]}))
    merged = _write(path, _run("mem", memory=[2]))
    assert merged["engine"] == [1] and merged["commands"] == ["b", "mem"]


def test_recorded_commands_leave_notes_out() -> None:
    argv = ["--reps", "3", "--note", "a note", "--parts", "http", "--note=another"]
    assert recorded_argv(argv) == ["--reps", "3", "--parts", "http"]
