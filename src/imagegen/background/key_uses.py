"""Writes the keys this process saw used, once per interval (see service/key_uses.py)."""

from __future__ import annotations

import asyncio

from imagegen.ports import Keys
from imagegen.service.key_uses import KeyUses


async def record_key_uses(uses: KeyUses, storage: Keys, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await uses.flush(storage)
