"""Shared test fixtures: a real redis-server per session, fresh key prefixes, settings factories."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adapterd.redis_server import RedisServer
from adapters_store.keys import Keys
from adapters_store.registry import Registry
from adapters_store.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    """Settings on the session's Redis with a unique key prefix and a private blob dir."""
    return Settings(
        redis_url=redis_server.url,
        key_prefix="t" + uuid.uuid4().hex[:10],
        data_dir=tmp_path / "data",
        base_model="tiny-bert",
        device="cpu",
        torch_threads=1,
    )


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    client = redis.Redis.from_url(settings.redis_url)
    reg = Registry(client, Keys(settings.key_prefix))
    reg.ensure_groups()
    yield reg
    client.close()
