"""The OpenAI Images API engine: `POST {base_url}/images/generations`, as OpenAI and the many
servers that copy its protocol (LocalAI, vLLM-style gateways, LiteLLM's proxy) answer it.

The answer carries the image as `b64_json`, or as a `url` that is then downloaded (bounded in size
and time, without our key). Errors are `{"error": {"message", "type", "param", "code"}}`; a 429
carries `retry-after` / `retry-after-ms`; a content refusal is a 400 with code
`content_policy_violation` (DALL-E) or `moderation_blocked` (gpt-image-1).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator

from imagegen.engines import errors, transport
from imagegen.engines.errors import EngineError, Failure
from imagegen.engines.port import EngineKind
from imagegen.engines.request import ImageRequest
from imagegen.engines.run import Run
from imagegen.engines.settings import HttpSettings
from imagegen.engines.template import render
from imagegen.engines.watch import watched

SERVER = "image API"
REFUSALS = frozenset({"content_policy_violation", "moderation_blocked"})
# 429s that a wait does not cure: the account is out of money, not over its rate.
EXHAUSTED = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
OURS = frozenset({"model", "prompt", "size", "n", "response_format"})


class OpenAISettings(HttpSettings):
    base_url: str = Field("https://api.openai.com/v1", max_length=500, description="up to and including /v1")
    response_format: Literal["b64_json", "url"] | None = Field(
        "b64_json", description="None to leave it out (gpt-image-1 always answers b64_json and refuses it)"
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more body fields: quality, style, background, output_format..."
    )

    @field_validator("extra")
    @classmethod
    def _not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(OURS & set(value))
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by imagegen, not in extra")
        return value


class OpenAIEngine:
    def __init__(self, settings: OpenAISettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        key = settings.api_key(environ)
        self._secrets = (key,) if key else ()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._api = transport.client(settings, headers)
        # Image URLs point at a CDN: they get no key, and no base URL.
        self._downloads = httpx.Client(follow_redirects=True, timeout=30.0)

    def generate(self, request: ImageRequest, run: Run) -> bytes:
        response = watched(run, lambda: self._post(self._body(request), run), every=0.25, server=SERVER)
        if response.status_code != 200:
            raise self._error(response)
        return self._image(transport.json_of(response, SERVER), run)

    def _body(self, request: ImageRequest) -> dict[str, Any]:
        s = self._settings
        body: dict[str, Any] = {
            "prompt": render(s.prompt_template, request, s.model),
            "n": 1,
            "size": s.engine_size(request.size),
            **s.extra,
        }
        if s.model is not None:
            body["model"] = s.model
        if s.response_format is not None:
            body["response_format"] = s.response_format
        return body

    def _post(self, body: dict[str, Any], run: Run) -> httpx.Response:
        with transport.translated(SERVER, self._secrets):
            return self._api.post("/images/generations", json=body, timeout=transport.timeout(run))

    def _error(self, response: httpx.Response) -> EngineError:
        error = _error_object(response)
        message, code = str(error.get("message") or ""), str(error.get("code") or "")
        if code in REFUSALS:
            return errors.permanent(f"the prompt was refused: {message or code}", secrets=self._secrets)
        failed = transport.error_status(response, SERVER, message or code or None, self._secrets)
        if code in EXHAUSTED:
            return EngineError(failed.message, Failure.DEPLOYMENT)
        return failed

    def _image(self, body: Any, run: Run) -> bytes:
        items = body.get("data") if isinstance(body, dict) else None
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        if isinstance(first.get("b64_json"), str):
            try:
                return base64.b64decode(first["b64_json"], validate=True)
            except (binascii.Error, ValueError):
                raise errors.deployment("the image API's b64_json is not base64") from None
        if isinstance(first.get("url"), str) and first["url"].startswith(("https://", "http://")):
            s = self._settings
            return transport.download(
                self._downloads, first["url"], None, run, max_bytes=s.max_image_bytes, server=SERVER
            )
        raise errors.deployment("the image API's answer has no image in it")

    def close(self) -> None:
        self._api.close()
        self._downloads.close()


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):  # some compatible servers answer {"error": "text"}
        return {"message": error}
    return error if isinstance(error, dict) else {}


ENGINE = EngineKind("openai", OpenAISettings, OpenAIEngine, "the OpenAI Images API and servers that speak it")
