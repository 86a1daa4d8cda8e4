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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from .._jsonl import complete_last_line, write_line
from ._api import ConfigurationError, Cost, FileLedger, TaskRef
from ._batchstate import BatchState, IndexSet, JournalError, JournalHeader

__all__ = ["JOURNAL_NAME", "RESULTS_NAME", "SHARED_NAME", "SHARED_RESULTS_NAME", "OutputDir", "image_name", "load_state"]

JOURNAL_NAME: Final = "journal.jsonl"
RESULTS_NAME: Final = "results.jsonl"
#: In a directory of a shared batch (``--redis``) instead of the journal: what the batch is.
SHARED_NAME: Final = "shared.json"
#: In a directory of a shared batch: every line's result recorded in Redis when a process of
#: the batch last ended there, with the host and directory holding its images.
SHARED_RESULTS_NAME: Final = "shared-results.jsonl"


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

    def __init__(self, path: Path, header: JournalHeader, ledger: FileLedger | None, results: IO[str]) -> None:
        self.path = path
        self.header = header
        self.ledger = ledger
        self._results = results

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: JournalHeader) -> OutputDir:
        """Start a batch in ``path`` (created if needed); refuses a directory holding a journal."""
        root = _make_dir(Path(path))
        if (root / SHARED_NAME).exists():
            raise JournalError(f"{root} holds a batch shared through Redis: run it with --redis URL")
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
    def shared(cls, path: str | os.PathLike[str], header: JournalHeader) -> OutputDir:
        """This process's directory for the shared batch ``header`` describes (``header.run``
        is its id): created if needed, and joined when it is that batch's already (several
        processes may write into one directory). Its ledger is the batch's, in Redis."""
        root = _make_dir(Path(path))
        if (root / JOURNAL_NAME).exists():
            raise JournalError(
                f"{root} holds a batch run without --redis: finish it without --redis, or choose another directory"
            )
        marker = root / SHARED_NAME
        try:
            if marker.exists():
                other = JournalHeader.from_json(json.loads(marker.read_text(encoding="utf-8")))
                if other.run != header.run:
                    reason = other.mismatch(header) or "it is another batch"
                    raise JournalError(f"{root} holds another shared batch ({reason}): choose another directory")
            else:
                partial = marker.with_name(f".{SHARED_NAME}.{os.getpid()}")
                partial.write_text(json.dumps(header.to_json(), indent=2) + "\n", encoding="utf-8")
                os.replace(partial, marker)
        except (OSError, ValueError) as exc:
            raise JournalError(f"cannot use {marker}: {exc}") from None
        return cls(root, header, None, _open_append(root / RESULTS_NAME))

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

    def record_result(self, index: int, line: int, **fields: Any) -> None:
        """Append the outcome of request ``index`` (flushed, not fsynced: the ledger is the
        record of what was paid for; a lost result line only means one more status check).
        Raises OSError when the line cannot be written. ``fields`` are :meth:`result_record`'s."""
        write_line(self._results, self.result_record(index, line, **fields), sync=False)

    def result_record(
        self,
        index: int,
        line: int,
        *,
        task_id: str | None,
        status: str,
        files: Sequence[Path] = (),
        error: Mapping[str, str] | None = None,
        attempt: int = 0,
        cost: Cost | None = None,
    ) -> dict[str, Any]:
        """The result line of request ``index``, as a JSON-ready dict."""
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
        if cost is not None:
            record["cost"] = cost.usd  # US dollars (null: unknown), and where the figure comes from
            record["cost_source"] = cost.source
        return record

    def write_shared_results(self, records: Mapping[int, Mapping[str, Any]]) -> Path:
        """Replace ``shared-results.jsonl`` with ``records`` (every recorded line of the shared
        batch), in index order; written whole, then renamed into place."""
        target = self.path / SHARED_RESULTS_NAME
        partial = target.with_name(f".{SHARED_RESULTS_NAME}.{os.getpid()}")
        with open(partial, "w", encoding="utf-8") as handle:
            for index in sorted(records):
                write_line(handle, records[index], sync=False)
        os.replace(partial, target)
        return target

    def _relative(self, file: Path) -> Path:
        try:
            return file.relative_to(self.path)
        except ValueError:
            return file

    def close(self) -> None:
        """Close both files."""
        if self.ledger is not None:
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


def _make_dir(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create {root}: {exc.strerror}") from None
    return root


def _open_ledger(root: Path) -> FileLedger:
    journal_path = root / JOURNAL_NAME
    if not journal_path.exists() and (root / SHARED_NAME).exists():
        raise JournalError(f"{root} holds a batch shared through Redis: run it again with --redis URL to continue it")
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
