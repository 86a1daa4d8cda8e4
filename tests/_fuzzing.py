"""Hypothesis building blocks shared by the codec tests: arbitrary responses around a
provider's own body shapes, and the check that a parse function fails only in documented ways."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from flux_async._http import HttpResponse
from flux_async.errors import APIError, ProtocolError

T = TypeVar("T")

FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
HEADERS = st.dictionaries(
    st.sampled_from(["Retry-After", "X-Request-Id", "CF-Ray", "Content-Type"]),
    st.text(max_size=40),
    max_size=3,
)
RECEIVED = st.none() | st.datetimes(timezones=st.just(UTC))


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def responses(
    shaped: st.SearchStrategy[Any],
    bodies: st.SearchStrategy[bytes],
    statuses: Sequence[int],
    *,
    received: st.SearchStrategy[Any] = RECEIVED,
) -> st.SearchStrategy[HttpResponse]:
    """A 200 carrying a body of the provider's shape, or any status with any body."""
    return st.builds(
        HttpResponse,
        status=st.just(200),
        headers=HEADERS,
        body=shaped.map(as_json),
        received_at=received,
    ) | st.builds(
        HttpResponse,
        status=st.sampled_from(list(statuses)) | st.integers(100, 599),
        headers=HEADERS,
        body=bodies,
        received_at=received,
    )


def only_documented_errors(call: Callable[[], T], *, provider: str, key: str) -> T | None:
    """The call's value, or None when it raised ProtocolError or APIError (checked here: the
    right provider, and the key nowhere in the error)."""
    try:
        return call()
    except (ProtocolError, APIError) as exc:
        error: ProtocolError | APIError = exc
    assert error.provider == provider
    assert key not in str(error)
    if isinstance(error, ProtocolError):
        assert key not in (error.body or "")
    return None
