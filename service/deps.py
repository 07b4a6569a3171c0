"""Request dependencies: settings, store and the authenticated caller, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from service.auth import Principal, authenticate
from service.settings import Settings
from service.store import Store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
) -> Principal:
    principal = authenticate(request.app.state.settings, request.app.state.key_hashes, authorization)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def unprocessable(field: list[str | int], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field and the reason."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         detail=[{"loc": field, "msg": message, "type": kind}])
