"""The request path's floors on this host: a bare ASGI round trip and a Redis round trip between
two processes, measured beside the predicts they bound."""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis

from worker.serving_bench.processes import free_port, stop

# The echo process gives up after this long without a ping, so a benchmark that dies never
# leaves it running.
ECHO_IDLE_EXIT_S = 30.0
STOP = b"stop"
_BODY = b'{"status":"ok"}'


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ANN401 - ASGI
    """The least an ASGI app can do for a GET: what uvicorn + httptools cost without FastAPI,
    our middlewares, routing or validation."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_BODY)).encode())]})
    await send({"type": "http.response.body", "body": _BODY})


@contextmanager
def bare_server() -> Iterator[str]:
    """``bare_app`` under uvicorn with httptools, as the API runs; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "worker.serving_bench.floors:bare_app", "--http",
         "httptools", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the bare ASGI server did not start: {err}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, 10)


def echo(url: str, ping: str, pong: str) -> None:
    """The other process of a Redis round trip: each entry read from ``ping`` (blocked, as the
    inference worker reads) is answered on ``pong`` (as the worker replies)."""
    client = redis.Redis.from_url(url)
    # From the start: the benchmark emptied both streams before starting this process.
    last, idle_since = "0-0", time.monotonic()
    while time.monotonic() - idle_since < ECHO_IDLE_EXIT_S:
        got = client.xread({ping: last}, count=16, block=1000)
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                last, idle_since = entry_id, time.monotonic()
                if fields.get(b"n") == STOP:
                    return
                client.xadd(pong, fields, maxlen=1000, approximate=True)


class RedisRoundTrip:
    """XADD here, a blocked XREAD wakes in another process, which XADDs back to a stream this
    process is blocked on: the two Redis legs of a predict (API to worker, reply back to the
    API) with nothing of ours in between."""

    def __init__(self, client: aioredis.Redis, ping: str, pong: str) -> None:
        self.client, self.ping, self.pong = client, ping, pong
        self.last = "0-0"

    async def once(self, n: int) -> float:
        """Seconds for one round trip."""
        started = time.perf_counter()
        await self.client.xadd(self.ping, {"n": str(n)}, maxlen=1000, approximate=True)
        while True:
            got = await self.client.xread({self.pong: self.last}, count=1, block=5000)
            if not got:
                raise RuntimeError("the Redis echo process did not answer in 5 s")
            entry_id, fields = got[0][1][0]
            self.last = entry_id
            if fields.get(b"n") == str(n).encode():
                return time.perf_counter() - started


@asynccontextmanager
async def redis_round_trip(url: str) -> AsyncIterator[RedisRoundTrip]:
    ping, pong = "bench:floor:ping", "bench:floor:pong"
    client = aioredis.Redis.from_url(url)
    await client.delete(ping, pong)
    proc = subprocess.Popen([sys.executable, "-m", "worker.serving_bench.floors", "echo", url,
                             ping, pong], stdin=subprocess.DEVNULL)
    try:
        rt = RedisRoundTrip(client, ping, pong)
        await rt.once(-1)  # the echo is up and reading
        yield rt
    finally:
        with contextlib.suppress(redis.RedisError):
            await client.xadd(ping, {"n": STOP})
        stop(proc, 10)  # it exits on STOP; a hung one is stopped
        with contextlib.suppress(redis.RedisError):
            await client.delete(ping, pong)
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.serving_bench.floors")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo", help="answer Redis round-trip pings (run by the benchmark)")
    p.add_argument("url")
    p.add_argument("ping")
    p.add_argument("pong")
    args = parser.parse_args(argv)
    echo(args.url, args.ping, args.pong)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
