"""API keys: issued (shown once, stored hashed), authenticated, and who a key lets act."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from imagegen.domain.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from imagegen.domain.generation import ID_RULE, valid_id
from imagegen.domain.ids import new_id
from imagegen.domain.keys import ApiKey
from imagegen.ports import Keys

KEY_PREFIX = "ig_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user key acts only on its own user; an admin key (user_id None) on all."""

    user_id: str | None
    key_hash: str | None = field(default=None, compare=False, repr=False)  # None with --no-auth
    key_id: str | None = field(default=None, compare=False)  # None with --no-auth

    @property
    def is_admin(self) -> bool:
        return self.user_id is None

    def may_act_for(self, user_id: str) -> None:
        if not self.is_admin and user_id != self.user_id:
            raise Forbidden("This API key may only act on its own user", userId=user_id)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This route needs an admin key")


ADMIN = Principal(None)
MISSING_KEY = "Missing API key: send 'Authorization: Bearer <key>'"
UNKNOWN_KEY = "Unknown or revoked API key"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is as safe as a slow one and costs nothing per call.
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: its id (to list and revoke it by) and the key itself, shown only now."""

    id: str
    key: str = field(repr=False)
    user_id: str | None = None


async def issue_key(storage: Keys, user_id: str | None, now: datetime) -> IssuedKey:
    """A new key for a user (or an admin key for None)."""
    key = new_key()
    stored = await storage.add_api_key(new_id(), hash_key(key), user_id, now)
    return IssuedKey(stored.id, key, user_id)


async def list_keys(storage: Keys, user_id: str | None) -> list[ApiKey]:
    """A user's keys (revoked ones too), oldest first; None: every key, admin keys included."""
    return await storage.list_api_keys(user_id)


async def revoke_key(storage: Keys, key_id: str, now: datetime) -> None:
    """Revokes a key at once, on every process: the revocation changes the configuration version,
    which every cached create checks in its own transaction (service/config_cache.py)."""
    if not valid_id(key_id):
        raise InvalidInput(f"Invalid key id '{key_id[:80]}': {ID_RULE}")
    if not await storage.revoke_api_key(key_id, now):
        raise NotFound("No active key with this id", keyId=key_id)


async def authenticate(storage: Keys, key: str | None) -> ApiKey:
    if not key:
        raise Unauthenticated(MISSING_KEY)
    return await authenticate_hash(storage, hash_key(key))


async def authenticate_hash(storage: Keys, key_hash: str) -> ApiKey:
    """The active key with this hash (the console's session keeps the hash, never the key)."""
    found = await storage.find_api_key(key_hash)
    if found is None:
        raise Unauthenticated(UNKNOWN_KEY)
    return found
