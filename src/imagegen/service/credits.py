"""Users and their credits: created with an opening grant, read with their ledger, granted to."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from imagegen.domain.errors import InvalidInput, UserNotFound
from imagegen.domain.ledger import EntryType, LedgerEntry, LedgerFilter
from imagegen.domain.paging import Page
from imagegen.domain.users import User
from imagegen.domain.validation import text_problem
from imagegen.ports import Credits, Keys
from imagegen.service.checks import check_cursor, check_idempotency_key, check_user_id
from imagegen.service.keys import IssuedKey, issue_key


class CreditsAndKeys(Credits, Keys, Protocol):
    """A new user gets a key along with its balance."""


async def get_user(storage: Credits, user_id: str) -> User:
    user = await storage.get_user(check_user_id(user_id))
    if user is None:
        raise UserNotFound(user_id)
    return user


async def get_credits(
    storage: Credits, user_id: str, *, limit: int, cursor: str | None
) -> tuple[User, Page[LedgerEntry]]:
    check_cursor(cursor)
    user = await get_user(storage, user_id)
    return user, await storage.ledger(user_id, limit, cursor)


async def create_user(
    storage: CreditsAndKeys, user_id: str, credits: int, now: datetime
) -> tuple[User, IssuedKey]:
    """Creates a user with an opening grant and returns the user's new API key, with its id."""
    check_user_id(user_id)
    if credits < 0:
        raise InvalidInput("credits must be 0 or more")
    user = await storage.create_user(user_id, credits, now)
    return user, await issue_key(storage, user_id, now)


async def move_credits(
    storage: Credits,
    user_id: str,
    amount: int,
    reason: str,
    now: datetime,
    *,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """A grant (amount > 0) or a negative adjustment, which never takes the balance below 0."""
    check_user_id(user_id)
    if amount == 0:
        raise InvalidInput("amount must not be 0")
    if not reason.strip():
        raise InvalidInput("reason must not be empty")
    problem = text_problem("reason", reason)
    if problem:
        raise InvalidInput(problem)
    check_idempotency_key(idempotency_key)
    entry_type = EntryType.GRANT if amount > 0 else EntryType.ADJUSTMENT
    return await storage.move_credits(user_id, entry_type, amount, reason.strip(), now, idempotency_key)


async def user_totals(storage: Credits, user_id: str) -> tuple[User, dict[EntryType, int]]:
    user = await get_user(storage, user_id)
    return user, await storage.ledger_totals(user_id)


async def ledger_page(
    storage: Credits, user_id: str, *, limit: int, cursor: str | None, where: LedgerFilter
) -> Page[LedgerEntry]:
    check_cursor(cursor)
    await get_user(storage, user_id)
    return await storage.ledger(user_id, limit, cursor, where)
