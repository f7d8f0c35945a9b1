"""End to end over HTTP against `adapterd serve` on loopback: closed-loop clients sending one row
each, and publishes of new bank versions while they run (hot swap under load)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from adapterd.redis_server import RedisServer
from adapters_store.blobstore import BlobStore
from adapters_store.keys import Keys
from adapters_store.records import BaseModelInfo
from adapters_store.registry import Registry
from worker.serving_bench.bank_growth import BankWriter
from worker.serving_bench.floors import bare_server, redis_round_trip
from worker.serving_bench.processes import free_port, stop
from worker.serving_bench.synthetic import build_bank, sentences

PREPARE_TIMEOUT_S = 30.0


@dataclass
class Service:
    url: str
    redis_url: str
    registry: Registry
    writer: BankWriter
    versions: list[str] = field(default_factory=list)
    prepare_s: list[float] = field(default_factory=list)

    def publish(self, tasks: int) -> str:
        """As the trainer publishes: staged, and live once the inference worker has it."""
        parent = self.registry.live_version()
        number = self.registry.next_version_number()
        manifest = self.writer.manifest(tasks, number, parent)
        report = self.registry.publish(manifest, reason=f"serving benchmark: {tasks} tasks",
                                       prepare_timeout_s=PREPARE_TIMEOUT_S)
        if report is not None:
            self.prepare_s.append(report.waited_s)
        self.versions.append(manifest.version)
        return manifest.version


@contextmanager
def running_service(root: Path, shape: str, tasks: int, extra_tasks: int, base: BaseModelInfo,
                    env: dict[str, str]) -> Iterator[Service]:
    """Our own Redis, `adapterd serve --no-trainer` against it, and a synthetic bank of
    ``tasks`` live (plus ``extra_tasks`` more to publish later)."""
    server = RedisServer(root / "redis").start()
    port = free_port()
    data = root / "data"
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-c", "import sys; from adapterd.cli import main; sys.exit(main())",
           "serve", "--no-trainer", "--port", str(port), "--data-dir", str(data),
           "--base-model", base.name]
    proc = subprocess.Popen(cmd, env=os.environ | env | {"ADAPTERD_REDIS_URL": server.url},
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    client = redis.Redis.from_url(server.url)
    try:
        registry = Registry(client, Keys(env.get("ADAPTERD_KEY_PREFIX", "adapterd")))
        registry.ensure_groups()
        bank = build_bank(shape, tasks + extra_tasks, base.hidden_size, base.num_layers, seed=7)
        service = Service(f"http://127.0.0.1:{port}", server.url, registry,
                          BankWriter(bank, BlobStore(data / "blobs"), base))
        service.publish(tasks)
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"adapterd serve exited: {(root / 'serve.log').read_text()}")
            beats = registry.heartbeats()
            if any(b.kind == "inference" and b.version == service.versions[-1] for b in beats):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("adapterd serve did not come up in 300 s")
            time.sleep(0.5)
        yield service
    finally:
        stop(proc, 60)
        log.close()
        client.close()
        server.stop()


@dataclass
class Sample:
    sent: float
    latency_s: float
    status: int
    version: str | None
    compute_ms: float | None
    batch_rows: int | None


def _timing(header: str | None) -> dict[str, float]:
    out = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


async def closed_loop(url: str, task_ids: list[str], concurrency: int, duration_s: float,
                      seed: int, max_requests: int = 200_000) -> list[Sample]:
    """``concurrency`` clients, each sending one row and waiting for the answer, for
    ``duration_s`` (and at most ``max_requests`` in all)."""
    texts = [s.text for s in sentences(256, 45, seed)]
    samples: list[Sample] = []
    end = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(n: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < end and len(samples) < max_requests:
            task = rng.choice(task_ids)
            started = time.monotonic()
            try:
                r = await http.post(f"{url}/v1/tasks/{task}/predict",
                                    json={"inputs": [rng.choice(texts)]})
                status, headers = r.status_code, r.headers
            except httpx.HTTPError:
                status, headers = 0, httpx.Headers()
            timing = _timing(headers.get("server-timing"))
            rows = headers.get("x-batch-rows")
            samples.append(Sample(started, time.monotonic() - started, status,
                                  headers.get("x-adapter-version"), timing.get("compute"),
                                  int(rows) if rows else None))

    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(concurrency)))
    return samples


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(samples: list[Sample], duration_s: float) -> dict[str, float | int]:
    ok = [s for s in samples if s.status == 200]
    lat = [1000 * s.latency_s for s in ok]
    compute = [s.compute_ms for s in ok if s.compute_ms is not None]
    rows = [s.batch_rows for s in ok if s.batch_rows is not None]
    return {
        "requests": len(samples), "failed": len(samples) - len(ok),
        "rows_per_s": round(len(ok) / duration_s, 1),
        "p50_ms": round(_pct(lat, 0.50), 2), "p95_ms": round(_pct(lat, 0.95), 2),
        "p99_ms": round(_pct(lat, 0.99), 2), "max_ms": round(max(lat), 2) if lat else None,
        "compute_p50_ms": round(statistics.median(compute), 2) if compute else float("nan"),
        "mean_batch_rows": round(statistics.fmean(rows), 2) if rows else float("nan"),
        # What HTTP, the API and Redis add to the worker's own forward of the same batch.
        "overhead_p50_ms": round(statistics.median(
            [1000 * s.latency_s - s.compute_ms for s in ok if s.compute_ms is not None]), 2)
        if compute else float("nan"),
    }


async def hot_swap(service: Service, task_ids: list[str], extra: int, concurrency: int,
                   duration_s: float, seed: int) -> dict[str, object]:
    """Closed-loop load while ``extra`` versions are published, one more task each."""
    published: list[tuple[float, str]] = []

    async def publisher() -> None:
        gap = duration_s / (extra + 2)
        for k in range(extra):
            await asyncio.sleep(gap)
            version = await asyncio.to_thread(service.publish, len(task_ids) + k + 1)
            published.append((time.monotonic(), version))

    load = asyncio.create_task(closed_loop(service.url, task_ids, concurrency, duration_s,
                                           seed))
    await publisher()
    samples = await load
    number = {v: int(v.lstrip("v")) for v in service.versions}
    first_reply = []
    for at, version in published:
        served = [s.sent + s.latency_s for s in samples if s.version is not None
                  and number.get(s.version, 0) >= number[version] and s.sent + s.latency_s >= at]
        first_reply.append(min(served) - at if served else float("nan"))
    # A reply must come from the version live when its request was sent, or a newer one.
    stale = 0
    for s in samples:
        live = [v for at, v in published if at <= s.sent]
        floor = number[live[-1]] if live else number[service.versions[0]]
        if s.status == 200 and s.version is not None and number.get(s.version, 0) < floor:
            stale += 1
    finite = [x for x in first_reply if x == x]
    prepare = service.prepare_s[-len(published):] if published else []
    return {
        # Staging: from the version's announcement until the worker had it loaded, while it
        # kept serving the previous one (the live flip follows).
        "prepare_s": {"p50": round(statistics.median(prepare), 3) if prepare else None,
                      "max": round(max(prepare), 3) if prepare else None},
        "versions_published": len(published), "summary": summarise(samples, duration_s),
        "stale_replies": stale,
        "publish_to_first_reply_s": {"p50": round(statistics.median(finite), 3) if finite
                                     else None, "max": round(max(finite), 3) if finite else None,
                                     "each": [round(x, 3) for x in first_reply]},
    }


class RawHttp:
    """A bare HTTP/1.1 keep-alive client on one asyncio connection: next to httpx it shows how
    much of the measured overhead is the client's own."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b""
                      ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: "
                          f"application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                          + body)
        status = int((await self.reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, await self.reader.readexactly(int(headers["content-length"]))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def overhead_breakdown(url: str, redis_url: str, task_ids: list[str], requests: int,
                             seed: int) -> tuple[list[dict[str, float | int | str]],
                                                 dict[str, float | int]]:
    """Concurrency 1, httpx and the bare client taking turns request by request (so drift hits
    both alike): a GET /healthz round trip, then predicts split by their Server-Timing into the
    queue, the forward, the reply's transit back to the API, the rest of the route, and
    everything outside the route (client, HTTP parsing, middlewares, validation).

    In the same loop, the floors of that path on this host: the bare client's round trip to a
    bare ASGI app under the same HTTP server, and a Redis round trip between two processes (the
    predict's two Redis legs with nothing of ours in between)."""
    rng = random.Random(seed)
    texts = [s.text for s in sentences(64, 45, seed)]
    raw = RawHttp(url)
    got: dict[str, dict[str, list[float]]] = {c: {} for c in ("httpx", "raw")}
    floor_ms: dict[str, list[float]] = {"bare_asgi_rtt": [], "redis_round_trip": []}

    def note(client: str, key: str, value: float) -> None:
        got[client].setdefault(key, []).append(value)

    with bare_server() as bare_url:
        bare = RawHttp(bare_url)
        async with httpx.AsyncClient(timeout=30) as http, \
                redis_round_trip(redis_url) as redis_rt:
            for n in range(requests):
                body = {"inputs": [rng.choice(texts)]}
                path = f"/v1/tasks/{rng.choice(task_ids)}/predict"
                started = time.perf_counter()
                await bare.request("GET", "/healthz")
                floor_ms["bare_asgi_rtt"].append(1000 * (time.perf_counter() - started))
                floor_ms["redis_round_trip"].append(1000 * await redis_rt.once(n))
                for client in ("httpx", "raw"):
                    started = time.perf_counter()
                    if client == "httpx":
                        await http.get(f"{url}/healthz")
                    else:
                        await raw.request("GET", "/healthz")
                    note(client, "healthz", time.perf_counter() - started)
                    started = time.perf_counter()
                    if client == "httpx":
                        r = await http.post(url + path, json=body)
                        status, timing = r.status_code, r.headers.get("server-timing")
                    else:
                        status, headers, _ = await raw.request("POST", path,
                                                               json.dumps(body).encode())
                        timing = headers.get("server-timing")
                    latency = time.perf_counter() - started
                    t = _timing(timing)
                    if status != 200 or not {"queue", "compute", "transit", "api"} <= t.keys():
                        note(client, "failed", 1)
                        continue
                    note(client, "latency", 1000 * latency)
                    for key in ("queue", "compute", "transit"):
                        note(client, key, t[key])
                    note(client, "route_rest",
                         t["api"] - t["queue"] - t["compute"] - t["transit"])
                    note(client, "outside_route", 1000 * latency - t["api"])
                    note(client, "overhead", 1000 * latency - t["compute"])
        await bare.close()
    await raw.close()
    med = statistics.median
    rows: list[dict[str, float | int | str]] = [
        {"client": c, "requests": len(v.get("latency", [])), "failed": len(v.get("failed", [])),
         "healthz_p50_ms": round(1000 * med(v["healthz"]), 2),
         **{f"{k}_p50_ms": round(med(v[k]), 2) for k in
            ("latency", "compute", "overhead", "queue", "transit", "route_rest",
             "outside_route")}} for c, v in got.items()]
    floors: dict[str, float | int] = {"samples": requests,
                                      **{f"{k}_p50_ms": round(med(v), 2)
                                         for k, v in floor_ms.items()}}
    return rows, floors
