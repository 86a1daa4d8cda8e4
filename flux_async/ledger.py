"""The ledger: every paid action written *ahead*, so that no crash, signal, full disk or
cancelled caller pays twice or loses a paid task.

A job goes through three records, under one idempotency key:

- **intent**, before the submit POST leaves: provider, model, a digest of the request, the
  key sent with it, the time. It is durable before anything is sent; if it cannot be written,
  nothing is sent.
- **acceptance**, when the provider answers with a task: its :class:`~flux_async.TaskRef`,
  durable before anything waits on the task.
- **settlement**, when the job ends: how (``succeeded``, ``failed``, or ``not_submitted`` when
  it is certain that no task exists). Settlements are not forced to disk: losing one costs a
  status check on recovery, never money.

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
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol, Self, runtime_checkable

import attrs

from ._jsonl import complete_last_line, write_line
from .errors import ConfigurationError
from .models import TaskRef

__all__ = [
    "FileLedger",
    "Ledger",
    "LedgerEntry",
    "MemoryLedger",
    "SettledStatus",
]

#: How a job ended, as the ledger records it. ``not_submitted``: no task exists (the provider
#: refused the submit, or a lookup proved that the POST created none).
SettledStatus = Literal["succeeded", "failed", "not_submitted"]
_SETTLED: Final = frozenset({"succeeded", "failed", "not_submitted"})

_KIND: Final = "flux-async ledger"
_VERSION: Final = 1


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """What the ledger knows about one idempotency key.

    ``state`` says how far the job got: ``intended`` (the POST may have left: in doubt until
    resolved), ``accepted`` (a task exists: ``ref``) or ``settled`` (``status`` says how it
    ended; ``ref`` is set if a task existed). Times are Unix seconds. ``digest`` is the SHA-256
    of the request without its key (for a key the caller chose), so that a key reused for
    another request is caught.
    """

    key: str
    provider: str
    model: str
    digest: str
    intended_at: float
    ref: TaskRef | None = None
    accepted_at: float | None = None
    status: SettledStatus | None = None
    error: str | None = None
    settled_at: float | None = None

    @property
    def state(self) -> Literal["intended", "accepted", "settled"]:
        """``intended``, ``accepted`` or ``settled``."""
        if self.status is not None:
            return "settled"
        return "intended" if self.ref is None else "accepted"

    @property
    def in_doubt(self) -> bool:
        """True for an intent with neither acceptance nor settlement: a POST of unknown fate."""
        return self.ref is None and self.status is None


@runtime_checkable
class Ledger(Protocol):
    """Where a session records paid actions. Implementations must make :meth:`intend` and
    :meth:`accept` durable before they return, and :meth:`settle` cheap (it may buffer).

    The session calls them from one event loop; a ledger shared by several processes (a server)
    must make :meth:`intend` an atomic claim of the key.
    """

    async def intend(
        self, key: str, *, provider: str, model: str, digest: str, at: float
    ) -> LedgerEntry | None:
        """Record an intent, unless the key is already recorded: then record nothing and return
        what is recorded (a settled ``not_submitted`` entry is replaced: no task exists).
        Raises (``OSError``, ...) when the intent could not be made durable."""
        ...

    async def accept(self, key: str, ref: TaskRef) -> None:
        """Record that the provider accepted the key's submit as task ``ref``."""
        ...

    def settle(self, key: str, status: SettledStatus, *, error: str | None = None) -> None:
        """Record how the key's job ended. Must not block; a failure here is the ledger's to
        report (it costs a status check on recovery, never money)."""
        ...

    async def get(self, key: str) -> LedgerEntry | None:
        """The entry of ``key``, if recorded."""
        ...

    def unsettled(self) -> list[LedgerEntry]:
        """Every entry not settled: accepted tasks to re-attach, and intents in doubt."""
        ...

    async def aclose(self) -> None:
        """Flush and release what the ledger holds."""
        ...


def _now() -> float:
    return time.time()


class _Record:
    """One key's entry while a ledger holds it: mutable, so a record costs no copy per step."""

    __slots__ = (
        "accepted_at",
        "digest",
        "error",
        "intended_at",
        "key",
        "model",
        "provider",
        "ref",
        "settled_at",
        "status",
    )

    def __init__(
        self, key: str, provider: str, model: str, digest: str, at: float
    ) -> None:
        self.key = key
        self.provider = provider
        self.model = model
        self.digest = digest
        self.intended_at = at
        self.ref: TaskRef | None = None
        self.accepted_at: float | None = None
        self.status: SettledStatus | None = None
        self.error: str | None = None
        self.settled_at: float | None = None

    def entry(self) -> LedgerEntry:
        return LedgerEntry(
            key=self.key,
            provider=self.provider,
            model=self.model,
            digest=self.digest,
            intended_at=self.intended_at,
            ref=self.ref,
            accepted_at=self.accepted_at,
            status=self.status,
            error=self.error,
            settled_at=self.settled_at,
        )


class _Entries:
    """The entries of a ledger in memory: unsettled ones always, settled ones up to a bound
    (least recently settled dropped first)."""

    __slots__ = ("_open", "_settled", "_settled_limit")

    def __init__(self, settled_limit: int | None) -> None:
        self._open: dict[str, _Record] = {}
        self._settled: OrderedDict[str, _Record] = OrderedDict()
        self._settled_limit = settled_limit

    def get(self, key: str) -> _Record | None:
        record = self._open.get(key)
        return record if record is not None else self._settled.get(key)

    def claim(
        self, key: str, provider: str, model: str, digest: str, at: float
    ) -> _Record | None:
        """Record an intent for ``key``; or the record already holding it (unless it is a
        settlement without a task, which a new intent replaces)."""
        existing = self._open.get(key)
        if existing is None:
            existing = self._settled.get(key)
            if existing is not None and existing.status == "not_submitted":
                del self._settled[key]
                existing = None
        if existing is not None:
            return existing
        self._open[key] = _Record(key, provider, model, digest, at)
        return None

    def accept(self, key: str, ref: TaskRef, at: float) -> None:
        record = self.get(key)
        if record is None:
            raise KeyError(f"no intent recorded for {key!r}")
        record.ref = ref
        record.accepted_at = at

    def settle(self, key: str, status: SettledStatus, error: str | None, at: float) -> bool:
        record = self._open.pop(key, None)
        if record is None:
            record = self._settled.get(key)
            if record is None:
                return False
        record.status = status
        record.error = error
        record.settled_at = at
        settled = self._settled
        settled[key] = record
        settled.move_to_end(key)
        limit = self._settled_limit
        if limit is not None and len(settled) > limit:
            settled.popitem(last=False)
        return True

    def unsettled(self) -> list[LedgerEntry]:
        return [record.entry() for record in self._open.values()]

    def settled(self) -> Iterator[LedgerEntry]:
        return (record.entry() for record in self._settled.values())

    def __len__(self) -> int:
        return len(self._open) + len(self._settled)


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
        self._entries = _Entries(max_settled)

    def __repr__(self) -> str:
        return f"MemoryLedger(entries={len(self._entries)})"

    async def intend(
        self, key: str, *, provider: str, model: str, digest: str, at: float
    ) -> LedgerEntry | None:
        existing = self._entries.claim(key, provider, model, digest, at)
        return None if existing is None else existing.entry()

    async def accept(self, key: str, ref: TaskRef) -> None:
        self._entries.accept(key, ref, _now())

    def settle(self, key: str, status: SettledStatus, *, error: str | None = None) -> None:
        self._entries.settle(key, status, error, _now())

    async def get(self, key: str) -> LedgerEntry | None:
        record = self._entries.get(key)
        return None if record is None else record.entry()

    def unsettled(self) -> list[LedgerEntry]:
        return self._entries.unsettled()

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
        self._entries = _Entries(None)
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
        self, key: str, *, provider: str, model: str, digest: str, at: float
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
        }
        self._write(line, sync=True)  # raises: then nothing is sent, nothing is held
        self._entries.claim(key, provider, model, digest, at)
        return None

    async def accept(self, key: str, ref: TaskRef) -> None:
        at = _now()
        self._write({"op": "accept", "key": key, "ref": ref.to_dict(), "at": at}, sync=True)
        self._entries.accept(key, ref, at)

    def settle(self, key: str, status: SettledStatus, *, error: str | None = None) -> None:
        at = _now()
        if not self._entries.settle(key, status, error, at):
            return
        record: dict[str, Any] = {"op": "settle", "key": key, "status": status, "at": at}
        if error is not None:
            record["error"] = error
        try:
            self._write(record, sync=False)
        except OSError:
            self.settle_errors += 1  # a lost settlement costs a status check on recovery

    async def get(self, key: str) -> LedgerEntry | None:
        record = self._entries.get(key)
        return None if record is None else record.entry()

    def unsettled(self) -> list[LedgerEntry]:
        return self._entries.unsettled()

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
            self._entries.claim(
                key,
                str(record["provider"]),
                str(record["model"]),
                str(record["digest"]),
                at,
            )
        elif op == "accept":
            self._entries.accept(key, TaskRef.from_dict(record["ref"]), at)
        elif op == "settle":
            status = record["status"]
            if status not in _SETTLED:
                raise ValueError(f"unknown status {status!r}")
            error = record.get("error")
            self._entries.settle(key, status, None if error is None else str(error), at)
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
