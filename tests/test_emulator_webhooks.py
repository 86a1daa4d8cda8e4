"""The emulator's webhooks end to end: a receiver on 127.0.0.1 collects what the emulator posts,
and each delivery is checked with flux_async.webhooks.verify. Faults (lost, delayed,
duplicated, replayed, badly signed), retries after a 5xx, none after a 4xx, and shutdown with
a delivery in flight. A manual clock moves time; ``wait_webhooks_idle`` and the counters say
when the emulator is done, so nothing sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDict

from flux_async import TaskStatus, WebhookVerificationError
from flux_async.emulator import (
    DEFAULT_API_KEY,
    Duration,
    Emulator,
    Fault,
    ManualClock,
    Scenario,
    WebhookFaultRates,
)
from flux_async.webhooks import verify

pytestmark = pytest.mark.anyio

BEARER = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
XKEY = {"x-key": DEFAULT_API_KEY}
T0 = 1_767_225_600.0
TOAPIS_SECRET = "emulator-webhook-secret"


@attrs.frozen
class Delivered:
    path: str
    headers: CIMultiDict[str]
    body: bytes


class Receiver:
    """An aiohttp.web app that records every POST and answers from a script (default 204)."""

    def __init__(self) -> None:
        self.got: list[Delivered] = []
        self.statuses: list[int] = []
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(Delivered(request.path, CIMultiDict(request.headers), await request.read()))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        if rec.hold is not None:
            rec.hold.set()
        await runner.cleanup()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(http: aiohttp.ClientSession, emu: Emulator, provider: str,
                 **fields: object) -> tuple[int, Any]:
    if provider == "bfl":
        url, headers, body = emu.base_url("bfl") + "/v1/flux-kontext-pro", XKEY, {"prompt": "fox"}
    else:
        url, headers = emu.base_url(provider) + "/v1/images/generations", BEARER
        body = {"model": "flux-kontext-pro", "prompt": "fox"}
    async with http.post(url, headers=headers, json={**body, **fields}) as resp:
        return resp.status, await resp.json(content_type=None)


async def task_id_of(http: aiohttp.ClientSession, emu: Emulator, provider: str,
                     **fields: object) -> str:
    status, reply = await submit(http, emu, provider, **fields)
    assert status == 200, reply
    if provider == "apimart":
        return str(reply["data"][0]["task_id"])
    return str(reply["id"])


def hooks(emu: Emulator) -> dict[str, int]:
    return emu.stats(tasks=False)["webhooks"]


async def settle(emu: Emulator, clock: ManualClock, seconds: float = 0.0) -> None:
    if seconds:
        clock.advance(seconds)
    await emu.wait_webhooks_idle()


# -- each provider's delivery verifies ------------------------------------------------------


@pytest.mark.parametrize(("failure_rate", "status", "kind"),
                         [(0.0, TaskStatus.SUCCEEDED, "generation.completed"),
                          (1.0, TaskStatus.FAILED, "generation.failed")])
async def test_toapis_delivery_is_signed_and_verifies(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession,
    failure_rate: float, status: TaskStatus, kind: str,
) -> None:
    scenario = Scenario(toapis_callback_url=receiver.url + "/toapis", duration=Duration.fixed(5),
                        failure_rate=failure_rate)
    async with Emulator(scenario, clock=clock) as emu:
        task_id = await task_id_of(http, emu, "toapis")
        await settle(emu, clock)
        assert receiver.got == []  # not before the task ends
        assert hooks(emu)["pending"] == 1
        await settle(emu, clock, 5)
        (hit,) = receiver.got
        assert hit.path == "/toapis"
        event = verify("toapis", hit.headers, hit.body, secrets=[TOAPIS_SECRET], now=clock())
        assert (event.task_id, event.status, event.authenticated) == (task_id, status, True)
        assert event.event_id == hit.headers["X-ToAPIs-Webhook-Id"]
        assert hit.headers["X-ToAPIs-Webhook-Timestamp"] == str(int(T0 + 5))
        payload = json.loads(hit.body)
        assert payload["type"] == kind
        assert set(payload["data"]) == {"task_id", "task_type", "model", "status"}
        assert b"/files/" not in hit.body  # no result URL: the receiver polls
        assert hooks(emu) | {"pending": 0} == hooks(emu)
        assert (hooks(emu)["events"], hooks(emu)["attempted"], hooks(emu)["delivered"]) == (1, 1, 1)


async def test_toapis_callback_url_same_origin_only(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(toapis_callback_url=receiver.url + "/default"), clock=clock) as emu:
        await task_id_of(http, emu, "toapis", callback_url=receiver.url + "/per-request")
        status, reply = await submit(http, emu, "toapis",
                                     callback_url="http://127.0.0.2:9/elsewhere")
        assert status == 400
        assert reply["error"]["param"] == "callback_url"
        await task_id_of(http, emu, "toapis")
        await settle(emu, clock)
        assert sorted(hit.path for hit in receiver.got) == ["/default", "/per-request"]
        assert emu.stats(tasks=False)["tasks_created"] == 2


async def test_toapis_without_default_sends_nothing(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        await task_id_of(http, emu, "toapis", callback_url=receiver.url + "/x")
        await settle(emu, clock, 60)
        assert receiver.got == []
        assert hooks(emu)["events"] == 0


async def test_toapis_rotation_sends_two_signatures(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(toapis_callback_url=receiver.url, toapis_webhook_secrets=("new", "old"))
    async with Emulator(scenario, clock=clock) as emu:
        await task_id_of(http, emu, "toapis")
        await settle(emu, clock)
        (hit,) = receiver.got
        assert hit.headers["X-ToAPIs-Webhook-Signature"].count("v1=") == 2
        for secrets in (["old"], ["new"], ["other", "old"]):
            assert verify("toapis", hit.headers, hit.body, secrets=secrets, now=clock()).authenticated
        with pytest.raises(WebhookVerificationError):
            verify("toapis", hit.headers, hit.body, secrets=[TOAPIS_SECRET], now=clock())


@pytest.mark.parametrize("base", ["/am", "/am/"])
async def test_apimart_posts_the_poll_body_to_callback(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession, base: str
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(3)), clock=clock) as emu:
        task_id = await task_id_of(http, emu, "apimart", webhook=receiver.url + base)
        await settle(emu, clock, 3)
        (hit,) = receiver.got
        assert hit.path == "/am/callback"
        assert not {"X-ToAPIs-Webhook-Signature", "X-BFL-Signature", "X-Webhook-Secret"} & set(
            hit.headers)
        async with http.get(emu.base_url("apimart") + f"/v1/tasks/{task_id}",
                            headers=BEARER) as resp:
            assert hit.body == await resp.read()  # identical to GET /v1/tasks/{id}
        event = verify("apimart", hit.headers, hit.body, secrets=())
        assert (event.task_id, event.status, event.authenticated) == (
            task_id, TaskStatus.SUCCEEDED, False)


async def test_apimart_non_url_webhook_is_dropped_silently(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook="not a url")
        status, _ = await submit(http, emu, "apimart", webhook=42)
        assert status == 400
        await settle(emu, clock)
        assert hooks(emu)["events"] == 0


@pytest.mark.parametrize(
    ("scheme", "present"),
    [("both", {"X-BFL-Signature", "X-Webhook-Secret"}), ("signature", {"X-BFL-Signature"}),
     ("secret_header", {"X-Webhook-Secret"})],
)
async def test_bfl_delivery_by_scheme(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession, scheme: str,
    present: set[str],
) -> None:
    async with Emulator(Scenario(bfl_webhook_scheme=scheme), clock=clock) as emu:  # type: ignore[arg-type]
        task_id = await task_id_of(http, emu, "bfl", webhook_url=receiver.url + "/bfl",
                                   webhook_secret="s3cret")
        await settle(emu, clock)
        (hit,) = receiver.got
        assert {"X-BFL-Signature", "X-Webhook-Secret"} & set(hit.headers) == present
        event = verify("bfl", hit.headers, hit.body, secrets=["s3cret"])
        assert (event.task_id, event.status) == (task_id, TaskStatus.SUCCEEDED)
        assert json.loads(hit.body)["result"]["sample"].startswith(emu.url + "/files/bfl/")
        with pytest.raises(WebhookVerificationError):
            verify("bfl", hit.headers, hit.body, secrets=["other"])


async def test_bfl_without_secret_is_unsigned(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(moderation_rate=1.0), clock=clock) as emu:
        await task_id_of(http, emu, "bfl", webhook_url=receiver.url)
        await settle(emu, clock)
        (hit,) = receiver.got
        assert json.loads(hit.body)["status"] in ("Request Moderated", "Content Moderated")
        with pytest.raises(WebhookVerificationError, check=lambda e: e.reason == "missing_header"):
            verify("bfl", hit.headers, hit.body, secrets=["s"])


# -- faults ------------------------------------------------------------------------------------


async def test_lost_webhook_never_arrives(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    scenario = Scenario(toapis_callback_url=receiver.url,
                        faults=(Fault(endpoint="webhook", kind="lost"),))
    async with Emulator(scenario, clock=clock) as emu:
        await task_id_of(http, emu, "toapis")
        await task_id_of(http, emu, "toapis")
        await settle(emu, clock, 1000)
        assert len(receiver.got) == 1  # the second one
        counters = hooks(emu)
        assert (counters["events"], counters["lost"], counters["attempted"]) == (2, 1, 1)
        assert emu.stats(tasks=False)["faults"]["lost"] == 1


async def test_delayed_webhook(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(toapis_callback_url=receiver.url), clock=clock) as emu:
        emu.fail_next("webhook", "delayed", delay=42)
        await task_id_of(http, emu, "toapis")
        await settle(emu, clock, 41.5)
        assert receiver.got == []
        assert hooks(emu)["delayed"] == 1
        await settle(emu, clock, 0.5)
        (hit,) = receiver.got
        assert verify("toapis", hit.headers, hit.body, secrets=[TOAPIS_SECRET], now=clock())


@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_duplicated_webhook_arrives_twice_identical(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession, provider: str
) -> None:
    scenario = Scenario(toapis_callback_url=receiver.url,
                        webhook_faults=WebhookFaultRates(duplicated=1.0))
    async with Emulator(scenario, clock=clock) as emu:
        fields: dict[str, object] = {"apimart": {"webhook": receiver.url},
                                     "bfl": {"webhook_url": receiver.url, "webhook_secret": "s"},
                                     "toapis": {}}[provider]
        await task_id_of(http, emu, provider, **fields)
        await settle(emu, clock)
        first, second = receiver.got
        assert first.body == second.body
        assert first.headers.get("X-ToAPIs-Webhook-Signature") == second.headers.get(
            "X-ToAPIs-Webhook-Signature")
        events = [verify(provider, hit.headers, hit.body, secrets=[TOAPIS_SECRET, "s"],
                         now=clock()) for hit in receiver.got]
        assert events[0].event_id == events[1].event_id  # what a receiver dedupes by
        counters = hooks(emu)
        assert (counters["duplicated"], counters["attempted"], counters["delivered"]) == (1, 2, 2)


async def test_replayed_toapis_webhook_fails_the_window(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(toapis_callback_url=receiver.url), clock=clock) as emu:
        emu.inject(Fault(endpoint="webhook", kind="replayed"))
        await task_id_of(http, emu, "toapis")
        await settle(emu, clock)
        (original,) = receiver.got
        assert verify("toapis", original.headers, original.body, secrets=[TOAPIS_SECRET],
                      now=clock())
        await settle(emu, clock, Scenario().webhook_replay_after)
        replay = receiver.got[1]
        assert (replay.body, replay.headers["X-ToAPIs-Webhook-Timestamp"]) == (
            original.body, original.headers["X-ToAPIs-Webhook-Timestamp"])
        with pytest.raises(WebhookVerificationError,
                           check=lambda e: e.reason == "timestamp_out_of_window"):
            verify("toapis", replay.headers, replay.body, secrets=[TOAPIS_SECRET], now=clock())
        assert hooks(emu)["replayed"] == 1


@pytest.mark.parametrize("provider", ["toapis", "bfl"])
async def test_badly_signed_webhook_is_refused(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession, provider: str
) -> None:
    async with Emulator(Scenario(toapis_callback_url=receiver.url), clock=clock) as emu:
        emu.fail_next("webhook", "bad_signature", provider=provider)
        fields = {"webhook_url": receiver.url, "webhook_secret": "s"} if provider == "bfl" else {}
        await task_id_of(http, emu, provider, **fields)
        await settle(emu, clock)
        (hit,) = receiver.got
        with pytest.raises(WebhookVerificationError, check=lambda e: e.reason == "bad_signature"):
            verify(provider, hit.headers, hit.body, secrets=[TOAPIS_SECRET, "s"], now=clock())
        assert hooks(emu)["badly_signed"] == 1


async def test_bad_signature_never_spent_on_apimart(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(), clock=clock) as emu:
        emu.fail_next("webhook", "bad_signature")
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await settle(emu, clock)
        assert len(receiver.got) == 1
        assert hooks(emu)["badly_signed"] == 0
        assert len(emu.pending_faults()) == 1


# -- retries -----------------------------------------------------------------------------------


async def test_apimart_retries_after_a_5xx(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    receiver.statuses = [500, 503]
    async with Emulator(Scenario(), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await settle(emu, clock)
        assert (len(receiver.got), hooks(emu)["failed"], hooks(emu)["retried"]) == (1, 1, 1)
        await settle(emu, clock, 9.9)
        assert len(receiver.got) == 1  # the first retry waits ~10 s
        await settle(emu, clock, 0.1)
        assert len(receiver.got) == 2
        await settle(emu, clock, 30)
        assert len(receiver.got) == 3
        assert receiver.got[0].body == receiver.got[2].body
        counters = hooks(emu)
        assert (counters["attempted"], counters["failed"], counters["delivered"],
                counters["retried"], counters["gave_up"], counters["pending"]) == (3, 2, 1, 2, 0, 0)


async def test_retries_give_up_after_the_schedule(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    receiver.statuses = [502] * 10
    async with Emulator(Scenario(time_scale=0.5), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await settle(emu, clock)
        for step in (5, 15, 30):  # 10 / 30 / 60 s times the time scale
            await settle(emu, clock, step)
        await settle(emu, clock, 1000)
        assert len(receiver.got) == 4
        assert (hooks(emu)["retried"], hooks(emu)["gave_up"]) == (3, 1)


async def test_no_retry_after_a_4xx(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    receiver.statuses = [400]
    async with Emulator(Scenario(), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await settle(emu, clock)
        await settle(emu, clock, 1000)
        assert len(receiver.got) == 1
        counters = hooks(emu)
        assert (counters["failed"], counters["retried"], counters["gave_up"]) == (1, 0, 1)


async def test_unreachable_receiver_is_retried_and_does_not_block_requests(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    # A port nobody listens on: bind one, learn its number, close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with Emulator(Scenario(), clock=clock) as emu:
        task_id = await task_id_of(http, emu, "bfl", webhook_url=f"http://127.0.0.1:{port}/x")
        await settle(emu, clock)
        assert (hooks(emu)["failed"], hooks(emu)["retried"]) == (1, 1)
        async with http.get(emu.base_url("bfl") + f"/v1/get_result?id={task_id}",
                            headers=XKEY) as resp:
            assert resp.status == 200
        for step in (1, 5, 30):
            await settle(emu, clock, step)
        assert (hooks(emu)["attempted"], hooks(emu)["gave_up"]) == (4, 1)


async def test_shutdown_cancels_a_delivery_in_flight(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    receiver.hold = asyncio.Event()  # the receiver never answers
    async with Emulator(Scenario(), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await receiver.arrived.wait()
        assert hooks(emu)["pending"] == 1
        # The server still answers while a delivery hangs.
        status, _ = await submit(http, emu, "apimart")
        assert status == 200
    assert not emu.running
    assert len(receiver.got) == 1


# -- housekeeping ------------------------------------------------------------------------------


async def test_reset_forgets_pending_webhooks(
    receiver: Receiver, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(5)), clock=clock) as emu:
        await task_id_of(http, emu, "apimart", webhook=receiver.url)
        assert hooks(emu)["pending"] == 1
        emu.reset()
        await settle(emu, clock, 10)
        assert receiver.got == []
        assert hooks(emu) == dict.fromkeys(hooks(emu), 0)


async def test_wall_clock_delivery(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario()) as emu:
        task_id = await task_id_of(http, emu, "apimart", webhook=receiver.url)
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        await emu.wait_webhooks_idle()
        assert verify("apimart", receiver.got[0].headers, receiver.got[0].body,
                      secrets=()).task_id == task_id
        assert hooks(emu)["delivered"] == 1


def test_scenario_webhook_fields_round_trip() -> None:
    scenario = Scenario(
        toapis_callback_url="http://127.0.0.1:1/cb", toapis_webhook_secrets=("a", "b"),
        bfl_webhook_scheme="signature", webhook_retry_delays={"bfl": [2, 4]},
        webhook_faults={"lost": 0.2, "replayed": 0.1}, webhook_delay=3,
        faults=[{"endpoint": "webhook", "kind": "duplicated", "count": 2}],
    )
    again = Scenario.from_dict(json.loads(json.dumps(scenario.to_dict())))
    assert again == scenario
    assert again.webhook_retry_delays["bfl"] == (2.0, 4.0)
    assert again.webhook_retry_delays["apimart"] == (10.0, 30.0, 60.0)
    with pytest.raises(ValueError, match="does not apply"):
        Fault(endpoint="poll", kind="lost")
    with pytest.raises(ValueError, match="at most 1"):
        WebhookFaultRates(lost=0.6, duplicated=0.6)
    with pytest.raises(ValueError, match="bfl_webhook_scheme"):
        Scenario(bfl_webhook_scheme="hmac")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http"):
        Scenario(toapis_callback_url="ftp://x")
