"""Webhooks through a Session, end to end: the emulator posts each provider's webhook to the
session's receiver (``flux_async.receivers``) on 127.0.0.1, the receiver verifies it and wakes
the task's poll, and the poll confirms the state.

What must hold: one status request per job when webhooks arrive (the confirming poll), every job
completed when some are lost (the sparse safety-net polls), no extra poll for a duplicate or a
replay, and a forged delivery refused without any poll. Counted with the emulator's counters.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web

from flux_async import (
    ConfigurationError,
    GenerationRequest,
    PollPolicy,
    Session,
    WebhookVerificationError,
)
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario, WebhookFaultRates
from flux_async.receivers import DEFAULT_PATH, add_webhook_routes, serve_webhooks

pytestmark = pytest.mark.anyio

SECRET = "whsec-test-secret"
JOBS = 40
# Push watches wait for the webhook; the safety-net poll comes after this while nothing is
# learned yet (kept short here so a lost webhook costs the test little).
POLICY = PollPolicy(push_fallback_delay=1.0, push_max_interval=0.5)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def webhook_session(provider: str, scenario: Scenario) -> AsyncIterator[tuple[Session, Emulator]]:
    """A session whose webhooks the emulator delivers to a receiver of the session's own."""
    sock = _free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{DEFAULT_PATH}"
    if provider == "toapis":
        # toapis delivers to the key's default callback URL (set in its dashboard).
        scenario = attrs.evolve(scenario, toapis_callback_url=url, toapis_webhook_secrets=(SECRET,))
    async with Emulator(scenario) as emu:
        session = Session(
            provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider),
            webhook_url=url, webhook_secret=SECRET, poll_policy=POLICY,
        )
        app = web.Application()
        add_webhook_routes(app, session)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            async with session:
                yield session, emu
        finally:
            await runner.cleanup()


def requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(model="flux-kontext-pro", prompt=f"a kite {i}") for i in range(n)]


@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_delivered_webhooks_make_one_status_request_per_job(provider: str) -> None:
    scenario = Scenario(seed=5, duration=Duration.fixed(0.3))
    with anyio.fail_after(20):
        async with webhook_session(provider, scenario) as (session, emu):
            outcomes = [o async for o in session.as_completed(requests(JOBS))]
            stats = session.statistics()
            data = emu.stats()
    assert all(o.ok for o in outcomes)
    assert data["webhooks"]["delivered"] >= JOBS
    # The confirming poll and nothing more: no poll before the push, none after it.
    assert data["requests"]["poll"] == JOBS
    assert stats.webhooks_received >= JOBS
    assert stats.webhook_wakes == JOBS
    assert stats.webhooks_refused == 0


@pytest.mark.parametrize("provider", ["toapis", "bfl"])
async def test_lost_webhooks_delay_a_result_and_never_lose_it(provider: str) -> None:
    scenario = Scenario(seed=5, duration=Duration.fixed(0.3), webhook_faults=WebhookFaultRates(lost=0.2))
    with anyio.fail_after(30):
        async with webhook_session(provider, scenario) as (session, emu):
            outcomes = [o async for o in session.as_completed(requests(JOBS))]
            data = emu.stats()
    assert all(o.ok for o in outcomes)
    lost = data["webhooks"]["lost"]
    assert lost > 0
    polls = {task["id"]: task["polls"] for task in data["tasks"]}
    # Jobs whose webhook arrived were polled once; the lost ones were found by the safety net.
    assert sum(1 for count in polls.values() if count == 1) >= JOBS - lost
    assert data["requests"]["poll"] <= JOBS + 4 * lost


@pytest.mark.parametrize("kind", ["duplicated", "replayed"])
async def test_duplicated_and_replayed_webhooks_cost_no_extra_poll(kind: str) -> None:
    faults = WebhookFaultRates(**{kind: 1.0})
    scenario = Scenario(seed=5, duration=Duration.fixed(0.3), webhook_faults=faults, webhook_replay_after=0.0)
    with anyio.fail_after(20):
        async with webhook_session("bfl", scenario) as (session, emu):
            outcomes = [o async for o in session.as_completed(requests(10))]
            await emu.wait_webhooks_idle()
            data = emu.stats()
            stats = session.statistics()
    assert all(o.ok for o in outcomes)
    assert data["webhooks"][kind] == 10
    assert data["webhooks"]["delivered"] >= 20
    assert data["requests"]["poll"] == 10
    assert stats.webhook_wakes == 10


async def test_a_forged_delivery_is_refused_with_401_and_polls_nothing() -> None:
    scenario = Scenario(seed=5, duration=Duration.fixed(60.0))
    with anyio.fail_after(20):
        async with webhook_session("bfl", scenario) as (session, emu):
            job = await session.submit(requests(1)[0])
            url = session._webhook_url
            assert url is not None
            body = b'{"id": "%s", "status": "Ready", "result": {"sample": "https://x"}}' % job.task_id.encode()
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=body, headers={"X-Webhook-Secret": "guess"}) as resp:
                    assert resp.status == 401
                async with http.post(url, data=b"{}", headers={"X-BFL-Signature": "sha256=" + "0" * 64}) as resp:
                    assert resp.status == 401
            assert session.statistics().webhooks_refused == 2
            assert emu.stats()["requests"]["poll"] == 0  # nothing was polled for them
            assert not job.done()


async def test_notify_webhook_verifies_with_the_sessions_secret() -> None:
    session = Session("bfl", api_key="k", webhook_url="https://hooks.example/x", webhook_secret=SECRET)
    with pytest.raises(WebhookVerificationError):
        session.notify_webhook({"X-Webhook-Secret": "wrong"}, b'{"id": "t1", "status": "Ready"}')
    # Authentic, but about a task this session does not watch: nothing to poll.
    event = session.notify_webhook({"X-Webhook-Secret": SECRET}, b'{"id": "t1", "status": "Ready"}')
    assert event.task_id == "t1"
    assert event.authenticated
    assert session.statistics().webhook_wakes == 0
    assert session.notify(event) is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"webhook_url": "ftp://hooks.example/x"},
        {"webhook_url": "not a url"},
        {"webhook_url": "https://hooks.example/x", "webhook_secret": ""},
        {"webhook_url": "https://hooks.example/x", "webhook_secret": ["ok", "s3cr3t\n"]},
    ],
)
def test_bad_webhook_settings_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Session("bfl", api_key="k", **kwargs)  # type: ignore[arg-type]
    assert "webhook" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


async def test_serve_webhooks_listens_and_stops() -> None:
    session = Session("apimart", api_key="k", webhook_url="https://hooks.example/x")
    async with serve_webhooks(session, "127.0.0.1", 0) as port, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}{DEFAULT_PATH}/callback"
        async with http.post(url, data=b'{"code": 200, "data": {"id": "t9", "status": "completed"}}') as resp:
            assert resp.status == 204
        async with http.post(url, data=b"not json") as resp:
            assert resp.status == 400
    assert session.statistics().webhooks_received == 1
    assert session.statistics().webhooks_refused == 1
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.post(url, data=b"{}"):
            pass
