"""Webhook verification: a provider's delivery (headers and raw body) and your secrets in, a
:class:`WebhookEvent` out, or :class:`~flux_async.errors.WebhookVerificationError`.

Pure: no I/O, no aiohttp/anyio, and no clock but ``time.time()`` when :func:`verify` is not
given ``now``. Any web framework can call it from its handler::

    from flux_async.webhooks import verify

    event = verify("toapis", request.headers, await request.read(), secrets=[SECRET])
    # event.task_id, event.status, event.event_id (dedupe by it), event.authenticated

A webhook is a wake-up, never a result: even an authentic event only says "look at this task
now". The task's state comes from a poll, so a forged or replayed event can cost a poll, never
a wrong result.

How each provider is checked (the signing details are in PROVIDERS.md):

- **toapis** signs: ``X-ToAPIs-Webhook-Id``, ``X-ToAPIs-Webhook-Timestamp`` (unix seconds) and
  ``X-ToAPIs-Webhook-Signature: v1=<hex>[,v1=<hex>]``, each ``<hex>`` the lower-case
  HMAC-SHA256, keyed by the secret, of ``id + "." + timestamp + "." + raw_body``. The timestamp
  must lie within ``tolerance`` seconds of ``now``, in the past or the future (both ends
  included). The event is accepted when any listed ``v1`` signature matches any configured
  secret (two of each happen while a secret is rotated). Tolerated, as the scheme is partly
  second-hand: signatures separated by commas and/or spaces, hex in either case, entries of
  another version ignored, a timestamp in milliseconds (13 digits or more). The event id is
  the ``X-ToAPIs-Webhook-Id`` header.
- **apimart** does not sign: the body (the ``GET /v1/tasks/{id}`` reply) is parsed and the
  event comes back with ``authenticated=False``; ``secrets`` is not used. Its event id is
  ``"apimart:<task id>:<status>"`` (status as apimart spells it), so a duplicate delivery of
  the same outcome dedupes.
- **BFL** documents two schemes, and both are accepted: ``X-BFL-Signature: sha256=<hex>``
  (HMAC-SHA256 of the raw body, keyed by the secret) and ``X-Webhook-Secret: <secret>``
  (compared with each configured secret). At least one must be present, and each one present
  must verify. BFL sends no timestamp, so there is no window: a replay is caught only by
  deduplication. No event id header exists: the id is ``"bfl:<task id>:<status>"``.

Decided rules:

- With no secret configured, a toapis or BFL delivery is refused (``reason="no_secret"``):
  verification is impossible, and accepting unauthenticated events silently would hide a
  misconfiguration. (An unauthenticated event would still only cost a poll.) An empty secret
  string is a ConfigurationError: it is always a setup mistake.
- Signatures are checked before the body is parsed; every comparison is constant-time.
- The body must be the raw ``bytes`` received (not text, not re-encoded JSON): a ``str`` is
  a TypeError. Header look-up is case-insensitive and accepts any mapping, multidicts
  included; a header repeated with different values is refused, except the signature header,
  whose values are pooled.
- A toapis ``endpoint.test`` delivery is an authentic event about no task: ``task_id`` and
  ``status`` are None.
- Messages name headers and fields only: never a secret, a signature or a body value.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import attrs

from ._http import read_json
from .errors import ConfigurationError, WebhookVerificationError
from .models import TaskStatus
from .providers import apimart, bfl, toapis
from .providers._webhook import WebhookBody, WebhookBodyError

__all__ = ["DEFAULT_TOLERANCE", "WebhookEvent", "verify"]

#: How far a toapis timestamp may be from ``now``, either way, in seconds (toapis' ±5 minutes).
DEFAULT_TOLERANCE = 300.0

_TOAPIS_ID = "X-ToAPIs-Webhook-Id"
_TOAPIS_TIMESTAMP = "X-ToAPIs-Webhook-Timestamp"
_TOAPIS_SIGNATURE = "X-ToAPIs-Webhook-Signature"
_BFL_SIGNATURE = "X-BFL-Signature"
_BFL_SECRET = "X-Webhook-Secret"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}").fullmatch
_DIGITS = re.compile(r"[0-9]{1,20}").fullmatch
_SEPARATORS = re.compile(r"[,\s]+")
#: A timestamp this large is taken to be in milliseconds.
_MILLISECONDS = 10**12

_READERS: Mapping[str, Callable[[Mapping[str, object]], WebhookBody]] = MappingProxyType(
    {"toapis": toapis.read_webhook, "apimart": apimart.read_webhook, "bfl": bfl.read_webhook}
)


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """One verified webhook delivery.

    ``event_id`` is what to deduplicate by (toapis' header id; derived from the task and its
    status elsewhere). ``task_id`` and ``status`` (the library's :class:`TaskStatus`) say which
    task to look at; both are None only for a delivery about no task (toapis'
    ``endpoint.test``). ``authenticated`` is False for apimart, which does not sign.
    ``payload`` is the decoded JSON body, read-only.
    """

    provider: str
    event_id: str
    task_id: str | None
    status: TaskStatus | None
    authenticated: bool
    payload: Mapping[str, object] = attrs.field(eq=False, repr=False)


def verify(
    provider: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: str | bytes | Iterable[str | bytes],
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> WebhookEvent:
    """Check one webhook delivery and return what it says.

    ``provider`` is ``"toapis"``, ``"apimart"`` or ``"bfl"``; ``headers`` the request's headers
    (any mapping, looked up case-insensitively); ``body`` the raw body bytes exactly as
    received; ``secrets`` the signing secret, or several while one is rotated (unused for
    apimart); ``tolerance`` the allowed distance in seconds between toapis' timestamp and
    ``now`` (unix seconds, default the current time). Raises WebhookVerificationError for a
    delivery to refuse, TypeError for a body that is not bytes, ConfigurationError for an
    unknown provider or an empty secret.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"body must be the raw request body as bytes, not {type(body).__name__}: "
            "a signature covers the exact bytes received (read them with e.g. "
            "`await request.read()`, not `.text()` or `.json()`)"
        )
    raw = bytes(body)
    keys = _keys(secrets)
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError("tolerance must be a finite number of seconds >= 0")
    name = provider.strip().lower() if isinstance(provider, str) else provider
    if name == "toapis":
        event_id = _check_toapis(headers, raw, keys, tolerance, time.time() if now is None else now)
    elif name == "bfl":
        _check_bfl(headers, raw, keys)
        event_id = None
    elif name == "apimart":
        event_id = None
    else:
        raise ConfigurationError(
            f"unknown provider {provider!r}; expected one of: apimart, bfl, toapis"
        )
    payload, read = _read_body(name, raw)
    if event_id is None:
        event_id = f"{name}:{read.task_id}:{read.raw_status}"
    return WebhookEvent(
        provider=name,
        event_id=event_id,
        task_id=read.task_id,
        status=read.status,
        authenticated=name != "apimart",
        payload=MappingProxyType(payload),
    )


# -- secrets and headers ---------------------------------------------------------------------------


def _keys(secrets: str | bytes | Iterable[str | bytes]) -> tuple[bytes, ...]:
    """The secrets as HMAC keys; one string or bytes value is one secret."""
    if isinstance(secrets, (str, bytes)):
        secrets = (secrets,)
    keys = []
    for secret in secrets:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        elif not isinstance(secret, bytes):
            raise TypeError(f"a webhook secret must be str or bytes, not {type(secret).__name__}")
        if not secret:
            raise ConfigurationError(
                "a webhook secret is empty (is the variable that holds it set?)"
            )
        keys.append(secret)
    return tuple(keys)


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive; a multidict may hold several)."""
    wanted = name.lower()
    return [v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted]


def _refuse(provider: str, reason: str, message: str) -> WebhookVerificationError:
    return WebhookVerificationError(f"{provider} webhook refused: {message}", provider=provider,
                                    reason=reason)


def _single(headers: Mapping[str, str], name: str, provider: str) -> str:
    """The one value of a required header."""
    values = {v.strip() if isinstance(v, str) else v for v in _values(headers, name)}
    if not values:
        raise _refuse(provider, "missing_header", f"the {name} header is missing")
    if len(values) > 1:
        raise _refuse(provider, "bad_header", f"the {name} header is repeated with other values")
    value = values.pop()
    if not isinstance(value, str) or not value:
        raise _refuse(provider, "bad_header", f"the {name} header is empty")
    return value


def _optional(headers: Mapping[str, str], name: str, provider: str) -> str | None:
    return _single(headers, name, provider) if _values(headers, name) else None


def _matches(expected: bytes, given: Iterable[bytes]) -> bool:
    """Whether any of ``given`` equals ``expected`` (each compared in constant time)."""
    found = False
    for value in given:
        found |= hmac.compare_digest(expected, value)
    return found


# -- toapis ------------------------------------------------------------------------------------------


def _check_toapis(
    headers: Mapping[str, str], raw: bytes, keys: tuple[bytes, ...], tolerance: float, now: float
) -> str:
    """Check a toapis delivery's signature and timestamp; its event id."""
    if not keys:
        raise _refuse("toapis", "no_secret", "no secret is configured, so it cannot be verified")
    event_id = _single(headers, _TOAPIS_ID, "toapis")
    stamp = _single(headers, _TOAPIS_TIMESTAMP, "toapis")
    lines = _values(headers, _TOAPIS_SIGNATURE)
    if not lines:
        raise _refuse("toapis", "missing_header", f"the {_TOAPIS_SIGNATURE} header is missing")
    if not _DIGITS(stamp):
        raise _refuse("toapis", "bad_header",
                      f"the {_TOAPIS_TIMESTAMP} header is not a whole number of seconds")
    seconds = int(stamp)
    if seconds >= _MILLISECONDS:
        seconds = seconds // 1000
    if not abs(now - seconds) <= tolerance:
        raise _refuse("toapis", "timestamp_out_of_window",
                      f"its timestamp is more than {tolerance:g} s from now (a replay, or a clock "
                      "out of step)")
    given = []
    for line in lines:
        for entry in _SEPARATORS.split(line.strip()):
            version, sep, value = entry.partition("=")
            if sep and version.strip().lower() == "v1" and _HEX64(value.strip()):
                given.append(value.strip().lower().encode("ascii"))
    if not given:
        raise _refuse("toapis", "bad_signature",
                      f"the {_TOAPIS_SIGNATURE} header carries no v1 signature")
    signed = f"{event_id}.{stamp}.".encode() + raw
    if not any(
        _matches(hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii"), given)
        for key in keys
    ):
        raise _refuse("toapis", "bad_signature", "no signature matches a configured secret")
    return event_id


# -- BFL ---------------------------------------------------------------------------------------------


def _check_bfl(headers: Mapping[str, str], raw: bytes, keys: tuple[bytes, ...]) -> None:
    """Check a BFL delivery by whichever of its two schemes it carries (each one present)."""
    if not keys:
        raise _refuse("bfl", "no_secret", "no secret is configured, so it cannot be verified")
    signature = _optional(headers, _BFL_SIGNATURE, "bfl")
    secret = _optional(headers, _BFL_SECRET, "bfl")
    if signature is None and secret is None:
        raise _refuse("bfl", "missing_header",
                      f"neither {_BFL_SIGNATURE} nor {_BFL_SECRET} is present")
    if signature is not None:
        scheme, sep, value = signature.partition("=")
        if not (sep and scheme.strip().lower() == "sha256" and _HEX64(value.strip())):
            raise _refuse("bfl", "bad_signature",
                          f"the {_BFL_SIGNATURE} header is not sha256=<64 hex digits>")
        given = [value.strip().lower().encode("ascii")]
        if not any(
            _matches(hmac.new(key, raw, hashlib.sha256).hexdigest().encode("ascii"), given)
            for key in keys
        ):
            raise _refuse("bfl", "bad_signature",
                          f"the {_BFL_SIGNATURE} header matches no configured secret")
    if secret is not None:
        shown = secret.encode("utf-8", "surrogateescape")
        if not any(_matches(key, [shown]) for key in keys):
            raise _refuse("bfl", "bad_signature",
                          f"the {_BFL_SECRET} header matches no configured secret")


# -- body --------------------------------------------------------------------------------------------


def _read_body(provider: str, raw: bytes) -> tuple[dict[str, object], WebhookBody]:
    """The decoded body and what the provider's codec reads in it."""
    try:
        data = read_json(raw)
    except (ValueError, RecursionError) as exc:
        raise _refuse(provider, "bad_body", "the body is not JSON") from exc
    if not isinstance(data, dict):
        raise _refuse(provider, "bad_body", "the body is not a JSON object")
    try:
        return data, _READERS[provider](data)
    except WebhookBodyError as exc:
        raise _refuse(provider, "bad_body", str(exc)) from exc
