"""Where a :class:`~flux_async.fleet.RedisLedger` connects, said without secrets: a Redis URL
with its password shown as ``***`` (``user:password@`` and ``?password=``), the text of an
error scrubbed of it, and the client built from a URL (bounded timeouts, one immediate retry).
``redis`` (the optional extra) is imported here first: without it, importing the package
raises ImportError naming the extra. It must not import the session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigurationError

try:
    from redis import exceptions
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # the optional extra
    raise ImportError('flux_async.fleet needs the redis package: pip install "flux-async[redis]"') from exc

__all__ = ["TRANSIENT", "connect", "describe", "redacted_url", "scrub", "url_secrets"]

#: Failures worth another attempt: the server was not reached, or could not write just now.
TRANSIENT: tuple[type[Exception], ...] = (
    exceptions.ConnectionError,
    exceptions.TimeoutError,
    exceptions.ReadOnlyError,
    exceptions.TryAgainError,
    OSError,
)


def redacted_url(url: str) -> str:
    """``url`` with any password (``user:password@``, ``?password=``) shown as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a Redis URL that cannot be read>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def url_secrets(url: str) -> list[str]:
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name.lower() == "password" and value:
                found.add(value)
    except ValueError:
        found.add(url)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, hidden: Sequence[str]) -> str:
    """``text`` with every one of ``hidden`` replaced by ``***``."""
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def describe(kwargs: Mapping[str, Any]) -> str:
    """Where a caller's client points, without its password."""
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def connect(url: str, *, timeout: float, where: str, hidden: Sequence[str]) -> Redis:
    """A client for ``url``: text replies, connects and replies bounded by ``timeout``, and one
    immediate retry on a lost connection (every script is safe to send twice)."""
    try:
        client: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"not a Redis URL: {where} ({scrub(str(exc), hidden)}); expected "
            "redis://[user:password@]host[:port][/db], rediss://... or unix://..."
        ) from None
    return client
