"""Process plumbing shared by the worker entry points: device, threads, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid

import redis
import torch

from adapters_store.blobstore import Blobs, open_blob_store
from adapters_store.keys import Keys
from adapters_store.redis_client import sync_client
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from worker.base_model import load_base
from worker.host_memory import keep_freed_memory
from worker.routed_model import RoutedEncoder

STARTUP_WAIT_S = 300.0


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def new_worker_id(kind: str) -> str:
    return f"{kind}-{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class GracefulStop:
    """SIGTERM/SIGINT set a flag; the loop finishes its batch or job, then exits."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())

    @property
    def stopping(self) -> bool:
        return self.event.is_set()


def connect(settings: Settings) -> tuple[redis.Redis, Registry, Blobs]:
    client = sync_client(settings.redis_url)
    registry = Registry(client, Keys(settings.key_prefix))
    # A worker that starts while Redis is away waits for it rather than crash-looping.
    deadline = time.monotonic() + STARTUP_WAIT_S
    delay = 0.25
    while True:
        try:
            registry.ensure_groups()
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            logging.getLogger(__name__).warning("redis unavailable (%s); retrying in %.1fs",
                                                exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
    return client, registry, open_blob_store(settings)


def build_model(settings: Settings) -> tuple[RoutedEncoder, torch.device]:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    keep_freed_memory(settings.malloc_keep_mb)
    device = pick_device(settings.device)
    base = load_base(settings.base_model, device, settings.max_length)
    return RoutedEncoder(base).to(device), device
