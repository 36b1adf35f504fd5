"""Many clients racing for the same credits: the balance is spent exactly once, never overdrawn."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.helpers import assert_verified, create_user, credits_of, request_count
from tests.support import GENERATION, ServerFactory

CALLS = 200
THREADS = 64
CREDITS = 50


def test_200_concurrent_creates_spend_exactly_the_balance_and_refuse_the_rest(
    servers: ServerFactory,
) -> None:
    # Rate and in-flight limits are not what this test is about: keep them out of the way.
    server = servers.start(IMAGEGEN_RATE_BURST_PER_USER="1000", IMAGEGEN_MAX_IN_FLIGHT_PER_USER="1000")
    key = create_user(server, "racer", CREDITS)
    body = {**GENERATION, "userId": "racer", "size": "512x512"}  # costs 1
    limits = httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS)

    with server.client(key, limits=limits) as client:

        def create(_: int) -> httpx.Response:
            return client.post("/createGenerationRequest", json=body)

        with ThreadPoolExecutor(THREADS) as pool:
            responses = list(pool.map(create, range(CALLS)))

        assert Counter(r.status_code for r in responses) == {200: CREDITS, 400: CALLS - CREDITS}
        completed = [r.json() for r in responses if r.status_code == 200]
        refused = [r.json() for r in responses if r.status_code == 400]
        assert {c["status"] for c in completed} == {"completed"}
        assert {c["deductedCredits"] for c in completed} == {1}
        assert len({c["generationRequestId"] for c in completed}) == CREDITS
        assert {r["error"] for r in refused} == {"Insufficient credits"}

        credits = credits_of(client, "racer")
    assert credits["currentCredits"] == 0
    types = Counter(t["type"] for t in credits["transactions"])
    assert types == {"grant": 1, "deduction": CREDITS}
    assert request_count(server.data_dir) == CREDITS
    assert_verified(server.data_dir)  # beside the running server: WAL lets it read
