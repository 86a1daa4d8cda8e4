"""The ledger: every paid action written *ahead*, so that no crash, signal, full disk or
cancelled caller pays twice or loses a paid task.

A job goes through three records, under one idempotency key:

- **intent**, before the submit POST leaves: provider, model, a digest of the request, the
  key sent with it, the time, and the cost it reserves (``reserved_usd``, null when the price
  is unknown, for ``images`` images). It is durable before anything is sent; if it cannot be
  written, nothing is sent.
- **acceptance**, when the provider answers with a task: its :class:`~flux_async.TaskRef`,
  durable before anything waits on the task.
- **settlement**, when the job ends: how (``succeeded``, ``failed``, or ``not_submitted`` when
  it is certain that no task exists), and what it cost (a :class:`~flux_async.Cost`; none when
  nothing was charged). Settlements are not forced to disk: losing one costs a status check on
  recovery, never money (the job's reservation keeps counting meanwhile).

What the entries cost is how a budget spans sessions: a session counts every entry of its
provider that it finds in its ledger, a settled one at its settled cost
(:meth:`Ledger.settled_spend`, totals kept even for entries a :class:`MemoryLedger` forgot) and
an unsettled one (in flight or in doubt) at its reservation.

An intent without an acceptance or a settlement is a POST that may or may not have created a
task: recovery looks it up where the provider allows (toapis, by the key) and otherwise reports
it *in doubt*; it is never sent again silently.

:class:`Ledger` is the protocol a session writes to; :class:`MemoryLedger` (the default, for a
process that keeps no record across restarts) and :class:`FileLedger` (an append-only JSON-lines
file, fsynced at intent and acceptance) implement it. Plain values and file I/O only: this module
must not import the session, the transport, the scheduler or the codecs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, Protocol, Self, runtime_checkable

from ._jsonl import complete_last_line, write_line
from ._ledger_entries import (
    SETTLED,
    Entries,
    LedgerEntry,
    SettledSpend,
    SettledStatus,
    parse_amount,
    parse_cost,
)
from .errors import ConfigurationError
from .models import Cost, TaskRef

__all__ = [
    "FileLedger",
    "Ledger",
    "LedgerEntry",
    "MemoryLedger",
    "SettledSpend",
    "SettledStatus",
]

_KIND: Final = "flux-async ledger"
_VERSION: Final = 1


@runtime_checkable
class Ledger(Protocol):
    """Where a session records paid actions. Implementations must make :meth:`intend` and
    :meth:`accept` durable before they return, and :meth:`settle` cheap (it may buffer).

    The session calls them from one event loop; a ledger shared by several processes (a server)
    must make :meth:`intend` an atomic claim of the key.
    """

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
        """Record an intent, and the cost it reserves, unless the key is already recorded: then
        record nothing and return what is recorded (a settled ``not_submitted`` entry is
        replaced: no task exists). Raises (``OSError``, ...) when the intent could not be made
        durable."""
        ...

    async def accept(self, key: str, ref: TaskRef) -> None:
        """Record that the provider accepted the key's submit as task ``ref``."""
        ...

    def settle(
        self, key: str, status: SettledStatus, *, error: str | None = None, cost: Cost | None = None
    ) -> None:
        """Record how the key's job ended and what it cost (None: nothing was charged). Must not
        block; a failure here is the ledger's to report (it costs a status check on recovery,
        never money)."""
        ...

    async def get(self, key: str) -> LedgerEntry | None:
        """The entry of ``key``, if recorded."""
        ...

    def unsettled(self) -> list[LedgerEntry]:
        """Every entry not settled: accepted tasks to re-attach, and intents in doubt."""
        ...

    def settled_spend(self, provider: str) -> Mapping[str, SettledSpend]:
        """What the settled entries of ``provider`` cost, per model, over every settlement the
        ledger has held (those it has since forgotten included)."""
        ...

    async def aclose(self) -> None:
        """Flush and release what the ledger holds."""
        ...


class MemoryLedger:
    """A ledger in this process's memory: the default.

    It keeps what one process needs: idempotency keys (a second submit with an accepted key
    returns the existing job) and every unsettled entry; settled ones are forgotten past
    ``max_settled`` (least recently settled first). Nothing survives the process: use a
    :class:`FileLedger` (or a shared ledger) for that.
    """

    def __init__(self, *, max_settled: int | None = 10_000) -> None:
        if max_settled is not None and max_settled < 0:
            raise ConfigurationError("MemoryLedger(max_settled=...) must be >= 0 or None")
        self._entries = Entries(max_settled)

    def __repr__(self) -> str:
        return f"MemoryLedger(entries={len(self._entries)})"

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
        return self._intend_now(key, provider, model, digest, at, reserved_usd, images)

    def _intend_now(
        self,
        key: str,
        provider: str,
        model: str,
        digest: str,
        at: float,
        reserved_usd: float | None = None,
        images: int = 1,
    ) -> LedgerEntry | None:
        """:meth:`intend` without a coroutine (for the session's submits, on this class only)."""
        existing = self._entries.claim(key, provider, model, digest, at, reserved_usd, images)
        return None if existing is None else existing.entry()

    async def accept(self, key: str, ref: TaskRef) -> None:
        self._accept_now(key, ref)

    def _accept_now(self, key: str, ref: TaskRef) -> None:
        """:meth:`accept` without a coroutine (for the session's submits, on this class only)."""
        self._entries.accept(key, ref, time.time())

    def settle(
        self, key: str, status: SettledStatus, *, error: str | None = None, cost: Cost | None = None
    ) -> None:
        self._entries.settle(key, status, error, time.time(), cost)

    async def get(self, key: str) -> LedgerEntry | None:
        record = self._entries.get(key)
        return None if record is None else record.entry()

    def unsettled(self) -> list[LedgerEntry]:
        return self._entries.unsettled()

    def settled_spend(self, provider: str) -> Mapping[str, SettledSpend]:
        return self._entries.settled_spend(provider)

    async def aclose(self) -> None:
        return None


class FileLedger:
    """An append-only JSON-lines file: a header line, then one line per record.

    Intents and acceptances are flushed and fsynced before their call returns (a new file's
    directory is fsynced too); settlements are flushed only. Opening an existing file reads it
    back (a last line cut short by a crash is dropped, or completed if it is whole), so a new
    session knows every key and every unsettled entry of the earlier ones. ``meta`` is stored in
    the header of a new file and read back as :attr:`meta` (the command line keeps its batch's
    description there). One process writes a file at a time.
    """

    def __init__(self, path: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._entries = Entries(None)
        self.meta: Mapping[str, Any] = dict(meta or {})
        self.settle_errors = 0  # settlements that could not be written (logged by the session)
        self._handle: IO[str] | None = None
        created = not self.path.exists() or self.path.stat().st_size == 0
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._write({"ledger": _KIND, "version": _VERSION, "meta": dict(self.meta)}, sync=True)
            _fsync_dir(self.path.parent)
        else:
            complete_last_line(self.path)
            self.meta = self._load()
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def __repr__(self) -> str:
        return f"FileLedger({os.fspath(self.path)!r}, entries={len(self._entries)})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- the protocol ----------------------------------------------------------------------------

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
        held = self._entries.get(key)
        if held is not None and held.status != "not_submitted":
            return held.entry()
        line: dict[str, Any] = {
            "op": "intent",
            "key": key,
            "provider": provider,
            "model": model,
            "digest": digest,
            "at": at,
            "reserved_usd": reserved_usd,
            "images": images,
        }
        self._write(line, sync=True)  # raises: then nothing is sent, nothing is held
        self._entries.claim(key, provider, model, digest, at, reserved_usd, images)
        return None

    async def accept(self, key: str, ref: TaskRef) -> None:
        at = time.time()
        self._write({"op": "accept", "key": key, "ref": ref.to_dict(), "at": at}, sync=True)
        self._entries.accept(key, ref, at)

    def settle(
        self, key: str, status: SettledStatus, *, error: str | None = None, cost: Cost | None = None
    ) -> None:
        at = time.time()
        if not self._entries.settle(key, status, error, at, cost):
            return
        record: dict[str, Any] = {"op": "settle", "key": key, "status": status, "at": at}
        if error is not None:
            record["error"] = error
        if cost is not None:
            record["cost"] = {"usd": cost.usd, "source": cost.source}
        try:
            self._write(record, sync=False)
        except OSError:
            self.settle_errors += 1  # a lost settlement costs a status check on recovery

    async def get(self, key: str) -> LedgerEntry | None:
        record = self._entries.get(key)
        return None if record is None else record.entry()

    def unsettled(self) -> list[LedgerEntry]:
        return self._entries.unsettled()

    def settled_spend(self, provider: str) -> Mapping[str, SettledSpend]:
        return self._entries.settled_spend(provider)

    async def aclose(self) -> None:
        self.close()

    # -- the file ----------------------------------------------------------------------------------

    def entries(self) -> Iterator[LedgerEntry]:
        """Every entry read or written so far (unsettled first)."""
        yield from self._entries.unsettled()
        yield from self._entries.settled()

    def close(self) -> None:
        """Close the file (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def _write(self, record: Mapping[str, Any], *, sync: bool) -> None:
        handle = self._handle
        if handle is None:
            raise OSError(f"the ledger {self.path} is closed")
        write_line(handle, record, sync=sync)

    def _load(self) -> Mapping[str, Any]:
        meta: Mapping[str, Any] | None = None
        with open(self.path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                    if not isinstance(record, dict):
                        raise TypeError("not an object")
                    if meta is None:
                        if record.get("ledger") != _KIND or record.get("version") != _VERSION:
                            raise ConfigurationError(
                                f"{self.path} is not a flux-async ledger (version {_VERSION})"
                            )
                        meta = dict(record.get("meta") or {})
                        continue
                    self._replay(record)
                except ConfigurationError:
                    raise
                except (ValueError, TypeError, KeyError) as exc:
                    raise ConfigurationError(f"{self.path}:{number}: not a ledger record ({exc})") from None
        if meta is None:
            raise ConfigurationError(f"{self.path} is not a flux-async ledger (no header)")
        return meta

    def _replay(self, record: Mapping[str, Any]) -> None:
        op = record["op"]
        key = str(record["key"])
        at = float(record["at"])
        if op == "intent":
            images = record.get("images", 1)
            if not isinstance(images, int) or isinstance(images, bool) or images < 1:
                raise ValueError(f"bad images {images!r}")
            self._entries.claim(
                key,
                str(record["provider"]),
                str(record["model"]),
                str(record["digest"]),
                at,
                parse_amount(record.get("reserved_usd")),
                images,
            )
        elif op == "accept":
            self._entries.accept(key, TaskRef.from_dict(record["ref"]), at)
        elif op == "settle":
            status = record["status"]
            if status not in SETTLED:
                raise ValueError(f"unknown status {status!r}")
            error = record.get("error")
            cost = record.get("cost")
            if cost is not None:
                cost = parse_cost(cost["usd"], cost["source"])
            self._entries.settle(key, status, None if error is None else str(error), at, cost)
        else:
            raise ValueError(f"unknown op {op!r}")


def _fsync_dir(path: Path) -> None:
    """Make a new file's directory entry durable (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
