"""Helpers shared by the provider codecs: strict converters, lenient hint hooks, error bodies.

Pure, like the codecs: no I/O, no clock, no aiohttp/anyio, and nothing from transport,
scheduler or session. Only the codecs import this module; each builds its own private
:class:`cattrs.Converter` with :func:`make_converter` (never the global one).

The converters are strict about shapes (a string where an object is expected is an error, and
``123`` is not silently turned into ``"123"``) and lenient about hints: a progress, a duration
or a timestamp that is missing, of the wrong type or out of range becomes ``None`` rather than
failing the whole response, because a task's outcome must not be lost over a malformed hint.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, ClassVar, NewType, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .._http import HttpRequest, HttpResponse
from ..errors import (
    APIError,
    ConfigurationError,
    ProtocolError,
    RateLimitError,
    ValidationError,
    api_error_for_status,
)
from ..models import GenerationRequest, TaskFailure, TaskRef, TaskState, TaskStatus
from ..retry import parse_retry_after

__all__ = [
    "USER_AGENT",
    "BaseCodec",
    "Failure",
    "Percent",
    "Seconds",
    "Timestamp",
    "Urls",
    "make_converter",
]

#: Sent as ``User-Agent`` unless the caller gives another. Kept here rather than read from
#: ``flux_async.__version__`` because the package's ``__init__`` will import the session, which
#: imports the codecs (an import cycle); a test checks the two agree.
USER_AGENT = "flux-async/0.1.0.dev0"

#: How much of a provider's text goes into an error message.
_MESSAGE_LIMIT = 300

logger = logging.getLogger("flux_async")

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Lenient hint types. A field typed ``Timestamp | None`` (and so on) is structured by the hooks
# below, which return None for anything unusable instead of raising.

#: Unix seconds -> aware UTC datetime.
Timestamp = NewType("Timestamp", datetime)
#: A percentage, clamped to 0-100.
Percent = NewType("Percent", float)
#: A non-negative number of seconds.
Seconds = NewType("Seconds", float)
#: A provider's error object (or bare string) -> TaskFailure.
Failure = NewType("Failure", TaskFailure)
#: Result URLs from any of the spellings providers use: a string, a list of strings, an object
#: ``{"url": ...}`` or a list of those. Unusable entries are skipped (a completed task with no
#: usable URL at all is then a ProtocolError, raised by the codec).
Urls = NewType("Urls", list[str])


#: Failure codes (lower case, substring) that mean the content was refused by moderation.
_MODERATION_WORDS = ("content_policy", "moderat", "nsfw", "sensitive_content", "safety")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _timestamp(value: object, _: object) -> datetime | None:
    if not _is_number(value):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)  # type: ignore[arg-type]
    except (OverflowError, OSError, ValueError):
        return None


def _percent(value: object, _: object) -> float | None:
    return read_percent(value)


def _seconds(value: object, _: object) -> float | None:
    if not _is_number(value) or value < 0:  # type: ignore[operator]
        return None
    return float(value)  # type: ignore[arg-type]


def _urls(value: object, _: object) -> list[str]:
    urls = []
    for item in value if isinstance(value, list) else [value]:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url:
            urls.append(url)
    return urls


def read_str(value: object) -> str:
    """A string, as the strict converter reads one (TypeError for anything else)."""
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def read_optional_str(value: object) -> str | None:
    return None if value is None else read_str(value)


# What the hooks above give for a ``... | None`` field (the NewTypes are only for the converter).


def read_timestamp(value: object) -> Timestamp | None:
    if value.__class__ is int:
        # Whole seconds repeat: every task of a busy second has the same created_at, and each
        # poll of a task repeats it. datetimes are immutable, so equal ones can be shared.
        cached = _SECONDS.get(value)
        if cached is None:
            cached = _timestamp(value, None)
            if len(_SECONDS) >= _SECONDS_KEPT:
                _SECONDS.clear()
            _SECONDS[value] = cached
        return cached  # type: ignore[return-value]
    if value.__class__ is float:
        return _timestamp(value, None)  # type: ignore[return-value]
    return None  # not a JSON number (a bool is not one)


_SECONDS: dict[int, datetime | None] = {}
_SECONDS_KEPT = 4096


def read_percent(value: object) -> Percent | None:
    """A percentage clamped to 0-100, or None for anything but a finite number."""
    if value.__class__ is int or value.__class__ is float:  # a JSON number (a bool is not one)
        if not math.isfinite(value):
            return None
        return min(100.0, max(0.0, float(value)))  # type: ignore[return-value]
    return None


def read_seconds(value: object) -> Seconds | None:
    return _seconds(value, None)  # type: ignore[return-value]


def read_object(value: object) -> dict[str, Any]:
    """A JSON object, as the converter requires for a nested class (TypeError otherwise)."""
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def read_url_list(value: object) -> Urls:
    """What the hook gives for a field typed ``Urls`` (not optional): null is no URL."""
    return _urls(value, None)  # type: ignore[return-value]


def read_urls(value: object) -> Urls | None:
    return None if value is None else _urls(value, None)  # type: ignore[return-value]


def read_failure(value: object) -> Failure | None:
    return None if value is None else _failure(value, None)  # type: ignore[return-value]


def _error_code(value: object, _: object) -> str | int | None:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _failure(value: object, _: object) -> TaskFailure | None:
    """``{"code", "message", "type"}`` or a bare string; anything else is no information."""
    if isinstance(value, str):
        return TaskFailure(code=None, message=clip(value))
    if not isinstance(value, dict):
        return None
    code = _error_code(value.get("code"), None)
    message = value.get("message")
    if not isinstance(message, str) or not message:
        message = value.get("type") if isinstance(value.get("type"), str) else None
    return TaskFailure(code=code, message=clip(message or ""))


# --------------------------------------------------------------------------------------------
# Strict primitives and containers.


def _strict_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: object, _: object) -> float:
    if not _is_number(value):
        raise TypeError(f"expected a finite number, got {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def _strict_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _is_list(type_: Any) -> bool:
    origin: object = get_origin(type_)
    return origin is list


def make_converter() -> cattrs.Converter:
    """A new private converter: strict primitives, lists only from JSON arrays, attrs classes
    only from JSON objects (extra keys ignored), and the lenient hint types of this module."""
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(Timestamp, _timestamp)
    converter.register_structure_hook(Percent, _percent)
    converter.register_structure_hook(Seconds, _seconds)
    converter.register_structure_hook(Failure, _failure)
    converter.register_structure_hook(Urls, _urls)

    def list_hook(type_: Any) -> Callable[[object, object], list[Any]]:
        (item_type,) = get_args(type_)
        item_hook = converter.get_structure_hook(item_type)

        def structure_list(value: object, _: object) -> list[Any]:
            if not isinstance(value, list):
                raise TypeError(f"expected an array, got {type(value).__name__}")
            return [item_hook(item, item_type) for item in value]

        return structure_list

    def object_hook(cls: type[T]) -> Callable[[object, object], T]:
        inner = make_dict_structure_fn(cls, converter)

        def structure_object(value: object, _: object) -> T:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return inner(value, cls)

        return structure_object

    converter.register_structure_hook_factory(_is_list, list_hook)
    converter.register_structure_hook_factory(attrs.has, object_hook)
    return converter


def register_one_or_many(converter: cattrs.Converter, alias: object, item_type: type[Any]) -> None:
    """Structure ``alias`` (a ``NewType`` of ``list[item_type]``) from a JSON array of items or
    from one bare item, which some providers send interchangeably."""
    item_hook = converter.get_structure_hook(item_type)

    def structure_one_or_many(value: object, _: object) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        return [item_hook(item, item_type) for item in items]

    converter.register_structure_hook(alias, structure_one_or_many)


# --------------------------------------------------------------------------------------------
# Response bodies.


def clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (a server may echo the key)."""
    return text.replace(secret, "<redacted>") if secret and secret in text else text


def body_text(response: HttpResponse, secret: str) -> str:
    """The body as text, undecodable bytes replaced and the key redacted."""
    return redact(response.body.decode("utf-8", errors="replace"), secret)


def _describe(exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        try:
            return clip("; ".join(cattrs.transform_error(exc)), 200)
        except Exception:  # transform_error is best effort; the message must still be built
            pass
    return clip(f"{type(exc).__name__}: {exc}", 200)


def path_segment(value: str) -> str:
    """``value`` percent-encoded as one URL path segment (``/`` included)."""
    if value in ("", ".", ".."):
        raise ValueError(f"not usable in a URL path: {value!r}")
    if _UNRESERVED(value):
        return value  # nothing to encode (the usual task id)
    return urllib.parse.quote(value, safe="")


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+").fullmatch


def is_success(response: HttpResponse) -> bool:
    """True for a 2xx response."""
    return 200 <= response.status < 300


# --------------------------------------------------------------------------------------------
# Unknown statuses: treated as running, each distinct one logged once per process.

#: At most this many distinct (provider, status) pairs are remembered; a server sending endless
#: new spellings must not grow memory or flood the log.
_WARNED_LIMIT = 128
_warned: set[tuple[str, str]] = set()


def warn_unknown_status(provider: str, status: str) -> None:
    """Log a WARNING the first time ``provider`` sends ``status``, then stay quiet about it."""
    key = (provider, status[:100])
    if key in _warned:
        return
    if len(_warned) >= _WARNED_LIMIT:
        return
    _warned.add(key)
    if len(_warned) == _WARNED_LIMIT:
        logger.warning(
            "%s: unknown task status %r, treated as still running (%d distinct unknown statuses "
            "seen; further ones are not logged)",
            provider,
            key[1],
            _WARNED_LIMIT,
        )
    else:
        logger.warning("%s: unknown task status %r, treated as still running", provider, key[1])


def map_status(provider: str, raw: str, table: Mapping[str, TaskStatus]) -> TaskStatus:
    """The TaskStatus for the provider's ``raw`` status string.

    Case, surrounding space and the separator (space, hyphen, underscore) are not significant:
    ``"Request Moderated"`` is looked up as ``"request_moderated"``, ``"IN_PROGRESS"`` as
    ``"in_progress"``; no spelling can change meaning that way. Anything not in ``table`` is
    treated as still running and logged once.
    """
    status = table.get("_".join(raw.lower().replace("-", " ").replace("_", " ").split()))
    if status is None:
        warn_unknown_status(provider, raw)
        return TaskStatus.RUNNING
    return status


def _reset_unknown_status_warnings() -> None:
    """Forget which statuses were logged (for tests)."""
    _warned.clear()


# --------------------------------------------------------------------------------------------
# HTTP error bodies.

_REQUEST_ID_HEADERS = ("x-request-id", "request-id")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def error_from_response(response: HttpResponse, *, provider: str, secret: str) -> APIError:
    """The APIError subclass for a non-2xx ``response``.

    Understands every error envelope the three providers use: ``{"error": {"code", "message",
    "type"}}`` (aggregators; ``error`` may also be a bare string), ``{"success": false,
    "message"}`` (toapis uploads) and ``{"detail": "..." | [{"loc", "msg"}]}`` (BFL, FastAPI
    style). Anything else, HTML included, gives the status's subclass with a clipped text.
    """
    text = body_text(response, secret)
    data: object
    try:
        data = json.loads(response.body)
    except (ValueError, RecursionError):
        data = None
    code: str | int | None = None
    message: str | None = None
    request_id: str | None = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code = _error_code(error.get("code"), None)
            message = _text(error.get("message")) or _text(error.get("type"))
            request_id = _text(error.get("request_id"))
        elif isinstance(error, str):
            message = error
        if code is None:
            code = _error_code(data.get("code"), None)
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


# --------------------------------------------------------------------------------------------
# Requests.


def check_api_key(api_key: object) -> None:
    """A key must be a non-empty string that is safe in a header (the key itself is never shown)."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError("an API key is required (a non-empty string)")
    if not api_key.isprintable() or api_key != api_key.strip():
        raise ConfigurationError(
            "the API key contains whitespace or control characters; check how it was loaded"
        )


def merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``body`` last: its keys win, and where both sides hold an object
    (toapis ``metadata``) the objects are merged the same way instead of replaced."""
    for key, value in extra.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            body[key] = merge_extra(dict(current), value)
        else:
            body[key] = value
    return body


def url_images(request: GenerationRequest, *, provider: str) -> list[str]:
    """The request's images, which must all be http(s) URLs on an aggregator (the session
    uploads paths and bytes first and passes the returned URLs)."""
    urls = []
    for index, image in enumerate(request.images):
        if not (isinstance(image, str) and image.lower().startswith(("http://", "https://"))):
            raise ValidationError(
                f"images[{index}]",
                f"<{len(image)} bytes>" if isinstance(image, bytes) else image,
                "an http(s) URL",
                reason=f"{provider} accepts image URLs only; upload the image first",
            )
        urls.append(image)
    return urls


_AGGREGATOR_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}


def aggregator_fields(
    request: GenerationRequest, *, provider: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body fields toapis and apimart share (``model``, ``prompt``, ``size``, ``n``,
    ``image_urls``) and, apart, the options, which toapis nests in ``metadata`` and apimart puts
    at the top level (``response_format`` spelt ``png``/``jpg`` on both). Only set fields are
    included.

    Neither documents ``seed``, so it is not sent: a request with ``seed`` set is refused
    (ValidationError) rather than silently losing it; ``extra`` can still carry one.
    """
    if request.seed is not None:
        raise ValidationError(
            "seed",
            request.seed,
            f"None on {provider}",
            reason=f"{provider} does not document seed; pass it via extra if you must",
        )
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
    if request.size is not None:
        body["size"] = request.size
    if send_n(request):
        body["n"] = request.n
    if request.images:
        body["image_urls"] = url_images(request, provider=provider)
    options: dict[str, Any] = {}
    if request.response_format is not None:
        fmt = request.response_format
        options["response_format"] = _AGGREGATOR_FORMATS.get(fmt, fmt)
    if request.safety_tolerance is not None:
        options["safety_tolerance"] = request.safety_tolerance
    if request.prompt_upsampling is not None:
        options["prompt_upsampling"] = request.prompt_upsampling
    return body, options


def send_n(request: GenerationRequest) -> bool:
    """True when ``n`` goes on the wire: Grok models take it; the Flux models make one image
    per task, so there ``n`` must be None or 1 (dropping a larger one would silently charge
    for fewer images than asked)."""
    if request.n is None:
        return False
    if request.model.startswith("grok"):
        return True
    if request.n != 1:
        raise ValidationError(
            "n", request.n, "1", reason=f"{request.model} makes one image per task"
        )
    return False


def inline_image(image: object, index: int) -> str:
    """An image for BFL's JSON body: a string as is (URL or base64), bytes as base64 text."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, str):
        return image
    raise ValidationError(
        f"images[{index}]", image, "a URL, base64 text or bytes", reason="read the file first"
    )


# --------------------------------------------------------------------------------------------
# The part every codec shares.


@attrs.frozen(kw_only=True)
class BaseCodec:
    """API key, user agent, headers and error parsing, common to the codecs.

    The key is never part of a repr; it only goes into the auth header of built requests.
    """

    api_key: str = attrs.field(repr=False)
    user_agent: str = USER_AGENT
    #: The headers of every API request, built once (read-only, so requests can share them).
    _header_map: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False, hash=False)

    #: Set by each codec: its name and its private converter.
    name = "base"
    _wire: ClassVar[cattrs.Converter]
    #: Hand-written readers for the bodies read most often (a poll body is read on every poll
    #: of every task), each giving exactly what the converter gives for the shapes it expects.
    #: Anything else makes a reader raise, and the converter reads the body again: it accepts
    #: what it accepts and says precisely what is wrong with the rest. A test checks the two
    #: agree on generated bodies.
    _readers: ClassVar[Mapping[type, Callable[[dict[str, Any]], Any]]] = {}

    def __attrs_post_init__(self) -> None:
        check_api_key(self.api_key)
        if not isinstance(self.user_agent, str) or not self.user_agent.isprintable():
            raise ConfigurationError("user_agent must be a printable string")
        headers = {**self._auth_headers(), "User-Agent": self.user_agent, "Accept": "application/json"}
        object.__setattr__(self, "_header_map", MappingProxyType(headers))

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _headers(self) -> Mapping[str, str]:
        return self._header_map

    def _get(self, url: str) -> HttpRequest:
        return HttpRequest(method="GET", url=url, headers=self._headers())

    def _object(self, response: HttpResponse, what: str) -> dict[str, Any]:
        """A 2xx body as a JSON object: APIError for a non-2xx response, ProtocolError for a
        body that is not a JSON object."""
        if not is_success(response):
            raise self.parse_error(response)
        try:
            data = json.loads(response.body)
        except (ValueError, RecursionError) as exc:
            raise self._protocol_error(response, f"{what} response is not JSON") from exc
        if not isinstance(data, dict):
            raise self._protocol_error(response, f"{what} response is not a JSON object")
        return data

    def _structure(self, response: HttpResponse, cls: type[T], what: str) -> T:
        """A 2xx body structured as ``cls`` by the codec's converter (APIError for non-2xx,
        ProtocolError for anything unreadable)."""
        data = self._object(response, what)
        reader = self._readers.get(cls)
        if reader is not None:
            try:
                return reader(data)  # type: ignore[no-any-return]
            except Exception:  # the converter below reads it again and explains
                pass
        try:
            return self._wire.structure(data, cls)
        except Exception as exc:  # a converter may raise anything on hostile input: one boundary
            message = f"unexpected {what} response ({_describe(exc)})"
            raise self._protocol_error(response, message) from exc

    def _protocol_error(self, response: HttpResponse, message: str) -> ProtocolError:
        """A ProtocolError carrying the response's (clipped) body; the key is redacted from
        both the message and the body."""
        return ProtocolError(
            redact(f"{self.name}: {message}", self.api_key),
            body=body_text(response, self.api_key),
            provider=self.name,
        )

    def _task_id(self, value: object, response: HttpResponse) -> str:
        """A usable task id: a non-empty printable string, safe as one URL path segment."""
        if (
            not isinstance(value, str)
            or not value.strip()
            or value in (".", "..")
            or len(value) > 1000
            or not value.isprintable()
        ):
            shown = clip(repr(value), 80)
            raise self._protocol_error(response, f"no usable task id in response ({shown})")
        return value

    def _check_ref(self, ref: TaskRef) -> None:
        if ref.provider != self.name:
            raise ValueError(f"a {ref.provider!r} task cannot be polled on {self.name!r}")

    def _failure(self, failure: TaskFailure | None, default: str) -> TaskFailure:
        """The failure as reported (its message redacted), or ``default`` when none was."""
        if failure is None:
            return TaskFailure(code=None, message=default)
        code = redact(failure.code, self.api_key) if isinstance(failure.code, str) else failure.code
        return TaskFailure(code=code, message=redact(failure.message, self.api_key) or default)

    def _failed_status(self, failure: TaskFailure) -> TaskStatus:
        """FAILED, or MODERATED when the aggregator's failure code says content policy.

        The aggregators report a refused prompt or image as an ordinary ``failed`` task; only its
        error code tells moderation apart, so the caller gets ``ModerationError`` for it.
        """
        code = str(failure.code or "").lower()
        if any(word in code for word in _MODERATION_WORDS):
            return TaskStatus.MODERATED
        return TaskStatus.FAILED

    def _not_found(self, response: HttpResponse, ref: TaskRef) -> TaskState:
        """A 404 on a poll: the provider does not know the task (a terminal state)."""
        error = self.parse_error(response)
        return TaskState(
            task_id=ref.task_id,
            status=TaskStatus.NOT_FOUND,
            raw_status=f"HTTP {response.status}",
            failure=TaskFailure(code=error.code, message=error.message),
        )

    def parse_error(self, response: HttpResponse) -> APIError:
        """The APIError subclass for a non-2xx response, with code, message and request id."""
        return error_from_response(response, provider=self.name, secret=self.api_key)
