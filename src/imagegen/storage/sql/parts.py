"""What every part of the SQL adapter shares: the engine, its transactions, the writer, the dialect.

The adapter (adapter.py) is one class made of one part per port concern (credits.py, catalog.py,
generations.py ...); each part's methods open their transactions from these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine

from imagegen.storage.sql.group_commit import GroupCommit
from imagegen.storage.sql.transactions import Transactions

if TYPE_CHECKING:
    from imagegen.storage.sql.dialects import Dialect


class SqlParts:
    engine: Engine
    tx: Transactions
    writes: GroupCommit
    dialect: Dialect
