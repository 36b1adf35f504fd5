"""Admin routes (admin key only): create users and move credits with a reason."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from imagegen import service
from imagegen.api.auth import AdminDep, RuntimeDep
from imagegen.api.case_study import ledger_entry
from imagegen.clock import utcnow

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    userId: str = Field(min_length=1, max_length=128, examples=["alice"])  # noqa: N815
    credits: int = Field(0, ge=0, le=1_000_000_000)


class CreditMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int = Field(ge=-1_000_000_000, le=1_000_000_000, description="> 0 grants; < 0 adjusts down")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/users", status_code=201, summary="Create a user (prints its API key once)")
async def create_user(body: NewUser, runtime: RuntimeDep, _admin: AdminDep) -> JSONResponse:
    user, key = await run_in_threadpool(
        service.create_user, runtime.storage, body.userId, body.credits, utcnow()
    )
    payload = {"id": user.id, "credits": user.credits, "apiKey": key}
    return JSONResponse(payload, status_code=201, headers={"Location": f"/v1/users/{user.id}"})


@router.post("/users/{user_id}/credits", status_code=201, summary="Grant credits or adjust them down")
async def move_credits(
    user_id: str, body: CreditMove, runtime: RuntimeDep, _admin: AdminDep
) -> dict[str, Any]:
    entry = await run_in_threadpool(
        service.move_credits, runtime.storage, user_id, body.amount, body.reason, utcnow()
    )
    return ledger_entry(entry)
