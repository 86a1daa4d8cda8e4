"""The emulator's own accounting (``/_emulator/stats``) matches the traffic actually sent, counts
duplicate submissions, and everything it draws is deterministic under a seed.
"""

from __future__ import annotations

import math
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
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, headers: dict[str, str],
               body: object) -> tuple[int, Any]:
    async with http.post(url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
              ) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_stats_match_the_traffic(http: aiohttp.ClientSession) -> None:
    clock = ManualClock(T0)
    async with Emulator(Scenario(duration=Duration.fixed(4)), clock=clock) as emu:
        toapis = emu.base_url("toapis") + "/v1/images/generations"
        _, a = await post(http, toapis, BEARER, {"model": "flux-kontext-pro", "prompt": "a"})
        _, b = await post(http, emu.base_url("apimart") + "/v1/images/generations", BEARER,
                          {"model": "flux-kontext-pro", "prompt": "b"})
        _, c = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-max", XKEY,
                          {"prompt": "c"})
        await post(http, toapis, BEARER, {"model": "nope", "prompt": "x"})  # 400
        await post(http, toapis, {}, {"model": "flux-kontext-pro", "prompt": "x"})  # 401
        for _ in range(3):
            await get(http, toapis + "/" + a["id"], BEARER)
        await get(http, toapis + "/missing", BEARER)  # 404
        apimart_poll = emu.base_url("apimart") + "/v1/tasks/" + b["data"][0]["task_id"]
        await get(http, apimart_poll, BEARER)
        clock.advance(4)
        _, done = await get(http, toapis + "/" + a["id"], BEARER)
        _, ready = await get(http, c["polling_url"], XKEY)
        for url in (done["result"]["data"][0]["url"], ready["result"]["sample"]):
            async with http.get(url) as resp:
                assert resp.status == 200

        stats = emu.stats()
        async with http.get(emu.url + "/_emulator/stats") as resp:
            over_http = await resp.json()

    assert over_http == stats
    assert stats["now"] == T0 + 4
    assert stats["requests"] == {"submit": 5, "poll": 7, "lookup": 0, "upload": 0,
                                 "download": 2, "other": 0}
    assert stats["by_provider"]["toapis"] == {"submit": 3, "poll": 5, "download": 1}
    assert stats["by_provider"]["apimart"] == {"submit": 1, "poll": 1}
    assert stats["by_provider"]["bfl"] == {"submit": 1, "poll": 1, "download": 1}
    assert stats["status_codes"] == {"200": 11, "400": 1, "401": 1, "404": 1}
    assert stats["tasks_created"] == 3
    assert stats["duplicate_submits"] == 0
    rows = {row["provider"]: row for row in stats["tasks"]}
    assert rows["toapis"]["polls"] == 4
    assert rows["toapis"]["downloads"] == 1
    assert rows["toapis"]["submits"] == 1
    assert rows["toapis"]["status"] == "succeeded"
    assert rows["toapis"]["provider_status"] == "completed"
    assert rows["toapis"]["created_at"] == T0
    assert rows["toapis"]["completed_at"] == T0 + 4
    assert rows["toapis"]["first_terminal_poll_at"] == T0 + 4
    assert rows["apimart"]["polls"] == 1
    assert rows["apimart"]["first_terminal_poll_at"] is None
    assert rows["bfl"]["model"] == "flux-kontext-max"
    assert rows["bfl"]["provider_status"] == "Ready"


async def test_stats_without_tasks_and_reset(http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=ManualClock(T0)) as emu:
        await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": "x"})
        status, light = await get(http, emu.url + "/_emulator/stats?tasks=0")
        assert status == 200
        assert "tasks" not in light
        assert light["tasks_created"] == 1
        async with http.post(emu.url + "/_emulator/reset") as resp:
            assert resp.status == 200
        stats = emu.stats()
        assert stats["tasks_created"] == 0
        assert stats["tasks"] == []
        assert stats["requests"]["submit"] == 0
        assert stats["active_high_water"] == {}


async def test_unfinished_task_rows(http: aiohttp.ClientSession) -> None:
    clock = ManualClock(T0)
    async with Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu:
        _, sub = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY,
                            {"prompt": "x"})
        row = emu.task(sub["id"])
        assert row is not None
        assert row["status"] == "queued"
        assert row["completed_at"] is None
        clock.advance(5)
        row = emu.task(sub["id"])
        assert row is not None
        assert row["status"] == "running"
        assert row["provider_status"] == "Pending"
        assert emu.stats()["active_now"] == {"bfl": 1, "bfl/flux-kontext-pro": 1}
        assert emu.task("nope") is None
        assert emu.task_ids() == [sub["id"]]


async def test_duplicate_submissions_are_counted(http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=ManualClock(T0)) as emu:
        toapis = emu.base_url("toapis") + "/v1/images/generations"
        # same client_business_id, different bodies
        _, first = await post(http, toapis, BEARER, {"model": "flux-kontext-pro", "prompt": "a",
                                                     "client_business_id": "job-7"})
        await post(http, toapis, BEARER, {"model": "flux-kontext-pro", "prompt": "a again",
                                          "client_business_id": "job-7"})
        # byte-identical bodies (no client_business_id)
        body = {"prompt": "same body"}
        _, bfl_first = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, body)
        await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, body)
        # same body to another model is not a duplicate
        await post(http, emu.base_url("bfl") + "/v1/flux-kontext-max", XKEY, body)
        # a lookup by the shared client_business_id finds the first task
        _, found = await get(http, toapis + "/job-7", BEARER)
        assert found["id"] == first["id"]
        stats = emu.stats()
    assert stats["tasks_created"] == 5
    assert stats["duplicate_submits"] == 2
    rows = {row["id"]: row for row in stats["tasks"]}
    assert rows[first["id"]]["submits"] == 2
    assert rows[bfl_first["id"]]["submits"] == 2
    duplicates = [row for row in stats["tasks"] if row["duplicate_of"] is not None]
    assert {row["duplicate_of"] for row in duplicates} == {first["id"], bfl_first["id"]}


async def test_high_water_mark_per_provider_and_model(http: aiohttp.ClientSession) -> None:
    clock = ManualClock(T0)
    async with Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu:
        url = emu.base_url("toapis") + "/v1/images/generations"
        for i in range(3):
            await post(http, url, BEARER, {"model": "flux-kontext-pro", "prompt": f"p{i}"})
        await post(http, url, BEARER, {"model": "grok-4-1-image", "prompt": "g"})
        clock.advance(10)
        await post(http, url, BEARER, {"model": "grok-4-1-image", "prompt": "g2"})
        stats = emu.stats()
    assert stats["active_high_water"]["toapis"] == 4
    assert stats["active_high_water"]["toapis/flux-kontext-pro"] == 3
    assert stats["active_high_water"]["toapis/grok-4-1-image"] == 1
    assert stats["active_now"]["toapis"] == 1


# -- determinism -----------------------------------------------------------------------------------


async def _run(http: aiohttp.ClientSession, scenario: Scenario) -> tuple[list[Any], list[bytes]]:
    clock = ManualClock(T0)
    async with Emulator(scenario, clock=clock) as emu:
        ids = []
        for i in range(40):
            provider = ("toapis", "apimart", "bfl")[i % 3]
            if provider == "bfl":
                _, sub = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY,
                                    {"prompt": f"prompt {i}"})
                ids.append(sub["id"])
            else:
                _, sub = await post(http, emu.base_url(provider) + "/v1/images/generations",
                                    BEARER, {"model": "flux-kontext-pro", "prompt": f"prompt {i}"})
                ids.append(sub["id"] if provider == "toapis" else sub["data"][0]["task_id"])
        clock.advance(1000)
        stats = emu.stats()
        images = []
        for row in stats["tasks"]:
            if row["outcome"] == "succeeded" and row["provider"] == "toapis":
                _, done = await get(http, emu.base_url("toapis") + "/v1/images/generations/"
                                    + row["id"], BEARER)
                async with http.get(done["result"]["data"][0]["url"]) as resp:
                    images.append(await resp.read())
    fates = [(row["id"], row["outcome"], row["duration"]) for row in stats["tasks"]]
    assert [f[0] for f in fates] == ids
    return fates, images


async def test_same_seed_same_everything(http: aiohttp.ClientSession) -> None:
    scenario = Scenario(seed=42, duration=Duration.lognormal(10, 0.35), failure_rate=0.2,
                        moderation_rate=0.1)
    fates_a, images_a = await _run(http, scenario)
    fates_b, images_b = await _run(http, scenario)
    assert fates_a == fates_b
    assert images_a == images_b
    assert images_a
    outcomes = {f[1] for f in fates_a}
    assert "succeeded" in outcomes
    assert "failed" in outcomes
    assert len({f[2] for f in fates_a}) == len(fates_a)  # log-normal: all distinct
    other, _ = await _run(http, Scenario(seed=43, duration=Duration.lognormal(10, 0.35),
                                         failure_rate=0.2, moderation_rate=0.1))
    assert [f[1:] for f in other] != [f[1:] for f in fates_a]


async def test_kth_task_per_provider_is_independent_of_other_traffic(
    http: aiohttp.ClientSession,
) -> None:
    scenario = Scenario(seed=5, duration=Duration.uniform(1, 100))

    async def bfl_durations(noise: int) -> list[float]:
        async with Emulator(scenario, clock=ManualClock(T0)) as emu:
            for i in range(noise):
                await post(http, emu.base_url("toapis") + "/v1/images/generations", BEARER,
                           {"model": "flux-kontext-pro", "prompt": f"noise {i}"})
            for i in range(5):
                await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY,
                           {"prompt": f"p{i}"})
            return [r["duration"] for r in emu.stats()["tasks"] if r["provider"] == "bfl"]

    assert await bfl_durations(0) == await bfl_durations(7)


async def test_outcome_by_prompt(http: aiohttp.ClientSession) -> None:
    scenario = Scenario(seed=1, outcome_key="prompt", failure_rate=0.5,
                        duration=Duration.uniform(1, 100))
    async with Emulator(scenario, clock=ManualClock(T0)) as emu:
        url = emu.base_url("toapis") + "/v1/images/generations"
        for i in range(10):
            await post(http, url, BEARER, {"model": "flux-kontext-pro", "prompt": f"p{i % 5}"})
        rows = emu.stats()["tasks"]
    for first, second in zip(rows[:5], rows[5:], strict=True):
        assert (first["outcome"], first["duration"]) == (second["outcome"], second["duration"])
    assert len({r["duration"] for r in rows}) == 5


async def test_rates_and_time_scale_shape_the_population(http: aiohttp.ClientSession) -> None:
    scenario = Scenario(seed=3, duration=Duration.lognormal(10, 0.35), time_scale=0.01,
                        model_durations={"bfl/flux-kontext-max": Duration.fixed(2)},
                        failure_rate=0.25, moderation_rate=0.25, active_task_cap={})
    async with Emulator(scenario, clock=ManualClock(T0)) as emu:
        for i in range(200):
            await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": f"{i}"})
        await post(http, emu.base_url("bfl") + "/v1/flux-kontext-max", XKEY, {"prompt": "max"})
        rows = emu.stats()["tasks"]
    pro = [r for r in rows if r["model"] == "flux-kontext-pro"]
    durations = sorted(r["duration"] for r in pro)
    median = durations[len(durations) // 2]
    assert 0.08 < median < 0.12  # log-normal median 10 s, scaled by 0.01
    assert math.isclose(rows[-1]["duration"], 0.02)
    outcomes = [r["outcome"] for r in pro]
    assert 30 < outcomes.count("failed") < 70
    moderated = outcomes.count("request_moderated") + outcomes.count("content_moderated")
    assert 30 < moderated < 70
    assert outcomes.count("request_moderated") > 0
    assert outcomes.count("content_moderated") > 0


async def test_reset_gives_new_ids(http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=ManualClock(T0)) as emu:
        url = emu.base_url("bfl") + "/v1/flux-kontext-pro"
        _, before = await post(http, url, XKEY, {"prompt": "x"})
        emu.reset()
        _, after = await post(http, url, XKEY, {"prompt": "x"})
        assert before["id"] != after["id"]
        _, gone = await get(http, before["polling_url"], XKEY)
        assert gone["status"] == "Task not found"
