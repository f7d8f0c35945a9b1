"""Request body size limits: Content-Length checked up front, streamed bytes counted as read."""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters_store.settings import Settings
from service.errors import error_response

UPLOAD_PATH = re.compile(r"^/v1/tasks/[^/]+/datasets/?$")
# A multipart upload carries a boundary and part headers around the file. The middleware allows
# that envelope on top of max_upload_bytes; the upload route enforces the exact limit on the
# file's own bytes, so a file of exactly max_upload_bytes is accepted however it is sent.
MULTIPART_ENVELOPE_BYTES = 64 * 1024


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` so that it crosses FastAPI's body parsing unchanged (an
    HTTPException is re-raised there, anything else becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.details = {"limit_bytes": limit}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_upload = settings.max_upload_bytes
        self.max_request = settings.max_request_bytes

    def limits_for(self, path: str) -> tuple[int, int]:
        """(bytes enforced here, bytes the client is told): they differ by the envelope."""
        if UPLOAD_PATH.match(path):
            return self.max_upload + MULTIPART_ENVELOPE_BYTES, self.max_upload
        return self.max_request, self.max_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, told = self.limits_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await error_response(400, "bad_request", "invalid Content-Length header")(
                    scope, receive, send)
                return
            if int(declared) > limit:
                # Answer before reading a byte: the client may still be sending, and we do not
                # want to spend bandwidth or memory on a body we will refuse anyway.
                exc = BodyTooLarge(told)
                await error_response(413, "too_large", exc.detail, exc.details)(
                    scope, receive, send)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(told)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the error handlers answer; this covers a read outside a route.
            if started:
                raise
            await error_response(413, "too_large", exc.detail, exc.details)(scope, receive, send)
