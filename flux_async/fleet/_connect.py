"""The coordinator's side of talking to Redis: its client and the one translation of Redis
failures into :class:`~flux_async.errors.CoordinatorError`, over ``_redis_url``'s client and
password-free URLs (shared with the ledger). Nothing here imports the session or the rest of
the fleet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CoordinatorError
from . import _redis_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["connect", "coordinator_error", "redacted_url", "scrub"]

redacted_url = _redis_url.redacted_url


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (as written, decoded, or as a query value) hidden."""
    return _redis_url.scrub(text, _redis_url.url_secrets(url))


def coordinator_error(action: str, url: str, exc: BaseException) -> CoordinatorError:
    """The CoordinatorError for ``action`` failing with ``exc`` (raise it ``from exc``)."""
    reason = scrub(f"{type(exc).__name__}: {exc}", url)
    return CoordinatorError(
        f"the coordinator could not {action}: Redis at {redacted_url(url)} failed ({reason})",
        action=action,
    )


def connect(url: str, *, timeout: float) -> Redis:
    """A client for ``url``: replies decoded as text, every connect and read bounded by
    ``timeout`` seconds, and one immediate retry on a lost connection (every script is
    idempotent for its caller, so a resent one never takes twice)."""
    return _redis_url.connect(
        url, timeout=timeout, where=redacted_url(url), hidden=_redis_url.url_secrets(url)
    )
