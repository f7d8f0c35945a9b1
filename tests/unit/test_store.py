"""Records round-trip through JSON; the blob store is content-addressed and atomic."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from adapters_store.blobstore import BlobStore
from adapters_store.datasets import load_rows, parse_dataset
from adapters_store.errors import CorruptBlob, InvalidInput, NotFound
from adapters_store.records import (
    BankManifest,
    BaseModelInfo,
    HeadRecord,
    JobRecord,
    ModuleRecord,
    Route,
)


def make_manifest(**overrides) -> BankManifest:
    module = ModuleRecord(id="a" * 64, kind="bottleneck", layer=0, params=100,
                          config={"hidden": 32, "size": 8}, blob="b" * 64, created_by="t1",
                          created_in="v1")
    head = HeadRecord(labels=["neg", "pos"], blob="c" * 64, params=66)
    route = Route(task_id="t1", layers=["a" * 64, None], head=head, input_kind="single",
                  strategy="per_task", dataset_id="ds_1", job_id="job_1", trained_in="v1",
                  full_route_params=200, metrics={"val_accuracy": 0.9})
    fields = dict(version="v1", number=1, parent=None,
                  base=BaseModelInfo(name="tiny", fingerprint="f", num_layers=2, hidden_size=32),
                  modules={module.id: module}, routes={"t1": route}, strategy="per_task")
    return BankManifest(**(fields | overrides))


def test_records_round_trip() -> None:
    manifest = make_manifest()
    again = BankManifest.from_json(manifest.to_json())
    assert again == manifest == BankManifest.model_validate_json(manifest.to_json())
    assert again.route_params("t1") == 100
    assert again.module_users() == {"a" * 64: ["t1"]}
    assert again.totals()["one_adapter_per_task_params"] == 200
    job = JobRecord(job_id="job_0123456789abcdef", task_id="t1", dataset_id="ds",
                    strategy="per_task")
    assert JobRecord.from_json(job.to_json()) == job


def test_manifest_parsed_record_by_record_rejects_what_one_validation_would() -> None:
    good = json.loads(make_manifest().to_json())
    bad_route = json.loads(json.dumps(good))
    bad_route["routes"]["t1"]["task_id"] = "Bad!"
    bad_module = json.loads(json.dumps(good))
    bad_module["modules"]["a" * 64]["params"] = -1
    extra = good | {"surprise": 1}
    for data in (bad_route, bad_module, extra, good | {"modules": []}, {"version": "v1"}):
        with pytest.raises(ValidationError):
            BankManifest.from_json(json.dumps(data))
    with pytest.raises(ValueError):
        BankManifest.from_json("{not json")


def test_records_reject_bad_task_ids() -> None:
    with pytest.raises(ValueError):
        JobRecord(job_id="j", task_id="Bad!", dataset_id="d", strategy="x")


def test_blob_store_is_content_addressed_and_verified(tmp_path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"hello")
    assert store.put(b"hello") == digest
    assert store.get(digest) == b"hello"
    assert not [p for p in store.path(digest).parent.iterdir() if p.name.startswith(".tmp")]
    store.path(digest).write_bytes(b"tampered")
    with pytest.raises(CorruptBlob):
        store.get(digest)
    with pytest.raises(NotFound):
        store.get("f" * 64)
    with pytest.raises(NotFound):
        store.path("../../etc/passwd")


def test_blob_write_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    store = BlobStore(tmp_path)

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        store.put(b"payload")
    digest_dir = next((tmp_path / "sha256").iterdir())
    assert list(digest_dir.iterdir()) == []


def test_parse_dataset_reports_bad_lines() -> None:
    data = b'{"text": "ok", "label": "a"}\nnot json\n{"text": "x"}\n{"text": "y", "label": "b"}\n'
    with pytest.raises(InvalidInput) as err:
        parse_dataset(data, "jsonl", min_rows_per_label=1, max_chars=100, max_rows=100)
    assert [e["line"] for e in err.value.details["lines"]] == [2, 3]


def test_parse_dataset_csv_and_label_rules() -> None:
    data = b"text,label\nhello,a\nworld,b\nagain,a\nmore,b\n"
    parsed = parse_dataset(data, "csv", min_rows_per_label=2, max_chars=100, max_rows=100)
    assert parsed.label_counts == {"a": 2, "b": 2}
    assert load_rows(parsed.to_jsonl()) == parsed.rows
    with pytest.raises(InvalidInput, match="at least 3 rows"):
        parse_dataset(data, "csv", min_rows_per_label=3, max_chars=100, max_rows=100)
    with pytest.raises(InvalidInput, match="2 distinct labels"):
        parse_dataset(b"text,label\na,x\nb,x\n", "csv", min_rows_per_label=1, max_chars=100,
                      max_rows=100)
    with pytest.raises(InvalidInput) as err:
        parse_dataset(b"text,label\na,x\nb,y,extra\n", "csv", min_rows_per_label=1,
                      max_chars=100, max_rows=100)
    assert err.value.details["lines"][0]["line"] == 3
