"""GET /v1/models: the one model this process serves."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RuntimeDep, ServedDep
from app.api.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
async def list_models(runtime: RuntimeDep, served: ServedDep) -> ModelList:
    return ModelList(
        data=[ModelCard(id=runtime.model_name, created=served.created, max_model_len=runtime.settings.max_model_len)]
    )
