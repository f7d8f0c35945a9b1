"""Named task sequences and reading their datasets (train/test JSONL) from a data directory."""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from adapters_store.datasets import Row
from adapters_store.records import TASK_ID_PATTERN

SEQUENCES: dict[str, list[str]] = {
    # O-LoRA order 1, the standard 4-task continual text-classification benchmark.
    "olora1": ["dbpedia", "amazon", "yahoo", "agnews"],
    "classic5": ["agnews", "yelp", "amazon", "dbpedia", "yahoo"],
    # O-LoRA / Progressive Prompts long sequence.
    "long15": ["mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon",
               "sst2_olora", "dbpedia", "agnews", "multirc", "yahoo"],
    # Similar tasks (sentiment of reviews), where sharing and merging should help.
    "sentiment4": ["yelp", "amazon", "imdb", "sst2"],
    # SAFM / ACM similar-task NLG order: needs generation tasks on a causal LM.
    "nlg5": ["e2e_nlg", "rnnlg_restaurant", "rnnlg_hotel", "rnnlg_tv", "rnnlg_laptop"],
}
GENERATION_SEQUENCES = {"nlg5"}
HOLDOUT_FRACTION = 0.2


class SequenceError(ValueError):
    """A sequence or dataset the benchmark cannot run, with the reason."""


@dataclass
class TaskData:
    name: str
    train: list[Row]
    test: list[Row]
    labels: list[str]
    input_kind: str
    source_rows: dict[str, int]
    notes: list[str] = field(default_factory=list)
    source_notes: str = ""  # SOURCE.json's provenance and sampling notes, when present

    @property
    def test_majority(self) -> float:
        """Accuracy of always answering the most frequent test label."""
        counts: dict[str, int] = defaultdict(int)
        for row in self.test:
            counts[row.label] += 1
        return max(counts.values()) / len(self.test) if self.test else float("nan")


def resolve_sequence(name: str) -> list[str]:
    """A named sequence, or a comma-separated list of dataset folder names."""
    if name in GENERATION_SEQUENCES:
        raise SequenceError(f"sequence {name!r} is generation (NLG); adapterd serves "
                            "classification only so far")
    tasks = SEQUENCES.get(name) or [t.strip() for t in name.split(",") if t.strip()]
    if name not in SEQUENCES and len(tasks) < 2 and "," not in name:
        raise SequenceError(f"unknown sequence {name!r}; named ones: {sorted(SEQUENCES)}, or "
                            "give dataset names separated by commas")
    if len(set(tasks)) != len(tasks):
        raise SequenceError(f"sequence {name!r} names a dataset twice")
    return tasks


def read_jsonl(path: Path) -> list[Row]:
    """Rows of a classification JSONL; extra fields (label_fine, word, domain) are ignored."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "input" in obj and "output" in obj:
                raise SequenceError(f"{path} is a generation dataset ({{input, output}}); "
                                    "only classification is supported so far")
            text, label, pair = obj.get("text"), obj.get("label"), obj.get("text_pair")
            if not isinstance(text, str) or label is None:
                raise SequenceError(f"{path}:{lineno}: needs 'text' and 'label'")
            rows.append(Row(text=text, label=str(label), text_pair=pair))
    return rows


def stratified_sample(rows: list[Row], cap: int | None, seed: int) -> list[Row]:
    """At most ``cap`` rows, each label keeping its share (largest remainder), seeded."""
    if cap is None or len(rows) <= cap:
        out = rows[:]
        random.Random(seed).shuffle(out)
        return out
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    rng = random.Random(seed)
    shares = {lbl: cap * len(g) / len(rows) for lbl, g in by_label.items()}
    take = {lbl: max(1, math.floor(s)) for lbl, s in shares.items()}
    spare = cap - sum(take.values())
    for lbl in sorted(shares, key=lambda k: shares[k] - math.floor(shares[k]), reverse=True):
        if spare <= 0:
            break
        take[lbl] += 1
        spare -= 1
    out = []
    for lbl in sorted(by_label):
        group = by_label[lbl][:]
        rng.shuffle(group)
        out.extend(group[:take[lbl]])
    rng.shuffle(out)
    return out


def _holdout(rows: list[Row], seed: int) -> tuple[list[Row], list[Row]]:
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    rng = random.Random(seed)
    train, test = [], []
    for lbl in sorted(by_label):
        group = by_label[lbl][:]
        rng.shuffle(group)
        k = max(1, round(len(group) * HOLDOUT_FRACTION))
        test.extend(group[:k])
        train.extend(group[k:])
    return train, test


def load_task(data_dir: Path, name: str, train_cap: int | None, test_cap: int | None,
              seed: int) -> TaskData:
    """Read one dataset: capped, stratified train and test rows. Without a test split, a seeded
    stratified 20% of train is held out as test (and the notes say so)."""
    if not re.match(TASK_ID_PATTERN, name):
        raise SequenceError(f"dataset name {name!r} is not a valid task id")
    folder = data_dir / name
    if not (folder / "train.jsonl").is_file():
        raise SequenceError(f"no {folder}/train.jsonl (data dir {data_dir})")
    notes: list[str] = []
    train_all = read_jsonl(folder / "train.jsonl")
    if (folder / "test.jsonl").is_file():
        test_all = read_jsonl(folder / "test.jsonl")
    else:
        train_all, test_all = _holdout(train_all, seed)
        notes.append(f"no test split: {len(test_all)} train rows held out as test")
    source = {"train": len(train_all), "test": len(test_all)}
    train = stratified_sample(train_all, train_cap, seed)
    test = stratified_sample(test_all, test_cap, seed + 1)
    labels = sorted({r.label for r in train})
    unseen = sorted({r.label for r in test} - set(labels))
    if unseen:
        notes.append(f"test labels absent from the sampled train rows: {unseen}")
    if len(labels) < 2:
        raise SequenceError(f"{name}: fewer than 2 labels in the sampled train rows")
    kinds = {r.text_pair is not None for r in train}
    if len(kinds) != 1:
        raise SequenceError(f"{name}: some rows have text_pair and some do not")
    if train_cap is not None and source["train"] > train_cap:
        notes.append(f"train capped at {train_cap} of {source['train']} rows (stratified)")
    if test_cap is not None and source["test"] > test_cap:
        notes.append(f"test capped at {test_cap} of {source['test']} rows (stratified)")
    try:
        source_notes = str(json.loads((folder / "SOURCE.json").read_text()).get("notes", ""))
    except (OSError, ValueError, AttributeError):
        source_notes = ""
    return TaskData(name=name, train=train, test=test, labels=labels,
                    input_kind="pair" if kinds.pop() else "single", source_rows=source,
                    notes=notes, source_notes=source_notes)
