"""The one place that turns errors into JSON `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters_store.errors import AdapterdError
from service.request_ids import HEADER as REQUEST_ID_HEADER
from service.request_ids import request_id_of

logger = logging.getLogger(__name__)

# Codes for errors Starlette/FastAPI raise themselves (routing, body limits, malformed forms).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "overloaded",
}

# Extra headers clients act on: when to retry, how to authenticate.
_STATUS_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "1"},
    503: {"Retry-After": "1"},
}


class NotReady(AdapterdError):
    """Readiness failed: a dependency the API needs to serve traffic is missing."""

    code = "not_ready"
    status = 503


class UpstreamError(AdapterdError):
    """A worker answered with an error we have no more specific type for."""

    code = "worker_error"
    status = 500


def error_response(
    status: int, code: str, message: str, details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    merged = {**_STATUS_HEADERS.get(status, {}), **(headers or {})}
    return JSONResponse(error_body(code, message, details), status_code=status,
                        headers=merged or None)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Every error's JSON body, whoever answers it (a route, a middleware, the HTTP parser)."""
    return {"error": {"code": code, "message": message, "details": details}}


def _json_safe(value: Any) -> Any:
    """Validation contexts may hold exception objects; keep only JSON types, stringify the rest."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def validation_details(errors: Any) -> list[dict[str, Any]]:
    # The offending input is left out on purpose: it can be a whole request body (or a secret).
    out = []
    for err in errors:
        item = {"loc": _json_safe(err.get("loc", ())), "msg": str(err.get("msg", "")),
                "type": str(err.get("type", ""))}
        if err.get("ctx"):
            item["ctx"] = _json_safe(err["ctx"])
        out.append(item)
    return out


async def _adapterd_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdapterdError)
    # Server-side failures are worth a line; an unready probe (polled every second) is not.
    if exc.status >= 500 and not isinstance(exc, NotReady):
        logger.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status,
                       exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, _json_safe(exc.details))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", "the request is not valid",
                          validation_details(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    details = _json_safe(getattr(exc, "details", None))
    return error_response(exc.status_code, code, message, details, dict(exc.headers or {}))


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Redis down or timing out is an outage the client can retry, not a bug: 503, not 500.
    logger.warning("%s %s: Redis error: %s", request.method, request.url.path, exc)
    return error_response(503, "store_unavailable", "the registry store is unavailable")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Log the traceback here; the client only learns that it was our fault.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    # Sent by Starlette's outermost middleware, past RequestIdMiddleware: add the id here.
    request_id = request_id_of(request)
    return error_response(500, "internal", "internal server error",
                          headers={REQUEST_ID_HEADER: request_id} if request_id else None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AdapterdError, _adapterd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
