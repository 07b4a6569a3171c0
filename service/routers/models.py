"""/v1/models: the models a job can name on this server, with their family, size and support."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from service.catalog import list_models
from service.deps import PrincipalDep, SettingsDep
from service.errors import public_message
from service.schemas.models import ModelList, ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def get_models(_: PrincipalDep, settings: SettingsDep) -> ModelList:
    """The server's models dir entries and the Hub ids cached in its Hugging Face cache, each with its
    `model_type`, the engine's family for it, the parameters its weights hold, and whether the engine can
    prune it (and why not). Read from config.json and the safetensors headers; nothing is loaded."""
    entries = list_models(settings.models_dir, settings.hf_cache_dir)
    return ModelList(
        data=[
            # a refusal's message as a job's owner reads any: no server path in it
            ModelPublic.model_validate({**asdict(entry), "reason": public_message(entry.reason)})
            for entry in entries
        ]
    )
