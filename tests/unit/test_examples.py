"""The committed example datasets: reproducible from their generator, balanced, valid uploads."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest

from adapters_store.datasets import parse_dataset
from adapters_store.errors import InvalidInput

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# name -> (format, labels, input kind)
DATASETS: dict[str, tuple[Literal["jsonl", "csv"], set[str], str]] = {
    "sentiment.jsonl": ("jsonl", {"positive", "negative"}, "single"),
    "topic.csv": ("csv", {"sports", "technology", "food", "finance"}, "single"),
    "paraphrase.jsonl": ("jsonl", {"same", "different"}, "pair"),
}
MAX_BYTES = 100 * 1024


def _load_generator() -> ModuleType:
    """Import examples/make_examples.py (not a package) under a private module name."""
    name = "_adapterd_examples_make_examples"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "make_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


def _rows(name: str) -> list[dict[str, str]]:
    raw = (EXAMPLES / name).read_text(encoding="utf-8")
    if name.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(raw, newline="")))
    return [json.loads(line) for line in raw.splitlines()]


def test_regenerating_gives_the_committed_files(generator: ModuleType, tmp_path: Path) -> None:
    written = generator.main(tmp_path)
    assert set(written) == {*DATASETS, "bad_lines.jsonl"}
    for name, path in written.items():
        committed = EXAMPLES / name
        assert committed.is_file(), f"{committed} is missing: run python examples/make_examples.py"
        assert path.read_bytes() == committed.read_bytes(), (
            f"{name} differs from its generator output: run python examples/make_examples.py"
        )


def test_another_seed_gives_other_data(generator: ModuleType) -> None:
    assert generator.render(1)["sentiment.jsonl"] != generator.render(2)["sentiment.jsonl"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_is_balanced_unique_and_small(name: str) -> None:
    _, labels, kind = DATASETS[name]
    rows = _rows(name)
    assert (EXAMPLES / name).stat().st_size < MAX_BYTES
    assert 350 <= len(rows) <= 500
    counts = Counter(row["label"] for row in rows)
    assert set(counts) == labels
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    keys = [tuple(v for k, v in row.items() if k != "label") for row in rows]
    assert len(set(keys)) == len(keys), "duplicate inputs"
    for row in rows:
        assert row["text"].strip()
        if kind == "pair":
            assert row["text_pair"].strip()
            assert row["text"] != row["text_pair"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_parses_as_an_upload(name: str) -> None:
    fmt, labels, kind = DATASETS[name]
    parsed = parse_dataset(
        (EXAMPLES / name).read_bytes(),
        fmt,
        min_rows_per_label=5,
        max_chars=10000,
        max_rows=20000,
    )
    assert parsed.input_kind == kind
    assert set(parsed.label_counts) == labels
    assert len(parsed.rows) == len(_rows(name))


def test_bad_lines_are_rejected_on_the_documented_lines(generator: ModuleType) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_dataset(
            (EXAMPLES / "bad_lines.jsonl").read_bytes(),
            "jsonl",
            min_rows_per_label=1,
            max_chars=10000,
            max_rows=20000,
        )
    lines = [entry["line"] for entry in info.value.details["lines"]]
    assert lines == sorted(generator.BAD_LINE_NUMBERS) == [3, 5, 7]
    assert info.value.status == 422
