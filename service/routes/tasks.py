"""Routes of the task resource: dataset uploads, predictions, task listing and details."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response

from adapters_store.datasets import FieldMap
from adapters_store.errors import Conflict, InvalidInput, NotFound, NoWorker
from adapters_store.peft_export import peft_zip
from adapters_store.peft_import import read_peft_zip
from adapters_store.records import RESERVED_TASK_IDS, InputKind, Route
from adapters_store.registry import Registry
from adapters_store.strategy_params import STRATEGY_NAMES, StrategyName
from adapters_store.streams import InputItem
from service.auth import AdminAuth, InferenceAuth, ReadAuth
from service.deps import (
    BlobsDep,
    InferenceDep,
    LiveDep,
    MetricsDep,
    RegistryDep,
    SettingsDep,
)
from service.errors import UpstreamError
from service.live import LiveView
from service.request_ids import request_id_of
from service.schemas import (
    ErrorResponse,
    JobAccepted,
    PredictRequest,
    PredictResponse,
    TaskDeleted,
    TaskDetail,
    TaskIdPath,
    TaskList,
    UploadAccepted,
)
from service.upload_docs import upload_openapi
from service.uploads import accept_dataset, read_upload
from service.views import list_tasks, missing_route_error, task_detail

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503, 504)}



@router.post("/{task_id}/datasets", status_code=202, response_model=UploadAccepted,
             dependencies=[AdminAuth], responses=ERRORS, openapi_extra=upload_openapi(),
             summary="Upload a JSONL or CSV dataset and enqueue training")
async def upload_dataset(
    task_id: TaskIdPath, request: Request, settings: SettingsDep, registry: RegistryDep,
    blobs: BlobsDep, metrics: MetricsDep,
    strategy: Annotated[StrategyName | None, Query(description="default: the server's")] = None,
    filename: Annotated[str | None, Query(max_length=200, description="raw body's name")] = None,
) -> UploadAccepted:
    # The body is read here (not as an UploadFile parameter) so auth runs before any byte is read.
    try:
        if task_id in RESERVED_TASK_IDS:
            raise InvalidInput(f"task id {task_id!r} is reserved (HAM's task-agnostic route)")
        query = request.query_params.multi_items()
        params = hyperparameters(query, skip={"strategy", "filename", *FIELD_PARAMS})
        upload = await read_upload(request, filename, settings.max_upload_bytes)
        chosen = _strategy(strategy, upload.fields) or settings.strategy
        form_params = hyperparameters(upload.fields_items(), skip={"strategy", *FIELD_PARAMS})
        both = sorted(params.keys() & form_params.keys())
        if both:
            raise InvalidInput("a hyperparameter is given both in the query string and in the "
                               "form", {"fields": both})
        params |= form_params
        fields = field_map([*query, *upload.fields_items()])
        dataset, job = await anyio.to_thread.run_sync(
            accept_dataset, registry, blobs, settings, task_id, upload, chosen, params, fields)
    except Exception:
        metrics.uploads.labels("rejected").inc()
        raise
    metrics.uploads.labels("accepted").inc()
    metrics.jobs_submitted.labels(chosen).inc()
    return UploadAccepted(job_id=job.job_id, dataset_id=dataset.id, task_id=task_id,
                          status_url=f"/v1/jobs/{job.job_id}")


FIELD_PARAMS = {"text_field": "text", "label_field": "label", "text_pair_field": "text_pair"}


def field_map(items: list[tuple[str, str]]) -> FieldMap:
    """Column mapping from the query string or the form (``text_field=sentence``...)."""
    given: dict[str, str] = {}
    for key, value in items:
        if key in FIELD_PARAMS:
            if key in given:
                raise InvalidInput(f"{key} is given more than once", {"fields": [key]})
            given[key] = value
    return FieldMap(**{FIELD_PARAMS[k]: v for k, v in given.items()})


def hyperparameters(items: list[tuple[str, str]], skip: set[str]) -> dict[str, str | list[str]]:
    """Query or form fields other than ``skip`` are strategy hyperparameters (``forced_layers``
    as ``2,3`` or repeated); validated by StrategyOverrides, so an unknown one is a 422."""
    raw: dict[str, str | list[str]] = {}
    for key, value in items:
        if key in skip:
            continue
        if key == "forced_layers":
            listed = raw.setdefault(key, [])
            assert isinstance(listed, list)
            listed.extend(v.strip() for v in value.split(",") if v.strip())
        else:
            raw[key] = value
    return raw


def _strategy(query: str | None, form: dict[str, list[str]]) -> StrategyName | None:
    """The strategy from the query string (FastAPI checked it) or the form (checked here)."""
    given = form.get("strategy", [])
    if given and query is not None:
        raise InvalidInput("strategy is given both in the query string and in the form",
                           {"fields": ["strategy"]})
    if not given:
        return query
    if len(given) > 1 or given[0] not in STRATEGY_NAMES:
        raise InvalidInput(f"unknown strategy {given[-1][:100]!r}",
                           {"strategy": given[-1][:100], "choices": list(STRATEGY_NAMES)})
    return given[0]  # type: ignore[return-value]


def _inputs(body: PredictRequest, max_inputs: int, max_chars: int) -> list[InputItem]:
    if len(body.inputs) > max_inputs:
        raise InvalidInput(f"at most {max_inputs} inputs per request",
                           {"inputs": len(body.inputs), "max_inputs": max_inputs})
    items = [InputItem(text=x) if isinstance(x, str) else InputItem(**x.model_dump())
             for x in body.inputs]
    too_long = [i for i, item in enumerate(items)
                if len(item.text) > max_chars or len(item.text_pair or "") > max_chars]
    if too_long:
        raise InvalidInput(f"inputs longer than {max_chars} characters",
                           {"indexes": too_long[:50], "max_chars": max_chars})
    return items


def _check_kind(route: Route, items: list[InputItem]) -> None:
    want_pair = route.input_kind == "pair"
    wrong = [i for i, item in enumerate(items) if (item.text_pair is not None) != want_pair]
    if wrong:
        need = "{text, text_pair} objects" if want_pair else "single texts (no text_pair)"
        raise InvalidInput(f"task {route.task_id!r} takes {need}",
                           {"input_kind": route.input_kind, "indexes": wrong[:50]})


async def _route_for(task_id: str, version: str | None, live: LiveView,
                     registry: Registry) -> Route:
    if version and await live.is_staged(version):
        raise NotFound(f"bank version {version!r} is not published yet",
                       {"version": version, "task_id": task_id})
    manifest = await (live.manifest(version) if version else live.live_manifest(fresh=False))
    route = manifest.routes.get(task_id) if manifest else None
    if route is None and version is None:  # perhaps published since our copy of the pointer
        manifest = await live.live_manifest()
        route = manifest.routes.get(task_id) if manifest else None
    if route is None:
        raise await anyio.to_thread.run_sync(missing_route_error, registry, task_id)
    return route


@router.post("/{task_id}/predict", response_model=PredictResponse, dependencies=[InferenceAuth],
             responses=ERRORS, summary="Classify inputs with the task's live route")
async def predict(
    task_id: TaskIdPath, body: PredictRequest, request: Request,
    settings: SettingsDep, registry: RegistryDep, live: LiveDep, inference: InferenceDep,
    metrics: MetricsDep,
) -> Response:
    started = time.perf_counter()
    items = _inputs(body, settings.max_inputs_per_request, settings.max_input_chars)
    route = await _route_for(task_id, body.version, live, registry)
    _check_kind(route, items)
    # Waiting for a worker means enqueueing anyway: the backlog is what an autoscaler
    # starting the first worker sees, and the request's deadline bounds the wait (504).
    if not settings.wait_for_worker and not await live.inference_worker_alive():
        raise NoWorker("no inference worker is alive", {"task_id": task_id})
    reply = await inference.predict(task_id, items, version=body.version,
                                    http_request_id=request_id_of(request))
    transit = max(0.0, time.time() - reply.replied_at)
    if reply.outputs is None or len(reply.outputs) != len(items):
        raise UpstreamError("the worker answered with the wrong number of predictions",
                            {"inputs": len(items), "worker_id": reply.worker_id})
    metrics.observe_reply(reply, len(items))
    body_json = PredictResponse(task_id=task_id, version=reply.version,
                                predictions=reply.outputs).model_dump_json()
    # Where the time went, for clients and benchmarks: waiting in the queue, the worker's
    # forward, the reply's way back to this API, and everything this route did (api).
    headers = {"Server-Timing": (
        f"queue;dur={1000 * reply.queue_s:.2f}, compute;dur={1000 * reply.compute_s:.2f}, "
        f"transit;dur={1000 * transit:.2f}, "
        f"api;dur={1000 * (time.perf_counter() - started):.2f}"),
        "X-Batch-Rows": str(reply.batch_rows)}
    if reply.version:
        headers["X-Adapter-Version"] = reply.version
    # Serialised here, once: FastAPI would validate the response model again and encode it
    # through jsonable_encoder (measured: most of predict's time outside this function).
    return Response(body_json, media_type="application/json", headers=headers)


@router.get("", response_model=TaskList, dependencies=[ReadAuth])
def get_tasks(registry: RegistryDep) -> TaskList:
    return TaskList(tasks=list_tasks(registry))


@router.get("/{task_id}", response_model=TaskDetail, dependencies=[ReadAuth],
            responses={404: {"model": ErrorResponse}})
def get_task(task_id: TaskIdPath, registry: RegistryDep) -> TaskDetail:
    return task_detail(registry, task_id)



@router.delete("/{task_id}", response_model=TaskDeleted, dependencies=[AdminAuth],
               responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def delete_task(task_id: TaskIdPath, registry: RegistryDep, live: LiveDep) -> TaskDeleted:
    """Cancel the task's unfinished jobs and publish a version without its route; its stored
    datasets and older versions stay (rollback brings the task back). A job that was already
    publishing when the delete came may still publish the task: check the task afterwards."""
    deleted = TaskDeleted.model_validate(registry.delete_task(task_id))
    live.forget_live()
    return deleted


@router.get("/{task_id}/adapter", dependencies=[ReadAuth],
            responses={200: {"content": {"application/zip": {}}},
                       404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
def export_adapter(task_id: TaskIdPath, registry: RegistryDep, blobs: BlobsDep,
                   format: Annotated[Literal["peft"], Query(description="peft: a zip "
                                     "PeftModel.from_pretrained loads")] = "peft") -> Response:
    """The task's live LoRA route as a peft adapter (plus its head and labels)."""
    manifest = registry.live_manifest()
    if manifest is None or task_id not in manifest.routes:
        raise missing_route_error(registry, task_id)
    data = peft_zip(manifest, task_id, blobs)
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{task_id}-{manifest.version}-peft.zip"',
        "X-Adapter-Version": manifest.version})


@router.post("/{task_id}/adapter", status_code=202, response_model=JobAccepted,
             dependencies=[AdminAuth], responses=ERRORS,
             summary="Import a peft LoRA adapter (zip) with its head and labels as a task")
async def import_adapter(
    task_id: TaskIdPath, request: Request, settings: SettingsDep, registry: RegistryDep,
    blobs: BlobsDep,
    input_kind: Annotated[InputKind, Query(description="what the task takes")] = "single",
) -> JobAccepted:
    """Multipart field ``file``: a zip of adapter_config.json + adapter_model.safetensors (what
    peft's save_pretrained writes) plus head.safetensors (``weight`` labels×hidden, ``bias``) and
    labels.json. Checked against the live bank's base (family, layers, hidden size, LoRA on
    query/key/value, one rank) before anything is stored; the trainer builds the route."""
    if task_id in RESERVED_TASK_IDS:
        raise InvalidInput(f"task id {task_id!r} is reserved (HAM's task-agnostic route)")
    manifest = registry.live_manifest()
    if manifest is None:
        raise Conflict("an import is checked against the live bank's base model: train or "
                       "import nothing before a first task has published a bank version")
    upload = await read_upload(request, None, settings.max_upload_bytes)
    base = manifest.base
    await anyio.to_thread.run_sync(read_peft_zip, upload.data, base.family, base.num_layers,
                                   base.hidden_size, settings.max_upload_bytes)
    old = manifest.routes.get(task_id)
    if old is not None and old.input_kind != input_kind:
        raise InvalidInput(f"task {task_id!r} takes {old.input_kind} inputs")
    job = registry.submit_import(task_id, blobs.put(upload.data), input_kind)
    return JobAccepted(job_id=job.job_id, task_id=task_id,
                          status_url=f"/v1/jobs/{job.job_id}")
