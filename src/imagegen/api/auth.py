"""API keys as bearer tokens; a user key acts only on its own user, an admin key on all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from imagegen import service
from imagegen.errors import Forbidden
from imagegen.runtime import Runtime


@dataclass(frozen=True)
class Principal:
    user_id: str | None  # None: admin

    @property
    def is_admin(self) -> bool:
        return self.user_id is None

    def may_act_for(self, user_id: str) -> None:
        if not self.is_admin and user_id != self.user_id:
            raise Forbidden("This API key may only act on its own user", userId=user_id)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This route needs an admin key")


ADMIN = Principal(None)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    if runtime.settings.no_auth:
        return ADMIN
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    token = key.strip() if scheme.lower() == "bearer" else None
    found = await run_in_threadpool(service.authenticate, runtime.storage, token)
    return Principal(found.user_id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
