"""The settlement writer of :class:`~flux_async.fleet.RedisLedger`: a queue that ``settle``
fills without blocking, and the loop (run in the ledger's own task group) that sends it in
order, in batches, retrying a lost connection with a growing, jittered delay and logging what it
cannot write. It never raises into whoever settles. It knows nothing of Redis beyond which
failures are worth another attempt (``_redis_url.TRANSIENT``); the ledger gives it the
function that sends a batch. It must not import the session.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import anyio
import attrs

from .._ledger_entries import SettledStatus
from ..models import Cost
from ._redis_url import TRANSIENT, scrub

__all__ = ["Settlement", "SettlementWriter"]

_log = logging.getLogger("flux_async")

_BATCH: Final = 64  # settlements per round trip
_MAX_DELAY: Final = 5.0  # the longest wait between attempts


@attrs.frozen
class Settlement:
    """One queued settlement; ``seq`` orders them."""

    seq: int
    key: str
    status: SettledStatus
    at: float
    error: str | None
    cost: Cost | None


class SettlementWriter:
    """The queue and its loop (see the module docstring). ``send`` writes a batch and returns
    one result per settlement (an exception for one the server refused); it raises one of the
    transient failures when the server could not be reached."""

    def __init__(
        self,
        send: Callable[[list[Settlement]], Awaitable[Sequence[Any]]],
        *,
        where: str,
        hidden: Sequence[str],
        retry_delay: float,
    ) -> None:
        self._send = send
        self._where = where
        self._hidden = hidden
        self.retry_delay = retry_delay
        self.queue: deque[Settlement] = deque()
        self._latest: dict[str, Settlement] = {}  # the last queued settlement of each key
        self._next_seq = 1
        self.done_seq = 0  # every settlement up to this one is written or dropped
        self.running = False
        self._closing = False
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._rng = random.Random()
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def put(self, key: str, status: SettledStatus, at: float, error: str | None, cost: Cost | None) -> None:
        """Queue a settlement (or, when the writer is not running, log it as not written)."""
        settlement = Settlement(self._next_seq, key, status, at, error, cost)
        self._next_seq += 1
        if not self.running:
            self.dropped += 1
            self.done_seq = settlement.seq
            _log.error(
                "the Redis ledger at %s is not open: the settlement of %s (%s) is not written "
                "(a status check on recovery will find it)", self._where, key, status,
            )  # fmt: skip
            return
        self.queue.append(settlement)
        self._latest[key] = settlement
        self._wake.set()

    def latest(self, key: str) -> Settlement | None:
        """The last settlement of ``key`` still queued."""
        return self._latest.get(key)

    async def wait_done(self, seq: int | None = None) -> None:
        """Return once every settlement up to ``seq`` (default: every one queued so far) is
        written or dropped."""
        target = self._next_seq - 1 if seq is None else seq
        while self.done_seq < target:
            await self._progress.wait()

    def close(self) -> None:
        """Let the loop return once the queue is empty."""
        self._closing = True
        self._wake.set()

    def drop_all(self, why: str) -> None:
        """Give up on every queued settlement, logging them."""
        self.running = False
        dropped = list(self.queue)
        if not dropped:
            return
        self.queue.clear()
        self.dropped += len(dropped)
        shown = ", ".join(s.key for s in dropped[:10]) + (", ..." if len(dropped) > 10 else "")
        _log.error(
            "%d settlement(s) not written: %s (%s); a status check on recovery will find them",
            len(dropped), why, shown,
        )
        for settlement in dropped:
            self._done(settlement)

    async def run(self) -> None:
        """Send the queue until :meth:`close` (and the queue is empty) or cancellation."""
        queue = self.queue
        streak = 0
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            batch = list(itertools.islice(queue, _BATCH))
            try:
                results = await self._send(batch)
            except TRANSIENT as exc:
                streak += 1
                self.failures += 1
                if streak == 1 or streak % 50 == 0:
                    _log.warning(
                        "the Redis ledger at %s could not write %d settlement(s) (%s); trying "
                        "again (attempt %d)", self._where, len(queue),
                        scrub(f"{type(exc).__name__}: {exc}", self._hidden), streak + 1,
                    )  # fmt: skip
                delay = min(self.retry_delay * 2.0 ** min(streak - 1, 30), _MAX_DELAY)
                await anyio.sleep(delay * self._rng.uniform(0.5, 1.0))
                continue
            except Exception as exc:  # not a failure to reach the server: not worth retrying
                results = [exc] * len(batch)
            if streak:
                _log.info("the Redis ledger at %s is written again after %d failed attempts", self._where, streak)
                streak = 0
            for settlement, result in zip(batch, results, strict=True):
                queue.popleft()
                if isinstance(result, Exception):
                    self.dropped += 1
                    _log.error(
                        "Redis at %s refused the settlement of %s (%s): it is not written (a "
                        "status check on recovery will find it)", self._where, settlement.key,
                        scrub(f"{type(result).__name__}: {result}", self._hidden),
                    )  # fmt: skip
                else:
                    self.written += 1
                self._done(settlement)

    def _done(self, settlement: Settlement) -> None:
        if self._latest.get(settlement.key) is settlement:
            del self._latest[settlement.key]
        self.done_seq = settlement.seq
        self._progress.set()
        self._progress = anyio.Event()
