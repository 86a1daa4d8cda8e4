"""The machinery behind ``Session.as_completed``: submitters, the input feeder and the outbox.

A coroutine exists only while a job is being validated, uploaded and submitted, or while its
images are downloaded; a job that is waiting is just an entry in the scheduler. The batch keeps
every accepted task on record until its outcome is delivered, so a consumer that leaves early
loses nothing paid for: what was not delivered is listed as abandoned.

It must not import aiohttp, the transport, the scheduler or the codecs: it drives the session
through the few calls a batch needs (submit, download, abandon) and reads its limits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ._job import Job
from ._parking import Parking
from ._submit import TaskShield, submitting_task
from ._values import new_outcome
from .errors import BudgetExceededError, OutageError, SubmissionUncertainError
from .models import GenerationRequest, Outcome, TaskRef

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Batch", "Outbox", "safe_name"]

logger = logging.getLogger("flux_async")


class Outbox:
    """Finished outcomes waiting for the consumer: a deque and a parked consumer.

    The consumer takes whatever is ready without a trip through the event loop (a memory object
    stream checkpoints on every receive), and parks only when nothing is. The batch appends to
    ``items`` and wakes ``consumer`` itself (see ``Batch._deliver``), unless ``consumer_gone``.
    """

    __slots__ = ("consumer", "consumer_gone", "finished", "items")

    def __init__(self) -> None:
        self.items: deque[Outcome] = deque()
        self.consumer = Parking()
        self.finished = False
        self.consumer_gone = False

    def finish(self) -> None:
        """No outcome will follow."""
        self.finished = True
        self.consumer.wake_one()

    async def get(self) -> Outcome | None:
        """The next outcome, or None once finished and drained."""
        while not self.items:
            if self.finished:
                return None
            await self.consumer.wait()
        return self.items.popleft()


class Batch:
    """The machinery behind one ``as_completed`` call, run in the session's task group.

    A coroutine exists only while a job is being validated, uploaded and submitted, or while
    its images are downloaded; a job that is waiting is just an entry in the scheduler.

    Submitters are a pool of at most ``max_concurrent_submits`` coroutines. Each takes the next
    input itself while fewer than ``max_outstanding`` jobs are undelivered (a plain iterable
    is read by whichever submitter is free; an async one is read by one feeder coroutine,
    because only one ``__anext__`` may run at a time), and parks when there is nothing to take.
    """

    def __init__(
        self,
        session: Session,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        download_to: Path | None,
        outbox: Outbox,
        on_submit: Callable[[int, TaskRef], None] | None = None,
    ) -> None:
        self.session = session
        self.on_submit = on_submit
        self.requests = requests
        self.download_to = download_to
        self.outbox = outbox
        self.free = session.limits.max_outstanding  # jobs that may start before one is delivered
        self.source: Iterator[GenerationRequest] | None = None
        self.next_index = 0
        self.pending = 0  # jobs taken from the input and not yet delivered
        self.input_done = False
        self.input_error: BaseException | None = None
        #: What stopped the input: the budget, or an outage (the breaker refused a submit).
        self.stop_error: BudgetExceededError | OutageError | None = None
        self.stopped = False
        self.all_done = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.tg: TaskGroup | None = None
        self.waiting: dict[str, Job] = {}
        #: Each watched task's input (or inputs, when they share an idempotency key).
        self.indices: dict[str, int | list[int]] = {}
        self._on_job_done = self._job_done  # one bound method for every job
        self.queue: deque[tuple[int, GenerationRequest]] = deque()  # read by the feeder
        self.submitters = 0
        #: The submitters' shields: their scopes are shielded from the batch's own, so the
        #: batch cancels each itself (see _cancel_submitters).
        self.shields: set[TaskShield] = set()
        self.cancelled = False  # the submitters were told to stop
        self.idle = Parking()  # submitters with nothing to take
        self.feeder = Parking()  # the feeder of an async input, waiting for a free slot

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                # Its own scope is the batch's: stop() cancels it (and the submitters, whose
                # scopes are shielded from it, through their shields).
                self.scope = tg.cancel_scope
                self.tg = tg
                try:
                    if isinstance(self.requests, AsyncIterable):
                        await self._feed(self.requests)
                    else:
                        try:
                            self.source = iter(self.requests)
                        except Exception as exc:
                            self._end_input(exc)
                        else:
                            self._start_submitter()
                    await self.all_done.wait()
                except BaseException:
                    # Cancelled (the consumer left, the session closes, a scope above it was
                    # cancelled) or a task of the batch failed: the submitters, whose scopes
                    # are shielded from this, are cancelled in turn.
                    self._cancel_submitters()
                    raise
        finally:
            self.tg = None
            self.outbox.finish()

    async def _feed(self, requests: AsyncIterable[GenerationRequest]) -> None:
        """Read an async input into the queue, a free slot at a time (an item is asked for
        only once there is room for it)."""
        iterator = aiter(requests)
        try:
            while True:
                while not self.free and not self.stopped and not self.input_done:
                    await self.feeder.wait()
                if self.stopped or self.input_done:  # input_done: the budget or an outage stopped it
                    break
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    break
                self.queue.append(self._take(request))
                if not self.idle.wake_one():
                    self._start_submitter()
        except Exception as exc:
            self._end_input(exc)
        else:
            self._end_input(None)

    def _take(self, request: GenerationRequest) -> tuple[int, GenerationRequest]:
        self.free -= 1
        self.pending += 1
        index = self.next_index
        self.next_index += 1
        return index, request

    def _next(self) -> tuple[int, GenerationRequest] | None:
        """The next input to submit, or None when there is none to take now."""
        if self.queue:
            return self.queue.popleft()
        source = self.source
        if source is None or self.input_done or not self.free:
            return None
        try:
            request = next(source)
        except StopIteration:
            self._end_input(None)
            return None
        except Exception as exc:
            self._end_input(exc)
            return None
        # (_take, without its call: every input of a plain iterable comes here)
        self.free -= 1
        self.pending += 1
        index = self.next_index
        self.next_index = index + 1
        return index, request

    def _end_input(self, error: BaseException | None) -> None:
        """The input is exhausted (or broke: its error is raised once every job is delivered)."""
        if self.input_done:
            return
        self.input_done = True
        self.input_error = error
        self.source = None
        self.idle.wake_all()
        if self.pending == 0:
            self.all_done.set()

    def _start_submitter(self) -> None:
        if self.tg is not None and self.submitters < self.session.limits.max_concurrent_submits:
            self.submitters += 1
            self.tg.start_soon(self._submitter)

    def release(self) -> None:
        """The consumer took an outcome: one more job may start."""
        self.free += 1
        if self.source is not None:
            self.idle.wake_one()  # a plain iterable: a submitter reads the next input itself
        else:
            self.feeder.wake_one()  # an async one: its feeder reads it

    def stop(self) -> None:
        """The consumer left: submit nothing more; keep a record of every accepted task."""
        if self.stopped:
            return
        self.stopped = True
        self.idle.wake_all()
        self.feeder.wake_all()
        if self.scope is not None:
            self.scope.cancel()
        self._cancel_submitters()
        if self.waiting:
            for job in self.waiting.values():
                self.session._jobs.abandon(job.ref)
            logger.warning(
                "batch left early with %d accepted task(s) not delivered: %s%s "
                "(listed in statistics().abandoned_tasks; resume them by ref)",
                len(self.waiting),
                ", ".join(list(self.waiting)[:20]),
                " ..." if len(self.waiting) > 20 else "",
            )

    def _cancel_submitters(self) -> None:
        """Cancel every submitter: at once, or as soon as its POST on the wire is done."""
        self.cancelled = True
        for shield in list(self.shields):
            shield.cancel()

    async def _submitter(self) -> None:
        try:
            # Its POSTs share one cancel scope, shielded from the batch's (which cancels it
            # through its shield). And it sends the polls that get a connection from one of
            # its POSTs (see PollScheduler.helping).
            with submitting_task() as shield, self.session._scheduler.helping():
                self.shields.add(shield)
                try:
                    if self.cancelled:  # started as the batch was cancelled
                        shield.cancel()
                    await self._submit_inputs(_Acceptor(self))
                finally:
                    self.shields.discard(shield)
        finally:
            self.submitters -= 1

    async def _submit_inputs(self, acceptor: _Acceptor) -> None:
        on_accept = acceptor.on_accept
        scheduler = self.session._scheduler
        orders = scheduler.orders
        while not self.stopped:
            if orders:
                # A poll took the connection this submitter's last POST let go: sent here,
                # without a wake-up of a worker for it.
                await scheduler.send_orders()
                continue
            item = self._next()
            if item is None:
                if self.input_done and not self.queue:
                    return
                await self.idle.wait()
                continue
            if self.free and not self.idle and not self.input_done:
                # More input may be ready and no submitter is free to take it: the pool
                # grows (up to its bound) while the input keeps every submitter busy.
                self._start_submitter()
            index, request = item
            if self.stop_error is not None:  # the batch stopped submitting
                self._deliver(Outcome(index=index, request=request, error=self.stop_error))
                continue
            acceptor.index = index
            try:
                await self.session._submit(request, on_accept=on_accept)
            except Exception as exc:
                if isinstance(exc, (BudgetExceededError, OutageError)) and self.stop_error is None:
                    # Nothing more is read or sent: what was read is delivered (with this
                    # error: it was not sent), then this is raised.
                    self.stop_error = exc
                    self._end_input(None)
                    self.feeder.wake_all()
                cost = exc.cost if isinstance(exc, SubmissionUncertainError) else None
                self._deliver(Outcome(index=index, request=request, error=exc, cost=cost))

    def _job_done(self, job: Job) -> None:
        held = self.indices.pop(job.ref.task_id, None)
        if isinstance(held, int):
            if self.stopped or self.download_to is not None:
                self.job_done(job, held)
            else:  # the common case, without the calls job_done makes for it
                self._deliver(_outcome(held, job))
        elif held is not None:
            for index in held:
                self.job_done(job, index)

    def job_done(self, job: Job, index: int) -> None:
        if self.stopped:
            if job.ref.task_id in self.waiting:
                self.session._jobs.abandon(job.ref)
            return
        if job._error is None and self.download_to is not None and self.tg is not None:
            self.tg.start_soon(self._download, index, job)
            return
        self._deliver(_outcome(index, job))

    async def _download(self, index: int, job: Job) -> None:
        assert job.request is not None
        assert self.download_to is not None
        result = job.state.result if job.state is not None else None
        assert result is not None
        files: list[Path] = []
        try:
            for k, image in enumerate(result.images):
                suffix = "" if len(result.images) == 1 else f"-{k}"
                target = self.download_to / f"{index}-{safe_name(job.task_id)}{suffix}.img"
                files.append(await self.session.download(image, target))
        except Exception as exc:
            self._deliver(Outcome(index=index, request=job.request, task_id=job.task_id, result=result, error=exc, files=tuple(files), cost=job.cost))
            return
        self._deliver(Outcome(index=index, request=job.request, task_id=job.task_id, result=result, files=tuple(files), cost=job.cost))

    def _deliver(self, outcome: Outcome) -> None:
        outbox = self.outbox
        if not outbox.consumer_gone:
            outbox.items.append(outcome)
            outbox.consumer.wake_one()
        else:  # nobody will ever take it
            job = self.waiting.get(outcome.task_id) if outcome.task_id is not None else None
            if job is not None:
                self.session._jobs.abandon(job.ref)
        self.pending -= 1
        if self.pending == 0 and self.input_done:
            self.all_done.set()


class _Acceptor:
    """A submitter's callback for the accepted task of the input it is submitting: made once
    per submitter, not per job (the session calls it synchronously within that submit)."""

    __slots__ = ("batch", "index", "on_accept")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.index = -1
        self.on_accept = self.accepted

    def accepted(self, job: Job) -> None:
        """Input ``index``'s task was accepted (or found under its key): synchronously, before
        any checkpoint."""
        batch, index = self.batch, self.index
        task_id = job.ref.task_id
        batch.waiting[task_id] = job
        if batch.stopped:
            # A POST that was already on the wire when the consumer left.
            batch.session._jobs.abandon(job.ref)
        # The job's inputs (one, or more sharing an idempotency key) and one listener for
        # them: no closure per job.
        indices = batch.indices
        held = indices.get(task_id)
        if held is None:
            indices[task_id] = index
            job._add_listener(batch._on_job_done)
        elif isinstance(held, int):
            indices[task_id] = [held, index]
        else:
            held.append(index)
        if batch.on_submit is not None:
            try:
                batch.on_submit(index, job.ref)
            except Exception:
                logger.exception("on_submit failed for input %d (task %s)", index, job.ref.task_id)


def _outcome(index: int, job: Job) -> Outcome:
    assert job.request is not None
    error, state = job._error, job._state
    result = state.result if state is not None and error is None else None
    # Every field is the session's own, already checked: the quick constructor will do.
    return new_outcome(index=index, request=job.request, task_id=job.ref.task_id, result=result, error=error, cost=job.cost)


def safe_name(task_id: str) -> str:
    """A task id as a file name: letters, digits and ``-_.`` kept, the rest ``_``, 120 at most."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]
