"""Random histories of creates, claims, completions, failures, cancels and credit moves keep the ledger
invariants of DESIGN.md (1, 2, 3 and 5), checked against a plain-Python model after every step.

Hypothesis drives the storage port (SQLite) as the service layer and the workers do, each machine on
an event loop of its own (Hypothesis's state machines are synchronous). A fresh database per example
is a copy of one migrated template, which is much faster than migrating.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from imagegen.clock import utcnow
from imagegen.domain.errors import IdempotencyConflict, InsufficientCredits
from imagegen.domain.generation import Status
from imagegen.domain.ledger import EntryType
from imagegen.ports import Lease
from imagegen.storage.sql.adapter import SqlStorage
from tests.integration.builders import new_generation
from tests.support import load_initial_data

R = TypeVar("R")

USERS = {"testUser1": 100, "testUser2": 10}
COSTS = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
KEYS = [None, None, "retry-a", "retry-b"]  # half the creates carry no Idempotency-Key
LEASE = timedelta(seconds=30)


@dataclass
class Expected:
    """What the model says about one generation request."""

    user_id: str
    size: str
    status: Status
    worker: str | None = None

    @property
    def cost(self) -> int:
        return COSTS[self.size]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, template: Path, folder: Path) -> None:
        super().__init__()
        path = folder / f"example-{next(EXAMPLES)}.db"
        shutil.copyfile(template, path)
        self.loop = asyncio.new_event_loop()
        self.storage = SqlStorage(f"sqlite:///{path}")
        self.balances = dict(USERS)
        self.requests: dict[str, Expected] = {}
        self.order: list[str] = []  # creation order: the queue hands out the oldest pending first
        self.keys: dict[tuple[str, str], str] = {}  # (user, Idempotency-Key) -> request id
        self.now = utcnow()
        self.workers = count()

    def run(self, work: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(work)

    def tick(self) -> None:
        self.now += timedelta(seconds=1)

    def with_status(self, status: Status) -> list[str]:
        return [rid for rid in self.order if self.requests[rid].status is status]

    # -- rules --------------------------------------------------------------------------------
    @rule(user=st.sampled_from(sorted(USERS)), size=st.sampled_from(sorted(COSTS)), key=st.sampled_from(KEYS))
    def create_a_generation(self, user: str, size: str, key: str | None) -> None:
        self.tick()
        new = new_generation(user, size=size, created_at=self.now, key=key, fingerprint=f"{key}/{size}")
        seen = self.keys.get((user, key)) if key else None
        try:
            request, fresh = self.run(self.storage.debit_and_enqueue(new))
        except IdempotencyConflict:
            assert seen is not None and self.requests[seen].size != size
            return
        except InsufficientCredits:
            assert seen is None and self.balances[user] < COSTS[size]
            return
        if seen is not None:  # a retry: the first request, debited once
            assert (request.id, fresh) == (seen, False)
            assert self.requests[seen].size == size
            return
        assert fresh and request.cost == COSTS[size] and request.status is Status.PENDING
        assert self.balances[user] >= COSTS[size]
        self.balances[user] -= COSTS[size]
        self.requests[request.id] = Expected(user, size, Status.PENDING)
        self.order.append(request.id)
        if key:
            self.keys[(user, key)] = request.id

    @precondition(lambda self: self.with_status(Status.PENDING))
    @rule()
    def a_worker_claims_the_oldest_pending_job(self) -> None:
        self.claim()

    @precondition(lambda self: self.with_status(Status.PENDING))
    @rule()
    def a_worker_claims_the_oldest_pending_job_and_completes_it(self) -> None:
        self.complete(self.claim())

    @precondition(lambda self: self.with_status(Status.PENDING))
    @rule()
    def a_worker_claims_the_oldest_pending_job_and_fails_it(self) -> None:
        self.fail(self.claim())

    @precondition(lambda self: self.with_status(Status.RUNNING))
    @rule(data=st.data())
    def its_worker_completes_a_running_job(self, data: st.DataObject) -> None:
        self.complete(data.draw(st.sampled_from(self.with_status(Status.RUNNING))))

    @precondition(lambda self: self.with_status(Status.RUNNING))
    @rule(data=st.data())
    def its_worker_fails_a_running_job_and_refunds_it(self, data: st.DataObject) -> None:
        self.fail(data.draw(st.sampled_from(self.with_status(Status.RUNNING))))

    def claim(self) -> str:
        self.tick()
        worker = f"worker-{next(self.workers)}"
        claimed = self.run(self.storage.claim_job(Lease(worker, self.now + LEASE), self.now))
        assert claimed is not None and claimed.id == self.with_status(Status.PENDING)[0]
        assert claimed.status is Status.RUNNING
        self.requests[claimed.id].status = Status.RUNNING
        self.requests[claimed.id].worker = worker
        return claimed.id

    def complete(self, request_id: str) -> None:
        self.tick()
        expected = self.requests[request_id]
        assert not self.run(self.storage.complete(request_id, "a-late-worker", "/images/late.png", self.now))
        image = f"/images/{request_id}.png"
        assert self.run(self.storage.complete(request_id, str(expected.worker), image, self.now))
        expected.status = Status.COMPLETED

    def fail(self, request_id: str) -> None:
        self.tick()
        expected = self.requests[request_id]
        assert not self.run(
            self.storage.fail_and_refund(request_id, "late", self.now, worker_id="a-late-worker")
        )
        assert self.run(
            self.storage.fail_and_refund(request_id, "failed", self.now, worker_id=expected.worker)
        )
        expected.status = Status.FAILED
        self.balances[expected.user_id] += expected.cost

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def a_client_cancels_a_request(self, data: st.DataObject) -> None:
        self.tick()
        request_id = data.draw(st.sampled_from(self.order))
        expected = self.requests[request_id]
        if expected.status.terminal:
            assert not self.run(self.storage.cancel_and_refund(request_id, self.now))
            return
        # Pending or running (its worker's complete or fail then changes nothing): refunded once.
        assert self.run(self.storage.cancel_and_refund(request_id, self.now))
        canceled = self.run(self.storage.get_request(request_id))
        assert canceled is not None and canceled.status is Status.CANCELED
        expected.status = Status.CANCELED
        self.balances[expected.user_id] += expected.cost

    @precondition(lambda self: any(r.status.terminal for r in self.requests.values()))
    @rule(data=st.data())
    def a_duplicate_delivery_of_a_finished_job_changes_nothing(self, data: st.DataObject) -> None:
        self.tick()
        finished = [rid for rid in self.order if self.requests[rid].status.terminal]
        request_id = data.draw(st.sampled_from(finished))
        worker = str(self.requests[request_id].worker)
        assert not self.run(self.storage.complete(request_id, worker, "/images/again.png", self.now))
        assert not self.run(self.storage.fail_and_refund(request_id, "again", self.now, worker_id=worker))
        assert not self.run(self.storage.fail_and_refund(request_id, "again", self.now))
        assert not self.run(self.storage.cancel_and_refund(request_id, self.now))

    @rule(user=st.sampled_from(sorted(USERS)), amount=st.integers(1, 50))
    def an_operator_grants_credits(self, user: str, amount: int) -> None:
        self.tick()
        entry = self.run(self.storage.move_credits(user, EntryType.GRANT, amount, "goodwill", self.now))
        self.balances[user] += amount
        assert (entry.type.value, entry.credits, entry.balance_after) == (
            "grant",
            amount,
            self.balances[user],
        )

    @rule(user=st.sampled_from(sorted(USERS)), amount=st.integers(1, 60))
    def an_operator_adjusts_credits_down(self, user: str, amount: int) -> None:
        self.tick()
        try:
            move = self.storage.move_credits(user, EntryType.ADJUSTMENT, -amount, "chargeback", self.now)
            entry = self.run(move)
        except InsufficientCredits:
            assert self.balances[user] < amount
            return
        self.balances[user] -= amount
        assert (entry.type.value, entry.credits, entry.balance_after) == (
            "adjustment",
            -amount,
            self.balances[user],
        )

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def the_audit_finds_nothing(self) -> None:
        assert self.run(self.storage.violations()) == []

    @invariant()
    def every_balance_is_the_models_and_never_negative(self) -> None:
        for user_id, expected in self.balances.items():
            user = self.run(self.storage.get_user(user_id))
            assert user is not None and user.credits == expected >= 0
            assert sum(self.run(self.storage.ledger_totals(user_id)).values()) == expected

    @invariant()
    def every_request_has_the_models_status(self) -> None:
        page = self.run(self.storage.list_requests(None, None, 500, None))
        assert {r.id: r.status for r in page.items} == {rid: e.status for rid, e in self.requests.items()}

    def teardown(self) -> None:
        self.run(self.storage.close())
        self.loop.close()


EXAMPLES = count()


async def _migrated_with_initial_data(url: str) -> None:
    storage = SqlStorage(url)
    await storage.migrate()
    assert await load_initial_data(storage)
    await storage.close()  # the last connection closing checkpoints the WAL into the file we copy


def test_random_histories_of_creates_cancels_grants_and_completions_keep_the_ledger_invariants(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template.db"
    asyncio.run(_migrated_with_initial_data(f"sqlite:///{template}"))

    class OnAFreshCopy(LedgerMachine):
        def __init__(self) -> None:
            super().__init__(template, tmp_path)

    run_state_machine_as_test(
        OnAFreshCopy,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
