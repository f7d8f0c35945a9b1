"""How every adapterd process writes its log lines: level, text or JSON, and the request id."""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

from adapters_store.settings import Settings

# The X-Request-ID of the HTTP request being handled (API process only); a context variable so
# that each request's task sees its own and every logger in between tags its lines with it.
REQUEST_ID: ContextVar[str | None] = ContextVar("adapterd_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# Servers that install their own handlers before our entry point runs; their lines are routed
# through ours so that a process writes one format.
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with ``request_id=…`` appended when the line concerns a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ts, level, logger, pid, message, request_id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Called once by each process's entry point (API factory, workers, supervisor)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _TAKEN_OVER:
        taken = logging.getLogger(name)
        for old in list(taken.handlers):
            taken.removeHandler(old)
        taken.propagate = True
