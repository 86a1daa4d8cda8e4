"""Plain HTTP request and response values exchanged between the codecs and the transport.

Pure values: no I/O and no aiohttp. A codec builds an :class:`HttpRequest` and parses an
:class:`HttpResponse`; only ``transport.py`` turns them into real traffic. The ``repr`` of a
request never shows credentials, and :func:`redact_headers` / :func:`redact_url` make headers
and URLs fit to show in errors and logs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

__all__ = [
    "SENSITIVE_HEADERS",
    "FormField",
    "HttpRequest",
    "HttpResponse",
    "redact_headers",
    "redact_url",
]

#: Header names (lower case) whose values are secrets and never shown.
SENSITIVE_HEADERS = frozenset({"authorization", "x-key", "proxy-authorization", "cookie"})


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with every credential replaced by ``"<redacted>"``."""
    return {k: ("<redacted>" if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


#: Query parameters whose values may be shown: task ids, never signatures or tokens.
_SHOWN_QUERY = frozenset({"id", "language"})


def redact_url(url: str) -> str:
    """``url`` fit for a log: no user info, and every query value replaced by ``<redacted>``
    but a task id (``?id=`` of BFL's polling URL), since a signed result URL carries its
    signature there."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if not parts.query:
        return shown
    query = "&".join(
        f"{name}={value if name in _SHOWN_QUERY else '<redacted>'}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return f"{shown}?{query}"


@attrs.frozen(kw_only=True)
class FormField:
    """One part of a multipart form: a text value, or a file (``filename`` set) of bytes."""

    name: str
    value: str | bytes
    filename: str | None = None
    content_type: str | None = None

    def __repr__(self) -> str:
        shown = f"<{len(self.value)} bytes>" if isinstance(self.value, bytes) else repr(self.value)
        return f"FormField(name={self.name!r}, value={shown}, filename={self.filename!r})"


@attrs.frozen(kw_only=True, repr=False)
class HttpRequest:
    """An HTTP request to send.

    ``url`` is either a path starting with ``/`` (joined to the session's base URL by the
    transport) or an absolute URL used verbatim (BFL's ``polling_url``). At most one of
    ``json`` and ``form`` is set.
    """

    method: str
    url: str
    # Taken as given, not copied (two of these values are made per job, and a converter call
    # per value costs more than the rest of its construction): a codec's read-only headers,
    # shared, or a dict that nobody changes afterwards.
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    json: Any = None
    form: tuple[FormField, ...] | None = None

    def __repr__(self) -> str:
        body = ""
        if self.json is not None:
            body = ", json=..."
        elif self.form is not None:
            body = f", form={list(self.form)!r}"
        return (
            f"HttpRequest({self.method} {self.url}, headers={redact_headers(self.headers)!r}{body})"
        )


@attrs.frozen(kw_only=True)
class HttpResponse:
    """A complete HTTP response: status, headers (case-insensitive look-up via :meth:`header`), body."""

    status: int
    # Taken as given, like a request's (the transport wraps aiohttp's read-only multidict).
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False, repr=False)
    body: bytes = b""
    #: When the response arrived (wall clock, aware), set by the transport so that pure code can
    #: turn an HTTP-date ``Retry-After`` into seconds without reading a clock itself.
    received_at: datetime | None = None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body)
