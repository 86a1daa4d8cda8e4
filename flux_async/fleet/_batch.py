"""One batch file's lines split between the processes that run it (``flux-async batch FILE
--redis URL`` started several times): which process holds which line, and each line's result,
kept in Redis beside the account's other keys (``RedisCoordinator.batch``).

Every step is one of the coordinator's Lua scripts (``BATCH_*`` in ``_scripts``), so two
processes never both take a line:

- a process **claims** lines as it reads the file (``claim``): a line that is not done and held
  by nobody, or by a dead process (its lease expired), becomes its own;
- once it has read the whole file it **sweeps** (``sweep``): lines given back by a process that
  stopped, and lines of dead processes, are taken over, while lines held by live processes are
  only counted (it waits for them, to take them over if their process dies);
- a line's result is recorded once (``finish``): a second record (the same line finished twice
  after a lease was lost) is refused, and its process writes no result line;
- a process that stops gives back the lines it never sent (``release(give=True)``: the others
  take them now) and drops those that failed without a result or are in doubt
  (``release(give=False)``: the batch's next run takes them, as ``--resume`` would).

Money is not decided here: each line is submitted under the batch's idempotency key for it,
through the shared ledger, which answers a line taken over from a dead process with the task
that process paid for (or reports it in doubt), never with a second POST.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._connect import coordinator_error

if TYPE_CHECKING:
    from ._coordinator import RedisCoordinator

__all__ = ["BATCH_RETENTION", "SharedBatch", "SharedProgress"]

#: How long a batch's lines and results stay in Redis after its last change (seconds).
BATCH_RETENTION: Final = 30 * 86400.0


@attrs.frozen
class SharedProgress:
    """Where a shared batch stands, for every process together."""

    succeeded: int  #: lines recorded as succeeded
    failed: int  #: lines recorded as failed for good
    claimed: int  #: lines held by a process (running, given back, or of a dead process)

    @property
    def done(self) -> int:
        """Lines with a recorded result."""
        return self.succeeded + self.failed


class SharedBatch:
    """The lines of batch ``batch_id`` in Redis (see the module docstring). Built by
    :meth:`RedisCoordinator.batch`; used while the coordinator is open."""

    def __init__(self, coordinator: RedisCoordinator, batch_id: str, *, retention: float = BATCH_RETENTION) -> None:
        self.coordinator = coordinator
        self.batch_id = batch_id
        base = f"{coordinator._prefix}batch:{batch_id}:"
        self._meta, self._claims, self._done = base + "meta", base + "claims", base + "done"
        self._retention = str(round(retention * 1000))

    def __repr__(self) -> str:
        return f"SharedBatch({self.batch_id!r})"

    async def open(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], SharedProgress]:
        """Record ``header`` for a new batch; the header stored first (this one, or the one
        of the process that started the batch) and the batch's progress."""
        stored, succeeded, failed, claimed = await self.coordinator._call(
            "BATCH_OPEN",
            [self._meta, self._claims, self._done],
            [json.dumps(dict(header), sort_keys=True), self._retention],
            f"open shared batch {self.batch_id}",
        )
        return json.loads(stored), SharedProgress(int(succeeded), int(failed), int(claimed))

    async def claim(self, indices: Iterable[int]) -> tuple[list[int], int]:
        """Take whichever of ``indices`` are free (see the module docstring): (those taken, how
        many lines of the batch are done)."""
        wanted = [str(i) for i in indices]
        if not wanted:
            return [], (await self.progress()).done
        c = self.coordinator
        result = await c._as_live(
            "BATCH_CLAIM", [c._procs, self._claims, self._done], lambda pid: [pid, *wanted],
            f"claim lines of shared batch {self.batch_id}",
        )  # fmt: skip
        return [int(i) for i in result[2:]], int(result[1])

    async def sweep(self, *, limit: int) -> tuple[list[int], int]:
        """Take up to ``limit`` lines given back or held by dead processes: (those taken, how
        many lines other processes still hold)."""
        c = self.coordinator
        result = await c._as_live(
            "BATCH_SWEEP", [c._procs, self._claims], lambda pid: [pid, str(max(0, limit))],
            f"take over lines of shared batch {self.batch_id}",
        )  # fmt: skip
        return [int(i) for i in result[2:]], int(result[1])

    async def finish(self, index: int, record: Mapping[str, Any], *, succeeded: bool) -> bool:
        """Record line ``index``'s result: False when it was recorded before (by another
        process), and nothing changed."""
        c = self.coordinator
        args = [
            c.process_id, str(index), json.dumps(dict(record), sort_keys=True),
            "succeeded" if succeeded else "failed", self._retention,
        ]  # fmt: skip
        result = await c._call(
            "BATCH_FINISH", [self._meta, self._claims, self._done], args,
            f"record line {index} of shared batch {self.batch_id}",
        )  # fmt: skip
        return int(result) == 1

    async def release(self, indices: Sequence[int], *, give: bool) -> int:
        """End this process's claims on ``indices``: given to the running processes (``give``)
        or dropped for the batch's next run. How many it held."""
        if not indices:
            return 0
        c = self.coordinator
        args = [c.process_id, "give" if give else "drop", *(str(i) for i in indices)]
        result = await c._call(
            "BATCH_RELEASE", [self._claims], args, f"release lines of shared batch {self.batch_id}"
        )
        return int(result)

    async def progress(self) -> SharedProgress:
        """Where the batch stands now, for every process together."""
        succeeded, failed, claimed = await self.coordinator._call(
            "BATCH_PROGRESS", [self._meta, self._claims], [], f"read shared batch {self.batch_id}"
        )
        return SharedProgress(int(succeeded), int(failed), int(claimed))

    async def results(self) -> dict[int, dict[str, Any]]:
        """Every recorded line's result record, by line index (one read of the whole hash)."""
        client = self.coordinator._require_client()
        try:
            raw = await client.hgetall(self._done)
        except Exception as exc:
            raise coordinator_error(
                f"read the results of shared batch {self.batch_id}", self.coordinator._url, exc
            ) from exc
        return {int(k): json.loads(v) for k, v in raw.items()}
