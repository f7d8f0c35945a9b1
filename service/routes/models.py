"""OpenAI-compatible ``GET /v1/models``: one model per task routed by the live bank version."""

from __future__ import annotations

from fastapi import APIRouter

from adapters_store.errors import NotFound
from service.auth import InferenceAuth
from service.deps import LiveDep
from service.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, dependencies=[InferenceAuth],
            summary="List tasks as OpenAI-style models")
async def list_models(live: LiveDep) -> ModelList:
    manifest = await live.live_manifest()
    if manifest is None:
        return ModelList(data=[])
    cards = []
    for task_id, route in sorted(manifest.routes.items()):
        try:
            created = (await live.manifest(route.trained_in)).created_at
        except NotFound:  # a version that is no longer stored: the live one is the best date
            created = manifest.created_at
        cards.append(ModelCard(id=task_id, created=int(created), parent=manifest.base.name,
                               version=route.trained_in, labels=route.head.labels,
                               input_kind=route.input_kind))
    return ModelList(data=cards)
