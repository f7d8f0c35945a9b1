"""Typed domain errors with a stable code and HTTP status, mapped to responses in one place."""

from __future__ import annotations

from typing import Any


class AdapterdError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(AdapterdError):
    code = "invalid_input"
    status = 422


class NotFound(AdapterdError):
    code = "not_found"
    status = 404


class Conflict(AdapterdError):
    code = "conflict"
    status = 409


class TooLarge(AdapterdError):
    code = "too_large"
    status = 413


class Unauthorized(AdapterdError):
    code = "unauthorized"
    status = 401


class Forbidden(AdapterdError):
    code = "forbidden"
    status = 403


class Overloaded(AdapterdError):
    code = "overloaded"
    status = 429


class NoWorker(AdapterdError):
    code = "no_worker"
    status = 503


class Timeout(AdapterdError):
    code = "timeout"
    status = 504


class CorruptBlob(AdapterdError):
    code = "corrupt_blob"
    status = 500


class Regression(AdapterdError):
    """A job's change would make an earlier task drop past the gate's tolerance."""

    code = "regression"
    status = 409
