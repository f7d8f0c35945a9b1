"""The API's surface around the core against a real Redis: offline docs, the upload's OpenAPI
hyperparameters, request ids, the OpenAI-style model list, JSON logs, and honest limits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.strategy_params import STRATEGY_NAMES, StrategyOverrides, strategies_taking
from service.app import create_app
from tests.api_data import make_rows, shared_manifest, to_jsonl
from tests.integration.stack import ApiProcess, wait_for
from tests.integration.test_api import ADMIN, INFER, assert_error, client_for, upload

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with client_for(settings, max_request_bytes=2048) as client:
        yield client


# ---- /docs and /redoc without a CDN ------------------------------------------------------------
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api: TestClient, page: str) -> None:
    response = api.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    assert not re.search(r"https?://", html), html
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*["']([^"']+)["']""", html)
    urls = [a or b for a, b in urls] + re.findall(r'spec-url="([^"]+)"', html)
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls, urls
    for url in urls:
        assert url.startswith("/"), url
        assert api.get(url).status_code == 200, url


def test_openapi_documents_every_upload_hyperparameter(api: TestClient) -> None:
    operation = api.get("/openapi.json").json()["paths"]["/v1/tasks/{task_id}/datasets"]["post"]
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for name, field in StrategyOverrides.model_fields.items():
        assert name in query and name in form, name
        description = query[name]["description"]
        taking = strategies_taking(name)
        assert ("every strategy" in description) == (len(taking) == len(STRATEGY_NAMES))
        if len(taking) < len(STRATEGY_NAMES):
            assert "strategies " + ", ".join(taking) in description, description
        assert "default: " in description
        for bound in field.metadata:  # annotated_types Ge/Le/Gt/... as declared on the model
            for attr, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum"),
                              ("lt", "exclusiveMaximum")):
                if hasattr(bound, attr):
                    assert query[name]["schema"][key] == getattr(bound, attr), name
                    assert f" {getattr(bound, attr)}" in description, description
    assert query["epochs"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert "one of bottleneck, lora" in query["module_kind"]["description"]


# ---- X-Request-ID ------------------------------------------------------------------------------
def test_request_id_is_echoed_generated_or_replaced(api: TestClient) -> None:
    given = "client-id.42:trace/7"
    assert api.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given
    first, second = (api.get("/healthz").headers["X-Request-ID"] for _ in range(2))
    assert HEX32.fullmatch(first) and HEX32.fullmatch(second) and first != second
    for bad in ("x" * 129, "has space", "quote\"d", "semi;colon", ""):
        echoed = api.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert HEX32.fullmatch(echoed), bad
    assert api.get("/healthz", headers={"X-Request-ID": "y" * 128}).headers["X-Request-ID"] \
        == "y" * 128


def test_every_error_response_carries_the_request_id(settings: Settings, api: TestClient) -> None:
    headers = {"X-Request-ID": "err-check"}
    responses = [
        api.get("/nowhere", headers=headers),                                   # 404
        api.post("/v1/tasks/BAD!/predict", json={"inputs": ["x"]}, headers=headers),  # 422
        api.post("/v1/tasks/a/predict", content=b"x" * 4096, headers=headers),  # 413
    ]
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("internals")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        responses.append(client.get("/boom", headers=headers))                  # 500
    assert [r.status_code for r in responses] == [404, 422, 413, 500]
    assert {r.headers.get("X-Request-ID") for r in responses} == {"err-check"}


# ---- GET /v1/models ----------------------------------------------------------------------------
def test_models_list_in_openai_shape_with_an_inference_key(settings: Settings,
                                                           registry: Registry) -> None:
    manifest = shared_manifest()
    registry.publish(manifest, reason="test")
    with client_for(settings, admin_api_keys=[SecretStr(ADMIN)],
                    inference_api_keys=[SecretStr(INFER)]) as client:
        assert_error(client.get("/v1/models"), 401, "unauthorized")
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {INFER}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["alpha", "beta"]
    for model in body["data"]:
        assert (model["object"], model["owned_by"], model["parent"]) == (
            "model", "adapterd", "tiny-bert")
        assert model["created"] == int(manifest.created_at) and model["version"] == "v1"


def test_models_list_is_empty_without_a_bank(api: TestClient) -> None:
    assert api.get("/v1/models").json() == {"object": "list", "data": []}


# ---- logging -----------------------------------------------------------------------------------
def test_json_log_format_is_one_object_per_line(settings: Settings, registry: Registry,
                                                tmp_path: Path) -> None:
    proc = ApiProcess(settings, tmp_path / "logs", log_format="json", admin_api_keys=[ADMIN])
    try:
        wait_for(lambda: _healthy(proc.url), 60, "API /healthz", (proc,))
        response = httpx.post(f"{proc.url}/v1/tasks/logged/datasets", timeout=30,
                              files={"file": ("d.jsonl", to_jsonl(make_rows()))},
                              headers={"Authorization": f"Bearer {ADMIN}",
                                       "X-Request-ID": "json-log-check"})
        assert response.status_code == 202, response.text
    finally:
        proc.stop()
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "pid", "message"} <= set(e) for e in entries)
    accepted = [e for e in entries if "accepted" in e["message"]]
    assert [e["request_id"] for e in accepted] == ["json-log-check"]
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # the server's lines too
    assert ADMIN not in proc.log_path.read_text()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- honest limits -----------------------------------------------------------------------------
def test_row_cap_error_names_the_setting(settings: Settings, registry: Registry) -> None:
    with client_for(settings, max_train_rows=10) as client:
        error = assert_error(upload(client, "big", to_jsonl(make_rows())), 422, "invalid_input")
    assert "ADAPTERD_MAX_TRAIN_ROWS" in error["message"] and "limit is 10" in error["message"]
    assert error["details"] == {"rows": 12, "max_rows": 10, "setting": "ADAPTERD_MAX_TRAIN_ROWS"}


def test_rows_per_label_error_says_the_minimum(api: TestClient) -> None:
    error = assert_error(upload(api, "few", to_jsonl(make_rows(per_label=2))), 422,
                         "invalid_input")
    assert error["message"] == "every label needs at least 5 rows; 'neg' has 2, 'pos' has 2"
    assert error["details"]["min_rows_per_label"] == 5
    assert error["details"]["setting"] == "ADAPTERD_MIN_ROWS_PER_LABEL"
