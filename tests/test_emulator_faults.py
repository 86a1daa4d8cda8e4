"""Every scripted behaviour of the emulator, switched on and off: scripted and random faults,
active-task caps and rate limits with both forms of Retry-After, URL expiry, download traps,
spelling variants, per-provider overrides and changing the scenario of a running emulator.
Plain aiohttp over real sockets; a manual clock instead of sleeping.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from flux_async.emulator import (
    DEFAULT_API_KEY,
    Duration,
    Emulator,
    Fault,
    FaultRates,
    ManualClock,
    Scenario,
)

pytestmark = pytest.mark.anyio

BEARER = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
XKEY = {"x-key": DEFAULT_API_KEY}
T0 = 1_767_225_600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session




def toapis_body(i: int = 0, **extra: object) -> dict[str, object]:
    return {"model": "flux-kontext-pro", "prompt": f"prompt {i}", **extra}


async def toapis_submit(
    http: aiohttp.ClientSession, emu: Emulator, i: int = 0, **extra: object
) -> tuple[int, Any]:
    async with http.post(emu.base_url("toapis") + "/v1/images/generations", headers=BEARER,
                         json=toapis_body(i, **extra)) as resp:
        return resp.status, await resp.json(content_type=None)


async def bfl_submit(
    http: aiohttp.ClientSession, emu: Emulator, model: str = "flux-kontext-pro", i: int = 0
) -> aiohttp.ClientResponse:
    async with http.post(f"{emu.base_url('bfl')}/v1/{model}", headers=XKEY,
                         json={"prompt": f"prompt {i}"}) as resp:
        await resp.read()
        return resp


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


# -- scripted submit faults ------------------------------------------------------------------------


async def test_scripted_status_creates_no_task(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("submit", "status", status=503)
        status, err = await toapis_submit(http, emu)
        assert status == 503
        assert err["error"]["type"] == "server_error"
        status, _ = await toapis_submit(http, emu)
        assert status == 200  # one-off: the next submit is healthy
        stats = emu.stats()
    assert stats["tasks_created"] == 1
    assert stats["status_codes"] == {"200": 1, "503": 1}
    assert stats["faults"] == {"status": 1}


async def test_drop_before_create(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("submit", "drop")
        with pytest.raises(aiohttp.ClientConnectionError):
            await toapis_submit(http, emu)
        stats = emu.stats()
    assert stats["tasks_created"] == 0
    assert stats["requests"]["submit"] == 1
    assert stats["dropped_connections"]["submit_before_create"] == 1
    assert stats["dropped_connections"]["total"] == 1
    assert stats["status_codes"] == {}


async def test_drop_after_create_is_the_ambiguous_case(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(3)), clock=clock) as emu:
        emu.fail_next("submit", "drop_after_create", provider="toapis")
        with pytest.raises(aiohttp.ClientConnectionError):
            await toapis_submit(http, emu, client_business_id="job-1")
        stats = emu.stats()
        # The task exists (and is charged) although the client saw only a connection error...
        assert stats["tasks_created"] == 1
        assert stats["dropped_connections"]["submit_after_create"] == 1
        [task] = stats["tasks"]
        assert task["client_business_id"] == "job-1"
        # ...and the documented recovery finds it by the client's own id.
        clock.advance(3)
        found = await get_json(http, emu.base_url("toapis") + "/v1/images/generations/job-1",
                               BEARER)
        assert found["id"] == task["id"]
        assert found["status"] == "completed"


@pytest.mark.parametrize("kind", ["malformed_json", "truncated", "html"])
async def test_broken_200_on_submit_means_created(
    clock: ManualClock, http: aiohttp.ClientSession, kind: str
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("submit", kind)
        url = emu.base_url("toapis") + "/v1/images/generations"
        if kind == "truncated":
            async with http.post(url, headers=BEARER, json=toapis_body()) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
        else:
            async with http.post(url, headers=BEARER, json=toapis_body()) as resp:
                assert resp.status == 200
                text = await resp.text()
            if kind == "html":
                assert resp.content_type == "text/html"
                assert text.startswith("<!DOCTYPE html>")
            else:
                assert resp.content_type == "application/json"
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
        assert emu.stats()["tasks_created"] == 1


async def test_slow_submit_times_out_after_creating(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("submit", "slow", delay=5.0)
        with pytest.raises(TimeoutError):
            async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                                 json={"prompt": "x"},
                                 timeout=aiohttp.ClientTimeout(total=0.05)) as resp:
                await resp.read()
        assert emu.stats()["tasks_created"] == 1
        resp = await bfl_submit(http, emu)
        assert resp.status == 200


async def test_fault_count_provider_filter_and_order(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.inject(
            Fault(endpoint="submit", kind="status", status=500, count=2, provider="bfl"),
            Fault(endpoint="submit", kind="status", status=502),
        )
        assert [(f.status, n) for f, n in emu.pending_faults()] == [(500, 2), (502, 1)]
        statuses = [(await toapis_submit(http, emu))[0]]  # bfl-only fault skipped: 502 applies
        statuses.append((await toapis_submit(http, emu))[0])
        statuses += [(await bfl_submit(http, emu, i=i)).status for i in range(3)]
        assert statuses == [502, 200, 500, 500, 200]
        assert emu.pending_faults() == []


async def test_rejected_requests_do_not_consume_faults(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("submit", "status", status=503)
        async with http.post(emu.base_url("toapis") + "/v1/images/generations",
                             json=toapis_body()) as resp:
            assert resp.status == 401
        async with http.post(emu.base_url("toapis") + "/v1/images/generations", headers=BEARER,
                             json={"model": "nope", "prompt": "x"}) as resp:
            assert resp.status == 400
        assert (await toapis_submit(http, emu))[0] == 503


async def test_scripted_faults_from_the_scenario(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(faults=[{"endpoint": "submit", "kind": "status", "status": 500,
                                 "count": 3}])
    async with Emulator(scenario, clock=clock) as emu:
        statuses = [(await toapis_submit(http, emu, i))[0] for i in range(4)]
        assert statuses == [500, 500, 500, 200]
        emu.reset()  # re-arms the scenario's script
        assert [(await toapis_submit(http, emu, i))[0] for i in range(4)] == [500, 500, 500, 200]


# -- poll faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_poll_faults_every_kind(
    clock: ManualClock, http: aiohttp.ClientSession, provider: str
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        headers = XKEY if provider == "bfl" else BEARER
        if provider == "bfl":
            async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                                 json={"prompt": "x"}) as resp:
                poll_url = (await resp.json())["polling_url"]
        else:
            async with http.post(emu.base_url(provider) + "/v1/images/generations",
                                 headers=BEARER, json=toapis_body()) as resp:
                body = await resp.json()
            if provider == "toapis":
                poll_url = emu.base_url("toapis") + "/v1/images/generations/" + body["id"]
            else:
                poll_url = emu.base_url("apimart") + "/v1/tasks/" + body["data"][0]["task_id"]
        for kind in ("status", "drop", "malformed_json", "truncated", "html", "slow"):
            # aiohttp retries an idempotent request once after a disconnect, so a client sees a
            # dropped poll only when the retry is dropped too.
            emu.fail_next("poll", kind, provider=provider, status=500, delay=0.01,
                          count=2 if kind == "drop" else 1)
        async with http.get(poll_url, headers=headers) as resp:
            assert resp.status == 500
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(poll_url, headers=headers) as resp:
                await resp.read()
        async with http.get(poll_url, headers=headers) as resp:
            with pytest.raises(json.JSONDecodeError):
                json.loads(await resp.text())
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(poll_url, headers=headers) as resp:
                await resp.read()
        async with http.get(poll_url, headers=headers) as resp:
            assert resp.content_type == "text/html"
        async with http.get(poll_url, headers=headers) as resp:  # slow, but answers
            assert resp.status == 200
        stats = emu.stats()
        [task] = stats["tasks"]
        assert task["polls"] == 7  # every poll that reached the task is counted, retry included
        assert task["first_terminal_poll_at"] == T0  # set by the one healthy (slow) answer
        assert stats["dropped_connections"]["other"] == 2


async def test_lookup_faults_are_separate_from_poll_faults(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        _, sub = await toapis_submit(http, emu, client_business_id="c-1")
        emu.fail_next("lookup", "status", status=503)
        base = emu.base_url("toapis") + "/v1/images/generations/"
        async with http.get(base + sub["id"], headers=BEARER) as resp:
            assert resp.status == 200
        async with http.get(base + "c-1", headers=BEARER) as resp:
            assert resp.status == 503


# -- random faults ---------------------------------------------------------------------------------


async def test_random_server_errors_on_and_off(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(submit_faults=FaultRates(server_error=1.0), server_error_statuses=(502,))
    async with Emulator(scenario, clock=clock) as emu:
        assert {(await toapis_submit(http, emu, i))[0] for i in range(5)} == {502}
        emu.scenario = Scenario()
        assert {(await toapis_submit(http, emu, i))[0] for i in range(5)} == {200}
        assert emu.stats()["tasks_created"] == 5


async def test_random_fault_sequence_is_seeded(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(seed=11, submit_faults=FaultRates(server_error=0.5))

    async def run() -> list[int]:
        async with Emulator(scenario, clock=ManualClock(T0)) as emu:
            return [(await toapis_submit(http, emu, i))[0] for i in range(24)]

    first, second = await run(), await run()
    assert first == second
    assert {200, 500, 502, 503} >= set(first)
    assert 200 in first
    assert len(set(first)) > 1


async def test_random_drops_and_malformed_polls(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(poll_faults=FaultRates(drop=0.5, malformed=0.5),
                        malformed_kinds=("malformed_json",))
    async with Emulator(scenario, clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        outcomes = set()
        for _ in range(20):
            try:
                async with http.get(emu.base_url("toapis") + "/v1/images/generations/" + sub["id"],
                                    headers=BEARER) as resp:
                    json.loads(await resp.text())
                    outcomes.add("ok")
            except aiohttp.ClientConnectionError:
                outcomes.add("drop")
            except json.JSONDecodeError:
                outcomes.add("malformed")
        assert outcomes == {"drop", "malformed"}
        stats = emu.stats()
        faults = stats["faults"]
        # Every poll the emulator saw (including the client's own silent retries) was faulted.
        assert faults["drop"] + faults["malformed_json"] == stats["requests"]["poll"] > 20


async def test_random_drop_after_create(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(submit_faults=FaultRates(drop_after_create=1.0))
    async with Emulator(scenario, clock=clock) as emu:
        for i in range(3):
            with pytest.raises(aiohttp.ClientConnectionError):
                await toapis_submit(http, emu, i)
        stats = emu.stats()
        assert stats["tasks_created"] == 3
        assert stats["dropped_connections"]["submit_after_create"] == 3


# -- active-task caps and request rates ------------------------------------------------------------


async def test_bfl_cap_of_24_active_tasks(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(30)), clock=clock) as emu:
        for i in range(24):
            assert (await bfl_submit(http, emu, i=i)).status == 200
            clock.advance(0.5)
        async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                             json={"prompt": "one too many"}) as resp:
            assert resp.status == 429
            assert set(await resp.json()) == {"detail"}
            # Retry-After: until the earliest active task ends (30 - 24 * 0.5 = 18 s).
            assert resp.headers["Retry-After"] == "18"
        clock.advance(18)
        assert (await bfl_submit(http, emu, i=99)).status == 200
        stats = emu.stats()
    assert stats["rate_limited"] == {"cap": 1, "rate": 0, "scripted": 0}
    assert stats["active_high_water"]["bfl"] == 24
    assert stats["tasks_created"] == 25
    assert stats["status_codes"]["429"] == 1


async def test_bfl_cap_of_6_for_kontext_max(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(30)), clock=clock) as emu:
        statuses = [(await bfl_submit(http, emu, "flux-kontext-max", i)).status for i in range(7)]
        assert statuses == [200] * 6 + [429]
        assert (await bfl_submit(http, emu, "flux-kontext-pro", 7)).status == 200
        assert emu.stats()["active_high_water"]["bfl/flux-kontext-max"] == 6


async def test_cap_is_settable_for_any_provider_and_can_be_lifted(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(duration=Duration.fixed(30), active_task_cap={"toapis": 2})
    async with Emulator(scenario, clock=clock) as emu:
        statuses = [(await toapis_submit(http, emu, i))[0] for i in range(3)]
        assert statuses == [200, 200, 429]
        _, err = await toapis_submit(http, emu, 9)
        assert err["error"]["type"] == "rate_limit_error"
    async with Emulator(Scenario(duration=Duration.fixed(30), active_task_cap={}),
                        clock=clock) as emu:
        assert {(await bfl_submit(http, emu, i=i)).status for i in range(30)} == {200}


async def test_request_rate_limit(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(rate_limit=2.0)
    async with Emulator(scenario, clock=clock) as emu:
        statuses = [(await toapis_submit(http, emu, i))[0] for i in range(3)]
        assert statuses == [200, 200, 429]
        _, err = await toapis_submit(http, emu, 3)
        assert err["error"]["code"] == "rate_limit_exceeded"
        clock.advance(1.0)  # two more tokens
        assert [(await toapis_submit(http, emu, i))[0] for i in range(4, 7)] == [200, 200, 429]
        assert emu.stats()["rate_limited"]["rate"] == 3


async def test_rate_limit_scope_submit_spares_polls(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(rate_limit=1.0, rate_limit_scope="submit"), clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        for _ in range(5):
            await get_json(http, emu.base_url("toapis") + "/v1/images/generations/" + sub["id"],
                           BEARER)
        assert (await toapis_submit(http, emu, 1))[0] == 429


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [("seconds", None, "1"), ("seconds", 7.2, "8"), ("seconds", 1e9, "1000000000"),
     ("absent", None, None), ("http_date", 120.0, "date")],
)
async def test_retry_after_forms(
    clock: ManualClock,
    http: aiohttp.ClientSession,
    fmt: str,
    value: float | None,
    expected: str | None,
) -> None:
    scenario = Scenario(rate_limit=1.0, retry_after_format=fmt,  # type: ignore[arg-type]
                        retry_after=value)
    async with Emulator(scenario, clock=clock) as emu:
        await toapis_submit(http, emu, 0)
        async with http.post(emu.base_url("toapis") + "/v1/images/generations", headers=BEARER,
                             json=toapis_body(1)) as resp:
            assert resp.status == 429
            header = resp.headers.get("Retry-After")
    if expected == "date":
        assert header is not None
        when = email.utils.parsedate_to_datetime(header).timestamp()
        assert time.time() + 100 < when < time.time() + 140  # absolute, against the wall clock
    else:
        assert header == expected


async def test_scripted_429_gets_retry_after(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(retry_after_format="http_date"), clock=clock) as emu:
        emu.fail_next("poll", "status", status=429, retry_after=30, provider="apimart")
        emu.fail_next("submit", "status", status=503, retry_after=5)
        async with http.get(emu.base_url("apimart") + "/v1/tasks/x", headers=BEARER) as resp:
            assert resp.status == 404  # unknown tasks never reach the fault
        async with http.post(emu.base_url("apimart") + "/v1/images/generations", headers=BEARER,
                             json=toapis_body()) as resp:
            assert resp.status == 503
            assert email.utils.parsedate_to_datetime(resp.headers["Retry-After"])
            assert (await resp.json())["error"]["code"] == 503
        async with http.post(emu.base_url("apimart") + "/v1/images/generations", headers=BEARER,
                             json=toapis_body(1)) as resp:
            task_id = (await resp.json())["data"][0]["task_id"]
        async with http.get(emu.base_url("apimart") + "/v1/tasks/" + task_id,
                            headers=BEARER) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["type"] == "rate_limit_error"
            assert "Retry-After" in resp.headers
        assert emu.stats()["rate_limited"]["scripted"] == 1


# -- result URLs: expiry and download traps --------------------------------------------------------


async def _result_url(http: aiohttp.ClientSession, emu: Emulator, provider: str) -> str:
    if provider == "bfl":
        async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                             json={"prompt": "x"}) as resp:
            ready = await get_json(http, (await resp.json())["polling_url"], XKEY)
        return str(ready["result"]["sample"])
    _, sub = await toapis_submit(http, emu)
    done = await get_json(http, emu.base_url("toapis") + "/v1/images/generations/" + sub["id"],
                          BEARER)
    return str(done["result"]["data"][0]["url"])


@pytest.mark.parametrize(("provider", "ttl"), [("bfl", 600.0), ("toapis", 86400.0)])
async def test_result_urls_expire(
    clock: ManualClock, http: aiohttp.ClientSession, provider: str, ttl: float
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        url = await _result_url(http, emu, provider)
        clock.advance(ttl - 1)
        async with http.get(url) as resp:
            assert resp.status == 200
        clock.advance(1)
        async with http.get(url) as resp:
            assert resp.status == 410
        stats = emu.stats()
        assert stats["tasks"][0]["downloads"] == 2
        assert stats["requests"]["download"] == 2


@pytest.mark.parametrize("status", [403, 404])
async def test_expired_url_status_variants(
    clock: ManualClock, http: aiohttp.ClientSession, status: int
) -> None:
    scenario = Scenario(url_ttl={"toapis": 5, "apimart": 5, "bfl": 5}, url_expired_status=status)
    async with Emulator(scenario, clock=clock) as emu:
        url = await _result_url(http, emu, "bfl")
        clock.advance(5)
        async with http.get(url) as resp:
            assert resp.status == status
            assert resp.content_type == "application/xml"


async def test_download_traps(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(oversized_bytes=8 * 1024 * 1024), clock=clock) as emu:
        url = await _result_url(http, emu, "toapis")
        emu.fail_next("download", "expired")
        async with http.get(url) as resp:
            assert resp.status == 410
        emu.fail_next("download", "oversized")
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_length == 8 * 1024 * 1024
            first = await resp.content.read(64 * 1024)
            assert first.startswith(b"\xff\xd8\xff")
            resp.close()  # a careful client stops reading
        emu.fail_next("download", "oversized_chunked")
        async with http.get(url) as resp:
            assert resp.content_length is None
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            resp.close()
        emu.fail_next("download", "wrong_magic")
        async with http.get(url) as resp:
            assert resp.content_type == "image/jpeg"
            data = await resp.read()
            assert not data.startswith((b"\xff\xd8\xff", b"\x89PNG"))
        emu.fail_next("download", "redirect_scheme")
        async with http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"].startswith("file://")
        emu.fail_next("download", "truncated")
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                await resp.read()
        emu.fail_next("download", "status", status=503)
        async with http.get(url) as resp:
            assert resp.status == 503
        async with http.get(url) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"\xff\xd8\xff")


async def test_random_download_faults(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(download_faults=FaultRates(bad_redirect=1.0))
    async with Emulator(scenario, clock=clock) as emu:
        url = await _result_url(http, emu, "bfl")
        async with http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302


async def test_downloads_of_unfinished_or_failed_tasks_are_404(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        async with http.get(f"{emu.url}/files/toapis/{sub['id']}/0.jpg") as resp:
            assert resp.status == 404
        clock.advance(10)
        async with http.get(f"{emu.url}/files/toapis/{sub['id']}/0.jpg") as resp:
            assert resp.status == 200
        async with http.get(f"{emu.url}/files/toapis/{sub['id']}/1.jpg") as resp:
            assert resp.status == 404
        async with http.get(f"{emu.url}/files/apimart/{sub['id']}/0.jpg") as resp:
            assert resp.status == 404


# -- spelling variants -----------------------------------------------------------------------------


async def test_toapis_variants(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(duration=Duration.fixed(10), toapis_submitted_status=True,
                        toapis_legacy_object=True, toapis_result_layout="images")
    async with Emulator(scenario, clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        assert sub["status"] == "submitted"
        assert sub["object"] == "image.generation"
        poll = emu.base_url("toapis") + "/v1/images/generations/" + sub["id"]
        assert (await get_json(http, poll, BEARER))["status"] == "submitted"
        clock.advance(10)
        done = await get_json(http, poll, BEARER)
        assert "result" not in done
        assert done["images"][0]["url"].startswith(emu.url)
        emu.scenario = Scenario(toapis_result_layout="url")
        done = await get_json(http, poll, BEARER)
        assert "result" not in done
        assert "images" not in done
        assert done["url"].startswith(emu.url)
        assert done["object"] == "generation.task"  # the flag is off again


async def test_apimart_variants(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(apimart_data_object=True, apimart_url_string=True,
                        apimart_extra_fields=True)
    async with Emulator(scenario, clock=clock) as emu:
        async with http.post(emu.base_url("apimart") + "/v1/images/generations", headers=BEARER,
                             json=toapis_body()) as resp:
            sub = await resp.json()
        assert isinstance(sub["data"], dict)
        task_id = sub["data"]["task_id"]
        done = await get_json(http, emu.base_url("apimart") + "/v1/tasks/" + task_id, BEARER)
        image = done["data"]["result"]["images"][0]
        assert isinstance(image["url"], str)
        assert {"cost", "credits_cost", "usage"} <= set(done["data"])


async def test_bfl_extra_fields_and_null_progress(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(duration=Duration.fixed(10), bfl_extra_fields=True, report_progress=False)
    async with Emulator(scenario, clock=clock) as emu:
        async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-max", headers=XKEY,
                             json={"prompt": "x"}) as resp:
            sub = await resp.json()
        assert {"id", "polling_url", "cost", "input_mp", "output_mp"} == set(sub)
        clock.advance(5)
        assert (await get_json(http, sub["polling_url"], XKEY))["progress"] is None


async def test_progress_can_be_omitted_on_aggregators(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(10), report_progress=False),
                        clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        clock.advance(5)
        running = await get_json(http, emu.base_url("toapis") + "/v1/images/generations/"
                                 + sub["id"], BEARER)
        assert running["status"] == "in_progress"
        assert "progress" not in running


async def test_unknown_status_string(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(duration=Duration.fixed(10), unknown_status="warming_up")
    async with Emulator(scenario, clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                             json={"prompt": "x"}) as resp:
            bfl = await resp.json()
        toapis_poll = emu.base_url("toapis") + "/v1/images/generations/" + sub["id"]
        assert (await get_json(http, toapis_poll, BEARER))["status"] == "warming_up"
        assert (await get_json(http, bfl["polling_url"], XKEY))["status"] == "warming_up"
        clock.advance(10)
        assert (await get_json(http, toapis_poll, BEARER))["status"] == "completed"


async def test_aggregator_moderation_is_a_content_policy_failure(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(moderation_rate=1.0), clock=clock) as emu:
        _, sub = await toapis_submit(http, emu)
        failed = await get_json(http, emu.base_url("toapis") + "/v1/images/generations/"
                                + sub["id"], BEARER)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "content_policy_violation"


# -- per-provider overrides and live changes -------------------------------------------------------


async def test_per_provider_overrides(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(per_provider={"bfl": {"failure_rate": 1.0},
                                      "toapis": {"submit_faults": {"server_error": 1.0}}})
    async with Emulator(scenario, clock=clock) as emu:
        assert (await toapis_submit(http, emu))[0] >= 500
        async with http.post(emu.base_url("apimart") + "/v1/images/generations", headers=BEARER,
                             json=toapis_body()) as resp:
            task_id = (await resp.json())["data"][0]["task_id"]
        apimart = await get_json(http, emu.base_url("apimart") + "/v1/tasks/" + task_id, BEARER)
        assert apimart["data"]["status"] == "completed"
        async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                             json={"prompt": "x"}) as resp:
            url = (await resp.json())["polling_url"]
        assert (await get_json(http, url, XKEY))["status"] == "Error"


async def test_control_endpoints_change_a_running_emulator(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        async with http.put(emu.url + "/_emulator/scenario",
                            json={"failure_rate": 1.0, "duration": 2}) as resp:
            assert resp.status == 200
            assert (await resp.json())["failure_rate"] == 1.0
        assert emu.scenario.failure_rate == 1.0
        assert emu.scenario.duration == Duration.fixed(2)
        async with http.get(emu.url + "/_emulator/scenario") as resp:
            assert Scenario.from_dict(await resp.json()) == emu.scenario
        async with http.put(emu.url + "/_emulator/scenario", json={"no_such_field": 1}) as resp:
            assert resp.status == 400
        async with http.post(emu.url + "/_emulator/faults",
                             json=[{"endpoint": "submit", "kind": "status", "status": 504}]) as resp:
            assert (await resp.json()) == {"ok": True, "pending": 1}
        async with http.post(emu.url + "/_emulator/faults",
                             json={"endpoint": "submit", "kind": "expired"}) as resp:
            assert resp.status == 400  # expired applies to downloads only
        assert (await toapis_submit(http, emu))[0] == 504
        assert (await toapis_submit(http, emu))[0] == 200
        # tasks made before the change keep their drawn fate; new ones follow the new scenario
        emu.scenario = Scenario()
        assert emu.stats()["tasks"][0]["outcome"] == "failed"


async def test_latency_is_applied(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(latency=0.05), clock=clock) as emu:
        start = time.perf_counter()
        await toapis_submit(http, emu)
        assert time.perf_counter() - start >= 0.05


async def test_limits_do_not_consume_faults(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    scenario = Scenario(duration=Duration.fixed(30), active_task_cap={"toapis": 1})
    async with Emulator(scenario, clock=clock) as emu:
        assert (await toapis_submit(http, emu, 0))[0] == 200
        emu.fail_next("submit", "status", status=500)
        assert (await toapis_submit(http, emu, 1))[0] == 429  # over the cap: fault kept
        assert len(emu.pending_faults()) == 1
        clock.advance(30)
        assert (await toapis_submit(http, emu, 2))[0] == 500
