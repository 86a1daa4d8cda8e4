"""Logging worth turning on: DEBUG names each request (method, redacted URL, status, time) and,
on the command line, sums up the scheduler's work every few seconds; INFO names each finished
download; ``-v`` / ``-vv`` show them. No key, no URL signature, ever.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from flux_async import GenerationRequest, SessionStatistics, TransportError
from flux_async._http import redact_url
from flux_async.cli._app import cli
from flux_async.cli._statslog import log_scheduling
from flux_async.emulator import Emulator, EmulatorProcess, Scenario
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Session

SENTINEL = "sk-secret-SENTINEL-logging-7c1e0d"
KEY_VARS = ("TOAPIS_API_KEY", "APIMART_API_KEY", "BFL_API_KEY", "FLUX_ASYNC_API_KEY",
            "FLUX_ASYNC_BASE_URL", "FLUX_ASYNC_PROVIDER")


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.startswith("flux_async")]


def test_redact_url_keeps_the_task_id_and_nothing_secret() -> None:
    assert redact_url("https://api.us1.bfl.ai/v1/get_result?id=abc-123") == (
        "https://api.us1.bfl.ai/v1/get_result?id=abc-123"
    )
    assert redact_url("https://delivery.bfl.ai/x/sample.jpg?se=1700000000&sig=deadbeef") == (
        "https://delivery.bfl.ai/x/sample.jpg?se=<redacted>&sig=<redacted>"
    )
    assert redact_url("http://user:pw@127.0.0.1:8080/toapis/v1/images/generations") == (
        "http://127.0.0.1:8080/toapis/v1/images/generations"
    )


@pytest.mark.anyio
async def test_debug_logs_every_request_and_info_every_download(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    async with (
        Emulator(Scenario(api_keys=(SENTINEL,))) as emu,
        Session("bfl", api_key=SENTINEL, base_url=emu.base_url("bfl")) as session,
    ):
        job = await session.submit(GenerationRequest(model="flux-kontext-pro", prompt="a fox"))
        result = await job.result()
        await session.download(result.images[0], tmp_path / "fox.img")
    debug = messages(caplog, logging.DEBUG)
    submit = [m for m in debug if m.startswith("POST ")]
    assert len(submit) == 1
    assert re.fullmatch(r"POST http://127\.0\.0\.1:\d+/bfl/v1/flux-kontext-pro -> 200 \(\d+ ms, \d+ bytes\)", submit[0])
    polls = [m for m in debug if "/get_result?id=" in m]
    assert polls
    assert all(f"?id={job.task_id} -> 200" in m for m in polls)
    [download] = [m for m in debug if "/files/bfl/" in m]
    assert "se=<redacted>&sig=<redacted> -> 200" in download
    [saved] = [m for m in messages(caplog, logging.INFO) if m.startswith("downloaded")]
    assert "fox.jpg" in saved or "fox.png" in saved
    signature = result.images[0].url.rpartition("sig=")[2]
    for record in caplog.records:
        text = record.getMessage()
        assert SENTINEL not in text
        assert signature not in text


@pytest.mark.anyio
async def test_a_failed_request_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    async with Emulator() as emu:
        dead = emu.url  # nothing listens there once the emulator has stopped
    retry = RetryPolicy(max_attempts=1)
    async with Session("toapis", api_key=SENTINEL, base_url=dead + "/toapis", retry_policy=retry) as session:
        with pytest.raises(TransportError):
            await session.get_task("task_img_1")
    [failure] = [m for m in messages(caplog, logging.DEBUG) if "failed after" in m]
    assert failure.startswith(f"GET {dead}/toapis/v1/images/generations/task_img_1 failed after ")
    assert "could not connect" in failure


@pytest.mark.anyio
async def test_without_debug_nothing_is_logged_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    async with (
        Emulator() as emu,
        Session("toapis", api_key="emulator-test-key", base_url=emu.base_url("toapis")) as session,
    ):
        await session.generate(model="flux-kontext-pro", prompt="a fox")
    assert messages(caplog, logging.DEBUG) == []


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario(api_keys=(SENTINEL,))) as emulator:
        yield emulator


@pytest.mark.parametrize(("flag", "requests_shown"), [("-v", False), ("-vv", True)])
def test_verbose_flags_show_info_then_debug(
    emu: EmulatorProcess, tmp_path: Path, flag: str, requests_shown: bool
) -> None:
    env: dict[str, str | None] = dict.fromkeys(KEY_VARS)
    args = ["generate", "a fox", "-o", str(tmp_path), "--base-url", emu.base_url("toapis"),
            "--api-key", SENTINEL, flag]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = result.stderr
    assert "INFO flux_async.cli: task task_img_" in log
    assert "INFO flux_async.transport: downloaded http://127.0.0.1:" in log
    assert ("DEBUG flux_async.transport: POST http://127.0.0.1:" in log) is requests_shown
    assert SENTINEL not in result.output


def test_without_a_flag_the_log_is_quiet(emu: EmulatorProcess, tmp_path: Path) -> None:
    env: dict[str, str | None] = dict.fromkeys(KEY_VARS)
    args = ["generate", "a fox", "-o", str(tmp_path), "--base-url", emu.base_url("toapis"),
            "--api-key", SENTINEL]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "flux_async." not in result.stderr


# -- the scheduler, in aggregate -------------------------------------------------------------------


class _Stop(Exception):
    pass


def _snapshot(polls: int, finished: int, retries: int = 0, limited: int = 0) -> SessionStatistics:
    fields = {f.name: 0 for f in attrs.fields(SessionStatistics) if f.default is attrs.NOTHING}
    fields.update(
        provider="toapis", outstanding_tasks=(), abandoned_tasks=(), polls_per_finished_task=1.5,
        outstanding=7, active_tasks=7, polls_sent=polls, succeeded=finished, poll_retries=retries,
        rate_limited=limited,
    )
    return SessionStatistics(**fields)


class _FakeSession:
    def __init__(self, *snapshots: SessionStatistics) -> None:
        self.snapshots = list(snapshots)

    def statistics(self) -> SessionStatistics:
        return self.snapshots.pop(0)


@pytest.mark.anyio
async def test_the_schedulers_work_is_logged_in_aggregate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    session = _FakeSession(_snapshot(0, 0), _snapshot(10, 2, retries=1), _snapshot(14, 5, retries=1, limited=2))
    times = iter([100.0, 105.0, 110.0])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        await log_scheduling([session], every=5.0, sleep=sleep, clock=lambda: next(times))  # type: ignore[list-item]
    assert [r.getMessage() for r in caplog.records if r.name == "flux_async.scheduler"] == [
        "toapis: 7 task(s) watched, 7 active; last 5.0 s: 10 poll(s) (2.0/s), 2 finished, "
        "1 poll retry, 0 answered 429; 1.50 polls per finished task so far",
        "toapis: 7 task(s) watched, 7 active; last 5.0 s: 4 poll(s) (0.8/s), 3 finished, "
        "0 poll retries, 2 answered 429; 1.50 polls per finished task so far",
    ]


@pytest.mark.anyio
async def test_without_debug_the_scheduling_log_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    session = _FakeSession()  # any statistics() call would fail: there is none to give

    async def sleep(seconds: float) -> None:
        raise AssertionError("no timer is set")

    await log_scheduling([session], sleep=sleep)  # type: ignore[list-item]


@pytest.mark.anyio
async def test_info_follows_each_job_and_debug_each_submit_decision(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    async with (
        Emulator() as emu,
        Session(
            "toapis", api_key=SENTINEL, base_url=emu.base_url("toapis"),
            retry_policy=RetryPolicy(base_delay=0.01, max_delay=0.02),
            poll_policy=PollPolicy(first_poll=0.05, min_interval=0.02, quantum=0.0),
        ) as session,
    ):
        emu.set_scenario(Scenario(api_keys=(SENTINEL,)))
        emu.fail_next("submit", "status", status=429, retry_after=0.01)
        emu.fail_next("submit", "drop_after_create")
        result = await session.generate(model="flux-kontext-pro", prompt="a fox", idempotency_key="fox-1")
    (task,) = emu.stats()["tasks"]
    info = messages(caplog, logging.INFO)
    assert f"task {task['id']} accepted (flux-kontext-pro, key fox-1)" in info
    assert f"task {task['id']} succeeded" in info
    debug = messages(caplog, logging.DEBUG)
    assert any("submit fox-1 attempt 1 refused before any task existed (RateLimitError): attempt 2" in m for m in debug)
    assert any("submit fox-1 attempt 2 ended ambiguously" in m for m in debug)
    assert result.images
    assert not any(SENTINEL in r.getMessage() for r in caplog.records)
