"""imagegen's exceptions: each carries a stable code and the HTTP status the API answers with.

Adapters translate driver errors into these; the API maps them to responses in one place.
"""

from __future__ import annotations


class ImagegenError(Exception):
    code = "error"
    status = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ImagegenError):
    code = "validation_error"
    status = 400


class InvalidBinding(ImagegenError):
    """A model's deployments (engine + settings) do not validate; `problems` lists each field's."""

    code = "invalid_binding"
    status = 422


class InvalidPrices(ImagegenError):
    """A model's own prices do not validate; `problems` lists each size's."""

    code = "invalid_prices"
    status = 422


class Unauthenticated(ImagegenError):
    code = "unauthenticated"
    status = 401


class Forbidden(ImagegenError):
    code = "forbidden"
    status = 403


class InsufficientCredits(ImagegenError):
    code = "insufficient_credits"
    status = 402


class NotFound(ImagegenError):
    code = "not_found"
    status = 404


class UserNotFound(NotFound):
    code = "user_not_found"

    def __init__(self, user_id: str) -> None:
        super().__init__("User not found", userId=user_id)


class GenerationNotFound(NotFound):
    code = "generation_not_found"

    def __init__(self, request_id: str) -> None:
        super().__init__("Generation request not found", id=request_id)


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"No model '{name}' in the catalog", model=name)


class Conflict(ImagegenError):
    code = "conflict"
    status = 409


class UserExists(Conflict):
    code = "user_exists"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"User '{user_id}' already exists", userId=user_id)


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"


class InvalidState(Conflict):
    code = "invalid_state"


class StorageUnavailable(ImagegenError):
    """The database could not be reached or kept timing out: a server-side problem."""

    code = "storage_unavailable"
    status = 503


class TooManyRequests(ImagegenError):
    """A user is over their rate or in-flight limit; `retry_after` seconds is a fair wait."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after: int, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class RequestInProgress(Conflict):
    code = "idempotency_key_in_use"


class BodyTooLarge(ImagegenError):
    code = "body_too_large"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes", limit=limit)


class StaleConfig(Exception):
    """The catalog or the API keys changed since the caller cached them: refresh and try again.

    Internal: a create priced and authorized from a process's cache is checked against the current
    configuration version inside its debit, and this sends it back to be redone with fresh values.
    """
