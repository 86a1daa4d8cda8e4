"""Append-only JSON-lines files that survive a crash mid-write: one record per line, written
whole with one call, and a cut-short last line repaired when the file is opened again.

Used by the ledger and by the command line's results file. Plain file I/O only: no event loop,
nothing from the session, transport, scheduler or codecs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["complete_last_line", "write_line"]


def write_line(handle: IO[str], record: Mapping[str, Any], *, sync: bool) -> None:
    """Append ``record`` as one line and flush it; with ``sync``, fsync it before returning."""
    handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    handle.flush()
    if sync:
        os.fsync(handle.fileno())


def complete_last_line(path: Path) -> None:
    """End the file on a newline so that appends start a fresh line.

    A crash can leave the last line without its newline: a whole JSON object just gets its
    newline (it may record a paid task: dropping it would forget one); anything else was cut
    short mid-write and is removed.
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
        start = 0
        position = size
        while position > 0:  # walk back to the previous newline in small steps; lines are short
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
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            handle.seek(size)
            handle.write(b"\n")
        else:
            handle.truncate(start)
