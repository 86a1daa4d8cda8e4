"""Session tests over real sockets against the emulator on 127.0.0.1.

Figures (tasks created, submits, polls, duplicates, active high-water marks) come from the
emulator's own counters, never from the client's. Jobs are short (tens of milliseconds) and the
poll policy is scaled down to match, so the suite stays fast without anyone sleeping to let
something happen.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import sys
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import flux_async
from flux_async import (
    GenerationRequest,
    ModerationError,
    Outcome,
    SubmissionUncertainError,
    TaskFailedError,
    TaskRef,
    ValidationError,
)
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

# Polling scaled to jobs of a few tens of milliseconds.
FAST = PollPolicy(
    target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.2
)
MODELS = {"toapis": "flux-kontext-pro", "apimart": "flux-kontext-max", "bfl": "flux-kontext-pro"}


def session_for(emu: Emulator, provider: str, **kwargs: Any) -> Session:
    kwargs.setdefault("poll_policy", FAST)
    return Session(provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider), **kwargs)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(Scenario(seed=3, duration=Duration.fixed(0.02))) as emu:
        yield emu


def stats(emu: Emulator) -> dict[str, Any]:
    return emu.stats()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_thousand_job_batch_with_mixed_outcomes(provider: str) -> None:
    scenario = Scenario(
        seed=11, duration=Duration.uniform(0.0, 0.03), failure_rate=0.1, moderation_rate=0.1
    )
    async with Emulator(scenario) as emu, session_for(emu, provider) as session:
        model = MODELS[provider]
        requests = [GenerationRequest(model=model, prompt=f"lighthouse {i}") for i in range(1000)]
        seen: Counter[int] = Counter()
        kinds: Counter[str] = Counter()
        async for outcome in session.as_completed(requests):
            seen[outcome.index] += 1
            assert outcome.request is requests[outcome.index]
            if outcome.ok:
                assert outcome.result is not None
                assert outcome.result.images
                kinds["ok"] += 1
            else:
                assert isinstance(outcome.error, (TaskFailedError, ModerationError)), outcome.error
                assert outcome.task_id is not None
                kinds[type(outcome.error).__name__] += 1
        assert sorted(seen) == list(range(1000))
        assert set(seen.values()) == {1}
        assert kinds["ok"] > 700
        assert kinds["ok"] < 1000
        data = stats(emu)
        assert data["tasks_created"] == 1000
        assert data["requests"]["submit"] == 1000
        assert data["duplicate_submits"] == 0
        failed = {t["id"] for t in data["tasks"] if t["outcome"] != "succeeded"}
        assert len(failed) == 1000 - kinds["ok"]
        st = session.statistics()
        assert st.submitted == 1000
        assert st.outstanding == 0
        assert st.succeeded == kinds["ok"]


@pytest.mark.anyio
async def test_concurrent_generate_calls_share_one_scheduler_and_poll_less_than_fixed_poller() -> (
    None
):
    # Durations log-normal around 1 s (the 10 s benchmark workload scaled by 0.1); a fixed poller
    # at 0.5 s on the real workload is one at 0.05 s here.
    scenario = Scenario(seed=5, duration=Duration.lognormal(1.0, 0.35))
    policy = PollPolicy(target_delay=0.05, min_interval=0.02, quantum=0.005, max_interval=1.0)
    async with (
        Emulator(scenario) as emu,
        session_for(emu, "apimart", poll_policy=policy) as session,
    ):
        results: list[flux_async.GenerationResult] = []

        async def one(i: int) -> None:
            results.append(await session.generate(model="flux-kontext-pro", prompt=f"storm {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert len(results) == 200
        data = stats(emu)
        polls = data["requests"]["poll"]
        fixed = sum(math.floor(t["duration"] / 0.05) + 1 for t in data["tasks"])
        assert polls * 2 < fixed, (polls, fixed)
        transport = session._net().statistics()
        # One pool: never more connections than the limit, whatever the number of callers.
        assert transport.open_connections <= session.limits.max_connections
        assert session.statistics().polls_sent == polls


@pytest.mark.anyio
async def test_bfl_kontext_max_never_exceeds_six_active_tasks() -> None:
    scenario = Scenario(seed=2, duration=Duration.uniform(0.01, 0.04))
    async with Emulator(scenario) as emu, session_for(emu, "bfl") as session:
        requests = [
            GenerationRequest(model="flux-kontext-max", prompt=f"dune {i}") for i in range(200)
        ]
        count = 0
        async for outcome in session.as_completed(requests):
            assert outcome.ok, outcome.error
            count += 1
        assert count == 200
        data = stats(emu)
        assert data["active_high_water"]["bfl/flux-kontext-max"] == 6
        assert data["rate_limited"]["cap"] == 0
        assert data["status_codes"].get("429", 0) == 0


@pytest.mark.anyio
async def test_toapis_drop_after_create_is_recovered_through_client_business_id(
    emulator: Emulator,
) -> None:
    emulator.fail_next("submit", "drop_after_create", provider="toapis")
    async with session_for(emulator, "toapis") as session:
        result = await session.generate(model="flux-kontext-pro", prompt="a quiet harbour")
        assert result.images
        data = stats(emulator)
        assert data["tasks_created"] == 1
        assert data["requests"]["submit"] == 1
        assert data["requests"]["lookup"] >= 1
        assert data["duplicate_submits"] == 0
        assert data["dropped_connections"]["submit_after_create"] == 1
        assert session.statistics().recovered_submits == 1


@pytest.mark.anyio
async def test_toapis_drop_before_create_is_resubmitted_once(emulator: Emulator) -> None:
    emulator.fail_next("submit", "drop", provider="toapis")
    async with session_for(emulator, "toapis") as session:
        await session.generate(model="flux-kontext-pro", prompt="a quiet harbour")
    data = stats(emulator)
    # The lookup proved no task existed, so the second POST cannot have paid twice.
    assert data["tasks_created"] == 1
    assert data["requests"]["submit"] == 2
    assert data["duplicate_submits"] == 0


@pytest.mark.anyio
async def test_apimart_ambiguous_submit_raises_uncertain_and_creates_one_task(
    emulator: Emulator,
) -> None:
    emulator.fail_next("submit", "drop_after_create", provider="apimart")
    async with session_for(emulator, "apimart") as session:
        with pytest.raises(SubmissionUncertainError) as info:
            await session.generate(model="flux-kontext-pro", prompt="a quiet harbour")
        assert info.value.provider == "apimart"
        assert session.statistics().uncertain_submits == 1
    data = stats(emulator)
    assert data["tasks_created"] == 1
    assert data["requests"]["submit"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_server_error_on_submit_is_never_retried_blindly(
    emulator: Emulator, provider: str
) -> None:
    # 502 is a gateway's answer: it proves nothing about the task on any provider.
    emulator.fail_next("submit", "status", status=502, provider=provider)
    async with session_for(emulator, provider) as session:
        if provider == "toapis":
            # The lookup by client_business_id finds no task (the 502 created none), so the
            # submit is sent again: exactly one task in the end.
            await session.generate(model="flux-kontext-pro", prompt="x marks")
            assert stats(emulator)["requests"]["submit"] == 2
        else:
            with pytest.raises(SubmissionUncertainError):
                await session.generate(model="flux-kontext-pro", prompt="x marks")
    assert stats(emulator)["duplicate_submits"] == 0
    assert stats(emulator)["tasks_created"] == (1 if provider == "toapis" else 0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("provider", "status", "refused"),
    [("apimart", 503, True), ("apimart", 500, False), ("bfl", 503, True), ("bfl", 500, True)],
)
async def test_a_5xx_in_the_providers_own_envelope_is_retried_only_where_it_proves_no_task(
    emulator: Emulator, provider: str, status: int, refused: bool
) -> None:
    # The emulator answers in the provider's own JSON error envelope and creates no task. BFL
    # documents 500/503 on submit as retryable; apimart's 503 turns the request away, while
    # its 500 is not trusted (parameter errors come back as 500).
    emulator.fail_next("submit", "status", status=status, provider=provider)
    async with session_for(emulator, provider) as session:
        if refused:
            await session.generate(model="flux-kontext-pro", prompt="x marks")
            assert session.statistics().submit_retries == 1
        else:
            with pytest.raises(SubmissionUncertainError):
                await session.generate(model="flux-kontext-pro", prompt="x marks")
    data = stats(emulator)
    assert data["requests"]["submit"] == (2 if refused else 1)
    assert data["tasks_created"] == (1 if refused else 0)
    assert data["duplicate_submits"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_rate_limited_submit_is_retried(emulator: Emulator, provider: str) -> None:
    emulator.fail_next("submit", "status", status=429, retry_after=0, provider=provider)
    async with session_for(emulator, provider) as session:
        await session.generate(model="flux-kontext-pro", prompt="a kite")
        assert session.statistics().submit_retries == 1
    data = stats(emulator)
    assert data["requests"]["submit"] == 2
    assert data["tasks_created"] == 1


@pytest.mark.anyio
async def test_validation_error_sends_nothing(emulator: Emulator) -> None:
    async with session_for(emulator, "toapis") as session:
        with pytest.raises(ValidationError) as info:
            await session.generate(model="flux-kontext-pro", prompt="x", n=2)
        assert info.value.field == "n"
        outcomes = [
            o async for o in session.as_completed([GenerationRequest(model="nope", prompt="x")])
        ]
    assert len(outcomes) == 1
    assert isinstance(outcomes[0].error, ValidationError)
    assert outcomes[0].task_id is None
    assert sum(stats(emulator)["requests"].values()) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_resume_finishes_tasks_of_another_session_without_submitting(provider: str) -> None:
    async with Emulator(Scenario(seed=9, duration=Duration.fixed(0.05))) as emu:
        async with session_for(emu, provider, poll_policy=PollPolicy(first_poll=30)) as first:
            jobs = [
                await first.submit(GenerationRequest(model=MODELS[provider], prompt=f"p{i}"))
                for i in range(5)
            ]
            refs = [TaskRef.from_dict(job.ref.to_dict()) for job in jobs]
        assert stats(emu)["requests"]["submit"] == 5
        async with session_for(emu, provider) as second:
            resumed = [second.resume(ref) for ref in refs]
            for job in resumed:
                await job.wait()
            if provider != "bfl":
                plain = second.resume(refs[0].task_id)
                assert plain.ref.task_id == refs[0].task_id
        data = stats(emu)
        assert data["requests"]["submit"] == 5
        assert data["tasks_created"] == 5
        assert all(job.done() for job in resumed)


@pytest.mark.anyio
async def test_bfl_resume_needs_polling_url(emulator: Emulator) -> None:
    async with session_for(emulator, "bfl") as session:
        with pytest.raises(flux_async.ConfigurationError):
            session.resume("some-id")


@pytest.mark.anyio
async def test_same_bytes_are_uploaded_once(emulator: Emulator, tmp_path: Path) -> None:
    png = _png_bytes()
    path = tmp_path / "in.png"
    path.write_bytes(png)
    async with session_for(emulator, "toapis") as session:
        requests = [
            GenerationRequest(model="flux-kontext-pro", prompt=f"edit {i}", images=[path])
            for i in range(5)
        ]
        requests.append(
            GenerationRequest(model="flux-kontext-pro", prompt="edit bytes", images=[png])
        )
        outcomes = [o async for o in session.as_completed(requests)]
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        assert session.statistics().uploads == 1
    assert stats(emulator)["requests"]["upload"] == 1


@pytest.mark.anyio
async def test_bfl_inlines_local_images(emulator: Emulator) -> None:
    async with session_for(emulator, "bfl") as session:
        result = await session.generate(
            model="flux-kontext-pro", prompt="edit", images=[_png_bytes()]
        )
        assert result.images
    assert stats(emulator)["requests"]["upload"] == 0


@pytest.mark.anyio
async def test_download_to_writes_images_named_by_index_and_task(
    emulator: Emulator, tmp_path: Path
) -> None:
    async with session_for(emulator, "apimart") as session:
        requests = [
            GenerationRequest(model="flux-kontext-pro", prompt=f"bay {i}", size="1:1")
            for i in range(4)
        ]
        outcomes = [o async for o in session.as_completed(requests, download_to=tmp_path)]
    for outcome in outcomes:
        assert outcome.ok
        assert len(outcome.files) == 1
        file = outcome.files[0]
        assert file.name == f"{outcome.index}-{outcome.task_id}.png"
        assert file.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".part-*"))
    assert stats(emulator)["requests"]["download"] == 4


@pytest.mark.anyio
async def test_download_never_sends_the_key_to_the_result_host(
    emulator: Emulator, tmp_path: Path
) -> None:
    from aiohttp import web

    seen: list[dict[str, str]] = []
    png = _png_bytes()

    async def image(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/img.png", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with session_for(emulator, "toapis") as session:
            await session.generate(model="flux-kontext-pro", prompt="fox")  # the key is in use
            target = await session.download(
                flux_async.GeneratedImage(f"http://127.0.0.1:{port}/img.png"), tmp_path / "out"
            )
    finally:
        await runner.cleanup()
    assert target == tmp_path / "out.png"
    assert target.read_bytes() == png
    assert len(seen) == 1
    assert not any(k.lower() in ("authorization", "x-key") for k in seen[0])
    assert DEFAULT_API_KEY not in " ".join(seen[0].values())


@pytest.mark.anyio
async def test_leaving_as_completed_early_stops_submitting_and_lists_accepted_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Emulator(Scenario(seed=1, duration=Duration.fixed(30))) as emu:
        limits = Limits(max_outstanding=10, max_concurrent_submits=4)
        policy = PollPolicy(first_poll=0.01, min_interval=0.01, quantum=0.005)
        async with session_for(emu, "toapis", limits=limits, poll_policy=policy) as session:
            requests = (
                GenerationRequest(model="flux-kontext-pro", prompt=f"p{i}") for i in range(100_000)
            )
            fast = Scenario(seed=1, duration=Duration.fixed(0))
            emu.scenario = fast
            got: list[Outcome] = []
            with caplog.at_level(logging.WARNING, logger="flux_async"):
                async with _aclosing(session.as_completed(requests)) as stream:
                    async for outcome in stream:
                        got.append(outcome)
                        if len(got) == 3:
                            emu.scenario = Scenario(seed=1, duration=Duration.fixed(30))
                            break
            submitted = stats(emu)["requests"]["submit"]
            # Back-pressure: nothing like the 100,000 inputs was read or submitted.
            assert submitted <= 3 + limits.max_outstanding + limits.max_concurrent_submits
        # After the close (which lets a POST already on the wire finish), nothing more was sent.
        assert stats(emu)["requests"]["submit"] <= submitted + limits.max_concurrent_submits
        abandoned = {ref.task_id for ref in session.statistics().abandoned_tasks}
        delivered = {o.task_id for o in got}
        created = {t["id"] for t in stats(emu)["tasks"]}
        # Every accepted task is either delivered or listed: nothing paid for is forgotten.
        assert created == delivered | abandoned
        assert not (delivered & abandoned)
    if abandoned:
        assert any(
            "not delivered" in r.getMessage() or "still running" in r.getMessage()
            for r in caplog.records
        )


@pytest.mark.anyio
async def test_closing_the_session_leaves_no_connection_and_names_running_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Emulator(Scenario(seed=1, duration=Duration.fixed(60))) as emu:
        session = session_for(emu, "apimart")
        with caplog.at_level(logging.WARNING, logger="flux_async"):
            async with session:
                job = await session.submit(
                    GenerationRequest(model="flux-kontext-pro", prompt="slow")
                )
                transport = session._net()
        assert job.task_id in caplog.text
        assert [ref.task_id for ref in session.statistics().abandoned_tasks] == [job.task_id]
        assert transport.statistics().open_connections == 0


@pytest.mark.anyio
async def test_job_timeout_raises_task_timeout(emulator: Emulator) -> None:
    emulator.scenario = Scenario(seed=1, duration=Duration.fixed(60))
    async with session_for(emulator, "toapis", limits=Limits(job_timeout=0.05)) as session:
        with pytest.raises(flux_async.TaskTimeoutError):
            await session.generate(model="flux-kontext-pro", prompt="slow")


@pytest.mark.anyio
async def test_missing_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TOAPIS_API_KEY", "APIMART_API_KEY", "BFL_API_KEY", "FLUX_ASYNC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(flux_async.ConfigurationError, match="TOAPIS_API_KEY"):
        Session("toapis")
    monkeypatch.setenv("FLUX_ASYNC_API_KEY", "from-env")
    assert Session("toapis").provider == "toapis"


@pytest.mark.anyio
async def test_memory_per_outstanding_task_is_under_one_kib(emulator: Emulator) -> None:
    policy = PollPolicy(first_poll=3600)  # nothing is polled while we measure
    async with session_for(emulator, "toapis", poll_policy=policy) as session:
        refs = [
            TaskRef(provider="toapis", task_id=f"task_img_{i:016x}", model="flux-kontext-pro")
            for i in range(10_000)
        ]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        jobs = [session.resume(ref) for ref in refs]
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert session.statistics().outstanding == 10_000
        per_task = (after - before) / 10_000
        assert per_task <= 1024, per_task
        del jobs


class _aclosing:  # noqa: N801 - mirrors contextlib.aclosing, which typeshed types narrowly
    def __init__(self, gen: Any) -> None:
        self.gen = gen

    async def __aenter__(self) -> Any:
        return self.gen

    async def __aexit__(self, *exc: object) -> None:
        await self.gen.aclose()


def _png_bytes() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 8 for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.anyio
async def test_bfl_key_is_never_sent_to_a_foreign_polling_host(emulator: Emulator) -> None:
    async with session_for(emulator, "bfl") as session:
        ref = TaskRef(provider="bfl", task_id="abc", polling_url="http://127.0.0.2:9/v1/get_result?id=abc")
        with pytest.raises(flux_async.ConfigurationError, match="refusing to poll"):
            await session.resume(ref).result()
        with pytest.raises(flux_async.ConfigurationError):
            await session.get_task(ref)


@pytest.mark.anyio
async def test_downloaded_files_get_ordinary_permissions(emulator: Emulator, tmp_path: Path) -> None:
    import os

    async with session_for(emulator, "toapis") as session:
        result = await session.generate(model="flux-kontext-pro", prompt="fox")
        target = await session.download(result.images[0], tmp_path / "fox")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.anyio
async def test_a_caller_supplied_aiohttp_session_is_used_and_left_open(emulator: Emulator) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with session_for(emulator, "apimart", http_session=http) as session:
            await session.generate(model="flux-kontext-pro", prompt="kept open")
        assert not http.closed
        async with http.get(emulator.base_url("apimart") + "/v1/tasks/none") as resp:
            assert resp.status == 401  # still usable after the Session closed


@pytest.mark.anyio
async def test_a_direct_upload_is_checked_before_anything_is_sent(emulator: Emulator) -> None:
    async with session_for(emulator, "toapis") as session:
        with pytest.raises(ValidationError, match="not a recognised image"):
            await session.upload(b"plain text, not an image")
        url = await session.upload(_png_bytes())
        assert url.startswith("http://127.0.0.1")
    assert stats(emulator)["requests"]["upload"] == 1


class _InputBroke(Exception):
    pass


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["iterable", "async iterable"])
async def test_an_input_that_breaks_delivers_what_it_gave_then_raises(
    emulator: Emulator, kind: str
) -> None:
    """The jobs read before the input raised are submitted and delivered; nothing after it is
    sent; then the input's own error comes out of the loop."""

    def requests() -> Any:
        for i in range(5):
            yield GenerationRequest(model="flux-kontext-pro", prompt=f"harbour {i}")
        raise _InputBroke("line 6 is unreadable")

    async def arequests() -> Any:
        for request in requests():
            yield request

    source = requests() if kind == "iterable" else arequests()
    seen: list[int] = []
    async with session_for(emulator, "toapis") as session:

        async def drain() -> None:
            async for outcome in session.as_completed(source):
                assert outcome.ok, outcome.error
                seen.append(outcome.index)

        with pytest.raises(_InputBroke, match="line 6"):
            await drain()
        assert session.statistics().abandoned_tasks == ()
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert stats(emulator)["tasks_created"] == 5


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["iterable", "async iterable"])
@pytest.mark.parametrize("max_outstanding", [1, 3])
async def test_the_input_is_read_no_further_ahead_than_max_outstanding(
    emulator: Emulator, max_outstanding: int, kind: str
) -> None:
    read = 0

    def requests() -> Any:
        nonlocal read
        for i in range(12):
            read += 1
            yield GenerationRequest(model="flux-kontext-pro", prompt=f"quay {i}")

    async def arequests() -> Any:
        for request in requests():
            yield request

    ahead: list[int] = []
    limits = Limits(max_outstanding=max_outstanding)
    async with session_for(emulator, "toapis", limits=limits) as session:
        delivered = 0
        source = requests() if kind == "iterable" else arequests()
        with anyio.fail_after(30):  # a batch that stops reading its input hangs: fail instead
            async for outcome in session.as_completed(source):
                assert outcome.ok, outcome.error
                # What was read is what was delivered plus at most max_outstanding in flight.
                ahead.append(read - delivered)
                delivered += 1
    assert delivered == 12
    assert max(ahead) <= max_outstanding


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_timeout", 0),
        ("job_timeout", -5),
        ("read_timeout", 0),
        ("connect_timeout", -1.0),
        ("read_timeout", float("nan")),
        ("max_redirects", -1),
        ("max_download_bytes", 0),
        ("max_outstanding", 0),
        ("max_concurrent_submits", 2.5),
        ("max_active_tasks", -1),
    ],
)
def test_limits_that_could_only_pay_for_nothing_are_refused_before_any_session(field: str, value: object) -> None:
    with pytest.raises(flux_async.ConfigurationError, match=f"Limits.{field}"):
        Limits(**{field: value})


def test_limits_that_make_sense_are_taken() -> None:
    limits = Limits(job_timeout=None, max_redirects=0, max_active_tasks=0, read_timeout=0.5)
    assert (limits.job_timeout, limits.max_redirects, limits.max_active_tasks) == (None, 0, 0)


@pytest.mark.parametrize(
    ("provider", "model", "count", "refused"),
    [
        ("bfl", "flux-kontext-pro", 1, False),
        ("bfl", "flux-kontext-pro", 2, True),
        ("toapis", "grok-4-1-image", 4, False),
        ("toapis", "grok-4-1-image", 2000, True),
        ("toapis", None, 10, False),  # a resumed task of unknown model: a generous cap
        ("toapis", None, 11, True),
        # A resumed task whose ref names a model the catalog does not know (an older ledger's,
        # a newer provider's): the same cap, and the job still ends.
        ("toapis", "flux-kontext-ultra", 10, False),
        ("toapis", "flux-kontext-ultra", 11, True),
    ],
)
def test_a_result_listing_more_images_than_its_model_makes_is_not_fetched(
    provider: str, model: str | None, count: int, refused: bool
) -> None:
    from flux_async._job import Job
    from flux_async.models import GeneratedImage, GenerationResult, TaskState, TaskStatus

    class Owner:
        def finished(self, job: Job) -> None:
            self.done = job

    ref = TaskRef(provider=provider, task_id="t", model=model)
    job = Job(ref, None, Owner())  # type: ignore[arg-type]
    images = tuple(GeneratedImage(f"https://results.example/{i}.png") for i in range(count))
    state = TaskState(
        task_id="t", status=TaskStatus.SUCCEEDED, raw_status="completed",
        result=GenerationResult(task_id="t", images=images),
    )
    job._on_done(state)
    if refused:
        assert isinstance(job.error, flux_async.ProtocolError)
        assert f"lists {count} images" in str(job.error)
    else:
        assert job.error is None


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_a_jobs_done_callbacks_run_once_each_in_the_order_added(count: int) -> None:
    from flux_async._job import Job
    from flux_async.models import TaskState, TaskStatus

    class Owner:
        def finished(self, job: Job) -> None:
            calls.append("owner")

    calls: list[str] = []
    job = Job(TaskRef(provider="toapis", task_id="t"), None, Owner())  # type: ignore[arg-type]
    for i in range(count):
        job.add_done_callback(lambda done, i=i: calls.append(f"cb{i}:{done.task_id}"))
    job._on_done(TaskState(task_id="t", status=TaskStatus.FAILED, raw_status="failed"))
    assert calls == ["owner", *(f"cb{i}:t" for i in range(count))]
    job._on_done(TaskState(task_id="t", status=TaskStatus.FAILED, raw_status="failed"))
    assert calls.count("cb0:t") == (1 if count else 0)  # not called again
    job.add_done_callback(lambda done: calls.append("late"))  # done already: at once
    assert calls[-1] == "late"


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_a_batchs_submitters_send_the_polls_their_posts_connections_go_to(provider: str) -> None:
    # 8 submits and 8 polls on 3 connections: a connection a POST lets go to a waiting poll is
    # used by that submitter for the poll (no worker woken for it); nothing lost or doubled.
    # Each answer takes 5 ms: polls fall due while POSTs are on the wire, and wait for them.
    async with Emulator(Scenario(seed=3, duration=Duration.fixed(0), latency=0.005)) as emu:
        limits = Limits(max_concurrent_submits=8, max_connections=3)
        policy = PollPolicy(first_poll=0.001, max_in_flight=8)
        async with session_for(emu, provider, limits=limits, poll_policy=policy) as session:
            scheduler = session._scheduler
            senders: Counter[str] = Counter()
            poll_held = scheduler._poll_held
            assert poll_held is not None

            async def recording(ref: Any, held: Any) -> Any:
                frame = sys._getframe(1)  # who sends it: a poll worker, or a batch's submitter
                while frame.f_code.co_name not in ("_worker", "_submitter"):
                    assert frame.f_back is not None
                    frame = frame.f_back
                senders[frame.f_code.co_name] += 1
                return await poll_held(ref, held)

            scheduler._poll_held = recording
            model = "flux-kontext-pro"
            requests = [GenerationRequest(model=model, prompt=f"p{i}") for i in range(60)]
            outcomes = [o async for o in session.as_completed(requests)]
            assert sorted(o.index for o in outcomes if o.ok) == list(range(60))
            assert senders["_submitter"] > 0, senders
            assert sum(senders.values()) <= stats(emu)["requests"]["poll"]
            assert stats(emu)["duplicate_submits"] == 0
            transport = session._ctx.transport
            assert isinstance(transport, flux_async.transport.AiohttpTransport)
            for _ in range(3):  # every connection came back to the pool
                assert transport.take_connection()
            assert not transport.take_connection()
            for _ in range(3):
                transport.let_go()


@pytest.mark.anyio
async def test_polls_wait_their_turn_for_a_crowded_pool_and_every_connection_comes_back() -> None:
    # 4 submits and 4 polls on 2 connections: polls wait for one in the pool's queue by turns.
    async with Emulator(Scenario(seed=2, duration=Duration.fixed(0))) as emu:
        limits = Limits(max_concurrent_submits=4, max_connections=2)
        policy = PollPolicy(first_poll=0.001, max_in_flight=4)
        async with session_for(emu, "toapis", limits=limits, poll_policy=policy) as session:
            transport = session._ctx.transport
            assert isinstance(transport, flux_async.transport.AiohttpTransport)
            turns = 0
            queue_turn = transport.queue_turn

            def counting(turn: Any) -> None:
                nonlocal turns
                turns += 1
                queue_turn(turn)

            transport.queue_turn = counting  # type: ignore[method-assign]
            requests = [GenerationRequest(model="flux-kontext-pro", prompt=f"p{i}") for i in range(40)]
            outcomes = [o async for o in session.as_completed(requests)]
            assert sorted(o.index for o in outcomes if o.ok) == list(range(40))
            assert turns > 0  # some polls found the pool busy and waited by turns
            assert stats(emu)["requests"]["poll"] == 40  # one poll each: none lost, none doubled
            # Every connection came back to the pool.
            assert transport.take_connection()
            assert transport.take_connection()
            assert not transport.take_connection()
            transport.let_go()
            transport.let_go()


def test_the_sessions_clock_is_the_running_loops_own_on_any_loop() -> None:
    class SkewedLoop(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 50_000.0 + super().time()

    async def main() -> None:
        session = Session("toapis", api_key="k" * 32, base_url="http://127.0.0.1:9")
        loop = asyncio.get_running_loop()
        before = loop.time()
        now = session._ctx.now()
        assert before <= now <= loop.time()

    for loop in (asyncio.new_event_loop(), SkewedLoop()):
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
