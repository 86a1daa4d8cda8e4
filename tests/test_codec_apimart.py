"""The apimart codec as plain functions over the payload samples in tests/samples/apimart/."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _fuzzing import FUZZ, as_json, only_documented_errors
from _fuzzing import responses as fuzz_responses
from hypothesis import given
from hypothesis import strategies as st

import flux_async
from flux_async._http import FormField, HttpResponse
from flux_async.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    NotFoundError,
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
from flux_async.providers import ApimartCodec, _status
from flux_async.retry import SubmitDecision, classify_submit_failure

KEY = "apimart-test-key-ZYXWVUTSRQ987654"
SAMPLES = Path(__file__).parent / "samples" / "apimart"
HEADERS = {
    "Authorization": f"Bearer {KEY}",
    "User-Agent": f"flux-async/{flux_async.__version__}",
    "Accept": "application/json",
}
TASK_ID = "task_01KA040M0HP1GJWBJYZMKX1XS1"
REF = TaskRef(provider="apimart", task_id=TASK_ID, model="flux-kontext-pro")

T = TypeVar("T")


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def response(name: str, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status=status, headers=headers or {}, body=(SAMPLES / name).read_bytes())


@pytest.fixture
def codec() -> ApimartCodec:
    return ApimartCodec(api_key=KEY)


@pytest.fixture(autouse=True)
def _fresh_unknown_status_log() -> None:
    _status._reset_unknown_status_warnings()


def test_codec_attributes(codec: ApimartCodec) -> None:
    assert (codec.name, codec.default_base_url) == ("apimart", "https://api.apimart.ai")
    assert codec.max_upload_bytes == 20 * 1024 * 1024
    assert codec.supports_client_business_id is False


# -- requests ---------------------------------------------------------------------------------


def test_submit_puts_options_at_top_level(codec: ApimartCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-pro",
        prompt="Change hair color to blue",
        size="16:9",
        images=["https://example.com/input.png"],
        response_format="jpeg",
        safety_tolerance=4,
        prompt_upsampling=True,
    )
    http = codec.build_submit(request, client_business_id="ignored-here")
    assert (http.method, http.url, dict(http.headers), http.form) == (
        "POST",
        "/v1/images/generations",
        HEADERS,
        None,
    )
    assert http.json == {
        "model": "flux-kontext-pro",
        "prompt": "Change hair color to blue",
        "size": "16:9",
        "image_urls": ["https://example.com/input.png"],
        "response_format": "jpg",
        "safety_tolerance": 4,
        "prompt_upsampling": True,
    }


def test_submit_documented_example_and_extra(codec: ApimartCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-max",
        prompt="p",
        size="match_input_image",
        images=["https://example.com/input.png"],
        response_format="png",
        extra={"webhook": "https://me.example/hooks", "seed": 3},
    )
    assert codec.build_submit(request).json == {
        "model": "flux-kontext-max",
        "prompt": "p",
        "size": "match_input_image",
        "image_urls": ["https://example.com/input.png"],
        "response_format": "png",
        "webhook": "https://me.example/hooks",
        "seed": 3,
    }
    minimal = GenerationRequest(model="flux-kontext-pro", prompt="fox")
    assert codec.build_submit(minimal).json == {"model": "flux-kontext-pro", "prompt": "fox"}


def test_submit_refuses_seed_and_non_url_images(codec: ApimartCodec) -> None:
    with pytest.raises(ValidationError, match="seed"):
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p", seed=1))
    with pytest.raises(ValidationError, match=r"images\[0\]"):
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p", images=[b"png"]))


def test_build_poll_and_no_lookup(codec: ApimartCodec) -> None:
    http = codec.build_poll(REF)
    assert (http.method, http.url, dict(http.headers), http.json) == (
        "GET",
        f"/v1/tasks/{TASK_ID}",
        HEADERS,
        None,
    )
    odd = TaskRef(provider="apimart", task_id="ok")
    object.__setattr__(odd, "task_id", "a b/c")  # altered after it was made: never encoded through
    with pytest.raises(ValidationError, match="task_id"):
        codec.build_poll(odd)
    assert codec.build_lookup("job-1") is None
    assert codec.parse_lookup(response("poll_completed.json"), model="m") is None


def test_build_upload(codec: ApimartCodec) -> None:
    http = codec.build_upload(b"GIF89a...", filename="a.gif", content_type="image/gif")
    assert (http.method, http.url, dict(http.headers), http.json) == (
        "POST",
        "/v1/uploads/images",
        HEADERS,
        None,
    )
    assert http.form == (
        FormField(name="file", value=b"GIF89a...", filename="a.gif", content_type="image/gif"),
    )


# -- responses --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["submit.json", "submit_object.json"])
def test_parse_submit_list_or_object(codec: ApimartCodec, name: str) -> None:
    assert codec.parse_submit(response(name), model="flux-kontext-max") == TaskRef(
        provider="apimart", task_id="task_01KFG5BBFNK1YQDTJDZY0P0QT2", model="flux-kontext-max"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "data": []},
        {"code": 200},
        {"code": 200, "data": [{"status": "submitted"}]},
        {"data": "task_1"},
        [],
        "x",
    ],
)
def test_submit_without_task_is_a_protocol_error(codec: ApimartCodec, body: Any) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_submit(HttpResponse(status=200, body=json.dumps(body).encode()), model="m")


URL = "https://upload.apimart.ai/f/image/...png"
COMPLETED = TaskState(
    task_id=TASK_ID,
    status=TaskStatus.SUCCEEDED,
    raw_status="completed",
    progress=100.0,
    estimated_time=60.0,
    created_at=ts(1763088289),
    completed_at=ts(1763088308),
    result=GenerationResult(
        task_id=TASK_ID, images=(GeneratedImage(URL, ts(1763174708)),), model="flux-kontext-pro"
    ),
)


def running(status: TaskStatus, raw: str, progress: float) -> TaskState:
    return TaskState(
        task_id=TASK_ID,
        status=status,
        raw_status=raw,
        progress=progress,
        estimated_time=60.0,
        created_at=ts(1763088289),
    )


POLLS = {
    "poll_completed.json": COMPLETED,
    "poll_completed_url_string.json": COMPLETED,
    "poll_completed_cost_fields.json": TaskState(
        task_id=TASK_ID,
        status=TaskStatus.SUCCEEDED,
        raw_status="completed",
        progress=100.0,
        estimated_time=60.0,
        created_at=ts(1763088289),
        completed_at=ts(1763088308),
        result=GenerationResult(
            task_id=TASK_ID,
            images=(
                GeneratedImage("https://upload.apimart.ai/f/image/a.png", ts(1763174708)),
                GeneratedImage("https://upload.apimart.ai/f/image/b.png", ts(1763174708)),
            ),
            model="flux-kontext-pro",
        ),
        cost_usd=0.04,  # ``cost`` wins over a ``credits_cost`` that disagrees with it
    ),
    "poll_completed_credits_cost_only.json": TaskState(
        task_id=TASK_ID,
        status=TaskStatus.SUCCEEDED,
        raw_status="completed",
        progress=100.0,
        estimated_time=60.0,
        created_at=ts(1763088289),
        completed_at=ts(1763088308),
        result=GenerationResult(
            task_id=TASK_ID,
            images=(GeneratedImage("https://upload.apimart.ai/f/image/a.png", ts(1763174708)),),
            model="flux-kontext-pro",
        ),
        cost_usd=0.032,  # credits_cost / 10
    ),
    "poll_submitted.json": running(TaskStatus.QUEUED, "submitted", 0.0),
    "poll_pending.json": running(TaskStatus.QUEUED, "pending", 0.0),
    "poll_processing.json": running(TaskStatus.RUNNING, "processing", 30.0),
    "poll_in_progress.json": running(TaskStatus.RUNNING, "in_progress", 60.0),
    "poll_failed.json": TaskState(
        task_id=TASK_ID,
        status=TaskStatus.FAILED,
        raw_status="failed",
        progress=0.0,
        estimated_time=60.0,
        created_at=ts(1763088289),
        completed_at=ts(1763088301),
        failure=TaskFailure(
            "task_failed", "Image generation failed: upstream rejected the input image"
        ),
    ),
    "poll_failed_content_policy.json": TaskState(
        task_id=TASK_ID,
        status=TaskStatus.MODERATED,
        raw_status="failed",
        progress=0.0,
        estimated_time=60.0,
        created_at=ts(1763088289),
        completed_at=ts(1763088301),
        failure=TaskFailure("content_policy_violation", "Output rejected by moderation"),
    ),
    "poll_cancelled.json": TaskState(
        task_id=TASK_ID,
        status=TaskStatus.CANCELLED,
        raw_status="cancelled",
        progress=0.0,
        estimated_time=60.0,
        created_at=ts(1763088289),
        failure=TaskFailure(None, "task cancelled"),
    ),
}


@pytest.mark.parametrize("name", sorted(POLLS))
def test_parse_poll(codec: ApimartCodec, name: str) -> None:
    assert codec.parse_poll(response(name), ref=REF) == POLLS[name]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"cost": 0.064}, 0.064),
        ({"cost": 0}, 0.0),
        ({"credits_cost": 0.64}, 0.064),
        ({"cost": 0.05, "credits_cost": 5}, 0.05),
        ({"cost": "0.05", "credits_cost": 0.5}, 0.05),  # an unusable cost: credits_cost / 10
        ({"cost": None, "credits_cost": None}, None),
        ({"cost": -1}, None),
        ({"cost": True}, None),
        ({"cost": "free"}, None),
        ({"cost": {"usd": 1}}, None),
        ({"credits_cost": [4]}, None),
        ({"cost": 1e400}, None),
        ({}, None),
    ],
)
def test_a_task_status_reports_its_cost_and_an_odd_one_is_no_cost(
    codec: ApimartCodec, fields: dict[str, Any], expected: float | None
) -> None:
    for sample in ("poll_processing.json", "poll_completed.json", "poll_failed.json"):
        body = json.loads((SAMPLES / sample).read_bytes())
        body["data"].update(fields)
        text = json.dumps(body).replace("Infinity", "1e400")
        state = codec.parse_poll(HttpResponse(status=200, body=text.encode()), ref=REF)
        assert state.cost_usd == (None if expected is None else pytest.approx(expected)), sample
        assert state.cost_usd is None or isinstance(state.cost_usd, float)


def test_poll_data_as_a_list_is_accepted(codec: ApimartCodec) -> None:
    body = json.loads((SAMPLES / "poll_completed.json").read_bytes())
    body["data"] = [body["data"]]
    assert (
        codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)
        == COMPLETED
    )


def test_poll_404_is_a_terminal_not_found_state(codec: ApimartCodec) -> None:
    assert codec.parse_poll(response("error_not_found.json", 404), ref=REF) == TaskState(
        task_id=TASK_ID,
        status=TaskStatus.NOT_FOUND,
        raw_status="HTTP 404",
        failure=TaskFailure(404, "task not found"),
    )


@pytest.mark.parametrize(
    "data",
    [
        {"status": "completed"},
        {"status": "completed", "result": {"images": []}},
        {"status": "completed", "result": {"images": [{"url": [1, None]}]}},
        {"status": "completed", "result": {"images": [{"expires_at": 1}]}},
        {"progress": 10},
    ],
)
def test_poll_without_what_it_promises_is_a_protocol_error(codec: ApimartCodec, data: Any) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_poll(
            HttpResponse(status=200, body=json.dumps({"code": 200, "data": data}).encode()), ref=REF
        )


@pytest.mark.parametrize("status", ["canceled", "succeeded", "done"])
def test_undocumented_spellings_are_still_running(codec: ApimartCodec, status: str) -> None:
    body = json.dumps({"code": 200, "data": {"status": status}}).encode()
    assert (
        codec.parse_poll(HttpResponse(status=200, body=body), ref=REF).status is TaskStatus.RUNNING
    )


def test_parse_upload(codec: ApimartCodec) -> None:
    assert (
        codec.parse_upload(response("upload_ok.json"))
        == "https://upload.apimart.ai/f/image/9f8e7d6c5b4a-photo.jpg"
    )
    wrapped = json.dumps(
        {"code": 200, "data": {"url": "https://upload.apimart.ai/f/x.png"}}
    ).encode()
    assert (
        codec.parse_upload(HttpResponse(status=200, body=wrapped))
        == "https://upload.apimart.ai/f/x.png"
    )
    with pytest.raises(ProtocolError):
        codec.parse_upload(HttpResponse(status=200, body=b'{"filename": "a.png"}'))
    with pytest.raises(BadRequestError, match="maximum 20MB"):
        codec.parse_upload(response("error_too_large.json", 413))


ERRORS = [
    ("error_bad_request.json", 400, BadRequestError, 400, "Invalid size: 5:4"),
    ("error_unauthorized.json", 401, AuthenticationError, 401, "Invalid token"),
    ("error_payment_required.json", 402, InsufficientCreditsError, 402, "Insufficient balance"),
    ("error_not_found.json", 404, NotFoundError, 404, "task not found"),
    ("error_too_large.json", 413, BadRequestError, 413, "File too large, maximum 20MB"),
    ("error_rate_limited.json", 429, RateLimitError, 429, "Rate limit exceeded"),
    ("error_server.json", 500, ServerError, 500, "Internal server error"),
    (
        "error_build_request_failed.json",
        500,
        ServerError,
        500,
        "build_request_failed: invalid parameter safety_tolerance",
    ),
]


@pytest.mark.parametrize(("name", "status", "cls", "code", "message"), ERRORS)
def test_parse_error(
    codec: ApimartCodec, name: str, status: int, cls: type[APIError], code: Any, message: str
) -> None:
    error = codec.parse_error(response(name, status, {"request-id": "am-7"}))
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.provider, error.request_id) == (
        status,
        code,
        message,
        "apimart",
        "am-7",
    )


def test_rate_limit_carries_retry_after(codec: ApimartCodec) -> None:
    error = codec.parse_error(response("error_rate_limited.json", 429, {"retry-after": "2.5"}))
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 2.5


def test_build_request_failed_submit_is_never_retried_blindly(codec: ApimartCodec) -> None:
    error = codec.parse_error(response("error_build_request_failed.json", 500))
    assert classify_submit_failure(error) is SubmitDecision.AMBIGUOUS
    with pytest.raises(ServerError):
        codec.parse_submit(response("error_build_request_failed.json", 500), model="m")


def test_key_never_shows(codec: ApimartCodec) -> None:
    assert KEY not in repr(codec)
    assert KEY not in repr(
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p"))
    )
    assert KEY not in repr(codec.build_poll(REF))
    assert KEY not in repr(codec.build_upload(b"x", filename="a.png", content_type="image/png"))
    error = codec.parse_error(
        HttpResponse(status=401, body=json.dumps({"error": {"message": f"bad key {KEY}"}}).encode())
    )
    assert KEY not in str(error)
    with pytest.raises(ProtocolError) as info:
        codec.parse_poll(HttpResponse(status=200, body=f"not json {KEY}".encode()), ref=REF)
    assert KEY not in str(info.value)
    assert KEY not in (info.value.body or "")


# -- fuzz: every parse function raises only ProtocolError or APIError -------------------------

STATUSES = [
    "submitted",
    "pending",
    "processing",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
    "Completed",
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
            st.sampled_from(["data", "status", "task_id", "result", "images", "url", "error"])
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


def one_or_many(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return item | st.lists(item, max_size=3)


url_values = mostly(st.just("https://x.test/i.png"), scalars)
numbers = mostly(st.integers(-(10**12), 10**12) | st.floats(), scalars)
image = mostly(
    st.fixed_dictionaries(
        {"url": mostly(one_or_many(url_values))}, optional={"expires_at": numbers}
    )
)
task = st.fixed_dictionaries(
    {
        "status": mostly(st.sampled_from(STATUSES)),
        "result": mostly(
            st.fixed_dictionaries({"images": mostly(st.lists(image, min_size=1, max_size=3))})
        ),
    },
    optional={
        "id": mostly(st.text(max_size=8), scalars),
        "task_id": mostly(st.text(max_size=8), scalars),
        "progress": numbers,
        "estimated_time": numbers,
        "created": numbers,
        "completed": numbers,
        "error": mostly(
            st.fixed_dictionaries(
                {}, optional={"code": scalars, "message": scalars, "type": scalars}
            )
        ),
        "cost": scalars,
        "credits_cost": scalars,
        "usage": json_values,
    },
)
shaped = st.fixed_dictionaries(
    {"data": mostly(one_or_many(task))}, optional={"code": scalars, "url": url_values}
)
responses = fuzz_responses(shaped, (shaped | json_values).map(as_json) | st.binary(max_size=200), [200, 400, 401, 402, 404, 413, 429, 500])


def _only_documented_errors(call: Callable[[], T]) -> T | None:
    return only_documented_errors(call, provider="apimart", key=KEY)


@FUZZ
@given(response=responses)
def test_fuzz_parse_functions(response: HttpResponse) -> None:
    codec = ApimartCodec(api_key=KEY)
    ref = _only_documented_errors(lambda: codec.parse_submit(response, model="m"))
    assert ref is None or (isinstance(ref, TaskRef) and ref.task_id)
    assert _only_documented_errors(lambda: codec.parse_lookup(response, model="m")) is None
    url = _only_documented_errors(lambda: codec.parse_upload(response))
    assert url is None or (isinstance(url, str) and url)
    error = codec.parse_error(response)
    assert isinstance(error, APIError)
    assert KEY not in str(error)


@FUZZ
@given(response=responses)
def test_fuzz_parse_poll(response: HttpResponse) -> None:
    state = _only_documented_errors(lambda: ApimartCodec(api_key=KEY).parse_poll(response, ref=REF))
    if state is not None:
        assert isinstance(state, TaskState)
        assert state.progress is None or 0 <= state.progress <= 100
        assert state.estimated_time is None or state.estimated_time >= 0
        assert state.cost_usd is None or (math.isfinite(state.cost_usd) and state.cost_usd >= 0)
        if state.status is TaskStatus.SUCCEEDED:
            assert state.result is not None
            assert all(isinstance(i.url, str) and i.url for i in state.result.images)
            assert state.result.images
        if state.status in (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.NOT_FOUND):
            assert state.failure is not None


def test_every_sample_is_used() -> None:
    used = {
        *POLLS,
        *(row[0] for row in ERRORS),
        "submit.json",
        "submit_object.json",
        "upload_ok.json",
    }
    assert used == {p.name for p in SAMPLES.glob("*.json")}


def test_an_idempotency_key_travels_in_the_documented_header_and_nowhere_else(codec: ApimartCodec) -> None:
    request = GenerationRequest(model="flux-kontext-pro", prompt="a fox")
    plain = codec.build_submit(request)
    keyed = codec.build_submit(request, idempotency_key="batch-7")
    assert dict(keyed.headers) == {**HEADERS, "Idempotency-Key": "batch-7"}
    assert keyed.json == plain.json  # the body does not change
    assert "Idempotency-Key" not in plain.headers
    assert "Idempotency-Key" not in codec.build_poll(TaskRef(provider="apimart", task_id="t")).headers
