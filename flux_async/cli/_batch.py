"""The engine of ``flux-async batch`` (and of the demo): submit, wait, download, record.

A :class:`BatchRunner` drives one batch on one open :class:`~flux_async.Session` whose ledger is
the batch's journal, on the public API only:

- requests go through ``session.as_completed`` (lazy input, bounded window, one shared poll
  scheduler), each under its idempotency key ``<run>-<index>``: the session writes the intent
  before the POST and the acceptance before anything waits on the task, so a crash at any
  instant leaves nothing that a rerun would pay for twice;
- tasks accepted by an earlier run and not finished are re-attached with ``session.resume``
  by a bounded pool of waiters (never more than the batch's window at a time);
- each finished job's images are downloaded as ``<index>-<task_id>.<ext>`` and its line is
  appended to ``results.jsonl``.

A request whose POST may have created a task that nobody recorded (the process died mid-POST,
on a provider with no lookup) is *in doubt*: the session refuses to send it again, and it is
listed for the user, unless the batch runs with ``--resubmit-in-doubt``.

:meth:`BatchRunner.request_stop` (the first Ctrl-C, SIGTERM, SIGHUP) stops submitting at once,
waits for any POST on the wire to be answered, and lets every accepted task finish and be
recorded; cancelling the runner (the second Ctrl-C) leaves the ledger to a later ``--resume``.
Imports the package's public names, its journal module and the display.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from ._api import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConfigurationError,
    CoordinatorError,
    Cost,
    GeneratedImage,
    GenerationRequest,
    InsufficientCreditsError,
    LedgerError,
    ModerationError,
    OutageError,
    Outcome,
    ResultExpiredError,
    Session,
    SubmissionUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskRef,
    ValidationError,
)
from ._batchentry import Entry, LineError
from ._batchstate import BatchState
from ._display import Counts
from ._journal import OutputDir, image_name
from ._shared import SharedLines

__all__ = ["BatchRunner", "error_record"]

#: Errors that stop submitting (CoordinatorError: a shared batch's Redis failed while lines
#: were being claimed; what was accepted is still finished and recorded here).
_FATAL = (AuthenticationError, InsufficientCreditsError, LedgerError, CoordinatorError)
_KEPT_UNRESOLVED = 100

#: Errors that settle a job for good once its task exists: the provider ended the task.
_FINAL_WITH_TASK = (TaskFailedError, ModerationError, TaskNotFoundError, ResultExpiredError)
#: Errors that settle a request no task was created for: sending it again cannot help. (An
#: uncertain submission is not settled: it stays in doubt in the ledger, see the module.)
_FINAL_WITHOUT_TASK = (BadRequestError, ValidationError, ConfigurationError)


def error_record(error: BaseException) -> dict[str, str]:
    """How an error is written to ``results.jsonl``: its kind (class name) and message."""
    return {"kind": type(error).__name__, "message": str(error) or type(error).__name__}


def is_final(error: BaseException, *, with_task: bool) -> bool:
    """Whether a failed job is settled (a result line) or left for ``--resume``.

    A job is settled when its task ended at the provider (failed, moderated, unknown), or when
    no task exists and resending could not help. Anything else (the network, the key, a timeout
    while the task may still run, a download that did not complete, a POST in doubt) leaves an
    accepted task in the ledger to be re-attached, a request in doubt to be reported again, and
    a request that created no task to be submitted again.
    """
    return isinstance(error, _FINAL_WITH_TASK if with_task else _FINAL_WITHOUT_TASK)


class BatchRunner:
    """One batch on one session: new submissions, re-attached tasks, downloads and records.

    ``source`` returns a fresh iterator over the batch's entries each time it is called (the
    input is read as it is consumed). ``state`` is what an earlier run left (``--resume``).
    ``on_change`` is called after every counter change (to redraw the progress display).
    """

    def __init__(
        self,
        session: Session,
        out: OutputDir,
        counts: Counts,
        *,
        source: Callable[[], Iterable[Entry | LineError]],
        state: BatchState | None = None,
        on_change: Callable[[Counts], None] = lambda _counts: None,
        shared: SharedLines | None = None,
    ) -> None:
        self.session = session
        self.out = out
        self.counts = counts
        self.source = source
        self.state = state
        self.on_change = on_change
        #: The batch's lines are shared with other processes (``--redis``): claimed as read.
        self.shared = shared
        self.fatal: BaseException | None = None
        #: Set when the budget (--max-spend) stopped the batch: the rest was not sent.
        self.budget_error: BudgetExceededError | None = None
        #: Set when an outage stopped the batch (submits kept failing): the rest was not sent.
        self.outage_error: OutageError | None = None
        self._costs: dict[int, Cost] = {}  # what finished jobs cost, until their result line
        #: Why result lines could not be written (a full disk): submitting was stopped.
        self.results_error: OSError | None = None
        #: The first requests whose POST may have created a task nobody recorded, not sent
        #: again: (index, line, when an earlier run sent it, or None, the error);
        #: ``counts.in_doubt`` counts them all.
        self.in_doubt: list[tuple[int, int, float | None, SubmissionUncertainError]] = []
        #: The first jobs of this run that failed without being settled (index, line, task_id,
        #: error); ``counts.unresolved`` counts them all.
        self.unresolved: list[tuple[int, int, str | None, BaseException]] = []
        self._unresolved_tasks = 0
        limits = session.limits
        self._window_size = limits.max_outstanding
        # Accepted (journaled) tasks without a result line yet: index -> (line, ref).
        self._in_flight: dict[int, tuple[int, TaskRef]] = {}
        # In-flight indices some coroutine is already finishing (downloading or re-attached).
        self._handled: set[int] = set()
        # as_completed's own index -> (input index, line), for the requests it holds.
        self._window: dict[int, tuple[int, int]] = {}
        self._reattach: deque[tuple[int, int, TaskRef]] = deque()
        self._reattach_workers = 0
        self._download_slots = anyio.Semaphore(2 * limits.max_concurrent_downloads)
        self._stopping = False
        self._submitting_done = False
        self._consume_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    # -- control -------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once :meth:`request_stop` was called (or a fatal error stopped the batch)."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """Accepted tasks still being waited on (not settled, not given up for this run)."""
        return len(self._in_flight)

    @property
    def unresolved_tasks(self) -> int:
        """Jobs of this run that failed without being settled while their task exists."""
        return self._unresolved_tasks

    @property
    def left_accepted(self) -> int:
        """Accepted tasks without a result line: what ``--resume`` will re-attach."""
        return len(self._in_flight) + self._unresolved_tasks

    def request_stop(self) -> None:
        """Submit nothing more; every task already accepted is still waited for and recorded."""
        if self._stopping:
            return
        self._stopping = True
        self.counts.stopping = True
        self.on_change(self.counts)
        if self._consume_scope is not None:
            self._consume_scope.cancel()

    async def run(self) -> None:
        """Run the batch to its end (or to the end of what was accepted, once stopped)."""
        try:
            await self._run()
        finally:
            if self.shared is not None:
                # Lines still held have no result: the other processes take them now.
                await self.shared.give_back()

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.state is not None and self.state.accepted:
                for index, line in self._lines_of(self.state.accepted):
                    ref = self.state.accepted[index]
                    self._in_flight[index] = (line, ref)
                    self.counts.reattached += 1
                    self._queue_reattach(index, line, ref)
                self.on_change(self.counts)
            if not self._stopping:
                with anyio.CancelScope() as scope:
                    self._consume_scope = scope
                    await self._submit_new()
                self._consume_scope = None
            # A POST that was on the wire when the stream stopped is answered and recorded
            # (its task then waits in _in_flight) before the batch winds down.
            await self.session.wait_submits()
            self._submitting_done = True
            # Tasks accepted but whose outcome the stream did not deliver (a stop, or a fatal
            # error): finish them by their refs. Later acceptances (a POST that was on the
            # wire) are queued by _on_submit itself.
            for index, (line, ref) in list(self._in_flight.items()):
                if index not in self._handled:
                    self._queue_reattach(index, line, ref)
        self._tg = None

    # -- new submissions -----------------------------------------------------------------------

    def _lines_of(self, indices: Mapping[int, object]) -> Iterator[tuple[int, int]]:
        """(index, line) of each of ``indices``, in input order: one pass over the input."""
        for item in self.source():
            if item.index in indices:
                yield item.index, item.line

    async def _items(self) -> AsyncIterator[Entry | LineError]:
        """The input's lines: all of them, or those this process claims of a shared batch."""
        if self.shared is None:
            for item in self.source():
                yield item
            return
        async with aclosing(self.shared.lines(self.source, stopping=lambda: self._stopping)) as lines:
            async for item in lines:
                yield item

    async def _requests(self) -> AsyncIterator[GenerationRequest]:
        """The requests without a result or an accepted task, in input order, each under its
        idempotency key; records unreadable lines as failures."""
        position = 0
        state = self.state
        key = self.out.header.key
        async for item in self._items():
            if state is not None and not state.needs_submit(item.index):
                continue
            if self._stopping:
                return
            if isinstance(item, LineError):
                # The file changed between the checking pass and this one.
                error = ValidationError(item.field or "line", None, "a valid request", reason=item.message)
                await self._record_failure(item.index, item.line, None, error, with_task=False)
                continue
            self._window[position] = (item.index, item.line)
            position += 1
            attempt = 0 if state is None else state.attempt(item.index)
            yield attrs.evolve(item.request, idempotency_key=key(item.index, attempt))

    def _on_submit(self, position: int, ref: TaskRef) -> None:
        """The provider accepted a task (the session has recorded it in the ledger)."""
        index, line = self._window[position]
        if self.shared is not None:
            self.shared.sent(index)
        self._in_flight[index] = (line, ref)
        if self.state is not None and index in self.state.in_doubt:
            self.counts.reattached += 1  # an earlier run's POST, found by its key
        else:
            self.counts.submitted += 1
        if self._submitting_done and self._tg is not None:
            self._queue_reattach(index, line, ref)
        self.on_change(self.counts)

    async def _submit_new(self) -> None:
        # Close the generator explicitly so that leaving early stops its batch at once, not
        # whenever it is collected.
        stream = self.session.as_completed(self._requests(), on_submit=self._on_submit)
        try:
            async with aclosing(stream) as outcomes:
                async for outcome in outcomes:
                    index, line = self._window.pop(outcome.index)
                    if self.shared is not None:
                        self.shared.sent(index)
                    if isinstance(outcome.error, BudgetExceededError):
                        # Never sent: left for a --resume with a larger budget.
                        self.budget_error = self.budget_error or outcome.error
                        continue
                    if isinstance(outcome.error, OutageError):
                        # Never sent (the session paused submission): left for --resume.
                        self.outage_error = self.outage_error or outcome.error
                        continue
                    if outcome.task_id is not None and outcome.cost is not None:
                        self._note_cost(index, outcome.cost)
                    if outcome.ok:
                        # A stop may cancel this wait: the index then stays unhandled and is
                        # re-attached by its ref below.
                        await self._download_slots.acquire()
                        self._handled.add(index)
                        self._task_group().start_soon(self._download_outcome, index, line, outcome)
                    else:
                        assert outcome.error is not None
                        with_task = outcome.task_id is not None
                        await self._record_failure(index, line, outcome.task_id, outcome.error, with_task=with_task)
        except _FATAL as exc:
            self.fatal = exc
            self.request_stop()
        except BudgetExceededError as exc:
            self.budget_error = exc
            self.request_stop()
        except OutageError as exc:
            # Every accepted job was delivered before this; what was not sent is left for
            # --resume (no result line).
            self.outage_error = exc
            self.request_stop()

    def _note_cost(self, index: int, cost: Cost) -> None:
        """A job's task ended: what it cost goes into the tally and, later, its result line."""
        self._costs[index] = cost
        if cost.usd is not None:
            self.counts.spent_usd += cost.usd
        else:
            self.counts.unknown_cost += 1

    # -- finishing jobs ------------------------------------------------------------------------

    def _task_group(self) -> TaskGroup:
        assert self._tg is not None
        return self._tg

    def _queue_reattach(self, index: int, line: int, ref: TaskRef) -> None:
        self._handled.add(index)
        self._reattach.append((index, line, ref))
        if self._reattach_workers < self._window_size:
            self._reattach_workers += 1
            self._task_group().start_soon(self._reattach_worker)

    async def _reattach_worker(self) -> None:
        try:
            while self._reattach:
                index, line, ref = self._reattach.popleft()
                job = self.session.resume(ref)
                await job.wait()
                self._note_cost(index, job.cost)
                if job.error is not None:
                    await self._record_failure(index, line, ref.task_id, job.error, with_task=True)
                    continue
                result = await job.result()
                async with self._download_slots:
                    await self._download(index, line, ref.task_id, result.images)
        finally:
            self._reattach_workers -= 1

    async def _download_outcome(self, index: int, line: int, outcome: Outcome) -> None:
        try:
            assert outcome.result is not None
            assert outcome.task_id is not None
            await self._download(index, line, outcome.task_id, outcome.result.images)
        finally:
            self._download_slots.release()

    async def _download(
        self, index: int, line: int, task_id: str, images: tuple[GeneratedImage, ...]
    ) -> None:
        files: list[Path] = []
        fresh = False
        while True:
            try:
                for k, image in enumerate(images[len(files) :], start=len(files)):
                    # The transport replaces the placeholder suffix with the image's real type.
                    target = self.out.path / image_name(index, task_id, "img", k=k, count=len(images))
                    files.append(await self.session.download(image, target))
                break
            except ResultExpiredError as exc:
                # Asked once more for the task: a provider may hand out a fresh URL. If not, the
                # image is gone for good: settled (a result line), so --resume stops trying.
                renewed = None if fresh else await self._fresh_images(index, len(images))
                if renewed is None:
                    await self._record_failure(index, line, task_id, exc, with_task=True, files=files)
                    return
                images, fresh = renewed, True
            except Exception as exc:
                await self._record_failure(index, line, task_id, exc, with_task=True, files=files)
                return
        if not await self._record(index, line, task_id=task_id, status="succeeded", files=files):
            return
        self._in_flight.pop(index, None)
        self._handled.discard(index)
        self.counts.succeeded += 1
        self.counts.finished_with_task += 1
        self.on_change(self.counts)

    async def _fresh_images(self, index: int, count: int) -> tuple[GeneratedImage, ...] | None:
        """The task's images as a new status check gives them (None when it gives none)."""
        held = self._in_flight.get(index)
        if held is None:
            return None
        try:
            state = await self.session.get_task(held[1])
        except Exception:
            return None
        result = state.result
        return result.images if result is not None and len(result.images) == count else None

    async def _record_failure(
        self,
        index: int,
        line: int,
        task_id: str | None,
        error: BaseException,
        *,
        with_task: bool,
        files: Iterable[Path] = (),
    ) -> None:
        if is_final(error, with_task=with_task):
            if not await self._record(
                index, line, task_id=task_id, status="failed", files=tuple(files), error=error_record(error)
            ):
                return
            self._in_flight.pop(index, None)
            self._handled.discard(index)
            self.counts.failed += 1
        else:
            # Not settled: no result line, so --resume re-attaches the task (or resubmits a
            # request that created none, or reports one in doubt again).
            if self.shared is not None:
                await self.shared.drop(index)  # the shared batch's next run, likewise
            self._in_flight.pop(index, None)
            self._handled.discard(index)
            if isinstance(error, SubmissionUncertainError):
                if len(self.in_doubt) < _KEPT_UNRESOLVED:
                    sent = None if self.state is None else self.state.in_doubt.get(index)
                    self.in_doubt.append((index, line, sent, error))
                self.counts.in_doubt += 1
                self.on_change(self.counts)
                return  # not a failure: nobody knows yet
            if len(self.unresolved) < _KEPT_UNRESOLVED:
                self.unresolved.append((index, line, task_id, error))
            if task_id is not None:
                self._unresolved_tasks += 1
            self.counts.unresolved += 1
        self.counts.failures[type(error).__name__] += 1
        if with_task:
            self.counts.finished_with_task += 1
        self.on_change(self.counts)

    async def _record(self, index: int, line: int, **fields: Any) -> bool:
        """Append a result line; on failure (a full disk) stop submitting and leave the job to
        ``--resume`` (its task is in the ledger). False when it could not be written, or when
        another process of a shared batch recorded the line first."""
        attempt = 0 if self.state is None else self.state.attempt(index)
        cost = self._costs.pop(index, None)
        if cost is not None:
            fields["cost"] = cost
        if self.shared is not None:
            record = self.out.result_record(index, line, attempt=attempt, **fields)
            if not await self.shared.finish(index, record, succeeded=fields["status"] == "succeeded"):
                self._in_flight.pop(index, None)
                self._handled.discard(index)
                return False
        try:
            self.out.record_result(index, line, attempt=attempt, **fields)
        except OSError as exc:
            if self.results_error is None:
                self.results_error = exc
            self.request_stop()
            self._handled.discard(index)
            return False
        return True
