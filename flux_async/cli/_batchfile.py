"""Reading the command line's batch files: ``.txt``, ``.jsonl`` and ``.csv``, a line at a time.
Part of the command line, never imported by the library. No network, no event loop: from the
library it takes only the catalog and the error types; what a line becomes is ``_batchentry``'s.

:func:`read_entries` turns each request of a file into an :class:`Entry` with the command
line's defaults filled in; a line that cannot become one is a :class:`LineError` naming its
line number and field. :func:`check_file` runs the catalog's rules over a whole file in one
streaming pass, so a file of any size is checked in constant memory before anything is sent.

Formats:

- ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped; every
  other field comes from the defaults.
- ``.jsonl`` (or ``.ndjson``): one JSON object per line with request fields (``model``,
  ``prompt``, ``size``, ``n``, ``images`` (a string or a list), ``response_format``,
  ``safety_tolerance``, ``prompt_upsampling``, ``seed``, ``extra``); missing fields come from
  the defaults, unknown fields are errors.
- ``.csv``: a header row naming request fields, then one request per row; an empty cell means
  "not given". ``images`` holds one or more images separated by ``|``; ``extra`` holds a JSON
  object.

Relative image paths in a file are resolved against the file's own directory. A request's
``index`` counts requests from 0 in file order (skipped lines take none), so two passes over the
same file agree on every index.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import attrs

from ._api import ConfigurationError, ValidationError, catalog
from ._batchentry import REQUEST_FIELDS, Defaults, Entry, LineError, missing_model, request_from

__all__ = [
    "FORMATS",
    "BatchFileError",
    "CheckReport",
    "Hasher",
    "check_file",
    "detect_format",
    "read_entries",
]

#: File suffix -> format name.
FORMATS: Final[Mapping[str, str]] = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

_INT_FIELDS: Final = frozenset({"n", "safety_tolerance", "seed"})
_TRUE: Final = frozenset({"true", "yes", "1", "on"})
_FALSE: Final = frozenset({"false", "no", "0", "off"})
_IMAGE_SEPARATOR: Final = "|"
_BOM: Final = "\ufeff"


class Hasher(Protocol):
    """What :func:`read_entries` feeds the file's bytes to (a ``hashlib`` object)."""

    def update(self, data: bytes, /) -> None: ...


class BatchFileError(Exception):
    """The file as a whole cannot be read: unknown suffix, missing file, bad CSV header."""


@attrs.frozen(kw_only=True)
class CheckReport:
    """The result of :func:`check_file`.

    ``requests`` counts the requests found (valid or not), ``errors`` holds the first
    ``max_errors`` problems in file order and ``error_count`` all of them. ``fingerprint`` is
    the SHA-256 of the file's bytes, which a resumed batch compares to make sure the file did
    not change under its journal.
    """

    requests: int
    errors: tuple[LineError, ...]
    error_count: int
    fingerprint: str

    @property
    def ok(self) -> bool:
        """True when every request is valid."""
        return self.error_count == 0


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` from its suffix (``txt``, ``jsonl`` or ``csv``)."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        known = ", ".join(FORMATS)
        raise BatchFileError(
            f"{os.fspath(path)}: unknown file type {suffix or '(no suffix)'!r}; use one of {known}"
        ) from None


def read_entries(
    path: str | os.PathLike[str],
    defaults: Defaults,
    *,
    fingerprint: Hasher | None = None,
) -> Iterator[Entry | LineError]:
    """Yield each request of the file (or the error that stops a line being one), in order.

    The file is read a line at a time. ``fingerprint``, a ``hashlib`` object, is fed every byte
    of the file as it is read. Raises :class:`BatchFileError` when the file cannot be read at all.
    """
    fmt = detect_format(path)
    base = Path(path).parent
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator's finally
    except OSError as exc:
        raise BatchFileError(f"{os.fspath(path)}: cannot open: {exc.strerror}") from None
    try:
        lines = _decoded_lines(handle, fingerprint)
        if fmt == "txt":
            yield from _read_txt(lines, defaults)
        elif fmt == "jsonl":
            yield from _read_jsonl(lines, defaults, base)
        else:
            yield from _read_csv(lines, defaults, base, os.fspath(path))
    finally:
        handle.close()


def check_file(
    path: str | os.PathLike[str],
    defaults: Defaults,
    provider: str,
    *,
    max_errors: int = 100,
) -> CheckReport:
    """Read the whole file once and check every request against ``provider``'s catalog.

    Nothing is sent anywhere. Raises :class:`BatchFileError` for a file that cannot be read and
    ``ConfigurationError`` for an unknown provider.
    """
    catalog.models_for(provider)  # an unknown provider is the caller's error, not the file's
    digest = hashlib.sha256()
    errors: list[LineError] = []
    error_count = 0
    requests = 0
    for item in read_entries(path, defaults, fingerprint=digest):
        requests += 1
        problem = item if isinstance(item, LineError) else _check_request(item, provider)
        if problem is not None:
            error_count += 1
            if len(errors) < max_errors:
                errors.append(problem)
    return CheckReport(
        requests=requests,
        errors=tuple(errors),
        error_count=error_count,
        fingerprint=digest.hexdigest(),
    )


def _check_request(entry: Entry, provider: str) -> LineError | None:
    try:
        catalog.validate(entry.request, provider)
    except ValidationError as exc:
        return LineError(entry.index, entry.line, exc.field, _validation_text(exc))
    except ConfigurationError as exc:
        return LineError(entry.index, entry.line, "model", str(exc))
    return None


def _validation_text(exc: ValidationError) -> str:
    shown = repr(exc.value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{exc.reason or 'invalid value'} (got {shown}; allowed: {exc.allowed})"


# -- lines -------------------------------------------------------------------------------------


class _Undecodable:
    """A line whose bytes are not UTF-8."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoded_lines(handle: BinaryIO, fingerprint: Hasher | None) -> Iterator[tuple[int, str | _Undecodable]]:
    """(line number from 1, text with its line ending) for every line of a binary file."""
    for number, raw in enumerate(handle, start=1):
        if fingerprint is not None:
            fingerprint.update(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, _Undecodable(f"not valid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        if number == 1 and text.startswith(_BOM):
            text = text[len(_BOM) :]
        yield number, text


# -- formats -----------------------------------------------------------------------------------


def _read_txt(lines: Iterator[tuple[int, str | _Undecodable]], defaults: Defaults) -> Iterator[Entry | LineError]:
    index = 0
    for number, text in lines:
        if isinstance(text, _Undecodable):
            yield LineError(index, number, None, text.reason)
            index += 1
            continue
        prompt = text.strip()
        if not prompt or prompt.startswith("#"):
            continue
        fields = {"prompt": prompt}
        error = missing_model(index, number, fields, defaults)
        yield error if error is not None else Entry(index, number, request_from(fields, defaults, None))
        index += 1


def _read_jsonl(
    lines: Iterator[tuple[int, str | _Undecodable]], defaults: Defaults, base: Path
) -> Iterator[Entry | LineError]:
    index = 0
    for number, text in lines:
        if isinstance(text, _Undecodable):
            yield LineError(index, number, None, text.reason)
            index += 1
            continue
        if not text.strip():
            continue
        yield _jsonl_entry(index, number, text, defaults, base)
        index += 1


def _jsonl_entry(index: int, number: int, text: str, defaults: Defaults, base: Path) -> Entry | LineError:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(index, number, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(data, dict):
        return LineError(index, number, None, f"expected a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in REQUEST_FIELDS:
            return LineError(index, number, key, f"unknown field; fields are {', '.join(REQUEST_FIELDS)}")
    images = data.get("images")
    if isinstance(images, str):
        data["images"] = (images,)
    elif images is not None:
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            return LineError(index, number, "images", "must be a string or a list of strings")
        data["images"] = tuple(images)
    extra = data.get("extra")
    if extra is not None and not isinstance(extra, dict):
        return LineError(index, number, "extra", "must be a JSON object")
    # JSON null means "not given": the default applies.
    fields = {k: v for k, v in data.items() if v is not None}
    if "prompt" not in fields:
        return LineError(index, number, "prompt", "missing")
    error = missing_model(index, number, fields, defaults)
    return error if error is not None else Entry(index, number, request_from(fields, defaults, base))


def _read_csv(
    lines: Iterator[tuple[int, str | _Undecodable]], defaults: Defaults, base: Path, name: str
) -> Iterator[Entry | LineError]:
    # The csv module wants text; undecodable lines become a marker cell reported below, and the
    # reader's own line counter gives the line a record ends on (records may span lines).
    bad: dict[int, str] = {}

    def texts() -> Iterator[str]:
        for number, text in lines:
            if isinstance(text, _Undecodable):
                bad[number] = text.reason
                yield "\n"
            else:
                yield text

    reader = csv.reader(texts(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise BatchFileError(f"{name}: line 1: cannot read the CSV header: {exc}") from None
    header = [cell.strip() for cell in header]
    unknown = [cell for cell in header if cell not in REQUEST_FIELDS]
    if unknown or "prompt" not in header or len(set(header)) != len(header):
        problem = (
            f"unknown column(s) {', '.join(map(repr, unknown))}"
            if unknown
            else "a column is named twice"
            if "prompt" in header
            else "no 'prompt' column"
        )
        raise BatchFileError(
            f"{name}: line 1: {problem}; the header names request fields: {', '.join(REQUEST_FIELDS)}"
        )
    index = 0
    last_line = 1
    while True:
        first_line = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last_line = reader.line_num
            yield LineError(index, first_line, None, f"cannot read the CSV record: {exc}")
            index += 1
            continue
        last_line = reader.line_num
        reasons = [bad.pop(n) for n in range(first_line, last_line + 1) if n in bad]
        broken = reasons[0] if reasons else None
        if broken is not None:
            yield LineError(index, first_line, None, broken)
            index += 1
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        yield _csv_entry(index, first_line, header, row, defaults, base)
        index += 1


def _csv_entry(
    index: int, number: int, header: list[str], row: list[str], defaults: Defaults, base: Path
) -> Entry | LineError:
    if len(row) != len(header):
        return LineError(index, number, None, f"{len(row)} cells for {len(header)} columns")
    fields: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=True):
        value = cell.strip()
        if not value:
            continue
        try:
            fields[name] = _csv_value(name, value)
        except ValueError as exc:
            return LineError(index, number, name, str(exc))
    if "prompt" not in fields:
        return LineError(index, number, "prompt", "missing")
    error = missing_model(index, number, fields, defaults)
    return error if error is not None else Entry(index, number, request_from(fields, defaults, base))


def _csv_value(name: str, value: str) -> Any:
    if name in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"not an integer: {value!r}") from None
    if name == "prompt_upsampling":
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"not a boolean: {value!r} (use true or false)")
    if name == "images":
        return tuple(part.strip() for part in value.split(_IMAGE_SEPARATOR) if part.strip())
    if name == "extra":
        try:
            extra = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg}") from None
        if not isinstance(extra, dict):
            raise ValueError("must be a JSON object")
        return extra
    return value
