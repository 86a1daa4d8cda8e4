"""Hostile results over real sockets: an image cut short is never saved as a success (and is
fetched again, whole, when the fault passes), and a result URL on a refused address class gets
no connection at all, whether the address is in the URL or what its host name resolves to.

Connections are observed with a spy on the event loop's ``sock_connect`` (every TCP connect
aiohttp makes goes through it), never by waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from flux_async import DownloadError, GenerationRequest, Outcome
from flux_async import transport as transport_module
from flux_async._image_check import check_image
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

FAST = PollPolicy(target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05)
QUICK_RETRIES = RetryPolicy(base_delay=0.001, max_delay=0.002, max_attempts=3)
METADATA = "169.254.169.254"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(Scenario(seed=5, duration=Duration.fixed(0.0))) as emu:
        yield emu


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host of every TCP connection the event loop is asked to make."""
    seen: list[str] = []
    loop_type = type(asyncio.get_running_loop())
    original = loop_type.sock_connect

    async def spy(self: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
        seen.append(str(address[0]))
        await original(self, sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_type, "sock_connect", spy)
    return seen


def _session(emu: Emulator, base_url: str | None = None, **kwargs: Any) -> Session:
    return Session("toapis", api_key=DEFAULT_API_KEY, base_url=base_url or emu.base_url("toapis"),
                   poll_policy=FAST, retry_policy=QUICK_RETRIES, **kwargs)


async def _one(session: Session, tmp_path: Path, prompt: str = "a fox") -> Outcome:
    outcomes = [o async for o in session.as_completed(
        [GenerationRequest(model="flux-kontext-pro", prompt=prompt, response_format="png")],
        download_to=tmp_path)]
    assert len(outcomes) == 1
    return outcomes[0]


def _downloads(emu: Emulator) -> int:
    return int(emu.stats()["requests"]["download"])


# -- an image cut short ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_truncated_png_is_fetched_again_and_saved_whole(emulator: Emulator, tmp_path: Path) -> None:
    emulator.fail_next("download", "truncated_image")  # one-shot: the second GET is whole
    async with _session(emulator) as session:
        outcome = await _one(session, tmp_path)
    assert outcome.ok, outcome.error
    [written] = list(tmp_path.iterdir())
    assert written.suffix == ".png"
    assert check_image(written.read_bytes()) is None
    assert _downloads(emulator) == 2
    assert emulator.pending_faults() == []


@pytest.mark.anyio
async def test_a_png_truncated_every_time_is_a_download_error_and_no_file(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.fail_next("download", "truncated_image", count=10)
    async with _session(emulator) as session:
        outcome = await _one(session, tmp_path)
    assert isinstance(outcome.error, DownloadError)
    assert "IEND" in str(outcome.error)
    assert "cut short" in str(outcome.error)
    assert list(tmp_path.iterdir()) == []  # nothing saved, not even a .part file
    assert _downloads(emulator) == QUICK_RETRIES.max_attempts  # retried within the policy, then given up


@pytest.mark.anyio
async def test_a_truncated_jpeg_to_memory_is_refused() -> None:
    scenario = Scenario(seed=5, duration=Duration.fixed(0.0))
    async with Emulator(scenario) as emu, Session(
        "toapis", api_key=DEFAULT_API_KEY, base_url=emu.base_url("toapis"), poll_policy=FAST,
        retry_policy=RetryPolicy(max_attempts=1),
    ) as session:
        result = await session.generate(model="flux-kontext-pro", prompt="jpeg please", response_format="jpg")
        whole = await session.download(result.images[0])
        emu.fail_next("download", "truncated_image")
        with pytest.raises(DownloadError, match="FF D9") as caught:
            await session.download(result.images[0])
    assert whole[:3] == b"\xff\xd8\xff"
    assert check_image(whole) is None
    assert caught.value.retryable


# -- result hosts ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_result_on_the_metadata_address_is_refused_without_a_connection(
    emulator: Emulator, tmp_path: Path, connects: list[str]
) -> None:
    port = emulator.port
    emulator.scenario = Scenario(seed=5, result_origin=f"http://{METADATA}:{port}")
    async with _session(emulator) as session:
        outcome = await _one(session, tmp_path)
        assert isinstance(outcome.error, DownloadError)
        assert not outcome.error.retryable
        assert "169.254.169.254 (link-local address)" in str(outcome.error)
        assert _downloads(emulator) == 0
        assert METADATA not in connects
        assert "127.0.0.1" in connects  # the spy sees the API's connections
        # The same session, on 127.0.0.1, still fetches the emulator's own results.
        emulator.scenario = Scenario(seed=5)
        outcome = await _one(session, tmp_path, prompt="a second fox")
    assert outcome.ok, outcome.error
    assert [p.suffix for p in tmp_path.iterdir()] == [".png"]
    assert _downloads(emulator) == 1
    assert METADATA not in connects


@pytest.mark.anyio
async def test_a_redirect_to_a_refused_address_is_refused_before_it_is_followed(
    connects: list[str], tmp_path: Path
) -> None:
    from aiohttp import web

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"http://{METADATA}/latest/meta-data/"})

    app = web.Application()
    app.router.add_get("/r", redirect)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with Session("toapis", api_key="k", base_url=f"http://127.0.0.1:{port}") as session:
            with pytest.raises(DownloadError, match="link-local address"):
                await session.download(f"http://127.0.0.1:{port}/r", tmp_path / "x")
    finally:
        await runner.cleanup()
    assert connects == ["127.0.0.1"]
    assert list(tmp_path.iterdir()) == []


class _NamedEmulator(AbstractResolver):
    """Resolves a few test names to the emulator on 127.0.0.1 (no DNS is needed)."""

    names: ClassVar[frozenset[str]] = frozenset({"emulator.test", "results.test"})
    asked: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        type(self).asked.append(host)
        if host not in self.names:
            raise OSError(f"unknown test name {host}")
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> type[_NamedEmulator]:
    monkeypatch.setattr(transport_module, "DefaultResolver", _NamedEmulator)
    monkeypatch.setattr(_NamedEmulator, "asked", [])
    return _NamedEmulator


@pytest.mark.anyio
async def test_a_name_that_resolves_to_a_refused_address_is_refused_without_a_connection(
    emulator: Emulator, tmp_path: Path, connects: list[str], named: type[_NamedEmulator]
) -> None:
    # A session whose API is reached by name allows that name, not the class it resolves to:
    # a result on another name resolving to loopback is refused once resolved.
    port = emulator.port
    emulator.scenario = Scenario(seed=5, result_origin=f"http://results.test:{port}")
    api = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_NamedEmulator()))
    async with api, _session(emulator, f"http://emulator.test:{port}/toapis", http_session=api) as session:
        outcome = await _one(session, tmp_path)
        assert isinstance(outcome.error, DownloadError)
        assert "results.test (resolves to 127.0.0.1, a loopback address)" in str(outcome.error)
        assert named.asked.count("results.test") == 1  # refused once, not retried
        api_connections = len(connects)
        assert api_connections >= 1
        # The API's own name is trusted, whatever it resolves to.
        emulator.scenario = Scenario(seed=5, result_origin=f"http://emulator.test:{port}")
        outcome = await _one(session, tmp_path, prompt="on the api host")
        assert outcome.ok, outcome.error
        assert len(connects) > api_connections  # that download connected
    assert _downloads(emulator) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://results.test:{port}"])
async def test_the_limits_switch_allows_private_result_hosts(
    emulator: Emulator, tmp_path: Path, named: type[_NamedEmulator], origin: str
) -> None:
    port = emulator.port
    emulator.scenario = Scenario(seed=5, result_origin=origin.format(port=port))
    api = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_NamedEmulator()))
    base = f"http://emulator.test:{port}/toapis"
    async with api:
        async with _session(emulator, base, http_session=api) as session:
            refused = await _one(session, tmp_path)
        assert isinstance(refused.error, DownloadError)
        assert "loopback address" in str(refused.error)
        limits = Limits(allow_private_result_hosts=True)
        async with _session(emulator, base, http_session=api, limits=limits) as session:
            outcome = await _one(session, tmp_path, prompt="allowed")
    assert outcome.ok, outcome.error
    assert _downloads(emulator) == 1


def test_the_emulator_scenario_values_for_hostile_results_are_checked() -> None:
    scenario = Scenario.from_dict({
        "result_origin": "http://169.254.169.254",
        "faults": [{"endpoint": "download", "kind": "truncated_image"}],
    })
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    for origin in ("ftp://169.254.169.254", "http://example.test/"):
        with pytest.raises(ValueError, match="result_origin"):
            Scenario(result_origin=origin)
    with pytest.raises(ValueError, match="does not apply"):
        Scenario(faults=[{"endpoint": "poll", "kind": "truncated_image"}])
