"""The fault matrix: every provider x every failure the network or a provider can produce.

Each cell runs a small batch (``JOBS`` jobs) through ``Session.as_completed(...,
download_to=...)`` against the in-process emulator, with one scripted fault aimed at every job
(or a scenario that breaks every job the same way), and checks the accounting from the
emulator's own counters:

- every input yields exactly one ``Outcome`` (indices each once), of the expected kind;
- the emulator creates no duplicate task, at most one task per input, and the POSTs are
  exactly the tasks created plus the submits the provider refused before creating a task;
- no accepted task id is lost: every task the emulator created is delivered in an outcome,
  or (where the submit reply was lost and the provider cannot look tasks up) surfaced as a
  ``SubmissionUncertainError`` outcome;
- afterwards the session watches nothing, holds no connection, has left no asyncio task
  behind, and no file is half-written; nothing hangs (``anyio.fail_after`` bounds each cell);
- the sentinel API key appears in no log record, no error's ``str``/``repr``/traceback.

Every cell records its figures in :data:`FIGURES`; ``python tests/fault_table.py`` runs this
module and prints them as a table (faults x providers).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from flux_async import (
    BadRequestError,
    DownloadError,
    GenerationRequest,
    ModerationError,
    Outcome,
    ResultExpiredError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from flux_async import _submit as submit_module
from flux_async.emulator import Duration, Emulator, Scenario
from flux_async.retry import RetryPolicy, retry_delay
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

PROVIDERS = ("toapis", "apimart", "bfl")
JOBS = 10
MODEL = "flux-kontext-pro"
#: The API key of every cell: it must never show up anywhere but in the request headers.
SENTINEL = "sk-fluxsentinel-7Q2vX9kLmN4pR8tZ"

#: Polling scaled down to instant jobs. ``max_poll_errors`` is above the number of scripted
#: faults, so that however the faults fall on the tasks no watch gives up on a transient error.
POLL = PollPolicy(
    target_delay=0.02,
    first_poll=0.01,
    min_interval=0.005,
    quantum=0.005,
    max_interval=0.05,
    rate_limit_pause_cap=0.02,
    max_poll_errors=JOBS + 2,
)
#: Small delays and a small Retry-After cap (the cap is what keeps the "absurdly large"
#: Retry-After cells fast); enough attempts and budget that no job runs out of retries, whatever
#: order the scripted faults are consumed in (the budget has its own tests).
RETRY = RetryPolicy(
    max_attempts=JOBS + 2,
    base_delay=0.005,
    max_delay=0.02,
    max_retry_after=0.02,
    budget_floor=1000.0,
)


@attrs.frozen
class Expect:
    """What a cell must end with, for one provider."""

    #: None: every job succeeds (and its image is on disk); else every outcome's error type.
    error: type[BaseException] | None
    #: Tasks the emulator creates.
    created: int = JOBS
    #: POSTs sent (``JOBS`` + one per submit refused before a task existed and sent again).
    posts: int = JOBS
    #: Emulator tasks still running when the cell ends (the remote may outlive a deadline).
    remote_running: int = 0


@attrs.frozen
class FaultCase:
    """One row of the matrix."""

    label: str
    #: Scripted faults, each aimed at ``JOBS`` requests: (endpoint, kind, extra Fault fields).
    script: tuple[tuple[str, str, Mapping[str, Any]], ...] = ()
    scenario: Mapping[str, Any] = attrs.field(factory=dict)
    limits: Mapping[str, Any] = attrs.field(factory=dict)
    prompt: str = "a lighthouse"
    expect: Callable[[str], Expect] = lambda provider: Expect(None)


OK = Expect(None)
OK_AFTER_RETRY = Expect(None, posts=2 * JOBS)


def _ambiguous_before_create(provider: str) -> Expect:
    # The provider refused before creating anything, but the client cannot know that from a 5xx
    # or a dropped connection. toapis proves it by looking the client_business_id up (404)
    # and sends the submit again; the others surface SubmissionUncertainError, never resubmit.
    if provider == "toapis":
        return OK_AFTER_RETRY
    return Expect(SubmissionUncertainError, created=0)


#: 5xx statuses whose answer in the provider's own JSON error envelope proves no task was made
#: (BFL documents 500/503 on submit as retryable; apimart's 503 turns the request away).
_REFUSED_5XX = {"bfl": {500, 503}, "apimart": {503}, "toapis": set()}


def _server_error_at_submit(status: int) -> Callable[[str], Expect]:
    def expect(provider: str) -> Expect:
        if status in _REFUSED_5XX[provider]:
            return OK_AFTER_RETRY  # retried like a 429: one task, no duplicate
        return _ambiguous_before_create(provider)

    return expect


def _ambiguous_after_create(provider: str) -> Expect:
    # The task exists but its id never reached the client: toapis finds it by
    # client_business_id; elsewhere it is a SubmissionUncertainError (the paid task is known to
    # exist, its id is not).
    if provider == "toapis":
        return OK
    return Expect(SubmissionUncertainError)


def _moderated_at_submit(provider: str) -> Expect:
    # The aggregators refuse a blocked prompt with a 422 (no task); BFL creates a task that
    # ends "Request Moderated".
    if provider == "bfl":
        return Expect(ModerationError)
    return Expect(BadRequestError, created=0)


def _case(label: str, *script: tuple[str, str, Mapping[str, Any]], **kwargs: Any) -> FaultCase:
    return FaultCase(label, script=tuple(script), **kwargs)


SLOW = 0.3  # seconds a "slow" answer takes, against a read timeout of READ_TIMEOUT
READ_TIMEOUT = 0.1

CASES: tuple[FaultCase, ...] = (
    _case("healthy (baseline)"),
    # -- 429 and Retry-After, on submit (refused before any task: the retry adds one POST) ---
    _case("submit 429, Retry-After seconds", ("submit", "status", {"status": 429, "retry_after": 1}),
          expect=lambda p: OK_AFTER_RETRY),
    _case("submit 429, Retry-After HTTP date", ("submit", "status", {"status": 429, "retry_after": 1}),
          scenario={"retry_after_format": "http_date"}, expect=lambda p: OK_AFTER_RETRY),
    _case("submit 429, no Retry-After", ("submit", "status", {"status": 429}),
          scenario={"retry_after_format": "absent"}, expect=lambda p: OK_AFTER_RETRY),
    _case("submit 429, Retry-After 1e9 s", ("submit", "status", {"status": 429, "retry_after": 1e9}),
          expect=lambda p: OK_AFTER_RETRY),
    # -- 429 on poll: pauses the provider's polls, capped ---------------------------------------
    _case("poll 429, Retry-After seconds", ("poll", "status", {"status": 429, "retry_after": 1})),
    _case("poll 429, Retry-After HTTP date", ("poll", "status", {"status": 429, "retry_after": 1}),
          scenario={"retry_after_format": "http_date"}),
    _case("poll 429, no Retry-After", ("poll", "status", {"status": 429}),
          scenario={"retry_after_format": "absent"}),
    _case("poll 429, Retry-After 1e9 s", ("poll", "status", {"status": 429, "retry_after": 1e9})),
    # -- 5xx -------------------------------------------------------------------------------------
    *(
        _case(f"submit {status}", ("submit", "status", {"status": status}),
              expect=_server_error_at_submit(status))
        for status in (500, 502, 503, 504)
    ),
    *(_case(f"poll {status}", ("poll", "status", {"status": status})) for status in (500, 502, 503, 504)),
    # -- dropped connections and timeouts ---------------------------------------------------------
    _case("submit dropped before task creation", ("submit", "drop", {}), expect=_ambiguous_before_create),
    _case("submit dropped after task creation", ("submit", "drop_after_create", {}),
          expect=_ambiguous_after_create),
    _case("poll dropped", ("poll", "drop", {})),
    _case("submit read timeout (task created)", ("submit", "slow", {"delay": SLOW}),
          limits={"read_timeout": READ_TIMEOUT}, expect=_ambiguous_after_create),
    _case("poll read timeout", ("poll", "slow", {"delay": SLOW}), limits={"read_timeout": READ_TIMEOUT}),
    # -- broken bodies --------------------------------------------------------------------------
    _case("submit malformed JSON (task created)", ("submit", "malformed_json", {}),
          expect=_ambiguous_after_create),
    _case("submit truncated body (task created)", ("submit", "truncated", {}),
          expect=_ambiguous_after_create),
    _case("submit 200 with HTML (task created)", ("submit", "html", {}), expect=_ambiguous_after_create),
    _case("poll malformed JSON", ("poll", "malformed_json", {})),
    _case("poll truncated body", ("poll", "truncated", {})),
    _case("poll 200 with HTML", ("poll", "html", {})),
    # -- what the provider says about the task ----------------------------------------------------
    _case("unknown status string", scenario={
        "unknown_status": "warming_up", "queue_fraction": 1.0, "duration": Duration.fixed(0.1)}),
    _case("task not found (poll 404)", ("poll", "status", {"status": 404}),
          expect=lambda p: Expect(TaskNotFoundError)),
    _case("task failed", scenario={"failure_rate": 1.0}, expect=lambda p: Expect(TaskFailedError)),
    _case("moderated task", scenario={"moderation_rate": 1.0}, expect=lambda p: Expect(ModerationError)),
    _case("prompt refused by moderation", scenario={"blocked_terms": ("forbidden",)},
          prompt="a forbidden lighthouse", expect=_moderated_at_submit),
    # -- downloads ----------------------------------------------------------------------------
    _case("result URL expired", ("download", "expired", {}), expect=lambda p: Expect(ResultExpiredError)),
    _case("oversized download (Content-Length)", ("download", "oversized", {}),
          scenario={"oversized_bytes": 1 << 20}, limits={"max_download_bytes": 64 << 10},
          expect=lambda p: Expect(DownloadError)),
    _case("oversized download (chunked)", ("download", "oversized_chunked", {}),
          scenario={"oversized_bytes": 1 << 20}, limits={"max_download_bytes": 64 << 10},
          expect=lambda p: Expect(DownloadError)),
    _case("download with wrong magic bytes", ("download", "wrong_magic", {}),
          expect=lambda p: Expect(DownloadError)),
    _case("download redirected to file://", ("download", "redirect_scheme", {}),
          expect=lambda p: Expect(DownloadError)),
    # -- a provider slower than the job deadline ----------------------------------------------
    _case("provider slower than the job deadline", scenario={"duration": Duration.fixed(30)},
          limits={"job_timeout": 0.15},
          expect=lambda p: Expect(TaskTimeoutError, remote_running=JOBS)),
)

#: Figures of every cell run in this process: (fault label, provider) -> figures.
FIGURES: dict[tuple[str, str], dict[str, Any]] = {}


def _secret_free(text: str, where: str) -> None:
    assert SENTINEL not in text, f"the API key leaked into {where}: {text[:300]!r}"
    # A clipped or partly masked key must not leak either.
    assert SENTINEL[6:22] not in text, f"part of the API key leaked into {where}"


def check_no_secret_in_logs(records: list[logging.LogRecord]) -> None:
    """The sentinel key is in no record: message, arguments or formatted exception."""
    formatter = logging.Formatter()
    for record in records:
        _secret_free(record.getMessage(), f"log record {record.name}")
        _secret_free(repr(record.args), f"log arguments of {record.name}")
        if record.exc_info:
            _secret_free(formatter.formatException(record.exc_info), "a logged traceback")


def check_no_secret_in_error(error: BaseException) -> None:
    _secret_free(str(error), f"str({type(error).__name__})")
    _secret_free(repr(error), f"repr({type(error).__name__})")
    _secret_free("".join(traceback.format_exception(error)), "a formatted traceback")
    for name, value in vars(error).items():
        _secret_free(repr(value), f"{type(error).__name__}.{name}")


def _pending_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if not task.done()}


def _is_image(path: Path) -> bool:
    head = path.read_bytes()[:12]
    return head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


@pytest.fixture(params=CASES, ids=[case.label for case in CASES])
def case(request: pytest.FixtureRequest) -> FaultCase:
    value: FaultCase = request.param
    return value


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_fault_matrix(
    provider: str,
    case: FaultCase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[tuple[float | None, float]] = []

    def recording_retry_delay(
        policy: RetryPolicy, attempt: int, rng: Any, *, retry_after: float | None
    ) -> float:
        delay = retry_delay(policy, attempt, rng, retry_after=retry_after)
        delays.append((retry_after, delay))
        return delay

    monkeypatch.setattr(submit_module, "retry_delay", recording_retry_delay)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="flux_async")
    expect = case.expect(provider)
    before = _pending_tasks()
    scenario = Scenario(seed=17, api_keys=(SENTINEL,), **case.scenario)
    out = tmp_path / "images"
    requests = [
        GenerationRequest(model=MODEL, prompt=f"{case.prompt} {i}", size="1:1") for i in range(JOBS)
    ]
    outcomes: list[Outcome] = []
    with anyio.fail_after(20):
        async with Emulator(scenario, shutdown_timeout=2.0) as emu:
            for endpoint, kind, fields in case.script:
                emu.fail_next(endpoint, kind, count=JOBS, provider=provider, **fields)
            session = Session(
                provider,
                api_key=SENTINEL,
                base_url=emu.base_url(provider),
                poll_policy=POLL,
                retry_policy=RETRY,
                limits=Limits(**case.limits),
            )
            async with session:
                transport = session._net()
                async for outcome in session.as_completed(requests, download_to=out):
                    outcomes.append(outcome)
                in_flight_after_batch = _acquired_connections(transport)
                connector = getattr(getattr(transport, "_session", None), "connector", None)
                stats_open = session.statistics()
            transport_after = transport.statistics()
        # Read after the server stopped: an answer still being delayed ("slow") is counted
        # only once it has been written.
        data = emu.stats()
        leftover = _pending_tasks() - before

    # -- exactly one outcome per input --------------------------------------------------------
    per_index = Counter(outcome.index for outcome in outcomes)
    assert sorted(per_index) == list(range(JOBS))
    assert set(per_index.values()) == {1}
    for outcome in outcomes:
        assert outcome.request is requests[outcome.index]
        if expect.error is None:
            assert outcome.ok, outcome.error
            assert outcome.result is not None
            assert len(outcome.files) == 1
            assert _is_image(outcome.files[0])
            assert outcome.files[0].name.startswith(f"{outcome.index}-")
        else:
            assert isinstance(outcome.error, expect.error), repr(outcome.error)
            assert not outcome.files
        if outcome.error is not None:
            check_no_secret_in_error(outcome.error)
            if isinstance(outcome.error, SubmissionUncertainError):
                assert outcome.task_id is None
                assert outcome.error.provider == provider
            elif expect.created:
                assert outcome.task_id is not None  # a task exists: its id is never dropped

    # -- the provider's side: no duplicate, nothing lost ---------------------------------------
    tasks = data["tasks"]
    created = {task["id"] for task in tasks}
    delivered = {outcome.task_id for outcome in outcomes if outcome.task_id is not None}
    uncertain = sum(isinstance(o.error, SubmissionUncertainError) for o in outcomes)
    posts = data["requests"].get("submit", 0)
    assert data["duplicate_submits"] == 0
    assert all(task["submits"] == 1 and task["duplicate_of"] is None for task in tasks)
    assert len(created) == data["tasks_created"] == expect.created
    assert delivered <= created
    unaccounted = len(created - delivered) - uncertain
    assert unaccounted <= 0, f"{unaccounted} paid task(s) neither delivered nor reported"
    assert posts == expect.posts, (posts, expect.posts)
    # Every POST created exactly one task or was refused before creating one.
    assert posts - len(created) == expect.posts - expect.created
    remote_running = sum(task["status"] in ("queued", "running") for task in tasks)
    assert remote_running == expect.remote_running

    # -- the fault really happened, and was handled as intended -----------------------------
    if case.script:
        assert data["pending_scripted_faults"] == 0
        assert sum(data["faults"].values()) == JOBS * len(case.script)
    for endpoint, _kind, fields in case.script:
        if fields.get("status") == 429:
            assert stats_open.rate_limited >= JOBS
        if endpoint == "poll" and fields.get("status") != 404:
            # Every spoilt poll was followed by another (aiohttp itself resends a GET once when
            # a reused keep-alive connection turns out closed, so count at the server).
            assert data["requests"]["poll"] >= 2 * JOBS
        if endpoint == "submit" and fields.get("status") == 429:
            told = [after for after, _ in delays]
            waited = [delay for _, delay in delays]
            # Never longer than the cap, whatever the provider asked for.
            assert max(waited) <= RETRY.max_retry_after
            if case.scenario.get("retry_after_format") == "absent":
                assert told == [None] * len(told)
            elif case.scenario.get("retry_after_format") == "http_date":
                assert all(a is not None and 0 <= a <= 2 for a in told)
            else:
                # Read in seconds and honoured up to the cap.
                assert set(told) == {float(fields["retry_after"])}
                assert set(waited) == {min(float(fields["retry_after"]), RETRY.max_retry_after)}
    if "unknown_status" in case.scenario:
        # Some poll saw the unknown status and the task still finished normally.
        assert any(task["polls"] >= 2 for task in tasks)

    # -- nothing left behind -----------------------------------------------------------------
    assert stats_open.outstanding == 0
    assert stats_open.abandoned_tasks == ()
    assert session.statistics().abandoned_tasks == ()
    assert in_flight_after_batch == 0
    assert transport_after.open_connections == 0
    # The pool itself was closed with the session (its sockets released, none kept alive).
    assert connector is not None
    assert connector.closed
    assert not leftover, leftover
    if out.exists():
        assert not list(out.glob(".part-*"))
        written = {p.name.split("-", 1)[0] for p in out.iterdir()}
        assert written == {str(o.index) for o in outcomes if o.ok}

    # -- the key stayed secret ---------------------------------------------------------------
    check_no_secret_in_logs(caplog.records)
    _secret_free(repr(session), "repr(Session)")
    _secret_free(repr(stats_open), "repr(statistics())")
    _secret_free(repr(outcomes), "repr(outcomes)")

    FIGURES[(case.label, provider)] = {
        "jobs": JOBS,
        "outcomes": len(outcomes),
        "lost": JOBS - len(per_index) + max(0, unaccounted),
        "duplicated": data["duplicate_submits"] + sum(n - 1 for n in per_index.values()),
        "posts_per_job": posts / JOBS,
        "tasks_created": len(created),
        "ok": sum(o.ok for o in outcomes),
        "error": None if expect.error is None else expect.error.__name__,
        "remote_running": remote_running,
    }


def _acquired_connections(transport: object) -> int:
    """Connections checked out of the pool (requests in flight), read from aiohttp's connector.

    The transport's ``statistics().open_connections`` counts idle keep-alive connections too
    while the session is open, and 0 once it is closed; this is the in-flight part alone.
    """
    client = getattr(transport, "_session", None)
    connector = getattr(client, "connector", None)
    acquired = getattr(connector, "_acquired", ())
    return len(acquired)


def test_matrix_covers_every_fault_kind_the_issue_lists() -> None:
    labels = " | ".join(case.label for case in CASES)
    for needle in (
        "Retry-After seconds", "Retry-After HTTP date", "no Retry-After", "Retry-After 1e9",
        "submit 500", "submit 502", "submit 503", "submit 504",
        "poll 500", "poll 502", "poll 503", "poll 504",
        "dropped before", "dropped after", "poll read timeout", "malformed JSON", "truncated",
        "HTML", "unknown status", "not found", "moderat", "expired", "oversized",
        "wrong magic", "file://", "deadline",
    ):
        assert needle in labels, needle


def test_library_caps_retry_after_by_default() -> None:
    # The matrix passes small caps to stay fast; the defaults must be finite caps too, or an
    # absurd Retry-After would stall a real batch for as long as the server says.
    assert 0 < RetryPolicy().max_retry_after <= 600
    assert 0 < PollPolicy().rate_limit_pause_cap <= 600
