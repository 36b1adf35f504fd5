"""FastAPI dependencies: the runtime, and the caller's principal from its bearer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from imagegen.api.inputs import cached_principal, principal_for
from imagegen.runtime import Runtime
from imagegen.service.keys import ADMIN, Principal


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    principal = await principal_for(runtime.storage, runtime.settings, request.headers.get("authorization"))
    runtime.key_uses.seen(principal.key_id)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def creating_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller of a create, from the process's key cache (checked by the debit, see
    service/config_cache.py)."""
    principal = await cached_principal(runtime.config, runtime.settings, request.headers.get("authorization"))
    runtime.key_uses.seen(principal.key_id)
    return principal


CreatingPrincipalDep = Annotated[Principal, Depends(creating_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]

__all__ = ["ADMIN", "AdminDep", "CreatingPrincipalDep", "Principal", "PrincipalDep", "RuntimeDep"]
