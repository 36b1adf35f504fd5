"""Random document ids in Firestore's style: 20 characters from [A-Za-z0-9], 119 bits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_BASE = len(_ALPHABET)


def new_id(length: int = 20) -> str:
    # One draw for the whole id, written in base 62: uniform like a choice per character, but one
    # call into the OS's randomness instead of twenty (this runs several times per generation).
    number = secrets.randbelow(_BASE**length)
    characters = []
    for _ in range(length):
        number, digit = divmod(number, _BASE)
        characters.append(_ALPHABET[digit])
    return "".join(characters)
