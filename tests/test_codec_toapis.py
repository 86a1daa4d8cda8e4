"""The toapis codec as plain functions over the payload samples in tests/samples/toapis/.

Also home to the tests of the codec registry (flux_async.providers) and of the shared
unknown-status warning, which every codec uses the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _fuzzing import FUZZ, only_documented_errors
from _fuzzing import responses as fuzz_responses
from hypothesis import given
from hypothesis import strategies as st

import flux_async
from flux_async._http import FormField, HttpRequest, HttpResponse
from flux_async.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
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
from flux_async.providers import (
    CODECS,
    ApimartCodec,
    BflCodec,
    ToapisCodec,
    _codec,
    _status,
    get_codec,
)

KEY = "sk-toapis-test-0123456789abcdef"
SAMPLES = Path(__file__).parent / "samples" / "toapis"
UA = f"flux-async/{flux_async.__version__}"
HEADERS = {"Authorization": f"Bearer {KEY}", "User-Agent": UA, "Accept": "application/json"}
REF = TaskRef(provider="toapis", task_id="img_5b8b", model="flux-kontext-pro")

T = TypeVar("T")


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def response(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **kwargs: Any
) -> HttpResponse:
    return HttpResponse(status=status, headers=headers or {}, body=sample(name), **kwargs)


@pytest.fixture
def codec() -> ToapisCodec:
    return ToapisCodec(api_key=KEY)


@pytest.fixture(autouse=True)
def _fresh_unknown_status_log() -> None:
    _status._reset_unknown_status_warnings()


# -- registry ---------------------------------------------------------------------------------


def test_registry_maps_every_provider_to_its_codec() -> None:
    expected: dict[str, object] = {"toapis": ToapisCodec, "apimart": ApimartCodec, "bfl": BflCodec}
    assert dict(CODECS) == expected
    for name, cls in expected.items():
        codec = get_codec(name, api_key=KEY)
        assert type(codec) is cls
        assert codec.name == name
    assert isinstance(get_codec("TOAPIS", api_key=KEY), ToapisCodec)


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="apimart, bfl, toapis"):
        get_codec("replicate", api_key=KEY)


@pytest.mark.parametrize("key", ["", "   ", "sk-abc\r\nX-Evil: 1", " sk-padded"])
def test_unusable_key_is_a_configuration_error_that_does_not_show_it(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ToapisCodec(api_key=key)
    assert not key.strip() or key.strip() not in str(info.value)


def test_default_user_agent_is_the_package_version_and_can_be_replaced() -> None:
    assert _codec.USER_AGENT == UA
    custom = get_codec("toapis", api_key=KEY, user_agent="my-app/2")
    assert custom.build_poll(REF).headers["User-Agent"] == "my-app/2"


def test_codec_attributes(codec: ToapisCodec) -> None:
    assert codec.default_base_url == "https://toapis.com"
    assert codec.max_upload_bytes == 10 * 1024 * 1024
    assert codec.supports_client_business_id is True


# -- build_submit -----------------------------------------------------------------------------


def test_submit_kontext_text_to_image_with_every_option(codec: ToapisCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-pro",
        prompt="Cyberpunk city at night, neon lights flickering",
        size="16:9",
        response_format="png",
        safety_tolerance=2,
        prompt_upsampling=False,
    )
    http = codec.build_submit(request, client_business_id="job-0001")
    assert http.method == "POST"
    assert http.url == "/v1/images/generations"
    assert dict(http.headers) == HEADERS
    assert http.form is None
    assert http.json == {
        "model": "flux-kontext-pro",
        "prompt": "Cyberpunk city at night, neon lights flickering",
        "size": "16:9",
        "metadata": {"response_format": "png", "safety_tolerance": 2, "prompt_upsampling": False},
        "client_business_id": "job-0001",
    }


def test_submit_kontext_edit_spells_jpeg_as_jpg(codec: ToapisCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-max",
        prompt="Change hair color to blue",
        size="match_input_image",
        images=["https://example.com/input.png"],
        response_format="jpeg",
    )
    assert codec.build_submit(request).json == {
        "model": "flux-kontext-max",
        "prompt": "Change hair color to blue",
        "size": "match_input_image",
        "image_urls": ["https://example.com/input.png"],
        "metadata": {"response_format": "jpg"},
    }


def test_submit_sends_only_what_is_set(codec: ToapisCodec) -> None:
    request = GenerationRequest(model="flux-kontext-pro", prompt="a red fox")
    assert codec.build_submit(request).json == {"model": "flux-kontext-pro", "prompt": "a red fox"}


def test_submit_grok_sends_n_as_a_json_number(codec: ToapisCodec) -> None:
    request = GenerationRequest(
        model="grok-4-1-image",
        prompt="two cats",
        size="1:1",
        n=2,
        images=["https://example.com/a.png", "http://example.com/b.webp"],
    )
    body = codec.build_submit(request).json
    assert body == {
        "model": "grok-4-1-image",
        "prompt": "two cats",
        "size": "1:1",
        "n": 2,
        "image_urls": ["https://example.com/a.png", "http://example.com/b.webp"],
    }
    assert json.dumps(body["n"]) == "2"


def test_submit_kontext_never_sends_n(codec: ToapisCodec) -> None:
    one = GenerationRequest(model="flux-kontext-pro", prompt="p", n=1)
    assert "n" not in codec.build_submit(one).json
    with pytest.raises(ValidationError, match="n"):
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p", n=2))


def test_submit_refuses_seed_which_toapis_does_not_document(codec: ToapisCodec) -> None:
    with pytest.raises(ValidationError) as info:
        codec.build_submit(GenerationRequest(model="flux-kontext-pro", prompt="p", seed=42))
    assert info.value.field == "seed"


def test_extra_is_merged_last_and_objects_are_merged_not_replaced(codec: ToapisCodec) -> None:
    request = GenerationRequest(
        model="flux-kontext-pro",
        prompt="p",
        response_format="png",
        extra={"metadata": {"seed": 7}, "callback_url": "https://toapis.com/cb", "prompt": "q"},
    )
    assert codec.build_submit(request).json == {
        "model": "flux-kontext-pro",
        "prompt": "q",
        "metadata": {"response_format": "png", "seed": 7},
        "callback_url": "https://toapis.com/cb",
    }
    assert request.extra == {
        "metadata": {"seed": 7},
        "callback_url": "https://toapis.com/cb",
        "prompt": "q",
    }


@pytest.mark.parametrize(
    "image", [b"\x89PNG\r\n", Path("/tmp/cat.png"), "/tmp/cat.png", "data:image/png;base64,AAAA"]
)
def test_submit_refuses_anything_but_an_image_url(codec: ToapisCodec, image: Any) -> None:
    request = GenerationRequest(model="flux-kontext-pro", prompt="p", images=[image])
    with pytest.raises(ValidationError) as info:
        codec.build_submit(request)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "images[0]"


# -- submit, poll, lookup responses -----------------------------------------------------------


@pytest.mark.parametrize("name", ["submit.json", "submit_submitted_older.json"])
def test_parse_submit(codec: ToapisCodec, name: str) -> None:
    ref = codec.parse_submit(response(name), model="flux-kontext-pro")
    assert ref == TaskRef(
        provider="toapis", task_id="task_img_abc123def456", model="flux-kontext-pro"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>oops</html>",
        b"[]",
        b'"task"',
        b"{}",
        b'{"id": 12}',
        b'{"id": ""}',
        b'{"id": ".."}',
        b"\xff\xfe",
    ],
)
def test_unreadable_submit_is_a_protocol_error(codec: ToapisCodec, body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.parse_submit(HttpResponse(status=200, body=body), model="flux-kontext-pro")
    assert info.value.provider == "toapis"
    assert info.value.body == body.decode("utf-8", errors="replace")


def test_submit_http_error_raises_its_api_error(codec: ToapisCodec) -> None:
    with pytest.raises(AuthenticationError):
        codec.parse_submit(response("error_unauthorized.json", 401), model="flux-kontext-pro")


def test_build_poll(codec: ToapisCodec) -> None:
    http = codec.build_poll(REF)
    assert (http.method, http.url, dict(http.headers), http.json) == (
        "GET",
        "/v1/images/generations/img_5b8b",
        HEADERS,
        None,
    )
    # An id that would change the URL is refused when the ref is made, and again (a ref
    # altered after it was made) before the URL is built: nothing is percent-encoded through.
    with pytest.raises(ValidationError, match="task_id"):
        TaskRef(provider="toapis", task_id="a/../b?c")
    odd = TaskRef(provider="toapis", task_id="ok")
    object.__setattr__(odd, "task_id", "..")
    with pytest.raises(ValidationError, match="task_id"):
        codec.build_poll(odd)
    with pytest.raises(ValueError, match="bfl"):
        codec.build_poll(TaskRef(provider="bfl", task_id="x"))


COMPLETED_URL = "https://files.toapis.com/generated/1768381061_c55c1bbb.jpg"
COMPLETED = TaskState(
    task_id="img_5b8b",
    status=TaskStatus.SUCCEEDED,
    raw_status="completed",
    progress=100.0,
    created_at=ts(1768381010),
    completed_at=ts(1768381063),
    result=GenerationResult(
        task_id="img_5b8b",
        images=(GeneratedImage(COMPLETED_URL, ts(1768467463)),),
        model="flux-kontext-pro",
    ),
)

POLLS = {
    "submit.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.QUEUED,
        raw_status="queued",
        progress=0.0,
        created_at=ts(1703884800),
    ),
    "submit_submitted_older.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.QUEUED,
        raw_status="submitted",
        progress=0.0,
        created_at=ts(1703884800),
    ),
    "poll_queued.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.QUEUED,
        raw_status="queued",
        progress=0.0,
        created_at=ts(1768381010),
    ),
    "poll_submitted_older.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.QUEUED,
        raw_status="submitted",
        progress=0.0,
        created_at=ts(1768381010),
    ),
    "poll_in_progress.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.RUNNING,
        raw_status="in_progress",
        progress=50.0,
        created_at=ts(1768381010),
    ),
    "poll_unknown_status.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.RUNNING,
        raw_status="rendering_upscale",
        progress=80.0,
        created_at=ts(1768381010),
    ),
    "poll_completed.json": COMPLETED,
    "poll_completed_top_level_images.json": COMPLETED,
    "poll_completed_top_level_url.json": COMPLETED,
    "poll_completed_extra_fields.json": COMPLETED,
    "poll_completed_grok_n2.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.SUCCEEDED,
        raw_status="completed",
        progress=100.0,
        created_at=ts(1768381010),
        completed_at=ts(1768381040),
        result=GenerationResult(
            task_id="img_5b8b",
            images=(
                GeneratedImage(
                    "https://files.toapis.com/generated/1768381039_a1.png", ts(1768467440)
                ),
                GeneratedImage(
                    "https://files.toapis.com/generated/1768381039_a2.png", ts(1768467440)
                ),
            ),
            model="grok-4-1-image",
        ),
    ),
    "poll_failed.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.FAILED,
        raw_status="failed",
        progress=0.0,
        created_at=ts(1768215312),
        failure=TaskFailure(
            "generation_failed", "call upstream API failed: upstream returned status 422"
        ),
    ),
    "poll_failed_content_policy.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.MODERATED,
        raw_status="failed",
        progress=0.0,
        created_at=ts(1768215312),
        failure=TaskFailure("content_policy_violation", "The prompt was rejected by the content policy"),
    ),
    "poll_failed_int_code.json": TaskState(
        task_id="img_5b8b",
        status=TaskStatus.FAILED,
        raw_status="failed",
        progress=0.0,
        created_at=ts(1768215312),
        failure=TaskFailure(500, "upstream timeout"),
    ),
}


@pytest.mark.parametrize("name", sorted(POLLS))
def test_parse_poll(codec: ToapisCodec, name: str) -> None:
    assert codec.parse_poll(response(name), ref=REF) == POLLS[name]


def test_poll_404_is_a_terminal_not_found_state(codec: ToapisCodec) -> None:
    state = codec.parse_poll(response("error_not_found.json", 404), ref=REF)
    assert state == TaskState(
        task_id="img_5b8b",
        status=TaskStatus.NOT_FOUND,
        raw_status="HTTP 404",
        failure=TaskFailure(404, "Task not found"),
    )
    assert state.terminal


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("error_server.json", 500, ServerError),
        ("error_rate_limited.json", 429, RateLimitError),
        ("error_unauthorized.json", 401, AuthenticationError),
    ],
)
def test_poll_http_errors_raise(
    codec: ToapisCodec, name: str, status: int, error: type[APIError]
) -> None:
    with pytest.raises(error):
        codec.parse_poll(response(name, status), ref=REF)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "completed"},
        {"status": "completed", "result": {"data": []}},
        {"status": "completed", "result": {"data": [{"url": 5}]}},
        {"status": 3},
        {"progress": 5},
        {"status": "queued", "result": "nope"},
    ],
)
def test_poll_without_what_it_promises_is_a_protocol_error(codec: ToapisCodec, body: Any) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)


def test_malformed_hints_become_none_instead_of_failing(codec: ToapisCodec) -> None:
    body = {"status": "in_progress", "progress": "half", "created_at": 1e300, "completed_at": True}
    state = codec.parse_poll(HttpResponse(status=200, body=json.dumps(body).encode()), ref=REF)
    assert (state.status, state.progress, state.created_at, state.completed_at) == (
        TaskStatus.RUNNING,
        None,
        None,
        None,
    )
    over = codec.parse_poll(
        HttpResponse(status=200, body=b'{"status": "in_progress", "progress": 250}'), ref=REF
    )
    assert over.progress == 100.0
    for raw, percent in ((b"-3", 0.0), (b"-0.5", 0.0), (b"37", 37.0), (b"99.5", 99.5), (b"1" + b"0" * 400, 100.0), (b"1e400", None)):
        body = b'{"status": "in_progress", "progress": ' + raw + b"}"
        state = codec.parse_poll(HttpResponse(status=200, body=body), ref=REF)
        assert (state.progress, type(state.progress)) == (percent, type(percent)), raw


def test_status_case_and_spacing_are_tolerated(codec: ToapisCodec) -> None:
    state = codec.parse_poll(HttpResponse(status=200, body=b'{"status": " In-Progress "}'), ref=REF)
    assert (state.status, state.raw_status) == (TaskStatus.RUNNING, " In-Progress ")


def test_lookup_by_client_business_id(codec: ToapisCodec) -> None:
    http = codec.build_lookup("job-0001")
    assert http is not None
    assert (http.method, http.url, dict(http.headers)) == (
        "GET",
        "/v1/images/generations/job-0001",
        HEADERS,
    )
    found = codec.parse_lookup(response("poll_in_progress.json"), model="flux-kontext-pro")
    assert found == TaskRef(provider="toapis", task_id="img_5b8b", model="flux-kontext-pro")
    assert (
        codec.parse_lookup(response("error_not_found.json", 404), model="flux-kontext-pro") is None
    )
    with pytest.raises(ServerError):
        codec.parse_lookup(response("error_server.json", 500), model="flux-kontext-pro")


# -- uploads ----------------------------------------------------------------------------------


def test_build_upload(codec: ToapisCodec) -> None:
    http = codec.build_upload(b"\xff\xd8\xffjpeg", filename="cat.jpg", content_type="image/jpeg")
    assert (http.method, http.url, dict(http.headers), http.json) == (
        "POST",
        "/v1/uploads/images",
        HEADERS,
        None,
    )
    assert http.form == (
        FormField(
            name="file", value=b"\xff\xd8\xffjpeg", filename="cat.jpg", content_type="image/jpeg"
        ),
        FormField(name="purpose", value="generation"),
    )


def test_parse_upload(codec: ToapisCodec) -> None:
    url = codec.parse_upload(response("upload_ok.json"))
    assert url == "https://files.toapis.com/uploads/123/1737568800_abc12345.jpg"


@pytest.mark.parametrize("status", [200, 400])
def test_upload_refusal_is_a_bad_request_whatever_the_status(
    codec: ToapisCodec, status: int
) -> None:
    with pytest.raises(BadRequestError) as info:
        codec.parse_upload(response("upload_error.json", status))
    assert info.value.message == "Image too large. Maximum size is 10MB"
    assert (info.value.status, info.value.provider) == (status, "toapis")


def test_upload_without_url_is_a_protocol_error(codec: ToapisCodec) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_upload(HttpResponse(status=200, body=b'{"success": true, "data": {}}'))


# -- HTTP errors ------------------------------------------------------------------------------

ERRORS = [
    # (sample, status, class, code, message)
    ("error_not_found.json", 404, NotFoundError, 404, "Task not found"),
    ("error_invalid_request.json", 400, BadRequestError, "invalid_request", "prompt is required"),
    ("error_unauthorized.json", 401, AuthenticationError, "invalid_api_key", "Invalid API key"),
    ("error_unauthorized.json", 403, AuthenticationError, "invalid_api_key", "Invalid API key"),
    ("error_insufficient_credits.json", 402, InsufficientCreditsError, 402, "Insufficient credits"),
    (
        "error_content_policy.json",
        422,
        BadRequestError,
        "content_policy_violation",
        "The prompt was rejected by the content policy",
    ),
    ("error_rate_limited.json", 429, RateLimitError, "rate_limit_exceeded", "Too many requests"),
    ("error_server.json", 500, ServerError, 500, "Internal server error"),
    ("upload_error.json", 400, BadRequestError, None, "Image too large. Maximum size is 10MB"),
]


@pytest.mark.parametrize(("name", "status", "cls", "code", "message"), ERRORS)
def test_parse_error(
    codec: ToapisCodec, name: str, status: int, cls: type[APIError], code: Any, message: str
) -> None:
    error = codec.parse_error(response(name, status, {"X-Request-Id": "req-42"}))
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.provider, error.request_id) == (
        status,
        code,
        message,
        "toapis",
        "req-42",
    )


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Request-Id": "a1"}, b"{}", "a1"),
        ({"CF-Ray": "8f00-LHR"}, b"{}", "8f00-LHR"),
        ({"CF-Ray": "8f00-LHR"}, b'{"request_id": "body-1"}', "body-1"),
        ({"x-request-id": "hdr", "cf-ray": "ray"}, b'{"error": {"request_id": "body-2"}}', "hdr"),
        ({}, b"{}", None),
    ],
)
def test_request_id_from_headers_or_body(
    codec: ToapisCodec, headers: dict[str, str], body: bytes, expected: str | None
) -> None:
    assert (
        codec.parse_error(HttpResponse(status=400, headers=headers, body=body)).request_id
        == expected
    )


def test_rate_limit_retry_after_seconds_and_http_date(codec: ToapisCodec) -> None:
    now = datetime(2026, 1, 14, 8, 0, 0, tzinfo=UTC)
    error = codec.parse_error(response("error_rate_limited.json", 429, {"Retry-After": "7"}))
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 7.0
    later = now + timedelta(seconds=30)
    dated = codec.parse_error(
        response(
            "error_rate_limited.json",
            429,
            {"Retry-After": later.strftime("%a, %d %b %Y %H:%M:%S GMT")},
            received_at=now,
        )
    )
    assert isinstance(dated, RateLimitError)
    assert dated.retry_after == 30.0
    bare = codec.parse_error(HttpResponse(status=429, body=b""))
    assert isinstance(bare, RateLimitError)
    assert bare.retry_after is None


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (
            502,
            b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>",
            ServerError,
            "502 Bad Gateway",
        ),
        (
            503,
            b"<html><body><h1>Service   Unavailable</h1>\n<p>try later</p></body></html>",
            ServerError,
            "Service Unavailable try later",
        ),
        (401, b"Unauthorized", AuthenticationError, "Unauthorized"),
        (500, b"", ServerError, "HTTP 500 Internal Server Error"),
        (418, b"   ", APIError, "HTTP 418 I'm a Teapot"),
        (599, b"\xff\xfe\xfd", ServerError, "\ufffd\ufffd\ufffd"),
    ],
)
def test_non_json_error_bodies_keep_the_status_class(
    codec: ToapisCodec, status: int, body: bytes, cls: type[APIError], message: str
) -> None:
    error = codec.parse_error(HttpResponse(status=status, body=body))
    assert type(error) is cls
    assert error.message == message


def test_long_error_text_is_clipped(codec: ToapisCodec) -> None:
    error = codec.parse_error(HttpResponse(status=500, body=b"x" * 100_000))
    assert len(error.message) <= 300
    structured = codec.parse_error(
        HttpResponse(status=400, body=json.dumps({"error": {"message": "y" * 10_000}}).encode())
    )
    assert len(structured.message) <= 300


# -- the key stays secret ---------------------------------------------------------------------


def test_key_never_shows(codec: ToapisCodec) -> None:
    assert KEY not in repr(codec)
    assert KEY not in str(codec)
    request = GenerationRequest(
        model="flux-kontext-pro", prompt="p", images=["https://x.test/a.png"]
    )
    for http in (
        codec.build_submit(request),
        codec.build_poll(REF),
        codec.build_lookup("cb"),
        codec.build_upload(b"img", filename="a.png", content_type="image/png"),
    ):
        assert isinstance(http, HttpRequest)
        assert KEY not in repr(http)
    echo = json.dumps(
        {"error": {"code": f"bad-key-{KEY}", "message": f"Invalid API key {KEY}"}}
    ).encode()
    error = codec.parse_error(HttpResponse(status=401, headers={"x-request-id": KEY}, body=echo))
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in str(error.code)
    with pytest.raises(ProtocolError) as info:
        codec.parse_submit(
            HttpResponse(status=200, body=json.dumps({"id": 5, "echo": KEY}).encode()), model="m"
        )
    assert KEY not in str(info.value)
    assert KEY not in (info.value.body or "")
    with pytest.raises(ProtocolError) as info:
        codec.parse_submit(
            HttpResponse(status=200, body=json.dumps({"id": "\n" + KEY}).encode()), model="m"
        )
    assert KEY not in str(info.value)
    failed = {"status": "failed", "error": {"code": KEY, "message": f"upstream said {KEY}"}}
    state = codec.parse_poll(HttpResponse(status=200, body=json.dumps(failed).encode()), ref=REF)
    assert state.failure is not None
    assert KEY not in state.failure.message
    assert KEY not in str(state.failure.code)


# -- unknown statuses -------------------------------------------------------------------------


def test_unknown_status_is_logged_once_per_provider_and_status(
    codec: ToapisCodec, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flux_async")
    for _ in range(3):
        codec.parse_poll(response("poll_unknown_status.json"), ref=REF)
    codec.parse_poll(HttpResponse(status=200, body=b'{"status": "warming_up"}'), ref=REF)
    records = [r for r in caplog.records if r.name == "flux_async"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "rendering_upscale" in records[0].getMessage()
    assert "warming_up" in records[1].getMessage()
    # The same spelling from another provider is a separate warning.
    ApimartCodec(api_key=KEY).parse_poll(
        HttpResponse(status=200, body=b'{"data": {"status": "warming_up"}}'),
        ref=TaskRef(provider="apimart", task_id="t"),
    )
    assert len([r for r in caplog.records if r.name == "flux_async"]) == 3


def test_unknown_status_memory_is_bounded(
    codec: ToapisCodec, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flux_async")
    limit = _status._WARNED_LIMIT
    for i in range(limit * 3):
        body = json.dumps({"status": f"odd-{i}"}).encode()
        assert (
            codec.parse_poll(HttpResponse(status=200, body=body), ref=REF).status
            is TaskStatus.RUNNING
        )
    assert len(_status._warned) == limit
    records = [r for r in caplog.records if r.name == "flux_async"]
    assert len(records) == limit
    assert "not logged" in records[-1].getMessage()


# -- fuzz: every parse function raises only ProtocolError or APIError -------------------------

WIRE_KEYS = [
    "id",
    "status",
    "progress",
    "created_at",
    "completed_at",
    "expires_at",
    "result",
    "data",
    "url",
    "images",
    "error",
    "code",
    "message",
    "success",
    "type",
    "request_id",
]
STATUSES = [
    "queued",
    "submitted",
    "in_progress",
    "completed",
    "failed",
    "COMPLETED",
    "cancelled",
    "",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([*STATUSES, KEY, "https://x.test/i.png"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(WIRE_KEYS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=30,
)


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values
) -> st.SearchStrategy[Any]:
    """Mostly (4 in 5) a well-typed value, sometimes any JSON value in its place."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else good)


url_values = mostly(st.just("https://x.test/i.png"), scalars)
urls = mostly(st.fixed_dictionaries({"url": url_values}))
numbers = mostly(st.integers(-(10**12), 10**12) | st.floats(), scalars)
# Bodies shaped like toapis' own (task, upload, error), with arbitrary values in every field.
shaped = st.fixed_dictionaries(
    {"status": mostly(st.sampled_from(STATUSES))},
    optional={
        "id": mostly(st.text(max_size=8), scalars),
        "progress": numbers,
        "created_at": numbers,
        "completed_at": numbers,
        "expires_at": numbers,
        "result": mostly(st.fixed_dictionaries({"data": mostly(st.lists(urls, max_size=3))})),
        "images": mostly(st.lists(urls, max_size=3)),
        "url": url_values,
        "error": mostly(st.fixed_dictionaries({}, optional={"code": scalars, "message": scalars})),
        "success": scalars,
        "data": mostly(st.fixed_dictionaries({}, optional={"url": url_values})),
        "message": scalars,
    },
)
bodies = (shaped | json_values).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)
responses = fuzz_responses(shaped, bodies, [200, 201, 400, 401, 402, 404, 422, 429, 500, 503])


def _only_documented_errors(call: Callable[[], T]) -> T | None:
    return only_documented_errors(call, provider="toapis", key=KEY)


@FUZZ
@given(response=responses)
def test_fuzz_parse_submit_and_lookup(response: HttpResponse) -> None:
    codec = ToapisCodec(api_key=KEY)
    for parse in (codec.parse_submit, codec.parse_lookup):
        ref = _only_documented_errors(lambda parse=parse: parse(response, model="flux-kontext-pro"))
        assert ref is None or (
            isinstance(ref, TaskRef) and ref.task_id and ref.provider == "toapis"
        )


@FUZZ
@given(response=responses)
def test_fuzz_parse_poll(response: HttpResponse) -> None:
    codec = ToapisCodec(api_key=KEY)
    state = _only_documented_errors(lambda: codec.parse_poll(response, ref=REF))
    if state is not None:
        assert isinstance(state, TaskState)
        assert state.task_id == REF.task_id
        assert state.progress is None or 0 <= state.progress <= 100
        if state.status is TaskStatus.SUCCEEDED:
            assert state.result is not None
            assert state.result.images
            assert all(isinstance(i.url, str) and i.url for i in state.result.images)
        if state.status in (TaskStatus.FAILED, TaskStatus.NOT_FOUND):
            assert state.failure is not None


@FUZZ
@given(response=responses)
def test_fuzz_parse_upload(response: HttpResponse) -> None:
    codec = ToapisCodec(api_key=KEY)
    url = _only_documented_errors(lambda: codec.parse_upload(response))
    assert url is None or (isinstance(url, str) and url)


@FUZZ
@given(response=responses)
def test_fuzz_parse_error_always_returns_an_api_error(response: HttpResponse) -> None:
    error = ToapisCodec(api_key=KEY).parse_error(response)
    assert isinstance(error, APIError)
    assert error.status == response.status
    assert KEY not in str(error)
    assert error.code is None or isinstance(error.code, (str, int))


@FUZZ
@given(status=st.text(max_size=30) | st.sampled_from(STATUSES))
def test_fuzz_any_status_string_gives_a_state(status: str) -> None:
    body = json.dumps(
        {"status": status, "result": {"data": [{"url": "https://x.test/i.png"}]}}
    ).encode()
    state = ToapisCodec(api_key=KEY).parse_poll(HttpResponse(status=200, body=body), ref=REF)
    assert state.raw_status == status


def test_every_sample_is_used() -> None:
    used = {*POLLS, *(row[0] for row in ERRORS), "upload_ok.json", "upload_error.json"}
    assert used == {p.name for p in SAMPLES.glob("*.json")}
