"""Content-addressed blob store on a shared directory: immutable files named by their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from adapters_store.errors import CorruptBlob, NotFound

_HEX = frozenset("0123456789abcdef")


class BlobStore:
    """Blobs live at ``root/sha256/ab/<digest>``; a write is complete before its name exists."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise NotFound(f"not a blob digest: {digest[:80]!r}")
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
