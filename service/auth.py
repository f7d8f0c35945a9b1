"""Optional API keys with two scopes: admin (uploads, rollback, everything) and inference."""

from __future__ import annotations

import hmac
from typing import Literal

from fastapi import Depends, Request
from pydantic import SecretStr

from adapters_store.errors import Forbidden, Unauthorized
from adapters_store.settings import Settings
from service.deps import SettingsDep

Scope = Literal["admin", "inference", "read"]


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _matches(key: str, keys: list[SecretStr]) -> bool:
    # Compare against every key (no early exit) so timing says nothing about which one matched.
    found = False
    presented = key.encode()
    for candidate in keys:
        found |= hmac.compare_digest(presented, candidate.get_secret_value().encode())
    return found


def scopes_of(key: str, settings: Settings) -> set[Scope]:
    if _matches(key, settings.admin_api_keys):
        return {"admin", "inference", "read"}
    if _matches(key, settings.inference_api_keys):
        return {"inference", "read"}
    return set()


def auth_enabled(settings: Settings) -> bool:
    # The embedded single-machine default runs without keys; configuring any key turns auth on.
    return bool(settings.admin_api_keys or settings.inference_api_keys)


def check(request: Request, settings: Settings, scope: Scope) -> None:
    if not auth_enabled(settings):
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    granted = scopes_of(key, settings)
    if not granted:
        raise Unauthorized("the API key is not valid")
    if scope not in granted:
        raise Forbidden(f"the API key lacks the {scope!r} scope", {"required_scope": scope})


async def require_admin(request: Request, settings: SettingsDep) -> None:
    check(request, settings, "admin")


async def require_inference(request: Request, settings: SettingsDep) -> None:
    check(request, settings, "inference")


async def require_read(request: Request, settings: SettingsDep) -> None:
    check(request, settings, "read")


AdminAuth = Depends(require_admin)
InferenceAuth = Depends(require_inference)
ReadAuth = Depends(require_read)
