"""``Session``: the public entry point that submits jobs, waits on them and fetches their images.

A session owns one transport (one aiohttp connection pool), one shared poll scheduler and one
anyio task group. Every public call of the library lives here; the wire formats live in the
codecs, the timing in the scheduler, the retry rules in ``retry.py``. Nothing imports this
module except the package root and the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections import Counter, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import Any, Self, overload
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from . import catalog
from ._http import HttpResponse
from ._parking import Parking
from .errors import (
    AuthenticationError,
    ConfigurationError,
    FluxError,
    InsufficientCreditsError,
    ModerationError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    ValidationError,
)
from .models import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ImageInput,
    Outcome,
    TaskRef,
    TaskState,
    TaskStatus,
)
from .providers import get_codec
from .providers.base import Codec
from .retry import (
    RetryBudget,
    RetryPolicy,
    SubmitDecision,
    classify_submit_failure,
    is_retryable_poll,
    retry_delay,
    should_retry,
)
from .scheduler import PollPolicy, PollScheduler
from .transport import AiohttpTransport, DownloadLimits, Transport

__all__ = ["API_KEY_ENV", "Job", "Limits", "Session", "SessionStatistics"]

logger = logging.getLogger("flux_async")

#: Environment variables read for each provider's key, in order, before ``FLUX_ASYNC_API_KEY``.
API_KEY_ENV: Mapping[str, str] = {
    "toapis": "TOAPIS_API_KEY",
    "apimart": "APIMART_API_KEY",
    "bfl": "BFL_API_KEY",
}
_FALLBACK_KEY_ENV = "FLUX_ASYNC_API_KEY"

#: Documented active-task caps: provider -> (cap for the account, caps per model).
_PROVIDER_CAPS: Mapping[str, tuple[int | None, Mapping[str, int]]] = {
    "bfl": (24, {"flux-kontext-max": 6}),
}

_FATAL = (AuthenticationError, InsufficientCreditsError)


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds on concurrency, memory and time. Every field is keyword-only.

    ``max_active_tasks`` / ``max_active_per_model`` default to the provider's documented caps
    (BFL: 24 per account, 6 for flux-kontext-max) so the client never causes a cap 429; pass a
    number to match your account, or 0 to disable. ``job_timeout`` is each job's deadline from
    its submission (``TaskTimeoutError`` after it; the remote task may still run).
    ``read_timeout`` bounds each API request from start to full answer (connecting included,
    which ``connect_timeout`` bounds on its own); for a download it bounds each read.
    """

    max_concurrent_submits: int = 16
    max_outstanding: int = 512
    max_active_tasks: int | None = None
    max_active_per_model: Mapping[str, int] | None = None
    max_connections: int = 64
    max_concurrent_downloads: int = 8
    max_download_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    job_timeout: float | None = 1800.0

    def __attrs_post_init__(self) -> None:
        for name in ("max_concurrent_submits", "max_outstanding", "max_connections", "max_concurrent_downloads"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"Limits.{name} must be at least 1")


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of a session's counters.

    ``outstanding_tasks`` are the tasks still being watched; ``abandoned_tasks`` are accepted
    tasks whose results nobody is waiting for any more (a batch left early, a cancelled
    caller): they are kept here so that nothing paid for is forgotten (resume them by ref).
    """

    provider: str
    submitted: int
    submit_attempts: int
    submit_retries: int
    recovered_submits: int
    uncertain_submits: int
    succeeded: int
    failed: int
    outstanding: int
    outstanding_tasks: tuple[TaskRef, ...]
    abandoned_tasks: tuple[TaskRef, ...]
    active_tasks: int
    polls_sent: int
    polls_per_finished_task: float
    poll_retries: int
    rate_limited: int
    uploads: int
    upload_cache_hits: int
    downloads: int


class _ActiveLimiter:
    """Counts tasks active at the provider against its caps; waiters are woken on release."""

    def __init__(self, total: int | None, per_model: Mapping[str, int]) -> None:
        self._total = total or None
        self._per_model = {k: v for k, v in per_model.items() if v}
        self._active = 0
        self._by_model: Counter[str] = Counter()
        self._changed = anyio.Event()

    @property
    def active(self) -> int:
        return self._active

    def _fits(self, model: str) -> bool:
        if self._total is not None and self._active >= self._total:
            return False
        cap = self._per_model.get(model)
        return cap is None or self._by_model[model] < cap

    async def acquire(self, model: str) -> None:
        while not self._fits(model):
            await self._changed.wait()
        self.force(model)

    def force(self, model: str) -> None:
        """Count a task that is already active (a resumed one), even over the cap."""
        self._active += 1
        self._by_model[model] += 1

    def release(self, model: str) -> None:
        self._active -= 1
        self._by_model[model] -= 1
        self._changed.set()
        self._changed = anyio.Event()


class Job:
    """One submitted task. ``await job.result()`` waits on the session's shared scheduler.

    A waiting job is a few slots: its wake-up event exists only once somebody waits on it.
    """

    __slots__ = ("_done", "_error", "_event", "_listeners", "_session", "_state", "ref", "request")

    def __init__(self, ref: TaskRef, request: GenerationRequest | None, session: Session) -> None:
        self.ref = ref
        self.request = request
        self._session: Session | None = session
        self._done = False
        self._event: anyio.Event | None = None
        self._state: TaskState | None = None
        self._error: BaseException | None = None
        self._listeners: list[Callable[[Job], None]] | None = None

    def __repr__(self) -> str:
        return f"Job(task_id={self.ref.task_id!r}, provider={self.ref.provider!r}, done={self._done})"

    @property
    def task_id(self) -> str:
        """The provider's task id."""
        return self.ref.task_id

    @property
    def state(self) -> TaskState | None:
        """The terminal state, once known."""
        return self._state

    def done(self) -> bool:
        """True once the task reached a terminal state (or watching it failed)."""
        return self._done

    @property
    def error(self) -> BaseException | None:
        """The error that ended the job, once done; None on success."""
        return self._error

    async def wait(self) -> None:
        """Wait until the job is done, without raising its error."""
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    async def result(self) -> GenerationResult:
        """Wait for the task and return its result, or raise the error that ended it."""
        await self.wait()
        if self._error is not None:
            raise self._error
        assert self._state is not None
        assert self._state.result is not None
        return self._state.result

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once the job is done (at once if it already is).

        The callback runs synchronously on the session's event loop and must not block; it is
        how many jobs are awaited without a coroutine each.
        """
        if self._done:
            callback(self)
        else:
            self._add_listener(callback)

    def _add_listener(self, listener: Callable[[Job], None]) -> None:
        if self._listeners is None:
            self._listeners = []
        self._listeners.append(listener)

    def _on_done(self, value: TaskState | BaseException) -> None:
        """Called once by the scheduler with the terminal state or the error that ended it."""
        if isinstance(value, BaseException):
            self._error = value
        else:
            self._state = value
            self._error = _error_for_state(value)
        self._done = True
        session, self._session = self._session, None
        if session is not None:
            session._job_finished(self)
        if self._event is not None:
            self._event.set()
        listeners, self._listeners = self._listeners, None
        for listener in listeners or ():
            listener(self)


def _error_for_state(state: TaskState) -> BaseException | None:
    """The error a terminal non-success state stands for (None for success)."""
    failure = state.failure
    message = failure.message if failure is not None else state.raw_status
    code = failure.code if failure is not None else None
    if state.status is TaskStatus.SUCCEEDED:
        if state.result is None or not state.result.images:
            return TaskFailedError("task completed without any image", task_id=state.task_id)
        return None
    if state.status is TaskStatus.MODERATED:
        return ModerationError(f"moderated: {message}", task_id=state.task_id)
    if state.status is TaskStatus.NOT_FOUND:
        return TaskNotFoundError(f"task not found: {message}", task_id=state.task_id)
    return TaskFailedError(message or "task failed", task_id=state.task_id, code=code)


def _resolve_api_key(provider: str, api_key: str | None) -> str:
    if api_key:
        return api_key
    names = [API_KEY_ENV[provider], _FALLBACK_KEY_ENV] if provider in API_KEY_ENV else [_FALLBACK_KEY_ENV]
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigurationError(
        f"no API key for {provider!r}: pass api_key=... or set {' or '.join(names)}"
    )


class Session:
    """A client session for one provider; an async context manager.

    Cheap to keep for the life of an application and safe to share between concurrent tasks:
    they all ride the same scheduler and connection pool. Configuration is keyword-only.
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
    ) -> None:
        if provider not in catalog.PROVIDERS:
            raise ConfigurationError(
                f"unknown provider {provider!r}; choose one of {', '.join(catalog.PROVIDERS)}"
            )
        self.provider = provider
        self._codec: Codec = get_codec(provider, api_key=_resolve_api_key(provider, api_key))
        self._base_url = (base_url or os.environ.get("FLUX_ASYNC_BASE_URL") or self._codec.default_base_url).rstrip("/")
        self.poll_policy = poll_policy or PollPolicy()
        self.retry_policy = retry_policy or RetryPolicy()
        self.limits = limits or Limits()
        self._http_session = http_session
        self._transport_arg = transport
        self._transport: Transport | None = None
        self._rng = random.Random(seed)
        self._sleep = sleep or anyio.sleep
        self._clock = clock
        self._budget = RetryBudget(self.retry_policy)
        self._scheduler = PollScheduler(
            self._poll, policy=self.poll_policy, clock=clock, sleep=sleep, rng=random.Random(self._rng.random()),
            retry_budget=self._budget,
        )
        total_cap, model_caps = _PROVIDER_CAPS.get(provider, (None, {}))
        if self.limits.max_active_tasks is not None:
            total_cap = self.limits.max_active_tasks
        if self.limits.max_active_per_model is not None:
            model_caps = self.limits.max_active_per_model
        self._limiter = _ActiveLimiter(total_cap, model_caps) if (total_cap or model_caps) else None
        self._submit_slots = anyio.Semaphore(self.limits.max_concurrent_submits)
        self._download_slots = anyio.Semaphore(self.limits.max_concurrent_downloads)
        self._download_limits = DownloadLimits(
            max_bytes=self.limits.max_download_bytes, max_redirects=self.limits.max_redirects
        )
        self._tg: TaskGroup | None = None
        self._jobs: dict[str, Job] = {}
        self._abandoned: dict[str, TaskRef] = {}
        self._batches: set[_Batch] = set()
        self._uploads: dict[str, _Upload] = {}
        self._counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Session(provider={self.provider!r}, base_url={self._base_url!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("this Session is already open")
        self._transport = self._transport_arg or AiohttpTransport(
            base_url=self._base_url,
            session=self._http_session,
            max_connections=self.limits.max_connections,
            connect_timeout=self.limits.connect_timeout,
            read_timeout=self.limits.read_timeout,
        )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._scheduler.run)
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
            left = self._scheduler.outstanding()
            if left:
                for ref in left:
                    self._abandoned[ref.task_id] = ref
                shown = ", ".join(ref.task_id for ref in left[:20])
                more = f" and {len(left) - 20} more" if len(left) > 20 else ""
                logger.warning(
                    "session closed with %d task(s) still running at %s: %s%s "
                    "(resume them with Session.resume; they are listed in statistics().abandoned_tasks)",
                    len(left), self.provider, shown, more,
                )
            if self._transport is not None:
                await self._transport.aclose()
                if self._transport_arg is None:
                    self._transport = None

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        # anyio.current_time() is the asyncio loop's time; read it directly (ten times cheaper).
        return asyncio.get_running_loop().time()

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("use the Session as `async with Session(...) as session:`")
        return self._tg

    def _net(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("use the Session as `async with Session(...) as session:`")
        return self._transport

    # -- one job -------------------------------------------------------------------------------

    @overload
    async def generate(self, request: GenerationRequest, /) -> GenerationResult: ...
    @overload
    async def generate(self, /, **fields: Any) -> GenerationResult: ...

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
            self._abandon(job.ref)
            raise

    async def submit(self, request: GenerationRequest) -> Job:
        """Validate, upload local images, submit; return once the provider accepted the task."""
        return await self._submit(request, on_accept=None)

    async def _submit(self, request: GenerationRequest, *, on_accept: Callable[[Job], None] | None) -> Job:
        self._task_group()
        checked = catalog.validate(request, self.provider)
        slots = self._submit_slots
        try:
            slots.acquire_nowait()  # no trip through the event loop when a slot is free
        except anyio.WouldBlock:
            await slots.acquire()
        try:
            if checked.images:
                checked = await self._prepare_images(checked)
            model = checked.model
            limiter = self._limiter
            if limiter is not None:
                await limiter.acquire(model)
            try:
                ref = await self._submit_ref(checked)
            except BaseException:
                if limiter is not None:
                    limiter.release(model)
                raise
            # No checkpoint between acceptance and registration: a cancelled caller cannot
            # lose a task that was paid for.
            job = Job(ref, request, self)
            self._counts["submitted"] += 1
            if on_accept is not None:
                on_accept(job)
            self._watch(job, initial=None)
            return job
        finally:
            slots.release()

    def resume(self, ref: TaskRef | str) -> Job:
        """Re-attach to a task submitted earlier (by this or another session); never resubmits.

        A plain task id string works on the aggregators; on BFL pass the ``TaskRef`` (or the
        ``polling_url`` itself), because its poll URL cannot be rebuilt from the id.
        """
        self._task_group()
        ref = self._coerce_ref(ref)
        existing = self._jobs.get(ref.task_id)
        if existing is not None:
            return existing
        job = Job(ref, None, self)
        if self._limiter is not None:
            self._limiter.force(ref.model or "")
        self._watch(job, initial=None)
        return job

    async def get_task(self, ref: TaskRef | str) -> TaskState:
        """One status check of a task (retried on transient failures)."""
        ref = self._coerce_ref(ref)
        attempt = 0
        while True:
            try:
                return await self._poll(ref)
            except FluxError as exc:
                if not is_retryable_poll(exc) or attempt + 1 >= self.retry_policy.max_attempts:
                    raise
                await self._sleep(retry_delay(self.retry_policy, attempt, self._rng, retry_after=getattr(exc, "retry_after", None)))
                attempt += 1

    def _coerce_ref(self, ref: TaskRef | str) -> TaskRef:
        if isinstance(ref, TaskRef):
            if ref.provider != self.provider:
                raise ConfigurationError(f"task {ref.task_id} belongs to {ref.provider!r}, not {self.provider!r}")
            return ref
        if self.provider == "bfl":
            if ref.startswith(("http://", "https://")) and "id=" in ref:
                task_id = ref.split("id=", 1)[1].split("&", 1)[0]
                return TaskRef(provider="bfl", task_id=task_id, polling_url=ref)
            raise ConfigurationError(
                "a BFL task needs its polling_url: pass the TaskRef (job.ref) or the polling_url itself"
            )
        return TaskRef(provider=self.provider, task_id=ref)

    def _check_polling_host(self, url: str) -> None:
        """Refuse to send the key to a polling URL on a host we do not trust.

        BFL's ``polling_url`` names a regional host and is used verbatim, with the key; a
        tampered ref (a resume file, say) must not be able to send the key anywhere else. Trusted:
        the session's own base host and BFL's hosts (``bfl.ai`` and its subdomains).
        """
        host = (urlsplit(url).hostname or "").lower()
        base = (urlsplit(self._base_url).hostname or "").lower()
        if host and (host == base or host == "bfl.ai" or host.endswith(".bfl.ai")):
            return
        raise ConfigurationError(
            f"refusing to poll {host or url!r}: a polling URL must be on {base!r} or a bfl.ai host"
        )

    # -- submission ----------------------------------------------------------------------------

    def _watch(self, job: Job, *, initial: TaskState | None) -> None:
        self._jobs[job.ref.task_id] = job
        deadline = None
        if self.limits.job_timeout is not None:
            deadline = self._now() + self.limits.job_timeout
        self._scheduler.watch(job.ref, job._on_done, deadline=deadline, initial=initial)

    def _job_finished(self, job: Job) -> None:
        self._jobs.pop(job.ref.task_id, None)
        if self._limiter is not None:
            self._limiter.release(job.ref.model or "")
        self._counts["succeeded" if job._error is None else "failed"] += 1

    async def _submit_ref(self, request: GenerationRequest) -> TaskRef:
        """POST the request, retrying only where no task can exist; resolve ambiguity safely."""
        codec = self._codec
        # 128 random bits in hex, like uuid4().hex, without building a UUID object.
        cbid = os.urandom(16).hex() if codec.supports_client_business_id else None
        policy = self.retry_policy
        attempt = 0
        started = self._now()
        while True:
            http = codec.build_submit(request, client_business_id=cbid)
            self._counts["submit_attempts"] += 1
            if attempt == 0:
                self._budget.record_request()
            error: FluxError
            try:
                # The POST is shielded: once it is on the wire its answer is awaited (within the
                # read timeout) even if the caller is cancelled, so an accepted task id is never
                # dropped on the floor.
                with anyio.CancelScope(shield=True):
                    response = await (self._transport or self._net()).send(http)
                    return self._parse_submit(response, request.model)
            except FluxError as exc:
                error = exc
            decision = classify_submit_failure(error)
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None or getattr(error, "status", None) == 429:
                self._counts["rate_limited"] += 1
            if decision is SubmitDecision.RETRY:
                delay = retry_delay(policy, attempt, self._rng, retry_after=retry_after)
                if should_retry(
                    policy, attempts=attempt + 1, elapsed=self._now() - started, delay=delay
                ) and self._budget.try_spend_retry():
                    self._counts["submit_retries"] += 1
                    await self._sleep(delay)
                    attempt += 1
                    continue
            if decision is SubmitDecision.AMBIGUOUS:
                if cbid is None:
                    self._counts["uncertain_submits"] += 1
                    raise SubmissionUncertainError(
                        f"the submit may have created a task at {self.provider} ({error}); "
                        "it was not retried, to avoid paying twice",
                        provider=self.provider,
                        model=request.model,
                    ) from error
                # Shielded like the POST: a task may exist under cbid, and a cancelled caller
                # must not forget it (the lookup is bounded by the retry policy).
                with anyio.CancelScope(shield=True):
                    found = await self._lookup(cbid, request.model, cause=error)
                if found is not None:
                    self._counts["recovered_submits"] += 1
                    return found
                if should_retry(
                    policy, attempts=attempt + 1, elapsed=self._now() - started, delay=0.0
                ) and self._budget.try_spend_retry():
                    # The provider has no task under our id: the request never created one, so
                    # sending it again (with the same id) cannot pay twice.
                    self._counts["submit_retries"] += 1
                    attempt += 1
                    continue
            raise error

    def _parse_submit(self, response: HttpResponse, model: str) -> TaskRef:
        if 200 <= response.status < 300:
            return self._codec.parse_submit(response, model=model)
        raise self._codec.parse_error(response)

    async def _lookup(self, cbid: str, model: str, *, cause: BaseException) -> TaskRef | None:
        """Find a task by its client_business_id; raise SubmissionUncertainError if we cannot tell."""
        request = self._codec.build_lookup(cbid)
        assert request is not None
        policy = self.retry_policy
        for attempt in range(policy.max_attempts):
            # Give a slow provider a moment to finish creating the task before asking for it.
            await self._sleep(retry_delay(policy, attempt, self._rng, retry_after=None))
            try:
                response = await self._net().send(request)
                if response.status == 404 or 200 <= response.status < 300:
                    return self._codec.parse_lookup(response, model=model)
                raise self._codec.parse_error(response)
            except FluxError as exc:
                if not is_retryable_poll(exc):
                    break
        self._counts["uncertain_submits"] += 1
        raise SubmissionUncertainError(
            f"the submit may have created a task at {self.provider} and it could not be looked up "
            f"(client_business_id={cbid})",
            provider=self.provider,
            model=model,
            client_business_id=cbid,
        ) from cause

    async def _poll(self, ref: TaskRef) -> TaskState:
        if ref.polling_url is not None:
            self._check_polling_host(ref.polling_url)
        response = await (self._transport or self._net()).send(self._codec.build_poll(ref))
        return self._codec.parse_poll(response, ref=ref)

    # -- uploads and downloads -----------------------------------------------------------------

    async def _prepare_images(self, request: GenerationRequest) -> GenerationRequest:
        if not request.images:
            return request
        images: list[ImageInput] = []
        changed = False
        for index, image in enumerate(request.images):
            kind = catalog.classify_image(image, index=index)
            if kind == "url":
                images.append(image)
                continue
            changed = True
            data = image if isinstance(image, bytes) else await anyio.Path(os.fspath(image)).read_bytes()
            if self.provider == "bfl":
                images.append(data)
            else:
                images.append(await self._upload_bytes(data, _filename(image)))
        return attrs.evolve(request, images=tuple(images)) if changed else request

    async def upload(self, source: str | os.PathLike[str] | bytes) -> str:
        """Upload a local image (path or bytes) and return its URL (aggregators only).

        The same bytes are uploaded once per session, however many requests use them.
        """
        self._task_group()
        if self.provider == "bfl":
            raise ConfigurationError("BFL has no upload API: pass the bytes or path in `images` and they are sent inline")
        data = source if isinstance(source, bytes) else await anyio.Path(os.fspath(source)).read_bytes()
        # A request's images were checked by catalog.validate; a direct upload is checked here.
        limit = catalog.max_upload_bytes(self.provider)
        if len(data) > limit:
            raise ValidationError("images", f"<{len(data)} bytes>", f"at most {limit} bytes", reason="image is too large")
        if catalog.sniff_image_type(data) is None:
            raise ValidationError("images", f"<{len(data)} bytes>", "JPEG, PNG, WebP or GIF", reason="not a supported image")
        return await self._upload_bytes(data, _filename(source))

    async def _upload_bytes(self, data: bytes, filename: str) -> str:
        """Upload checked bytes once per session (``catalog.validate`` or :meth:`upload` checked them)."""
        content_type = catalog.sniff_image_type(data) or "application/octet-stream"
        digest = hashlib.sha256(data).hexdigest()
        entry = self._uploads.get(digest)
        if entry is not None:
            self._counts["upload_cache_hits"] += 1
            return await entry.get()
        entry = _Upload()
        self._uploads[digest] = entry
        try:
            url = await self._send_upload(data, filename, content_type)
        except BaseException as exc:
            del self._uploads[digest]
            entry.fail(exc)
            raise
        entry.set(url)
        return url

    async def _send_upload(self, data: bytes, filename: str, content_type: str) -> str:
        request = self._codec.build_upload(data, filename=filename, content_type=content_type)
        policy = self.retry_policy
        attempt = 0
        while True:
            try:
                response = await self._net().send(request)
                self._counts["uploads"] += 1
                return self._codec.parse_upload(response)
            except FluxError as exc:
                # An upload creates no paid task: it is safe to repeat on any transient failure.
                if not is_retryable_poll(exc) or attempt + 1 >= policy.max_attempts:
                    raise
                await self._sleep(retry_delay(policy, attempt, self._rng, retry_after=getattr(exc, "retry_after", None)))
                attempt += 1

    @overload
    async def download(self, image: GeneratedImage | str, path: None = None) -> bytes: ...
    @overload
    async def download(self, image: GeneratedImage | str, path: str | os.PathLike[str]) -> Path: ...

    async def download(self, image: GeneratedImage | str, path: str | os.PathLike[str] | None = None) -> bytes | Path:
        """Fetch a result image: bytes, or a file written atomically at ``path``.

        The file's suffix is set from the image's real type (``.png``, ``.jpg``, ``.webp``).
        Only http(s), a few redirects, a byte cap and magic-byte checks; no key is sent.
        """
        url = image.url if isinstance(image, GeneratedImage) else image
        expires = image.expires_at if isinstance(image, GeneratedImage) else None
        async with self._download_slots:
            data, _ext = await self._net().download(
                url, None if path is None else Path(path), limits=self._download_limits, expires_at=expires
            )
        self._counts["downloads"] += 1
        return data

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
        jobs start, the jobs already read are delivered, and then that error is raised. With ``download_to`` each result's
        images are written there as ``<index>-<task_id>.<ext>`` before the outcome is yielded.
        Leaving the loop early stops submitting; tasks already accepted stay listed in
        :meth:`statistics` (``abandoned_tasks``) and are named in a WARNING.

        ``on_submit(index, ref)`` is called synchronously the moment the provider accepts input
        ``index``'s task, before anything waits on it: the place to record the ``TaskRef`` of a
        paid task (a journal for a resumable batch). It must not block; an exception from it is
        logged and the job carries on.
        """
        tg = self._task_group()
        outbox = _Outbox()
        batch = _Batch(self, requests, None if download_to is None else Path(download_to), outbox, on_submit)
        self._batches.add(batch)
        tg.start_soon(batch.run)
        fatal: BaseException | None = None
        try:
            ready = outbox._items
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

    def _abandon(self, ref: TaskRef) -> None:
        self._abandoned[ref.task_id] = ref

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
            abandoned_tasks=tuple(self._abandoned.values()),
            active_tasks=0 if self._limiter is None else self._limiter.active,
            polls_sent=sched.polls_sent,
            polls_per_finished_task=sched.polls_per_finished,
            poll_retries=sched.retries,
            rate_limited=sched.rate_limited + self._counts["rate_limited"],
            uploads=self._counts["uploads"],
            upload_cache_hits=self._counts["upload_cache_hits"],
            downloads=self._counts["downloads"],
        )


def _filename(source: ImageInput) -> str:
    if isinstance(source, bytes):
        return "image"
    return Path(os.fspath(source)).name or "image"


def _as_request(request: GenerationRequest | None, fields: Mapping[str, Any]) -> GenerationRequest:
    if request is not None:
        if fields:
            raise TypeError("pass either a GenerationRequest or its fields as keywords, not both")
        return request
    return GenerationRequest(**fields)


class _Upload:
    """One upload shared by every request that uses the same bytes."""

    __slots__ = ("_done", "_error", "_url")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._url: str | None = None
        self._error: BaseException | None = None

    def set(self, url: str) -> None:
        self._url = url
        self._done.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._done.set()

    async def get(self) -> str:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._url is not None
        return self._url


class _Outbox:
    """Finished outcomes waiting for the consumer: a deque and a parked consumer.

    The consumer takes whatever is ready without a trip through the event loop (a memory object
    stream checkpoints on every receive), and parks only when nothing is.
    """

    __slots__ = ("_consumer", "_items", "consumer_gone", "finished")

    def __init__(self) -> None:
        self._items: deque[Outcome] = deque()
        self._consumer = Parking()
        self.finished = False
        self.consumer_gone = False

    def put(self, outcome: Outcome) -> bool:
        """Queue an outcome; False when nobody will ever take it."""
        if self.consumer_gone:
            return False
        self._items.append(outcome)
        self._consumer.wake_one()
        return True

    def finish(self) -> None:
        """No outcome will follow."""
        self.finished = True
        self._consumer.wake_one()

    async def get(self) -> Outcome | None:
        """The next outcome, or None once finished and drained."""
        while not self._items:
            if self.finished:
                return None
            await self._consumer.wait()
        return self._items.popleft()


class _Batch:
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
        outbox: _Outbox,
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
        self.stopped = False
        self.all_done = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.tg: TaskGroup | None = None
        self.waiting: dict[str, Job] = {}
        self.queue: deque[tuple[int, GenerationRequest]] = deque()  # read by the feeder
        self.submitters = 0
        self.idle = Parking()  # submitters with nothing to take
        self.feeder = Parking()  # the feeder of an async input, waiting for a free slot

    async def run(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                async with anyio.create_task_group() as tg:
                    self.tg = tg
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
        finally:
            self.tg = None
            self.outbox.finish()

    async def _feed(self, requests: AsyncIterable[GenerationRequest]) -> None:
        """Read an async input into the queue, a free slot at a time (an item is asked for
        only once there is room for it)."""
        iterator = aiter(requests)
        try:
            while True:
                while not self.free and not self.stopped:
                    await self.feeder.wait()
                if self.stopped:
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
        return self._take(request)

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
        if self.waiting:
            for job in self.waiting.values():
                self.session._abandon(job.ref)
            logger.warning(
                "batch left early with %d accepted task(s) not delivered: %s%s "
                "(listed in statistics().abandoned_tasks; resume them by ref)",
                len(self.waiting),
                ", ".join(list(self.waiting)[:20]),
                " ..." if len(self.waiting) > 20 else "",
            )

    async def _submitter(self) -> None:
        try:
            while not self.stopped:
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
                try:
                    await self.session._submit(request, on_accept=self._accepted(index))
                except Exception as exc:
                    self._deliver(Outcome(index=index, request=request, error=exc))
        finally:
            self.submitters -= 1

    def _accepted(self, index: int) -> Callable[[Job], None]:
        def accepted(job: Job) -> None:
            # Runs synchronously when the provider accepts the task, before any checkpoint.
            self.waiting[job.ref.task_id] = job
            if self.stopped:
                # A POST that was already on the wire when the consumer left.
                self.session._abandon(job.ref)
            job._add_listener(lambda done: self.job_done(done, index))
            if self.on_submit is not None:
                try:
                    self.on_submit(index, job.ref)
                except Exception:
                    logger.exception("on_submit failed for input %d (task %s)", index, job.ref.task_id)

        return accepted

    def job_done(self, job: Job, index: int) -> None:
        if self.stopped:
            if job.ref.task_id in self.waiting:
                self.session._abandon(job.ref)
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
                target = self.download_to / f"{index}-{_safe(job.task_id)}{suffix}.img"
                files.append(await self.session.download(image, target))
        except Exception as exc:
            self._deliver(Outcome(index=index, request=job.request, task_id=job.task_id, result=result, error=exc, files=tuple(files)))
            return
        self._deliver(Outcome(index=index, request=job.request, task_id=job.task_id, result=result, files=tuple(files)))

    def _deliver(self, outcome: Outcome) -> None:
        if not self.outbox.put(outcome):
            job = self.waiting.get(outcome.task_id) if outcome.task_id is not None else None
            if job is not None:
                self.session._abandon(job.ref)
        self.pending -= 1
        if self.pending == 0 and self.input_done:
            self.all_done.set()


def _outcome(index: int, job: Job) -> Outcome:
    assert job.request is not None
    error, state = job._error, job._state
    result = state.result if state is not None and error is None else None
    return Outcome(index=index, request=job.request, task_id=job.ref.task_id, result=result, error=error)


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]
