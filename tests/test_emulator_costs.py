"""The emulator's cost fields, as the providers report them: BFL's ``cost`` in credits on the
submit answer, apimart's ``cost`` and ``credits_cost`` on every task status, nothing on toapis;
from the scenario's price table (the published prices by default), and what each task was
charged in the stats. Plain aiohttp over real sockets; a manual clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from flux_async import catalog
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, ManualClock, Scenario

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


async def post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: object) -> Any:
    async with http.post(url, headers=headers, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


def test_the_default_prices_are_the_catalogs() -> None:
    scenario = Scenario()
    for provider, models in catalog.PRICES.items():
        for model, price in models.items():
            assert scenario.price_for(provider, model) == price, (provider, model)


def test_prices_are_checked_and_travel_in_the_json_form() -> None:
    for bad in (-0.01, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="prices"):
            Scenario(prices={"bfl/flux-kontext-pro": bad})
    scenario = Scenario(prices={"flux-kontext-pro": 0.05, "bfl/flux-kontext-pro": 0.03})
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    # provider/model wins over the model alone, which applies to every provider
    assert scenario.price_for("bfl", "flux-kontext-pro") == 0.03
    assert scenario.price_for("toapis", "flux-kontext-pro") == 0.05
    assert scenario.price_for("bfl", "flux-kontext-max") is None


async def test_bfl_reports_the_cost_in_credits_on_the_submit_answer_only(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(10)), clock=clock) as emu:
        pro = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": "a"})
        top = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-max", XKEY, {"prompt": "b"})
        assert (pro["cost"], top["cost"]) == (4.0, 8.0)  # $0.04 and $0.08, in credits of $0.01
        clock.advance(10)
        ready = await get(http, pro["polling_url"], XKEY)
        assert ready["status"] == "Ready"
        assert "cost" not in ready
        stats = emu.stats()
        assert sorted((t["model"], t["n"], t["cost_usd"], t["charged_usd"]) for t in stats["tasks"]) == [
            ("flux-kontext-max", 1, 0.08, 0.08),
            ("flux-kontext-pro", 1, 0.04, 0.04),
        ]
        assert stats["charged_usd"] == pytest.approx(0.12)


async def test_apimart_reports_the_cost_on_every_status(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(duration=Duration.fixed(10), per_provider={"apimart": {"failure_rate": 0.0}})
    async with Emulator(scenario, clock=clock) as emu:
        base = emu.base_url("apimart")
        sub = await post(http, base + "/v1/images/generations", BEARER,
                         {"model": "flux-kontext-pro", "prompt": "a"})
        assert "cost" not in str(sub)  # the submit answer carries none
        poll = base + "/v1/tasks/" + sub["data"][0]["task_id"]
        seen = []
        for _ in range(3):
            data = (await get(http, poll, BEARER))["data"]
            seen.append((data["status"], data["cost"], data["credits_cost"]))
            clock.advance(5)
        assert seen == [("pending", 0.032, 0.32), ("processing", 0.032, 0.32),
                        ("completed", 0.032, 0.32)]
        assert emu.stats()["charged_usd"] == 0.032


async def test_toapis_reports_no_cost_but_its_stats_price_n(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(prices={"toapis/grok-4-1-image": 0.02})
    async with Emulator(scenario, clock=clock) as emu:
        base = emu.base_url("toapis") + "/v1/images/generations"
        sub = await post(http, base, BEARER, {"model": "grok-4-1-image", "prompt": "a", "n": 4})
        kontext = await post(http, base, BEARER, {"model": "flux-kontext-pro", "prompt": "b"})
        for task in (sub, kontext):
            assert "cost" not in task
            assert "cost" not in await get(http, f"{base}/{task['id']}", BEARER)
        rows = {t["model"]: (t["n"], t["cost_usd"], t["charged_usd"]) for t in emu.stats()["tasks"]}
        assert rows == {"grok-4-1-image": (4, 0.08, 0.08), "flux-kontext-pro": (1, None, None)}
        assert emu.stats()["charged_usd"] == 0.08


async def test_a_moderated_bfl_task_reports_its_cost_at_submit_and_is_not_charged(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(moderation_rate=1.0), clock=clock) as emu:
        sub = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": "a"})
        assert sub["cost"] == 4.0  # the answer comes before moderation
        assert (await get(http, sub["polling_url"], XKEY))["status"].endswith("Moderated")
        [task] = emu.stats()["tasks"]
        assert (task["cost_usd"], task["charged_usd"]) == (0.04, 0.0)
        assert emu.stats()["charged_usd"] == 0.0


async def test_prices_come_from_the_scenario_and_a_model_without_one_reports_none(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(prices={"bfl/flux-kontext-pro": 0.055, "apimart/flux-kontext-pro": 0.03})
    async with Emulator(scenario, clock=clock) as emu:
        pro = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": "a"})
        top = await post(http, emu.base_url("bfl") + "/v1/flux-kontext-max", XKEY, {"prompt": "b"})
        assert pro["cost"] == 5.5
        assert "cost" not in top
        sub = await post(http, emu.base_url("apimart") + "/v1/images/generations", BEARER,
                         {"model": "flux-kontext-max", "prompt": "c"})
        data = (await get(http, emu.base_url("apimart") + "/v1/tasks/" + sub["data"][0]["task_id"],
                          BEARER))["data"]
        assert "cost" not in data
        assert "credits_cost" not in data
        # A task keeps the cost it was created with when the scenario changes.
        emu.scenario = Scenario()
        assert {t["model"]: t["cost_usd"] for t in emu.stats()["tasks"] if t["provider"] == "bfl"} == {
            "flux-kontext-pro": 0.055, "flux-kontext-max": None}
