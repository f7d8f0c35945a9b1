"""Content-addressed blobs in an S3-compatible bucket, read through a local cache directory."""

from __future__ import annotations

import hashlib
from typing import Any

from adapters_store.blobstore import BlobStore, check_digest
from adapters_store.errors import CorruptBlob, NotFound


class S3BlobStore:
    """Objects at ``s3://bucket/<prefix>sha256/ab/<digest>``, the same layout as the local store.

    A blob never changes once written (its name is its sha256), so every host may keep a local
    copy forever: reads go to ``cache`` first and fill it after one GET, and a write that finds
    the object already there skips the upload. Every byte read from the bucket is checked
    against its digest before it is cached or returned.
    """

    def __init__(self, client: Any, bucket: str, cache: BlobStore,  # noqa: ANN401 - boto3's
                 prefix: str = "") -> None:
        self.client, self.bucket, self.cache = client, bucket, cache
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def key(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}sha256/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self._in_bucket(digest):
            self.client.put_object(Bucket=self.bucket, Key=self.key(digest), Body=data,
                                   ChecksumAlgorithm="SHA256")
        self.cache.put(data)
        return digest

    def get(self, digest: str) -> bytes:
        if self.cache.exists(digest):
            return self.cache.get(digest)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
            data = body.read()
        except self.client.exceptions.NoSuchKey as exc:
            raise NotFound(f"blob {digest} is missing") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} does not match its digest")
        self.cache.put(data)
        return data

    def exists(self, digest: str) -> bool:
        return self.cache.exists(digest) or self._in_bucket(digest)

    def _in_bucket(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
