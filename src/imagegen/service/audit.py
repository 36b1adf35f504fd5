"""The audit: every balance against its ledger, every request against its deduction and refunds."""

from __future__ import annotations

from imagegen.domain.audit import Violation
from imagegen.ports import Transfer


async def verify(storage: Transfer) -> list[Violation]:
    return await storage.violations()
