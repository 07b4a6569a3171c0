"""Request dependencies: settings, store and the authenticated caller, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal, authenticate
from service.objects.storage import Storage
from service.settings import Settings
from service.store import Store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


# auto_error=False: the 401 below is ours (its detail and header), and insecure mode needs no header at all
bearer = HTTPBearer(auto_error=False, description="An API key, sent as `Authorization: Bearer <key>`.")


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    token = credentials.credentials if credentials is not None else None
    principal = authenticate(request.app.state.settings, request.app.state.key_hashes, token)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def unprocessable(field: list[str | int], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field and the reason."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": field, "msg": message, "type": kind}]
    )
