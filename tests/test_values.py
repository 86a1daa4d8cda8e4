"""The per-job values made the quick way: the positional constructors of ``_values`` give what
the classes give, the remembered task ids never let a bad id through, and the HTTP values
(plain slotted classes) behave as values."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import attrs
import pytest

from flux_async import _checks
from flux_async._checks import check_task_id, task_id_problem
from flux_async._http import HttpRequest, HttpResponse, read_json
from flux_async._values import (
    maker,
    new_image,
    new_outcome,
    new_result,
    new_task_ref,
    new_task_state,
)
from flux_async.errors import ValidationError
from flux_async.models import (
    Cost,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Outcome,
    TaskFailure,
    TaskRef,
    TaskState,
    TaskStatus,
)

AT = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)


def _same(quick: object, made: object) -> None:
    assert type(quick) is type(made)
    assert quick == made
    assert hash(quick) == hash(made)
    assert repr(quick) == repr(made)
    assert attrs.asdict(quick) == attrs.asdict(made)  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(quick)) == made
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        quick.task_id = "other"  # type: ignore[attr-defined]


def test_quick_values_equal_the_classes_own() -> None:
    image = new_image("https://r.test/a.png", AT)
    assert image == GeneratedImage("https://r.test/a.png", AT)
    result = new_result("t1", (image,), "m")
    _same(result, GenerationResult(task_id="t1", images=(image,), model="m"))
    assert result.cost is Cost.UNKNOWN
    assert result.seed is None
    failure = TaskFailure(code=5, message="no")
    _same(
        new_task_state("t1", TaskStatus.FAILED, "failed", 0.0, None, AT, None, None, failure, 0.04),
        TaskState(
            task_id="t1", status=TaskStatus.FAILED, raw_status="failed", progress=0.0,
            created_at=AT, failure=failure, cost_usd=0.04,
        ),
    )
    _same(new_task_ref("toapis", "t1", None, "m"), TaskRef(provider="toapis", task_id="t1", model="m"))
    request = GenerationRequest(model="flux-kontext-pro", prompt="a cat")
    quick = new_outcome(3, request, "t1", result, None, (), Cost(0.04, "price_table"))
    made = Outcome(index=3, request=request, task_id="t1", result=result, cost=Cost(0.04, "price_table"))
    assert quick == made
    assert repr(quick) == repr(made)
    assert quick.ok
    assert new_outcome(4, request).files == ()
    assert new_outcome(4, request).error is None


def test_maker_refuses_classes_it_cannot_fill() -> None:
    @attrs.frozen
    class Listed:
        items: list[int] = attrs.field(factory=list)

    with pytest.raises(TypeError, match="factory"):
        maker(Listed)

    @attrs.frozen(slots=False)
    class Unslotted:
        x: int

    with pytest.raises(TypeError, match="not a slot"):
        maker(Unslotted)


BAD_IDS = ["", "...", ".", "a/b", "a b", "a\n", "%2e", "a?b", "x" * 257, "é", "a#", "\x00"]


def test_remembered_ids_never_let_a_bad_one_through() -> None:
    # Good ids first (so that they are remembered), then every bad one still fails, each
    # with its reason, as often as it is asked.
    for good in ("a", ".a.", "x" * 256, "tsk_0123:~-."):
        assert task_id_problem(good) is None
        assert check_task_id(good) == good
        assert good in _checks._PASSED
    for _ in range(2):
        for bad in BAD_IDS:
            assert task_id_problem(bad) is not None
            with pytest.raises(ValidationError) as caught:
                check_task_id(bad, "task_id")
            assert caught.value.field == "task_id"
            assert bad not in _checks._PASSED
    for other in (5, None, b"abc", ["a"], {"a": 1}):
        assert task_id_problem(other) is not None


def test_remembered_ids_are_bounded() -> None:
    for i in range(_checks._PASSED_KEPT + 10):
        assert task_id_problem(f"id{i}") is None
    assert len(_checks._PASSED) <= _checks._PASSED_KEPT


def test_a_str_subclass_is_checked_not_remembered() -> None:
    class Sneaky(str):
        pass

    assert task_id_problem(Sneaky("abc")) is None  # a good id is good whatever its class
    assert task_id_problem(Sneaky("a/b")) is not None


def test_http_values_compare_by_value_and_keep_secrets_out_of_reprs() -> None:
    headers = {"Authorization": "Bearer sk-secret-123", "Accept": "application/json"}
    one = HttpRequest(method="POST", url="/v1/x", headers=headers, json={"prompt": "p"})
    assert one == HttpRequest(method="POST", url="/v1/x", headers=dict(headers), json={"prompt": "p"})
    assert one != HttpRequest(method="GET", url="/v1/x", headers=headers)
    assert "sk-secret-123" not in repr(one)
    assert "<redacted>" in repr(one)
    assert HttpRequest(method="GET", url="/v1/y").headers == {}
    with pytest.raises(TypeError):
        hash(one)

    arrived = AT.timestamp()
    response = HttpResponse(status=200, body=b'{"key": "sk-secret-123"}', arrived=arrived)
    assert response.received_at == AT  # made from the transport's clock reading when read
    assert response.received_at is response.received_at
    assert response == HttpResponse(status=200, body=b'{"key": "sk-secret-123"}', received_at=AT)
    assert HttpResponse(status=200).received_at is None
    assert "sk-secret-123" not in repr(response)


def test_quick_outcome_fields_are_in_declaration_order() -> None:
    # The positional constructors follow the classes' field order: a field added or moved in
    # the class must show up here, not silently shift every quick value.
    assert [f.name for f in attrs.fields(Outcome)] == [
        "index", "request", "task_id", "result", "error", "files", "cost"
    ]
    assert [f.name for f in attrs.fields(TaskState)] == [
        "task_id", "status", "raw_status", "progress", "estimated_time", "created_at",
        "completed_at", "result", "failure", "cost_usd",
    ]
    assert [f.name for f in attrs.fields(GenerationResult)] == ["task_id", "images", "model", "seed", "cost"]
    assert [f.name for f in attrs.fields(TaskRef)] == ["provider", "task_id", "polling_url", "model"]


# Bodies read_json takes its own way (a ``{`` or ``[`` first) and the ones it leaves to
# json.loads, valid and not: each must give json.loads' value or json.loads' error.
_JSON_BODIES = [
    b'{"id":"task_1","status":"completed","progress":100,"result":{"data":[{"url":"u"}]}}',
    b'[1, 2.5, -3e2, true, false, null, "x"]',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"text": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"}',
    b'{"a": 1} \t\r\n ',
    b'{"a": 1} x',
    b'{"a": 1}{"b": 2}',
    b'{"a": 1',
    b'{"a": }',
    b"{'a': 1}",
    b'{"a": "\xff"}',
    b'{"a": "\xed\xa0\x80"}',
    b'{"a": "tab\there"}',
    b"[",
    b"{",
    b"[]",
    b"{}",
    b" {}",
    b"",
    b"null",
    b"12",
    b'"text"',
    b"\xef\xbb\xbf{}",
    '{"a": "b"}'.encode("utf-16"),
    '{"a": "b"}'.encode("utf-16-le"),
    '["b"]'.encode("utf-32-be"),
    b"[" * 100_000,
    b"<html>bad gateway</html>",
]


def _json_outcome(read: object, body: bytes) -> tuple[str, object]:
    try:
        return "value", read(body)  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("body", _JSON_BODIES, ids=range(len(_JSON_BODIES)))
def test_read_json_gives_what_json_loads_gives(body: bytes) -> None:
    got = _json_outcome(read_json, body)
    want = _json_outcome(json.loads, body)
    if want[0] == "value":
        assert got[0] == "value"
        assert json.dumps(got[1]) == json.dumps(want[1])  # NaN != NaN: compared as text
        assert type(got[1]) is type(want[1])
    else:
        assert got == want


def test_read_json_is_what_a_response_gives() -> None:
    body = _JSON_BODIES[0]
    assert HttpResponse(status=200, body=body).json() == json.loads(body)
    with pytest.raises(ValueError, match="Extra data"):
        HttpResponse(status=200, body=b'{"a": 1} x').json()


@pytest.mark.parametrize("body", [b'{"status": "completed"}', b"null", b"0", b'""', b"[]"])
def test_a_responses_body_is_decoded_once_whatever_it_decodes_to(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flux_async._http

    calls: list[bytes] = []
    real = flux_async._http.read_json

    def counting(raw: bytes) -> object:
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(flux_async._http, "read_json", counting)
    response = HttpResponse(status=200, body=body)
    first = response.decoded()
    assert response.decoded() is first
    assert first == json.loads(body)
    assert calls == [body]  # JSON null, 0 and "" included: decoded once, not on every read
