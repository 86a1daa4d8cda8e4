"""The session's jobs: how a checked request becomes a watched :class:`~flux_async.Job`, how a
known task is attached instead of paid for again, and what happens when a job ends.

:class:`Jobs` holds what the facade delegates: the submit slots and the active-task limiter
around the money path's POST (``_submit``), the table of watched jobs (one per task), the list
of abandoned tasks (accepted, nobody waiting: never forgotten), and the settlement of a job when
it ends: its cost (the provider's reported figure, else its reservation) on the job and its
result, and in the ledger and the totals through the session's spend. It must not import
aiohttp, the transport or the codecs (it reaches them through the money path and the uploads)
nor the session (which owns it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from ._active import ActiveLimiter
from ._config import Limits
from ._context import Context
from ._fleet import Fleet
from ._job import Job
from ._parking import Slots
from ._spend import Spend
from ._submit import Submitter, request_digest
from ._uploads import Uploads
from .errors import (
    ConfigurationError,
    ModerationError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    ValidationError,
)
from .ledger import Ledger
from .models import Cost, GenerationRequest, TaskRef
from .scheduler import PollScheduler

__all__ = ["Jobs", "coerce_ref"]

_log = logging.getLogger("flux_async")

#: Webhook events kept for tasks not watched yet (the oldest are forgotten first).
_EARLY_EVENTS = 1024

#: Errors that end a task for good at the provider: its ledger entry is settled.
_ENDED_AT_THE_PROVIDER = (TaskFailedError, ModerationError, TaskNotFoundError)


class CallerGoneError(Exception):
    """The caller of ``Session.submit`` left before its request was sent."""


class Jobs:
    """Submitting, attaching, watching and settling the jobs of one session."""

    def __init__(
        self,
        ctx: Context,
        scheduler: PollScheduler,
        limits: Limits,
        ledger: Ledger,
        submitter: Submitter,
        uploads: Uploads,
        limiter: ActiveLimiter | None,
        spend: Spend,
    ) -> None:
        self._ctx = ctx
        self._spend = spend
        self._counts = ctx.counts
        self._scheduler = scheduler
        self._job_timeout = limits.job_timeout
        self._ledger = ledger
        self._submitter = submitter
        self._uploads = uploads
        self.limiter = limiter
        self._slots = Slots(limits.max_concurrent_submits)
        self.watched: dict[str, Job] = {}  # task id -> its job, while it is watched
        self.abandoned: dict[str, TaskRef] = {}
        #: A webhook was asked for every task: the scheduler polls them sparsely, as a net.
        self.push = False
        #: The coordinator shared with other processes (``Session(coordinator=...)``), if any.
        self.fleet: Fleet | None = None
        # Webhook events for tasks not watched yet (a completion pushed before the submit's
        # answer was read): task id -> event id, replayed as a wake once the task is watched.
        self._early: OrderedDict[str, str | None] = OrderedDict()

    # -- submitting ----------------------------------------------------------------------------

    async def submit_for(
        self, request: GenerationRequest, checked: GenerationRequest, handover: asyncio.Future[Job]
    ) -> None:
        """``Session.submit``'s work, run in the session's own task; ``handover`` is done early
        only when the caller left (cancelled)."""
        try:
            job = await self.submit(request, checked, on_accept=None, gone=handover.done)
        except CallerGoneError:
            return
        except Exception as exc:
            if not handover.done():
                handover.set_exception(exc)
            return
        except BaseException:
            if not handover.done():  # the session is closing: nothing was sent
                handover.set_exception(RuntimeError("the session closed before the job was submitted"))
            raise
        if handover.done():
            self.abandon(job.ref)  # the caller left while the POST was on the wire
        else:
            handover.set_result(job)

    def submit(
        self,
        request: GenerationRequest,
        checked: GenerationRequest,
        *,
        on_accept: Callable[[Job], None] | None,
        gone: Callable[[], bool] | None = None,
    ) -> Coroutine[Any, Any, Job]:
        """Submit ``checked`` (``request`` as the catalog normalised it) under a slot and the
        active-task caps, or attach the task its idempotency key already has: the coroutine
        that does it (a plain function, so that a submit's await goes through one coroutine
        less)."""
        key = checked.idempotency_key
        if key is None:
            # 128 random bits in hex, like uuid4().hex, without building a UUID object.
            return self._submit_new(request, checked, os.urandom(16).hex(), "", on_accept, gone)
        fleet = self.fleet
        if fleet is not None:
            return self._submit_claimed(fleet, request, checked, key, on_accept, gone)
        return self._submit_keyed(request, checked, key, on_accept, gone)

    async def _submit_keyed(
        self,
        request: GenerationRequest,
        checked: GenerationRequest,
        key: str,
        on_accept: Callable[[Job], None] | None,
        gone: Callable[[], bool] | None,
    ) -> Job:
        """A caller's key: the task the ledger already holds under it, else a new submit."""
        digest = request_digest(checked)
        known = await self._submitter.existing(checked, digest)
        if known is not None:
            self._counts["deduplicated"] += 1
            return self.attach(known, request, key, on_accept)
        return await self._submit_new(request, checked, key, digest, on_accept, gone)

    async def _submit_claimed(
        self,
        fleet: Fleet,
        request: GenerationRequest,
        checked: GenerationRequest,
        key: str,
        on_accept: Callable[[Job], None] | None,
        gone: Callable[[], bool] | None,
    ) -> Job:
        """A caller's key under a coordinator: claimed account-wide first, so that a second
        process with the key waits for this one's task instead of paying for another."""
        found = await fleet.claim(key)
        if found is not None:
            self._counts["deduplicated"] += 1
            return self.attach(found, request, key, on_accept)
        try:
            job = await self._submit_keyed(request, checked, key, on_accept, gone)
        except BaseException:
            await fleet.drop(key)  # nothing of ours under it; a POST in doubt has its intent
            raise
        await fleet.publish(key, job.ref)
        return job

    async def _submit_new(
        self,
        request: GenerationRequest,
        checked: GenerationRequest,
        key: str,
        digest: str,
        on_accept: Callable[[Job], None] | None,
        gone: Callable[[], bool] | None,
    ) -> Job:
        fleet = self.fleet
        slots = self._slots
        if slots.free:  # no trip through the event loop (nor a call) when a slot is free
            slots.free -= 1
        else:
            await slots.acquire()
        try:
            if checked.images:
                checked = await self._uploads.prepare_images(checked)
            model = checked.model
            limiter = self.limiter
            if limiter is not None:
                await limiter.acquire(model)
            # The account-wide slot, under a coordinator for a provider with caps.
            shared = fleet if fleet is not None and fleet.capped else None
            try:
                if shared is not None:
                    await shared.acquire(model, key)
                if gone is not None and gone():
                    raise CallerGoneError  # nothing sent, nothing written
                ref, fresh, cost = await self._submitter.submit(checked, key, digest)
            except BaseException:
                if limiter is not None:
                    limiter.release(model)
                if shared is not None:
                    await shared.release_slot(model, key)
                raise
            if not fresh:
                if limiter is not None:
                    limiter.release(model)
                if shared is not None:
                    await shared.release_slot(model, key)
                self._counts["deduplicated"] += 1
                return self.attach(ref, request, key, on_accept)
            # No checkpoint between acceptance and registration: a cancelled caller cannot
            # lose a task that was paid for.
            job = Job(ref, request, self, key, cost)
            self._counts["submitted"] += 1
            if on_accept is not None:
                on_accept(job)
            self.watch(job)
            if _log.isEnabledFor(logging.INFO):
                _log.info("task %s accepted (%s, key %s)", ref.task_id, model, key)
            return job
        finally:
            slots.release()

    # -- tasks that exist already --------------------------------------------------------------

    def attach(
        self,
        ref: TaskRef,
        request: GenerationRequest | None,
        key: str | None,
        on_accept: Callable[[Job], None] | None = None,
    ) -> Job:
        """The job of an existing task: the one watched here, or a newly attached one (counted
        against the active-task caps even over them: it is running already). Never submits."""
        job = self.watched.get(ref.task_id)
        if job is None:
            job = Job(ref, request, self, key, self._spend.cost_of(key, ref.model))
            if self.limiter is not None:
                self.limiter.force(ref.model or "")
            self.watch(job)
            if self.fleet is not None:
                self.fleet.attached(ref, key)
        if on_accept is not None:
            on_accept(job)
        return job

    async def recover(self) -> list[Job]:
        """See ``Session.recover``."""
        provider = self._ctx.provider
        jobs: list[Job] = []
        for entry in self._ledger.unsettled():
            if entry.provider != provider or self._submitter.in_flight(entry.key):
                continue
            ref = entry.ref
            if ref is None:
                try:
                    ref = await self._submitter.recover_intent(entry)
                except SubmissionUncertainError:
                    continue  # still in doubt: listed in statistics()
            if ref is not None:
                jobs.append(self.attach(ref, None, entry.key))
        return jobs

    # -- watching and ending -------------------------------------------------------------------

    def watch(self, job: Job) -> None:
        """Hand ``job``'s task to the scheduler, with the job's deadline."""
        self.watched[job.ref.task_id] = job
        deadline = None
        if self._job_timeout is not None:
            deadline = self._ctx.now() + self._job_timeout
        self._scheduler.watch(job.ref, job._on_done, deadline=deadline, push=self.push)
        if self._early:
            task_id = job.ref.task_id
            if task_id in self._early and self._scheduler.wake(task_id, event_id=self._early.pop(task_id)):
                self._counts["webhook_wakes"] += 1

    def notify(self, task_id: str, event_id: str | None) -> bool:
        """A webhook says ``task_id`` changed: poll it now (True when that moved its poll).
        An event for a task not watched yet is kept (a bounded number) until it is."""
        if task_id in self.watched:
            moved = self._scheduler.wake(task_id, event_id=event_id)
            if moved:
                self._counts["webhook_wakes"] += 1
            return moved
        early = self._early
        early[task_id] = event_id
        early.move_to_end(task_id)
        while len(early) > _EARLY_EVENTS:
            early.popitem(last=False)
        return False

    def finished(self, job: Job) -> None:
        """Called once by a job when it ends: free its cap, count it, settle its cost, settle it
        in the ledger."""
        self.watched.pop(job.ref.task_id, None)
        if self.limiter is not None:
            self.limiter.release(job.ref.model or "")
        error = job._error
        self._counts["succeeded" if error is None else "failed"] += 1
        if _log.isEnabledFor(logging.INFO):
            how = "succeeded" if error is None else f"ended: {type(error).__name__}: {error}"
            _log.info("task %s %s", job.ref.task_id, how)
        state = job._state
        if state is not None:
            reported = state.cost_usd
            cost = job.cost if reported is None else Cost(reported, "reported")
            job.cost = cost
            result = state.result
            if error is None and result is not None and cost is not result.cost:
                # The codec built this result for this job a moment ago and nobody has seen it
                # yet (the scheduler hands a terminal state to its job alone): its cost is
                # filled in here rather than by copying the state and the result (two
                # attrs.evolve calls, a few percent of a job's CPU).
                object.__setattr__(result, "cost", cost)
        settled = error is None or isinstance(error, _ENDED_AT_THE_PROVIDER)
        if job.key is not None:
            if error is None:
                self._spend.settle(job.key, "succeeded", cost=job.cost)
            elif settled:
                self._spend.settle(job.key, "failed", error=type(error).__name__, cost=job.cost)
            # Anything else (a timeout, polls that kept failing) may leave the task running:
            # it stays accepted (and its reservation held), for recovery to re-attach.
        if self.fleet is not None:
            self.fleet.finished(job.ref.task_id, settled=settled)

    def abandon(self, ref: TaskRef) -> None:
        """Keep an accepted task nobody waits for on the list (``abandoned_tasks``)."""
        self.abandoned[ref.task_id] = ref

    def abandon_running(self, left: list[TaskRef]) -> None:
        """The session closed with these tasks still running: list them, and say so."""
        if not left:
            return
        for ref in left:
            self.abandon(ref)
        shown = ", ".join(ref.task_id for ref in left[:20])
        more = f" and {len(left) - 20} more" if len(left) > 20 else ""
        _log.warning(
            "session closed with %d task(s) still running at %s: %s%s "
            "(resume them with Session.resume; they are listed in statistics().abandoned_tasks)",
            len(left), self._ctx.provider, shown, more,
        )


def coerce_ref(provider: str, ref: TaskRef | str) -> TaskRef:
    """The ref a caller means: a ``TaskRef`` of ``provider``, a task id (aggregators), or a BFL
    ``polling_url``. Raises ConfigurationError for another provider's task or a BFL id without
    its polling URL, ValidationError for an id that is not one (it would go into a URL)."""
    if isinstance(ref, TaskRef):
        if ref.provider != provider:
            raise ConfigurationError(f"task {ref.task_id} belongs to {ref.provider!r}, not {provider!r}")
        return ref
    if not isinstance(ref, str):
        raise ValidationError("task_id", ref, "a TaskRef or a task id (str)", reason=f"not a task reference but {type(ref).__name__}")
    if provider == "bfl":
        if ref.startswith(("http://", "https://")) and "id=" in ref:
            task_id = ref.split("id=", 1)[1].split("&", 1)[0]
            return TaskRef(provider="bfl", task_id=task_id, polling_url=ref)
        raise ConfigurationError(
            "a BFL task needs its polling_url: pass the TaskRef (job.ref) or the polling_url itself"
        )
    return TaskRef(provider=provider, task_id=ref)
