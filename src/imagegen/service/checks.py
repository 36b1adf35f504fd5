"""The input rules several use cases share: ids, cursors, Idempotency-Keys."""

from __future__ import annotations

from imagegen.domain.errors import InvalidInput
from imagegen.domain.generation import ID_RULE, valid_id
from imagegen.domain.validation import cursor_problem, idempotency_key_problem


def check_user_id(user_id: str) -> str:
    if not valid_id(user_id):
        raise InvalidInput(f"Invalid userId '{user_id[:80]}': {ID_RULE}")
    return user_id


def check_idempotency_key(key: str | None) -> None:
    """The same rule for the Idempotency-Key of every route that takes one (an empty one included)."""
    problem = None if key is None else idempotency_key_problem(key)
    if problem:
        raise InvalidInput(problem)


def check_cursor(cursor: str | None) -> None:
    problem = None if cursor is None else cursor_problem(cursor)
    if problem:
        raise InvalidInput(problem)
