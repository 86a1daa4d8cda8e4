"""The emulator's BFL side driven the way BFL's own clients drive BFL: the base URL is a host
root (``POST {root}/v1/flux-kontext-pro``), the poll goes to ``polling_url`` or to the global
``/v1/get_result?id=``, the result URL is signed, and ``input_image`` is checked.

Plain aiohttp over real sockets, with a manual clock (nobody sleeps).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, ManualClock, Scenario

pytestmark = pytest.mark.anyio

XKEY = {"x-key": DEFAULT_API_KEY}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_767_225_600.0)


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    async with Emulator(Scenario(duration=Duration.fixed(2.0)), clock=clock) as emulator:
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
    json: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.request(method, url, json=json, headers={**XKEY, **(headers or {})}) as resp:
        return resp.status, await resp.json(content_type=None)


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_a_root_url_client_submits_polls_and_downloads(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    status, sub = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro",
                             json={"prompt": "a paper-cut forest", "seed": 42, "output_format": "png"})
    assert status == 200
    assert sub["polling_url"] == f"{emu.url}/bfl-us1/v1/get_result?id={sub['id']}"

    _, pending = await call(http, "GET", sub["polling_url"])
    assert pending["status"] == "Pending"
    clock.advance(2)
    _, ready = await call(http, "GET", sub["polling_url"])
    assert ready["status"] == "Ready"
    assert ready["result"]["seed"] == 42
    async with http.get(ready["result"]["sample"]) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"\x89PNG")

    stats = emu.stats()
    assert stats["by_provider"]["bfl"] == {"submit": 1, "poll": 2, "download": 1}
    assert stats["bfl_global_polls"] == 0


@pytest.mark.parametrize("prefix", ["", "/bfl"])
async def test_the_global_host_answers_get_result_like_bfl(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock, prefix: str
) -> None:
    _, sub = await call(http, "POST", f"{emu.url}{prefix}/v1/flux-kontext-max", json={"prompt": "x"})
    clock.advance(2)
    status, body = await call(http, "GET", f"{emu.url}{prefix}/v1/get_result?id={sub['id']}")
    assert status == 200
    assert (body["id"], body["status"]) == (sub["id"], "Ready")

    status, unknown = await call(http, "GET", f"{emu.url}{prefix}/v1/get_result?id=no-such-task")
    assert status == 200
    assert (unknown["id"], unknown["status"]) == ("no-such-task", "Task not found")

    status, missing = await call(http, "GET", f"{emu.url}{prefix}/v1/get_result")
    assert status == 422
    assert missing["detail"][0]["loc"] == ["query", "id"]
    assert emu.stats()["bfl_global_polls"] == 3


async def test_other_root_paths_get_bfls_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "POST", f"{emu.url}/v1/flux-dev", json={"prompt": "x"})
    assert (status, body) == (404, {"detail": "Not Found"})
    status, body = await call(http, "GET", f"{emu.url}/v1/anything/else")
    assert (status, body) == (404, {"detail": "Not Found"})
    assert emu.stats()["tasks_created"] == 0


@pytest.mark.parametrize(
    "tamper",
    [
        {"sig": "0" * 32},
        {"sig": None},
        {"se": "9999999999"},  # a later expiry under the old signature
        {"se": None},
    ],
)
async def test_a_tampered_result_url_is_refused(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock, tamper: dict[str, str | None]
) -> None:
    _, sub = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro", json={"prompt": "x"})
    clock.advance(2)
    _, ready = await call(http, "GET", sub["polling_url"])
    sample = ready["result"]["sample"]
    async with http.get(with_query(sample, **tamper)) as resp:
        assert resp.status == 403
        assert b"AuthenticationFailed" in await resp.read()
    async with http.get(sample) as resp:
        assert resp.status == 200
    assert emu.stats()["tasks"][0]["downloads"] == 1  # the refused request fetched nothing


@pytest.mark.parametrize("image", ["not-base64!!", "", "data:image/png;base64,%%%", "ftp://x/y.png"])
async def test_an_input_image_that_is_neither_base64_nor_a_url_is_a_422(
    emu: Emulator, http: aiohttp.ClientSession, image: str
) -> None:
    status, body = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro",
                              json={"prompt": "edit it", "input_image": image})
    assert status == 422
    [detail] = body["detail"]
    assert detail["loc"] == ["body", "input_image"]
    assert detail["type"] == "value_error"
    assert emu.stats()["tasks_created"] == 0


@pytest.mark.parametrize(
    "image",
    [
        base64.b64encode(PNG).decode(),
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
        "https://example.com/photo.jpg",
    ],
)
async def test_base64_images_and_urls_are_accepted(
    emu: Emulator, http: aiohttp.ClientSession, image: str
) -> None:
    status, _ = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro",
                           json={"prompt": "edit it", "input_image": image, "input_image_2": image})
    assert status == 200
    assert emu.stats()["tasks_created"] == 1


async def test_the_host_header_does_not_choose_where_urls_point(
    emu: Emulator, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    spoofed = {"Host": "attacker.example"}
    _, sub = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro", json={"prompt": "x"},
                        headers=spoofed)
    assert sub["polling_url"].startswith(emu.url + "/")
    clock.advance(2)
    _, ready = await call(http, "GET", sub["polling_url"], headers=spoofed)
    assert ready["result"]["sample"].startswith(emu.url + "/")


async def test_a_public_url_is_what_the_urls_name(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    public = "https://emulator.test:8443"
    async with Emulator(Scenario(), clock=clock, public_url=public + "/") as emu:
        _, sub = await call(http, "POST", f"{emu.url}/v1/flux-kontext-pro", json={"prompt": "x"})
        assert sub["polling_url"] == f"{public}/bfl-us1/v1/get_result?id={sub['id']}"
        # The server itself is still where it listens.
        _, ready = await call(http, "GET", sub["polling_url"].replace(public, emu.url))
        assert ready["result"]["sample"].startswith(public + "/files/bfl/")
