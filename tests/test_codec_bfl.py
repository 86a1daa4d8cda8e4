"""The Black Forest Labs codec as plain functions over the payload samples in tests/samples/bfl/.

BFL documents no error bodies; the error samples use the FastAPI ``{"detail": ...}`` shape its
API answers with (a list of ``{"loc", "msg", "type"}`` for validation errors).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _fuzzing import FUZZ, as_json, only_documented_errors
from _fuzzing import responses as fuzz_responses
from hypothesis import given
from hypothesis import strategies as st

import flux_async
from flux_async._http import HttpResponse
from flux_async.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InsufficientCreditsError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from flux_async.models import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    TaskFailure,
    TaskRef,
    TaskState,
    TaskStatus,
)
from flux_async.providers import BflCodec, _status

KEY = "bfl-0123456789-abcdef-SECRET"
SAMPLES = Path(__file__).parent / "samples" / "bfl"
HEADERS = {
    "x-key": KEY,
    "User-Agent": f"flux-async/{flux_async.__version__}",
    "Accept": "application/json",
}
POLLING_URL = "https://api.us1.bfl.ai/v1/get_result?id=b9b1..."
REF = TaskRef(provider="bfl", task_id="b9b1...", polling_url=POLLING_URL, model="flux-kontext-pro")
RECEIVED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

T = TypeVar("T")


def response(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **kwargs: Any
) -> HttpResponse:
    return HttpResponse(
        status=status, headers=headers or {}, body=(SAMPLES / name).read_bytes(), **kwargs
    )


@pytest.fixture
def codec() -> BflCodec:
    return BflCodec(api_key=KEY)


@pytest.fixture(autouse=True)
def _fresh_unknown_status_log() -> None:
    _status._reset_unknown_status_warnings()


def test_codec_attributes(codec: BflCodec) -> None:
    assert (codec.name, codec.default_base_url) == ("bfl", "https://api.bfl.ai")
    assert codec.max_upload_bytes == 20 * 1024 * 1024
    assert codec.supports_client_business_id is False


# -- submit -----------------------------------------------------------------------------------


def test_submit_with_every_field(codec: BflCodec) -> None:
    png = b"\x89PNG\r\n\x1a\n-bytes-"
    request = GenerationRequest(
        model="flux-kontext-max",
        prompt="put the cat in a spacesuit",
        size="21:9",
        images=["https://example.com/cat.png", png, "aGVsbG8=", "https://example.com/d.webp"],
        response_format="jpeg",
        safety_tolerance=6,
        prompt_upsampling=True,
        seed=1234,
    )
    http = codec.build_submit(request, client_business_id="not-supported")
    assert (http.method, http.url, dict(http.headers), http.form) == (
        "POST",
        "/v1/flux-kontext-max",
        HEADERS,
        None,
    )
    assert http.json == {
        "prompt": "put the cat in a spacesuit",
        "input_image": "https://example.com/cat.png",
        "input_image_2": base64.b64encode(png).decode("ascii"),
        "input_image_3": "aGVsbG8=",
        "input_image_4": "https://example.com/d.webp",
        "aspect_ratio": "21:9",
        "output_format": "jpeg",
        "seed": 1234,
        "safety_tolerance": 6,
        "prompt_upsampling": True,
    }


@pytest.mark.parametrize("size", ["match_input_image", "auto", None])
def test_submit_omits_aspect_ratio_to_follow_the_input(codec: BflCodec, size: str | None) -> None:
    request = GenerationRequest(
        model="flux-kontext-pro", prompt="p", size=size, images=[b"img"], response_format="png"
    )
    assert codec.build_submit(request).json == {
        "prompt": "p",
        "input_image": base64.b64encode(b"img").decode("ascii"),
        "output_format": "png",
    }


def test_submit_extra_is_merged_last(codec: BflCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-pro",
        prompt="p",
        size="1:1",
        extra={
            "webhook_url": "https://me.example/hook",
            "webhook_secret": "s3",
            "aspect_ratio": "4:3",
        },
    )
    assert codec.build_submit(request).json == {
        "prompt": "p",
        "aspect_ratio": "4:3",
        "webhook_url": "https://me.example/hook",
        "webhook_secret": "s3",
    }


def test_submit_refuses_what_it_cannot_send(codec: BflCodec) -> None:
    too_many = GenerationRequest(
        model="flux-kontext-pro", prompt="p", images=["https://x.test/a.png"] * 5
    )
    with pytest.raises(ValidationError, match="images"):
        codec.build_submit(too_many)
    with pytest.raises(ValidationError, match=r"images\[0\]"):
        codec.build_submit(
            GenerationRequest(model="flux-kontext-pro", prompt="p", images=[Path("cat.png")])
        )
    with pytest.raises(ValidationError, match="n"):
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p", n=4))


@pytest.mark.parametrize("name", ["submit.json", "submit_cost_fields.json"])
def test_parse_submit_keeps_the_polling_url_verbatim(codec: BflCodec, name: str) -> None:
    assert codec.parse_submit(response(name), model="flux-kontext-pro") == REF


def test_the_submit_answer_reports_its_cost_in_credits(codec: BflCodec) -> None:
    assert codec.submit_cost(response("submit_cost_fields.json")) == 0.04  # 4 credits
    assert codec.submit_cost(response("submit.json")) is None


def test_a_submit_answer_is_decoded_once_for_its_task_and_its_cost(
    codec: BflCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[bytes] = []
    real = flux_async._http.read_json

    def counting(body: bytes) -> Any:
        decoded.append(body)
        return real(body)

    monkeypatch.setattr(flux_async._http, "read_json", counting)
    answer = response("submit_cost_fields.json")
    assert codec.parse_submit(answer, model="flux-kontext-pro") == REF
    assert codec.submit_cost(answer) == 0.04
    assert len(decoded) == 1
    # What a caller reads with json() is its own copy: the codecs' decoded value stays as read.
    mine = answer.json()
    mine["cost"] = 99
    assert codec.submit_cost(answer) == 0.04
    assert answer.decoded() is answer.decoded()
    assert answer.decoded() is not mine


@pytest.mark.parametrize(
    ("cost", "expected"),
    [(8, 0.08), (8.0, 0.08), (0, 0.0), (3.2, 0.032), (None, None), (-4, None), ("4", None),
     (True, None), ([4], None), ({"credits": 4}, None)],
)
def test_an_odd_submit_cost_is_no_cost_and_never_fails_the_submit(
    codec: BflCodec, cost: Any, expected: float | None
) -> None:
    body = json.dumps({"id": "abc-1", "polling_url": POLLING_URL, "cost": cost}).encode()
    answer = HttpResponse(status=200, body=body)
    assert codec.submit_cost(answer) == expected
    assert codec.parse_submit(answer, model="flux-kontext-pro").task_id == "abc-1"


@pytest.mark.parametrize("body", [b"", b"<html/>", b"[4]", b'"cost"', b"{", b"[" * 100_000])
def test_a_submit_cost_from_an_unreadable_body_is_none(codec: BflCodec, body: bytes) -> None:
    assert codec.submit_cost(HttpResponse(status=200, body=body)) is None


@pytest.mark.parametrize(
    "polling_url", [None, "", "ftp://api.bfl.ai/x", "/relative", 7, {"url": "x"}]
)
def test_submit_without_usable_polling_url_keeps_the_task_id(
    codec: BflCodec, polling_url: Any
) -> None:
    body = {"id": "abc-1"} if polling_url is None else {"id": "abc-1", "polling_url": polling_url}
    ref = codec.parse_submit(HttpResponse(status=200, body=json.dumps(body).encode()), model="m")
    assert ref == TaskRef(provider="bfl", task_id="abc-1", model="m")
    assert codec.build_poll(ref).url == "/v1/get_result?id=abc-1"


@pytest.mark.parametrize(
    "body", [b"{}", b'{"polling_url": "https://api.bfl.ai/x"}', b'{"id": null}', b"[1]", b"<html/>"]
)
def test_submit_without_id_is_a_protocol_error(codec: BflCodec, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_submit(HttpResponse(status=200, body=body), model="m")


def test_submit_validation_error_is_a_bad_request(codec: BflCodec) -> None:
    with pytest.raises(
        BadRequestError, match="aspect_ratio: Aspect ratio must be between 21:9 and 9:21"
    ):
        codec.parse_submit(response("error_validation.json", 422), model="m")


# -- poll -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "polling_url",
    [
        POLLING_URL,
        "https://api.eu1.bfl.ai/v1/get_result?id=a%2Fb&region=eu-1",
        "http://127.0.0.1:8123/bfl/v1/get_result?id=x",
    ],
)
def test_poll_uses_the_polling_url_verbatim(codec: BflCodec, polling_url: str) -> None:
    http = codec.build_poll(
        TaskRef(provider="bfl", task_id="never-used-here", polling_url=polling_url)
    )
    assert (http.method, http.url, dict(http.headers), http.json) == (
        "GET",
        polling_url,
        HEADERS,
        None,
    )


def test_poll_of_a_bare_id_falls_back_to_get_result(codec: BflCodec) -> None:
    assert codec.build_poll(TaskRef(provider="bfl", task_id="b9b1-x")).url == "/v1/get_result?id=b9b1-x"
    odd = TaskRef(provider="bfl", task_id="ok")
    object.__setattr__(odd, "task_id", "a&b=c")  # altered after it was made: refused all the same
    with pytest.raises(ValidationError, match="task_id"):
        codec.build_poll(odd)


READY_URL = "https://delivery-us1.bfl.ai/..."


def ready(expires_at: datetime | None) -> TaskState:
    return TaskState(
        task_id="b9b1...",
        status=TaskStatus.SUCCEEDED,
        raw_status="Ready",
        result=GenerationResult(
            task_id="b9b1...",
            images=(GeneratedImage(READY_URL, expires_at),),
            model="flux-kontext-pro",
            seed=1234,
        ),
    )


POLLS = {
    "poll_pending.json": TaskState(
        task_id="b9b1...", status=TaskStatus.RUNNING, raw_status="Pending"
    ),
    "poll_pending_fraction.json": TaskState(
        task_id="b9b1...", status=TaskStatus.RUNNING, raw_status="Pending", progress=35.0
    ),
    "poll_pending_progress.json": TaskState(
        task_id="b9b1...", status=TaskStatus.RUNNING, raw_status="Pending", progress=42.5
    ),
    "poll_ready.json": ready(RECEIVED + timedelta(minutes=10)),
    "poll_error.json": TaskState(
        task_id="b9b1...",
        status=TaskStatus.FAILED,
        raw_status="Error",
        failure=TaskFailure(None, "description"),
    ),
    "poll_request_moderated.json": TaskState(
        task_id="b9b1...",
        status=TaskStatus.MODERATED,
        raw_status="Request Moderated",
        failure=TaskFailure(
            "Request Moderated", 'Request Moderated: {"Moderation Reasons": ["Derivative Works"]}'
        ),
        cost_usd=0.0,  # a moderated task is not charged
    ),
    "poll_content_moderated.json": TaskState(
        task_id="b9b1...",
        status=TaskStatus.MODERATED,
        raw_status="Content Moderated",
        failure=TaskFailure(
            "Content Moderated", 'Content Moderated: {"Moderation Reasons": ["NSFW"]}'
        ),
        cost_usd=0.0,  # a moderated task is not charged
    ),
    "poll_task_not_found.json": TaskState(
        task_id="b9b1...",
        status=TaskStatus.NOT_FOUND,
        raw_status="Task not found",
        failure=TaskFailure(None, "Task not found"),
    ),
}


@pytest.mark.parametrize("name", sorted(POLLS))
def test_parse_poll(codec: BflCodec, name: str) -> None:
    assert codec.parse_poll(response(name, received_at=RECEIVED), ref=REF) == POLLS[name]


def test_result_expiry_is_unknown_without_an_arrival_time(codec: BflCodec) -> None:
    assert codec.parse_poll(response("poll_ready.json"), ref=REF) == ready(None)


def test_naive_arrival_time_is_taken_as_utc(codec: BflCodec) -> None:
    naive = RECEIVED.replace(tzinfo=None)
    state = codec.parse_poll(response("poll_ready.json", received_at=naive), ref=REF)
    assert state == ready(RECEIVED + timedelta(minutes=10))


def test_arrival_time_at_the_end_of_the_calendar_gives_no_expiry(codec: BflCodec) -> None:
    state = codec.parse_poll(response("poll_ready.json", received_at=datetime.max), ref=REF)
    assert state == ready(None)


@pytest.mark.parametrize(
    "status", ["READY", "ready", "request moderated", "Task Not Found", " Pending "]
)
def test_status_case_and_spacing(codec: BflCodec, status: str) -> None:
    body = {"status": status, "result": {"sample": READY_URL}}
    state = codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)
    assert state.status is not TaskStatus.RUNNING or status.strip() == "Pending"
    assert state.raw_status == status


def test_http_404_on_poll_is_not_found(codec: BflCodec) -> None:
    state = codec.parse_poll(HttpResponse(status=404, body=b'{"detail": "Not Found"}'), ref=REF)
    assert state == TaskState(
        task_id="b9b1...",
        status=TaskStatus.NOT_FOUND,
        raw_status="HTTP 404",
        failure=TaskFailure(None, "Not Found"),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"status": "Ready"},
        {"status": "Ready", "result": None},
        {"status": "Ready", "result": {"sample": ""}},
        {"status": "Ready", "result": {"sample": 3}},
        {"status": None},
        {"id": "x"},
    ],
)
def test_poll_without_what_it_promises_is_a_protocol_error(codec: BflCodec, body: Any) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)


def test_odd_seed_and_details_do_not_fail_a_ready_task(codec: BflCodec) -> None:
    body = {
        "status": "Ready",
        "result": {"sample": READY_URL, "seed": "1234"},
        "details": {"a": [1, {"b": None}]},
    }
    state = codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)
    assert state.result is not None
    assert state.result.seed is None


# -- errors, uploads, lookup ------------------------------------------------------------------

ERRORS = [
    (
        "error_validation.json",
        422,
        BadRequestError,
        "aspect_ratio: Aspect ratio must be between 21:9 and 9:21",
    ),
    ("error_insufficient_credits.json", 402, InsufficientCreditsError, "Insufficient credits"),
    ("error_forbidden.json", 403, AuthenticationError, "Not authorized to use this model"),
    (
        "error_rate_limited.json",
        429,
        RateLimitError,
        "You have exceeded the number of active tasks (24)",
    ),
    ("error_server.json", 500, ServerError, "Internal Server Error"),
    ("error_server.json", 503, ServerError, "Internal Server Error"),
]


@pytest.mark.parametrize(("name", "status", "cls", "message"), ERRORS)
def test_parse_error(
    codec: BflCodec, name: str, status: int, cls: type[APIError], message: str
) -> None:
    error = codec.parse_error(response(name, status, {"cf-ray": "8e1f2a-FRA", "Retry-After": "4"}))
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.provider, error.request_id) == (
        status,
        None,
        message,
        "bfl",
        "8e1f2a-FRA",
    )
    if isinstance(error, RateLimitError):
        assert error.retry_after == 4.0


def test_no_upload_api(codec: BflCodec) -> None:
    with pytest.raises(ConfigurationError, match="no upload API"):
        codec.build_upload(b"x", filename="a.png", content_type="image/png")
    with pytest.raises(ProtocolError):
        codec.parse_upload(HttpResponse(status=200, body=b'{"url": "https://x.test/a.png"}'))
    with pytest.raises(AuthenticationError):
        codec.parse_upload(response("error_forbidden.json", 403))


def test_no_lookup(codec: BflCodec) -> None:
    assert codec.build_lookup("job-1") is None
    assert codec.parse_lookup(response("poll_ready.json"), model="m") is None


def test_key_never_shows(codec: BflCodec) -> None:
    assert KEY not in repr(codec)
    assert KEY not in repr(
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p"))
    )
    assert KEY not in repr(codec.build_poll(REF))
    echoed = json.dumps({"detail": f"invalid key {KEY}"}).encode()
    assert KEY not in str(codec.parse_error(HttpResponse(status=401, body=echoed)))
    moderated = {"status": "Request Moderated", "details": {"echo": KEY}}
    state = codec.parse_poll(HttpResponse(status=200, body=json.dumps(moderated).encode()), ref=REF)
    assert state.failure is not None
    assert KEY not in state.failure.message


# -- fuzz: every parse function raises only ProtocolError or APIError -------------------------

STATUSES = [
    "Pending",
    "Ready",
    "Error",
    "Request Moderated",
    "Content Moderated",
    "Task not found",
    "ready",
    "",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([*STATUSES, KEY])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "status", "result", "sample", "polling_url", "detail"])
            | st.text(max_size=6),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values
) -> st.SearchStrategy[Any]:
    """Mostly (4 in 5) a well-typed value, sometimes any JSON value in its place."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else good)


texts = mostly(st.text(max_size=10), scalars)
shaped = st.fixed_dictionaries(
    {"status": mostly(st.sampled_from(STATUSES)), "id": texts},
    optional={
        "polling_url": mostly(st.just(POLLING_URL) | st.text(max_size=10), scalars),
        "progress": scalars,
        "result": mostly(
            st.fixed_dictionaries(
                {"sample": mostly(st.just(READY_URL), scalars)},
                optional={"seed": scalars, "prompt": scalars},
            )
            | st.none()
        ),
        "error": json_values,
        "details": json_values,
        "cost": scalars,
    },
)
responses = fuzz_responses(shaped, (shaped | json_values).map(as_json) | st.binary(max_size=200), [200, 402, 403, 404, 422, 429, 500, 503], received=st.none() | st.datetimes(timezones=st.none() | st.just(UTC)))


def _only_documented_errors(call: Callable[[], T]) -> T | None:
    return only_documented_errors(call, provider="bfl", key=KEY)


@FUZZ
@given(response=responses)
def test_fuzz_parse_functions(response: HttpResponse) -> None:
    codec = BflCodec(api_key=KEY)
    ref = _only_documented_errors(lambda: codec.parse_submit(response, model="m"))
    cost = codec.submit_cost(response)
    assert cost is None or (math.isfinite(cost) and cost >= 0)
    if ref is not None:
        assert isinstance(ref, TaskRef)
        assert ref.task_id
        assert codec.build_poll(ref).method == "GET"
    assert _only_documented_errors(lambda: codec.parse_lookup(response, model="m")) is None
    assert _only_documented_errors(lambda: codec.parse_upload(response)) is None
    error = codec.parse_error(response)
    assert isinstance(error, APIError)
    assert KEY not in str(error)


@FUZZ
@given(response=responses)
def test_fuzz_parse_poll(response: HttpResponse) -> None:
    state = _only_documented_errors(lambda: BflCodec(api_key=KEY).parse_poll(response, ref=REF))
    if state is not None:
        assert isinstance(state, TaskState)
        assert state.progress is None or 0 <= state.progress <= 100
        if state.status is TaskStatus.SUCCEEDED:
            assert state.result is not None
            (image,) = state.result.images
            assert image.url
            assert (image.expires_at is None) == (response.received_at is None)
            assert image.expires_at is None or image.expires_at.tzinfo is not None
        if state.terminal and state.status is not TaskStatus.SUCCEEDED:
            assert state.failure is not None


def test_every_sample_is_used() -> None:
    used = {*POLLS, *(row[0] for row in ERRORS), "submit.json", "submit_cost_fields.json"}
    assert used == {p.name for p in SAMPLES.glob("*.json")}
