"""FastAPI dependencies: the runtime, and the caller's principal from its bearer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from imagegen.domain.errors import Unauthenticated
from imagegen.http import ADMIN, Principal, bearer_token, principal_for
from imagegen.runtime import Runtime
from imagegen.service import hash_key


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    authorization = request.headers.get("authorization")
    return await run_in_threadpool(principal_for, runtime.storage, runtime.settings, authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def creating_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller of a create, from the process's key cache when it is there.

    A cached key is not taken on trust: the debit checks the configuration version that any
    revocation changes (see imagegen.config_cache), and the create is redone if it changed.
    """
    config = runtime.config
    if config is None or runtime.settings.no_auth:
        return await get_principal(request, runtime)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'")
    key_hash = hash_key(token)
    key = config.key(key_hash) or await run_in_threadpool(config.lookup, key_hash)
    if key is None:
        raise Unauthenticated("Unknown or revoked API key")
    return Principal(key.user_id, key_hash)


CreatingPrincipalDep = Annotated[Principal, Depends(creating_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]

__all__ = ["ADMIN", "AdminDep", "CreatingPrincipalDep", "Principal", "PrincipalDep", "RuntimeDep"]
