"""The OpenAPI document is valid and complete: what a generated client or /docs needs to call every route."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from imagegen.api.app import create_app
from imagegen.settings import Settings


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), max_page_size=150)
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def test_the_document_passes_an_openapi_validator(document: dict[str, Any]) -> None:
    validate(document)


def test_every_operation_has_its_own_operation_id(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def test_every_route_that_needs_a_key_says_so_with_a_bearer_scheme(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An imagegen API key (ig_...)",
    }
    for path, method, op in operations(document):
        public = path in ("/healthz", "/readyz", "/images/{image_id}.png")
        assert (op.get("security") == [{"bearerAuth": []}]) is not public, (method, path)
        if not public:
            assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), (method, path)


def test_parameters_carry_their_types_and_bounds(document: dict[str, Any]) -> None:
    seen = set()
    for _, _, op in operations(document):
        for parameter in op.get("parameters", []):
            schema, name = parameter["schema"], parameter["name"]
            seen.add(name)
            if name == "limit":
                assert schema == {"type": "integer", "minimum": 1, "maximum": 150}
            if name == "Idempotency-Key":
                assert (schema["minLength"], schema["maxLength"]) == (1, 255)
            if name == "cursor":
                assert schema["maxLength"] == 512
    assert {"limit", "cursor", "Idempotency-Key", "userId", "project", "region"} <= seen


def test_errors_are_described_with_their_bodies(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response.get("content"), (method, path, status)
        if not path.startswith("/v1") and path not in ("/healthz", "/readyz", "/images/{image_id}.png"):
            assert "422" not in op["responses"] and "400" in op["responses"], (method, path)
