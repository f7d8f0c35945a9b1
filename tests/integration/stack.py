"""Real worker processes for integration tests: started with env settings, stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from adapterd.supervisor import api_argv
from adapters_store.records import FINISHED_JOB_STATES, JobRecord
from adapters_store.registry import Registry
from adapters_store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    values = settings.model_dump(mode="json") | overrides
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            if not value:
                continue
            value = json.dumps(value)
        env[f"ADAPTERD_{key.upper()}"] = str(value)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ADAPTERD_LOG_LEVEL="INFO")
    return env


class WorkerProcess:
    """``python -m worker.<kind>`` as a child; its log goes to a file for failure reports."""

    def __init__(self, kind: str, settings: Settings, log_dir: Path, *args: str,
                 **overrides: object) -> None:
        self.kind = kind
        self.log_path = log_dir / f"{kind}-{time.monotonic_ns()}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"worker.{kind}", *args], cwd=ROOT,
                env=worker_env(settings, **overrides), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str,
             procs: tuple[WorkerProcess, ...] = ()) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.process.poll() is not None:
                raise AssertionError(f"{p.kind} exited with {p.process.returncode}:\n{p.log()}")
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.kind}\n{p.log()}" for p in procs)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{logs}")


def wait_job(registry: Registry, job_id: str, timeout_s: float,
             procs: tuple[WorkerProcess, ...] = ()) -> JobRecord:
    def done() -> JobRecord | None:
        job = registry.job(job_id)
        return job if job.state in FINISHED_JOB_STATES else None

    try:
        return wait_for(done, timeout_s, f"job {job_id}", procs)  # type: ignore[return-value]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast record: {registry.job(job_id).to_json()}") from None


def wait_workers(registry: Registry, kind: str, n: int, timeout_s: float,
                 procs: tuple[WorkerProcess, ...] = ()) -> None:
    wait_for(lambda: len([h for h in registry.heartbeats() if h.kind == kind]) >= n, timeout_s,
             f"{n} {kind} heartbeat(s)", procs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiProcess(WorkerProcess):
    """The API under uvicorn, as a user runs it, on a free loopback port."""

    def __init__(self, settings: Settings, log_dir: Path, **overrides: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kind = "api"
        self.log_path = log_dir / f"api-{time.monotonic_ns()}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                api_argv("127.0.0.1", self.port),
                cwd=ROOT, env=worker_env(settings, **overrides), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def api_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_stack(settings: Settings, registry: Registry,
                  log_dir: Path) -> Iterator[dict[str, WorkerProcess]]:
    """API + one inference worker + trainer, ready to serve; stopped by pid on exit."""
    procs = {
        "api": ApiProcess(settings, log_dir),
        "inference": WorkerProcess("inference", settings, log_dir),
        "trainer": WorkerProcess("trainer", settings, log_dir),
    }
    try:
        wait_workers(registry, "inference", 1, 120, tuple(procs.values()))
        wait_for(lambda: api_ready(procs["api"].url), 60, "API /readyz", tuple(procs.values()))
        yield procs
    finally:
        for p in procs.values():
            p.stop()
