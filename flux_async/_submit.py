"""The money path: how a checked request becomes exactly one paid task, or a clear error.

It owns the submit POST and every decision around it: the POST is shielded from cancellation
once it is on the wire; it is retried only when no task can exist (``retry.classify_submit_failure``
says which failures those are, within the retry policy's deadline and the session's retry
budget); an ambiguous failure is resolved on toapis by looking the task up under the
``client_business_id`` sent with it, and surfaces everywhere else as
:class:`~flux_async.errors.SubmissionUncertainError`. Never resubmit blindly. It also owns the
active-task caps (:class:`ActiveLimiter`), so that the client itself never causes a cap 429.

It must not import the session, the scheduler, the batch machinery or aiohttp: it sees a
:class:`~flux_async._context.Context` (codec, transport, clock, policy, counters) and values.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

import anyio

from ._config import Limits
from ._context import Context
from ._http import HttpResponse
from .errors import FluxError, SubmissionUncertainError
from .models import GenerationRequest, TaskRef
from .retry import (
    SubmitDecision,
    classify_submit_failure,
    is_retryable_poll,
    retry_delay,
    should_retry,
)

__all__ = ["ActiveLimiter", "Submitter", "active_limiter"]

#: Documented active-task caps: provider -> (cap for the account, caps per model).
_PROVIDER_CAPS: Mapping[str, tuple[int | None, Mapping[str, int]]] = {
    "bfl": (24, {"flux-kontext-max": 6}),
}


class ActiveLimiter:
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


def active_limiter(provider: str, limits: Limits) -> ActiveLimiter | None:
    """The limiter for ``provider``'s documented caps as ``limits`` adjust them (None: no cap)."""
    total_cap, model_caps = _PROVIDER_CAPS.get(provider, (None, {}))
    if limits.max_active_tasks is not None:
        total_cap = limits.max_active_tasks
    if limits.max_active_per_model is not None:
        model_caps = limits.max_active_per_model
    return ActiveLimiter(total_cap, model_caps) if (total_cap or model_caps) else None


class Submitter:
    """Sends submits for one session: :meth:`send` returns the accepted task's ref."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def send(self, request: GenerationRequest) -> TaskRef:
        """POST the request, retrying only where no task can exist; resolve ambiguity safely."""
        ctx = self._ctx
        codec = ctx.codec
        counts = ctx.counts
        # 128 random bits in hex, like uuid4().hex, without building a UUID object.
        cbid = os.urandom(16).hex() if codec.supports_client_business_id else None
        policy = ctx.retry_policy
        attempt = 0
        started = ctx.now()
        while True:
            http = codec.build_submit(request, client_business_id=cbid)
            counts["submit_attempts"] += 1
            if attempt == 0:
                ctx.budget.record_request()
            error: FluxError
            try:
                # The POST is shielded: once it is on the wire its answer is awaited (within the
                # read timeout) even if the caller is cancelled, so an accepted task id is never
                # dropped on the floor.
                with anyio.CancelScope(shield=True):
                    response = await (ctx.transport or ctx.net()).send(http)
                    return self._parse_submit(response, request.model)
            except FluxError as exc:
                error = exc
            decision = classify_submit_failure(error)
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None or getattr(error, "status", None) == 429:
                counts["rate_limited"] += 1
            if decision is SubmitDecision.RETRY:
                delay = retry_delay(policy, attempt, ctx.rng, retry_after=retry_after)
                if should_retry(
                    policy, attempts=attempt + 1, elapsed=ctx.now() - started, delay=delay
                ) and ctx.budget.try_spend_retry():
                    counts["submit_retries"] += 1
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
                    ) from error
                # Shielded like the POST: a task may exist under cbid, and a cancelled caller
                # must not forget it (the lookup is bounded by the retry policy).
                with anyio.CancelScope(shield=True):
                    found = await self._lookup(cbid, request.model, cause=error)
                if found is not None:
                    counts["recovered_submits"] += 1
                    return found
                if should_retry(
                    policy, attempts=attempt + 1, elapsed=ctx.now() - started, delay=0.0
                ) and ctx.budget.try_spend_retry():
                    # The provider has no task under our id: the request never created one, so
                    # sending it again (with the same id) cannot pay twice.
                    counts["submit_retries"] += 1
                    attempt += 1
                    continue
            raise error

    def _parse_submit(self, response: HttpResponse, model: str) -> TaskRef:
        codec = self._ctx.codec
        if 200 <= response.status < 300:
            return codec.parse_submit(response, model=model)
        raise codec.parse_error(response)

    async def _lookup(self, cbid: str, model: str, *, cause: BaseException) -> TaskRef | None:
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
        ) from cause
