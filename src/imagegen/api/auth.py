"""FastAPI dependencies: the runtime, and the caller's principal from its bearer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from imagegen.http import ADMIN, Principal, principal_for
from imagegen.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    authorization = request.headers.get("authorization")
    return await run_in_threadpool(principal_for, runtime.storage, runtime.settings, authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]

__all__ = ["ADMIN", "AdminDep", "Principal", "PrincipalDep", "RuntimeDep"]
