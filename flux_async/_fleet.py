"""The session's side of a coordinator shared by many processes (``Session(coordinator=...)``):
idempotency claims, the account-wide active-task caps, the shared budget, task ownership and the
adoption of orphaned tasks, each a call to :class:`~flux_async.fleet.RedisCoordinator` at the
place where the in-process piece acts.

Without a coordinator nothing here exists and the session's in-process pieces (``_active``,
``_spend``, the submitter's claims) do it all; with one, those stay for the session's own
bookkeeping and this module asks the coordinator first:

- a submit under a caller's idempotency key **claims** the key account-wide before anything
  else; a second process with the key waits for the first one's task instead of paying
  (``claim``), and the claim is published with the task or dropped (``publish``, ``drop``);
- a submit takes an account-wide **slot** under the provider's caps before its POST, bound to
  the task once accepted and freed by whichever process sees the task end (``acquire``,
  ``release_slot``, ``accepted``, ``finished``);
- a submit **reserves** its cost against the shared budget after the session's own check
  (``reserve``); settlements and releases follow (``settled``, ``released``);
- every accepted task is **owned** by this process while it watches it; a task whose owner
  died is **adopted** by a live process, watched, downloaded when ``adopt_download_to`` is
  set, and settled in the (shared) ledger (``run``).

A CoordinatorError from a claim, a slot or a reservation fails the submit before anything is
sent: never pay on a guess. Once a task is accepted, a coordinator failure is logged and the
task is still watched and settled here. Calls that follow the end of a job run in order in one
worker owned by the session's task group (the job's end is synchronous). It must not import the
transport, the scheduler or the codecs, nor ``redis`` itself (the coordinator does).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .errors import BudgetExceededError, CoordinatorError
from .models import TaskRef

if TYPE_CHECKING:
    from ._job import Job
    from .fleet import RedisCoordinator

__all__ = ["Fleet"]

_log = logging.getLogger("flux_async.fleet")

#: How long a claim on an idempotency key lives without its task (its process's lease ends it
#: sooner when the process dies).
_CLAIM_TTL = 600.0
#: The longest one wait for another process's task under the same key.
_CLAIM_WAIT = 3600.0
#: Bound on a clean-up call made while a submit is being abandoned.
_CLEANUP_TIMEOUT = 5.0


class Fleet:
    """One session's use of a coordinator (see the module docstring)."""

    def __init__(
        self,
        coordinator: RedisCoordinator,
        provider: str,
        *,
        total_cap: int | None,
        model_caps: Mapping[str, int],
        max_spend_usd: float | None,
        adopt_download_to: Path | None = None,
        adopt: bool = True,
    ) -> None:
        self.coordinator = coordinator
        self.provider = provider
        self.total_cap = total_cap or None
        self.model_caps = {model: cap for model, cap in model_caps.items() if cap}
        #: True when the provider has caps: slots are taken account-wide.
        self.capped = self.total_cap is not None or bool(self.model_caps)
        self.max_spend_usd = max_spend_usd
        self.adopt_download_to = adopt_download_to
        #: False: this session never takes over other processes' tasks (its own are still owned,
        #: so others can adopt them).
        self.adopt = adopt
        self.entered = False  # the session entered the coordinator (and leaves it)
        self._pending: deque[tuple[str, Callable[[], Awaitable[object]]]] = deque()
        self._wake = anyio.Event()
        self.adopted = 0
        self.failures = 0

    # -- idempotency claims --------------------------------------------------------------------

    async def claim(self, key: str) -> TaskRef | None:
        """Claim ``key`` for this process (None), or the task another process made under it."""
        coordinator = self.coordinator
        while True:
            if await coordinator.claim(key, ttl=_CLAIM_TTL):
                return None
            found = await coordinator.wait_for(key, timeout=_CLAIM_WAIT)
            if found is not None:
                return TaskRef.from_dict(found)
            # Dropped without a task, or its process died: claim it again. (A POST that died
            # with its process is caught by its ledger intent, never sent twice.)

    async def publish(self, key: str, ref: TaskRef) -> None:
        try:
            await self.coordinator.publish(key, _ref_fields(ref))
        except CoordinatorError as exc:
            self._failed("publish the task of a key", exc)

    async def drop(self, key: str) -> None:
        await self._cleanup("drop the claim on a key", lambda: self.coordinator.drop_claim(key))

    # -- active-task slots ---------------------------------------------------------------------

    async def acquire(self, model: str, key: str) -> None:
        """Take an account-wide slot for the submit under ``key`` (waits under the caps)."""
        await self.coordinator.acquire_active(
            self.provider, model, total=self.total_cap, per_model=self.model_caps.get(model), token=key
        )

    async def release_slot(self, model: str, key: str) -> None:
        """Free the slot of a submit that made no task of ours."""
        await self._cleanup(
            "free an active-task slot", lambda: self.coordinator.release_active(self.provider, model, key)
        )

    async def accepted(self, key: str, ref: TaskRef) -> None:
        """The task was accepted under ``key``: bind its slot to it and own it. Never raises:
        the task is paid for and watched here whatever the coordinator says."""
        try:
            if self.capped:
                await self.coordinator.bind_active(key, ref.task_id)
            await self.coordinator.own({**_ref_fields(ref), "key": key})
        except CoordinatorError as exc:
            self._failed(f"record task {ref.task_id} account-wide", exc)

    def attached(self, ref: TaskRef, key: str | None) -> None:
        """A task that exists already is watched here (resumed, or adopted): count it once
        account-wide and own it (queued)."""
        # Its own token: the submit that made it (here or elsewhere) may hold one under its key.
        token = f"task:{ref.task_id}"

        async def record() -> None:
            coordinator = self.coordinator
            if self.capped:
                await coordinator.acquire_active(
                    self.provider, ref.model or "", total=None, per_model=None, token=token
                )
                await coordinator.bind_active(token, ref.task_id)
            fields = _ref_fields(ref)
            await coordinator.own({**fields, "key": key} if key else fields)

        self._queue(f"record task {ref.task_id} account-wide", record)

    def finished(self, task_id: str, *, settled: bool) -> None:
        """The job ended: free its slot and, once it is settled, forget its ownership (queued).
        A job that ended without a settlement (a timeout) stays owned: it may be adopted."""
        coordinator = self.coordinator
        if self.capped:
            self._queue(f"free the slot of task {task_id}", lambda: coordinator.release_task(task_id))
        if settled:
            self._queue(f"disown task {task_id}", lambda: coordinator.disown(task_id))

    # -- the shared budget ---------------------------------------------------------------------

    async def reserve(self, key: str, model: str, usd: float | None) -> None:
        """Reserve ``usd`` against the account's budget; BudgetExceededError when it has no
        room (nothing held). A job of unknown cost under no budget reserves nothing."""
        cap = self.max_spend_usd
        if usd is None:
            return
        if not await self.coordinator.reserve(self.provider, key, usd, cap=cap):
            settled, reserved = await self.coordinator.spend(self.provider)
            assert cap is not None
            raise BudgetExceededError(
                f"submitting this {model} job (${usd:.4f}) would pass the budget of ${cap:.2f} "
                f"shared by every process of the account: ${settled:.4f} spent and "
                f"${reserved:.4f} reserved by jobs in flight or in doubt; nothing was sent",
                model=model,
                max_spend_usd=cap,
                spent_usd=settled,
                reserved_usd=reserved,
                needed_usd=usd,
            )

    def released(self, key: str) -> None:
        """Nothing was sent under ``key``: drop its shared reservation (queued)."""
        coordinator, provider = self.coordinator, self.provider
        self._queue("release a reservation", lambda: coordinator.release(provider, key))

    def settled(self, key: str, model: str | None, usd: float | None, charged: bool) -> None:
        """``key``'s job settled: its reservation becomes spend (queued). ``charged`` False:
        nothing was charged (0); ``usd`` None: what it reserved."""
        coordinator, provider = self.coordinator, self.provider
        amount = 0.0 if not charged else usd
        self._queue(
            "settle a job's spend",
            lambda: coordinator.settle_spend(provider, key, amount, model=model),
        )

    # -- the worker and the adoption of orphans ------------------------------------------------

    async def run(self, attach: Callable[[TaskRef, str | None], Job], download: Callable[[Job], Coroutine[Any, Any, Any]]) -> None:
        """Send the queued calls in order and adopt orphaned tasks, until cancelled (the
        session's task group owns this)."""
        async with anyio.create_task_group() as tg:
            if self.adopt:
                tg.start_soon(self._adopt_loop, attach, download)
            while True:
                await self.flush()
                self._wake = anyio.Event()
                if not self._pending:
                    await self._wake.wait()

    async def flush(self) -> None:
        """Send what is queued now (at the session's close, bounded by the caller)."""
        while self._pending:
            what, call = self._pending.popleft()
            try:
                await call()
            except Exception as exc:  # a bookkeeping call: never the end of the session
                self._failed(what, exc)

    async def adopt_orphans(self, attach: Callable[[TaskRef, str | None], Job]) -> list[Job]:
        """Take over every orphaned task nobody adopted yet: watched here from now on (the
        caller downloads them when ``adopt_download_to`` is set)."""
        jobs: list[Job] = []
        coordinator = self.coordinator
        for fields in await coordinator.orphans(limit=100):
            task_id = fields.get("task_id")
            if not task_id or fields.get("provider") != self.provider:
                continue
            if not await coordinator.adopt(task_id):
                continue
            ref = TaskRef.from_dict({k: v for k, v in fields.items() if k != "key"})
            job = attach(ref, fields.get("key"))
            self.adopted += 1
            _log.warning("adopted task %s of a process that stopped", task_id)
            jobs.append(job)
        return jobs

    async def _adopt_loop(
        self, attach: Callable[[TaskRef, str | None], Job], download: Callable[[Job], Coroutine[Any, Any, Any]]
    ) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    for job in await self.adopt_orphans(attach):
                        if self.adopt_download_to is not None:
                            tg.start_soon(download, job)
                except CoordinatorError as exc:
                    self._failed("adopt orphaned tasks", exc)
                await anyio.sleep(self.coordinator.lease_ttl / 2)

    # -- internals -----------------------------------------------------------------------------

    def _queue(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        self._pending.append((what, call))
        self._wake.set()

    async def _cleanup(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        """A clean-up after a submit that made no task: shielded and bounded, never raising."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT):
            try:
                await call()
            except CoordinatorError as exc:
                self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        _log.error("the coordinator could not %s: %s", what, exc)


def _ref_fields(ref: TaskRef) -> dict[str, str]:
    return {k: str(v) for k, v in ref.to_dict().items() if v is not None}
