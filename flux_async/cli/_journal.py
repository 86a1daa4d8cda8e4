"""A batch's output directory: images, ``results.jsonl`` and the batch's ledger.
Part of the command line, never imported by the library. Plain file I/O only: no network, no
event loop, no API keys (nothing here ever sees one); from the library it takes ``TaskRef``, the
:class:`~flux_async.FileLedger` and the crash-safe line helpers of ``flux_async._jsonl``.

Layout of a batch's directory::

    journal.jsonl     the batch's ledger: a header (what the batch is), then intents,
                      acceptances and settlements, one per line
    results.jsonl     one line per finished request: index, task id, status, files, error
    <index>-<task_id>.<ext>            the images (``-<k>`` before the suffix when a job has several)

The ledger is what makes a batch resumable and keeps it from paying twice: every request is
submitted under the idempotency key ``<run>-<index>``, and the session writes the intent before
its POST leaves and the acceptance before anything waits on the task (both fsynced). A rerun
reads both files back (:meth:`OutputDir.reopen`): requests with a result line are done; an
accepted task without one is re-attached by its reference; an intent with no acceptance is looked
up by its key (toapis) or reported *in doubt* (never sent again unless asked); everything else
is submitted. Finished requests cost two bits per index, so resuming a batch of millions stays small.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from .. import FileLedger
from .._jsonl import complete_last_line, write_line
from ._api import ConfigurationError, TaskRef

__all__ = [
    "JOURNAL_NAME",
    "JOURNAL_VERSION",
    "RESULTS_NAME",
    "BatchState",
    "IndexSet",
    "JournalError",
    "JournalHeader",
    "OutputDir",
    "image_name",
    "load_state",
]

JOURNAL_NAME: Final = "journal.jsonl"
RESULTS_NAME: Final = "results.jsonl"
JOURNAL_VERSION: Final = 2
_JOURNAL_KIND: Final = "flux-async batch journal"


class JournalError(Exception):
    """The output directory cannot be used as asked (exists, mismatched, unreadable)."""


class IndexSet:
    """A set of non-negative ints stored as a bitmap: one bit per index up to the largest."""

    __slots__ = ("_bits", "_count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def add(self, index: int) -> None:
        """Add ``index`` (a no-op when already present)."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        mask = 1 << bit
        if not self._bits[byte] & mask:
            self._bits[byte] |= mask
            self._count += 1

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or index < 0:
            return False
        byte, bit = divmod(index, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def __len__(self) -> int:
        return self._count


@attrs.frozen(kw_only=True)
class JournalHeader:
    """What a batch is: a resumed batch must match it exactly. Kept in the ledger's header.

    ``fingerprint`` is the SHA-256 of the input file; ``defaults`` are the command line's
    request fields (they shape every request of a ``.txt`` file). ``run`` is made once per batch
    (random) and names its requests: request ``i`` is submitted under the idempotency key
    ``<run>-<i>`` on every run of the batch.
    """

    provider: str
    input: str
    fingerprint: str
    requests: int
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    run: str = attrs.field(factory=lambda: secrets.token_hex(8))

    def key(self, index: int, attempt: int = 0) -> str:
        """The idempotency key of request ``index``: ``<run>-<index>``, and ``.<attempt>`` after
        it for a request sent again by ``--retry-failed`` (a new key: a new task)."""
        return f"{self.run}-{index}" if attempt == 0 else f"{self.run}-{index}.{attempt}"

    def parse_key(self, key: str) -> tuple[int, int] | None:
        """(index, attempt) of a key of this batch (None for any other key)."""
        prefix, _, rest = key.rpartition("-")
        number, _, attempt = rest.partition(".")
        if prefix != self.run or not number.isdigit() or not (attempt.isdigit() or attempt == ""):
            return None
        return int(number), int(attempt or 0)

    def index_of(self, key: str) -> int | None:
        """The request index a key of this batch names (None for any other key)."""
        parsed = self.parse_key(key)
        return None if parsed is None else parsed[0]

    def to_json(self) -> dict[str, Any]:
        """The header's JSON object (the ledger's ``meta``)."""
        return {
            "journal": _JOURNAL_KIND,
            "version": JOURNAL_VERSION,
            "provider": self.provider,
            "input": self.input,
            "fingerprint": self.fingerprint,
            "requests": self.requests,
            "defaults": dict(self.defaults),
            "run": self.run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalHeader:
        """Read a header; raises JournalError for anything else."""
        if data.get("journal") != _JOURNAL_KIND:
            raise JournalError("the journal's header is not a flux-async batch journal header")
        if data.get("version") != JOURNAL_VERSION:
            raise JournalError(
                f"the journal was written by another version of flux-async (format "
                f"{data.get('version')!r}, this one reads {JOURNAL_VERSION}): finish the batch with that version"
            )
        try:
            return cls(
                provider=str(data["provider"]),
                input=str(data["input"]),
                fingerprint=str(data["fingerprint"]),
                requests=int(data["requests"]),
                defaults=dict(data.get("defaults") or {}),
                run=str(data["run"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"the journal header is incomplete: {exc}") from None

    def mismatch(self, other: JournalHeader) -> str | None:
        """Why a batch described by ``other`` cannot continue this journal, or None."""
        if other.provider != self.provider:
            return f"the journal is for provider {self.provider!r}, not {other.provider!r}"
        if other.fingerprint != self.fingerprint:
            return f"the input file changed since the batch started (it was {self.input})"
        if dict(other.defaults) != dict(self.defaults):
            return "the request options (--model, --size, ...) differ from the original run's"
        return None


@attrs.frozen(kw_only=True)
class BatchState:
    """What an output directory says about a batch so far.

    ``finished`` holds the indices with a result line; ``reopened`` those of them sent again
    (``--retry-failed``) whose new attempt has no result yet: they are not done. ``failures``
    maps each index whose latest result is a failure to its error kind (``failed`` counts those
    not reopened). ``attempts`` gives the current attempt of each index sent more than once.
    ``accepted`` maps each index not done whose current attempt the provider accepted to its
    ref; ``in_doubt`` each index not done whose current attempt was sent and never answered on
    record to the time it was sent (Unix seconds).
    """

    header: JournalHeader
    finished: IndexSet
    failed: int
    accepted: Mapping[int, TaskRef]
    in_doubt: Mapping[int, float]
    failures: Mapping[int, str] = attrs.field(factory=dict)
    attempts: Mapping[int, int] = attrs.field(factory=dict)
    reopened: frozenset[int] = frozenset()

    @property
    def previous_done(self) -> int:
        """Requests done in earlier runs."""
        return len(self.finished) - len(self.reopened)

    def done(self, index: int) -> bool:
        """True when request ``index``'s current attempt has a result line."""
        return index in self.finished and index not in self.reopened

    def attempt(self, index: int) -> int:
        """The current attempt of request ``index`` (0: its first)."""
        return self.attempts.get(index, 0)

    def needs_submit(self, index: int) -> bool:
        """True when request ``index`` is not done and has no accepted task: it goes through
        the session (which looks up or refuses an intent in doubt, and sends the rest)."""
        return not self.done(index) and index not in self.accepted

    def retrying(self, kinds: Collection[str]) -> BatchState:
        """This state with every settled failure of one of ``kinds`` (error class names) opened
        again as a new attempt, under a new key: it will be submitted (and paid for) again."""
        chosen = {
            index
            for index, kind in self.failures.items()
            if kind in kinds and index not in self.reopened
        }
        if not chosen:
            return self
        attempts = dict(self.attempts)
        for index in chosen:
            attempts[index] = attempts.get(index, 0) + 1
        return attrs.evolve(
            self, attempts=attempts, reopened=self.reopened | chosen, failed=self.failed - len(chosen)
        )


def image_name(index: int, task_id: str, ext: str, *, k: int = 0, count: int = 1) -> str:
    """``<index>-<task_id>.<ext>``; ``-<k>`` is added before the suffix when a job has several."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]
    suffix = f"-{k}" if count > 1 else ""
    return f"{index}-{safe}{suffix}.{ext.lstrip('.')}"


class OutputDir:
    """An open batch directory: the batch's ledger and its result lines.

    Open with :meth:`create` (a new batch) or :meth:`reopen` (``--resume``). The session writes
    the ledger (pass :attr:`ledger` to it); this object appends result lines, each written whole
    with one call (a line cut short by a crash is dropped when the file is reopened).
    """

    def __init__(self, path: Path, header: JournalHeader, ledger: FileLedger, results: IO[str]) -> None:
        self.path = path
        self.header = header
        self.ledger = ledger
        self._results = results

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: JournalHeader) -> OutputDir:
        """Start a batch in ``path`` (created if needed); refuses a directory holding a journal."""
        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create {root}: {exc.strerror}") from None
        if (root / JOURNAL_NAME).exists() or (root / RESULTS_NAME).exists():
            raise JournalError(
                f"{root} already holds a batch: pass --resume to continue it, or choose another directory"
            )
        try:
            ledger = FileLedger(root / JOURNAL_NAME, meta=header.to_json())
        except OSError as exc:
            raise JournalError(f"cannot write {root / JOURNAL_NAME}: {exc.strerror}") from None
        return cls(root, header, ledger, _open_append(root / RESULTS_NAME))

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> tuple[OutputDir, BatchState]:
        """Open an existing batch directory to continue it, with what it says so far."""
        root = Path(path)
        ledger = _open_ledger(root)
        try:
            header = JournalHeader.from_json(ledger.meta)
            complete_last_line(root / RESULTS_NAME)
            state = _state(root, header, ledger)
            out = cls(root, header, ledger, _open_append(root / RESULTS_NAME))
        except BaseException:
            ledger.close()
            raise
        return out, state

    def record_result(
        self,
        index: int,
        line: int,
        *,
        task_id: str | None,
        status: str,
        files: Sequence[Path] = (),
        error: Mapping[str, str] | None = None,
        attempt: int = 0,
    ) -> None:
        """Append the outcome of request ``index`` (flushed, not fsynced: the ledger is the
        record of what was paid for; a lost result line only means one more status check).
        Raises OSError when the line cannot be written."""
        record: dict[str, Any] = {
            "index": index,
            "line": line,
            "task_id": task_id,
            "status": status,
            "files": [os.fspath(self._relative(f)) for f in files],
            "error": None if error is None else dict(error),
        }
        if attempt:
            record["attempt"] = attempt
        write_line(self._results, record, sync=False)

    def _relative(self, file: Path) -> Path:
        try:
            return file.relative_to(self.path)
        except ValueError:
            return file

    def close(self) -> None:
        """Close both files."""
        self.ledger.close()
        self._results.close()


def load_state(path: str | os.PathLike[str]) -> BatchState:
    """Read a batch directory back without opening it for writing."""
    root = Path(path)
    ledger = _open_ledger(root)
    try:
        return _state(root, JournalHeader.from_json(ledger.meta), ledger)
    finally:
        ledger.close()


def _open_ledger(root: Path) -> FileLedger:
    journal_path = root / JOURNAL_NAME
    if not journal_path.exists():
        raise JournalError(f"{root} holds no batch journal ({JOURNAL_NAME}): nothing to resume")
    try:
        return FileLedger(journal_path)
    except ConfigurationError as exc:
        raise JournalError(str(exc)) from None
    except OSError as exc:
        raise JournalError(f"cannot read {journal_path}: {exc.strerror}") from None


def _state(root: Path, header: JournalHeader, ledger: FileLedger) -> BatchState:
    # Results, in the order they were written: a later line for an index supersedes.
    finished = IndexSet()
    failures: dict[int, str] = {}  # index -> error kind, while its latest result is a failure
    result_attempts: dict[int, int] = {}  # index -> attempt of its latest result, when not 0
    results_path = root / RESULTS_NAME
    if results_path.exists():
        for number, record in _records(results_path):
            index = _index(record, results_path, number)
            finished.add(index)
            attempt = record.get("attempt") or 0
            if isinstance(attempt, int) and attempt > 0:
                result_attempts[index] = attempt
            else:
                result_attempts.pop(index, None)
            if record.get("status") == "succeeded":
                failures.pop(index, None)
            else:
                error = record.get("error")
                kind = error.get("kind") if isinstance(error, dict) else None
                failures[index] = str(kind or "failed")
    # The ledger: only each index's latest attempt counts (a retried request has several).
    attempts: dict[int, int] = {}
    parsed = [(header.parse_key(entry.key), entry) for entry in ledger.entries()]
    for key, _ in parsed:
        if key is not None and key[1] > attempts.get(key[0], 0):
            attempts[key[0]] = key[1]
    reopened = {index for index, attempt in attempts.items() if attempt > result_attempts.get(index, 0)}
    accepted: dict[int, TaskRef] = {}
    in_doubt: dict[int, float] = {}
    for key, entry in parsed:
        if key is None:
            continue
        index, attempt = key
        if attempt != attempts.get(index, 0) or (index in finished and index not in reopened):
            continue
        if entry.ref is not None:
            # Accepted (and perhaps settled at the provider, its images never fetched).
            accepted[index] = entry.ref
        elif entry.in_doubt:
            in_doubt[index] = entry.intended_at
    return BatchState(
        header=header,
        finished=finished,
        failed=len(failures.keys() - reopened),
        accepted=accepted,
        in_doubt=in_doubt,
        failures=failures,
        attempts=attempts,
        reopened=frozenset(reopened),
    )


def _index(record: Mapping[str, Any], path: Path, number: int) -> int:
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise JournalError(f"{path}:{number}: no valid 'index'")
    return index


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file; a cut-short last line (a crash) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                if not text.endswith("\n"):
                    return  # the last line, cut short by a crash
                raise JournalError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(record, dict):
                raise JournalError(f"{path}:{number}: not a JSON object")
            yield number, record


def _open_append(path: Path) -> IO[str]:
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise JournalError(f"cannot open {path}: {exc.strerror}") from None
