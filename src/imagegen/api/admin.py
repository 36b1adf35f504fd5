"""Admin routes (admin key only): users and their keys, credit moves, the catalog, webhook secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from imagegen import service
from imagegen.api.answers import ledger_entry
from imagegen.api.auth import AdminDep, RuntimeDep
from imagegen.api.catalog import CatalogOut, catalog_body
from imagegen.api.common import body_schema, json_body, strict_body
from imagegen.api.errors import documented
from imagegen.api.idempotency import idempotent
from imagegen.api.users import Entry
from imagegen.background.webhooks import signing_secret
from imagegen.clock import utcnow
from imagegen.domain.catalog import ModelSettings
from imagegen.domain.generation import iso
from imagegen.domain.keys import ApiKey
from imagegen.settings import Settings

# Answers that carry a key or a secret: no browser, proxy or CDN may keep a copy.
NO_STORE = {"Cache-Control": "no-store"}
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=documented(401, 403, 404, 409, 413, 422))


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    userId: str = Field(min_length=1, max_length=128, examples=["alice"])  # noqa: N815
    credits: int = Field(0, ge=0, le=1_000_000_000)


class CreditMove(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    amount: int = Field(ge=-1_000_000_000, le=1_000_000_000, description="> 0 grants; < 0 adjusts down")
    reason: str = Field(min_length=1, max_length=500)


class OptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool = True
    cost: int | None = Field(None, ge=1, le=1_000_000, description="Sizes only: the price in credits")


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    failureRate: float | None = Field(None, ge=0, le=1)  # noqa: N815
    latencyMs: int | None = Field(None, ge=0, le=600_000)  # noqa: N815
    enabled: bool | None = None


class DeploymentIn(BaseModel):
    engine: str = Field(examples=["comfyui"])
    settings: dict[str, Any] = Field(default_factory=dict, description="the engine's (docs/engines.md)")


class BindingIn(BaseModel):
    deployments: list[DeploymentIn] = Field(min_length=1, max_length=8)


PRICES_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    "examples": [{"1024x1024": 5}],
}


class NewUserOut(BaseModel):
    id: str
    credits: int
    apiKey: str = Field(description="Shown this once; stored hashed")  # noqa: N815
    keyId: str = Field(description="The key's id: to list it and revoke it by")  # noqa: N815


class IssuedKey(BaseModel):
    keyId: str  # noqa: N815
    apiKey: str = Field(description="Shown this once; stored hashed")  # noqa: N815


class QueueOut(BaseModel):
    model: str
    pending: int = Field(description="Jobs waiting for a worker")
    running: int = Field(description="Jobs a worker holds now")
    oldestPendingAt: str | None = Field(description="When the oldest waiting job was created")  # noqa: N815
    oldestPendingAgeSeconds: float | None = Field(description="How long it has waited")  # noqa: N815


class QueuesOut(BaseModel):
    at: str
    queues: list[QueueOut]


class KeyOut(BaseModel):
    id: str
    userId: str | None = Field(description="null: an admin key")  # noqa: N815
    createdAt: str  # noqa: N815
    lastUsedAt: str | None = Field(  # noqa: N815
        description="When a request last used it, up to IMAGEGEN_KEY_USE_INTERVAL_SECONDS behind"
    )
    revokedAt: str | None  # noqa: N815


class KeyPage(BaseModel):
    items: list[KeyOut]
    nextCursor: str | None = Field(description="Always null: a user's keys come in one page")  # noqa: N815


class SigningSecret(BaseModel):
    secret: str = Field(examples=["whsec_..."])


@router.post(
    "/users",
    status_code=201,
    response_model=NewUserOut,
    summary="Create a user (its API key is shown once)",
    openapi_extra=body_schema(NewUser),
)
async def create_user(
    request: Request,
    runtime: RuntimeDep,
    admin: AdminDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> JSONResponse:
    body = await strict_body(request, NewUser)

    async def run() -> JSONResponse:
        user, issued = await service.create_user(runtime.storage, body.userId, body.credits, utcnow())
        payload = {"id": user.id, "credits": user.credits, "apiKey": issued.key, "keyId": issued.id}
        headers = {"Location": f"/v1/users/{user.id}", **NO_STORE}
        return JSONResponse(payload, status_code=201, headers=headers)

    return await idempotent(request, runtime, admin, idempotency_key, body.model_dump(), run)


@router.post(
    "/users/{user_id}/credits",
    status_code=201,
    response_model=Entry,
    summary="Grant or adjust credits",
    responses=documented(402),
    openapi_extra=body_schema(CreditMove),
)
async def move_credits(
    user_id: str,
    request: Request,
    runtime: RuntimeDep,
    admin: AdminDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> JSONResponse:
    body = await strict_body(request, CreditMove)

    async def run() -> JSONResponse:
        entry = await service.move_credits(
            runtime.storage,
            user_id,
            body.amount,
            body.reason,
            utcnow(),
            idempotency_key=idempotency_key,
        )
        return JSONResponse(ledger_entry(entry), status_code=201)

    return await idempotent(request, runtime, admin, idempotency_key, body.model_dump(), run)


@router.post(
    "/users/{user_id}/keys",
    status_code=201,
    response_model=IssuedKey,
    summary="Issue another API key for a user",
)
async def issue_key(user_id: str, runtime: RuntimeDep, _admin: AdminDep) -> JSONResponse:
    await service.get_user(runtime.storage, user_id)
    issued = await service.issue_key(runtime.storage, user_id, utcnow())
    return JSONResponse({"keyId": issued.id, "apiKey": issued.key}, status_code=201, headers=NO_STORE)


@router.get(
    "/users/{user_id}/keys",
    response_model=KeyPage,
    summary="A user's API keys: ids, creation, last use, revocation (never the keys)",
)
async def list_user_keys(user_id: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    await service.get_user(runtime.storage, user_id)
    return {
        "items": [key_body(k) for k in await service.list_keys(runtime.storage, user_id)],
        "nextCursor": None,
    }


@router.get("/keys", response_model=KeyPage, summary="Every API key, admin keys included (never the keys)")
async def list_all_keys(runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    return {
        "items": [key_body(k) for k in await service.list_keys(runtime.storage, None)],
        "nextCursor": None,
    }


def key_body(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "userId": key.user_id,
        "createdAt": iso(key.created_at),
        "lastUsedAt": iso(key.last_used_at),
        "revokedAt": iso(key.revoked_at),
    }


@router.delete("/keys/{key_id}", status_code=204, summary="Revoke an API key at once, on every process")
async def revoke_key(key_id: str, runtime: RuntimeDep, _admin: AdminDep) -> Response:
    await service.revoke_key(runtime.storage, key_id, utcnow())
    return Response(status_code=204)


@router.put(
    "/catalog/{kind}/{name}",
    response_model=CatalogOut,
    summary="Add, reprice, enable or disable",
    openapi_extra=body_schema(OptionIn),
)
async def put_option(
    kind: str, name: str, request: Request, runtime: RuntimeDep, _admin: AdminDep
) -> dict[str, Any]:
    body = await strict_body(request, OptionIn)
    catalog = await service.set_option(runtime.storage, kind, name, enabled=body.enabled, cost=body.cost)
    return catalog_body(catalog, runtime.settings)


@router.put(
    "/models/{name}",
    summary="Set a model's failure rate, latency or enabled flag",
    openapi_extra=body_schema(ModelIn),
)
async def put_model(name: str, request: Request, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    body = await strict_body(request, ModelIn)
    model = await service.set_model(
        runtime.storage,
        name,
        failure_rate=body.failureRate,
        latency_ms=body.latencyMs,
        enabled=body.enabled,
    )
    return model_body(model, runtime.settings)


@router.get("/models/{name}", summary="A model's settings, binding and own prices")
async def get_model(name: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    return model_body(await service.model_settings(runtime.storage, name), runtime.settings)


@router.get("/models/{name}/deployments", summary="A model's binding ({deployments: []}: simulated)")
async def get_deployments(name: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    return binding_body(await service.model_settings(runtime.storage, name))


@router.put(
    "/models/{name}/deployments",
    summary="Bind a model to its deployments (validated: 422 lists every problem)",
    openapi_extra=body_schema(BindingIn),
)
async def put_deployments(
    name: str, request: Request, runtime: RuntimeDep, _admin: AdminDep
) -> dict[str, Any]:
    data = await json_body(request)
    model = await service.bind_model(runtime.storage, runtime.engines, name, data)
    return binding_body(model)


@router.delete("/models/{name}/deployments", summary="Unbind a model: it runs the simulated engine")
async def delete_deployments(name: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    return binding_body(await service.unbind_model(runtime.storage, name))


@router.get("/models/{name}/prices", summary="A model's own prices {size: credits}")
async def get_prices(name: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, int]:
    return dict((await service.model_settings(runtime.storage, name)).prices)


@router.put(
    "/models/{name}/prices",
    summary="Set a model's own prices, overriding its sizes' costs",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PRICES_SCHEMA}},
        }
    },
)
async def put_prices(name: str, request: Request, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, int]:
    data = await json_body(request)
    return dict((await service.set_prices(runtime.storage, name, data)).prices)


@router.delete("/models/{name}/prices", summary="Drop a model's own prices: its sizes' costs apply")
async def delete_prices(name: str, runtime: RuntimeDep, _admin: AdminDep) -> dict[str, int]:
    return dict((await service.set_prices(runtime.storage, name, {})).prices)


def model_body(model: ModelSettings, settings: Settings) -> dict[str, Any]:
    overridden = settings.ai_failure_rate is not None or settings.model_latency_ms is not None
    return {
        "name": model.name,
        "failureRate": model.failure_rate,
        "latencyMs": model.latency_ms,
        "enabled": model.enabled,
        # AI_FAILURE_RATE / IMAGEGEN_MODEL_LATENCY_MS, when set, apply to every model instead.
        "overriddenByEnvironment": overridden,
        "engines": [d["engine"] for d in model.deployments] or ["simulated"],
        "deployments": model.binding_json()["deployments"],
        "prices": dict(model.prices),
    }


def binding_body(model: ModelSettings) -> dict[str, Any]:
    return {"model": model.name, **model.binding_json()}


@router.get(
    "/queues",
    response_model=QueuesOut,
    summary="The job queue per model: pending, running, the oldest waiting",
)
async def queues(runtime: RuntimeDep, _admin: AdminDep) -> dict[str, Any]:
    now = utcnow()
    found = await service.model_queues(runtime.storage, now)
    return {
        "at": iso(now),
        "queues": [
            {
                "model": q.model,
                "pending": q.pending,
                "running": q.running,
                "oldestPendingAt": iso(q.oldest_pending_at),
                "oldestPendingAgeSeconds": q.oldest_pending_age_s,
            }
            for q in found
        ],
    }


@router.get(
    "/webhooks/secret", response_model=SigningSecret, summary="The secret that signs webhooks (whsec_...)"
)
async def webhook_secret(runtime: RuntimeDep, _admin: AdminDep) -> JSONResponse:
    secret = await signing_secret(runtime.storage, runtime.settings)
    return JSONResponse({"secret": secret}, headers=NO_STORE)
