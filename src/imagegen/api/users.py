"""/v1/users: a user's balance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from imagegen import service
from imagegen.api.auth import PrincipalDep, RuntimeDep

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.get("/{user_id}", summary="A user's balance")
async def get_user(user_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    service.check_user_id(user_id)
    principal.may_act_for(user_id)
    user = await run_in_threadpool(service.get_user, runtime.storage, user_id)
    return {
        "id": user.id,
        "credits": user.credits,
        "createdAt": user.created_at.isoformat().replace("+00:00", "Z"),
    }
