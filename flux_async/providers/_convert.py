"""The codecs' cattrs converters and lenient readers: :func:`make_converter`, the hint types
(``Timestamp``, ``Percent``, ``Seconds``, ``Amount``, ``Failure``, ``Urls``) with their hooks, and the
``read_*`` functions the hand-written poll readers call. Pure: no I/O, no clock, no
aiohttp/anyio, nothing from transport, scheduler or session; of the provider modules it
imports only :mod:`._errors` (for clipping a provider's text).

Each codec builds its own private :class:`cattrs.Converter` with :func:`make_converter`
(never the global one). The converters are strict about shapes (a string where an object is
expected is an error, and ``123`` is not silently turned into ``"123"``) and lenient about
hints: a progress, a duration or a timestamp that is missing, of the wrong type or out of
range becomes ``None`` rather than failing the whole response, because a task's outcome must
not be lost over a malformed hint.

The ``read_*`` functions run on every field of every poll body, so they live next to the hooks
they must agree with and share their code directly (a test checks readers and converter agree
on generated bodies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NewType, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from ..models import TaskFailure
from ._errors import clip, error_code

__all__ = [
    "Amount",
    "Failure",
    "Percent",
    "Seconds",
    "Timestamp",
    "Urls",
    "describe_structure_error",
    "make_converter",
    "read_amount",
    "read_failure",
    "read_object",
    "read_optional_str",
    "read_percent",
    "read_seconds",
    "read_str",
    "read_timestamp",
    "read_url_list",
    "read_urls",
    "register_one_or_many",
]

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
#: A non-negative amount (a cost, in whatever unit the field is in).
Amount = NewType("Amount", float)
#: A provider's error object (or bare string) -> TaskFailure.
Failure = NewType("Failure", TaskFailure)
#: Result URLs from any of the spellings providers use: a string, a list of strings, an object
#: ``{"url": ...}`` or a list of those. Unusable entries are skipped (a completed task with no
#: usable URL at all is then a ProtocolError, raised by the codec).
Urls = NewType("Urls", list[str])


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
    if value.__class__ is int:  # a JSON number (a bool is not one); any size of int clamps
        return 0.0 if value < 0 else 100.0 if value > 100 else float(value)  # type: ignore[return-value]
    if value.__class__ is float:
        if not math.isfinite(value):
            return None
        return 0.0 if value < 0.0 else 100.0 if value > 100.0 else value  # type: ignore[return-value]
    return None


def read_seconds(value: object) -> Seconds | None:
    return _seconds(value, None)  # type: ignore[return-value]


def read_amount(value: object) -> Amount | None:
    """A non-negative finite number, or None for anything else (a cost is a hint: it never
    fails a response)."""
    if value is None:
        return None
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


def _failure(value: object, _: object) -> TaskFailure | None:
    """``{"code", "message", "type"}`` or a bare string; anything else is no information."""
    if isinstance(value, str):
        return TaskFailure(code=None, message=clip(value))
    if not isinstance(value, dict):
        return None
    code = error_code(value.get("code"))
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
    converter.register_structure_hook(Amount, _seconds)
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
# Why a body was refused.


def describe_structure_error(exc: Exception) -> str:
    """A short, clipped account of why the converter refused a body (for a ProtocolError)."""
    if isinstance(exc, cattrs.BaseValidationError):
        try:
            return clip("; ".join(cattrs.transform_error(exc)), 200)
        except Exception:  # transform_error is best effort; the message must still be built
            pass
    return clip(f"{type(exc).__name__}: {exc}", 200)
