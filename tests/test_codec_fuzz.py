"""Codec fuzzing across all three providers: whatever arrives in whatever response slot, a
codec answers with a value of the documented type or raises ``ProtocolError`` / ``APIError``,
never any other exception.

Bodies come from four sources: arbitrary bytes, arbitrary JSON, every recorded sample of every
provider (fed to every codec and every parse function, under any HTTP status), and those
samples mutated (a subtree replaced by arbitrary JSON, a key dropped, a value's type changed),
which reaches the deep fields plain random JSON never gets to. Headers (``Retry-After``,
request ids) and the arrival time vary too.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux_async import APIError, ProtocolError, TaskRef, TaskState
from flux_async._http import HttpResponse
from flux_async.models import TaskStatus
from flux_async.providers import ApimartCodec, BflCodec, Codec, ToapisCodec

KEY = "fuzz-key-Zq81xVb"
SAMPLES = Path(__file__).parent / "samples"
SAMPLE_BODIES: list[Any] = [
    json.loads(path.read_text()) for path in sorted(SAMPLES.glob("*/*.json"))
]
CODECS: dict[str, Callable[[], Codec]] = {
    "toapis": lambda: ToapisCodec(api_key=KEY),
    "apimart": lambda: ApimartCodec(api_key=KEY),
    "bfl": lambda: BflCodec(api_key=KEY),
}
PARSERS = ("parse_submit", "submit_cost", "parse_poll", "parse_lookup", "parse_upload", "parse_error")

# -- strategies ----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "completed", "Ready", "failed", "Pending", "Request Moderated",
                       "http://x/y.png", "https://", "..", "Task not found", "in_progress"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "status", "data", "result", "images", "url", "sample", "error",
                         "code", "message", "progress", "task_id", "polling_url", "success",
                         "detail", "expires_at", "estimated_time", "details", "seed",
                         "cost", "credits_cost"])
        | st.text(max_size=8),
        inner,
        max_size=5,
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a JSON tree (the root included)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if new is _DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(value[head], rest, new)
        return copy
    copy_list = list(value)
    if new is _DELETE and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replace(value[head], rest, new)
    return copy_list


_DELETE = object()


@st.composite
def mutated_samples(draw: st.DrawFn) -> Any:
    body = draw(st.sampled_from(SAMPLE_BODIES))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        new = draw(json_values | st.just(_DELETE)) if path else draw(json_values)
        body = _replace(body, path, new)
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = (
    st.binary(max_size=300)
    | json_values.map(_dumps)
    | st.sampled_from(SAMPLE_BODIES).map(_dumps)
    | mutated_samples().map(_dumps)
    | st.sampled_from([b"", b"{", b"null", b"[]", b"<html><title>502</title></html>",
                       b"\xff\xfe\x00", b"[" * 5000, b'{"a":' * 3000, b"1e999", b"NaN"])
)
statuses = st.sampled_from([200, 201, 204, 400, 401, 402, 403, 404, 408, 413, 422, 429, 500,
                            502, 503, 504]) | st.integers(100, 599)
header_values = st.text(max_size=40) | st.sampled_from(
    ["0", "5", "-1", "1e9", "inf", "nan", "Wed, 21 Oct 2015 07:28:00 GMT",
     "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT"]
)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "X-Request-Id", "request-id", "cf-ray",
                     "Content-Type"]),
    header_values,
    max_size=4,
)
arrivals = st.none() | st.datetimes(timezones=st.just(UTC)) | st.just(
    datetime.max.replace(tzinfo=UTC)
) | st.just(datetime.min.replace(tzinfo=UTC))
responses = st.builds(HttpResponse, status=statuses, headers=headers, body=bodies,
                      received_at=arrivals)
refs = st.builds(
    TaskRef,
    provider=st.just("x"),
    # What a TaskRef takes as a task id (anything else is refused when the ref is made).
    task_id=st.text(string.ascii_letters + string.digits + "._~:-", min_size=1, max_size=20).filter(
        lambda text: text.strip(".") != ""
    ),
    polling_url=st.none() | st.just("https://api.us1.bfl.ai/v1/get_result?id=abc"),
    model=st.none() | st.sampled_from(["flux-kontext-pro", "grok-4-1-image"]),
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- the property --------------------------------------------------------------------------------


def _call(codec: Codec, name: str, response: HttpResponse, ref: TaskRef) -> Any:
    if name == "parse_submit":
        return codec.parse_submit(response, model="flux-kontext-pro")
    if name == "submit_cost":
        return codec.submit_cost(response)
    if name == "parse_poll":
        return codec.parse_poll(response, ref=ref)
    if name == "parse_lookup":
        return codec.parse_lookup(response, model="flux-kontext-pro")
    if name == "parse_upload":
        return codec.parse_upload(response)
    return codec.parse_error(response)


def _check_value(name: str, value: Any, provider: str) -> None:
    if name == "parse_submit":
        assert isinstance(value, TaskRef)
        assert value.provider == provider
        assert value.task_id
        assert value.task_id.isprintable()
    elif name == "submit_cost":  # never raises: a cost is a hint
        assert value is None or (isinstance(value, float) and math.isfinite(value) and value >= 0)
    elif name == "parse_poll":
        assert isinstance(value, TaskState)
        assert isinstance(value.status, TaskStatus)
        assert value.cost_usd is None or (math.isfinite(value.cost_usd) and value.cost_usd >= 0)
        assert value.progress is None or (math.isfinite(value.progress) and 0 <= value.progress <= 100)
        if value.status is TaskStatus.SUCCEEDED:
            assert value.result is not None
            assert value.result.images
            assert all(isinstance(image.url, str) and image.url for image in value.result.images)
        elif value.terminal:
            assert value.failure is not None
    elif name == "parse_lookup":
        assert value is None or (isinstance(value, TaskRef) and value.provider == provider)
    elif name == "parse_upload":
        assert isinstance(value, str)
        assert value
    else:
        assert isinstance(value, APIError)
        _check_error(value, provider)


def _check_error(error: BaseException, provider: str) -> None:
    assert isinstance(error, (ProtocolError, APIError)), repr(error)
    text = str(error)  # building the message never fails
    repr(error)
    assert KEY not in text
    assert getattr(error, "provider", provider) == provider
    if isinstance(error, APIError):
        assert isinstance(error.status, int)
        assert error.code is None or isinstance(error.code, (str, int))
        retry_after = getattr(error, "retry_after", None)
        assert retry_after is None or retry_after >= 0


@pytest.mark.parametrize("provider", sorted(CODECS))
@FUZZ
@given(response=responses, ref=refs)
def test_parse_functions_raise_only_protocol_or_api_errors(
    provider: str, response: HttpResponse, ref: TaskRef
) -> None:
    codec = CODECS[provider]()
    ref = TaskRef(provider=provider, task_id=ref.task_id, polling_url=ref.polling_url,
                  model=ref.model)
    # The same response in every slot: a submit reply read as a poll, an error as an upload...
    for name in PARSERS:
        try:
            value = _call(codec, name, response, ref)
        except (ProtocolError, APIError) as exc:
            assert name != "parse_error", "parse_error returns the error, it never raises"
            assert name != "submit_cost", "a cost is a hint: reading one never raises"
            _check_error(exc, provider)
            continue
        _check_value(name, value, provider)


@pytest.mark.parametrize("provider", sorted(CODECS))
@pytest.mark.parametrize("name", PARSERS)
@pytest.mark.parametrize("status", [200, 404, 429, 500])
def test_every_sample_of_every_provider_in_every_slot(provider: str, name: str, status: int) -> None:
    codec = CODECS[provider]()
    ref = TaskRef(provider=provider, task_id="task_1", model="flux-kontext-pro")
    for body in SAMPLE_BODIES:
        response = HttpResponse(status=status, body=_dumps(body),
                                received_at=datetime(2026, 1, 1, tzinfo=UTC))
        try:
            value = _call(codec, name, response, ref)
        except (ProtocolError, APIError) as exc:
            _check_error(exc, provider)
            continue
        _check_value(name, value, provider)


@pytest.mark.parametrize("provider", sorted(CODECS))
@pytest.mark.parametrize("name", PARSERS)
def test_deep_nesting_is_a_protocol_error_not_a_recursion_error(provider: str, name: str) -> None:
    codec = CODECS[provider]()
    ref = TaskRef(provider=provider, task_id="task_1")
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"data":' * 50_000 + b"1" + b"}" * 50_000,
                 _nested(900)):
        try:
            value = _call(codec, name, HttpResponse(status=200, body=body), ref)
        except (ProtocolError, APIError) as exc:
            _check_error(exc, provider)
            continue
        _check_value(name, value, provider)


def _nested(depth: int) -> bytes:
    """A completed task whose result nests ``depth`` levels deep (written as text: encoding it
    with ``json`` would itself hit the recursion limit)."""
    inner = b'{"data":[' * depth + b'"https://x/y.png"' + b"]}" * depth
    return b'{"status":"completed","result":' + inner + b"}"


# -- hand-written readers agree with the converters ---------------------------------------------------

READERS = [
    pytest.param(factory, cls, reader, id=f"{provider}-{cls.__qualname__}")
    for provider, factory in sorted(CODECS.items())
    for cls, reader in type(factory())._readers.items()  # type: ignore[attr-defined]
]


def test_the_hot_bodies_have_hand_written_readers() -> None:
    assert {param.id for param in READERS} == {"toapis-_Task", "apimart-_Poll", "bfl-_Task"}


@pytest.mark.parametrize(("factory", "cls", "reader"), READERS)
@FUZZ
@given(body=st.dictionaries(st.sampled_from(["status", "model", "progress", "created_at",
                                             "completed_at", "expires_at", "result", "images",
                                             "url", "error", "data", "code", "id", "created",
                                             "completed", "estimated_time", "sample", "seed",
                                             "details"]),
                            json_values, max_size=8)
       | st.builds(lambda task: {"data": task}, json_values)
       | st.builds(lambda tasks: {"data": tasks}, st.lists(json_values, max_size=3))
       | mutated_samples().filter(lambda body: isinstance(body, dict))
       | st.sampled_from([body for body in SAMPLE_BODIES if isinstance(body, dict)]))
def test_a_reader_gives_what_the_converter_gives(
    factory: Callable[[], Codec], cls: type, reader: Callable[[dict[str, Any]], Any],
    body: dict[str, Any],
) -> None:
    """Where the converter reads a body, the reader gives an equal value; where the converter
    refuses one, so does the reader (and the converter then explains why)."""
    wire = type(factory())._wire  # type: ignore[attr-defined]
    try:
        expected = wire.structure(body, cls)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017, PT011 - any error sends it to the converter
            reader(body)
        return
    assert reader(body) == expected
