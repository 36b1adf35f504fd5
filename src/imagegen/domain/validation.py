"""Validation of a client's generation request against the catalog, before anything is written.

Only the known fields are read; anything else in the body is ignored (never stored), so a client can
never set a request's cost, status or id.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from imagegen.domain.catalog import Catalog, size_order
from imagegen.domain.errors import InvalidPrices
from imagegen.domain.generation import ID_RULE, WEBHOOK_EVENTS, GenerationSpec, valid_id
from imagegen.domain.webhooks import url_problem

REQUIRED = ("userId", "model", "style", "color", "size")
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_CURSOR_LENGTH = 512
# Characters some backend cannot store: PostgreSQL's text refuses NUL (SQLite and Firestore keep
# it). Refused alike everywhere, so that no backend answers differently (or 500) for the same input.
# Lone surrogates cannot be stored either; they are refused where the JSON is read.
UNSTORABLE = ("\x00",)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    allowed: tuple[str, ...] = ()
    missing: bool = False


class InvalidGeneration(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(summary(problems))


def summary(problems: list[Problem]) -> str:
    missing = [p.field for p in problems if p.missing]
    others = [p.message for p in problems if not p.missing]
    head = [f"Missing required fields: [{', '.join(missing)}]"] if missing else []
    return "; ".join(head + others)


def parse_generation(body: object, catalog: Catalog, *, max_prompt_length: int) -> GenerationSpec:
    """The request's spec, or InvalidGeneration listing every problem at once."""
    if not isinstance(body, Mapping):
        raise InvalidGeneration([Problem("body", "Request body must be a JSON object")])
    allowed = catalog.allowed
    problems = [
        Problem(name, f"Field '{name}' is required", allowed.get(name, ()), missing=True)
        for name in REQUIRED
        if body.get(name) in (None, "")
    ]
    problems += _type_problems(body)
    problems += _value_problems(body, allowed, max_prompt_length)
    if problems:
        raise InvalidGeneration(problems)
    return GenerationSpec(
        user_id=body["userId"],
        model=body["model"],
        style=body["style"],
        color=body["color"],
        size=body["size"],
        prompt=body.get("prompt") or "",
    )


def _type_problems(body: Mapping[str, object]) -> list[Problem]:
    return [
        Problem(name, f"Field '{name}' must be a string")
        for name in (*REQUIRED, "prompt")
        if body.get(name) not in (None, "") and not isinstance(body[name], str)
    ]


def _present(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) and value else None


def text_problem(name: str, value: str) -> str | None:
    """Why a client's free text cannot be stored, or None (the same rule on every backend)."""
    if any(c in value for c in UNSTORABLE):
        return f"{name} contains a NUL character (U+0000), which cannot be stored"
    return None


def bounded_int(text: str, low: int, high: int) -> int | None:
    """`text` as an integer in [low, high], or None: ASCII digits only, their count bounded before
    the conversion (Python refuses to convert more than 4,300 digits, and would take time on fewer)."""
    digits = text.removeprefix("-") if low < 0 else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(max(abs(low), abs(high)))):
        return None
    value = int(text)
    return value if low <= value <= high else None


def idempotency_key_problem(key: str) -> str | None:
    """Why an Idempotency-Key header is refused, or None: 1-255 visible ASCII characters and spaces."""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        return f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters"
    return None


def cursor_problem(cursor: str) -> str | None:
    """Why a page cursor is refused before any adapter reads it: cursors are imagegen's own,
    short, visible ASCII (each adapter then checks its own format)."""
    if not 1 <= len(cursor) <= MAX_CURSOR_LENGTH or not all("!" <= c <= "~" for c in cursor):
        return f"Invalid cursor '{cursor[:80]}'"
    return None


def _value_problems(
    body: Mapping[str, object], allowed: dict[str, tuple[str, ...]], max_prompt_length: int
) -> list[Problem]:
    problems = []
    user_id = _present(body, "userId")
    if user_id is not None and not valid_id(user_id):
        problems.append(Problem("userId", f"Invalid userId '{_shown(user_id)}': {ID_RULE}"))
    prompt = _present(body, "prompt") or ""
    if len(prompt) > max_prompt_length:
        problems.append(
            Problem("prompt", f"Prompt is {len(prompt)} characters; the limit is {max_prompt_length}")
        )
    elif problem := text_problem("prompt", prompt):
        problems.append(Problem("prompt", problem))
    for name, values in allowed.items():
        value = _present(body, name)
        if value is not None and value not in values:
            message = f"Invalid {name} '{_shown(value)}'. Valid values: {', '.join(values)}"
            problems.append(Problem(name, message, values))
    return problems


def _shown(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def parse_webhook(body: Mapping[str, object], *, allow_private: bool) -> tuple[str | None, frozenset[str]]:
    """The optional `webhook` URL and `webhookEvents` (default: completed) of a generation request."""
    url, events = body.get("webhook"), body.get("webhookEvents")
    if url is None:
        if events:
            raise InvalidGeneration([Problem("webhookEvents", "webhookEvents needs a webhook URL")])
        return None, frozenset()
    if not isinstance(url, str):
        raise InvalidGeneration([Problem("webhook", "Field 'webhook' must be a string")])
    problem = url_problem(url, allow_private=allow_private)
    if problem:
        raise InvalidGeneration([Problem("webhook", problem)])
    if events is None:
        return url, frozenset({"completed"})
    if not isinstance(events, list) or not all(isinstance(e, str) and e in WEBHOOK_EVENTS for e in events):
        allowed = ", ".join(WEBHOOK_EVENTS)
        message = f"webhookEvents must be a list of: {allowed}"
        raise InvalidGeneration([Problem("webhookEvents", message, WEBHOOK_EVENTS)])
    return url, frozenset(events)


MAX_PRICE = 1_000_000  # credits, as a size's cost
SIZE_NAME = re.compile(r"[1-9][0-9]{0,3}x[1-9][0-9]{0,3}")


def parse_prices(model: str, data: object, sizes: Collection[str] | None) -> dict[str, int]:
    """A model's own prices `{size: credits}`, each a catalog size and a positive whole number of
    credits, or InvalidPrices listing every problem. `{}` leaves every size at its cost.

    `sizes` None (an import, whose file carries no sizes) takes any WIDTHxHEIGHT."""
    if not isinstance(data, Mapping):
        raise InvalidPrices(
            f"Invalid prices for model '{model}'",
            model=model,
            problems=[Problem("prices", "must be an object {size: credits}")],
        )
    problems = []
    allowed = tuple(sorted(sizes, key=size_order)) if sizes is not None else ()
    for size, credits in data.items():
        if sizes is not None and size not in sizes:
            problems.append(Problem(f"prices.{size}", "not a catalog size", allowed))
        elif sizes is None and not (isinstance(size, str) and SIZE_NAME.fullmatch(size)):
            problems.append(Problem(f"prices.{size}", "not a size like 1024x1024"))
        # bool is an int in Python, not in JSON: true is not a price.
        if isinstance(credits, bool) or not isinstance(credits, int) or not 1 <= credits <= MAX_PRICE:
            problems.append(Problem(f"prices.{size}", f"must be a whole number of credits, 1 to {MAX_PRICE}"))
    if problems:
        raise InvalidPrices(f"Invalid prices for model '{model}'", model=model, problems=problems)
    return {str(size): int(credits) for size, credits in data.items()}
