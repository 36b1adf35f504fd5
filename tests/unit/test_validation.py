from __future__ import annotations

import pytest

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import Status, can_move, valid_id
from imagegen.domain.ledger import EntryType, LedgerEntry, signed_delta
from imagegen.domain.validation import (
    InvalidGeneration,
    bounded_int,
    cursor_problem,
    idempotency_key_problem,
    parse_generation,
    text_problem,
)

CATALOG = Catalog(
    models={"model-a": ModelSettings("model-a"), "model-b": ModelSettings("model-b", enabled=False)},
    styles=frozenset({"anime", "sketch"}),
    colors=frozenset({"vibrant"}),
    sizes={"512x512": 1, "1024x1024": 3},
)
BODY = {"userId": "u1", "model": "model-a", "style": "anime", "color": "vibrant", "size": "512x512"}


def problems_of(body: object, max_prompt_length: int = 100) -> list[str]:
    with pytest.raises(InvalidGeneration) as caught:
        parse_generation(body, CATALOG, max_prompt_length=max_prompt_length)
    return [p.message for p in caught.value.problems]


def test_a_valid_body_becomes_a_spec_and_unknown_fields_are_dropped() -> None:
    spec = parse_generation({**BODY, "cost": 0, "status": "completed"}, CATALOG, max_prompt_length=10)
    assert spec.user_id == "u1" and spec.prompt == ""
    assert not hasattr(spec, "cost") and not hasattr(spec, "status")


def test_missing_fields_are_listed_together_in_the_case_study_phrase() -> None:
    with pytest.raises(InvalidGeneration, match=r"Missing required fields: \[style, size\]"):
        parse_generation({**BODY, "style": None, "size": ""}, CATALOG, max_prompt_length=10)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert problems_of(["u1"]) == ["Request body must be a JSON object"]


def test_wrong_json_types_name_the_field() -> None:
    assert problems_of({**BODY, "model": ["model-a"], "prompt": 3}) == [
        "Field 'model' must be a string",
        "Field 'prompt' must be a string",
    ]


def test_an_unknown_value_names_it_and_lists_the_valid_ones() -> None:
    assert problems_of({**BODY, "size": "9x9"}) == ["Invalid size '9x9'. Valid values: 512x512, 1024x1024"]


def test_a_disabled_model_is_not_offered() -> None:
    assert problems_of({**BODY, "model": "model-b"}) == ["Invalid model 'model-b'. Valid values: model-a"]


def test_a_prompt_over_the_limit_is_refused() -> None:
    assert problems_of({**BODY, "prompt": "x" * 11}, max_prompt_length=10) == [
        "Prompt is 11 characters; the limit is 10"
    ]


@pytest.mark.parametrize("user_id", ["a/b", "a b", "x" * 129, ".", "..", "ü", "a\nb"])
def test_user_ids_outside_the_documented_characters_are_refused(user_id: str) -> None:
    assert not valid_id(user_id)
    assert problems_of({**BODY, "userId": user_id})[0].startswith("Invalid userId")


def test_the_lifecycle_allows_only_its_transitions() -> None:
    assert can_move(Status.PENDING, Status.RUNNING) and can_move(Status.PENDING, Status.CANCELED)
    assert can_move(Status.RUNNING, Status.PENDING)  # a dead worker's job goes back to the queue
    assert can_move(Status.RUNNING, Status.CANCELED)  # canceled while running: its worker stops
    assert not can_move(Status.COMPLETED, Status.FAILED) and not can_move(Status.COMPLETED, Status.CANCELED)
    assert not any(can_move(s, other) for s in Status if s.terminal for other in Status)
    assert {s for s in Status if s.terminal} == {Status.COMPLETED, Status.FAILED, Status.CANCELED}


def test_ledger_credits_are_magnitudes_except_for_adjustments() -> None:
    assert signed_delta(EntryType.DEDUCTION, 3) == -3 and signed_delta(EntryType.REFUND, 3) == 3
    assert signed_delta(EntryType.ADJUSTMENT, -2) == -2
    entry = LedgerEntry("e", "u", EntryType.DEDUCTION, -3, 7, "r", None, None)  # type: ignore[arg-type]
    assert entry.credits == 3


# -- bounds and characters every edge applies the same way ---------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", 1),
        ("200", 200),
        ("007", 7),
        ("0", None),
        ("201", None),
        ("9" * 5000, None),
        ("²", None),
        ("٣", None),
        ("-1", None),
        (" 5", None),
        ("5.0", None),
        ("", None),
        ("0x10", None),
    ],
)
def test_an_integer_is_bounded_before_it_is_converted(text: str, expected: int | None) -> None:
    assert bounded_int(text, 1, 200) == expected


@pytest.mark.parametrize(
    "key, ok",
    [
        ("order-1", True),
        ("x" * 255, True),
        ("", False),
        ("x" * 256, False),
        ("tab\tkey", False),
        ("nul\x00", False),
        ("ключ", False),
    ],
)
def test_an_idempotency_key_is_1_to_255_visible_ascii_characters(key: str, ok: bool) -> None:
    assert (idempotency_key_problem(key) is None) is ok


@pytest.mark.parametrize(
    "cursor, ok",
    [("123", True), ("MjAy-_=", True), ("", False), ("a b", False), ("a\x00", False), ("x" * 513, False)],
)
def test_a_cursor_is_short_visible_ascii_before_any_adapter_reads_it(cursor: str, ok: bool) -> None:
    assert (cursor_problem(cursor) is None) is ok


def test_nul_is_the_one_character_no_backend_may_be_sent() -> None:
    assert text_problem("prompt", "a\x01\x7f\uffff\U0010ffff") is None
    assert "NUL" in (text_problem("prompt", "a\x00b") or "")
    assert problems_of({**BODY, "prompt": "a\x00b"}) == [
        "prompt contains a NUL character (U+0000), which cannot be stored"
    ]
