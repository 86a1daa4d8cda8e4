"""The API key stays secret: not in logs, reprs, error messages, tracebacks, CLI output or the
batch's files, even when a server echoes it back in every place it can.

The fault matrix (``test_faults.py``) checks the same sentinel across every fault and provider;
this module adds a hostile server that puts the key in error bodies, HTML pages, request ids,
``Retry-After`` and task failures, the values' reprs, and the ``flux-async`` command.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from flux_async import ConfigurationError, FluxError, GenerationRequest, Outcome, TaskRef
from flux_async.cli._app import cli
from flux_async.emulator import Duration, Emulator, FaultRates, Scenario
from flux_async.providers import get_codec
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Session

SENTINEL = "sk-secret-SENTINEL-4f9d2c7a1b8e0Q"
PROVIDERS = ("toapis", "apimart", "bfl")
KEY_VARS = ("TOAPIS_API_KEY", "APIMART_API_KEY", "BFL_API_KEY", "FLUX_ASYNC_API_KEY",
            "FLUX_ASYNC_BASE_URL", "FLUX_ASYNC_PROVIDER")
# The deadline bounds a submit answered 429 forever (429s are retried until a deadline).
RETRY = RetryPolicy(max_attempts=3, base_delay=0.005, max_delay=0.01, deadline=2.0)
FAST = PollPolicy(
    target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.02,
    max_poll_errors=2,
)


def assert_clean(text: str, where: str) -> None:
    """Neither the key nor a long piece of it, even wrapped over several lines."""
    squashed = "".join(text.split())
    for haystack in (text, squashed):
        assert SENTINEL not in haystack, f"the API key leaked into {where}: {text[:400]!r}"
        assert SENTINEL[10:26] not in haystack, f"part of the API key leaked into {where}"


def assert_error_clean(error: BaseException) -> None:
    name = type(error).__name__
    assert_clean(str(error), f"str({name})")
    assert_clean(repr(error), f"repr({name})")
    assert_clean("".join(traceback.format_exception(error)), f"the traceback of {name}")
    for attr, value in vars(error).items():
        assert_clean(repr(value), f"{name}.{attr}")


def assert_logs_clean(records: list[logging.LogRecord]) -> None:
    formatter = logging.Formatter()
    for record in records:
        assert_clean(record.getMessage(), f"a log record of {record.name}")
        if record.exc_info:
            assert_clean(formatter.formatException(record.exc_info), "a logged traceback")


# -- a server that echoes the key everywhere --------------------------------------------------

#: (what the submit gets, what the polls get)
MODES = {
    "submit 400 with the key in the body and request id": ("error400", None),
    "submit 401 with the key in the message": ("error401", None),
    "submit 500 HTML page titled with the key": ("html500", None),
    "submit 200 HTML page with the key": ("html200", None),
    "submit 200 unreadable JSON with the key": ("garbage200", None),
    "submit 429 with the key in Retry-After": ("error429", None),
    "poll: task failed, the key as code and message": ("ok", "failed"),
    "poll: moderated, the key in the details": ("ok", "moderated"),
    "poll 500 with the key": ("ok", "error500"),
    "poll 200 unreadable JSON with the key": ("ok", "garbage200"),
    "poll: completed, the result host answers 404 with the key": ("ok", "completed"),
}


class EchoServer:
    """Answers like a provider, with the caller's key put wherever a provider could put it."""

    def __init__(self) -> None:
        self.submit_mode = "ok"
        self.poll_mode: str | None = None
        self.port = 0
        self.seen_keys: list[str] = []

    def _key(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.startswith("Bearer ") else request.headers.get("x-key", "")
        self.seen_keys.append(key)
        return key

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        provider = request.path.strip("/").split("/", 1)[0]
        if request.path.startswith("/files/"):
            return web.Response(status=404, text=f"no such file ({key})")
        mode = self.submit_mode if request.method == "POST" else (self.poll_mode or "error500")
        echo = {"X-Request-Id": key, "Retry-After": key, "cf-ray": key}
        if mode == "error400":
            body = {"error": {"code": key, "message": f"bad key {key}", "param": key, "type": key},
                    "detail": key, "request_id": key}
            return web.json_response(body, status=400, headers=echo)
        if mode == "error401":
            return web.json_response({"error": {"message": f"Invalid API key: {key}"}}, status=401)
        if mode == "error429":
            return web.json_response({"error": {"message": f"slow down {key}"}}, status=429,
                                     headers=echo)
        if mode == "html500":
            return web.Response(status=500, content_type="text/html",
                                text=f"<html><title>{key}</title><body>{key}</body></html>")
        if mode == "html200":
            return web.Response(content_type="text/html", text=f"<html><body>{key}</body></html>")
        if mode == "garbage200":
            return web.json_response({"id": [key], "status": {"key": key}, "data": key,
                                      "message": key})
        if mode == "error500":
            return web.json_response({"error": {"message": key, "code": key}}, status=500,
                                     headers=echo)
        if request.method == "POST":
            return web.json_response(self._submitted(provider))
        return web.json_response(self._task(provider, mode, key))

    def _submitted(self, provider: str) -> dict[str, Any]:
        if provider == "apimart":
            return {"code": 200, "data": [{"status": "submitted", "task_id": "task_1"}]}
        if provider == "bfl":
            return {"id": "task_1",
                    "polling_url": f"http://127.0.0.1:{self.port}/bfl/v1/get_result?id=task_1"}
        return {"id": "task_1", "status": "queued"}

    def _task(self, provider: str, mode: str, key: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/files/x.png"
        if provider == "bfl":
            if mode == "failed":
                return {"id": "task_1", "status": "Error", "error": f"failed for {key}"}
            if mode == "moderated":
                return {"id": "task_1", "status": "Request Moderated",
                        "details": {"reason": key}}
            return {"id": "task_1", "status": "Ready", "result": {"sample": url}}
        if mode in ("failed", "moderated"):
            error = {"code": key if mode == "failed" else "content_policy_violation",
                     "message": f"failed for {key}", "type": key}
            task: dict[str, Any] = {"id": "task_1", "status": "failed", "error": error}
        else:
            task = {"id": "task_1", "status": "completed", "expires_at": 4102444800,
                    "result": {"data": [{"url": url}], "images": [{"url": [url]}]}}
        return {"code": 200, "data": task} if provider == "apimart" else task


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", list(MODES))
async def test_a_server_echoing_the_key_cannot_make_it_leak(
    provider: str, mode: str, echo: EchoServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="flux_async")
    echo.submit_mode, echo.poll_mode = MODES[mode]
    request = GenerationRequest(model="flux-kontext-pro", prompt="a harbour")
    outcomes: list[Outcome] = []
    with anyio.fail_after(15):
        async with Session(provider, api_key=SENTINEL, base_url=f"http://127.0.0.1:{echo.port}/{provider}",
                           poll_policy=FAST, retry_policy=RETRY) as session:
            try:
                async for outcome in session.as_completed([request], download_to=tmp_path):
                    outcomes.append(outcome)
            except FluxError as fatal:  # a 401 ends the batch: the error itself is checked
                assert_error_clean(fatal)
            else:
                (outcome,) = outcomes
                # Every mode is a failure of some kind (the result host refuses the download).
                assert outcome.error is not None
                assert_error_clean(outcome.error)
                assert_clean(repr(outcome), "repr(Outcome)")
            assert_clean(repr(session.statistics()), "repr(statistics())")
    assert echo.seen_keys
    assert set(echo.seen_keys) <= {SENTINEL, ""}
    assert_logs_clean(caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_reprs_of_everything_holding_the_key_hide_it(provider: str) -> None:
    codec = get_codec(provider, api_key=SENTINEL)
    request = GenerationRequest(model="flux-kontext-pro", prompt="fox")
    built = [
        codec.build_submit(request, client_business_id="cbid-1"),
        codec.build_poll(TaskRef(provider=provider, task_id="t1",
                                 polling_url="https://api.bfl.ai/v1/get_result?id=t1")),
    ]
    if provider != "bfl":
        built.append(codec.build_upload(b"\x89PNG\r\n\x1a\n" + bytes(16), filename="a.png",
                                        content_type="image/png"))
    for http in built:
        assert SENTINEL in "".join(http.headers.values())  # the key is there to be sent...
        assert_clean(repr(http), "repr(HttpRequest)")  # ...and never shown
        assert_clean(str(http), "str(HttpRequest)")
    assert_clean(repr(codec), "repr(codec)")
    async with Session(provider, api_key=SENTINEL, base_url="http://127.0.0.1:9") as session:
        assert_clean(repr(session), "repr(Session)")
        assert_clean(repr(session._net()), "repr(transport)")
        assert_clean(repr(session.statistics()), "repr(statistics())")
        assert_clean(repr(vars(session.retry_policy)) if hasattr(session.retry_policy, "__dict__")
                     else repr(session.retry_policy), "repr(RetryPolicy)")


@pytest.mark.parametrize("bad", [SENTINEL + "\n", " " + SENTINEL, SENTINEL + "\x00"])
def test_a_malformed_key_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Session("toapis", api_key=bad)
    assert_error_clean(info.value)


# -- the command line: output and the batch's files ------------------------------------------


def _invoke(args: list[str], env: dict[str, str]) -> Result:
    clean: dict[str, str | None] = dict.fromkeys(KEY_VARS)
    clean.update(env)
    return CliRunner().invoke(cli, args, env=clean, catch_exceptions=False)


@pytest.fixture
def library_logger_restored() -> Iterator[None]:
    logger = logging.getLogger("flux_async")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.usefixtures("library_logger_restored")
async def test_cli_batch_never_prints_or_records_the_key(
    provider: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scenario = Scenario(
        seed=3,
        api_keys=(SENTINEL,),
        duration=Duration.fixed(0.02),
        failure_rate=0.2,
        moderation_rate=0.1,
        blocked_terms=("blocked",),
        # Enough faults that errors of every kind reach the output and results.jsonl; few on
        # polls, whose retries back off by the (default, second-scale) poll policy.
        submit_faults=FaultRates(server_error=0.1, drop_after_create=0.1, malformed=0.1),
        poll_faults=FaultRates(malformed=0.03),
        download_faults=FaultRates(wrong_magic=0.1),
    )
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"{'blocked ' if i % 7 == 0 else ''}prompt {i}\n" for i in range(16)))
    out = tmp_path / "out"
    async with Emulator(scenario) as emu:
        base = emu.base_url(provider)
        env_var = {"toapis": "TOAPIS_API_KEY", "apimart": "APIMART_API_KEY", "bfl": "BFL_API_KEY"}
        runs = [
            # The key on the command line, debug logging, JSON output...
            ["batch", str(source), "-o", str(out), "--provider", provider, "--base-url", base,
             "--api-key", SENTINEL, "-vv", "--json"],
            # ...and from the environment, resuming the same batch, human output.
            ["batch", str(source), "-o", str(out), "--provider", provider, "--base-url", base,
             "--resume", "-vv"],
            ["status", "task_does_not_exist", "--provider", provider, "--base-url", base,
             "--api-key", SENTINEL, "-vv"],
        ]
        results = []
        with anyio.fail_after(40):
            for args in runs:
                env = {env_var[provider]: SENTINEL}
                # The command runs its own event loop: in a worker thread, while this loop serves.
                results.append(await anyio.to_thread.run_sync(_invoke, args, env))
        data = emu.stats()
    assert data["tasks_created"] > 0  # the key worked: the runs really talked to the provider
    first, resumed, status = results
    assert first.exit_code in (0, 1), first.output
    assert resumed.exit_code in (0, 1), resumed.output
    assert status.exit_code != 0
    for result in results:
        assert_clean(result.stdout, "the command's stdout")
        assert_clean(result.stderr, "the command's stderr (with -vv)")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {"results.jsonl", "journal.jsonl"} <= {p.name for p in files}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert any(record.get("error") for record in records)  # there are errors in it to check
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert_clean(text, f"the batch file {path.name}")
    assert_logs_clean(caplog.records)
