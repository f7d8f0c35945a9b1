"""A small synchronous client of the adapterd HTTP API that raises typed API errors."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Api:
    """A thin client over the HTTP API that turns error bodies into ApiError."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError("connection", f"cannot reach {self.url}: {exc}") from exc
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            raise ApiError(error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(f"http_{response.status_code}", response.text[:500]) from None
