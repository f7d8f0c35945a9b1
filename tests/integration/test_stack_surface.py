"""What users touch around the core, against a real stack (Redis, API, worker, trainer) with
three trained tasks: the registry page and /docs in headless Chromium, the OpenAI-style model
list through the openai client, and a request id followed into the inference worker's log."""

from __future__ import annotations

import json
import re
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from adapterd.redis_server import RedisServer
from adapters_store.keys import Keys
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.chromium import DevToolsPage, render, screenshot
from tests.integration.stack import (
    ApiProcess,
    WorkerProcess,
    api_ready,
    running_stack,
    wait_for,
    wait_job,
)
from tests.integration.test_api import ADMIN
from tests.integration.test_end_to_end import FAST, jsonl, upload

pytestmark = pytest.mark.slow
# (task, strategy, data seed): a per_task first task, then SAFM tasks that may reuse its modules.
TASKS = [("colors", "per_task", 0), ("hues", "safm", 1), ("tints", "safm", 2)]


@dataclass
class Surface:
    settings: Settings
    url: str
    registry: Registry
    procs: dict[str, WorkerProcess]
    jobs: dict[str, str]


@pytest.fixture(scope="module")
def surface(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Surface]:
    tmp = tmp_path_factory.mktemp("surface")
    # keep_versions=1: the worker holds only the live version, so pinning an older one is a
    # per-request problem the worker logs (the request-id test uses that).
    settings = Settings(redis_url=redis_server.url, key_prefix="t" + uuid.uuid4().hex[:10],
                        data_dir=tmp / "data", base_model="tiny-bert", device="cpu",
                        torch_threads=1, keep_versions=1, **FAST)
    client = redis.Redis.from_url(settings.redis_url)
    registry = Registry(client, Keys(settings.key_prefix))
    registry.ensure_groups()
    with running_stack(settings, registry, tmp / "logs") as procs:
        url = procs["api"].url
        jobs = {}
        for task, strategy, seed in TASKS:
            accepted = upload(url, task, jsonl(keyword_rows(30, seed=seed)),
                              query=f"strategy={strategy}")
            job = wait_job(registry, accepted["job_id"], 300, tuple(procs.values()))
            assert job.state == "succeeded", job.error
            jobs[task] = job.job_id
        yield Surface(settings, url, registry, procs, jobs)
    client.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_registry_page_renders_tasks_modules_and_jobs(surface: Surface, tmp_path: Path) -> None:
    page = render(f"{surface.url}/", tmp_path / "profile")
    assert page.console == []  # no script error, no failed request, no log line at all
    assert '<div id="errors" aria-live="polite"></div>' in page.dom
    assert 'data-loaded="true"' in page.dom
    bank = httpx.get(f"{surface.url}/v1/adapters").json()
    for task, _, _ in TASKS:
        assert f'<span class="task-id">{task}</span>' in page.dom
        assert surface.jobs[task] in page.dom
    # One card per module of the live bank, in the layer it sits in.
    assert page.dom.count('class="mid"') == len(bank["modules"]) > 0
    assert page.dom.count('class="layer-row"') == bank["base_model"]["num_layers"]
    assert f"live {bank['live_version']}" in page.dom
    assert re.search(r'<button type="button" data-version="v1">roll back to v1</button>',
                     page.dom)
    shot = screenshot(f"{surface.url}/", tmp_path / "page.png", tmp_path / "profile2")
    assert png_size(shot) == (1280, 900)


def test_swagger_ui_renders_offline(surface: Surface, tmp_path: Path) -> None:
    page = render(f"{surface.url}/docs", tmp_path / "profile")
    failures = [line for line in page.console
                if re.search(r"Uncaught|Failed to load|Refused|ERR_", line)]
    assert failures == []
    assert 'data-path="/v1/tasks/{task_id}/datasets"' in page.dom
    assert 'data-path="/v1/models"' in page.dom


def test_openai_client_lists_tasks_as_models(surface: Surface) -> None:
    client = openai.OpenAI(base_url=f"{surface.url}/v1", api_key="not-needed", max_retries=0)
    models = list(client.models.list())
    assert [m.id for m in models] == sorted(task for task, _, _ in TASKS)
    assert {(m.object, m.owned_by) for m in models} == {("model", "adapterd")}
    versions = {h["version"]: h["at"] for h in surface.registry.versions()}
    for model in models:
        assert model.model_dump()["parent"] == "tiny-bert"
        assert abs(model.created - versions[model.model_dump()["version"]]) < 5


def test_request_id_reaches_the_inference_worker_log(surface: Surface) -> None:
    live = surface.registry.live_version()
    assert live == "v3"
    request_id = "trace-" + uuid.uuid4().hex[:12]
    # v1 still routes colors, but the worker keeps only the live version: a per-request error.
    r = httpx.post(f"{surface.url}/v1/tasks/colors/predict", timeout=30,
                   headers={"X-Request-ID": request_id},
                   json={"inputs": ["a cherry today"], "version": "v1"})
    assert r.status_code == 404, r.text
    assert r.headers["X-Request-ID"] == request_id
    assert "not loaded" in r.json()["error"]["message"]
    log = surface.procs["inference"].log_path.read_text()
    assert f"request_id {request_id}" in log
    ok = httpx.post(f"{surface.url}/v1/tasks/colors/predict", timeout=30,
                    json={"inputs": ["a cherry today"]})
    assert ok.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", ok.headers["X-Request-ID"])


def test_page_rollback_needs_the_admin_key_and_predict_box_works(
        surface: Surface, tmp_path: Path) -> None:
    # A second API replica on the same store, with keys on: the page must send the typed key.
    keyed = ApiProcess(surface.settings, tmp_path / "logs", admin_api_keys=[ADMIN])
    page = None
    try:
        wait_for(lambda: api_ready(keyed.url), 60, "keyed API", (keyed,))
        page = DevToolsPage(f"{keyed.url}/", tmp_path / "profile")
        page.wait_until("document.getElementById('status').className === 'bad'", "401 shown")
        page.evaluate(f"""(() => {{ const key = document.getElementById('api-key');
            key.value = {json.dumps(ADMIN)}; key.dispatchEvent(new Event('change')); }})()""")
        page.wait_until("document.body.dataset.loaded === 'true'", "page loaded with the key")
        page.evaluate("document.querySelector('button[data-version=\"v2\"]').click()")
        wait_for(lambda: surface.registry.live_version() == "v2", 30, "rollback to v2")
        page.wait_until("document.getElementById('live').textContent.startsWith('live v2')",
                        "page shows v2")
        page.evaluate("""(() => {
            document.getElementById('predict-task').value = 'colors';
            document.getElementById('predict-text').value = 'a cherry and a tomato';
            document.getElementById('predict-form').requestSubmit(); })()""")
        label = page.wait_until(
            "(document.querySelector('#predict-out b') || {}).textContent", "a prediction")
        assert label in ("red", "blue")
        assert "served by v2" in str(page.evaluate(
            "document.getElementById('predict-out').textContent"))
        # The only console lines: the 401s of the first load, before the key was typed.
        assert all("401" in line for line in page.console), page.console
    finally:
        if page is not None:
            page.close()
        keyed.stop()
        surface.registry.rollback("v3")


def _raw_exchange(url: str, request: bytes) -> tuple[int, list[str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request.replace(b"{host}", host.encode()))
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *headers = head.decode().split("\r\n")
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("method", ["BREW", "FOO"])
def test_unknown_http_methods_get_the_json_error_body(surface: Surface, method: str) -> None:
    status, headers, body = _raw_exchange(surface.url, f"{method} /v1/tasks HTTP/1.1\r\n"
                                          "Host: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status == 405, body[:300]
    assert any(h.lower().startswith("content-type: application/json") for h in headers)
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_a_malformed_request_gets_a_json_400(surface: Surface) -> None:
    status, headers, body = _raw_exchange(surface.url, b"GET /v1/tasks HTTP/1.1\r\nHost: {host}"
                                          b"\r\nContent-Length: ten\r\n\r\n")
    assert status == 400, body[:300]
    assert any(h.lower().startswith("content-type: application/json") for h in headers)
    assert json.loads(body)["error"]["code"] == "bad_request"
    # The server is still up for the next client.
    status, _, _ = _raw_exchange(surface.url, b"GET /healthz HTTP/1.1\r\nHost: {host}\r\n"
                                 b"Connection: close\r\n\r\n")
    assert status == 200
