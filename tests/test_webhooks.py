"""flux_async.webhooks.verify against test vectors built here from the providers' rules (the
signed string and the HMAC are computed in this file with hmac/hashlib, never by the code under
test), plus two literal vectors computed once with ``openssl dgst -sha256 -hmac``."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

import flux_async
from flux_async import ConfigurationError, TaskStatus, WebhookVerificationError
from flux_async.webhooks import DEFAULT_TOLERANCE, WebhookEvent, verify

NOW = 1_767_225_600
SECRET = "whsec_test_secret_one"
OTHER = "whsec_test_secret_two"
TASK = "task_img_0123456789abcdef"

# A toapis delivery whose signature was computed once with
#   printf '%s' 'evt_0001.1767225600.<body>' | openssl dgst -sha256 -hmac whsec_test_secret_one
TOAPIS_BODY = (
    b'{"id":"evt_0001","type":"generation.completed","data":{"task_id":"task_img_0123456789abcdef",'
    b'"task_type":"image_generation","model":"flux-kontext-pro","status":"completed"}}'
)
TOAPIS_SIG = "ab3bd79e05a6d60c3927d455ca55e99d398c5c17e91a019b664cd3b418c8d1ad"

# A BFL delivery signed once with
#   printf '%s' '<body>' | openssl dgst -sha256 -hmac bfl-secret-1
BFL_BODY = (
    b'{"id":"b9b1c2d3-0000-4000-a000-000000000001","status":"Ready","result":{"sample":'
    b'"https://delivery-us1.bfl.ai/x.jpeg","prompt":"a red fox","seed":1234},"timestamp":1767225600}'
)
BFL_SIG = "610991ef68d5b578c888bb4b8a041d8b6155386a6274bfbe067a9eb1d97b988a"
BFL_SECRET = "bfl-secret-1"


def toapis_sign(secret: str, event_id: str, stamp: str, body: bytes) -> str:
    signed = event_id.encode() + b"." + stamp.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def toapis_body(status: str = "completed", task_id: str = TASK, **extra: object) -> bytes:
    kind = "generation.completed" if status == "completed" else "generation.failed"
    data = {"task_id": task_id, "task_type": "image_generation", "model": "flux-kontext-pro",
            "status": status}
    return json.dumps({"id": "evt_x", "type": kind, "data": data, **extra}).encode()


def toapis_headers(
    body: bytes, *, secrets: tuple[str, ...] = (SECRET,), stamp: int = NOW, event_id: str = "evt_x"
) -> dict[str, str]:
    sigs = ",".join(f"v1={toapis_sign(s, event_id, str(stamp), body)}" for s in secrets)
    return {
        "X-ToAPIs-Webhook-Id": event_id,
        "X-ToAPIs-Webhook-Timestamp": str(stamp),
        "X-ToAPIs-Webhook-Signature": sigs,
    }


def refused(reason: str) -> pytest.RaisesExc[WebhookVerificationError]:
    return pytest.raises(WebhookVerificationError, check=lambda e: e.reason == reason)


# -- toapis ------------------------------------------------------------------------------------


def test_toapis_literal_vector() -> None:
    headers = {
        "X-ToAPIs-Webhook-Id": "evt_0001",
        "X-ToAPIs-Webhook-Timestamp": str(NOW),
        "X-ToAPIs-Webhook-Signature": f"v1={TOAPIS_SIG}",
    }
    event = verify("toapis", headers, TOAPIS_BODY, secrets=[SECRET], now=NOW)
    assert event == WebhookEvent(provider="toapis", event_id="evt_0001", task_id=TASK,
                                 status=TaskStatus.SUCCEEDED, authenticated=True, payload={})
    assert event.payload["type"] == "generation.completed"
    # The hand-built signature agrees with the literal one.
    assert toapis_sign(SECRET, "evt_0001", str(NOW), TOAPIS_BODY) == TOAPIS_SIG


def test_toapis_good_and_failed() -> None:
    body = toapis_body("failed")
    event = verify("toapis", toapis_headers(body), body, secrets=SECRET, now=NOW)
    assert (event.task_id, event.status, event.event_id) == (TASK, TaskStatus.FAILED, "evt_x")


def test_toapis_wrong_secret() -> None:
    body = toapis_body()
    with refused("bad_signature"):
        verify("toapis", toapis_headers(body, secrets=(OTHER,)), body, secrets=[SECRET], now=NOW)


def test_toapis_rotated_secret_either_configured() -> None:
    body = toapis_body()
    signed_by_old = toapis_headers(body, secrets=(OTHER,))
    event = verify("toapis", signed_by_old, body, secrets=[SECRET, OTHER], now=NOW)
    assert event.authenticated


def test_toapis_two_signatures_in_the_header() -> None:
    body = toapis_body()
    both = toapis_headers(body, secrets=(OTHER, SECRET))
    assert both["X-ToAPIs-Webhook-Signature"].count("v1=") == 2
    assert verify("toapis", both, body, secrets=[SECRET], now=NOW).task_id == TASK
    assert verify("toapis", both, body, secrets=[OTHER], now=NOW).task_id == TASK
    spaced = dict(both, **{"X-ToAPIs-Webhook-Signature": both["X-ToAPIs-Webhook-Signature"]
                           .replace(",", ", ").upper().replace("V1=", "v1=")})
    assert verify("toapis", spaced, body, secrets=[SECRET], now=NOW).task_id == TASK
    with refused("bad_signature"):
        verify("toapis", both, body, secrets=["neither"], now=NOW)


@pytest.mark.parametrize("offset", [-DEFAULT_TOLERANCE, DEFAULT_TOLERANCE, 0])
def test_toapis_window_edges_pass(offset: float) -> None:
    body = toapis_body()
    stamp = NOW + int(offset)
    assert verify("toapis", toapis_headers(body, stamp=stamp), body, secrets=[SECRET], now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_toapis_old_and_future_timestamps_refused(offset: int) -> None:
    body = toapis_body()
    with refused("timestamp_out_of_window"):
        verify("toapis", toapis_headers(body, stamp=NOW + offset), body, secrets=[SECRET], now=NOW)


def test_toapis_custom_tolerance_and_milliseconds() -> None:
    body = toapis_body()
    headers = toapis_headers(body, stamp=NOW - 10)
    with refused("timestamp_out_of_window"):
        verify("toapis", headers, body, secrets=[SECRET], now=NOW, tolerance=9)
    assert verify("toapis", headers, body, secrets=[SECRET], now=NOW, tolerance=10)
    ms = toapis_headers(body, stamp=NOW * 1000 + 123)
    assert verify("toapis", ms, body, secrets=[SECRET], now=NOW)


def test_toapis_tampered_body() -> None:
    body = toapis_body()
    headers = toapis_headers(body)
    with refused("bad_signature"):
        verify("toapis", headers, body.replace(b"completed", b"failed", 1), secrets=[SECRET], now=NOW)


def test_toapis_timestamp_is_part_of_the_signature() -> None:
    body = toapis_body()
    headers = toapis_headers(body)
    headers["X-ToAPIs-Webhook-Timestamp"] = str(NOW + 1)
    with refused("bad_signature"):
        verify("toapis", headers, body, secrets=[SECRET], now=NOW)


@pytest.mark.parametrize(
    "header", ["X-ToAPIs-Webhook-Id", "X-ToAPIs-Webhook-Timestamp", "X-ToAPIs-Webhook-Signature"]
)
def test_toapis_missing_each_header(header: str) -> None:
    body = toapis_body()
    headers = toapis_headers(body)
    del headers[header]
    with refused("missing_header") as info:
        verify("toapis", headers, body, secrets=[SECRET], now=NOW)
    assert header in str(info.value)


@pytest.mark.parametrize("stamp", ["soon", "1767225600.5", "-5", "", "\uff11\uff12\uff13"])
def test_toapis_non_numeric_timestamp(stamp: str) -> None:
    body = toapis_body()
    headers = toapis_headers(body)
    headers["X-ToAPIs-Webhook-Timestamp"] = stamp
    with pytest.raises(WebhookVerificationError) as info:
        verify("toapis", headers, body, secrets=[SECRET], now=NOW)
    assert info.value.reason in ("bad_header", "missing_header")


def test_toapis_signature_without_v1_entry() -> None:
    body = toapis_body()
    headers = toapis_headers(body)
    headers["X-ToAPIs-Webhook-Signature"] = "v0=abc, garbage"
    with refused("bad_signature"):
        verify("toapis", headers, body, secrets=[SECRET], now=NOW)


def test_headers_case_insensitive_and_multidict() -> None:
    body = toapis_body()
    lower = {k.lower(): v for k, v in toapis_headers(body).items()}
    assert verify("toapis", lower, body, secrets=[SECRET], now=NOW)
    multi: CIMultiDict[str] = CIMultiDict(toapis_headers(body, secrets=(OTHER,)))
    multi.add("X-ToAPIs-Webhook-Signature", "v1=" + toapis_sign(SECRET, "evt_x", str(NOW), body))
    assert verify("toapis", multi, body, secrets=[SECRET], now=NOW)
    multi.add("x-toapis-webhook-id", "evt_other")
    with refused("bad_header"):
        verify("toapis", multi, body, secrets=[SECRET], now=NOW)


def test_toapis_endpoint_test_names_no_task() -> None:
    body = json.dumps({"id": "evt_t", "type": "endpoint.test", "data": {}}).encode()
    event = verify("toapis", toapis_headers(body), body, secrets=[SECRET], now=NOW)
    assert (event.task_id, event.status, event.authenticated) == (None, None, True)


def test_toapis_tolerated_payload_variants() -> None:
    # No data.status: the type says it; data.id instead of data.task_id; unknown extras ignored.
    body = json.dumps({"id": "evt_x", "type": "generation.failed",
                       "data": {"id": TASK, "model": "m"}, "extra": [1]}).encode()
    event = verify("toapis", toapis_headers(body), body, secrets=[SECRET], now=NOW)
    assert (event.task_id, event.status) == (TASK, TaskStatus.FAILED)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "generation.completed"}', "data"),
        (b'{"type": "generation.completed", "data": {"status": "completed"}}', "data.task_id"),
        (b'{"type": "generation.completed", "data": {"task_id": 7}}', "data.task_id"),
        (b'{"type": "x", "data": {"task_id": "t"}}', "data.status"),
        (b'{"type": "x", "data": {"task_id": "t", "status": 3}}', "data.status"),
    ],
)
def test_toapis_malformed_bodies_name_the_problem(body: bytes, names: str) -> None:
    with refused("bad_body") as info:
        verify("toapis", toapis_headers(body), body, secrets=[SECRET], now=NOW)
    assert names in str(info.value)


def test_no_secret_refuses_signed_providers() -> None:
    body = toapis_body()
    with refused("no_secret"):
        verify("toapis", toapis_headers(body), body, secrets=[], now=NOW)
    with refused("no_secret"):
        verify("bfl", {"X-BFL-Signature": f"sha256={BFL_SIG}"}, BFL_BODY, secrets=())


def test_empty_secret_is_a_configuration_error() -> None:
    body = toapis_body()
    with pytest.raises(ConfigurationError):
        verify("toapis", toapis_headers(body), body, secrets=[SECRET, ""], now=NOW)


def test_str_body_refused() -> None:
    body = toapis_body()
    with pytest.raises(TypeError, match="bytes"):
        verify("toapis", toapis_headers(body), body.decode(), secrets=[SECRET], now=NOW)  # type: ignore[arg-type]
    assert verify("toapis", toapis_headers(body), bytearray(body), secrets=[SECRET], now=NOW)


def test_unknown_provider() -> None:
    with pytest.raises(ConfigurationError, match="unknown provider"):
        verify("replicate", {}, b"{}", secrets=[SECRET])


def test_secrets_and_signatures_never_in_messages() -> None:
    body = toapis_body()
    good = toapis_headers(body)
    sig = good["X-ToAPIs-Webhook-Signature"]
    cases = [
        ("toapis", toapis_headers(body, secrets=(OTHER,)), body),
        ("toapis", good, body + b" "),
        ("toapis", toapis_headers(body, stamp=NOW - 999), body),
        ("bfl", {"X-Webhook-Secret": OTHER}, BFL_BODY),
        ("bfl", {"X-BFL-Signature": "sha256=" + "0" * 64}, BFL_BODY),
    ]
    for provider, headers, raw in cases:
        with pytest.raises(WebhookVerificationError) as info:
            verify(provider, headers, raw, secrets=[SECRET], now=NOW)
        text = str(info.value) + repr(info.value) + repr(info.value.args)
        for secret in (SECRET, OTHER, sig, sig[3:], "0" * 64):
            assert secret not in text


def test_error_is_exported_and_a_flux_error() -> None:
    assert flux_async.WebhookVerificationError is WebhookVerificationError
    assert issubclass(WebhookVerificationError, flux_async.FluxError)
    with pytest.raises(ValueError, match="reason"):
        WebhookVerificationError("x", provider="toapis", reason="because")


# -- BFL ---------------------------------------------------------------------------------------


def test_bfl_literal_signature_vector() -> None:
    event = verify("bfl", {"X-BFL-Signature": f"sha256={BFL_SIG}"}, BFL_BODY, secrets=[BFL_SECRET])
    assert event.task_id == "b9b1c2d3-0000-4000-a000-000000000001"
    assert event.status is TaskStatus.SUCCEEDED
    assert event.event_id == "bfl:b9b1c2d3-0000-4000-a000-000000000001:Ready"
    assert event.authenticated
    assert hmac.new(BFL_SECRET.encode(), BFL_BODY, hashlib.sha256).hexdigest() == BFL_SIG


def test_bfl_signature_scheme() -> None:
    body = json.dumps({"id": "t-1", "status": "Error", "error": "boom", "timestamp": NOW}).encode()
    sig = hmac.new(b"s2", body, hashlib.sha256).hexdigest()
    event = verify("bfl", {"x-bfl-signature": "sha256=" + sig.upper()}, body, secrets=["s1", "s2"])
    assert (event.task_id, event.status) == ("t-1", TaskStatus.FAILED)
    with refused("bad_signature"):
        verify("bfl", {"X-BFL-Signature": "sha256=" + sig}, body + b"\n", secrets=["s2"])
    with refused("bad_signature"):
        verify("bfl", {"X-BFL-Signature": sig}, body, secrets=["s2"])  # no "sha256=" prefix


def test_bfl_secret_header_scheme() -> None:
    body = json.dumps({"id": "t-2", "status": "Content Moderated"}).encode()
    event = verify("bfl", {"X-Webhook-Secret": "s2"}, body, secrets=["s1", "s2"])
    assert event.status is TaskStatus.MODERATED
    with refused("bad_signature"):
        verify("bfl", {"X-Webhook-Secret": "s3"}, body, secrets=["s1", "s2"])


def test_bfl_both_schemes_each_must_verify() -> None:
    sig = "sha256=" + hmac.new(BFL_SECRET.encode(), BFL_BODY, hashlib.sha256).hexdigest()
    both = {"X-BFL-Signature": sig, "X-Webhook-Secret": BFL_SECRET}
    assert verify("bfl", both, BFL_BODY, secrets=[BFL_SECRET]).authenticated
    with refused("bad_signature"):
        verify("bfl", dict(both, **{"X-Webhook-Secret": "wrong"}), BFL_BODY, secrets=[BFL_SECRET])
    with refused("missing_header"):
        verify("bfl", {}, BFL_BODY, secrets=[BFL_SECRET])


def test_bfl_malformed_body() -> None:
    body = b'{"status": "Ready"}'
    with refused("bad_body") as info:
        verify("bfl", {"X-Webhook-Secret": "s"}, body, secrets=["s"])
    assert "id" in str(info.value)


# -- apimart -----------------------------------------------------------------------------------


APIMART_BODY = json.dumps(
    {"code": 200, "data": {"id": "task_01KA040M0HP1GJWBJYZMKX1XS1", "status": "completed",
                           "progress": 100, "result": {"images": [
                               {"url": ["https://upload.apimart.ai/f/image/x.png"],
                                "expires_at": 1763174708}]},
                           "created": 1763088289, "completed": 1763088308}}
).encode()


def test_apimart_unsigned_parse() -> None:
    event = verify("apimart", {}, APIMART_BODY, secrets=())
    assert event.authenticated is False
    assert event.task_id == "task_01KA040M0HP1GJWBJYZMKX1XS1"
    assert event.status is TaskStatus.SUCCEEDED
    assert event.event_id == "apimart:task_01KA040M0HP1GJWBJYZMKX1XS1:completed"
    again = verify("apimart", {"X-Anything": "1"}, APIMART_BODY, secrets=[SECRET])
    assert again == event  # a duplicate dedupes by its id


@pytest.mark.parametrize(
    ("status", "expected"),
    [("failed", TaskStatus.FAILED), ("cancelled", TaskStatus.CANCELLED),
     ("processing", TaskStatus.RUNNING)],
)
def test_apimart_statuses_and_list_data(status: str, expected: TaskStatus) -> None:
    body = json.dumps({"code": 200, "data": [{"id": "task_1", "status": status}]}).encode()
    assert verify("apimart", {}, body, secrets=()).status is expected


@pytest.mark.parametrize(
    "body", [b'{"code": 200}', b'{"data": {"status": "completed"}}',
             b'{"data": {"id": "t", "status": 5}}', b'{"data": []}']
)
def test_apimart_malformed(body: bytes) -> None:
    with refused("bad_body"):
        verify("apimart", {}, body, secrets=())


# -- property: any single-byte change breaks an HMAC ------------------------------------------


@given(st.data())
def test_any_single_byte_change_fails_hmac(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(TOAPIS_BODY) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != TOAPIS_BODY[index]))
    toapis_changed = TOAPIS_BODY[:index] + bytes([replacement]) + TOAPIS_BODY[index + 1:]
    headers = {
        "X-ToAPIs-Webhook-Id": "evt_0001",
        "X-ToAPIs-Webhook-Timestamp": str(NOW),
        "X-ToAPIs-Webhook-Signature": f"v1={TOAPIS_SIG}",
    }
    with pytest.raises(WebhookVerificationError):
        verify("toapis", headers, toapis_changed, secrets=[SECRET], now=NOW)
    index = data.draw(st.integers(0, len(BFL_BODY) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != BFL_BODY[index]))
    bfl_changed = BFL_BODY[:index] + bytes([replacement]) + BFL_BODY[index + 1:]
    with pytest.raises(WebhookVerificationError):
        verify("bfl", {"X-BFL-Signature": f"sha256={BFL_SIG}"}, bfl_changed, secrets=[BFL_SECRET])
