from __future__ import annotations

import pytest

from imagegen.domain.catalog import Catalog, ModelSettings
from imagegen.domain.generation import Status, can_move, valid_id
from imagegen.domain.ledger import EntryType, LedgerEntry, signed_delta
from imagegen.domain.validation import InvalidGeneration, parse_generation

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
    assert not can_move(Status.COMPLETED, Status.FAILED) and not can_move(Status.RUNNING, Status.CANCELED)
    assert {s for s in Status if s.terminal} == {Status.COMPLETED, Status.FAILED, Status.CANCELED}


def test_ledger_credits_are_magnitudes_except_for_adjustments() -> None:
    assert signed_delta(EntryType.DEDUCTION, 3) == -3 and signed_delta(EntryType.REFUND, 3) == 3
    assert signed_delta(EntryType.ADJUSTMENT, -2) == -2
    entry = LedgerEntry("e", "u", EntryType.DEDUCTION, -3, 7, "r", None, None)  # type: ignore[arg-type]
    assert entry.credits == 3
