"""Redis killed and restarted under a running stack: the API answers 503 while it is away,
no process dies, serving and training resume by themselves, and nothing stored is lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import redis

from adapterd.redis_server import RedisServer
from adapters_store.keys import Keys
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import running_stack, wait_for, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload


def _predict(url: str) -> int:
    try:
        return httpx.post(f"{url}/v1/tasks/colors/predict", timeout=15,
                          json={"inputs": ["a cherry and a tomato"]}).status_code
    except httpx.HTTPError:
        return 0


def test_stack_survives_a_redis_restart(settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    stack_settings = settings.model_copy(update=FAST | {"redis_url": server.url})
    client = redis.Redis.from_url(server.url)
    registry = Registry(client, Keys(stack_settings.key_prefix))
    registry.ensure_groups()
    try:
        with running_stack(stack_settings, registry, tmp_path / "logs") as stack:
            url, procs = stack["api"].url, tuple(stack.values())
            job = wait_job(registry, upload(url, "colors", jsonl(keyword_rows(20)),
                                            query="strategy=per_task")["job_id"], 180, procs)
            assert job.state == "succeeded", job.error
            wait_for(lambda: _predict(url) == 200, 30, "first prediction", procs)
            time.sleep(1.5)  # appendfsync everysec: let the AOF catch up before the crash
            pids = {name: p.pid for name, p in stack.items()}

            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
            down = httpx.post(f"{url}/v1/tasks/colors/predict", timeout=15,
                              json={"inputs": ["a cherry"]})
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "store_unavailable"
            time.sleep(2)  # long enough for every client's own retries to give up
            assert all(p.process.poll() is None for p in procs), "a process died with redis"

            server.start()  # same data directory and socket
            wait_for(lambda: _predict(url) == 200, 60, "serving after the restart", procs)
            assert {name: p.pid for name, p in stack.items()} == pids  # nobody restarted
            assert registry.live_version() == "v1"
            assert registry.job(job.job_id).state == "succeeded"
            assert "colors" in registry.task_ids()
            # The trainer came back too: a new upload trains and publishes.
            again = wait_job(registry, upload(url, "shapes", jsonl(keyword_rows(20, seed=4)),
                                              query="strategy=per_task")["job_id"], 180, procs)
            assert again.state == "succeeded" and again.result.version == "v2", again.error
    finally:
        client.close()
        server.stop()


def test_adapterd_serve_restarts_its_embedded_redis(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.integration.stack import ROOT, api_ready, free_port

    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERD_")}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTERD_TORCH_THREADS": "1", "ADAPTERD_DEVICE": "cpu"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from adapterd.cli import main; sys.exit(main())",
         "serve", "--no-trainer", "--port", str(port), "--data-dir", str(data),
         "--base-model", "tiny-bert"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    pidfile = data / "redis" / "redis.pid"
    try:
        wait_for(lambda: proc.poll() is None and b"adapterd ready" in
                 (tmp_path / "serve.log").read_bytes(), 120, "adapterd serve ready")
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)
        # The supervisor restarts Redis on the same data; its children ride it out.
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit()
                 and int(pidfile.read_text()) != first and api_ready(url), 60,
                 "redis restarted and the API ready again")
        time.sleep(3)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        assert api_ready(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
