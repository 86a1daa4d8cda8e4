"""A batch's output directory: images, ``results.jsonl`` and the journal of accepted tasks.
Part of the command line, never imported by the library. Plain file I/O only: no network, no
event loop, no API keys (nothing here ever sees one); from the library it takes only ``TaskRef``.

Layout of a batch's directory::

    journal.jsonl     a header line, then one line per task the provider accepted
    results.jsonl     one line per finished request: index, task id, status, files, error
    <index>-<task_id>.<ext>            the images (``-<k>`` before the suffix when a job has several)

The journal is what makes a batch resumable and keeps it from paying twice: each accepted task
is appended, flushed and fsynced the moment the provider accepts it, before anything waits on
it. A rerun reads both files back (:func:`load_state`): requests with a result line are done,
requests in the journal without one are re-attached by their task reference, and only requests
in neither are submitted. The state needs two bits per request index plus the unfinished
references, so resuming a batch of millions stays small.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from ._api import TaskRef

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
JOURNAL_VERSION: Final = 1
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
    """What a journal belongs to: a resumed batch must match it exactly.

    ``fingerprint`` is the SHA-256 of the input file; ``defaults`` are the command line's
    request fields (they shape every request of a ``.txt`` file).
    """

    provider: str
    input: str
    fingerprint: str
    requests: int
    defaults: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The header line's JSON object."""
        return {
            "journal": _JOURNAL_KIND,
            "version": JOURNAL_VERSION,
            "provider": self.provider,
            "input": self.input,
            "fingerprint": self.fingerprint,
            "requests": self.requests,
            "defaults": dict(self.defaults),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalHeader:
        """Read a header line; raises JournalError for anything else."""
        if data.get("journal") != _JOURNAL_KIND or data.get("version") != JOURNAL_VERSION:
            raise JournalError("the journal's first line is not a flux-async batch journal header")
        try:
            return cls(
                provider=str(data["provider"]),
                input=str(data["input"]),
                fingerprint=str(data["fingerprint"]),
                requests=int(data["requests"]),
                defaults=dict(data.get("defaults") or {}),
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

    ``finished`` holds the indices with a result line (``failed`` of them without an image),
    ``submitted`` those with a journal entry; ``unfinished`` maps each submitted index without a
    result to ``(line, ref)``.
    """

    header: JournalHeader
    finished: IndexSet
    failed: int
    submitted: IndexSet
    unfinished: Mapping[int, tuple[int, TaskRef]]

    def needs_submit(self, index: int) -> bool:
        """True when request ``index`` was never accepted and never finished."""
        return index not in self.submitted and index not in self.finished


def image_name(index: int, task_id: str, ext: str, *, k: int = 0, count: int = 1) -> str:
    """``<index>-<task_id>.<ext>``; ``-<k>`` is added before the suffix when a job has several."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]
    suffix = f"-{k}" if count > 1 else ""
    return f"{index}-{safe}{suffix}.{ext.lstrip('.')}"


class OutputDir:
    """An open batch directory: append journal entries and result lines.

    Open with :meth:`create` (a new batch) or :meth:`reopen` (``--resume``). Every line is
    written whole with one call; a line cut short by a crash is dropped when the file is
    reopened.
    """

    def __init__(self, path: Path, journal: IO[str], results: IO[str]) -> None:
        self.path = path
        self._journal = journal
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
        journal = _open_append(root / JOURNAL_NAME)
        _write_line(journal, header.to_json(), sync=True)
        return cls(root, journal, _open_append(root / RESULTS_NAME))

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> OutputDir:
        """Open an existing batch directory to append to it (after :func:`load_state`)."""
        root = Path(path)
        for name in (JOURNAL_NAME, RESULTS_NAME):
            _drop_partial_line(root / name)
        return cls(root, _open_append(root / JOURNAL_NAME), _open_append(root / RESULTS_NAME))

    def record_submit(self, index: int, line: int, ref: TaskRef) -> None:
        """Append an accepted task; returns once it is on disk (flushed and fsynced)."""
        _write_line(self._journal, {"index": index, "line": line, "ref": ref.to_dict()}, sync=True)

    def record_result(
        self,
        index: int,
        line: int,
        *,
        task_id: str | None,
        status: str,
        files: Sequence[Path] = (),
        error: Mapping[str, str] | None = None,
    ) -> None:
        """Append the outcome of request ``index`` (flushed, not fsynced: the journal is the
        record of what was paid for; a lost result line only means one more status check)."""
        record: dict[str, Any] = {
            "index": index,
            "line": line,
            "task_id": task_id,
            "status": status,
            "files": [os.fspath(self._relative(f)) for f in files],
            "error": None if error is None else dict(error),
        }
        _write_line(self._results, record, sync=False)

    def _relative(self, file: Path) -> Path:
        try:
            return file.relative_to(self.path)
        except ValueError:
            return file

    def close(self) -> None:
        """Close both files."""
        self._journal.close()
        self._results.close()


def load_state(path: str | os.PathLike[str]) -> BatchState:
    """Read a batch directory back for ``--resume``; raises JournalError when it holds none."""
    root = Path(path)
    journal_path = root / JOURNAL_NAME
    if not journal_path.exists():
        raise JournalError(f"{root} holds no batch journal ({JOURNAL_NAME}): nothing to resume")
    finished = IndexSet()
    failed = 0
    results_path = root / RESULTS_NAME
    if results_path.exists():
        for number, record in _records(results_path):
            index = _index(record, results_path, number)
            if index not in finished and record.get("status") != "succeeded":
                failed += 1
            finished.add(index)
    submitted = IndexSet()
    unfinished: dict[int, tuple[int, TaskRef]] = {}
    header: JournalHeader | None = None
    for number, record in _records(journal_path):
        if header is None:
            header = JournalHeader.from_json(record)
            continue
        index = _index(record, journal_path, number)
        try:
            ref = TaskRef.from_dict(record["ref"])
            line = int(record.get("line", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"{journal_path}:{number}: not a journal entry ({exc})") from None
        submitted.add(index)
        if index not in finished:
            unfinished[index] = (line, ref)
    if header is None:
        raise JournalError(f"{journal_path} is empty: nothing to resume")
    return BatchState(
        header=header, finished=finished, failed=failed, submitted=submitted, unfinished=unfinished
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


def _write_line(handle: IO[str], record: Mapping[str, Any], *, sync: bool) -> None:
    handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    handle.flush()
    if sync:
        os.fsync(handle.fileno())


def _drop_partial_line(path: Path) -> None:
    """End the file on a newline so appends start a fresh line.

    A crash can leave the last line without its newline: a complete JSON object just gets its
    newline (it may be a journal entry: dropping it would forget a paid task), anything else
    was cut short mid-write and is removed.
    """
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # Walk back to the previous newline in small steps; lines are short.
        start = 0
        position = size
        while position > 0:
            step = min(4096, position)
            handle.seek(position - step)
            cut = handle.read(step).rfind(b"\n")
            if cut >= 0:
                start = position - step + cut + 1
                break
            position -= step
        handle.seek(start)
        tail = handle.read()
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        if complete:
            handle.seek(size)
            handle.write(b"\n")
        else:
            handle.truncate(start)
