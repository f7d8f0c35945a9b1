"""Content-addressed blob store on a shared directory: immutable files named by their sha256;
and the choice of backend (this one, or an S3-compatible bucket) from the settings."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from adapters_store.errors import CorruptBlob, InvalidInput, NotFound

if TYPE_CHECKING:
    from adapters_store.settings import Settings

_HEX = frozenset("0123456789abcdef")


class Blobs(Protocol):
    """What the registry, the trainer and the workers need of a blob store."""

    def put(self, data: bytes) -> str: ...
    def get(self, digest: str) -> bytes: ...
    def exists(self, digest: str) -> bool: ...


def check_digest(digest: str) -> None:
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise NotFound(f"not a blob digest: {digest[:80]!r}")


def open_blob_store(settings: Settings) -> Blobs:
    """The local directory (``data_dir/blobs``, the embedded default) or, with
    ``blob_backend=s3``, the bucket read through a local cache (``blob_cache_dir``)."""
    if settings.blob_backend == "local":
        return BlobStore(settings.data_dir / "blobs")
    if not settings.s3_bucket:
        raise InvalidInput("blob_backend=s3 needs s3_bucket (ADAPTERD_S3_BUCKET)")
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # the s3 extra is not installed
        raise InvalidInput("blob_backend=s3 needs boto3: pip install 'adapterd[s3]'") from exc
    from adapters_store.s3_blobstore import S3BlobStore

    def secret(value: object) -> str | None:
        return None if value is None else value.get_secret_value()  # type: ignore[attr-defined]

    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=secret(settings.s3_access_key_id),
        aws_secret_access_key=secret(settings.s3_secret_access_key),
        config=Config(retries={"max_attempts": 5, "mode": "standard"},
                      connect_timeout=5, read_timeout=30))
    cache = BlobStore(settings.blob_cache_dir or settings.data_dir / "blob-cache")
    return S3BlobStore(client, settings.s3_bucket, cache, settings.s3_prefix)


class BlobStore:
    """Blobs live at ``root/sha256/ab/<digest>``; a write is complete before its name exists."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temp file in the same directory, fsync, then rename: readers never see a
        # partial blob, and a crash leaves at worst a stray temp file, never a wrong one.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} does not match its digest")
        return data

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()
