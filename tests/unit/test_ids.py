"""Ids: Firestore's shape, ordered by creation time (so they append to indexes), still unguessable."""

from __future__ import annotations

import random
import re

from imagegen.domain.ids import _base62, new_id, random_id

SHAPE = re.compile(r"[0-9A-Za-z]{20}")


def test_ids_made_one_after_another_sort_in_the_order_they_were_made() -> None:
    ids = [new_id() for _ in range(2000)]
    assert all(SHAPE.fullmatch(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_in_the_same_microsecond_differ_in_their_random_part() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert len({i[9:] for i in ids}) == 10_000  # 11 random characters each


def test_random_ids_and_short_ids_have_no_order() -> None:
    ids = [random_id() for _ in range(200)]
    assert all(SHAPE.fullmatch(i) for i in ids)
    assert ids != sorted(ids)
    short = [new_id(6) for _ in range(200)]
    assert all(re.fullmatch(r"[0-9A-Za-z]{6}", i) for i in short) and short != sorted(short)


def test_the_digits_of_an_id_are_its_number_in_base_62_most_significant_first() -> None:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    rng = random.Random(7)
    for digits in (1, 2, 9, 11, 20):
        for number in [0, 62**digits - 1, *(rng.randrange(62**digits) for _ in range(200))]:
            text = _base62(number, digits)
            assert len(text) == digits
            assert sum(alphabet.index(c) * 62**i for i, c in enumerate(reversed(text))) == number
