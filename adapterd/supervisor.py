"""`adapterd serve`: embedded Redis plus API, inference workers and trainer, supervised."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from adapterd.redis_server import RedisServer
from adapters_store.keys import Keys
from adapters_store.logs import configure_logging
from adapters_store.redis_client import sync_client
from adapters_store.registry import Registry
from adapters_store.settings import Settings

log = logging.getLogger("adapterd.serve")

MAX_RESTARTS = 5  # within RESTART_WINDOW_S; past that the service stops instead of flapping
RESTART_WINDOW_S = 120.0
STOP_GRACE_S = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        out = open(log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        # A new session: Ctrl-C in the terminal reaches only us, and we stop children in order.
        self.process = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir,
                                   "base_model": args.base_model}.items() if v is not None}
    settings = Settings(**overrides)
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve()})


def api_argv(host: str, port: int) -> list[str]:
    """The API under uvicorn (service/api_server.py chooses its HTTP parser)."""
    return [sys.executable, "-m", "service.api_server", "--host", host, "--port", str(port)]


def _children(workers: int, trainer: bool, settings: Settings) -> list[Child]:
    py = sys.executable
    children = [Child("api", api_argv(settings.host, settings.port))]
    children += [Child(f"inference-{i}", [py, "-m", "worker.inference"]) for i in range(workers)]
    if trainer:
        children.append(Child("trainer", [py, "-m", "worker.trainer"]))
    return children


class Supervisor:
    def __init__(self, settings: Settings, workers: int, trainer: bool,
                 redis_url: str | None) -> None:
        self.settings = settings
        self.children = _children(workers, trainer, settings)
        self.external_redis = redis_url
        self.redis: RedisServer | None = None
        self.registry: Registry | None = None
        self.stop = threading.Event()
        self.log_dir = settings.data_dir / "logs"

    def _env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"ADAPTERD_REDIS_URL": redis_url,
                    "ADAPTERD_DATA_DIR": str(self.settings.data_dir),
                    "ADAPTERD_BASE_MODEL": self.settings.base_model,
                    "ADAPTERD_HOST": self.settings.host, "ADAPTERD_PORT": str(self.settings.port),
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if not self.settings.torch_threads:  # 0 = auto
            # Each torch process gets its share of the cores: OpenMP threads of two processes on
            # the same cores stall each other at every barrier (on 2 cores, serving fell to
            # 0.08x its idle throughput while a job trained; 1 thread each kept 0.76x).
            torch_procs = sum(1 for c in self.children if c.name != "api")
            env["ADAPTERD_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // torch_procs))
        return env

    def _wait_ready(self, url: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            self._restart_redis_if_dead()
            if any(not c.alive() for c in self.children):
                return False
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            self.stop.wait(0.5)
        return False

    def _forget(self, pid: int) -> None:
        """Drop a dead child's heartbeat at once, so the others take over what it held now
        instead of when its heartbeat would have expired."""
        if self.registry is None:
            return
        try:
            self.registry.forget_workers_of_pid(pid)
        except redis.RedisError as exc:
            log.warning("could not drop the heartbeat of pid %d: %s", pid, exc)

    def _restart_redis_if_dead(self) -> None:
        """The embedded Redis is supervised too: restarted on the same data (AOF) and socket.
        Its clients wait out the gap (they retry with backoff) instead of dying with it."""
        if self.redis is None or self.redis.process is None or self.redis.process.poll() is None:
            return
        log.warning("embedded redis exited with %s; restarting it", self.redis.process.returncode)
        try:
            self.redis.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("could not restart redis: %s; trying again in a second", exc)

    def _restart_if_dead(self, env: dict[str, str]) -> bool:
        self._restart_redis_if_dead()
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            code = child.process.returncode if child.process else None
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            if len(child.restarts) >= MAX_RESTARTS:
                log.error("%s keeps dying (exit %s); stopping adapterd; see %s", child.name,
                          code, self.log_dir / f"{child.name}.log")
                return False
            log.warning("%s exited with %s; restarting", child.name, code)
            if child.process is not None:
                self._forget(child.process.pid)
            child.restarts.append(now)
            child.start(env, self.log_dir)
        return True

    def run(self) -> int:
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        socket_dir = Path(tempfile.mkdtemp(prefix="adapterd-"))
        code = 0
        try:
            if self.external_redis:
                redis_url = self.external_redis
            else:
                # AOF in the data dir: the registry (bank versions, jobs) survives a restart.
                self.redis = RedisServer(self.settings.data_dir / "redis", appendonly=True,
                                         socket_dir=socket_dir).start()
                redis_url = self.redis.url
                log.info("embedded redis on %s", self.redis.socket)
            env = self._env(redis_url)
            self.registry = Registry(sync_client(redis_url), Keys(self.settings.key_prefix))
            for child in self.children:
                child.start(env, self.log_dir)
            url = f"http://{self.settings.host}:{self.settings.port}"
            if not self._wait_ready(url, timeout_s=300):
                if not self.stop.is_set():
                    log.error("adapterd did not become ready; logs in %s", self.log_dir)
                    code = 1
                return code
            log.info("adapterd ready at %s in %.1fs (logs in %s)", url,
                     time.monotonic() - started, self.log_dir)
            while not self.stop.wait(1.0):
                if not self._restart_if_dead(env):
                    code = 1
                    break
            return code
        finally:
            self.shutdown()
            shutil.rmtree(socket_dir, ignore_errors=True)

    def shutdown(self) -> None:
        for child in self.children:
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE_S)
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()
        log.info("adapterd stopped")


def serve_main(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    configure_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.workers < 1:
        log.error("--workers must be at least 1")
        return 2
    # An explicit ADAPTERD_REDIS_URL means an external Redis; otherwise run our own.
    supervisor = Supervisor(settings, args.workers, not args.no_trainer,
                            os.environ.get("ADAPTERD_REDIS_URL"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop.set())
    return supervisor.run()
