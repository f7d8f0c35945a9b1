"""The HTTP API against a real Redis: uploads, predict round trips, auth, limits, bank views."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters_store.keys import INFERENCE_GROUP
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.streams import InferenceReply, InferenceRequest, Prediction, ReplyError
from service.app import create_app
from tests.api_data import (
    inference_heartbeat,
    make_manifest,
    make_route,
    make_rows,
    shared_manifest,
    to_csv,
    to_jsonl,
)

ADMIN, INFER = "admin-key-123", "infer-key-456"


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    # A short timeout so a broken round trip fails in seconds, not in the default 30 s.
    with client_for(settings, request_timeout_s=5.0) as client:  # `with` runs the lifespan
        yield client


def client_for(settings: Settings, **overrides: object) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides)))


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def upload(client: TestClient, task_id: str, body: bytes, name: str = "d.jsonl",
           **kw: object) -> httpx.Response:
    return client.post(f"/v1/tasks/{task_id}/datasets", files={"file": (name, body)}, **kw)


def blob_files(settings: Settings) -> list[Path]:
    return [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file()]


def assert_nothing_stored(registry: Registry, settings: Settings) -> None:
    assert registry.task_ids() == []
    assert registry.jobs() == []
    assert registry.r.keys(registry.keys.dataset("*")) == []
    assert registry.r.xlen(registry.keys.jobs_stream) == 0
    assert blob_files(settings) == []


# ---- uploads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,data", [("d.jsonl", to_jsonl(make_rows())),
                                       ("d.csv", to_csv(make_rows()))])
def test_valid_upload_queues_a_job(api: TestClient, registry: Registry, name: str,
                                   data: bytes) -> None:
    response = upload(api, "sentiment", data, name)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    job = registry.job(body["job_id"])
    assert (job.state, job.task_id, job.dataset_id) == ("queued", "sentiment", body["dataset_id"])
    dataset = registry.dataset(body["dataset_id"])
    assert dataset.rows == 12 and dataset.label_counts == {"neg": 6, "pos": 6}
    assert dataset.format == name.rsplit(".", 1)[1]
    assert api.app.state.blobs.exists(dataset.blob)
    assert registry.r.xlen(registry.keys.jobs_stream) == 1
    got = api.get(f"/v1/jobs/{body['job_id']}")
    assert got.status_code == 200 and got.json()["state"] == "queued"
    assert [t["state"] for t in api.get("/v1/tasks").json()["tasks"]] == ["queued"]


def test_raw_ndjson_body_with_filename(api: TestClient, registry: Registry) -> None:
    response = api.post("/v1/tasks/raw-task/datasets?filename=x.jsonl",
                        content=to_jsonl(make_rows()),
                        headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 202, response.text
    assert registry.dataset(response.json()["dataset_id"]).filename == "x.jsonl"


def test_malformed_jsonl_names_lines_and_stores_nothing(api: TestClient, registry: Registry,
                                                        settings: Settings) -> None:
    lines = to_jsonl(make_rows()).decode().splitlines()
    lines[2] = "{not json"
    lines[5] = '{"text": "", "label": "pos"}'
    error = assert_error(upload(api, "sentiment", "\n".join(lines).encode()), 422,
                         "invalid_input")
    assert [e["line"] for e in error["details"]["lines"]] == [3, 6]
    assert_nothing_stored(registry, settings)


def _bad_utf8() -> bytes:
    lines = to_jsonl(make_rows()).splitlines(keepends=True)
    lines[3] = lines[3].replace(b"example", b"ex\xffample")
    return b"".join(lines)


def _dup_csv() -> bytes:
    body = to_csv(make_rows()).decode().splitlines()[1:]
    return ("text,text,label\n" + "\n".join(f"{r.split(',')[0]},{r}" for r in body)).encode()


def _deep_jsonl() -> bytes:
    lines = to_jsonl(make_rows()).decode().splitlines()
    lines[1] = "[" * 20_000 + "]" * 20_000
    return "\n".join(lines).encode()


def _long_line_jsonl() -> bytes:
    lines = to_jsonl(make_rows()).decode().splitlines()
    lines[2] = json.dumps({"text": "x" * 200_000, "label": "pos"})
    return "\n".join(lines).encode()


@pytest.mark.parametrize("data,name,line", [
    (_bad_utf8(), "d.jsonl", 4),        # invalid UTF-8, reported by line
    (_dup_csv(), "d.csv", 1),           # text,text,label: which text would we train on?
    (_deep_jsonl(), "d.jsonl", 2),      # nested 20,000 levels (was a RecursionError, 500)
    (_long_line_jsonl(), "d.jsonl", 3),  # a line past the length limit
])
def test_hostile_datasets_are_422_by_line(api: TestClient, registry: Registry,
                                          settings: Settings, data: bytes, name: str,
                                          line: int) -> None:
    error = assert_error(upload(api, "sentiment", data, name), 422, "invalid_input")
    assert [e["line"] for e in error["details"]["lines"]] == [line], error
    assert_nothing_stored(registry, settings)


@pytest.mark.parametrize("form,fragment", [
    ({"strategy": "bogus"}, "unknown strategy"),
    ({"strategy": "x" * 10_000}, "unknown strategy"),
    ({"epochs": "0"}, "invalid strategy parameters"),
    ({"not_a_knob": "1"}, "invalid strategy parameters"),
])
def test_form_fields_are_validated_like_the_query(api: TestClient, registry: Registry,
                                                  settings: Settings, form: dict,
                                                  fragment: str) -> None:
    error = assert_error(upload(api, "sentiment", to_jsonl(make_rows()), data=form), 422,
                         "invalid_input")
    assert fragment in error["message"]
    assert_nothing_stored(registry, settings)


def test_form_fields_apply_and_may_not_contradict_the_query(api: TestClient,
                                                            registry: Registry) -> None:
    both = upload(api, "sentiment", to_jsonl(make_rows()), data={"epochs": "2"},
                  params={"epochs": "3"})
    assert "both" in assert_error(both, 422, "invalid_input")["message"]
    ok = upload(api, "sentiment", to_jsonl(make_rows()),
                data={"strategy": "per_task", "epochs": "2", "forced_layers": ""})
    assert ok.status_code == 422  # forced_layers does not apply to per_task
    ok = upload(api, "sentiment", to_jsonl(make_rows()), data={"strategy": "per_task",
                                                              "epochs": "2"})
    assert ok.status_code == 202, ok.text
    job = registry.job(ok.json()["job_id"])
    assert job.strategy == "per_task" and job.params.epochs == 2


@pytest.mark.parametrize("data,name", [
    (to_csv(make_rows(), header=("sentence", "label")), "d.csv"),   # bad header
    (to_jsonl(make_rows(labels=("only",))), "d.jsonl"),              # one label
    (to_jsonl(make_rows(per_label=2)), "d.jsonl"),                   # too few rows per label
    (b"", "d.jsonl"),                                                # empty
    (to_jsonl(make_rows()), "d.txt"),                                # unknown format
])
def test_invalid_datasets_are_422(api: TestClient, registry: Registry, settings: Settings,
                                  data: bytes, name: str) -> None:
    assert_error(upload(api, "sentiment", data, name), 422, "invalid_input")
    assert_nothing_stored(registry, settings)


@pytest.mark.parametrize("task_id", ["Bad!Id", "UPPER", "a" * 65, "-leading"])
def test_invalid_task_id_is_422(api: TestClient, registry: Registry, settings: Settings,
                                task_id: str) -> None:
    error = assert_error(upload(api, task_id, to_jsonl(make_rows())), 422, "invalid_input")
    assert error["details"][0]["loc"] == ["path", "task_id"]
    assert_nothing_stored(registry, settings)


def test_upload_input_kind_must_match_the_live_route(api: TestClient, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    error = assert_error(upload(api, "alpha", to_jsonl(make_rows(pair=True))), 422,
                         "invalid_input")
    assert error["details"]["task_input_kind"] == "single"
    assert upload(api, "alpha", to_jsonl(make_rows())).status_code == 202


def test_bodies_over_the_limit_are_413(settings: Settings, registry: Registry) -> None:
    big = to_jsonl(make_rows(per_label=2000))
    assert len(big) > 2048 + 64 * 1024
    with client_for(settings, max_upload_bytes=2048, max_request_bytes=1024) as client:
        # Declared Content-Length: refused before the body is read; the client is told its limit.
        error = assert_error(upload(client, "sentiment", big), 413, "too_large")
        assert error["details"] == {"limit_bytes": 2048}

        # Chunked, no Content-Length: cut off while streaming.
        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 4096):
                yield big[start:start + 4096]

        response = client.post("/v1/tasks/sentiment/datasets", content=chunks(),
                               headers={"Content-Type": "application/x-ndjson"})
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert_error(response, 413, "too_large")

        # A file just over the limit inside a small multipart envelope: the route's exact check.
        assert_error(upload(client, "sentiment", to_jsonl(make_rows(per_label=40))[:3000]), 413,
                     "too_large")
        # Other routes use max_request_bytes.
        assert_error(client.post("/v1/tasks/sentiment/predict",
                                 json={"inputs": ["x" * 2000]}), 413, "too_large")
    assert_nothing_stored(registry, settings)


# ---- errors and routing -------------------------------------------------------------------------
def test_unknown_things_are_404_in_our_shape(api: TestClient) -> None:
    assert_error(api.get("/nope"), 404, "not_found")
    assert_error(api.get("/v1/jobs/job_0123456789abcdef"), 404, "not_found")
    assert_error(api.get("/v1/jobs/not-a-job"), 422, "invalid_input")
    assert_error(api.get("/v1/tasks/ghost"), 404, "not_found")
    assert_error(api.delete("/v1/tasks"), 405, "method_not_allowed")
    assert_error(api.post("/v1/tasks/ghost/predict", content=b"{",
                          headers={"Content-Type": "application/json"}), 422, "invalid_input")
    assert_error(api.post("/v1/tasks/ghost/datasets", content=b"x",
                          headers={"Content-Type": "image/png"}), 415, "unsupported_media_type")


def test_unexpected_errors_are_500_without_internals(settings: Settings) -> None:
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(client.get("/boom"), 500, "internal")
        assert "secret" not in error["message"] and error["details"] is None


def test_redis_outage_is_503(api: TestClient) -> None:
    # A real client on a port nobody listens on stands in for Redis going away mid-flight.
    api.app.state.registry.r = redis.Redis.from_url("redis://127.0.0.1:1/0")
    assert_error(api.get("/v1/tasks"), 503, "store_unavailable")


def test_unknown_strategy_is_422(api: TestClient, registry: Registry, settings: Settings) -> None:
    response = upload(api, "sentiment", to_jsonl(make_rows()), params={"strategy": "hamster"})
    assert assert_error(response, 422, "invalid_input")["details"][0]["loc"] == [
        "query", "strategy"]
    assert_nothing_stored(registry, settings)


# ---- auth ---------------------------------------------------------------------------------------
def test_api_keys_and_scopes(settings: Settings, registry: Registry) -> None:
    keys = {"admin_api_keys": [SecretStr(ADMIN)], "inference_api_keys": [SecretStr(INFER)]}
    data = to_jsonl(make_rows())
    with client_for(settings, **keys) as client:
        assert_error(upload(client, "sentiment", data), 401, "unauthorized")
        assert_error(upload(client, "sentiment", data, headers={"Authorization": "Bearer nope"}),
                     401, "unauthorized")
        assert_error(upload(client, "sentiment", data,
                            headers={"Authorization": f"Bearer {INFER}"}), 403, "forbidden")
        assert_error(client.get("/v1/tasks"), 401, "unauthorized")
        assert client.get("/v1/tasks", headers={"X-API-Key": INFER}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert upload(client, "sentiment", data,
                      headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 202
        # Past auth, the inference key reaches the task lookup (and the admin key may too).
        for key in (INFER, ADMIN):
            response = client.post("/v1/tasks/sentiment/predict", json={"inputs": ["hi"]},
                                   headers={"Authorization": f"Bearer {key}"})
            assert_error(response, 404, "not_found")
        assert_error(client.post("/v1/bank/rollback", json={"version": "v1"},
                                 headers={"X-API-Key": INFER}), 403, "forbidden")


# ---- predict ------------------------------------------------------------------------------------
def test_predict_unknown_task_is_404(api: TestClient) -> None:
    assert "does not exist" in assert_error(
        api.post("/v1/tasks/ghost/predict", json={"inputs": ["hi"]}), 404, "not_found")["message"]


def test_predict_task_still_training_is_404(api: TestClient) -> None:
    assert upload(api, "sentiment", to_jsonl(make_rows())).status_code == 202
    error = assert_error(api.post("/v1/tasks/sentiment/predict", json={"inputs": ["hi"]}), 404,
                         "not_found")
    assert "still training" in error["message"]
    assert error["details"]["latest_job_state"] == "queued"


def test_predict_without_worker_is_503(api: TestClient, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    assert_error(api.post("/v1/tasks/alpha/predict", json={"inputs": ["hi"]}), 503, "no_worker")


def test_predict_can_wait_for_a_worker_to_appear(settings: Settings, registry: Registry) -> None:
    """With wait_for_worker (an autoscaler starting the first worker) the request is queued at
    once, so the backlog shows the demand, and it is answered when a worker comes up."""
    registry.publish(make_manifest(), reason="test")
    with client_for(settings, wait_for_worker=True, request_timeout_s=10.0) as client:
        answered: list[httpx.Response] = []
        caller = threading.Thread(target=lambda: answered.append(client.post(
            "/v1/tasks/alpha/predict", json={"inputs": ["hi"]})))
        caller.start()
        deadline = time.monotonic() + 5
        while registry.r.xlen(registry.keys.infer_stream) == 0:
            assert time.monotonic() < deadline, "the request was not queued"
            time.sleep(0.05)
        assert not answered  # still waiting: no worker yet
        play_worker(registry).join(10)  # a worker starts and answers the backlog
        caller.join(timeout=10)
        assert answered and answered[0].status_code == 200, answered[0].text


def test_predict_validates_inputs(settings: Settings, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    registry.beat(inference_heartbeat(), ttl_s=5)
    with client_for(settings, max_inputs_per_request=2, max_input_chars=10) as client:
        url = "/v1/tasks/alpha/predict"
        assert_error(client.post(url, json={"inputs": []}), 422, "invalid_input")
        assert_error(client.post(url, json={"inputs": ["a", "b", "c"]}), 422, "invalid_input")
        assert_error(client.post(url, json={"inputs": ["x" * 11]}), 422, "invalid_input")
        error = assert_error(client.post(url, json={"inputs": [{"text": "a", "text_pair": "b"}]}),
                             422, "invalid_input")
        assert error["details"] == {"input_kind": "single", "indexes": [0]}
        assert_error(client.post(url, json={"inputs": ["a"], "version": "v9"}), 404, "not_found")
        # A staged version (stored, its publish waiting for workers) is not served by name.
        registry.stage(make_manifest("v2", parent="v1"))
        error = assert_error(client.post(url, json={"inputs": ["a"], "version": "v2"}), 404,
                             "not_found")
        assert "not published" in error["message"]


def play_worker(registry: Registry, reply: dict | None = None) -> threading.Thread:
    """Stand in for an inference worker: take one request, answer it, ack it."""
    def run() -> None:
        got = registry.r.xreadgroup(INFERENCE_GROUP, "test-worker",
                                    {registry.keys.infer_stream: ">"}, count=1, block=10_000)
        (_stream, [(entry_id, fields)]), = got
        req = InferenceRequest.from_fields(fields)
        fields = {
            "request_id": req.request_id, "task_id": req.task_id, "version": "v1",
            "worker_id": "test-worker", "batch_rows": len(req.inputs), "batch_requests": 1,
            "queue_s": 0.01, "compute_s": 0.02,
            "outputs": [Prediction(label="pos", scores={"pos": 0.8, "neg": 0.2})
                        for _ in req.inputs],
        }
        answer = InferenceReply(**{**fields, **(reply or {})})
        registry.r.xadd(req.reply_to, answer.fields())
        registry.r.xack(registry.keys.infer_stream, INFERENCE_GROUP, entry_id)
        registry.r.xdel(registry.keys.infer_stream, entry_id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_predict_round_trip(api: TestClient, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    registry.beat(inference_heartbeat(), ttl_s=5)
    worker = play_worker(registry)
    response = api.post("/v1/tasks/alpha/predict", json={"inputs": ["good", "bad"]})
    worker.join(5)
    assert response.status_code == 200, response.text
    assert response.headers["X-Adapter-Version"] == "v1"
    body = response.json()
    assert body["task_id"] == "alpha" and body["version"] == "v1"
    assert [p["label"] for p in body["predictions"]] == ["pos", "pos"]
    assert registry.r.xlen(registry.keys.infer_stream) == 0
    reply_stream = registry.keys.reply_stream(api.app.state.inference.api_id)
    # Consumed replies are trimmed (in one round trip per half second, not per reply).
    deadline = time.monotonic() + 5
    while registry.r.xlen(reply_stream) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.r.xlen(reply_stream) == 0
    ttl = registry.r.pttl(reply_stream)
    assert ttl == -2 or ttl > 0  # gone, or set to expire: never left to grow forever
    scrape = api.get("/metrics").text
    assert 'adapterd_predict_rows_total{task_id="alpha"} 2.0' in scrape
    assert "adapterd_inference_batch_rows_count 1.0" in scrape


def test_worker_error_reply_becomes_typed_error(api: TestClient, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    registry.beat(inference_heartbeat(), ttl_s=5)
    worker = play_worker(registry, {"outputs": None,
                                    "error": ReplyError(code="not_found", message="v1 gone")})
    response = api.post("/v1/tasks/alpha/predict", json={"inputs": ["good"]})
    worker.join(5)
    assert assert_error(response, 404, "not_found")["message"] == "v1 gone"


def test_full_queue_is_429(settings: Settings, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    registry.beat(inference_heartbeat(), ttl_s=5)
    registry.r.xadd(registry.keys.infer_stream, {"m": "{}"})
    with client_for(settings, max_queue_depth=1) as client:
        response = client.post("/v1/tasks/alpha/predict", json={"inputs": ["hi"]})
        assert_error(response, 429, "overloaded")
        assert response.headers["Retry-After"] == "1"


def test_no_reply_is_504(settings: Settings, registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    registry.beat(inference_heartbeat(), ttl_s=5)
    with client_for(settings, request_timeout_s=0.3) as client:
        assert_error(client.post("/v1/tasks/alpha/predict", json={"inputs": ["hi"]}), 504,
                     "timeout")


# ---- health and metrics -------------------------------------------------------------------------
def test_health_readiness_and_metrics(api: TestClient, registry: Registry) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    error = assert_error(api.get("/readyz"), 503, "not_ready")
    assert error["details"]["missing"] == ["inference_worker"]
    # An orchestrator's probe asks for Redis only, so the API takes traffic while workers start.
    store_only = api.get("/readyz", params={"need_worker": "false"})
    assert store_only.status_code == 200 and store_only.json()["inference_workers"] == 0
    registry.beat(inference_heartbeat(), ttl_s=5)
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["inference_workers"] == 1
    scrape = api.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    for name in ("adapterd_http_requests_total", "adapterd_http_request_seconds_bucket",
                 "adapterd_inference_queue_depth 0.0", "adapterd_workers_alive",
                 "adapterd_uploads_total", "adapterd_inference_compute_seconds"):
        assert name in scrape.text, name
    assert 'route="/readyz",status="503"' in scrape.text


def test_startup_fails_fast_without_redis(settings: Settings) -> None:
    bad = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with pytest.raises(redis.ConnectionError), TestClient(create_app(bad)):
        pass  # fail fast at startup: without Redis the API has nothing to serve


# ---- bank views ---------------------------------------------------------------------------------
def test_adapters_without_live_version(api: TestClient) -> None:
    body = api.get("/v1/adapters").json()
    assert body["live_version"] is None and body["modules"] == [] and body["routes"] == {}
    assert set(body["totals"].values()) == {0}


def test_adapters_show_shared_modules_and_totals(api: TestClient, registry: Registry) -> None:
    registry.publish(shared_manifest(), reason="test")
    body = api.get("/v1/adapters").json()
    assert body["live_version"] == "v1" and body["base_model"]["name"] == "tiny-bert"
    users = {m["id"]: m["users"] for m in body["modules"]}
    assert users == {"m-a": ["alpha", "beta"], "m-b": ["alpha"], "m-c": ["beta"]}
    assert body["layers"] == [
        {"layer": 0, "modules": ["m-a"], "users": {"m-a": ["alpha", "beta"]}, "empty": []},
        {"layer": 1, "modules": ["m-b", "m-c"], "users": {"m-b": ["alpha"], "m-c": ["beta"]},
         "empty": []}]
    assert body["routes"]["alpha"] == {"layers": ["m-a", "m-b"], "labels": ["pos", "neg"],
                                       "params": 150, "head_params": 20,
                                       "full_route_params": 300, "strategy": "per_task",
                                       "merge": None}
    assert body["totals"] == {"modules": 3, "shared_modules": 1, "tasks": 2, "adapter_params": 220,
                              "head_params": 40, "one_adapter_per_task_params": 600}
    detail = api.get("/v1/tasks/beta").json()
    assert detail["state"] == "ready" and detail["trained_in"] == "v1"
    assert [(lay["module"], lay["shared_with"]) for lay in detail["route"]["layers"]] == [
        ("m-a", ["alpha"]), ("m-c", [])]


def test_versions_and_rollback(api: TestClient, registry: Registry) -> None:
    registry.publish(make_manifest("v1"), reason="test")
    routes = {"alpha": make_route("alpha", ["m-a", None]),
              "gamma": make_route("gamma", [None, None], version="v2")}
    registry.publish(make_manifest("v2", parent="v1", routes=routes), reason="test")
    assert {t["task_id"] for t in api.get("/v1/tasks").json()["tasks"]} == {"alpha", "gamma"}
    response = api.post("/v1/bank/rollback", json={"version": "v1"})
    assert response.status_code == 200, response.text
    assert response.json()["previous"] == "v2"
    assert registry.live_version() == "v1"
    versions = api.get("/v1/bank/versions").json()
    assert versions["live_version"] == "v1"
    assert [e["reason"] for e in versions["history"]] == ["test", "test", "rollback"]
    again = api.post("/v1/bank/rollback", json={"version": "v1"})  # already live: a no-op
    assert again.status_code == 200 and again.json()["reason"] == "already live"
    assert len(api.get("/v1/bank/versions").json()["history"]) == 3
    assert_error(api.post("/v1/bank/rollback", json={"version": "v9"}), 404, "not_found")
    assert_error(api.post("/v1/bank/rollback", json={"version": "latest"}), 422, "invalid_input")
    # The predict path sees the pointer move: gamma is no longer routed.
    registry.beat(inference_heartbeat(), ttl_s=5)
    assert_error(api.post("/v1/tasks/gamma/predict", json={"inputs": ["x"]}), 404, "not_found")


def test_column_mapping_reads_other_names_and_ignores_other_columns(
        api: TestClient, registry: Registry) -> None:
    rows = make_rows()
    csv_body = "id,sentence,sentiment\n" + "".join(
        f"{i},\"{r['text']}\",{r['label']}\n" for i, r in enumerate(rows))
    r = upload(api, "mapped", csv_body.encode(), name="d.csv",
               params={"text_field": "sentence", "label_field": "sentiment"})
    assert r.status_code == 202, r.text
    dataset = registry.dataset(r.json()["dataset_id"])
    assert dataset.rows == len(rows) and set(dataset.label_counts) == {x["label"] for x in rows}
    jsonl_body = "".join(json.dumps({"q": x["text"], "y": x["label"], "meta": 1}) + "\n"
                         for x in rows)
    r = upload(api, "mapped2", jsonl_body.encode(), data={"text_field": "q", "label_field": "y"})
    assert r.status_code == 202, r.text
    # Without a mapping the header must be text,label; the error says how to map.
    err = assert_error(upload(api, "mapped3", csv_body.encode(), name="d.csv"), 422,
                       "invalid_input")
    assert "text_field" in err["message"]
    err = assert_error(upload(api, "mapped4", csv_body.encode(), name="d.csv",
                              params={"text_field": "sentence", "label_field": "sentence"}),
                       422, "invalid_input")
    assert "must differ" in err["message"]


def test_the_api_parses_a_staged_version_before_it_goes_live(settings: Settings,
                                                             registry: Registry) -> None:
    registry.publish(make_manifest(), reason="test")
    collecting = gc.isenabled()
    with client_for(settings) as client:
        live = client.app.state.live
        registry.stage(make_manifest("v2", parent="v1"))
        deadline = time.monotonic() + 10
        while "v2" not in live._manifests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "v2" in live._manifests  # parsed ahead, before any predict asked for it
        assert gc.isenabled() == collecting  # the collector hold ended with the parse
    gc.unfreeze()
