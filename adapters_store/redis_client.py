"""Redis clients for every adapterd process: retries with jittered exponential backoff on
connection errors and periodic health checks, so a Redis restart is an outage to wait out, not
a crash."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

# A few quick retries ride out a blip (a failover, a restart with AOF replay) without holding a
# request for long: about 1.5 s in all before the caller sees the error.
RETRIES = 4
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 0.8
HEALTH_CHECK_S = 10


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, retry=Retry(ExponentialWithJitterBackoff(BACKOFF_CAP_S, BACKOFF_BASE_S), RETRIES),
        health_check_interval=HEALTH_CHECK_S)


def async_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, retry=AsyncRetry(ExponentialWithJitterBackoff(BACKOFF_CAP_S, BACKOFF_BASE_S),
                              RETRIES),
        health_check_interval=HEALTH_CHECK_S)
