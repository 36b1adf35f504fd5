"""Random document ids in Firestore's style: 20 characters from [A-Za-z0-9], 119 bits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 20) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
