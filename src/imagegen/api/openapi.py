"""The OpenAPI document: FastAPI's, completed with what the routes check by hand.

The busiest routes read their parameters themselves (each FastAPI parameter costs time on every
request) and the error statuses every route shares are answered in one place (api/errors.py and
the body middleware), so FastAPI cannot see them. This fills them in, in one place: the bearer
security scheme on every route that needs a key, each parameter's type and bounds (a page size's
maximum is a setting), and the statuses every route of a kind can answer, each with its body.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imagegen.domain.generation import ID_PATTERN, Status
from imagegen.domain.ledger import EntryType
from imagegen.domain.validation import MAX_CURSOR_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH
from imagegen.settings import Settings

PUBLIC = {"/healthz", "/readyz", "/images/{image_id}.png"}  # no key needed
BEARER = {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "An imagegen API key (ig_...)"}}
ID = {"type": "string", "pattern": ID_PATTERN.pattern, "minLength": 1, "maxLength": 128}
CASE_STUDY_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, in the case study's phrases"},
        "code": {"type": "string", "description": "Stable, for programs to branch on"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "Each bad field"},
    },
}
PROBLEM = {"$ref": "#/components/schemas/ProblemDetail"}
SHARED_STATUSES = {
    401: "No API key, or an unknown or revoked one",
    403: "The key may not act on this user, or the route needs an admin key",
    413: "Request body too large",
    503: "The database is unavailable; retry",
}


def install(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = complete(document, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(BEARER)
    components.setdefault("schemas", {})["CaseStudyError"] = CASE_STUDY_ERROR
    schemas = parameter_schemas(settings)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            _declare_path_parameters(operation, path)
            for parameter in operation.get("parameters", []):
                if parameter["name"] in schemas:
                    parameter["schema"] = schemas[parameter["name"]]
                if parameter["in"] == "path":
                    parameter["schema"] = schemas.get(parameter["name"], ID)
            if path not in PUBLIC:
                operation["security"] = [{"bearerAuth": []}]
                _shared_statuses(operation, path, method)
    return document


def _declare_path_parameters(operation: dict[str, Any], path: str) -> None:
    """Path parameters no handler takes (the case study's /{project}/{region}/... prefix)."""
    declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
    for name in re.findall(r"{([^}]+)}", path):
        if name not in declared:
            operation.setdefault("parameters", []).append({"name": name, "in": "path", "required": True})


def parameter_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each parameter the routes read by hand, typed with the bounds they enforce."""
    return {
        "limit": {"type": "integer", "minimum": 1, "maximum": settings.max_page_size},
        "cursor": {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LENGTH, "pattern": "^[!-~]+$"},
        "Idempotency-Key": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
            "pattern": "^[ -~]+$",
        },
        "Prefer": {"type": "string", "description": "wait=N: answer when done, N ≤ 60"},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "type": {"type": "array", "items": {"type": "string", "enum": [t.value for t in EntryType]}},
        "userId": ID,
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "week": {"type": "string", "pattern": "^[0-9]{4}-W[0-9]{2}$", "examples": ["2026-W47"]},
        "kind": {"type": "string", "enum": ["styles", "colors", "sizes"]},
        "project": {"type": "string", "minLength": 1, "examples": ["demo-case-study"]},
        "region": {"type": "string", "minLength": 1, "examples": ["us-central1"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
    }


def _shared_statuses(operation: dict[str, Any], path: str, method: str) -> None:
    case_study = not path.startswith("/v1")
    media, schema = ("application/problem+json", PROBLEM)
    if case_study:
        media, schema = "application/json", {"$ref": "#/components/schemas/CaseStudyError"}
    responses = operation.setdefault("responses", {})
    if case_study:
        responses.pop("422", None)  # FastAPI's default: the case-study routes answer 400 instead
    statuses = dict(SHARED_STATUSES)
    if method in ("get", "delete"):
        statuses.pop(413)
    statuses[400 if case_study else 422] = "Invalid input; the message (and `errors`) say what"
    for status, description in statuses.items():
        responses.setdefault(str(status), {"description": description})
    for status, entry in responses.items():
        if int(status) >= 400:  # every error of a route family has that family's body
            entry["content"] = {media: {"schema": schema}}
