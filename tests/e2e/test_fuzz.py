"""Schemathesis fuzzes every route of the running server from its OpenAPI document.

With an admin key and with a user key, each operation gets a bounded number of generated requests,
valid ones (that fit the document) and invalid ones; the test fails on any 5xx and on any answer
the document does not describe (status, content type, headers, body schema), listing every
operation that failed. Bounded in time: a few examples per operation, no shrinking.

(Schemathesis's own pytest plugin needs a pytest private attribute that pytest 9 no longer has, so
the operations are driven here with Hypothesis directly; the checks are Schemathesis's.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Server

# No 5xx, and every answer as documented; an endpoint that needs a key refuses a request without.
# Not Schemathesis's acceptance checks: "schema-valid data is accepted" cannot hold for catalog
# values and cursors (data, not schema), and "unknown query parameters are refused" is not this
# API's rule (they are ignored, as FastAPI does).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 10, schemathesis.GenerationMode.NEGATIVE: 6}


# The module's server (tests/e2e/conftest.py):
SERVER_ENV = {"IMAGEGEN_WAIT_TIMEOUT_SECONDS": "1", "IMAGEGEN_REPORT_CATCH_UP_WEEKS": "1"}


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=[m.value for m in EXAMPLES])
@pytest.mark.parametrize("who", ["admin", "testUser1"])
def test_no_route_answers_a_5xx_or_anything_its_document_does_not_describe(
    api_schema: schemathesis.BaseSchema, server: Server, who: str, mode: schemathesis.GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {server.keys()[who]}"}
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

        try:
            fuzz()
        except Unsatisfiable:  # negative mode, an operation without parameters: nothing to negate
            continue
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all are reported
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())
