"""X-Request-ID: take a safe one from the client or make one, echo it, and tag the log lines."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters_store.logs import REQUEST_ID

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# Letters, digits and a few separators: what tracing systems use, and nothing that could forge
# a log line or a header (no spaces, quotes, control characters).
_SAFE = re.compile(rf"[A-Za-z0-9._:/+=-]{{1,{MAX_LENGTH}}}")


def accepted_request_id(presented: str | None) -> str:
    """The client's id if it is safe to log and echo, else a new one (uuid4 hex)."""
    if presented is not None and _SAFE.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


class RequestIdMiddleware:
    """Outermost of ours: every response it sends carries the id, 413s and 404s included (500s
    are sent by Starlette's outer error middleware: the error handler adds it there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(Headers(scope=scope).get(HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
        # Not reset when the app raised: Starlette's error middleware logs the 500 after us, and
        # its line should carry the id too (each request runs in its own task's context).
        REQUEST_ID.reset(token)
