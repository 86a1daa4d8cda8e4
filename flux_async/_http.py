"""Plain HTTP request and response values exchanged between the codecs and the transport.

Pure values: no I/O and no aiohttp. A codec builds an :class:`HttpRequest` and parses an
:class:`HttpResponse`; only ``transport.py`` turns them into real traffic. The ``repr`` of a
request never shows credentials, and :func:`redact_headers` / :func:`redact_url` make headers
and URLs fit to show in errors and logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

__all__ = [
    "SENSITIVE_HEADERS",
    "FixedHeaders",
    "FormField",
    "HttpRequest",
    "HttpResponse",
    "read_json",
    "redact_headers",
    "redact_url",
]

#: Header names (lower case) whose values are secrets and never shown.
SENSITIVE_HEADERS = frozenset({"authorization", "x-key", "proxy-authorization", "cookie"})


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with every credential replaced by ``"<redacted>"``."""
    return {k: ("<redacted>" if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


#: The scanner of a decoder made with ``json.loads``' defaults (json's C scanner).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def read_json(body: bytes) -> Any:
    """``json.loads(body)``: the same value, the same errors, at about two thirds of the cost
    for an API answer.

    An answer that starts with ``{`` or ``[`` is UTF-8 text (JSON's other encodings begin with
    a byte order mark or a zero byte), decoded as ``json.loads`` decodes it and handed straight to
    json's scanner, without the steps that find the encoding and skip the leading white space
    of any input. Whatever else comes, and whatever the scanner refuses, goes to ``json.loads``,
    so that a bad body gets its own error.
    """
    if body[:1] in (b"{", b"[") and body[1:2] != b"\x00":
        try:
            text = body.decode("utf-8", "surrogatepass")
            value, end = _scan(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass
        else:
            if end == len(text) or not text[end:].strip(" \t\n\r"):
                return value
    return json.loads(body)


class FixedHeaders(Mapping[str, str]):
    """Headers that never change once made: a codec's own (key, user agent, accept), shared by
    every request it builds. Read-only, and a copy of what it was given, so a transport may
    keep its own form of them and reuse it for every request that carries them."""

    __slots__ = ("_map",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._map = dict(headers)

    def __getitem__(self, key: str) -> str:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"FixedHeaders({redact_headers(self._map)!r})"


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


class HttpRequest:
    """An HTTP request to send.

    ``url`` is either a path starting with ``/`` (joined to the session's base URL by the
    transport) or an absolute URL used verbatim (BFL's ``polling_url``). At most one of
    ``json`` and ``form`` is set.

    A value: nothing changes one once it is made. A plain slotted class rather than a frozen
    one: two requests and two responses are made per job, and a frozen class pays a guarded
    attribute write per field on each.
    """

    __slots__ = ("form", "headers", "json", "method", "url")

    def __init__(
        self,
        *,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        form: tuple[FormField, ...] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        # Taken as given, not copied: a codec's read-only headers, shared, or a dict that
        # nobody changes afterwards.
        self.headers: Mapping[str, str] = _NO_HEADERS if headers is None else headers
        self.json = json
        self.form = form

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not HttpRequest:
            return NotImplemented
        assert isinstance(other, HttpRequest)
        return (self.method, self.url, dict(self.headers), self.json, self.form) == (
            other.method, other.url, dict(other.headers), other.json, other.form
        )

    __hash__ = None  # type: ignore[assignment]  # compared by value, and the json may be a dict

    def __repr__(self) -> str:
        body = ""
        if self.json is not None:
            body = ", json=..."
        elif self.form is not None:
            body = f", form={list(self.form)!r}"
        return (
            f"HttpRequest({self.method} {self.url}, headers={redact_headers(self.headers)!r}{body})"
        )


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


#: ``HttpResponse._data`` before the body is decoded (a body may decode to None: JSON null).
_UNREAD: Any = object()


class HttpResponse:
    """A complete HTTP response: status, headers (case-insensitive look-up via :meth:`header`), body.

    ``received_at`` is when the response arrived (wall clock, aware), so that pure code can turn
    an HTTP-date ``Retry-After`` into seconds without reading a clock itself. The transport gives
    it as ``arrived`` (Unix seconds, a cheap clock read): the datetime is made when first read.
    A value like :class:`HttpRequest` (plain slotted, never changed once made).
    """

    __slots__ = ("_arrived", "_data", "_received_at", "body", "headers", "status")

    def __init__(
        self,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        received_at: datetime | None = None,
        arrived: float | None = None,
    ) -> None:
        self.status = status
        # Taken as given, like a request's (the transport wraps aiohttp's read-only multidict).
        self.headers: Mapping[str, str] = _NO_HEADERS if headers is None else headers
        self.body = body
        self._received_at = received_at
        self._arrived = arrived
        self._data: Any = _UNREAD  # the body as JSON, once a codec has read it (see decoded)

    @property
    def received_at(self) -> datetime | None:
        """When the response arrived (aware, UTC), or None when that is not known."""
        if self._received_at is None and self._arrived is not None:
            self._received_at = datetime.fromtimestamp(self._arrived, UTC)
        return self._received_at

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not HttpResponse:
            return NotImplemented
        assert isinstance(other, HttpResponse)
        return (self.status, dict(self.headers), self.body, self.received_at) == (
            other.status, dict(other.headers), other.body, other.received_at
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HttpResponse(status={self.status!r}, body=<{len(self.body)} bytes>, received_at={self.received_at!r})"

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` when it is not JSON)."""
        return read_json(self.body)

    def decoded(self) -> Any:
        """The body decoded as JSON, decoded once for every reader of this response (the
        codecs, which only read it): the same object each time, not to be changed. Raises
        ``ValueError`` when it is not JSON."""
        data = self._data
        if data is _UNREAD:
            data = self._data = read_json(self.body)
        return data
