"""The ledger invariants of DESIGN.md checked in SQL (what `imagegen verify` reports)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, and_, case, func, select

from imagegen.domain.audit import Violation
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.storage.sql import tables as t
from imagegen.storage.sql.parts import SqlParts

gr = t.generation_requests


class SqlAudit(SqlParts):
    def violations(self) -> list[Violation]:
        with self.tx.read() as conn:
            return [*balance_violations(conn), *request_violations(conn), *orphan_entries(conn)]


def balance_violations(conn: Connection) -> Iterator[Violation]:
    ledger_sum = func.coalesce(func.sum(t.ledger.c.delta), 0)
    query = (
        select(t.users.c.id, t.users.c.credits, ledger_sum.label("ledger_sum"))
        .select_from(t.users.outerjoin(t.ledger, t.ledger.c.user_id == t.users.c.id))
        .group_by(t.users.c.id, t.users.c.credits)
        .having((t.users.c.credits != ledger_sum) | (t.users.c.credits < 0))
    )
    for row in conn.execute(query):
        if row.credits < 0:
            yield Violation(1, row.id, f"user {row.id} has a negative balance ({row.credits})")
        if row.credits != row.ledger_sum:
            yield Violation(
                1,
                row.id,
                f"user {row.id} has {row.credits} credits but the ledger sums to {row.ledger_sum}",
            )


def request_violations(conn: Connection) -> Iterator[Violation]:
    led = t.ledger
    is_deduction = led.c.type == EntryType.DEDUCTION.value
    is_refund = led.c.type == EntryType.REFUND.value
    deductions = func.sum(case((is_deduction, 1), else_=0))
    deducted = func.coalesce(func.sum(case((is_deduction, -led.c.delta), else_=0)), 0)
    refunds = func.sum(case((is_refund, 1), else_=0))
    refunded = func.coalesce(func.sum(case((is_refund, led.c.delta), else_=0)), 0)
    refund_expected = case((gr.c.status.in_([Status.FAILED.value, Status.CANCELED.value]), 1), else_=0)
    healthy = and_(
        deductions == 1,
        deducted == gr.c.cost,
        refunds == refund_expected,
        refunded == refund_expected * gr.c.cost,
    )
    history_only = and_(gr.c.source == "import", func.count(led.c.id) == 0)
    query = (
        select(
            gr.c.id,
            gr.c.status,
            gr.c.cost,
            deductions.label("deductions"),
            deducted.label("deducted"),
            refunds.label("refunds"),
            refunded.label("refunded"),
        )
        .select_from(gr.outerjoin(led, led.c.generation_request_id == gr.c.id))
        .group_by(gr.c.id, gr.c.status, gr.c.cost, gr.c.source)
        .having(~healthy & ~history_only)
    )
    for row in conn.execute(query):
        status = Status(row.status)
        invariant = 3 if row.deductions == 1 else 2
        want = "one refund" if status.refunded else "no refund"
        yield Violation(
            invariant,
            row.id,
            f"request {row.id} ({status.value}, cost {row.cost}) has {row.deductions or 0} deduction(s) "
            f"of {row.deducted} and {row.refunds or 0} refund(s) of {row.refunded}; "
            f"expected one deduction of {row.cost} and {want}",
        )


def orphan_entries(conn: Connection) -> Iterator[Violation]:
    led = t.ledger
    query = (
        select(led.c.id, led.c.type, led.c.generation_request_id)
        .select_from(led.outerjoin(gr, gr.c.id == led.c.generation_request_id))
        .where(
            led.c.type.in_([EntryType.DEDUCTION.value, EntryType.REFUND.value]),
            gr.c.id.is_(None),
        )
    )
    for row in conn.execute(query):
        yield Violation(
            2,
            row.id,
            f"{row.type} {row.id} points at request {row.generation_request_id}, which does not exist",
        )
