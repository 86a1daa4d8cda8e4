"""Checks shared by the configuration values (``Limits``, ``PollPolicy``, ``RetryPolicy``) and by
every place a task id goes into a URL: plain functions that raise a :class:`FluxError` naming
the field.

Pure: no I/O, no clock; imports nothing of the package but ``errors``, so the models, the retry
policy, the scheduler's policy and the codecs can all use it.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

from .errors import ConfigurationError, ValidationError

__all__ = [
    "MAX_TASK_ID_CHARS",
    "TASK_ID_ALLOWED",
    "check_base_url",
    "check_int",
    "check_number",
    "check_seconds",
    "check_task_id",
    "task_id_problem",
]

#: The longest task id accepted (the providers' are 20 to 40 characters).
MAX_TASK_ID_CHARS = 256
#: What a task id may be made of, as an error says it.
TASK_ID_ALLOWED = f"1 to {MAX_TASK_ID_CHARS} characters from A-Z a-z 0-9 and . _ ~ : -, not only dots"
# Unreserved URL characters (and ':'): an id goes into a URL path or query as it is, so nothing
# in it can be read as a separator ('/', '?', '#', '&'), an escape ('%') or a dot segment.
_TASK_ID = re.compile(r"[A-Za-z0-9._~:-]+")
# Every rule at once (the characters, 1 to 256 of them, one not a dot): the one test a good id
# takes. Each accepted task's id is checked where it is read, made a ref, and put into every
# poll's URL, so the ids that passed lately are remembered (validity depends on the characters
# only, and only exact str values are remembered).
_GOOD_TASK_ID = re.compile(rf"(?=\.*[A-Za-z0-9_~:-])[A-Za-z0-9._~:-]{{1,{MAX_TASK_ID_CHARS}}}")
_PASSED: set[str] = set()
_PASSED_KEPT = 8192


def _passes(value: object) -> bool:
    """True when ``value``, not one of the remembered ids, is a str that is a usable task id
    (then remembered for the next check)."""
    if value.__class__ is not str or _GOOD_TASK_ID.fullmatch(value) is None:
        return False
    if len(_PASSED) >= _PASSED_KEPT:
        _PASSED.clear()
    _PASSED.add(value)
    return True


def task_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a task id, or None when it can."""
    if (value.__class__ is str and value in _PASSED) or _passes(value):
        return None
    if not isinstance(value, str):
        return f"a task id is a str, not {type(value).__name__}"
    if not value:
        return "the task id is empty"
    if len(value) > MAX_TASK_ID_CHARS:
        return f"{len(value)} characters is too long for a task id"
    if not _TASK_ID.fullmatch(value):
        return "the task id holds characters that have a meaning in a URL, whitespace or control characters"
    if not value.strip("."):
        return "a task id of dots only would name another path"
    return None


def check_task_id(value: object, field: str = "task_id") -> str:
    """``value`` when it is a usable task id (see :data:`TASK_ID_ALLOWED`), else ValidationError
    naming ``field``. Run before an id is put into any URL."""
    if (value.__class__ is str and value in _PASSED) or _passes(value):
        return value  # type: ignore[return-value]
    problem = task_id_problem(value)
    if problem is not None or not isinstance(value, str):
        raise ValidationError(field, value, TASK_ID_ALLOWED, reason=problem)
    return value


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (never a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def check_seconds(owner: str, name: str, value: object) -> None:
    """A finite number of seconds above 0 (bools refused), else ConfigurationError naming
    ``owner.name``."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ConfigurationError(f"{owner}.{name} must be a number of seconds above 0, got {value!r}")


def check_number(
    owner: str, name: str, value: object, *, least: float = 0.0, above: bool = False, below: float | None = None
) -> None:
    """A finite number of at least ``least`` (above it when ``above``), below ``below`` when
    given (bools refused), else ConfigurationError naming ``owner.name``."""
    number = _finite(value)
    ok = number is not None and (number > least if above else number >= least)
    if not ok or (below is not None and number is not None and number >= below):
        bound = f"above {least:g}" if above else f"at least {least:g}"
        if below is not None:
            bound += f" and below {below:g}"
        raise ConfigurationError(f"{owner}.{name} must be a finite number {bound}, got {value!r}")


def check_int(owner: str, name: str, value: object, least: int) -> None:
    """A whole number of at least ``least`` (bools refused), else ConfigurationError naming
    ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{owner}.{name} must be a whole number of at least {least}, got {value!r}")


def check_base_url(value: object, name: str = "base_url") -> str:
    """``value`` without its trailing ``/`` when it is a usable base URL: ``http`` or
    ``https``, a host, an optional port and path, and nothing else. Credentials
    (``user:pass@``), a query or a fragment, whitespace or control characters are a
    ConfigurationError naming ``name``; so is anything that is not such a URL. The message
    never repeats credentials or a query (they may hold secrets)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be an http(s) URL (a str), got {type(value).__name__}")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigurationError(f"{name} is not a URL (expected http(s)://host[:port][/path])") from None
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"{name} must not carry credentials (user:password@host); the API key is given apart"
        )
    if "?" in value or "#" in value:
        raise ConfigurationError(
            f"{name} must not have a query or a fragment: give {parts.scheme}://{parts.netloc}{parts.path}"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigurationError(f"{name} must not contain whitespace or control characters, got {value!r}")
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"{name} must be an http:// or https:// URL, got {value!r}")
    if not parts.hostname:
        raise ConfigurationError(f"{name} has no host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise ConfigurationError(f"{name} has a bad port, got {value!r}") from None
    return value.rstrip("/")
