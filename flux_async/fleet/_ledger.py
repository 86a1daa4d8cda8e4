"""The ledger shared by every process of an account through Redis: :class:`RedisLedger`.

It implements :class:`~flux_async.ledger.Ledger` so that an intent, an acceptance or a
settlement written by one process is seen by all: :meth:`RedisLedger.intend` is an atomic claim
of the key across processes (a Lua script records the intent unless the key is recorded), and
the spend totals of every provider and model move in the same script as the settlement that
changes them, so every process's budget reads the same figures. It must not import the
session, the money path, the scheduler, the transport or the codecs; ``redis`` (the optional
``redis`` extra) is imported when this module is, never by ``import flux_async``.

**Layout.** Every key starts with ``<namespace>:ledger:<name>:`` (defaults
``flux-async:ledger:default:``):

- ``entry:<idempotency key>``: a hash per entry, one field per :class:`LedgerEntry` field
  (``key provider model digest intended_at images`` and, when set, ``reserved_usd ref
  accepted_at status error settled_at cost_source cost_usd cost_micros``; ``ref`` is the task
  ref as JSON, numbers are Python ``repr`` strings so they read back exactly), plus ``claim``,
  the token of the call that recorded the intent (a resent claim is recognised as its own);
- ``unsettled``: a sorted set of the unsettled keys, scored by the time of their intent;
- ``spent``: a hash of the settled totals, fields ``<provider>:<model>:<what>`` with ``what``
  one of ``jobs micros unpriced_jobs unpriced_images`` (whole numbers, moved with HINCRBY).

Settled entries are kept for ever unless ``settled_ttl`` is given; the totals are kept for ever.

**Durability.** An intent or an acceptance returns once the Redis server has acknowledged it:
it is then in the server's memory, and survives a restart of the server only with its
persistence turned on (``appendonly yes`` is recommended; ``appendfsync everysec``, its default,
may lose the last second on a power loss). With replicas, ``wait_replicas=N`` sends ``WAIT``
after each intent and acceptance and raises :class:`~flux_async.errors.LedgerError` when fewer
than N replicas acknowledged it within half of ``timeout`` (an intent that was not replicated is settled
``not_submitted``: the error means nothing is sent for it).

**Settlements** do not block (``settle`` is synchronous): they update this process's view and
join a queue that a writer task owned by the ledger (started by :meth:`RedisLedger.open`,
drained and stopped by :meth:`RedisLedger.aclose`) sends in order, in batches, retrying a lost
connection with a growing delay and logging what it cannot write, never raising into the
caller. ``aclose`` waits at most ``flush_timeout`` seconds for the queue; a settlement never
written costs a status check on recovery, never money.

**What other processes wrote.** ``unsettled()`` and ``settled_spend()`` are synchronous: they
answer from a view loaded at ``open`` and kept up to date by this ledger's own writes;
:meth:`RedisLedger.refresh` loads it again (one atomic snapshot). ``get`` and ``intend`` always
ask the server.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import attrs
from anyio.abc import TaskGroup

from .._ledger_entries import (
    Entries,
    LedgerEntry,
    Record,
    SettledSpend,
    SettledStatus,
)
from ..errors import ConfigurationError, LedgerError
from ..ledger import Ledger
from ..models import Cost, TaskRef
from . import _ledger_scripts
from ._ledger_codec import num, pairs, parse_entry, text_map
from ._ledger_writer import Settlement, SettlementWriter
from ._redis_url import connect, describe, redacted_url, scrub, url_secrets

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

__all__ = ["RedisLedger", "RedisLedgerStatistics"]

_log = logging.getLogger("flux_async")

_NAME: Final = re.compile(r"[A-Za-z0-9._:@-]{1,100}")
_MIRROR_SETTLED: Final = 1_000  # settled entries kept in the view (for a second settlement)
_SPENT_FIELDS: Final = ("jobs", "micros", "unpriced_jobs", "unpriced_images")


@attrs.frozen(kw_only=True)
class RedisLedgerStatistics:
    """Counters of one :class:`RedisLedger` since it was built."""

    intents: int  #: intents this ledger recorded
    claims_lost: int  #: intents answered with an entry already recorded (by any process)
    acceptances: int
    settlements_queued: int
    settlements_written: int
    settlements_dropped: int  #: never written: refused by the server, or the ledger closed first
    write_failures: int  #: attempts of the writer that failed (each one retried)
    pending: int  #: settlements queued and not yet written
    refreshes: int


class RedisLedger:
    """A :class:`~flux_async.ledger.Ledger` in Redis, shared by every process of an account
    (see the module docstring for the layout, durability and settlement writer).

    ``url_or_client`` is a ``redis://`` (``rediss://``, ``unix://``) URL, or a
    ``redis.asyncio.Redis`` client that stays the caller's (not closed here). Use it as
    ``async with RedisLedger(url) as ledger:`` (or ``await ledger.open()`` and ``await
    ledger.aclose()`` in the same task) before handing it to a session. ``timeout`` bounds each
    connection and reply of a client built from a URL, and the ``WAIT`` of ``wait_replicas``.
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        namespace: str = "flux-async",
        name: str = "default",
        timeout: float = 5.0,
        wait_replicas: int = 0,
        settled_ttl: float | None = None,
        flush_timeout: float = 5.0,
        retry_delay: float = 0.1,
    ) -> None:
        for label, value in (("namespace", namespace), ("name", name)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigurationError(
                    f"RedisLedger {label} must be 1 to 100 characters from A-Z a-z 0-9 . _ : @ -, "
                    f"not {value!r}"
                )
        for label, number in (("timeout", timeout), ("flush_timeout", flush_timeout), ("retry_delay", retry_delay)):
            if not number > 0:
                raise ConfigurationError(f"RedisLedger {label} must be more than 0 seconds")
        if settled_ttl is not None and not settled_ttl > 0:
            raise ConfigurationError("RedisLedger settled_ttl must be more than 0 seconds, or None")
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise ConfigurationError("RedisLedger wait_replicas must be a whole number >= 0")
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self.wait_replicas = wait_replicas
        self.settled_ttl = settled_ttl
        self.flush_timeout = flush_timeout
        self.retry_delay = retry_delay
        if isinstance(url_or_client, str):
            self._where = redacted_url(url_or_client)
            self._secrets = url_secrets(url_or_client)
            self._client = connect(url_or_client, timeout=timeout, where=self._where, hidden=self._secrets)
            self._owned = True
        else:
            kwargs = url_or_client.connection_pool.connection_kwargs
            self._where = describe(kwargs)
            password = kwargs.get("password")
            self._secrets = [password] if isinstance(password, str) and password else []
            self._client = url_or_client
            self._owned = False
        self._prefix = prefix = f"{namespace}:ledger:{name}:"
        self._entry_prefix = prefix + "entry:"
        self._unsettled_key = prefix + "unsettled"
        self._spent_key = prefix + "spent"
        client = self._client
        self._intend = client.register_script(_ledger_scripts.INTEND)
        self._accept = client.register_script(_ledger_scripts.ACCEPT)
        self._settle = client.register_script(_ledger_scripts.SETTLE)
        self._load = client.register_script(_ledger_scripts.LOAD)
        self._entries: Entries | None = None  # the view: None until opened
        self._tg: TaskGroup | None = None
        self._closed = False
        self._io = anyio.Lock()  # a refresh's snapshot and the writer's batches never overlap
        self._writer = SettlementWriter(self._send, where=self._where, hidden=self._secrets, retry_delay=retry_delay)
        self._counts = dict.fromkeys(("intents", "claims_lost", "acceptances", "settlements_queued", "refreshes"), 0)

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else ("closed" if self._closed else "not open")
        return (
            f"RedisLedger({self._where!r}, namespace={self.namespace!r}, name={self.name!r}, "
            f"{state}, pending={len(self._writer.queue)})"
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`aclose`."""
        return self._tg is not None

    async def open(self) -> Self:
        """Load the unsettled entries and the spend totals, and start the settlement writer.
        Raises LedgerError when Redis cannot be read."""
        if self._tg is not None or self._closed:
            raise RuntimeError("a RedisLedger is opened once")
        try:
            await self._reload()
        except Exception as exc:
            if self._owned:  # nothing stays connected; open may be tried again
                await self._client.connection_pool.disconnect()
            raise self._error("load the ledger", exc) from exc
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._writer.running = True
        tg.start_soon(self._writer.run)
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write the queued settlements (for at most ``flush_timeout`` seconds; what is left is
        logged and dropped), stop the writer and close a client built from a URL. Idempotent."""
        tg, self._tg = self._tg, None
        if self._closed:
            return
        self._closed = True
        try:
            if tg is not None:
                self._writer.close()
                with anyio.move_on_after(self.flush_timeout):
                    await self._writer.wait_done()
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            self._writer.drop_all(f"the ledger closed before Redis at {self._where} took them")
            if self._owned:
                await self._client.aclose()

    # -- the protocol ------------------------------------------------------------------------------

    async def intend(
        self,
        key: str,
        *,
        provider: str,
        model: str,
        digest: str,
        at: float,
        reserved_usd: float | None = None,
        images: int = 1,
    ) -> LedgerEntry | None:
        """Claim ``key`` for this intent, atomically across processes; or return what is
        recorded under it (a settled ``not_submitted`` entry is replaced). Raises LedgerError
        when Redis does not acknowledge it (nothing may then be sent)."""
        entries = self._require_open()
        earlier = self._writer.latest(key)
        if earlier is not None:  # this process settled the key: that settlement goes first
            with anyio.move_on_after(self.timeout):
                await self._writer.wait_done(earlier.seq)
            if self._writer.done_seq < earlier.seq:
                raise LedgerError(f"an earlier settlement of the key is not written to Redis at {self._where}", key=key)
        claim = secrets.token_hex(8)
        args = [key, provider, model, digest, num(at), "" if reserved_usd is None else num(reserved_usd),
                str(images), claim]  # fmt: skip
        try:
            reply, replicas = await self._run(self._intend, [self._entry_key(key), self._unsettled_key], args)
        except Exception as exc:
            raise self._error("record the intent", exc, key=key) from exc
        if reply is not None:
            fields = pairs(reply)
            if fields.get("claim") != claim:
                self._counts["claims_lost"] += 1
                return parse_entry(fields, self._entry_key(key))
        self._counts["intents"] += 1
        entries.put(Record(key, provider, model, digest, at, reserved_usd, images))
        if replicas is not None and replicas < self.wait_replicas:
            self.settle(key, "not_submitted", error="intent not replicated")
            raise LedgerError(self._unreplicated("intent", replicas), key=key)
        return None

    async def accept(self, key: str, ref: TaskRef) -> None:
        """Record that the provider accepted the key's submit as task ``ref`` (acknowledged by
        Redis before it returns; LedgerError otherwise)."""
        entries = self._require_open()
        at = time.time()
        args = [json.dumps(ref.to_dict(), sort_keys=True), num(at)]
        try:
            reply, replicas = await self._run(self._accept, [self._entry_key(key)], args)
        except Exception as exc:
            raise self._error("record the acceptance", exc, key=key) from exc
        self._counts["acceptances"] += 1
        if entries.get(key) is not None:
            entries.accept(key, ref, at)
        elif self._writer.latest(key) is None:
            entries.put(Record.of(parse_entry(pairs(reply), self._entry_key(key))))
        if replicas is not None and replicas < self.wait_replicas:
            raise LedgerError(self._unreplicated("acceptance", replicas), key=key, ref=ref)

    def settle(
        self, key: str, status: SettledStatus, *, error: str | None = None, cost: Cost | None = None
    ) -> None:
        """Record how the key's job ended and what it cost: at once in this process's view,
        and in Redis by the writer task (in order, retried; never raises)."""
        at = time.time()
        if self._entries is not None:
            self._entries.settle(key, status, error, at, cost)
        self._counts["settlements_queued"] += 1
        self._writer.put(key, status, at, error, cost)

    async def get(self, key: str) -> LedgerEntry | None:
        """The entry of ``key`` as Redis holds it (with this process's settlement of it, when
        that is still queued). Raises LedgerError when Redis cannot be read."""
        self._require_open()
        try:
            raw = await self._client.hgetall(self._entry_key(key))
        except Exception as exc:
            raise self._error("read an entry", exc, key=key) from exc
        if not raw:
            return None
        entry = parse_entry(text_map(raw), self._entry_key(key))
        queued = self._writer.latest(key)
        if queued is not None:
            entry = attrs.evolve(
                entry, status=queued.status, error=queued.error, settled_at=queued.at, cost=queued.cost
            )
        return entry

    def unsettled(self) -> list[LedgerEntry]:
        """Every unsettled entry, as of the last :meth:`open` or :meth:`refresh` and this
        process's own writes since."""
        return self._view().unsettled()

    def settled_spend(self, provider: str) -> Mapping[str, SettledSpend]:
        """The settled totals of ``provider`` per model, over every process's settlements as of
        the last :meth:`open` or :meth:`refresh`, and this process's own since."""
        return self._view().settled_spend(provider)

    # -- beyond the protocol -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Load the unsettled entries and the totals again, with what other processes wrote
        (this process's queued settlements are applied over them). Raises LedgerError."""
        self._require_open()
        try:
            async with self._io:
                await self._reload()
        except Exception as exc:
            raise self._error("load the ledger", exc) from exc
        self._counts["refreshes"] += 1

    async def wait_flushed(self) -> None:
        """Return once every settlement queued before this call is written to Redis (or
        dropped: refused by the server, or the ledger closed)."""
        await self._writer.wait_done()

    def statistics(self) -> RedisLedgerStatistics:
        """A snapshot of the ledger's counters."""
        writer = self._writer
        return RedisLedgerStatistics(
            settlements_written=writer.written,
            settlements_dropped=writer.dropped,
            write_failures=writer.failures,
            pending=len(writer.queue),
            **self._counts,
        )

    # -- inside ------------------------------------------------------------------------------------

    def _entry_key(self, key: str) -> str:
        return self._entry_prefix + key

    def _require_open(self) -> Entries:
        entries = self._entries
        if self._tg is None or entries is None:
            raise LedgerError(
                f"the Redis ledger at {self._where} is "
                + ("closed" if self._closed else "not open: use `async with RedisLedger(...)`")
            )
        return entries

    def _view(self) -> Entries:
        if self._entries is None:
            raise RuntimeError(
                "this RedisLedger was never opened: use `async with RedisLedger(...) as ledger` "
                "(or `await ledger.open()`) before handing it to a session"
            )
        return self._entries

    def _error(self, action: str, exc: BaseException, *, key: str | None = None) -> LedgerError:
        reason = scrub(f"{type(exc).__name__}: {exc}", self._secrets)
        return LedgerError(f"Redis at {self._where} could not {action} ({reason})", key=key)

    def _unreplicated(self, what: str, replicas: int) -> str:
        return (
            f"the {what} reached Redis at {self._where} but {replicas} of the "
            f"{self.wait_replicas} replicas asked for acknowledged it within {self.timeout} s"
        )

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]) -> tuple[Any, int | None]:
        """Run ``script``; with ``wait_replicas``, WAIT on the same connection after it."""
        if not self.wait_replicas:
            return await script(keys=keys, args=args), None
        async with self._client.pipeline(transaction=False) as pipe:  # one connection
            await script(keys=keys, args=args, client=pipe)
            # Half the timeout: the reply must come back before the socket gives up.
            pipe.wait(self.wait_replicas, max(1, round(self.timeout * 500)))
            reply, replicas = await pipe.execute()
        return reply, int(replicas)

    async def _reload(self) -> None:
        """Load a snapshot into a new view, then apply the settlements still queued."""
        raw = await self._load(keys=[self._unsettled_key, self._spent_key], args=[self._entry_prefix])
        entries = Entries(_MIRROR_SETTLED)
        spent: dict[tuple[str, str], dict[str, int]] = {}
        for field, value in pairs(raw[0]).items():
            provider, _, rest = field.partition(":")
            model, _, what = rest.rpartition(":")
            if what in _SPENT_FIELDS:
                spent.setdefault((provider, model), dict.fromkeys(_SPENT_FIELDS, 0))[what] = int(value)
        for (provider, model), counts in spent.items():
            entries.count_spent(provider, model, **counts)
        for item in raw[1:]:
            if item:
                fields = pairs(item)
                entries.put(Record.of(parse_entry(fields, self._entry_key(fields.get("key", "?")))))
        for s in self._writer.queue:
            entries.settle(s.key, s.status, s.error, s.at, s.cost)
        self._entries = entries

    async def _send(self, batch: list[Settlement]) -> list[Any]:
        """Write ``batch`` in one round trip (the writer's ``send``)."""
        ttl = "0" if self.settled_ttl is None else str(max(1, round(self.settled_ttl * 1000)))
        async with self._io, self._client.pipeline(transaction=False) as pipe:
            return await self._send_on(pipe, batch, ttl)

    async def _send_on(self, pipe: Pipeline, batch: list[Settlement], ttl: str) -> list[Any]:
        for s in batch:
            cost = s.cost
            args = [
                s.key, s.status, num(s.at), "0" if s.error is None else "1", s.error or "",
                "" if cost is None else cost.source,
                "" if cost is None or cost.usd is None else num(cost.usd),
                "" if cost is None or cost.usd is None else str(round(cost.usd * 1_000_000)),
                ttl,
            ]  # fmt: skip
            await self._settle(keys=[self._entry_key(s.key), self._unsettled_key, self._spent_key], args=args, client=pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


if TYPE_CHECKING:  # the type checker holds RedisLedger to the protocol
    _LEDGER: type[Ledger] = RedisLedger
