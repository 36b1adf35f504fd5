"""How an engine says it failed: one exception, classified by what trying again could achieve."""

from __future__ import annotations

from enum import StrEnum

from imagegen.engines.redact import clean_message


class Failure(StrEnum):
    """What a failure says about trying again.

    TRANSIENT: the same deployment may succeed later (connection refused, timeout, 429, 5xx).
    DEPLOYMENT: this deployment cannot serve the request as configured (a rejected API key, a model
    the server does not have, an answer that is not an image): another deployment may, this one will
    not, so it is cooled down at once.
    PERMANENT: the request itself is refused (a content-policy refusal, a prompt the engine rejects):
    no deployment will do better, so the job ends at once.
    """

    TRANSIENT = "transient"
    DEPLOYMENT = "deployment"
    PERMANENT = "permanent"


class EngineError(Exception):
    """An engine could not produce the image.

    `message` is what the user reads in the generation's `error`: it is cleaned of URLs, addresses,
    paths and the given secrets when the error is made, so no caller has to remember to.
    `retry_after` is the engine's own hint (Retry-After) in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        failure: Failure = Failure.TRANSIENT,
        *,
        retry_after: float | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.message = clean_message(message, secrets)
        self.failure = failure
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def transient(self) -> bool:
        return self.failure is Failure.TRANSIENT

    def __repr__(self) -> str:
        return f"EngineError({self.message!r}, {self.failure.value}, retry_after={self.retry_after})"


def transient(
    message: str, *, retry_after: float | None = None, secrets: tuple[str, ...] = ()
) -> EngineError:
    return EngineError(message, Failure.TRANSIENT, retry_after=retry_after, secrets=secrets)


def deployment(message: str, *, secrets: tuple[str, ...] = ()) -> EngineError:
    return EngineError(message, Failure.DEPLOYMENT, secrets=secrets)


def permanent(message: str, *, secrets: tuple[str, ...] = ()) -> EngineError:
    return EngineError(message, Failure.PERMANENT, secrets=secrets)


class GenerationCanceled(Exception):
    """The run was canceled while the engine worked: nothing is retried and no result counts."""
