"""Dataset uploads: read the body within the limit, validate every row, then store and enqueue."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from adapters_store.blobstore import Blobs
from adapters_store.datasets import (
    DEFAULT_FIELDS,
    FieldMap,
    ParsedDataset,
    detect_format,
    parse_dataset,
)
from adapters_store.errors import AdapterdError, InvalidInput, NotFound, TooLarge
from adapters_store.records import DatasetRecord, JobRecord
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides, resolve

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
RAW_TYPES = {
    "application/x-ndjson": "upload.jsonl",
    "application/jsonl": "upload.jsonl",
    "application/json-lines": "upload.jsonl",
    "application/json": "upload.jsonl",
    "text/csv": "upload.csv",
}


class UnsupportedMediaType(AdapterdError):
    code = "unsupported_media_type"
    status = 415


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str
    content_type: str | None
    # Other multipart fields (strategy, hyperparameters): validated like the query string's.
    fields: dict[str, list[str]] = field(default_factory=dict)

    def fields_items(self) -> list[tuple[str, str]]:
        return [(key, value) for key, values in self.fields.items() for value in values]


def clean_filename(name: str | None, fallback: str) -> str:
    # Only the base name is kept (no client paths in records or logs), and not without end.
    base = PureWindowsPath(PurePosixPath(name or "").name).name.strip()
    return (base or fallback)[:200]


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than {limit} bytes", {"limit_bytes": limit})


async def _read_file(file: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await file.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, filename: str | None, limit: int) -> Upload:
    """The uploaded file from a multipart ``file`` field or a raw JSONL/CSV body."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # Parsed here, after auth has run, so an unauthenticated client cannot make us read it.
        async with request.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidInput("the multipart upload needs a file in the field 'file'",
                                   {"fields": sorted(form.keys())})
            fields: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if key == "file":
                    continue
                if not isinstance(value, str):
                    raise InvalidInput(f"the multipart field {key!r} must be text, not a file",
                                       {"field": key})
                fields.setdefault(key, []).append(value)
            data = await _read_file(file, limit)
            name = clean_filename(file.filename or filename, "upload")
            return Upload(data, name, file.content_type, fields)
    if content_type in RAW_TYPES:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        name = clean_filename(filename, RAW_TYPES[content_type])
        return Upload(b"".join(chunks), name, content_type)
    raise UnsupportedMediaType(
        f"cannot upload a {content_type or 'body without Content-Type'}",
        {"accepted": ["multipart/form-data", *RAW_TYPES]},
    )


def _known_input_kind(registry: Registry, task_id: str) -> tuple[str | None, str | None]:
    """The task's input kind and where it comes from: its live route, else its last dataset."""
    manifest = registry.live_manifest()
    if manifest is not None and task_id in manifest.routes:
        return manifest.routes[task_id].input_kind, f"live version {manifest.version}"
    try:
        task = registry.task(task_id)
        if task.dataset_ids:
            return registry.dataset(task.dataset_ids[-1]).input_kind, task.dataset_ids[-1]
    except NotFound:
        pass
    return None, None


def _check_input_kind(registry: Registry, task_id: str, parsed: ParsedDataset) -> None:
    # A task keeps one input kind: its head and the worker's tokenisation depend on it.
    kind, source = _known_input_kind(registry, task_id)
    if kind is not None and kind != parsed.input_kind:
        raise InvalidInput(
            f"task {task_id!r} takes {kind} inputs; this upload is {parsed.input_kind}",
            {"task_input_kind": kind, "upload_input_kind": parsed.input_kind, "source": source},
        )


def strategy_overrides(registry: Registry, settings: Settings, strategy: str,
                       raw: dict[str, object]) -> StrategyOverrides:
    """Validate an upload's hyperparameters against their ranges and the strategy's rules."""
    try:
        overrides = StrategyOverrides.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput("invalid strategy parameters", json.loads(exc.json(
            include_url=False, include_context=False))) from exc
    live = registry.live_manifest()
    # Without a bank yet the layer count is unknown; the trainer checks layer ranges then.
    num_layers = live.base.num_layers if live else 1 << 20
    try:
        resolve(strategy, overrides, settings, num_layers)
    except ValueError as exc:
        raise InvalidInput(f"invalid strategy parameters: {exc}",
                           {"strategy": strategy, "given": overrides.model_dump()}) from exc
    return overrides


def accept_dataset(
    registry: Registry, blobs: Blobs, settings: Settings, task_id: str, upload: Upload,
    strategy: str, params: dict[str, object], fields: FieldMap = DEFAULT_FIELDS,
) -> tuple[DatasetRecord, JobRecord]:
    """Validate fully, then store the blob, record the dataset and enqueue its job (blocking I/O
    and CPU-bound parsing: call it from a worker thread). Nothing is written before the data
    passed every check; a blob orphaned by a failed submit is content-addressed and harmless."""
    overrides = strategy_overrides(registry, settings, strategy, params)
    fmt = detect_format(upload.filename, upload.content_type)
    parsed = parse_dataset(
        upload.data, fmt, min_rows_per_label=settings.min_rows_per_label,
        max_chars=settings.max_input_chars, max_rows=settings.max_train_rows, fields=fields,
    )
    _check_input_kind(registry, task_id, parsed)
    digest = blobs.put(parsed.to_jsonl())
    dataset = DatasetRecord(
        id="ds_" + digest[:16], task_id=task_id, filename=upload.filename, format=fmt,
        input_kind=parsed.input_kind, rows=len(parsed.rows), label_counts=parsed.label_counts,
        blob=digest,
    )
    job = registry.submit(dataset, strategy, overrides)
    logger.info("task %s: dataset %s (%d rows, %s) accepted, job %s queued (%s)", task_id,
                dataset.id, dataset.rows, fmt, job.job_id, strategy)
    return dataset, job
