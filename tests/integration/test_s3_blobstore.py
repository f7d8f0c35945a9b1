"""The S3 blob backend against a real S3-protocol server (moto's standalone server, a process on
a loopback port): the store alone, then the whole service with no shared blob directory."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import SecretStr

from adapters_store.blobstore import BlobStore, open_blob_store
from adapters_store.errors import CorruptBlob, InvalidInput, NotFound
from adapters_store.registry import Registry
from adapters_store.s3_blobstore import S3BlobStore
from adapters_store.settings import Settings
from tests.factories import keyword_rows
from tests.integration.stack import running_stack, wait_job
from tests.integration.test_end_to_end import FAST, jsonl, upload

BUCKET = "adapterd-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_settings(settings: Settings, s3_url: str) -> Settings:
    s3 = settings.model_copy(update={
        "blob_backend": "s3", "s3_endpoint_url": s3_url, "s3_bucket": BUCKET,
        "s3_region": "us-east-1", "s3_prefix": settings.key_prefix,
        "s3_access_key_id": SecretStr("test"), "s3_secret_access_key": SecretStr("test")})
    client = _client(s3)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return s3


def _client(s: Settings):  # noqa: ANN202 - a boto3 client
    return boto3.client("s3", endpoint_url=s.s3_endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_put_get_exists_and_the_read_through_cache(s3_settings: Settings) -> None:
    store = open_blob_store(s3_settings)
    assert isinstance(store, S3BlobStore)
    data = b"tensor bytes" * 100
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest() and store.put(data) == digest
    key = f"{s3_settings.key_prefix}/sha256/{digest[:2]}/{digest}"
    client = _client(s3_settings)
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    # Another host: an empty cache reads from the bucket once, then from its cache.
    other = S3BlobStore(client, BUCKET, BlobStore(s3_settings.data_dir / "other-cache"),
                        s3_settings.key_prefix)
    assert not other.cache.exists(digest) and other.exists(digest)
    assert other.get(digest) == data and other.cache.exists(digest)
    client.delete_object(Bucket=BUCKET, Key=key)
    assert other.get(digest) == data  # blobs never change: the cached copy stays valid
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not other.exists(missing)
    with pytest.raises(NotFound):
        other.get(missing)
    with pytest.raises(NotFound):
        other.get("../../etc/passwd")


def test_a_corrupt_object_is_refused_and_not_cached(s3_settings: Settings, tmp_path: Path) -> None:
    client = _client(s3_settings)
    digest = hashlib.sha256(b"the real bytes").hexdigest()
    client.put_object(Bucket=BUCKET, Key=f"{s3_settings.key_prefix}/sha256/{digest[:2]}/{digest}",
                      Body=b"other bytes")
    store = S3BlobStore(client, BUCKET, BlobStore(tmp_path / "cache"), s3_settings.key_prefix)
    with pytest.raises(CorruptBlob):
        store.get(digest)
    assert not store.cache.exists(digest)


def test_s3_backend_needs_a_bucket(settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="s3_bucket"):
        open_blob_store(settings.model_copy(update={"blob_backend": "s3"}))


@pytest.mark.slow
def test_the_service_trains_and_serves_from_the_bucket(s3_settings: Settings, registry: Registry,
                                                      tmp_path: Path) -> None:
    """API, trainer and inference worker on the S3 backend: nothing is written to the shared
    blob directory, everything the bank needs is in the bucket."""
    fast = s3_settings.model_copy(update=FAST)
    with running_stack(fast, registry, tmp_path / "logs") as procs:
        url = procs["api"].url
        accepted = upload(url, "colors", jsonl(keyword_rows(40)), query="strategy=per_task")
        job = wait_job(registry, accepted["job_id"], 180, tuple(procs.values()))
        assert job.state == "succeeded", job.error
        r = httpx.post(f"{url}/v1/tasks/colors/predict", timeout=30,
                       json={"inputs": ["a cherry and a tomato today", "the sapphire ocean"]})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == ["red", "blue"]
    assert not (fast.data_dir / "blobs").exists()
    keys = [o["Key"] for o in _client(fast).list_objects_v2(
        Bucket=BUCKET, Prefix=f"{fast.key_prefix}/")["Contents"]]
    manifest = registry.live_manifest()
    assert manifest is not None
    wanted = {m.blob for m in manifest.modules.values()} | \
        {r.head.blob for r in manifest.routes.values()}
    assert wanted <= {k.rsplit("/", 1)[1] for k in keys}
