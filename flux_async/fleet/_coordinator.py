"""The account-wide primitives every process of one account shares through Redis
(:class:`RedisCoordinator`): process leases, active-task slots, the budget's reservations,
idempotency-key claims and task ownership with orphan adoption. Every decision two processes
could race on is one Lua script (``_scripts``), run atomically on the server with EVALSHA; this
module only calls them and waits (the lease, its heartbeat, the wake-ups and the translation of
failures are ``_presence``'s). It must not import the
session, the money path, the scheduler, the transport or the codecs; ``redis`` (the optional
extra) is imported only when a coordinator is built (``_connect``).

How the session is meant to use it (it replaces the in-process pieces, behind the same seam):

- ``Session(coordinator=...)`` enters the coordinator with the session (its heartbeat and
  wake-up listener run in the coordinator's own task group) and leaves it on close.
- Idempotency keys come first: in ``_submit.Submitter.existing``, beside the in-process
  ``_claims`` futures, ``claim(key, ttl=...)``; a False claim waits with ``wait_for`` (a ref:
  attach it and pay nothing; None: claim again). Only the claimant of a key takes a slot or a
  reservation for it, and only it releases them. ``claim.set_result`` in ``Submitter._submit``
  becomes ``publish(key, ref)`` too, every failure ``drop_claim(key)`` (a submit in doubt is
  then guarded by its ledger intent).
- ``_jobs.Jobs.submit``: ``limiter.acquire(model)`` becomes ``acquire_active(provider, model,
  total=..., per_model=..., token=key)`` (the caps of ``_active.active_limiter``'s table);
  ``limiter.release(model)`` on a failed or deduplicated submit becomes ``release_active``; once
  accepted, ``bind_active(key, task_id)`` and ``own(ref.to_dict() | {"key": key})``.
  ``Jobs.attach`` (``limiter.force``) takes a slot with no caps and binds it (one slot per task
  even when two processes attach it); ``Jobs.finished`` calls ``release_task(task_id)`` and,
  once the job is settled, ``disown(task_id)``.
- ``_submit.Submitter._submit``: the budget check of ``Spend.reserve`` becomes ``reserve(provider,
  key, usd, cap=max_spend_usd)`` (False: BudgetExceededError, with ``spend(provider)``'s
  figures); ``Spend.release`` also calls ``release`` (also after a ``reserve`` that raised: it may
  have been held), and ``Spend.settle`` calls ``settle_spend`` (0 for a job not charged, the
  reported cost where known). ``Spend`` keeps the session's own totals for ``statistics()``.
- Orphans: a loop in the session's task group calls ``orphans()`` every lease period and
  attaches (``Jobs.attach``) each task that ``adopt`` gives it: polled, downloaded, settled.
- A CoordinatorError from ``claim``, ``acquire_active`` or ``reserve`` fails that submit before
  anything is sent; tasks already accepted are still watched and settled locally.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import anyio

from ..catalog import from_micros, to_micros
from ..errors import ConfigurationError
from ._batch import SharedBatch
from ._connect import coordinator_error
from ._ledger import RedisLedger
from ._presence import CoordinatorStatistics, Presence

__all__ = ["CoordinatorStatistics", "RedisCoordinator"]

_BATCH_ID = re.compile(r"[A-Za-z0-9._:@-]{1,100}")


class RedisCoordinator(Presence):
    """Caps, budget, idempotency claims and task ownership shared by every process of one
    account through Redis (see the module docstring). Use as ``async with``; every call raises
    CoordinatorError when Redis fails, and never returns a success it could not check.

    ``url`` is the Redis server's (``redis://``, ``rediss://`` or ``unix://``; its password is
    never shown). Processes with the same ``namespace`` and ``account`` share everything.
    ``lease_ttl``: seconds after which a process that stopped renewing (killed) counts as dead
    (renewed every third of it). ``timeout``: the bound on every connect and read.
    ``poll_interval``: the longest a waiter waits without looking again, when no notification
    comes (a dead process never sends one). ``claim_retention``: how long a task published
    under an idempotency key is kept for other processes.
    """

    def ledger(self, name: str | None = None) -> RedisLedger:
        """A :class:`RedisLedger` on the same server and namespace, named after the account
        (or ``name``): what ``Session(coordinator=...)`` records to when no ledger is given.
        Not open yet: the session opens and closes it."""
        return RedisLedger(self._url, namespace=self.namespace, name=name or self.account, timeout=self.timeout)

    def batch(self, batch_id: str) -> SharedBatch:
        """The lines of shared batch ``batch_id`` (1 to 100 of ``A-Za-z0-9._:@-``): which
        process holds each and each one's result (``flux-async batch --redis``)."""
        if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
            raise ConfigurationError(f"a shared batch id must be 1 to 100 of A-Z a-z 0-9 . _ : @ -, not {batch_id!r}")
        return SharedBatch(self, batch_id)

    # -- active-task caps ----------------------------------------------------------------------

    async def acquire_active(
        self, provider: str, model: str, *, total: int | None, per_model: int | None, token: str
    ) -> tuple[int, int]:
        """Wait until a task of ``model`` fits under the account's caps (``total`` for the
        provider, ``per_model`` for the model; None: no cap) and take a slot for ``token``,
        held while this process lives or until released. Returns the provider's and the
        model's slot counts just after taking it. Waits on release notifications, polling at
        most every ``poll_interval`` (dead processes' slots are freed by that poll)."""
        kind = (provider, model)
        lock = self._kind_locks.setdefault(kind, anyio.Lock())
        action = f"take an active-task slot for {provider} {model}"
        keys = [self._procs, self._slots, self._slot_tasks]
        caps = ["-1" if total is None else str(total), "-1" if per_model is None else str(per_model)]
        polled = False
        while True:
            gen = self._active_gen
            # Waiters of one kind try one at a time, and not again until something changes:
            # a release wakes one script call per kind and process, not one per waiter.
            async with lock:
                if polled or self._failed_at.get(kind) != gen:
                    try:
                        result = await self._as_live(
                            "ACQUIRE", keys,
                            lambda pid: [pid, token, provider, model, *caps, self._active_channel],
                            action,
                        )  # fmt: skip
                    except BaseException:
                        # Cancelled or failed while the script ran: it may have taken the slot.
                        await self._forget(self.release_active(provider, model, token))
                        raise
                    if result[0] == 1:
                        return int(result[1]), int(result[2])
                    if result[0] == -2:
                        raise ValueError(
                            f"active-task slot token {token!r} is held by another process: "
                            "a token must be unique to one submit"
                        )
                    self._failed_at[kind] = gen
                    self._counts["slot_waits"] += 1
            polled = not await self._wait_active(gen)

    async def _wait_active(self, gen: int) -> bool:
        """Wait for a release after generation ``gen``; False when the poll interval ran out."""
        if self._active_gen != gen:
            return True
        event = self._active_event
        with anyio.move_on_after(self.poll_interval):
            await event.wait()
            return True
        return False

    async def release_active(self, provider: str, model: str, token: str) -> bool:
        """Free ``token``'s slot (its submit failed or was deduplicated); False when it held
        none. ``provider`` and ``model`` name it in errors."""
        action = f"free the active-task slot of a {provider} {model} submit"
        keys = [self._slots, self._slot_tasks]
        args = [token, self._active_channel, self._pid]
        return bool(await self._call("RELEASE_ACTIVE", keys, args, action))

    async def bind_active(self, token: str, task_id: str) -> bool:
        """Bind ``token``'s slot to the accepted task, so whichever process sees it end frees it
        with :meth:`release_task`. False when the token holds no slot, or when the task holds
        another live slot already (then ``token``'s is freed: a task counts once)."""
        keys = [self._procs, self._slots, self._slot_tasks]
        args = [token, task_id, self._active_channel]
        return int(await self._call("BIND", keys, args, f"bind a slot to task {task_id}")) == 1

    async def release_task(self, task_id: str) -> bool:
        """Free the slot bound to ``task_id`` (it ended); False when none is bound."""
        keys = [self._slots, self._slot_tasks]
        args = [task_id, self._active_channel]
        return bool(await self._call("RELEASE_TASK", keys, args, f"free the slot of task {task_id}"))

    # -- the shared budget ---------------------------------------------------------------------

    def _money_keys(self, provider: str) -> list[str]:
        return [f"{self._prefix}spend:{provider}", f"{self._prefix}reservations:{provider}"]

    async def reserve(self, provider: str, key: str, usd: float, *, cap: float | None) -> bool:
        """Reserve ``usd`` for the job under ``key`` when what the account has settled, plus
        every open reservation, plus ``usd`` stays within ``cap`` (None: no cap); False when it
        would not (nothing is held). A key that holds a reservation already keeps it (True).
        Reservations outlive their process: a dead process's submit may have been charged.
        One that raised may still have been held: release it if nothing is sent."""
        args = [key, str(to_micros(usd)), "-1" if cap is None else str(to_micros(cap))]
        action = f"reserve ${usd:.4f} for a {provider} job"
        result = await self._call("RESERVE", self._money_keys(provider), args, action)
        return int(result[0]) != 0

    async def settle_spend(
        self, provider: str, key: str, usd: float | None, *, model: str | None = None
    ) -> bool:
        """Turn ``key``'s reservation into settled spend: ``usd`` (the provider's reported
        cost; 0 when nothing was charged), or None for what it reserved. False when ``key``
        holds no reservation (settled or released already: nothing changes)."""
        args = [key, "-1" if usd is None else str(to_micros(usd)), model or ""]
        action = f"settle the spend of a {provider} job"
        return bool(await self._call("SETTLE", self._money_keys(provider), args, action))

    async def release(self, provider: str, key: str) -> bool:
        """Drop ``key``'s reservation: no task was made. False when it held none."""
        action = f"release the reservation of a {provider} job"
        return bool(await self._call("RELEASE_RESERVATION", self._money_keys(provider), [key], action))

    async def spend(self, provider: str) -> tuple[float, float]:
        """What the account has settled and what its open reservations hold, in US dollars."""
        client = self._require_client()
        try:
            values = await client.hmget(self._money_keys(provider)[0], ["settled", "reserved"])
        except Exception as exc:
            raise coordinator_error(f"read the {provider} spend", self._url, exc) from exc
        settled, reserved = (from_micros(int(v or 0)) for v in values)
        return settled, reserved

    # -- idempotency claims --------------------------------------------------------------------

    def _claim_keys(self, key: str) -> list[str]:
        return [self._procs, f"{self._prefix}claim:{key}", f"{self._prefix}claimed:{key}"]

    async def claim(self, key: str, *, ttl: float) -> bool:
        """Claim idempotency key ``key`` before its submit: True for the first claimant (the
        claim lives while this process's lease does, at most ``ttl`` seconds); False when a
        live process holds it or a task is published under it (see :meth:`wait_for`)."""
        ttl_ms = str(max(1, round(ttl * 1000)))
        try:
            result = await self._as_live(
                "CLAIM", self._claim_keys(key), lambda pid: [pid, ttl_ms], f"claim idempotency key {key!r}"
            )
        except BaseException:
            await self._forget(self.drop_claim(key))  # it may have been taken: not for us now
            raise
        return int(result) == 1

    async def publish(self, key: str, task_ref: Mapping[str, str]) -> None:
        """Publish the task accepted under ``key`` (kept ``claim_retention`` seconds), end this
        process's claim and wake the processes waiting for it."""
        keys = self._claim_keys(key)[1:]
        ref = json.dumps(dict(task_ref), sort_keys=True)
        args = [self._pid, ref, str(round(self.claim_retention * 1000)), self._claims_channel, key]
        await self._call("PUBLISH_CLAIM", keys, args, f"publish the task of idempotency key {key!r}")

    async def drop_claim(self, key: str) -> bool:
        """End this process's claim on ``key`` without a task (nothing was sent); its waiters
        get None. False when this process did not hold it."""
        keys = self._claim_keys(key)[1:2]
        args = [self._pid, self._claims_channel, key]
        return bool(await self._call("DROP_CLAIM", keys, args, f"drop the claim on key {key!r}"))

    # A timeout argument rather than the caller's own fail_after: a timed-out wait is a claim
    # still held, which the session answers differently from a cancellation.
    async def wait_for(
        self, key: str, *, timeout: float | None  # noqa: ASYNC109
    ) -> dict[str, str] | None:
        """Wait for the task published under ``key``: its ref, or None when nobody holds the
        claim without a task (dropped, expired, its process dead: claim it again). Raises
        TimeoutError when a live process still holds it after ``timeout`` seconds."""
        action = f"look up idempotency key {key!r}"
        self._claim_waiters[key] += 1
        try:
            with anyio.fail_after(timeout):
                while True:
                    # Registered before the look-up: a publish in between still wakes us.
                    event = self._claim_events.setdefault(key, anyio.Event())
                    state, value = await self._call("CLAIM_STATE", self._claim_keys(key), [], action)
                    if state == "done":
                        ref: dict[str, str] = json.loads(value)
                        return ref
                    if state == "free":
                        return None
                    with anyio.move_on_after(self.poll_interval):
                        await event.wait()
        finally:
            self._claim_waiters[key] -= 1
            if not self._claim_waiters[key]:
                del self._claim_waiters[key]
                self._claim_events.pop(key, None)

    # -- task ownership and orphans ------------------------------------------------------------

    async def own(self, task_ref: Mapping[str, str]) -> bool:
        """Record that this process watches the task (``task_ref`` holds its ``task_id``; any
        other str fields are kept with it). False when another live process owns it."""
        task_id = task_ref["task_id"]
        ref = json.dumps(dict(task_ref), sort_keys=True)
        keys = [self._procs, self._tasks, self._owners]
        result = await self._as_live(
            "OWN", keys, lambda pid: [pid, task_id, ref, self._owned], f"own task {task_id}"
        )
        return int(result) == 1

    async def disown(self, task_id: str) -> bool:
        """Forget the task (settled); False when nobody owned it."""
        keys = [self._tasks, self._owners]
        return bool(await self._call("DISOWN", keys, [task_id, self._owned], f"disown task {task_id}"))

    async def orphans(self, *, limit: int = 100) -> list[dict[str, str]]:
        """Up to ``limit`` tasks (their refs) whose owner's lease has expired."""
        if limit < 1:
            return []
        keys = [self._procs, self._tasks]
        found = await self._call("ORPHANS", keys, [str(limit), self._owned], "list orphaned tasks")
        return [json.loads(ref) for ref in found]

    async def adopt(self, task_id: str) -> bool:
        """Take over the task when its owner is still dead and nobody adopted it first."""
        keys = [self._procs, self._owners]
        result = await self._as_live(
            "ADOPT", keys, lambda pid: [pid, task_id, self._owned], f"adopt task {task_id}"
        )
        return int(result) == 1
