"""The batch engine's bookkeeping, driven by a scripted stand-in for the session.

What is settled (a result line) and what is left for ``--resume`` (a journal entry without one),
and the stop when the session pauses submission after an outage. The stand-in plays ``as_completed`` from a
script, so these tests need no server and no clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import pytest

from flux_async import (
    GenerationRequest,
    Ledger,
    OutageError,
    Outcome,
    TaskFailedError,
    TaskRef,
    TaskTimeoutError,
    TransportError,
)
from flux_async.cli._batch import BatchRunner
from flux_async.cli._batchentry import Entry
from flux_async.cli._batchstate import JournalHeader
from flux_async.cli._display import Counts
from flux_async.cli._journal import OutputDir, load_state
from flux_async.session import Limits

pytestmark = pytest.mark.anyio

Script = Callable[[int, GenerationRequest], tuple[str | None, BaseException]]


class ScriptedSession:
    """Answers every request with the (task id or None, error) the script gives for it, and
    writes what a session writes to the batch's ledger."""

    def __init__(self, script: Script, limits: Limits, ledger: Ledger) -> None:
        self.script = script
        self.limits = limits
        self.ledger = ledger
        self.pulled = 0

    async def wait_submits(self) -> None:
        return None

    async def as_completed(
        self,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        *,
        on_submit: Callable[[int, TaskRef], None] | None = None,
    ) -> AsyncIterator[Outcome]:
        index = -1
        async for request in _each(requests):
            index += 1
            self.pulled += 1
            task_id, error = self.script(index, request)
            if isinstance(error, OutageError):
                # What the session does: the request was not sent (no intent), its outcome
                # carries the error, and the error ends the iteration.
                yield Outcome(index=index, request=request, error=error)
                raise error
            key = request.idempotency_key
            assert key is not None  # every request of a batch has its key
            await self.ledger.intend(key, provider="toapis", model=request.model, digest="", at=1.0)
            if task_id is not None:
                ref = TaskRef(provider="toapis", task_id=task_id)
                await self.ledger.accept(key, ref)
                if on_submit is not None:
                    on_submit(index, ref)
            else:
                self.ledger.settle(key, "not_submitted")
            yield Outcome(index=index, request=request, task_id=task_id, error=error)


async def _each(requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]) -> AsyncIterator[GenerationRequest]:
    """The requests, read as the session reads them: one at a time, either kind of iterable."""
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


def entries(count: int) -> Callable[[], Iterator[Entry]]:
    def source() -> Iterator[Entry]:
        for i in range(count):
            yield Entry(i, i + 1, GenerationRequest(model="flux-kontext-pro", prompt=f"p{i}"))

    return source


def output(tmp_path: Path, count: int) -> OutputDir:
    header = JournalHeader(provider="toapis", input="x", fingerprint="f", requests=count)
    return OutputDir.create(tmp_path, header)


async def test_settled_failures_get_a_result_line_and_the_rest_stay_in_the_journal(tmp_path: Path) -> None:
    def script(index: int, request: GenerationRequest) -> tuple[str | None, BaseException]:
        if index % 3 == 0:
            return f"t{index}", TaskFailedError("the model failed", task_id=f"t{index}")
        if index % 3 == 1:
            return f"t{index}", TaskTimeoutError("still running", task_id=f"t{index}")
        return None, TransportError("could not connect")

    out = output(tmp_path, 9)
    counts = Counts(label="x", total=9)
    session = ScriptedSession(script, Limits(), out.ledger)
    runner = BatchRunner(session, out, counts, source=entries(9))  # type: ignore[arg-type]
    try:
        await runner.run()
    finally:
        out.close()

    state = load_state(tmp_path)
    assert sorted(i for i in range(9) if i in state.finished) == [0, 3, 6]  # task failed: settled
    assert sorted(state.accepted) == [1, 4, 7]  # timed out: re-attached by --resume
    assert [i for i in range(9) if state.needs_submit(i)] == [2, 5, 8]  # no task: submitted again
    assert (counts.failed, counts.unresolved) == (3, 6)
    assert runner.left_accepted == 3
    assert dict(counts.failures) == {"TaskFailedError": 3, "TaskTimeoutError": 3, "TransportError": 3}
    assert runner.fatal is None


async def test_an_outage_stops_the_batch_and_leaves_the_rest_for_resume(tmp_path: Path) -> None:
    outage = OutageError("paused", provider="toapis", streak=10, last_error="TransportError: down", retry_in=30.0)

    def script(index: int, request: GenerationRequest) -> tuple[str | None, BaseException]:
        if index < 3:
            return f"t{index}", TaskFailedError("no", task_id=f"t{index}")
        if index < 13:
            return None, TransportError("network is unreachable")
        return None, outage

    out = output(tmp_path, 1000)
    counts = Counts(label="x", total=1000)
    session = ScriptedSession(script, Limits(max_concurrent_submits=2), out.ledger)
    runner = BatchRunner(session, out, counts, source=entries(1000))  # type: ignore[arg-type]
    try:
        await runner.run()
    finally:
        out.close()

    assert runner.outage_error is outage
    assert runner.fatal is None
    assert session.pulled == 14  # the rest of the input was never read
    state = load_state(tmp_path)
    assert sorted(i for i in range(1000) if i in state.finished) == [0, 1, 2]
    # Failed without a task, or never sent: no result line, submitted again by --resume.
    assert all(state.needs_submit(i) for i in range(3, 1000))
    assert (counts.failed, counts.unresolved) == (3, 10)
