"""The exception tree of flux_async: every error the library raises is a :class:`FluxError`.

Pure values only: this module imports nothing from the rest of the package and no I/O library.
Errors carry their facts as attributes, are raised once at the boundary where they are
understood, and chain their cause (``raise X(...) from exc``). No error ever holds an API key.

::

    FluxError
    ├── ConfigurationError            missing key, unknown provider or model
    ├── ValidationError               bad request, found before any network call (names the field)
    ├── TransportError                connection failed or dropped
    │   └── TransportTimeout          no answer in time
    ├── ProtocolError                 a 2xx body we cannot understand (carries the body, redacted)
    ├── APIError(status, code, message, provider, request_id)
    │   ├── BadRequestError (400, 422)
    │   ├── AuthenticationError (401, 403)
    │   ├── InsufficientCreditsError (402)
    │   ├── NotFoundError (404)
    │   ├── RateLimitError(retry_after)
    │   └── ServerError (5xx)
    ├── SubmissionUncertainError      the POST may have created a paid task; carries what is known
    ├── LedgerError                   the ledger could not record a paid action (nothing more is sent)
    ├── CoordinatorError              the shared coordinator (Redis) could not do what was asked
    ├── BudgetExceededError           a submit would pass the spending cap (nothing was sent)
    ├── OutageError                   submits kept failing: submission is paused (nothing was sent)
    ├── DownloadError                 a result could not be fetched safely
    │   └── ResultExpiredError        the result URL expired before it was fetched
    ├── WebhookVerificationError(provider, reason)   a webhook delivery was refused
    └── TaskError(task_id)
        ├── TaskFailedError(code, message)
        ├── ModerationError
        ├── TaskNotFoundError
        └── TaskTimeoutError          the remote task may still be running
"""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: at run time this module imports nothing of ours
    from .models import Cost, TaskRef

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ConfigurationError",
    "CoordinatorError",
    "DownloadError",
    "FluxError",
    "InsufficientCreditsError",
    "LedgerError",
    "ModerationError",
    "NotFoundError",
    "OutageError",
    "ProtocolError",
    "RateLimitError",
    "ResultExpiredError",
    "ServerError",
    "SubmissionUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "TransportError",
    "TransportTimeout",
    "ValidationError",
    "WebhookVerificationError",
    "api_error_for_status",
]

_BODY_EXCERPT = 500


def _short_repr(value: object, limit: int = 80) -> str:
    """A repr of at most ``limit`` characters that never builds the repr of a huge value."""
    shown = repr(value[: limit + 1]) if isinstance(value, (str, bytes)) else reprlib.repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class FluxError(Exception):
    """Base class of every error raised by flux_async."""


class ConfigurationError(FluxError):
    """The session cannot be set up: missing API key, unknown provider, bad option."""


class ValidationError(FluxError, ValueError):
    """A request was refused before anything was sent.

    ``field`` names the offending field (``"size"``, ``"images[0]"``...), ``value`` is what was
    given and ``allowed`` says what would have been accepted.
    """

    def __init__(self, field: str, value: object, allowed: str, *, reason: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.reason = reason
        shown = _short_repr(value)
        text = f"{field}: {reason or 'invalid value'} (got {shown}; allowed: {allowed})"
        super().__init__(text)


class TransportError(FluxError):
    """The connection could not be made, or broke before a full response arrived.

    ``request_sent`` is True when the request may have reached the server (the connection was
    made and the body written), which matters for paid submissions.
    """

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        self.request_sent = request_sent
        super().__init__(message)


class TransportTimeout(TransportError):
    """No response arrived in time."""


class ProtocolError(FluxError):
    """A successful HTTP response whose body does not say what the provider documents."""

    def __init__(self, message: str, *, body: bytes | str | None = None, provider: str | None = None) -> None:
        self.provider = provider
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        self.body = None if body is None else body[:_BODY_EXCERPT]
        super().__init__(message)


class APIError(FluxError):
    """The provider answered with an HTTP error.

    ``status`` is the HTTP status, ``code`` the provider's own error code (a string or an
    integer, as the provider sends it), ``message`` its text and ``request_id`` its request id
    where one was given.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | int | None = None,
        provider: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.provider = provider
        self.request_id = request_id
        parts = [f"HTTP {status}"]
        if provider:
            parts.append(provider)
        if code is not None:
            parts.append(f"code={code!r}")
        if request_id:
            parts.append(f"request_id={request_id}")
        super().__init__(f"{message} ({', '.join(parts)})")


class BadRequestError(APIError):
    """400 or 422: the provider refused the request itself (no task was created)."""


class AuthenticationError(APIError):
    """401 or 403: the key is wrong or lacks access. Fatal for a session."""


class InsufficientCreditsError(APIError):
    """402: the account has no credits left. Fatal for a session."""


class NotFoundError(APIError):
    """404: the path or task does not exist."""


class RateLimitError(APIError):
    """429: slow down. ``retry_after`` is the provider's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | int | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code, provider=provider, request_id=request_id)


class ServerError(APIError):
    """5xx: the provider failed. For a submit this is ambiguous (a task may exist), unless
    ``refused`` is True: the provider's own error answer shows the request was turned away
    before any task was made (which answers prove that is decided per provider, in its codec;
    see :func:`flux_async.retry.classify_submit_failure`)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | int | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        refused: bool = False,
    ) -> None:
        self.refused = refused
        super().__init__(message, status=status, code=code, provider=provider, request_id=request_id)


def api_error_for_status(status: int) -> type[APIError]:
    """The :class:`APIError` subclass that stands for an HTTP status."""
    if status in (400, 413, 415, 422):
        return BadRequestError
    if status in (401, 403):
        return AuthenticationError
    if status == 402:
        return InsufficientCreditsError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    return APIError


class SubmissionUncertainError(FluxError):
    """A submit failed in a way that leaves open whether the provider created (and charges) a task.

    It is never retried blindly. ``client_business_id`` (toapis) or ``task_id`` is set when
    known, so the task can be found later; ``cause`` is the underlying failure. ``cost`` is
    what the submit reserved, when the session knows it: a submit in doubt counts as spent.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        client_business_id: str | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.client_business_id = client_business_id
        self.task_id = task_id
        self.idempotency_key = idempotency_key
        self.cost: Cost | None = None
        super().__init__(message)


class LedgerError(FluxError):
    """The ledger could not record a paid action (a full disk, an I/O error, a lost server).

    Raised before a submit whose intent could not be written (nothing was sent), and for every
    submit after an acceptance could not be written (the session sends nothing more). ``ref`` is
    the accepted task that is not on record, when there is one: it is still watched, and it is
    logged at ERROR so it can be resumed by hand.
    """

    def __init__(self, message: str, *, key: str | None = None, ref: TaskRef | None = None) -> None:
        self.key = key
        self.ref = ref
        super().__init__(message)


class CoordinatorError(FluxError):
    """The coordinator that every process of one account shares (Redis) could not do what was
    asked: it could not be reached, did not answer in time, or refused the command.

    ``action`` says what could not be done (take an active-task slot, reserve a job's cost,
    claim an idempotency key...). A submit that needed that slot, reservation or claim is not
    sent. When only the answer was lost, the server may have taken it all the same: it then
    errs on the safe side (it counts until it is released, or its process's lease expires).
    The message never holds the server's password.
    """

    def __init__(self, message: str, *, action: str) -> None:
        self.action = action
        super().__init__(message)


class BudgetExceededError(FluxError):
    """A submit was refused because it could pass the session's spending cap
    (``Limits(max_spend_usd=...)``); nothing was sent and nothing was recorded for it.

    ``max_spend_usd`` is the cap; ``spent_usd`` what settled jobs cost and ``reserved_usd``
    what jobs in flight or in doubt hold (both counting what the ledger held from earlier
    sessions); ``needed_usd`` what this job would reserve (its price times its images).
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        max_spend_usd: float,
        spent_usd: float,
        reserved_usd: float,
        needed_usd: float,
    ) -> None:
        self.model = model
        self.max_spend_usd = max_spend_usd
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.needed_usd = needed_usd
        super().__init__(message)


class OutageError(FluxError):
    """Submission is paused: the last ``streak`` submits failed one after another with server
    errors, transport errors or in doubt (``Limits.outage_streak``). Nothing was sent for the
    submit that raised this; tasks already accepted are still watched. New submits are
    refused until ``retry_in`` seconds have passed, then one is let through to probe the
    provider (its success closes the pause). ``last_error`` describes the last failure.
    """

    def __init__(self, message: str, *, provider: str, streak: int, last_error: str, retry_in: float) -> None:
        self.provider = provider
        self.streak = streak
        self.last_error = last_error
        self.retry_in = retry_in
        super().__init__(message)


class DownloadError(FluxError):
    """A result image could not be fetched safely (size cap, format, scheme, redirect, HTTP error).

    ``retryable`` is True when fetching it again may work (a 5xx or 429 answer, a connection
    that failed or timed out): ``Session.download`` retries those within its retry policy.
    """

    def __init__(self, message: str, *, url: str | None = None, retryable: bool = False) -> None:
        self.url = url
        self.retryable = retryable
        super().__init__(message)


class ResultExpiredError(DownloadError):
    """The result URL expired (or is refused as expired) before it was downloaded."""


class WebhookVerificationError(FluxError):
    """A webhook delivery was refused: it is not authentic, too old or too new, or its body is
    not what the provider sends. The receiver answers it with a 4xx and acts on nothing.

    ``provider`` names the provider the delivery claimed to come from; ``reason`` is one of
    ``"no_secret"`` (no secret is configured, so a signed provider's delivery cannot be
    checked), ``"missing_header"``, ``"bad_header"``, ``"timestamp_out_of_window"``,
    ``"bad_signature"`` and ``"bad_body"``. The message names headers and fields, never a
    secret or a signature.
    """

    #: The reasons a delivery is refused, as :attr:`reason` spells them.
    REASONS = frozenset(
        {
            "no_secret",
            "missing_header",
            "bad_header",
            "timestamp_out_of_window",
            "bad_signature",
            "bad_body",
        }
    )

    def __init__(self, message: str, *, provider: str, reason: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown webhook refusal reason {reason!r}")
        self.provider = provider
        self.reason = reason
        super().__init__(message)


class TaskError(FluxError):
    """A task reached a state that gives no image."""

    def __init__(self, message: str, *, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(message)


class TaskFailedError(TaskError):
    """The provider reported the task as failed (or cancelled)."""

    def __init__(self, message: str, *, task_id: str, code: str | int | None = None) -> None:
        self.code = code
        self.message = message
        super().__init__(message, task_id=task_id)


class ModerationError(TaskError):
    """The input or the output was refused by the provider's moderation."""


class TaskNotFoundError(TaskError):
    """The provider does not know the task (never existed or expired)."""


class TaskTimeoutError(TaskError):
    """The job's deadline passed while waiting. The remote task may still be running."""
