"""What can go wrong for a caller of the service, by kind. Front ends map the kind to their own
terms in one place (http/app.py: one table of HTTP statuses); the code is the stable word a
client program can switch on, the message is for people."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service cannot carry out; `code` is a stable snake_case word. `detail`
    is for the log only (which issuer, what the identity provider said): never shown to the
    caller, whose page says only what the message says."""

    default_code = "error"

    def __init__(self, message: str, code: str | None = None, *, detail: str = "") -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.detail = detail


class BadRequest(ServiceError):
    default_code = "bad_request"


class Unauthorized(ServiceError):
    """No credentials, or credentials that are not acceptable."""

    default_code = "unauthorized"


class Forbidden(ServiceError):
    """Credentials are fine but the thing is switched off or not allowed."""

    default_code = "forbidden"


class NotFound(ServiceError):
    default_code = "not_found"


class Conflict(ServiceError):
    """The request is understood but cannot be carried out in the state something it depends
    on is in (a config file that does not validate); changing that state and asking again
    succeeds. Not an outage: nothing is unavailable."""

    default_code = "conflict"


class RateLimited(ServiceError):
    default_code = "rate_limited"

    def __init__(self, message: str, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


class QuotaExceeded(ServiceError):
    """The caller holds as much as one user may (open reservations): waiting a little does not
    help, using or releasing what they hold does."""

    default_code = "quota_exceeded"


class Unavailable(ServiceError):
    """The integration cannot take requests now (starting, restarting, failed, or slow).
    `retry_after`: when asking again may work (seconds), where the service knows."""

    default_code = "unavailable"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code, detail=detail)
        self.retry_after = retry_after


class StorageFull(Unavailable):
    """The disk refused to take what the request needs written (no space, or the quota): a
    503 at once, like any unavailability, and said so by its own code."""

    default_code = "storage_full"


class UpstreamError(ServiceError):
    """A system we depend on (identity provider, mailbox, Pexip) did not answer usefully."""

    default_code = "upstream_error"
