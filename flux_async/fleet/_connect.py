"""How the fleet talks to Redis: the client (bounded socket timeouts, one immediate retry), a
URL shown without its password, and the one translation of Redis failures into
:class:`~flux_async.errors.CoordinatorError`. ``redis`` is imported here lazily (it is the
optional ``redis`` extra); nothing here imports the session or the rest of the fleet.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import ConfigurationError, CoordinatorError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["connect", "coordinator_error", "redacted_url", "require_redis", "scrub"]


def require_redis() -> None:
    """Raise ConfigurationError when the ``redis`` package (the extra) is not installed."""
    try:
        importlib.import_module("redis.asyncio")
    except ImportError as exc:
        raise ConfigurationError(
            "sharing one account between processes needs the redis package: "
            'pip install "flux-async[redis]"'
        ) from exc


def _parts(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None


def redacted_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe for reprs, logs and errors."""
    parts = _parts(url)
    if parts is None:
        return "<a Redis URL that cannot be parsed>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return parts._replace(netloc=netloc).geturl()


def _secrets(url: str) -> list[str]:
    parts = _parts(url)
    if parts is None or parts.password is None or not parts.password:
        return []
    return sorted({parts.password, unquote(parts.password)}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (as written, and decoded) replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


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
    require_redis()
    from redis.asyncio import from_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    try:
        client: Redis = from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"not a Redis URL: {redacted_url(url)} ({scrub(str(exc), url)}); "
            "expected redis://[user:password@]host[:port][/db], rediss://... or unix://..."
        ) from None
    return client
