"""A local server speaking the OpenAI Images API, as its API reference documents it.

`POST /v1/images/generations` with {model, prompt, n, size, response_format}: 200
{"created", "data": [{"b64_json" | "url", "revised_prompt"}]}; errors as
{"error": {"message", "type", "param", "code"}}; 401 for a wrong key; 400 for a size the model
does not make. Failures a test wants next are queued with `then`. Not covered: streaming
(`stream: true`), the edits and variations routes, organization/project headers.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections import deque

from tests.integration.engines.images import png
from tests.integration.engines.protocol import Exchange, ProtocolServer, Reply

SIZES = {"dall-e-2": {"256x256", "512x512", "1024x1024"}, "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"}}


def error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None, **options
) -> Reply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Reply.json(body, status, **options)


class OpenAIServer(ProtocolServer):
    def __init__(self, key: str | None = None) -> None:
        super().__init__(self.answer)
        self.key = key
        self.queued: deque[Reply] = deque()
        self.files: dict[str, bytes] = {}
        self.file_replies: dict[str, Reply] = {}  # a file served some other way (slowly...)
        self._ids = itertools.count(1)
        self.bodies: list[dict] = []

    def then(self, *replies: Reply) -> OpenAIServer:
        self.queued.extend(replies)
        return self

    def answer(self, exchange: Exchange) -> Reply:
        if exchange.method == "GET" and exchange.path.startswith("/files/"):
            name = exchange.path.removeprefix("/files/")
            if name in self.file_replies:
                return self.file_replies[name]
            data = self.files.get(name)
            return Reply(200, data, {"content-type": "image/png"}) if data else Reply(404)
        if (exchange.method, exchange.path) != ("POST", "/v1/images/generations"):
            return error(404, "Invalid URL", "invalid_request_error", None)
        if self.key is not None and exchange.headers.get("authorization") != f"Bearer {self.key}":
            given = exchange.headers.get("authorization", "").removeprefix("Bearer ")
            return error(
                401, f"Incorrect API key provided: {given}.", "invalid_request_error", "invalid_api_key"
            )
        self.bodies.append(exchange.json)
        if self.queued:
            return self.queued.popleft()
        return self._generate(exchange.json)

    def _generate(self, body: dict) -> Reply:
        model, size = body.get("model", "dall-e-2"), body.get("size", "1024x1024")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return error(
                400, "Missing required parameter: 'prompt'.", "invalid_request_error", None, "prompt"
            )
        if size not in SIZES.get(model, {size}):
            allowed = ", ".join(sorted(SIZES[model]))
            return error(
                400, f"'{size}' is not one of [{allowed}] - 'size'", "invalid_request_error", None, "size"
            )
        width, height = (int(side) for side in size.split("x"))
        image = png(width, height)
        item: dict[str, str] = {"revised_prompt": body["prompt"]}
        if body.get("response_format") == "url":
            name = f"img-{next(self._ids)}.png"
            self.files[name] = image
            item["url"] = f"{self.url}/files/{name}"
        else:
            item["b64_json"] = base64.b64encode(image).decode()
        return Reply.json({"created": int(time.time()), "data": [item]})


# The documented failure modes, as replies a test queues.
def rate_limited(retry_after: str | None = "2", retry_after_ms: str | None = None) -> Reply:
    headers = {
        k: v for k, v in (("retry-after", retry_after), ("retry-after-ms", retry_after_ms)) if v is not None
    }
    return error(
        429, "Rate limit reached for images per minute.", "requests", "rate_limit_exceeded", headers=headers
    )


def quota_exhausted() -> Reply:
    return error(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota")


def server_error() -> Reply:
    return error(500, "The server had an error while processing your request.", "server_error", None)


def refusal() -> Reply:
    message = "Your request was rejected as a result of our safety system."
    return error(400, message, "invalid_request_error", "content_policy_violation")


def b64(data: bytes) -> Reply:
    return Reply.json({"created": 1, "data": [{"b64_json": base64.b64encode(data).decode()}]})
