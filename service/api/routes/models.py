"""GET /models and GET /methods — what can be asked of /assess."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from models import saliency
from models.saliency import DEFAULT_METHOD
from service.api.deps import RegistryDep, api_key_check_unless_public
from service.schemas import ErrorResponse, MethodsResponse, ModelInfo, ModelsResponse

router = APIRouter(tags=["models"])

ModelsAuth = Annotated[
    None, Depends(api_key_check_unless_public("models"))
]  # one switch for both: what /assess can be asked
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized: API key needed (not public here)"}
}


@router.get(
    "/models", response_model=ModelsResponse, summary="Loaded models and their metadata", responses=_UNAUTHORIZED
)
def list_models(registry: RegistryDep, _auth: ModelsAuth) -> ModelsResponse:
    infos = []
    for name, worker in registry.workers.items():
        meta = worker.meta
        if meta is None:  # a worker made without discovery (tests): nothing validated to show
            continue
        # The name is the folder's (model.json's own name may differ, e.g. a copied checkpoint).
        info = {**meta.model_dump(), "name": name}
        infos.append(
            ModelInfo(
                **info, device=str(worker.device), state=worker.describe_state(), default=name == registry.default_name
            )
        )
    return ModelsResponse(default=registry.default_name, models=infos)


@router.get("/methods", response_model=MethodsResponse, summary="Saliency method ids", responses=_UNAUTHORIZED)
def list_methods(_auth: ModelsAuth) -> MethodsResponse:
    return MethodsResponse(default=DEFAULT_METHOD, methods=saliency.list_methods())
