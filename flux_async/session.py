"""``Session``: the public entry point that submits jobs, waits on them and fetches their images.

A session owns one transport (one aiohttp connection pool), one shared poll scheduler and one
anyio task group, and is the facade over the parts that do the work: the money path
(``_submit``: the POST, its retries, the toapis lookup, the active-task caps), the batch
machinery behind :meth:`Session.as_completed` (``_as_completed``), uploads (``_uploads``) and the
jobs themselves (``_job``); the wire formats live in the codecs, the timing in the scheduler,
the retry rules in ``retry.py``. Nothing imports this module except the package root and the
CLI (the batch machinery and jobs see it only for typing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack, overload

import aiohttp
import anyio
from anyio.abc import TaskGroup

from . import catalog
from ._active import active_limiter, provider_caps
from ._as_completed import Batch, Outbox, safe_name
from ._checks import check_base_url
from ._config import API_KEY_ENV, Limits, SessionStatistics, resolve_api_key
from ._context import NOT_OPEN, Context
from ._fleet import Fleet
from ._hosts import HostPolicy
from ._job import Job
from ._jobs import Jobs, coerce_ref
from ._spend import Spend
from ._submit import Submitter
from ._throttle import Breaker, Throttle
from ._uploads import Uploads
from .errors import (
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    FluxError,
    InsufficientCreditsError,
    LedgerError,
    ValidationError,
    WebhookVerificationError,
)
from .ledger import Ledger, MemoryLedger
from .models import (
    GeneratedImage,
    GenerationFields,
    GenerationRequest,
    GenerationResult,
    Outcome,
    TaskRef,
    TaskState,
)
from .providers import get_codec
from .providers._build import webhook_secret_field, webhook_target
from .retry import RetryPolicy
from .scheduler import PollPolicy, PollScheduler
from .transport import AiohttpTransport, DownloadLimits, Transport
from .webhooks import WebhookEvent
from .webhooks import verify as verify_webhook

if TYPE_CHECKING:
    from .fleet import RedisCoordinator

logger = logging.getLogger("flux_async")

__all__ = ["API_KEY_ENV", "Job", "Limits", "Session", "SessionStatistics"]

_FATAL = (AuthenticationError, InsufficientCreditsError, LedgerError)


class Session:
    """A client session for one provider; an async context manager.

    Cheap to keep for the life of an application and safe to share between concurrent tasks:
    they all ride the same scheduler and connection pool. Configuration is keyword-only.

    ``base_url`` (else ``FLUX_ASYNC_BASE_URL``, else the provider's) must be ``http(s)://host``
    with an optional port and path: no credentials, query or fragment (ConfigurationError).
    ``prices`` (model -> US dollars per image) overrides the catalog's price table
    (``catalog.PRICES``) for the jobs' costs and the budget (``Limits.max_spend_usd``).
    """

    def __init__(
        self,
        provider: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        poll_policy: PollPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        limits: Limits | None = None,
        http_session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        seed: int | None = None,
        ledger: Ledger | None = None,
        resubmit_in_doubt: bool = False,
        prices: Mapping[str, float] | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | Sequence[str] | None = None,
        coordinator: RedisCoordinator | None = None,
        adopt_download_to: str | os.PathLike[str] | None = None,
        adopt_orphans: bool = True,
    ) -> None:
        if provider not in catalog.PROVIDERS:
            raise ConfigurationError(
                f"unknown provider {provider!r}; choose one of {', '.join(catalog.PROVIDERS)}"
            )
        self.provider = provider
        codec = get_codec(provider, api_key=resolve_api_key(provider, api_key))
        if base_url:
            self._base_url = check_base_url(base_url)
        elif os.environ.get("FLUX_ASYNC_BASE_URL"):
            self._base_url = check_base_url(os.environ["FLUX_ASYNC_BASE_URL"], "FLUX_ASYNC_BASE_URL")
        else:
            self._base_url = codec.default_base_url
        self.poll_policy = poll_policy or PollPolicy()
        self.retry_policy = retry_policy or RetryPolicy()
        self.limits = limits or Limits()
        self._http_session = http_session
        self._transport_arg = transport
        rng = random.Random(seed)
        limits = self.limits
        self._ctx = ctx = Context(
            provider, codec, self._base_url, self.retry_policy, clock=clock, sleep=sleep or anyio.sleep, rng=rng,
            throttle=Throttle(cap=limits.max_submits_per_second),
        )
        self._counts = ctx.counts
        self._scheduler = PollScheduler(
            ctx.poll, policy=self.poll_policy, clock=clock, sleep=sleep, rng=random.Random(rng.random()),
            retry_budget=ctx.budget,
        )
        #: Where every paid action is written ahead (intent, acceptance, settlement).
        if ledger is None:
            # Under a coordinator the ledger is shared too: every process sees every entry.
            ledger = MemoryLedger() if coordinator is None else coordinator.ledger()
        self.ledger: Ledger = ledger
        # A ledger that must be opened (a RedisLedger not opened yet) is opened with the session,
        # and read then; any other is read now.
        self._ledger_to_open: Any = ledger if getattr(ledger, "is_open", True) is False else None
        # What jobs cost and the budget; reads what the ledger holds from earlier sessions.
        self._spend = Spend(
            provider,
            self.ledger,
            prices=prices,
            max_spend_usd=self.limits.max_spend_usd,
            load=self._ledger_to_open is None,
        )
        self._webhook_secrets = _webhook_secrets(webhook_secret)
        self._webhook_url = None if webhook_url is None else _webhook_url(webhook_url)
        self._submitter = Submitter(
            ctx,
            self.ledger,
            self._spend,
            resubmit_in_doubt=resubmit_in_doubt,
            breaker=Breaker(threshold=limits.outage_streak, pause=limits.outage_pause),
            job_timeout=limits.job_timeout,
            webhook_url=self._webhook_url,
            webhook_secret=self._webhook_secrets[0] if self._webhook_secrets else None,
        )
        self._uploads = Uploads(ctx)
        self._jobs = Jobs(
            ctx,
            self._scheduler,
            self.limits,
            self.ledger,
            self._submitter,
            self._uploads,
            active_limiter(provider, self.limits),
            self._spend,
        )
        self._jobs.push = self._webhook_url is not None
        self._fleet: Fleet | None = None
        if coordinator is not None:
            total_cap, model_caps = provider_caps(provider, self.limits)
            self._fleet = fleet = Fleet(
                coordinator,
                provider,
                total_cap=total_cap,
                model_caps=model_caps,
                max_spend_usd=self.limits.max_spend_usd,
                adopt_download_to=None if adopt_download_to is None else Path(adopt_download_to),
                adopt=adopt_orphans,
            )
            self._jobs.fleet = self._submitter.fleet = fleet
            self._spend.observer = fleet
        elif adopt_download_to is not None:
            raise ConfigurationError("adopt_download_to needs a coordinator (orphaned tasks are adopted through it)")
        self._download_slots = anyio.Semaphore(self.limits.max_concurrent_downloads)
        self._download_limits = DownloadLimits(
            max_bytes=self.limits.max_download_bytes, max_redirects=self.limits.max_redirects
        )
        self._tg: TaskGroup | None = None
        self._batches: set[Batch] = set()

    def __repr__(self) -> str:
        return f"Session(provider={self.provider!r}, base_url={self._base_url!r})"

    @property
    def prices(self) -> Mapping[str, float | None]:
        """USD per image of each of the provider's models, as this session prices its jobs:
        the catalog's defaults with ``prices=`` over them (None: unknown)."""
        return self._spend.prices

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("this Session is already open")
        self._ctx.transport = self._transport_arg or AiohttpTransport(
            base_url=self._base_url,
            session=self._http_session,
            max_connections=self.limits.max_connections,
            connect_timeout=self.limits.connect_timeout,
            read_timeout=self.limits.read_timeout,
            result_hosts=HostPolicy.for_base_url(
                self._base_url, allow_private=self.limits.allow_private_result_hosts
            ),
        )
        fleet = self._fleet
        to_open = self._ledger_to_open
        try:
            if to_open is not None and not to_open.is_open:
                await to_open.open()
                self._spend.load()
            if fleet is not None and not fleet.coordinator.is_open:
                await fleet.coordinator.__aenter__()
                fleet.entered = True
        except BaseException:
            if to_open is not None and to_open.is_open:
                await to_open.aclose()
            await self._close_transport()
            raise
        transport = self._ctx.transport
        if isinstance(transport, AiohttpTransport) and transport.gated:
            # Polls wait for this pool's connections without a task each (see PollScheduler).
            self._scheduler.use_gate(transport, self._ctx.poll_held)
        self._ctx.open_clock()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._scheduler.run)
        if fleet is not None:
            tg.start_soon(fleet.run, self._attach_adopted, self._download_adopted)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                # The body's own exception is not handed to the task group: it propagates
                # unchanged instead of being wrapped in an exception group.
                await tg.__aexit__(None, None, None)
        finally:
            # Only now: a shielded POST answered during the drain is watched by now, and a
            # batch whose iterator was never closed still holds undelivered results.
            for batch in list(self._batches):
                batch.stop()
            self._jobs.abandon_running(self._scheduler.outstanding())
            fleet = self._fleet
            if fleet is not None:
                # What the jobs' ends left to say (slots, ownership, spend), then the lease: a
                # task still running is an orphan another process adopts.
                with anyio.CancelScope(shield=True), anyio.move_on_after(10.0):
                    await fleet.flush()
                if fleet.entered:
                    # Not inside a scope of ours: the coordinator leaves its own task group.
                    fleet.entered = False
                    await fleet.coordinator.__aexit__(None, None, None)
            to_open = self._ledger_to_open
            if to_open is not None and to_open.is_open:
                await to_open.aclose()  # its queued settlements written, within its bound
            self._scheduler.use_gate(None)
            self._ctx.close_clock()
            await self._close_transport()

    async def _close_transport(self) -> None:
        transport = self._ctx.transport
        if transport is not None:
            await transport.aclose()
            if self._transport_arg is None:
                self._ctx.transport = None

    def _attach_adopted(self, ref: TaskRef, key: str | None) -> Job:
        return self._jobs.attach(ref, None, key)

    async def _download_adopted(self, job: Job) -> None:
        """An adopted task's images, once it ends, into ``adopt_download_to``."""
        fleet = self._fleet
        assert fleet is not None
        assert fleet.adopt_download_to is not None
        await job.wait()
        if job.error is not None:
            return
        result = await job.result()
        directory = fleet.adopt_download_to
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.error("could not create %s for adopted task %s: %s", directory, job.task_id, exc)
            return
        name = safe_name(job.task_id)
        for k, image in enumerate(result.images):
            suffix = "" if len(result.images) == 1 else f"-{k}"
            try:
                await self.download(image, directory / f"{name}{suffix}.img")
            except FluxError as exc:
                logger.error("could not download adopted task %s: %s", job.task_id, exc)

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError(NOT_OPEN)
        return self._tg

    def _net(self) -> Transport:
        return self._ctx.net()

    # -- one job -------------------------------------------------------------------------------

    @overload
    async def generate(self, request: GenerationRequest, /) -> GenerationResult: ...
    @overload
    async def generate(self, /, **fields: Unpack[GenerationFields]) -> GenerationResult: ...

    async def generate(self, request: GenerationRequest | None = None, /, **fields: Any) -> GenerationResult:
        """Submit one job, wait for it on the shared scheduler and return its result.

        Takes a :class:`GenerationRequest` or its fields as keywords. Raises the job's error
        (``ValidationError`` before anything is sent, ``TaskFailedError``, ``ModerationError``...).
        """
        job = await self.submit(_as_request(request, fields))
        try:
            return await job.result()
        except anyio.get_cancelled_exc_class():
            # The caller gave up, the paid task runs on: keep it listed (resume it by ref).
            self._jobs.abandon(job.ref)
            raise

    async def submit(self, request: GenerationRequest) -> Job:
        """Validate, upload local images, submit; return once the provider accepted the task.

        With ``request.idempotency_key`` set, a key this session's ledger already holds returns
        its job instead of paying again. The submit runs in the session's own task: however the
        caller is cancelled (anyio, ``asyncio.wait_for``, ``task.cancel()``), a POST already on
        the wire is finished, recorded in the ledger and listed in ``abandoned_tasks``; one not
        yet sent is not sent.
        """
        tg = self._task_group()
        checked = catalog.validate(request, self.provider)
        handover: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        tg.start_soon(self._jobs.submit_for, request, checked, handover)
        return await handover

    def _submit(
        self, request: GenerationRequest, *, on_accept: Callable[[Job], None] | None
    ) -> Coroutine[Any, Any, Job]:
        """Validate, then submit in the calling task (a batch's submitter, owned by the session)
        when the returned coroutine is awaited. A plain function, so that a submit's await goes
        through one coroutine less; a bad request raises here, before anything is made."""
        if self._tg is None:
            raise RuntimeError(NOT_OPEN)
        checked = catalog.validate(request, self.provider)
        return self._jobs.submit(request, checked, on_accept=on_accept)

    async def wait_submits(self) -> None:
        """Wait until no submit of this session is on the wire: every POST sent has been
        answered, and its task recorded in the ledger and watched (or its failure raised).

        For a graceful stop: stop feeding new work, then wait here before reading
        ``statistics()`` or closing, so that every paid task is accounted for.
        """
        await self._submitter.wait_quiet()

    async def recover(self) -> list[Job]:
        """Pick up what the ledger holds from earlier sessions (or processes) of this provider.

        Every accepted task that was never settled is re-attached and its job returned. An
        intent with no acceptance (the process ended while its POST was on the wire) is looked
        up on toapis by its key: found, it is attached too; proven absent, it is settled as not
        submitted (submit the request again with the same key to send it). Elsewhere no lookup
        exists: it stays *in doubt*, listed in ``statistics().in_doubt``, and a submit with its
        key raises ``SubmissionUncertainError`` unless the session was made with
        ``resubmit_in_doubt=True``. Never sends a submit.
        """
        self._task_group()
        if self._fleet is not None:
            # Shared by live processes: only the tasks of processes that stopped are taken.
            fleet = self._fleet
            if not fleet.adopt:
                return []
            jobs = await fleet.adopt_orphans(self._attach_adopted)
            if fleet.adopt_download_to is not None:
                for job in jobs:
                    self._task_group().start_soon(self._download_adopted, job)
            return jobs
        return await self._jobs.recover()

    def resume(self, ref: TaskRef | str) -> Job:
        """Re-attach to a task submitted earlier (by this or another session); never resubmits.

        A plain task id string works on the aggregators; on BFL pass the ``TaskRef`` (or the
        ``polling_url`` itself), because its poll URL cannot be rebuilt from the id.
        """
        self._task_group()
        return self._jobs.attach(coerce_ref(self.provider, ref), None, None)

    async def get_task(self, ref: TaskRef | str) -> TaskState:
        """One status check of a task (retried on transient failures)."""
        ref = coerce_ref(self.provider, ref)
        return await self._ctx.idempotent(lambda: self._ctx.poll(ref))

    # -- uploads and downloads -----------------------------------------------------------------

    async def upload(self, source: str | os.PathLike[str] | bytes) -> str:
        """Upload a local image (path or bytes) and return its URL (aggregators only).

        The same bytes are uploaded once per session, however many requests use them.
        """
        self._task_group()
        return await self._uploads.upload(source)

    @overload
    async def download(self, image: GeneratedImage | str, path: None = None) -> bytes: ...
    @overload
    async def download(self, image: GeneratedImage | str, path: str | os.PathLike[str]) -> Path: ...

    async def download(self, image: GeneratedImage | str, path: str | os.PathLike[str] | None = None) -> bytes | Path:
        """Fetch a result image: bytes, or a file written atomically at ``path``.

        The file's suffix is set from the image's real type (``.png``, ``.jpg``, ``.webp``).
        Only http(s), a few redirects, a byte cap, public result hosts (see
        ``Limits.allow_private_result_hosts``) and a whole image (a body cut short is fetched
        again within the retry policy); no key is sent.
        """
        url = image.url if isinstance(image, GeneratedImage) else image
        expires = image.expires_at if isinstance(image, GeneratedImage) else None
        dest = None if path is None else Path(path)

        async def fetch() -> bytes | Path:
            async with self._download_slots:
                data, _ext = await self._net().download(
                    url, dest, limits=self._download_limits, expires_at=expires
                )
            return data

        # A paid image is worth another GET (idempotent) after a 5xx or a dropped link.
        data = await self._ctx.idempotent(fetch, retryable=_retryable_download)
        self._counts["downloads"] += 1
        return data

    # -- webhooks ------------------------------------------------------------------------------

    def notify(self, event: WebhookEvent) -> bool:
        """A verified webhook event: poll its task now (a wake-up, never a result).

        The poll confirms the state and the normal path downloads. Deduplicated by event id
        and by task, so a duplicate or replayed event costs nothing and a flood of them at
        most one poll per task per ``PollPolicy.min_interval``. Returns True when the event
        moved a poll; an event of another provider, about no task, or about a task this
        session does not watch returns False (one about a task not watched *yet* is kept, a
        bounded number of them, and acted on once it is). Never blocks, never raises for an
        event; safe to call from any handler on the session's event loop.
        """
        if event.provider != self.provider or event.task_id is None:
            return False
        self._counts["webhooks_received"] += 1
        return self._jobs.notify(event.task_id, event.event_id)

    def notify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> WebhookEvent:
        """Verify one delivery (``flux_async.webhooks.verify`` with the session's provider and
        ``webhook_secret``) and :meth:`notify` its event. Raises WebhookVerificationError for a
        delivery to refuse (answer it with a 4xx); nothing is polled then."""
        try:
            event = verify_webhook(self.provider, headers, body, secrets=self._webhook_secrets, now=now)
        except WebhookVerificationError:
            self._counts["webhooks_refused"] += 1
            raise
        self.notify(event)
        return event

    # -- many jobs -----------------------------------------------------------------------------

    async def as_completed(
        self,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        *,
        download_to: str | os.PathLike[str] | None = None,
        on_submit: Callable[[int, TaskRef], None] | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Run many jobs; yield one :class:`Outcome` per input, in the order they finish.

        The input is read lazily and at most ``limits.max_outstanding`` jobs are in flight ahead
        of the consumer. A failed job is an ``Outcome`` with ``.error``; only session-fatal
        errors (bad key, no credits) end the iteration; if reading ``requests`` raises, no more
        jobs start, the jobs already read are delivered, and then that error is raised; so once
        the budget refuses a submit (its outcome carries ``BudgetExceededError``, as do those of
        jobs read but not yet sent), then ``BudgetExceededError`` is raised; likewise
        ``OutageError`` once the outage breaker pauses submission (``Limits.outage_streak``),
        after every accepted job is delivered. With ``download_to`` each result's
        images are written there as ``<index>-<task_id>.<ext>`` before the outcome is yielded.
        Leaving the loop early stops submitting; tasks already accepted stay listed in
        :meth:`statistics` (``abandoned_tasks``) and are named in a WARNING.

        ``on_submit(index, ref)`` is called synchronously the moment the provider accepts input
        ``index``'s task, before anything waits on it: the place to record the ``TaskRef`` of a
        paid task (a journal for a resumable batch). It must not block; an exception from it is
        logged and the job carries on.
        """
        tg = self._task_group()
        outbox = Outbox()
        batch = Batch(self, requests, None if download_to is None else Path(download_to), outbox, on_submit)
        self._batches.add(batch)
        tg.start_soon(batch.run)
        fatal: BaseException | None = None
        try:
            ready = outbox.items
            while (outcome := ready.popleft() if ready else await outbox.get()) is not None:
                batch.release()
                if outcome.task_id is not None:
                    # Delivered only now: until the consumer holds it, it stays listed.
                    batch.waiting.pop(outcome.task_id, None)
                if isinstance(outcome.error, _FATAL):
                    fatal = outcome.error
                    break
                yield outcome
        finally:
            outbox.consumer_gone = True
            batch.stop()
            self._batches.discard(batch)
        if fatal is not None:
            raise fatal
        if batch.input_error is not None:
            # Every job taken from the input before it broke has been delivered above.
            raise batch.input_error
        if batch.stop_error is not None:
            raise batch.stop_error

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of the session's counters."""
        sched = self._scheduler.statistics()
        outstanding = tuple(self._scheduler.outstanding())
        return SessionStatistics(
            provider=self.provider,
            submitted=self._counts["submitted"],
            submit_attempts=self._counts["submit_attempts"],
            submit_retries=self._counts["submit_retries"],
            recovered_submits=self._counts["recovered_submits"],
            uncertain_submits=self._counts["uncertain_submits"],
            succeeded=self._counts["succeeded"],
            failed=self._counts["failed"],
            outstanding=len(outstanding),
            outstanding_tasks=outstanding,
            abandoned_tasks=tuple(self._jobs.abandoned.values()),
            active_tasks=0 if self._jobs.limiter is None else self._jobs.limiter.active,
            polls_sent=sched.polls_sent,
            polls_per_finished_task=sched.polls_per_finished,
            poll_retries=sched.retries,
            rate_limited=sched.rate_limited + self._counts["rate_limited"],
            uploads=self._counts["uploads"],
            upload_cache_hits=self._counts["upload_cache_hits"],
            downloads=self._counts["downloads"],
            deduplicated=self._counts["deduplicated"],
            in_doubt=tuple(
                entry
                for entry in self.ledger.unsettled()
                if entry.in_doubt and entry.provider == self.provider and not self._submitter.in_flight(entry.key)
            ),
            unrecorded_tasks=tuple(self._submitter.unrecorded),
            webhooks_received=self._counts["webhooks_received"],
            webhooks_refused=self._counts["webhooks_refused"],
            webhook_wakes=self._counts["webhook_wakes"],
            outage_refusals=self._counts["outage_refusals"],
            adopted_tasks=0 if self._fleet is None else self._fleet.adopted,
            coordinator_failures=0 if self._fleet is None else self._fleet.failures,
            **self._spend.statistics(),
        )



def _webhook_url(url: object) -> str:
    """The webhook URL, checked before anything is sent (ConfigurationError otherwise)."""
    try:
        return webhook_target(url)
    except ValidationError:
        raise ConfigurationError("webhook_url must be an absolute http(s) URL with a host") from None


def _webhook_secrets(secret: str | Sequence[str] | None) -> tuple[str, ...]:
    """The webhook secrets (the first is sent to BFL; all verify deliveries)."""
    if secret is None:
        return ()
    try:
        return tuple(webhook_secret_field(value) for value in ((secret,) if isinstance(secret, str) else secret))
    except ValidationError:
        raise ConfigurationError("webhook_secret must be a non-empty printable string (or several)") from None


def _retryable_download(error: FluxError) -> bool:
    return isinstance(error, DownloadError) and error.retryable


def _as_request(request: GenerationRequest | None, fields: Mapping[str, Any]) -> GenerationRequest:
    if request is not None:
        if fields:
            raise TypeError("pass either a GenerationRequest or its fields as keywords, not both")
        return request
    return GenerationRequest(**fields)
