"""A batch shared by several processes (``flux-async batch FILE --redis URL -o DIR`` started on
several machines, or several times on one): the command line's side of
:class:`~flux_async.fleet.SharedBatch`. Part of the command line, never imported by the library.

The processes that run the same file with the same request options into output directories of
the same name run **one batch**: its id is made from those (:func:`shared_batch_id`), each line
is submitted under the idempotency key ``<id>-<index>`` through the batch's ledger in Redis, and
each line is claimed by one process at a time as the file is read (:class:`SharedLines`):

- a process reads the file in chunks and claims what nobody holds; then it takes over lines
  given back by processes that stopped and lines of processes that died, and waits while live
  processes still hold lines (to take them over should those die);
- a line's result is recorded in Redis before its result line is written in the process's own
  output directory: a line finished twice (after a lost lease) gets one result line in all;
- a process that stops gives its lines that have no result back to the others; a line that
  failed without being settled, or is in doubt, is left to the batch's next run (the same
  command started again), as ``--resume`` would.

A line taken over from a dead process is sent through the shared ledger under its key: the
task that process paid for is re-attached (or the line is reported in doubt), never paid twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._batchentry import Entry, LineError

if TYPE_CHECKING:
    from ..fleet import SharedBatch, SharedProgress

__all__ = ["SharedLines", "shared_batch_id"]

_log = logging.getLogger("flux_async.cli")

#: Lines claimed at once while the file is read.
CHUNK: Final = 16
#: Bound on the clean-up calls made as a process leaves (shielded from cancellation).
_RELEASE_TIMEOUT: Final = 5.0


def shared_batch_id(provider: str, fingerprint: str, defaults: Mapping[str, Any], name: str) -> str:
    """The id of the shared batch that runs an input (its SHA-256 ``fingerprint``) on
    ``provider`` with the command line's request ``defaults`` into output directories named
    ``name``: the same on every machine that runs the same command."""
    identity = json.dumps(
        {"provider": provider, "fingerprint": fingerprint, "defaults": dict(defaults), "name": name},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class SharedLines:
    """One process's share of a shared batch (see the module docstring).

    ``held`` are the lines this process claimed and has not finished, dropped or given back.
    ``interval`` is how long it waits between two looks at the lines other processes hold.
    ``origin`` is added to each result recorded in Redis (where this process wrote its files).
    New lines are claimed only while fewer than ``ahead`` of those already handed out wait to be
    sent (the session reads its input far ahead of its submits: without this bound one process
    would hold lines the others could be sending). ``on_progress(done)`` is told how many lines
    of the batch are done, for every process, whenever a claim or sweep learns it.
    """

    def __init__(
        self,
        batch: SharedBatch,
        *,
        interval: float,
        origin: Mapping[str, str],
        ahead: int,
        on_progress: Callable[[int], None] = lambda _done: None,
        chunk: int = CHUNK,
    ) -> None:
        self.batch = batch
        self.origin = dict(origin)
        self.interval = interval
        self.ahead = ahead
        self.on_progress = on_progress
        self.chunk = chunk
        self.held: set[int] = set()
        # Lines handed to the session and not yet sent (accepted, or failed before a task).
        self._unsent: set[int] = set()
        self._sent_event = anyio.Event()
        self.taken_over = 0  # lines taken from processes that stopped or died
        self.failures = 0  # Redis calls about the lines that failed after a task existed

    async def lines(
        self, source: Callable[[], Iterable[Entry | LineError]], *, stopping: Callable[[], bool]
    ) -> AsyncGenerator[Entry | LineError, None]:
        """This process's lines of the file, claimed as it is read, then those it takes over;
        ends once no other live process holds a line (every line is done, or left to the
        batch's next run), or when ``stopping()``."""
        chunk: list[Entry | LineError] = []
        for item in source():
            chunk.append(item)
            if len(chunk) >= self.chunk:
                await self._wait_room()
                if stopping():
                    return
                async for mine in self._claimed(chunk):
                    yield mine
                chunk = []
        if chunk:
            await self._wait_room()
            if not stopping():
                async for mine in self._claimed(chunk):
                    yield mine
        while not stopping():
            await self._wait_room()
            taken, elsewhere = await self.batch.sweep(limit=self.chunk)
            if taken:
                self.held.update(taken)
                self.taken_over += len(taken)
                wanted = set(taken)
                for item in source():
                    if item.index in wanted:
                        self._unsent.add(item.index)
                        yield item
                continue
            if not elsewhere:
                return
            progress = await self.progress()
            if progress is not None:
                self.on_progress(progress.done)
            await anyio.sleep(self.interval)

    async def _claimed(self, chunk: list[Entry | LineError]) -> AsyncIterator[Entry | LineError]:
        taken, done = await self.batch.claim(item.index for item in chunk)
        self.on_progress(done)
        self.held.update(taken)
        for item in chunk:
            if item.index in taken:
                self._unsent.add(item.index)
                yield item

    async def _wait_room(self) -> None:
        while len(self._unsent) >= self.ahead:
            await self._sent_event.wait()

    def sent(self, index: int) -> None:
        """Line ``index`` left the session's queue (accepted, or finished without a task)."""
        if index in self._unsent:
            self._unsent.discard(index)
            self._sent_event.set()
            self._sent_event = anyio.Event()

    async def finish(self, index: int, record: Mapping[str, Any], *, succeeded: bool) -> bool:
        """Record line ``index``'s result for every process: False when another process
        recorded it first (this one writes no result line). A Redis failure is logged and
        the line counts as recorded here (its result line is written: the images are here)."""
        self.held.discard(index)
        self.sent(index)
        try:
            return await self.batch.finish(index, {**record, **self.origin}, succeeded=succeeded)
        except Exception as exc:  # a CoordinatorError: the line may be done once more elsewhere
            self.failures += 1
            _log.warning("%s", exc)
            return True

    async def drop(self, index: int) -> None:
        """Line ``index`` failed without a result (or is in doubt): left to the next run."""
        self.sent(index)
        if index in self.held:
            self.held.discard(index)
            await self._release([index], give=False)

    async def give_back(self) -> None:
        """Give every line still held to the other processes (this one is leaving)."""
        held, self.held = sorted(self.held), set()
        await self._release(held, give=True)

    async def progress(self) -> SharedProgress | None:
        """The batch's progress for every process (None when Redis cannot say)."""
        try:
            return await self.batch.progress()
        except Exception as exc:
            self.failures += 1
            _log.warning("%s", exc)
            return None

    async def results(self) -> dict[int, dict[str, Any]] | None:
        """Every line's recorded result, for every process (None when Redis cannot say)."""
        try:
            return await self.batch.results()
        except Exception as exc:
            self.failures += 1
            _log.warning("%s", exc)
            return None

    async def _release(self, indices: list[int], *, give: bool) -> None:
        if not indices:
            return
        with anyio.move_on_after(_RELEASE_TIMEOUT, shield=True):
            try:
                await self.batch.release(indices, give=give)
            except Exception as exc:  # their claims end with this process's lease anyway
                self.failures += 1
                _log.warning("%s", exc)
