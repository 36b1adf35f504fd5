"""/v1/users: a user's balance with totals, and the ledger with filters and cursor pages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from imagegen import service
from imagegen.api.answers import ledger_entry
from imagegen.api.auth import PrincipalDep, RuntimeDep
from imagegen.api.common import page_size
from imagegen.api.errors import documented
from imagegen.api.inputs import instant
from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import iso
from imagegen.domain.ledger import EntryType, LedgerFilter

router = APIRouter(prefix="/v1/users", tags=["users"], responses=documented(401, 403, 404, 422))


class Totals(BaseModel):
    granted: int
    deducted: int
    refunded: int
    adjusted: int


class UserOut(BaseModel):
    id: str
    credits: int
    createdAt: str  # noqa: N815
    totals: Totals


class Entry(BaseModel):
    id: str
    type: str
    credits: int
    generationRequestId: str | None  # noqa: N815
    reason: str | None
    balanceAfter: int | None  # noqa: N815
    timestamp: str


class EntryPage(BaseModel):
    items: list[Entry]
    nextCursor: str | None  # noqa: N815


@router.get("/{user_id}", response_model=UserOut, summary="A user's balance and lifetime totals")
async def get_user(user_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    service.check_user_id(user_id)
    principal.may_act_for(user_id)
    user, totals = await service.user_totals(runtime.storage, user_id)
    return {
        "id": user.id,
        "credits": user.credits,
        "createdAt": iso(user.created_at),
        "totals": {
            "granted": totals.get(EntryType.GRANT, 0),
            "deducted": -totals.get(EntryType.DEDUCTION, 0),
            "refunded": totals.get(EntryType.REFUND, 0),
            "adjusted": totals.get(EntryType.ADJUSTMENT, 0),
        },
    }


@router.get("/{user_id}/transactions", response_model=EntryPage, summary="The ledger, newest first")
async def transactions(
    user_id: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    type: Annotated[list[str] | None, Query(description="deduction, refund, grant, adjustment")] = None,  # noqa: A002
    since: Annotated[str | None, Query(description="ISO 8601 with a zone, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 with a zone, exclusive")] = None,
    limit: str | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    service.check_user_id(user_id)
    principal.may_act_for(user_id)
    where = LedgerFilter(
        types=_types(type or []), since=instant(since, "since"), until=instant(until, "until")
    )
    page = await service.ledger_page(
        runtime.storage,
        user_id,
        limit=page_size(limit, runtime),
        cursor=cursor or None,
        where=where,
    )
    return {"items": [ledger_entry(e) for e in page.items], "nextCursor": page.next_cursor}


def _types(values: list[str]) -> frozenset[EntryType]:
    try:
        return frozenset(EntryType(v) for value in values for v in value.split(",") if v)
    except ValueError as exc:
        allowed = ", ".join(e.value for e in EntryType)
        raise InvalidInput(f"Invalid type: valid values are {allowed}") from exc
