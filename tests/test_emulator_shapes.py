"""The emulator speaks each provider as its public documentation describes it: exact reply shapes, task
timelines, validation errors, authentication. Driven with plain aiohttp over real sockets and a
manual clock (nobody sleeps).
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, ManualClock, Scenario

pytestmark = pytest.mark.anyio

BEARER = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
XKEY = {"x-key": DEFAULT_API_KEY}
T0 = 1_767_225_600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def scenario() -> Scenario:
    return Scenario(duration=Duration.fixed(10.0), queue_fraction=0.2)


@pytest.fixture
async def emu(scenario: Scenario, clock: ManualClock) -> AsyncIterator[Emulator]:
    async with Emulator(scenario, clock=clock) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: object = None,
    data: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=json, data=data) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body


def kontext(**extra: object) -> dict[str, object]:
    return {"model": "flux-kontext-pro", "prompt": "a red fox in the snow", **extra}


# -- toapis ----------------------------------------------------------------------------------------


async def test_toapis_submit_and_timeline(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    base = emu.base_url("toapis")
    assert base == f"http://127.0.0.1:{emu.port}/toapis"
    status, sub = await call(http, "POST", base + "/v1/images/generations", headers=BEARER,
                             json=kontext())
    assert status == 200
    assert set(sub) == {"id", "object", "model", "status", "progress", "created_at", "metadata"}
    assert sub["id"].startswith("task_img_")
    assert sub["object"] == "generation.task"
    assert sub["model"] == "flux-kontext-pro"
    assert sub["status"] == "queued"
    assert sub["progress"] == 0
    assert sub["created_at"] == int(T0)
    assert sub["metadata"] == {}

    poll = base + "/v1/images/generations/" + sub["id"]
    status, queued = await call(http, "GET", poll, headers=BEARER)
    assert status == 200
    assert queued == {"id": sub["id"], "object": "generation.task", "model": "flux-kontext-pro",
                      "status": "queued", "progress": 0, "created_at": int(T0)}

    seen = []
    for t in (3.0, 6.0, 9.0):
        clock.now = T0 + t
        _, running = await call(http, "GET", poll, headers=BEARER)
        assert running["status"] == "in_progress"
        assert isinstance(running["progress"], int)
        assert 1 <= running["progress"] <= 99
        seen.append(running["progress"])
    assert seen == sorted(seen)
    assert seen[0] < seen[-1]

    clock.now = T0 + 10.0
    _, done = await call(http, "GET", poll, headers=BEARER)
    assert set(done) == {"id", "object", "model", "status", "progress", "created_at",
                         "completed_at", "expires_at", "result"}
    assert done["status"] == "completed"
    assert done["progress"] == 100
    assert done["completed_at"] == int(T0 + 10)
    assert done["expires_at"] == int(T0 + 10 + 86400)
    assert done["result"]["type"] == "image"
    [item] = done["result"]["data"]
    assert item["url"].startswith(emu.url + "/files/toapis/")
    assert item["url"].endswith(".jpg")  # toapis answers jpg unless metadata asks for png
    async with http.get(item["url"]) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"
        assert (await resp.read()).startswith(b"\xff\xd8\xff")


async def test_toapis_grok_n_images_and_png(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    base = emu.base_url("toapis")
    body = {"model": "grok-4-2-image", "prompt": "two cats", "n": 4, "size": "2:3",
            "metadata": {"response_format": "png"}}
    _, sub = await call(http, "POST", base + "/v1/images/generations", headers=BEARER, json=body)
    clock.advance(10)
    _, done = await call(http, "GET", base + "/v1/images/generations/" + sub["id"], headers=BEARER)
    urls = [d["url"] for d in done["result"]["data"]]
    assert len(urls) == 4
    assert len(set(urls)) == 4
    assert all(u.endswith(".png") for u in urls)


async def test_toapis_failed_task_shape(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(5), failure_rate=1.0), clock=clock) as emu:
        base = emu.base_url("toapis")
        _, sub = await call(http, "POST", base + "/v1/images/generations", headers=BEARER,
                            json=kontext())
        clock.advance(5)
        status, failed = await call(http, "GET", base + "/v1/images/generations/" + sub["id"],
                                    headers=BEARER)
    assert status == 200  # a failed task is still HTTP 200
    assert set(failed) == {"id", "object", "model", "status", "progress", "created_at", "error"}
    assert failed["status"] == "failed"
    assert failed["progress"] == 0
    assert failed["error"]["code"] == "generation_failed"
    assert isinstance(failed["error"]["message"], str)


async def test_toapis_unknown_task_is_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", emu.base_url("toapis") + "/v1/images/generations/nope",
                              headers=BEARER)
    assert status == 404
    assert body["error"]["code"] == 404
    assert body["error"]["type"] == "not_found_error"
    assert isinstance(body["error"]["message"], str)


async def test_toapis_lookup_by_client_business_id(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    base = emu.base_url("toapis") + "/v1/images/generations"
    _, sub = await call(http, "POST", base, headers=BEARER,
                        json=kontext(client_business_id="job-42"))
    _, by_cbid = await call(http, "GET", base + "/job-42", headers=BEARER)
    _, by_id = await call(http, "GET", base + "/" + sub["id"], headers=BEARER)
    assert by_cbid == by_id
    assert by_cbid["id"] == sub["id"]
    clock.advance(10)
    _, by_cbid = await call(http, "GET", base + "/job-42", headers=BEARER)
    assert by_cbid["status"] == "completed"
    stats = emu.stats()
    assert stats["requests"]["lookup"] == 2
    assert stats["requests"]["poll"] == 1
    [task] = stats["tasks"]
    assert task["lookups"] == 2
    assert task["polls"] == 1
    assert task["client_business_id"] == "job-42"


async def test_toapis_upload(emu: Emulator, http: aiohttp.ClientSession) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300
    form = aiohttp.FormData()
    form.add_field("purpose", "generation")
    form.add_field("file", png, filename="in.png", content_type="image/png")
    status, body = await call(http, "POST", emu.base_url("toapis") + "/v1/uploads/images",
                              headers=BEARER, data=form)
    assert status == 200
    assert body["success"] is True
    assert body["message"] == ""
    assert set(body["data"]) == {"id", "url", "mime_type", "size"}
    assert body["data"]["mime_type"] == "image/png"
    assert body["data"]["size"] == len(png)
    async with http.get(body["data"]["url"]) as resp:
        assert resp.status == 200
        assert await resp.read() == png


async def test_toapis_upload_errors(emu: Emulator, http: aiohttp.ClientSession) -> None:
    url = emu.base_url("toapis") + "/v1/uploads/images"
    big = aiohttp.FormData()
    big.add_field("file", io.BytesIO(b"\xff\xd8\xff" + bytes(10 * 1024 * 1024)),
                  filename="big.jpg")
    status, body = await call(http, "POST", url, headers=BEARER, data=big)
    assert status == 400
    assert body == {"success": False, "message": "Image too large. Maximum size is 10MB"}
    wrong = aiohttp.FormData()
    wrong.add_field("file", b"%PDF-1.4 not an image", filename="doc.pdf")
    status, body = await call(http, "POST", url, headers=BEARER, data=wrong)
    assert status == 400
    assert body["success"] is False
    missing = aiohttp.FormData()
    missing.add_field("other", "x")
    status, body = await call(http, "POST", url, headers=BEARER, data=missing)
    assert status == 400
    assert body["success"] is False


# -- apimart ---------------------------------------------------------------------------------------


async def test_apimart_submit_and_timeline(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    base = emu.base_url("apimart")
    status, sub = await call(http, "POST", base + "/v1/images/generations", headers=BEARER,
                             json={"model": "flux-kontext-max", "prompt": "a lighthouse",
                                   "size": "3:2", "response_format": "png",
                                   "safety_tolerance": 6, "prompt_upsampling": True})
    assert status == 200
    assert sub["code"] == 200
    [item] = sub["data"]
    assert set(item) == {"status", "task_id"}
    assert item["status"] == "submitted"
    assert re.fullmatch(r"task_01[0-9A-HJKMNP-TV-Z]{24}", item["task_id"])

    poll = base + "/v1/tasks/" + item["task_id"]
    _, queued = await call(http, "GET", poll, headers=BEARER)
    assert queued["code"] == 200
    assert set(queued["data"]) == {"id", "status", "progress", "created", "estimated_time",
                                   "cost", "credits_cost"}
    assert (queued["data"]["cost"], queued["data"]["credits_cost"]) == (0.064, 0.64)
    assert queued["data"]["status"] == "pending"
    assert queued["data"]["estimated_time"] == 10

    clock.advance(5)
    _, running = await call(http, "GET", poll + "?language=en", headers=BEARER)
    assert running["data"]["status"] == "processing"
    assert 1 <= running["data"]["progress"] <= 99

    clock.advance(5)
    _, done = await call(http, "GET", poll, headers=BEARER)
    data = done["data"]
    assert set(data) == {"id", "status", "progress", "result", "created", "completed",
                         "estimated_time", "actual_time", "cost", "credits_cost"}
    assert data["status"] == "completed"
    assert data["progress"] == 100
    assert data["completed"] == int(T0 + 10)
    assert data["actual_time"] == 10
    [image] = data["result"]["images"]
    assert isinstance(image["url"], list)
    assert image["expires_at"] == int(T0 + 10 + 86400)
    async with http.get(image["url"][0]) as resp:
        assert resp.content_type == "image/png"
        assert (await resp.read()).startswith(b"\x89PNG")


async def test_apimart_failure_and_cancelled(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(duration=Duration.fixed(1), failure_rate=0.5, cancellation_rate=0.5)
    async with Emulator(scenario, clock=clock) as emu:
        base = emu.base_url("apimart")
        ids = []
        for i in range(12):
            _, sub = await call(http, "POST", base + "/v1/images/generations", headers=BEARER,
                                json={"model": "flux-kontext-pro", "prompt": f"p{i}"})
            ids.append(sub["data"][0]["task_id"])
        clock.advance(1)
        statuses = set()
        for task_id in ids:
            status, body = await call(http, "GET", base + "/v1/tasks/" + task_id, headers=BEARER)
            assert status == 200
            data = body["data"]
            statuses.add(data["status"])
            assert set(data["error"]) == {"message", "type", "code"}
            assert data["error"]["type"] == "task_failed"
            assert "result" not in data
    assert statuses == {"failed", "cancelled"}


async def test_apimart_unknown_task_and_upload(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", emu.base_url("apimart") + "/v1/tasks/task_01nope",
                              headers=BEARER)
    assert status == 404
    assert body["error"]["code"] == 404
    url = emu.base_url("apimart") + "/v1/uploads/images"
    form = aiohttp.FormData()
    form.add_field("file", b"GIF89a" + b"\x00" * 50, filename="a.gif")
    status, body = await call(http, "POST", url, headers=BEARER, data=form)
    assert status == 200
    assert set(body) == {"url", "filename", "content_type", "bytes", "created_at"}
    assert body["filename"] == "a.gif"
    assert body["content_type"] == "image/gif"
    assert body["bytes"] == 56
    big = aiohttp.FormData()
    big.add_field("file", io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(20 * 1024 * 1024)),
                  filename="big.png")
    status, body = await call(http, "POST", url, headers=BEARER, data=big)
    assert status == 413
    assert body["error"]["code"] == 413


# -- BFL -------------------------------------------------------------------------------------------


async def test_bfl_submit_polling_url_and_timeline(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    status, sub = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                             headers=XKEY, json={"prompt": "a fox", "aspect_ratio": "21:9",
                                                 "output_format": "png", "seed": 7})
    assert status == 200
    assert set(sub) == {"id", "polling_url", "cost"}
    assert sub["cost"] == 4.0  # credits of $0.01
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}", sub["id"])
    # The polling URL names a region: it is not base_url + id. The global host answers a
    # rebuilt URL too, as BFL's does, but the emulator counts it apart, so a test can tell.
    assert sub["polling_url"] == f"{emu.url}/bfl-us1/v1/get_result?id={sub['id']}"
    assert not sub["polling_url"].startswith(emu.base_url("bfl") + "/")
    assert emu.stats()["bfl_global_polls"] == 0
    _, rebuilt = await call(http, "GET", emu.base_url("bfl") + f"/v1/get_result?id={sub['id']}",
                            headers=XKEY)
    assert rebuilt["status"] == "Pending"
    assert emu.stats()["bfl_global_polls"] == 1

    _, pending = await call(http, "GET", sub["polling_url"], headers=XKEY)
    assert pending == {"id": sub["id"], "status": "Pending", "result": None, "progress": None,
                       "details": None}
    clock.advance(5)
    _, running = await call(http, "GET", sub["polling_url"], headers=XKEY)
    assert running["status"] == "Pending"
    assert isinstance(running["progress"], float)
    assert 0.0 <= running["progress"] <= 1.0
    clock.advance(5)
    _, ready = await call(http, "GET", sub["polling_url"], headers=XKEY)
    assert set(ready) == {"id", "status", "result"}
    assert ready["status"] == "Ready"
    result = ready["result"]
    assert result["prompt"] == "a fox"
    assert result["seed"] == 7
    assert result["sample"].startswith(f"{emu.url}/files/bfl/{sub['id']}/0.png?")
    async with http.get(result["sample"]) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"


async def test_bfl_error_and_moderation_shapes(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(failure_rate=0.34, moderation_rate=0.66)
    async with Emulator(scenario, clock=clock) as emu:
        seen: dict[str, dict[str, Any]] = {}
        for i in range(30):
            _, sub = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-max",
                                headers=XKEY, json={"prompt": f"p{i}"})
            _, body = await call(http, "GET", sub["polling_url"], headers=XKEY)
            seen[body["status"]] = body
    assert set(seen) == {"Error", "Request Moderated", "Content Moderated"}
    assert set(seen["Error"]) == {"id", "status", "error"}
    assert isinstance(seen["Error"]["error"], str)
    for status in ("Request Moderated", "Content Moderated"):
        assert seen[status]["result"] is None
        assert isinstance(seen[status]["details"], dict)


async def test_bfl_task_not_found(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", f"{emu.url}/bfl-us1/v1/get_result?id=unknown",
                              headers=XKEY)
    assert status == 200
    assert body["status"] == "Task not found"
    assert body["id"] == "unknown"
    status, body = await call(http, "GET", f"{emu.url}/bfl-us1/v1/get_result", headers=XKEY)
    assert status == 422
    assert body["detail"][0]["loc"] == ["query", "id"]


async def test_bfl_unknown_model_is_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-dev", headers=XKEY,
                              json={"prompt": "x"})
    assert status == 404
    assert body == {"detail": "Not Found"}


# -- validation ------------------------------------------------------------------------------------

TOAPIS_BAD: list[tuple[dict[str, object], str | None]] = [
    ({"prompt": "no model"}, "model"),
    ({"model": "flux-kontext-ultra", "prompt": "x"}, "model"),
    ({"model": "flux-kontext-pro"}, "prompt"),
    ({"model": "flux-kontext-pro", "prompt": ""}, "prompt"),
    (kontext(size="5:4"), "size"),
    (kontext(size="match_input_image"), "size"),
    (kontext(image_urls=["https://a/1.png", "https://a/2.png"]), "image_urls"),
    (kontext(image_urls=["data:image/png;base64,iVBORw0KGgo="]), "image_urls"),
    (kontext(image_urls=["ftp://a/1.png"]), "image_urls"),
    (kontext(n=1), "n"),
    (kontext(metadata={"response_format": "webp"}), "metadata.response_format"),
    (kontext(metadata={"safety_tolerance": 7}), "metadata.safety_tolerance"),
    (kontext(metadata={"safety_tolerance": "2"}), "metadata.safety_tolerance"),
    (kontext(metadata={"prompt_upsampling": "yes"}), "metadata.prompt_upsampling"),
    ({"model": "grok-4-1-image", "prompt": "x" * 1001}, "prompt"),
    ({"model": "grok-4-1-image", "prompt": "x", "n": "1"}, "n"),
    ({"model": "grok-4-1-image", "prompt": "x", "n": 3}, "n"),
    ({"model": "grok-4-1-image", "prompt": "x", "size": "21:9"}, "size"),
    ({"model": "grok-4-1-image", "prompt": "x", "image_urls": ["https://a/i.png"] * 6},
     "image_urls"),
]


@pytest.mark.parametrize(("body", "param"), TOAPIS_BAD)
async def test_toapis_validation_errors(
    emu: Emulator, http: aiohttp.ClientSession, body: dict[str, object], param: str | None
) -> None:
    status, err = await call(http, "POST", emu.base_url("toapis") + "/v1/images/generations",
                             headers=BEARER, json=body)
    assert status == 400
    assert set(err) == {"error"}
    assert err["error"]["param"] == param
    assert err["error"]["type"] == "invalid_request_error"
    assert isinstance(err["error"]["code"], str)
    assert isinstance(err["error"]["message"], str)
    assert emu.stats()["tasks_created"] == 0


async def test_toapis_valid_edge_cases_are_accepted(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    url = emu.base_url("toapis") + "/v1/images/generations"
    for body in (
        kontext(size="match_input_image", image_urls=["https://example.com/a.png"]),
        kontext(metadata={"response_format": "png", "safety_tolerance": 0,
                          "prompt_upsampling": False}),
        {"model": "grok-4-1-image", "prompt": "x" * 1000, "n": 2,
         "image_urls": ["https://a/i.png"] * 5},
        kontext(unknown_field={"ignored": True}, callback_url="https://example.com/cb"),
    ):
        status, _ = await call(http, "POST", url, headers=BEARER, json=body)
        assert status == 200, body


async def test_bad_json_on_every_provider(emu: Emulator, http: aiohttp.ClientSession) -> None:
    for provider, path, headers in (("toapis", "/v1/images/generations", BEARER),
                                    ("apimart", "/v1/images/generations", BEARER)):
        status, err = await call(http, "POST", emu.base_url(provider) + path, headers=headers,
                                 data=b'{"model": ')
        assert status == 400
        assert err["error"]["type"] == "invalid_request_error"
    status, err = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                             headers=XKEY, data=b"{nope")
    assert status == 422
    assert err["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "grok-4-1-image", "prompt": "x"}, "model"),  # not on apimart
        ({"model": "flux-kontext-pro", "prompt": "x", "n": 1}, "n"),
        ({"model": "flux-kontext-pro", "prompt": "x", "size": "auto"}, "size"),
        ({"model": "flux-kontext-pro", "prompt": "x", "response_format": "jpeg"},
         "response_format"),
        ({"model": "flux-kontext-pro", "prompt": "x", "safety_tolerance": -1},
         "safety_tolerance"),
        ({"model": "flux-kontext-pro", "prompt": "x",
          "image_urls": ["data:image/png;base64,AAAA"]}, "image_urls"),
    ],
)
async def test_apimart_validation_errors(
    emu: Emulator, http: aiohttp.ClientSession, body: dict[str, object], param: str
) -> None:
    status, err = await call(http, "POST", emu.base_url("apimart") + "/v1/images/generations",
                             headers=BEARER, json=body)
    assert status == 400
    assert err["error"]["code"] == 400
    assert err["error"]["param"] == param
    assert err["error"]["type"] == "invalid_request_error"


async def test_apimart_auto_size_with_image(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, _ = await call(http, "POST", emu.base_url("apimart") + "/v1/images/generations",
                           headers=BEARER, json={"model": "flux-kontext-pro", "prompt": "x",
                                                 "size": "auto",
                                                 "image_urls": ["https://a/b.jpg"]})
    assert status == 200


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({}, "prompt", "missing"),
        ({"prompt": 5}, "prompt", "string_type"),
        ({"prompt": "x", "aspect_ratio": "22:9"}, "aspect_ratio", "value_error"),
        ({"prompt": "x", "aspect_ratio": "wide"}, "aspect_ratio", "value_error"),
        ({"prompt": "x", "output_format": "jpg"}, "output_format", "enum"),
        ({"prompt": "x", "safety_tolerance": 7}, "safety_tolerance", "less_than_equal"),
        ({"prompt": "x", "safety_tolerance": -1}, "safety_tolerance", "greater_than_equal"),
        ({"prompt": "x", "safety_tolerance": 1.5}, "safety_tolerance", "int_type"),
        ({"prompt": "x", "seed": "7"}, "seed", "int_type"),
        ({"prompt": "x", "input_image": 12}, "input_image", "string_type"),
        ({"prompt": "x", "prompt_upsampling": "no"}, "prompt_upsampling", "bool_type"),
    ],
)
async def test_bfl_validation_errors(
    emu: Emulator, http: aiohttp.ClientSession, body: dict[str, object], field: str, kind: str
) -> None:
    status, err = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                             headers=XKEY, json=body)
    assert status == 422
    [detail] = err["detail"]
    assert detail["loc"] == ["body", field]
    assert detail["type"] == kind
    assert isinstance(detail["msg"], str)


async def test_bfl_accepts_documented_ranges(emu: Emulator, http: aiohttp.ClientSession) -> None:
    for body in ({"prompt": "x", "aspect_ratio": "9:21", "output_format": "jpeg"},
                 {"prompt": "x", "aspect_ratio": "3:7", "safety_tolerance": 6,
                  "input_image": "aGVsbG8=", "prompt_upsampling": True,
                  "webhook_url": "https://example.com/hook", "webhook_secret": "s"}):
        status, _ = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                               headers=XKEY, json=body)
        assert status == 200, body


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_API_KEY},
     {"x-key": DEFAULT_API_KEY}],
)
async def test_aggregators_reject_bad_keys(
    emu: Emulator, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, err = await call(http, "POST", emu.base_url("toapis") + "/v1/images/generations",
                             headers=headers, json=kontext())
    assert status == 401
    assert err["error"]["type"] == "authentication_error"
    status, err = await call(http, "GET", emu.base_url("apimart") + "/v1/tasks/x", headers=headers)
    assert status == 401
    assert err["error"] == {"code": 401, "message": err["error"]["message"],
                            "type": "authentication_error"}


async def test_bfl_needs_x_key(emu: Emulator, http: aiohttp.ClientSession) -> None:
    for headers in ({}, BEARER, {"x-key": "wrong"}):
        status, err = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                                 headers=headers, json={"prompt": "x"})
        assert status == 401
        assert set(err) == {"detail"}
    _, sub = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                        json={"prompt": "x"})
    status, _ = await call(http, "GET", sub["polling_url"])
    assert status == 401


async def test_configured_keys_forbidden_and_no_credit(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(api_keys=("k1", "k2"), forbidden_keys=("k-denied",),
                        no_credit_keys=("k-broke",))
    async with Emulator(scenario, clock=clock) as emu:
        url = emu.base_url("bfl") + "/v1/flux-kontext-pro"
        assert (await call(http, "POST", url, headers={"x-key": "k2"}, json={"prompt": "x"}))[0] == 200
        assert (await call(http, "POST", url, headers=XKEY, json={"prompt": "x"}))[0] == 401
        status, err = await call(http, "POST", url, headers={"x-key": "k-denied"},
                                 json={"prompt": "x"})
        assert status == 403
        assert set(err) == {"detail"}
        status, err = await call(http, "POST", url, headers={"x-key": "k-broke"},
                                 json={"prompt": "x"})
        assert status == 402
        status, err = await call(http, "POST", emu.base_url("toapis") + "/v1/images/generations",
                                 headers={"Authorization": "Bearer k-broke"}, json=kontext())
        assert status == 402
        assert err["error"]["type"] == "payment_required"
    async with Emulator(Scenario(accept_any_key=True), clock=clock) as emu:
        status, _ = await call(http, "POST", emu.base_url("toapis") + "/v1/images/generations",
                               headers={"Authorization": "Bearer anything"}, json=kontext())
        assert status == 200


async def test_toapis_user_agent_requirement(clock: ManualClock) -> None:
    async with (
        Emulator(Scenario(toapis_require_user_agent=True), clock=clock) as emu,
        aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as bare,
    ):
        url = emu.base_url("toapis") + "/v1/images/generations"
        status, err = await call(bare, "POST", url, headers=BEARER, json=kontext())
        assert status == 403
        assert err["error"]["type"] == "permission_error"
        status, _ = await call(bare, "POST", url, headers={**BEARER, "User-Agent": "t/1"},
                               json=kontext())
        assert status == 200


async def test_blocked_terms(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(blocked_terms=("forbidden",)), clock=clock) as emu:
        status, err = await call(http, "POST", emu.base_url("toapis") + "/v1/images/generations",
                                 headers=BEARER, json=kontext(prompt="a FORBIDDEN thing"))
        assert status == 422
        assert err["error"]["code"] == "content_policy_violation"
        status, err = await call(http, "POST", emu.base_url("apimart") + "/v1/images/generations",
                                 headers=BEARER, json=kontext(prompt="forbidden"))
        assert status == 422
        _, sub = await call(http, "POST", emu.base_url("bfl") + "/v1/flux-kontext-pro",
                            headers=XKEY, json={"prompt": "forbidden fruit"})
        _, body = await call(http, "GET", sub["polling_url"], headers=XKEY)
        assert body["status"] == "Request Moderated"


async def test_index_lists_surfaces(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", emu.url + "/")
    assert status == 200
    assert body["providers"] == {p: emu.base_url(p) for p in ("toapis", "apimart", "bfl")}
    assert body["default_api_key"] == DEFAULT_API_KEY
