"""``flux-async report DIR``: what a batch directory holds, gathered for its HTML report.
Part of the command line, never imported by the library. Reads files only: it must not import
the session, the transport or anything that touches the network or an event loop, and it sees
no API key (none is in a batch directory); the page itself is drawn by ``_reportpage``.

:func:`write_report` writes ``DIR/report.html`` and returns its path. What it reads, each file
optional but ``results.jsonl``:

- ``results.jsonl``, one line per finished request: index, line, task id, status, files,
  error (kind and message); and, when a line carries them, ``prompt``, ``model``, ``size``,
  ``seed``, ``seconds`` (time to result), ``cost`` and ``requests``;
- ``journal.jsonl``, the batch's ledger: its header names the input file and the command
  line's defaults; its intents and settlements give each request's model and time to result
  (intent to settlement) and the batch's wall time (first intent to last settlement);
- the input file the header names, for the prompts, sizes and seeds, used only while its
  SHA-256 still matches the header's fingerprint (a changed file would put the wrong prompt
  under an image).

Anything unreadable is left out and said so on the page, never fatal: a report is for looking.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from ._batchentry import Defaults, Entry
from ._batchfile import BatchFileError, read_entries

__all__ = ["REPORT_NAME", "Batch", "Job", "read_batch", "write_report"]

REPORT_NAME: Final = "report.html"
_RESULTS: Final = "results.jsonl"
_JOURNAL: Final = "journal.jsonl"


@attrs.frozen(kw_only=True)
class Job:
    """One finished request as the report shows it; None where the batch did not record it."""

    index: int
    line: int | None = None
    task_id: str | None = None
    status: str = "failed"
    files: tuple[str, ...] = ()
    error_kind: str | None = None
    error_message: str | None = None
    prompt: str | None = None
    model: str | None = None
    size: str | None = None
    seed: int | None = None
    seconds: float | None = None
    cost: float | None = None
    requests: int | None = None

    @property
    def ok(self) -> bool:
        """True for a job that produced its images."""
        return self.status == "succeeded"


@attrs.frozen(kw_only=True)
class Batch:
    """A batch directory, read: its jobs in input order and what is known about the whole."""

    directory: Path
    title: str
    provider: str | None = None
    requests: int | None = None
    jobs: tuple[Job, ...] = ()
    wall_time: float | None = None
    notes: tuple[str, ...] = ()


def write_report(directory: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` into the batch directory ``directory`` and return its path.

    Raises ``FileNotFoundError`` when the directory holds no ``results.jsonl`` and ``OSError``
    when the page cannot be written.
    """
    from ._reportpage import render

    batch = read_batch(directory)
    target = batch.directory / REPORT_NAME
    partial = target.with_name(f".{REPORT_NAME}.part")
    partial.write_text(render(batch), encoding="utf-8")
    os.replace(partial, target)
    return target


def read_batch(directory: str | os.PathLike[str]) -> Batch:
    """Everything the report shows, read from ``directory``."""
    root = Path(directory)
    results = root / _RESULTS
    if not results.is_file():
        raise FileNotFoundError(f"{root} holds no {_RESULTS}: is it a batch's output directory?")
    notes: list[str] = []
    records = dict(_results(results, notes))
    meta, ledger = _journal(root / _JOURNAL, notes)
    inputs = _inputs(meta, set(records), notes)
    jobs = tuple(_job(index, records[index], ledger.get(index), inputs.get(index)) for index in sorted(records))
    if not any(job.requests is not None for job in jobs):
        notes.append("Requests per job are not recorded in results.jsonl.")
    if not any(job.cost is not None for job in jobs):
        notes.append("Costs are not recorded for this batch.")
    starts = [times[0] for times in ledger.values() if times[0] is not None]
    ends = [times[1] for times in ledger.values() if times[1] is not None]
    wall = max(ends) - min(starts) if starts and ends and max(ends) >= min(starts) else None
    source = meta.get("input")
    requests = meta.get("requests")
    return Batch(
        directory=root,
        title=Path(str(source)).name if source else root.name,
        provider=None if meta.get("provider") is None else str(meta["provider"]),
        requests=requests if isinstance(requests, int) and not isinstance(requests, bool) else None,
        jobs=jobs,
        wall_time=wall,
        notes=tuple(notes),
    )


# -- results.jsonl ---------------------------------------------------------------------------------


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; other lines (a crash's cut-off last one) skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _results(path: Path, notes: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    skipped = 0
    for record in _json_lines(path):
        index = record.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            yield index, record
        else:
            skipped += 1
    if skipped:
        notes.append(f"{skipped} line(s) of results.jsonl name no request and are left out.")


# -- journal.jsonl: the header and the ledger's times ------------------------------------------------

#: Request index -> (first intent, settlement), Unix seconds, plus the model of the intent.
_Times = tuple[float | None, float | None, str | None]


def _journal(path: Path, notes: list[str]) -> tuple[Mapping[str, Any], dict[int, _Times]]:
    """The batch's description (the ledger's ``meta``, or an older journal's header) and the
    intent and settlement times of each request."""
    if not path.is_file():
        shared = path.with_name("shared.json")
        if shared.is_file():
            # A batch shared through Redis: its journal is there; the page shows this
            # directory's lines.
            notes.append(
                "A batch shared between processes through Redis: this page shows the lines finished "
                "into this directory (shared-results.jsonl lists them all); no times."
            )
            try:
                described = json.loads(shared.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                described = {}
            return (described if isinstance(described, dict) else {}), {}
        notes.append("The batch's journal is missing: no input file, models or times.")
        return {}, {}
    meta: Mapping[str, Any] = {}
    times: dict[int, _Times] = {}
    run: str | None = None
    for number, record in enumerate(_json_lines(path)):
        if number == 0:
            nested = record.get("meta")
            meta = nested if isinstance(nested, dict) else record
            run = str(meta["run"]) if "run" in meta else None
            continue
        index = _index_of(record.get("key"), run)
        at = record.get("at")
        if index is None or not isinstance(at, (int, float)):
            continue
        start, end, model = times.get(index, (None, None, None))
        if record.get("op") == "intent":
            start = at if start is None else min(start, at)
            model = str(record.get("model") or "") or model
        elif record.get("op") == "settle" and record.get("status") in ("succeeded", "failed"):
            end = at
        times[index] = (start, end, model)
    return meta, times


def _index_of(key: object, run: str | None) -> int | None:
    if not isinstance(key, str) or run is None:
        return None
    prefix, _, number = key.rpartition("-")
    return int(number) if prefix == run and number.isdigit() else None


# -- the input file --------------------------------------------------------------------------------


def _inputs(meta: Mapping[str, Any], wanted: set[int], notes: list[str]) -> dict[int, Entry]:
    """The requests of the input file at the indices ``wanted``, if the file is unchanged."""
    source = meta.get("input")
    if not source:
        if meta:
            notes.append("The journal names no input file: prompts are not shown.")
        return {}
    defaults = _defaults(meta.get("defaults"))
    digest = hashlib.sha256()
    found: dict[int, Entry] = {}
    try:
        for item in read_entries(str(source), defaults, fingerprint=digest):
            if isinstance(item, Entry) and item.index in wanted:
                found[item.index] = item
    except (BatchFileError, OSError) as exc:
        notes.append(f"The input file cannot be read ({exc}): prompts are not shown.")
        return {}
    expected = meta.get("fingerprint")
    if expected is not None and digest.hexdigest() != expected:
        notes.append(f"The input file {source} changed since the batch ran: prompts are not shown.")
        return {}
    return found


def _defaults(data: object) -> Defaults:
    if not isinstance(data, dict):
        return Defaults()
    known = {field.name for field in attrs.fields(Defaults)}
    values = {k: v for k, v in data.items() if k in known}
    values["images"] = tuple(values.get("images") or ())
    try:
        return Defaults(**values)
    except TypeError:
        return Defaults()


# -- one job ---------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _job(index: int, record: Mapping[str, Any], times: _Times | None, entry: Entry | None) -> Job:
    raw_error = record.get("error")
    error: Mapping[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    raw_files = record.get("files")
    files: list[Any] = raw_files if isinstance(raw_files, list) else []
    request = entry.request if entry is not None else None
    start, end, model = times if times is not None else (None, None, None)
    seconds = _number(record.get("seconds"))
    if seconds is None and start is not None and end is not None and end >= start:
        seconds = end - start
    seed = record.get("seed", request.seed if request is not None else None)
    requests = record.get("requests")
    line = record.get("line")
    return Job(
        index=index,
        line=line if isinstance(line, int) else None,
        task_id=None if record.get("task_id") is None else str(record["task_id"]),
        status=str(record.get("status") or "failed"),
        files=tuple(str(f) for f in files if isinstance(f, str)),
        error_kind=None if error.get("kind") is None else str(error["kind"]),
        error_message=None if error.get("message") is None else str(error["message"]),
        prompt=_text(record.get("prompt")) or (request.prompt if request is not None else None),
        model=_text(record.get("model")) or (request.model if request is not None else None) or model,
        size=_text(record.get("size")) or (request.size if request is not None else None),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        seconds=seconds,
        cost=_number(record.get("cost")),
        requests=requests if isinstance(requests, int) and not isinstance(requests, bool) else None,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
