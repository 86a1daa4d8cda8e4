"""What the caller sees of a provider's text: error bodies turned into APIError, and the
clipping and key redaction every message and body excerpt goes through. Pure: no I/O, no
clock, no aiohttp/anyio, nothing from transport, scheduler or session, and nothing from the
other provider modules (the converter and the codecs import this one, never the reverse).

A provider's text is untrusted and unbounded: it is clipped before it reaches a message, and
the API key is redacted from it because a server may echo the key back.
"""

from __future__ import annotations

import html
import re
from http import HTTPStatus

from .._http import HttpResponse, read_json
from ..errors import APIError, RateLimitError, ServerError, api_error_for_status
from ..retry import parse_retry_after

__all__ = [
    "body_text",
    "clip",
    "error_code",
    "error_from_response",
    "is_success",
    "redact",
]

#: How much of a provider's text goes into an error message.
_MESSAGE_LIMIT = 300


def clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (a server may echo the key)."""
    return text.replace(secret, "<redacted>") if secret and secret in text else text


def body_text(response: HttpResponse, secret: str) -> str:
    """The body as text, undecodable bytes replaced and the key redacted."""
    return redact(response.body.decode("utf-8", errors="replace"), secret)


def is_success(response: HttpResponse) -> bool:
    """True for a 2xx response."""
    return 200 <= response.status < 300


def error_code(value: object) -> str | int | None:
    """A provider's error ``code`` as sent (a string or an integer), or None for anything else."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


# --------------------------------------------------------------------------------------------
# HTTP error bodies.

_REQUEST_ID_HEADERS = ("x-request-id", "request-id")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def error_from_response(
    response: HttpResponse,
    *,
    provider: str,
    secret: str,
    refused_statuses: frozenset[int] = frozenset(),
) -> APIError:
    """The APIError subclass for a non-2xx ``response``.

    Understands every error envelope the three providers use: ``{"error": {"code", "message",
    "type"}}`` (aggregators; ``error`` may also be a bare string), ``{"success": false,
    "message"}`` (toapis uploads) and ``{"detail": "..." | [{"loc", "msg"}]}`` (BFL, FastAPI
    style). Anything else, HTML included, gives the status's subclass with a clipped text.

    A 5xx whose status is in ``refused_statuses`` *and* whose body is the provider's own JSON
    error envelope (``error`` or ``detail``) is a ``ServerError`` with ``refused=True``: the
    provider's API answered and says it did not take the request. A gateway's page (HTML, an
    empty body) proves nothing and stays an ordinary ServerError.
    """
    text = body_text(response, secret)
    data: object
    try:
        data = read_json(response.body)
    except (ValueError, RecursionError):
        data = None
    code: str | int | None = None
    message: str | None = None
    request_id: str | None = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code = error_code(error.get("code"))
            message = _text(error.get("message")) or _text(error.get("type"))
            request_id = _text(error.get("request_id"))
        elif isinstance(error, str):
            message = error
        if code is None:
            code = error_code(data.get("code"))
        message = message or _text(data.get("message")) or _detail(data.get("detail"))
        request_id = request_id or _text(data.get("request_id"))
    elif isinstance(data, str):
        message = data
    elif data is None and text.strip():
        message = _plain(text)
    if not message:
        message = _phrase(response.status)
    # A dedicated request-id header first, then the body's, then Cloudflare's ray id.
    header_id = next((v for name in _REQUEST_ID_HEADERS if (v := response.header(name))), None)
    request_id = header_id or request_id or response.header("cf-ray")
    if request_id is not None:
        request_id = clip(redact(request_id, secret), 200)
    message = clip(redact(message, secret))
    if isinstance(code, str):
        code = clip(redact(code, secret), 100)
    if response.status == 429:
        return RateLimitError(
            message,
            code=code,
            provider=provider,
            request_id=request_id,
            retry_after=parse_retry_after(response.header("Retry-After"), now=response.received_at),
        )
    if (
        response.status in refused_statuses
        and isinstance(data, dict)
        and (isinstance(data.get("error"), (dict, str)) or data.get("detail") is not None)
    ):
        return ServerError(
            message, status=response.status, code=code, provider=provider, request_id=request_id, refused=True
        )
    cls = api_error_for_status(response.status)
    return cls(message, status=response.status, code=code, provider=provider, request_id=request_id)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _detail(value: object) -> str | None:
    """FastAPI's ``detail``: a string, or a list of ``{"loc": [...], "msg": "..."}``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        parts = []
        for item in value[:5]:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = (
                    ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
                )
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        return "; ".join(parts) or None
    return None


def _plain(text: str) -> str:
    """A one-line excerpt of a non-JSON body (an HTML page's title, or its text)."""
    title = _TITLE.search(text)
    if title:
        text = title.group(1)
    text = html.unescape(_TAG.sub(" ", text))
    return clip(_SPACE.sub(" ", text).strip(), 200)


def _phrase(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"
