"""The CLI against the real API served by uvicorn on a local port (and a real chunked upload)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from adapterd.cli import main
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from service.app import create_app
from tests.api_data import make_manifest, make_rows, shared_manifest, to_csv, to_jsonl


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> in a thread, for the duration of one test."""
    settings = settings.model_copy(update={"max_upload_bytes": 4096, "request_timeout_s": 5.0})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    # uvicorn has no start event to wait on: poll its flag (set once the lifespan ran and the
    # socket listens) under a deadline.
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_upload_and_listings(served: str, registry: Registry, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_bytes(to_csv(make_rows()))
    assert main(["--url", served, "upload", "sentiment", str(good)]) == 0
    line = capsys.readouterr().out
    assert line.startswith("job job_") and "task sentiment" in line
    job_id = line.split()[1]
    assert registry.job(job_id).state == "queued"

    assert main(["--url", served, "jobs", job_id]) == 0
    assert "[queued]" in capsys.readouterr().out
    assert main(["--url", served, "tasks"]) == 0
    assert "sentiment  queued" in capsys.readouterr().out


def test_api_errors_print_code_and_message(served: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "a", "label": "x"}\n{oops\n')
    assert main(["--url", served, "upload", "sentiment", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error invalid_input: 1 invalid line(s) in the JSONL upload"
    details = json.loads(err.split("details: ", 1)[1])
    assert [line["line"] for line in details["lines"]] == [2]
    assert main(["--url", served, "predict", "ghost", "hello"]) == 1
    assert capsys.readouterr().err.startswith("error not_found: task 'ghost' does not exist")
    assert main(["--url", served, "rollback", "v7"]) == 1
    assert capsys.readouterr().err.startswith("error not_found:")


def test_long_error_details_are_printed_whole(served: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Twenty reported lines naming a long unknown field: more than a screenful of JSON.
    line = json.dumps({"text": "a", "label": "x", "f" * 90: 1}).encode()
    bad = tmp_path / "wide.jsonl"
    bad.write_bytes(b"\n".join([line] * 25))
    assert main(["--url", served, "upload", "sentiment", str(bad)]) == 1
    err = capsys.readouterr().err
    details = json.loads(err.split("details: ", 1)[1])  # parses: nothing cut in the middle
    assert len(details["lines"]) == 20 and details["invalid_lines"] == 25
    assert len(json.dumps(details)) > 2000


def test_adapters_versions_and_rollback(served: str, registry: Registry,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", served, "adapters"]) == 0
    assert capsys.readouterr().out == "no live bank version yet\n"
    registry.publish(shared_manifest("v1"), reason="test")
    registry.publish(make_manifest("v2", parent="v1"), reason="test")
    assert main(["--url", served, "rollback", "v1"]) == 0
    assert capsys.readouterr().out == "live v1 (was v2)\n"
    assert main(["--url", served, "adapters"]) == 0
    out = capsys.readouterr().out
    assert "live v1" in out and "alpha, beta" in out and "adapter_params: 220" in out
    assert main(["--url", served, "versions"]) == 0
    assert "rollback" in capsys.readouterr().out


def test_chunked_upload_over_the_limit_is_cut_off(served: str, registry: Registry) -> None:
    # A real socket: the server answers 413 while the client is still streaming.
    body = to_jsonl(make_rows(per_label=3000))
    assert len(body) > 4096 + 64 * 1024

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    try:
        response = httpx.post(f"{served}/v1/tasks/big/datasets", content=chunks(),
                              headers={"Content-Type": "application/x-ndjson"}, timeout=10)
    except httpx.HTTPError:
        pass  # allowed: the server may close the connection before the client finished sending
    else:
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
    assert registry.task_ids() == []


def test_merge_command_queues_a_job_or_prints_why_not(served: str, registry: Registry,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    registry.publish(shared_manifest("v1"), reason="test")
    assert main(["--url", served, "merge", "alpha", "beta", "--method", "uniform",
                 "--name", "both"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("merge job job_") and "uniform of alpha, beta" in line
    job = registry.job(line.split()[2])
    assert job.kind == "merge" and job.state == "queued" and job.task_id == "both"
    assert job.merge is not None and job.merge.tasks == ["alpha", "beta"]
    # Refused before anything is queued: bottleneck modules are not additive deltas.
    jobs = len(registry.jobs(100))
    assert main(["--url", served, "merge", "alpha", "beta", "--method", "ties",
                 "--replace"]) == 1
    assert "error invalid_input: ties merges additive weight deltas" in capsys.readouterr().err
    assert main(["--url", served, "merge", "alpha", "gamma", "--name", "x"]) == 1
    assert "error not_found: unknown tasks ['gamma']" in capsys.readouterr().err
    assert len(registry.jobs(100)) == jobs
