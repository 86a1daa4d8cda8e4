"""The money path: how a checked request becomes exactly one paid task, or a clear error.

It owns the submit POST and every decision around it: the POST is shielded from cancellation
once it is on the wire; it is retried only when no task can exist (``retry.classify_submit_failure``
says which failures those are, within the retry policy's deadline and the session's retry
budget); an ambiguous failure is resolved on toapis by looking the task up under the
``client_business_id`` sent with it, and surfaces everywhere else as
:class:`~flux_async.errors.SubmissionUncertainError`. Never resubmit blindly. Every submit is
written ahead to the session's :class:`~flux_async.ledger.Ledger` (intent before the POST,
acceptance before anything waits on the task), under an idempotency key that is also what
toapis gets as ``client_business_id``; a key already known returns its task instead of paying
again. Before the intent, the job's cost is reserved with the session's
:class:`~flux_async._spend.Spend` (which refuses a submit that could pass the budget, before
anything is written or sent); the reservation is recorded with the intent, and every settlement
goes through the spend. (The active-task caps that keep the client from causing a cap 429 are
``_active``'s.)

It must not import the session, the scheduler, the batch machinery or aiohttp: it sees a
:class:`~flux_async._context.Context` (codec, transport, clock, policy, counters) and values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import anyio

from ._context import Context
from ._fleet import Fleet
from ._spend import Spend
from ._throttle import Breaker
from .errors import (
    APIError,
    FluxError,
    LedgerError,
    OutageError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TransportError,
    ValidationError,
)
from .ledger import Ledger, LedgerEntry, MemoryLedger
from .models import Cost, GenerationRequest, TaskRef
from .retry import (
    SubmitDecision,
    classify_submit_failure,
    is_retryable_poll,
    retry_delay,
    should_retry,
)

__all__ = ["Submitter", "TaskShield", "request_digest", "submitting_task"]

logger = logging.getLogger("flux_async")

class TaskShield:
    """The one cancel scope of a task that sends many submits (see :func:`submitting_task`).

    The scope is shielded for good: no cancellation from outside reaches the task by itself.
    Its owner cancels it with :meth:`cancel`, which waits for a POST on the wire to be done.
    It is each POST's shield: entering marks a POST on the wire (two attribute writes, where
    raising and lowering an anyio scope's shield costs a walk up every scope above it), and
    leaving delivers a cancellation that came meanwhile, at the task's next checkpoint."""

    __slots__ = ("cancelled", "posting", "scope", "task")

    def __init__(self, scope: anyio.CancelScope, task: asyncio.Task[object] | None) -> None:
        self.scope = scope
        self.task = task
        self.posting = False
        self.cancelled = False

    def __enter__(self) -> None:
        self.posting = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.posting = False
        if self.cancelled:
            self.scope.cancel()

    def cancel(self) -> None:
        """Cancel the task: at once, or as soon as its POST on the wire is done."""
        self.cancelled = True
        if not self.posting:
            self.scope.cancel()


_TASK_SHIELD: ContextVar[TaskShield | None] = ContextVar("flux_async_task_shield", default=None)


@contextmanager
def submitting_task() -> Iterator[TaskShield]:
    """Run the calling task's submits under one cancel scope of its own, shielded from every
    cancellation from outside; the caller cancels the task through the shield it yields
    (``shield.cancel()``), and must do so whenever the task is to stop.

    For a task that sends many submits one after another (a batch's submitter). Each POST then
    marks the shield instead of entering a shielded scope of its own (whose entry and exit
    cost about 2% of a job's CPU). The guarantee is the same: no cancellation reaches the POST,
    and one that came meanwhile is delivered at the next checkpoint after it. It relies on the
    POST running directly in this scope (no cancel scope of its own in between); anywhere
    else, and in any other task, each POST enters a shielded scope of its own.
    """
    with anyio.CancelScope(shield=True) as scope:
        shield = TaskShield(scope, asyncio.current_task())
        token = _TASK_SHIELD.set(shield)
        try:
            yield shield
        finally:
            _TASK_SHIELD.reset(token)


def _post_shield() -> AbstractContextManager[object]:
    """What shields a POST: the submitting task's own shield when it has one not in use
    already (see :func:`submitting_task`), else a shielded scope of its own."""
    held = _TASK_SHIELD.get()
    if held is not None and held.task is asyncio.current_task() and not held.posting:
        return held
    return anyio.CancelScope(shield=True)


def request_digest(request: GenerationRequest) -> str:
    """SHA-256 of what a request asks for (its idempotency key aside): the same key sent with
    another request is a mistake the ledger catches."""
    images = [
        "sha256:" + hashlib.sha256(image).hexdigest() if isinstance(image, bytes) else os.fspath(image)
        for image in request.images
    ]
    fields = {
        "model": request.model,
        "prompt": request.prompt,
        "size": request.size,
        "n": request.n,
        "images": images,
        "response_format": request.response_format,
        "safety_tolerance": request.safety_tolerance,
        "prompt_upsampling": request.prompt_upsampling,
        "seed": request.seed,
        "extra": dict(request.extra),
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class Submitter:
    """Sends submits for one session, each written ahead to the ledger.

    :meth:`submit` records the intent, POSTs, and records the acceptance; :meth:`existing`
    answers for a key that is already known (in flight here, or in the ledger). After an
    acceptance could not be recorded, ``broken`` holds why, and nothing more is sent.
    """

    __slots__ = (
        "_claims",
        "_ctx",
        "_ledger",
        "_memory",
        "_quiet",
        "_sending",
        "_spend",
        "breaker",
        "broken",
        "fleet",
        "job_timeout",
        "resubmit_in_doubt",
        "unrecorded",
        "webhook_secret",
        "webhook_url",
    )

    def __init__(
        self,
        ctx: Context,
        ledger: Ledger,
        spend: Spend,
        *,
        resubmit_in_doubt: bool = False,
        breaker: Breaker | None = None,
        job_timeout: float | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._ledger = ledger
        # The default in-memory ledger, written without a coroutine per call (its methods are
        # async only for the protocol's sake). A subclass goes through its async methods.
        self._memory: MemoryLedger | None = ledger if type(ledger) is MemoryLedger else None
        self._spend = spend
        self.resubmit_in_doubt = resubmit_in_doubt
        #: The outage breaker (``Limits.outage_streak``, ``Limits.outage_pause``).
        self.breaker = breaker or Breaker(threshold=0, pause=0.0)
        #: A submit refused with 429 is retried until this many seconds after its first
        #: attempt (``Limits.job_timeout``), not only within the retry policy's attempts.
        self.job_timeout = job_timeout
        #: Sent with every submit in the provider's own fields (``Session(webhook_url=...)``).
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        #: The coordinator shared with other processes, if any (``_fleet``).
        self.fleet: Fleet | None = None
        # Keys whose POST is on its way here: a second submit with the key waits for the first.
        self._claims: dict[str, asyncio.Future[TaskRef]] = {}
        self._sending: set[str] = set()  # keys whose submit is on its way
        self._quiet: anyio.Event | None = None  # set when the last of them is answered
        self.broken: BaseException | None = None
        self.unrecorded: list[TaskRef] = []

    def in_flight(self, key: str) -> bool:
        """True while a submit with ``key`` is on its way in this session."""
        return key in self._sending

    async def existing(self, request: GenerationRequest, digest: str) -> TaskRef | None:
        """The task already made for ``request.idempotency_key``, or None when it may be sent.

        Waits for a submit with the same key that is on its way here. Raises ValidationError
        for a key recorded for another request, SubmissionUncertainError for a key whose POST
        is in doubt (unless ``resubmit_in_doubt``), and the first submit's error when it failed.
        """
        key = request.idempotency_key
        assert key is not None
        while True:
            claim = self._claims.get(key)
            if claim is None:
                break
            try:
                return await asyncio.shield(claim)
            except _ClaimDroppedError:
                continue  # the first submit never got to send: look again
        entry = await self._ledger.get(key)
        if entry is None or entry.status == "not_submitted":
            return None
        return await self._resolve(entry, digest)

    def submit(
        self, request: GenerationRequest, key: str, digest: str
    ) -> Coroutine[Any, Any, tuple[TaskRef, bool, Cost]]:
        """Reserve the job's cost, write the intent, POST, write the acceptance under ``key``:
        the accepted task, whether this call created it (False: the key turned out to be
        taken: its task), and what the job is taken to cost until it settles (the provider's
        figure when its answer gives one). Raises BudgetExceededError before anything is written
        or sent when the budget has no room for the job.

        A plain function that returns the coroutine doing it (one coroutine less per submit);
        LedgerError and OutageError are raised here, before anything is made."""
        if self.broken is not None:
            raise LedgerError(
                f"the ledger could not record an accepted task earlier ({self.broken}); "
                "this session sends nothing more"
            )
        user_key = request.idempotency_key is not None
        if user_key and key in self._claims:
            return self._submit_shared(request, key, digest)
        # The breaker's probe: the one submit let through to see whether the provider is back.
        probe = self.breaker.open_until is not None and self._check_breaker(request.model)
        return self._submit(request, key, digest, user_key, probe)

    async def _submit_shared(
        self, request: GenerationRequest, key: str, digest: str
    ) -> tuple[TaskRef, bool, Cost]:
        """The same key is on its way here already: share its task (or submit, should that
        submit end without one)."""
        while key in self._claims:
            ref = await self.existing(request, digest)
            if ref is not None:
                return ref, False, self._spend.cost_of(key, request.model)
        probe = self.breaker.open_until is not None and self._check_breaker(request.model)
        return await self._submit(request, key, digest, True, probe)

    def _check_breaker(self, model: str) -> bool:
        """Raise OutageError while the breaker refuses submits (nothing is sent); True
        otherwise."""
        ctx = self._ctx
        breaker = self.breaker
        wait = breaker.refusal(ctx.now())
        if wait is None:
            return True
        ctx.counts["outage_refusals"] += 1
        raise OutageError(
            f"submission to {ctx.provider} is paused: the last {breaker.streak} submits failed "
            f"one after another (last: {breaker.last_error}); nothing was sent for this "
            f"{model} request; tasks already accepted are still watched; a submit is tried "
            f"again in {wait:.0f} s",
            provider=ctx.provider,
            streak=breaker.streak,
            last_error=breaker.last_error,
            retry_in=wait,
        )

    async def _submit(
        self, request: GenerationRequest, key: str, digest: str, user_key: bool, probe: bool
    ) -> tuple[TaskRef, bool, Cost]:
        ctx = self._ctx
        breaker = self.breaker
        try:
            # Paced before anything is written: a wait here leaves no intent behind.
            throttle = ctx.throttle
            if not throttle.limited:  # nothing binds: the submit is only counted
                throttle.count(ctx.now())
            elif (wait := throttle.submit_delay(ctx.now())) > 0.0:
                await ctx.sleep(wait)
                if breaker.open_until is not None and not breaker.probing:
                    self._check_breaker(request.model)  # it opened while this one waited
            spend = self._spend
            images = request.n or 1  # catalog.images_charged, inline on the hot path
            # Checked and held with no await in between: no other submit can take the same room.
            reserved = spend.reserve(key, request.model, images)
            mine = reserved is not None  # else the key held one already (an earlier session's)
            cost = reserved if reserved is not None else spend.cost_of(key, request.model)
            fleet = self.fleet
            if fleet is not None and mine:
                # The account's budget, shared by every process: checked after this session's.
                try:
                    await fleet.reserve(key, request.model, cost.usd)
                except BaseException:
                    spend.release(key)  # nothing was written or sent
                    raise
            written = False
            claim: asyncio.Future[TaskRef] | None = None
            if user_key:
                # Claimed before the intent is written, so a second submit with the key waits for
                # this one even while a (remote) ledger is still writing.
                claim = asyncio.get_running_loop().create_future()
                self._claims[key] = claim
            sending = self._sending
            sending.add(key)
            memory = self._memory
            try:
                while True:
                    try:
                        if memory is not None:
                            existing = memory._intend_now(
                                key, ctx.provider, request.model, digest, time.time(), cost.usd, images
                            )
                        else:
                            existing = await self._ledger.intend(
                                key,
                                provider=ctx.provider,
                                model=request.model,
                                digest=digest,
                                at=time.time(),
                                reserved_usd=cost.usd,
                                images=images,
                            )
                    except Exception as exc:
                        raise LedgerError(
                            f"the ledger could not record the intent to submit ({exc}); nothing was sent",
                            key=key,
                        ) from exc
                    if existing is None:
                        written = True
                        break
                    found = await self._resolve(existing, digest)
                    if found is not None:
                        if mine:
                            spend.release(key)  # the key's task exists: nothing more is sent
                        if claim is not None:
                            claim.set_result(found)
                        if probe:
                            breaker.release()  # answered by an existing task: nothing was learnt
                        return found, False, spend.cost_of(key, request.model)
                ref, reported = await self._send(request, key)
            except BaseException as exc:
                if mine and not written:
                    spend.release(key)  # no intent of ours was written: nothing was sent
                if isinstance(exc, SubmissionUncertainError) and exc.cost is None:
                    exc.cost = spend.reservation(key)  # in doubt: it counts as spent
                if claim is not None:
                    claim.set_exception(exc if isinstance(exc, Exception) else _ClaimDroppedError())
                    claim.exception()  # retrieved here: a claim nobody waits on must not warn
                raise
            finally:
                if claim is not None:
                    del self._claims[key]
                sending.discard(key)
                if not sending and self._quiet is not None:
                    self._quiet.set()
                    self._quiet = None
            if claim is not None:
                claim.set_result(ref)
            if reported is not None:
                cost = spend.accepted(key, reported)
            breaker.answered()
            if throttle.rate is not None:
                throttle.accepted(ctx.now())
            if probe:
                breaker.release()
            return ref, True, cost
        except BaseException as exc:
            if isinstance(exc, (ServerError, TransportError, SubmissionUncertainError)):
                if breaker.failed(ctx.now(), f"{type(exc).__name__}: {exc}"):
                    logger.warning(
                        "%d submits to %s failed in a row (last: %s): submission paused for %.0f s",
                        breaker.streak, ctx.provider, breaker.last_error, breaker.pause,
                    )
            elif isinstance(exc, APIError) and not isinstance(exc, RateLimitError):
                breaker.answered()  # refused on its merits: the provider is up
            elif probe:
                breaker.release()
            raise

    async def wait_quiet(self) -> None:
        """Return once no submit is on its way (each one answered and recorded)."""
        while self._sending:
            if self._quiet is None:
                self._quiet = anyio.Event()
            await self._quiet.wait()

    async def _resolve(self, entry: LedgerEntry, digest: str) -> TaskRef | None:
        """The task of a recorded key: accepted (or settled with a task), or looked up; None
        when it is certain that no task exists (the request may be sent)."""
        ctx = self._ctx
        if digest and entry.digest and entry.digest != digest:
            raise ValidationError(
                "idempotency_key",
                entry.key,
                "a key not yet used for another request",
                reason=f"the key was used at {ctx.provider} for a different request",
            )
        if entry.ref is not None:
            return entry.ref
        if entry.status == "not_submitted":
            return None
        # An intent with no acceptance: the POST may have created a task.
        if ctx.codec.supports_client_business_id:
            return await self.recover_intent(entry)
        if self.resubmit_in_doubt:
            # The earlier POST may have been charged: its reservation counts as spent.
            held = self._spend.reservation(entry.key)
            self._spend.settle(
                entry.key,
                "not_submitted",
                error="resubmitted while in doubt",
                cost=held if held is not None else _recorded_reservation(entry),
            )
            return None
        raise SubmissionUncertainError(
            f"an earlier submit with idempotency key {entry.key!r} may have created a task at "
            f"{ctx.provider} (sent {_when(entry.intended_at)}, its answer never recorded); it is "
            "not sent again, to avoid paying twice (resubmit_in_doubt=True sends it anyway)",
            provider=ctx.provider,
            model=entry.model,
            idempotency_key=entry.key,
        )

    async def recover_intent(self, entry: LedgerEntry) -> TaskRef | None:
        """Resolve an intent left by an earlier process: its task where a lookup finds one,
        None where it is absent or no lookup exists (then it stays in doubt); raises
        SubmissionUncertainError when the lookup cannot tell."""
        ctx = self._ctx
        if not ctx.codec.supports_client_business_id:
            return None
        with anyio.CancelScope(shield=True):
            found = await self._lookup(entry.key, entry.model, cause=None)
            if found is not None:
                await self._record_acceptance(entry.key, found)
        if found is None:
            self._spend.settle(entry.key, "not_submitted", error="no task under the key")
        return found

    async def _record_acceptance(self, key: str, ref: TaskRef) -> None:
        """Write the acceptance; on failure, stop sending and make the task impossible to miss.
        Under a coordinator, the task is then owned account-wide (its slot bound to it)."""
        try:
            await self._ledger.accept(key, ref)
        except Exception as exc:
            self._not_recorded(ref, exc)
        if self.fleet is not None:
            await self.fleet.accepted(key, ref)

    def _accepted_now(self, key: str, ref: TaskRef) -> bool:
        """:meth:`_record_acceptance` without a coroutine where nothing needs awaiting (the
        in-memory ledger, no coordinator); False when that must be awaited instead."""
        memory = self._memory
        if memory is None or self.fleet is not None:
            return False
        try:
            memory._accept_now(key, ref)
        except Exception as exc:
            self._not_recorded(ref, exc)
        return True

    def _not_recorded(self, ref: TaskRef, exc: Exception) -> None:
        """The ledger failed to record accepted ``ref``: stop sending, keep it impossible to miss."""
        if self.broken is None:
            self.broken = exc
        self.unrecorded.append(ref)
        logger.error(
            "the ledger could not record accepted task %s (%s): it is watched, but resume it "
            "by hand if this process ends first: %s",
            ref.task_id,
            exc,
            json.dumps(ref.to_dict(), sort_keys=True),
        )

    async def _send(self, request: GenerationRequest, key: str) -> tuple[TaskRef, float | None]:
        """POST the request, retrying only where no task can exist; resolve ambiguity safely.
        The accepted task, and its cost in US dollars when the submit answer reports one."""
        ctx = self._ctx
        codec = ctx.codec
        counts = ctx.counts
        cbid = key if codec.supports_client_business_id else None
        policy = ctx.retry_policy
        attempt = 0
        started = ctx.now()
        try:
            while True:
                http = codec.build_submit(
                    request,
                    client_business_id=cbid,
                    idempotency_key=key,
                    webhook_url=self.webhook_url,
                    webhook_secret=self.webhook_secret,
                )
                counts["submit_attempts"] += 1
                sent_at = started if attempt == 0 else ctx.now()
                if attempt == 0:
                    ctx.budget.record_request()
                error: FluxError
                try:
                    # The POST is shielded: once it is on the wire its answer is awaited (within
                    # the read timeout) and its task recorded even if the caller is cancelled.
                    with _post_shield():
                        response = await (ctx.transport or ctx.net()).send(http)
                        if not 200 <= response.status < 300:
                            raise codec.parse_error(response)
                        ref = codec.parse_submit(response, model=request.model)
                        if not self._accepted_now(key, ref):
                            await self._record_acceptance(key, ref)
                        return ref, codec.submit_cost(response)
                except FluxError as exc:
                    error = exc
                decision = classify_submit_failure(error)
                if isinstance(error, RateLimitError):
                    counts["rate_limited"] += 1
                    if await self._rate_limit_retry(key, error, attempt, started, sent_at):
                        attempt += 1
                        continue
                    raise error
                if decision is SubmitDecision.RETRY:
                    delay = retry_delay(policy, attempt, ctx.rng, retry_after=None)
                    if should_retry(
                        policy, attempts=attempt + 1, elapsed=ctx.now() - started, delay=delay
                    ) and ctx.budget.try_spend_retry():
                        counts["submit_retries"] += 1
                        logger.debug(
                            "submit %s attempt %d refused before any task existed (%s): attempt %d in %.2f s",
                            key, attempt + 1, type(error).__name__, attempt + 2, delay,
                        )
                        await ctx.sleep(delay)
                        attempt += 1
                        continue
                if decision is SubmitDecision.AMBIGUOUS:
                    if cbid is None:
                        counts["uncertain_submits"] += 1
                        raise SubmissionUncertainError(
                            f"the submit may have created a task at {ctx.provider} ({error}); "
                            "it was not retried, to avoid paying twice",
                            provider=ctx.provider,
                            model=request.model,
                            idempotency_key=key,
                        ) from error
                    logger.debug(
                        "submit %s attempt %d ended ambiguously (%s): looking the task up by its key",
                        key, attempt + 1, type(error).__name__,
                    )
                    # Shielded like the POST: a task may exist under cbid, and a cancelled caller
                    # must not forget it (the lookup is bounded by the retry policy).
                    with anyio.CancelScope(shield=True):
                        found = await self._lookup(cbid, request.model, cause=error)
                        if found is not None:
                            await self._record_acceptance(key, found)
                    if found is not None:
                        counts["recovered_submits"] += 1
                        return found, None
                    if should_retry(
                        policy, attempts=attempt + 1, elapsed=ctx.now() - started, delay=0.0
                    ) and ctx.budget.try_spend_retry():
                        # The provider has no task under our id: the request never created one,
                        # so sending it again (with the same id) cannot pay twice.
                        counts["submit_retries"] += 1
                        attempt += 1
                        continue
                raise error
        except SubmissionUncertainError:
            raise  # in doubt: the intent stays open for recovery
        except BaseException as exc:
            # Every other way out leaves no task: refused, never sent, or proven absent (the
            # only awaits outside a shield are the waits between attempts).
            self._spend.settle(key, "not_submitted", error=type(exc).__name__)
            raise

    async def _rate_limit_retry(
        self, key: str, error: RateLimitError, attempt: int, started: float, sent_at: float
    ) -> bool:
        """After a 429: slow the whole session down, and wait for this submit's next attempt;
        False when its deadline (``job_timeout``, and the retry policy's own deadline) would
        pass first. A 429 proves no task was made, so it spends no retry budget and is not
        bounded by the policy's attempts while a deadline bounds it."""
        ctx = self._ctx
        policy = ctx.retry_policy
        now = ctx.now()
        throttle = ctx.throttle
        pause = retry_delay(policy, attempt, ctx.rng, retry_after=error.retry_after)
        throttle.rate_limited(now, pause, sent_at=sent_at)
        delay = throttle.submit_delay(now, reserve=False)
        deadlines = [t for t in (self.job_timeout, policy.deadline) if t is not None]
        if deadlines:
            if now - started + delay > min(deadlines):
                return False
        elif attempt + 1 >= policy.max_attempts:
            return False
        delay = throttle.submit_delay(now)
        ctx.counts["submit_retries"] += 1
        logger.debug(
            "submit %s attempt %d refused before any task existed (RateLimitError): attempt %d in %.2f s",
            key, attempt + 1, attempt + 2, delay,
        )
        await ctx.sleep(delay)
        return True

    async def _lookup(self, cbid: str, model: str, *, cause: BaseException | None) -> TaskRef | None:
        """Find a task by its client_business_id; raise SubmissionUncertainError if we cannot tell."""
        ctx = self._ctx
        codec = ctx.codec
        request = codec.build_lookup(cbid)
        assert request is not None
        policy = ctx.retry_policy
        for attempt in range(policy.max_attempts):
            # Give a slow provider a moment to finish creating the task before asking for it.
            await ctx.sleep(retry_delay(policy, attempt, ctx.rng, retry_after=None))
            try:
                response = await ctx.net().send(request)
                if response.status == 404 or 200 <= response.status < 300:
                    return codec.parse_lookup(response, model=model)
                raise codec.parse_error(response)
            except FluxError as exc:
                if not is_retryable_poll(exc):
                    break
        ctx.counts["uncertain_submits"] += 1
        raise SubmissionUncertainError(
            f"the submit may have created a task at {ctx.provider} and it could not be looked up "
            f"(client_business_id={cbid})",
            provider=ctx.provider,
            model=model,
            client_business_id=cbid,
            idempotency_key=cbid,
        ) from cause


class _ClaimDroppedError(Exception):
    """The submit holding a key ended without sending (cancelled): its waiters look again."""


def _recorded_reservation(entry: LedgerEntry) -> Cost:
    """What an intent recorded as its reservation."""
    usd = entry.reserved_usd
    return Cost.UNKNOWN if usd is None else Cost(usd, "price_table")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
