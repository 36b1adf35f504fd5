"""What the HTTP engines share: one way to map transport failures, statuses and Retry-After to
EngineError, and a download bounded in size and time."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from imagegen.engines import errors
from imagegen.engines.errors import EngineError, Failure, GenerationCanceled
from imagegen.engines.run import Run
from imagegen.engines.settings import HttpSettings

MAX_RETRY_AFTER_S = 3600.0


def client(settings: HttpSettings, headers: Mapping[str, str] | None = None, **options: Any) -> httpx.Client:
    """A client for one deployment; every request gives its own timeout, taken from the run."""
    limits = httpx.Limits(
        max_connections=settings.concurrency + 4, max_keepalive_connections=settings.concurrency
    )
    return httpx.Client(base_url=settings.base_url, headers=headers, limits=limits, timeout=30.0, **options)


def timeout(run: Run, *, connect: float = 10.0) -> httpx.Timeout:
    """No single wait longer than what is left of the run (a slow body is bounded by `download`)."""
    left = max(run.remaining(), 0.001)
    return httpx.Timeout(left, connect=min(connect, left))


@contextmanager
def translated(server: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """httpx's exceptions as EngineError, in words that name no host (the user reads them)."""
    try:
        yield
    except httpx.TimeoutException:
        raise errors.transient(f"the {server} server did not answer in time") from None
    except httpx.ConnectError:
        raise errors.transient(f"could not connect to the {server} server") from None
    except httpx.TransportError as exc:
        raise errors.transient(
            f"the connection to the {server} server failed ({type(exc).__name__})"
        ) from None
    except httpx.HTTPError as exc:
        raise errors.deployment(
            f"the {server} request failed ({type(exc).__name__})", secrets=secrets
        ) from None


def failure_of(status: int) -> Failure:
    """What an HTTP error status says: try again later, or this deployment cannot do it.

    Every other 4xx is the deployment's (its settings, its key, its model): the user's part of a
    request is validated against the catalog before it gets here. An engine that can tell a refusal
    of the prompt itself (OpenAI's content_policy_violation) makes that one permanent.
    """
    if status in (408, 409, 425, 429) or status >= 500:
        return Failure.TRANSIENT
    return Failure.DEPLOYMENT


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI's) or `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    seconds: float | None = None
    if value is not None:
        seconds = _number(value, scale=0.001)
    if seconds is None and (value := headers.get("retry-after")) is not None:
        seconds = _number(value) if _number(value) is not None else _date(value, now)
    return None if seconds is None else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _number(value: str, scale: float = 1.0) -> float | None:
    try:
        return float(value) * scale
    except ValueError:
        return None


def _date(value: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - (time.time() if now is None else now)


def json_of(response: httpx.Response, server: str) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.deployment(
            f"the {server} server answered {response.status_code} with something that is not JSON"
        ) from None


def body_of(response: httpx.Response) -> Any:
    """The JSON body of an error answer, or None: a proxy's 502 page is still a 502."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_status(
    response: httpx.Response, server: str, message: str | None, secrets: tuple[str, ...] = ()
) -> EngineError:
    detail = f": {message}" if message else ""
    return EngineError(
        f"the {server} server answered {response.status_code}{detail}",
        failure_of(response.status_code),
        retry_after=retry_after(response.headers),
        secrets=secrets,
    )


def download(
    http: httpx.Client, url: str, params: Mapping[str, str] | None, run: Run, *, max_bytes: int, server: str
) -> bytes:
    """The body of a GET, refused past `max_bytes`, given up at the run's deadline or its cancel
    even when the server dribbles it out a byte at a time (httpx's timeouts are per read)."""
    with translated(server), http.stream("GET", url, params=params, timeout=timeout(run)) as response:
        if response.status_code != 200:
            raise error_status(response, server, None)
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise errors.deployment(f"the {server} server's image is larger than {max_bytes} bytes")
        body = bytearray()
        for chunk in response.iter_bytes():  # as it arrives: a size would wait to fill it
            body += chunk
            if len(body) > max_bytes:
                raise errors.deployment(f"the {server} server's image is larger than {max_bytes} bytes")
            if run.canceled:
                raise GenerationCanceled()
            if run.expired:
                raise errors.transient(f"the {server} server sent the image too slowly")
    return bytes(body)
