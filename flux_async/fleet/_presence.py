"""One process's presence in an account shared through Redis: the connection and its scripts,
the process lease and the heartbeat that renews it, the listener that turns release and claim
notifications into wake-ups, and the one place where a script is called and its failure becomes
a :class:`~flux_async.errors.CoordinatorError`. It is the base of
:class:`~flux_async.fleet.RedisCoordinator`, which adds the primitives. It must not import the
session, the money path, the scheduler, the transport or the codecs.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ..errors import ConfigurationError, CoordinatorError
from . import _scripts
from ._connect import connect, coordinator_error, redacted_url, scrub

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["CoordinatorStatistics", "Presence"]

_log = logging.getLogger("flux_async")

#: A namespace or account goes into every key name; braces would break the hash tag.
_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,100}")


@attrs.frozen(kw_only=True)
class CoordinatorStatistics:
    """Counters of one coordinator since it was entered."""

    process_id: str
    calls: int  #: scripts run on the server
    failures: int  #: calls that raised CoordinatorError
    slot_waits: int  #: times an acquire found the caps full and waited
    wake_ups: int  #: release and claim notifications received
    lease_renewals: int
    lease_losses: int  #: times the lease had expired and a new process id was taken


class Presence:
    """A process of the account: its lease, its heartbeat, its wake-ups and its script calls
    (see the module docstring; the arguments are :class:`RedisCoordinator`'s)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "flux-async",
        account: str = "default",
        lease_ttl: float = 15.0,
        timeout: float = 5.0,
        poll_interval: float = 1.0,
        claim_retention: float = 86400.0,
    ) -> None:
        for name, value in (("namespace", namespace), ("account", account)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigurationError(
                    f"RedisCoordinator {name} must be 1 to 100 characters from "
                    f"A-Z a-z 0-9 . _ : @ -, not {value!r}"
                )
        for name, number in (
            ("lease_ttl", lease_ttl), ("timeout", timeout),
            ("poll_interval", poll_interval), ("claim_retention", claim_retention),
        ):  # fmt: skip
            if not number > 0:
                raise ConfigurationError(f"RedisCoordinator {name} must be more than 0 seconds")
        self._url = url
        self.namespace = namespace
        self.account = account
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.claim_retention = claim_retention
        # The keys of an account (one hash tag, the account: one Redis Cluster slot for all):
        #   procs                  zset  process id -> lease expiry (server ms; 0: exited)
        #   slots                  hash  slot token -> {p: process, v: provider, m: model, t: task}
        #   slot-tasks             hash  task id -> slot token (a slot bound to an accepted task)
        #   spend:<provider>       hash  settled, reserved, settled:<model>, jobs:<model> (micro-$)
        #   reservations:<provider> hash idempotency key -> micro-dollars reserved
        #   claim:<key>            string  the claiming process id (expires after the claim's ttl)
        #   claimed:<key>          string  the published task ref, JSON (kept claim_retention)
        #   tasks                  hash  task id -> task ref, JSON (while owned)
        #   task-owners            hash  task id -> owning process id
        #   owned:<process>        set   the task ids a process owns
        # and the pub/sub channels wake:active (a slot freed) and wake:claims (a key's claim ended).
        self._prefix = prefix = f"{namespace}:{{{account}}}:"
        self._procs = prefix + "procs"
        self._slots = prefix + "slots"
        self._slot_tasks = prefix + "slot-tasks"
        self._tasks = prefix + "tasks"
        self._owners = prefix + "task-owners"
        self._owned = prefix + "owned:"
        self._active_channel = prefix + "wake:active"
        self._claims_channel = prefix + "wake:claims"
        self._pid = _new_process_id()
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._tg: TaskGroup | None = None
        self._background: list[anyio.CancelScope] = []
        self._dead = False
        self._relive = anyio.Lock()
        # Waking waiters: a generation counter and an event replaced at each release.
        self._active_gen = 0
        self._active_event = anyio.Event()
        self._kind_locks: dict[tuple[str, str], anyio.Lock] = {}
        self._failed_at: dict[tuple[str, str], int] = {}
        self._claim_events: dict[str, anyio.Event] = {}
        self._claim_waiters: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({redacted_url(self._url)!r}, namespace={self.namespace!r}, "
            f"account={self.account!r}, process_id={self._pid!r})"
        )

    @property
    def is_open(self) -> bool:
        """True between entering and leaving the coordinator."""
        return self._tg is not None

    @property
    def process_id(self) -> str:
        """This process's id in the account (a new one if its lease was ever lost)."""
        return self._pid

    def statistics(self) -> CoordinatorStatistics:
        """A snapshot of this coordinator's counters."""
        c = self._counts
        return CoordinatorStatistics(
            process_id=self._pid, calls=c["calls"], failures=c["failures"],
            slot_waits=c["slot_waits"], wake_ups=c["wake_ups"],
            lease_renewals=c["lease_renewals"], lease_losses=c["lease_losses"],
        )  # fmt: skip

    # -- lifetime ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._client is not None:
            raise RuntimeError("a RedisCoordinator can be entered only once at a time")
        client = self._client = connect(self._url, timeout=self.timeout)
        self._scripts = {
            name: client.register_script(getattr(_scripts, name)) for name in _scripts.__all__
        }
        try:
            await self._lease("start", "register this process")
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException:
            self._client = None
            await client.aclose()
            raise
        self._tg = tg
        try:
            await tg.start(self._listen)
            await tg.start(self._heartbeat)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        for scope in self._background:
            scope.cancel()
        self._background.clear()
        try:
            if tg is not None:
                await tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                if self._client is not None and not self._dead:
                    try:
                        await self._lease("stop", "end this process's lease")
                    except CoordinatorError as exc:
                        _log.warning("%s; it expires by itself in %.0f s", exc, self.lease_ttl)
                client, self._client = self._client, None
                if client is not None:
                    await client.aclose()

    def _simulate_death(self) -> None:
        """Stop renewing the lease and listening, and leave everything in Redis on exit, as a
        killed process would (for tests of lease expiry)."""
        self._dead = True
        for scope in self._background:
            scope.cancel()

    async def _heartbeat(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._background.append(scope)
            task_status.started()
            failing = False
            while True:
                await anyio.sleep(self.lease_ttl / 3)
                pid = self._pid
                try:
                    renewed = await self._lease("renew", "renew this process's lease")
                except CoordinatorError as exc:
                    if not failing:
                        _log.warning("%s; trying again every %.1f s", exc, self.lease_ttl / 3)
                    failing = True
                    continue
                if failing:
                    _log.warning("the coordinator renewed this process's lease again")
                    failing = False
                if renewed:
                    self._counts["lease_renewals"] += 1
                else:
                    try:
                        await self._relive_as_new(pid)
                    except CoordinatorError as exc:
                        _log.warning("%s", exc)

    async def _lease(self, mode: str, action: str) -> bool:
        ttl = str(round(self.lease_ttl * 1000))
        args = [self._pid, ttl, mode, self._owned, self._active_channel, self._claims_channel]
        return bool(await self._call("LEASE", [self._procs], args, action))

    async def _relive_as_new(self, old_pid: str) -> None:
        """The lease of ``old_pid`` expired (its slots, claims and tasks count as a dead
        process's): carry on under a new process id."""
        async with self._relive:
            if self._pid != old_pid:
                return  # another call did it already
            self._pid = _new_process_id()
            self._counts["lease_losses"] += 1
            _log.warning(
                "the coordinator lease of process %s expired (not renewed within %.1f s): its "
                "slots, claims and tasks now count as a dead process's; continuing as %s",
                old_pid, self.lease_ttl, self._pid,
            )  # fmt: skip
            await self._lease("start", "register this process again")

    async def _listen(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Wake waiters on release and claim notifications; resubscribe after a failure (the
        waiters' bounded polls cover the gap)."""
        with anyio.CancelScope() as scope:
            self._background.append(scope)
            started = False
            while True:
                pubsub = self._require_client().pubsub()
                try:
                    await pubsub.subscribe(self._active_channel, self._claims_channel)
                    if not started:
                        task_status.started()
                        started = True
                    self._wake_everyone()  # whatever was missed while not subscribed
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.timeout
                        )
                        if message is not None:
                            self._on_message(str(message["channel"]), str(message["data"]))
                except Exception as exc:
                    if not started:
                        raise coordinator_error("listen for releases", self._url, exc) from exc
                    _log.debug("coordinator notifications lost (%s)", scrub(repr(exc), self._url))
                    await anyio.sleep(min(self.poll_interval, 1.0))
                finally:
                    with anyio.CancelScope(shield=True):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_message(self, channel: str, data: str) -> None:
        self._counts["wake_ups"] += 1
        if channel == self._active_channel:
            self._wake_active()
            if data != "*":
                return
        if data == "*":
            for key in list(self._claim_events):
                self._claim_events.pop(key).set()
        else:
            event = self._claim_events.pop(data, None)
            if event is not None:
                event.set()

    def _wake_active(self) -> None:
        self._active_gen += 1
        event, self._active_event = self._active_event, anyio.Event()
        event.set()

    def _wake_everyone(self) -> None:
        self._on_message(self._claims_channel, "*")
        self._wake_active()

    # -- calling scripts -----------------------------------------------------------------------

    def _require_client(self) -> Redis:
        if self._client is None:
            raise RuntimeError("use the RedisCoordinator inside 'async with' (it is not open)")
        return self._client

    async def _call(self, name: str, keys: list[str], args: list[str], action: str) -> Any:
        script = self._scripts[name]
        self._require_client()
        self._counts["calls"] += 1
        try:
            return await script(keys=keys, args=args)
        except Exception as exc:
            self._counts["failures"] += 1
            raise coordinator_error(action, self._url, exc) from exc

    async def _forget(self, undo: Awaitable[object]) -> None:
        """Run ``undo`` (freeing what a failed call may have taken) shielded from cancellation,
        bounded by ``timeout``; a failure of it is only logged (the caller's error is the news)."""
        with anyio.move_on_after(self.timeout, shield=True):
            try:
                await undo
            except CoordinatorError as exc:
                _log.debug("%s", exc)

    async def _as_live(
        self, name: str, keys: list[str], args: Callable[[str], list[str]], action: str
    ) -> Any:
        """Run a script that needs this process alive (-1: its lease expired): once more under
        a new process id after such an answer."""
        for _ in range(2):
            pid = self._pid
            result = await self._call(name, keys, args(pid), action)
            status = result[0] if isinstance(result, list) else result
            if status != -1:
                return result
            await self._relive_as_new(pid)
        raise CoordinatorError(
            f"the coordinator could not {action}: this process's lease keeps expiring",
            action=action,
        )


def _new_process_id() -> str:
    """A process id: the OS pid (for people reading Redis) and 48 random bits."""
    return f"{os.getpid()}-{os.urandom(6).hex()}"
