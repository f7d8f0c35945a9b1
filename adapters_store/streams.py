"""The wire protocol on Redis streams: inference requests and replies, train jobs, heartbeats."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters_store.records import TASK_ID_PATTERN

FIELD = "m"  # every stream entry carries one JSON document under this field


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def fields(self) -> dict[str, str]:
        return {FIELD: self.model_dump_json()}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]):  # noqa: ANN206 - returns cls
        raw = fields.get(FIELD) if FIELD in fields else fields.get(FIELD.encode())
        if raw is None:
            raise ValueError("stream entry has no message field")
        return cls.model_validate_json(raw)


class InputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    text_pair: str | None = None


class InferenceRequest(Message):
    request_id: str
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    inputs: list[InputItem]
    reply_to: str
    version: str | None = None
    enqueued_at: float = Field(default_factory=time.time)
    deadline: float
    # The HTTP request's X-Request-ID (request_id is the reply's key and is always unique).
    http_request_id: str | None = None


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    scores: dict[str, float]


class ReplyError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class InferenceReply(Message):
    request_id: str
    task_id: str
    version: str | None
    outputs: list[Prediction] | None = None
    error: ReplyError | None = None
    worker_id: str
    batch_rows: int = 0
    batch_requests: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    # Wall clock when the worker queued the reply: the API derives the reply's transit from it.
    replied_at: float = 0.0


class TrainJobMessage(Message):
    job_id: str


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: str
    kind: str
    pid: int
    version: str | None
    at: float = Field(default_factory=time.time)
    batches: int = 0
    device: str = "cpu"
