"""What the command line shows: batch counters, the rich progress display and closing summaries.

:class:`Counts` is the plain tally a batch keeps; :class:`ProgressView` draws any number of them
as rows of one rich progress display on stderr (nothing at all in quiet or JSON mode);
:func:`summary_table` and :func:`summary_json` render the end of a run. Imports rich, never
click; knows nothing about sessions.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["Counts", "ProgressView", "RunSummary", "summary_json", "summary_table"]


@attrs.define
class Counts:
    """The tally of one batch, as the progress display and the summary show it.

    ``previous_done`` / ``previous_failed`` are requests settled by an earlier run of a resumed
    batch; everything else counts this run. ``failed`` jobs are settled (a result line);
    ``unresolved`` ones failed in a way ``--resume`` retries (no result line). ``running`` is
    accepted and not yet finished.
    """

    label: str
    total: int
    previous_done: int = 0
    previous_failed: int = 0
    submitted: int = 0
    reattached: int = 0
    succeeded: int = 0
    failed: int = 0
    unresolved: int = 0
    finished_with_task: int = 0
    failures: Counter[str] = attrs.field(factory=Counter)
    stopping: bool = False

    @property
    def finished(self) -> int:
        """Requests finished in this run, settled or not."""
        return self.succeeded + self.failed + self.unresolved

    @property
    def running(self) -> int:
        """Accepted tasks not finished yet (re-attached ones included)."""
        return self.submitted + self.reattached - self.finished_with_task

    @property
    def completed(self) -> int:
        """Requests dealt with, this run and earlier ones (the progress bar)."""
        return self.previous_done + self.finished

    @property
    def settled(self) -> int:
        """Requests with a result line, this run and earlier ones."""
        return self.previous_done + self.succeeded + self.failed

    def fields(self) -> str:
        """The counters as one line of text."""
        parts = [
            f"submitted {self.submitted}",
            f"running {self.running}",
            f"done {self.succeeded}",
            f"failed {self.failed + self.unresolved}",
        ]
        if self.reattached:
            parts.insert(1, f"re-attached {self.reattached}")
        if self.previous_done:
            parts.append(f"earlier {self.previous_done}")
        text = " · ".join(parts)
        if self.stopping:
            text += f" · stopping, waiting for {self.running}"
        return text


class _CountsColumn(ProgressColumn):
    """The counters, the rate of finished jobs and the time left, as one line of text."""

    def render(self, task: Task) -> Text:
        text = Text(str(task.fields.get("counts", "")))
        speed = task.finished_speed or task.speed
        if speed:
            text.append(f" · {speed:.1f}/s", style="progress.data.speed")
        remaining = task.time_remaining
        if remaining is not None and not task.finished:
            minutes, seconds = divmod(int(remaining), 60)
            text.append(f" · ETA {minutes}:{seconds:02d}", style="progress.remaining")
        return text


class ProgressView:
    """Rows of batch counters in one rich progress display (on stderr); a no-op when disabled.

    Use as a context manager; call :meth:`update` after changing a :class:`Counts`.
    """

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._progress: Progress | None = None
        self._rows: dict[int, tuple[TaskID, Counts]] = {}
        if enabled:
            # The counters matter more than the bar: narrow terminals get only the counters.
            wide = console.width >= 110
            columns: list[ProgressColumn | str] = [TextColumn("[bold]{task.description}")]
            if wide:
                columns.append(BarColumn(bar_width=16))
            columns.append(MofNCompleteColumn())
            if wide:
                columns.append(TimeElapsedColumn())
            columns.append(_CountsColumn())
            self._progress = Progress(
                *columns,
                console=console,
                refresh_per_second=8,
                speed_estimate_period=15.0,
            )

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            for task_id, counts in self._rows.values():
                self._progress.update(task_id, completed=counts.completed, counts=counts.fields())
            self._progress.stop()

    def add(self, counts: Counts) -> None:
        """Show a row for ``counts``."""
        if self._progress is None:
            return
        task_id = self._progress.add_task(
            escape(counts.label), total=counts.total, completed=counts.completed, counts=counts.fields()
        )
        self._rows[id(counts)] = (task_id, counts)

    def update(self, counts: Counts) -> None:
        """Redraw the row of ``counts``."""
        if self._progress is None:
            return
        row = self._rows.get(id(counts))
        if row is not None:
            self._progress.update(row[0], completed=counts.completed, counts=counts.fields())

    def note(self, message: str) -> None:
        """A line above the display (suppressed when the display is off)."""
        if self.enabled:
            self.console.print(message)


@attrs.frozen(kw_only=True)
class RunSummary:
    """The end of a batch run, for the closing table or the ``--json`` object."""

    output: str
    jobs: int
    succeeded: int
    failed: int
    failures: dict[str, int]
    unresolved: int
    previous_done: int
    previous_failed: int
    submitted: int
    reattached: int
    left_accepted: int
    not_submitted: int
    requests: int
    retries: int
    rate_limited: int
    wall_time: float
    interrupted: bool
    exit_code: int

    @property
    def requests_per_job(self) -> float:
        """HTTP requests (submits, polls, uploads, downloads) per job finished in this run."""
        finished = self.succeeded + self.failed + self.unresolved
        return self.requests / finished if finished else 0.0


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """The summary as a JSON-ready dict."""
    out = attrs.asdict(summary)
    out["requests_per_job"] = round(summary.requests_per_job, 3)
    out["wall_time"] = round(summary.wall_time, 3)
    return out


def summary_table(summary: RunSummary, *, title: str = "batch summary") -> Table:
    """The summary as a two-column rich table."""
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("output", Text(summary.output))
    table.add_row("jobs", str(summary.jobs))
    table.add_row("succeeded", str(summary.succeeded))
    failed = str(summary.failed + summary.unresolved)
    if summary.failures:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.failures.items()))
        failed += f"  ({kinds})"
    table.add_row("failed", failed)
    if summary.unresolved:
        table.add_row("not settled", f"{summary.unresolved} (no result line: --resume tries them again)")
    if summary.previous_done:
        table.add_row("finished earlier", f"{summary.previous_done} ({summary.previous_failed} failed)")
    table.add_row("submitted", str(summary.submitted))
    if summary.reattached:
        table.add_row("re-attached", str(summary.reattached))
    if summary.left_accepted:
        table.add_row("accepted, not collected", f"{summary.left_accepted} (--resume re-attaches them)")
    if summary.not_submitted:
        table.add_row("not submitted", f"{summary.not_submitted} (--resume submits them)")
    table.add_row("requests per job", f"{summary.requests_per_job:.2f}  ({summary.requests} requests)")
    table.add_row("retries", str(summary.retries))
    table.add_row("429 answers", str(summary.rate_limited))
    table.add_row("wall time", f"{summary.wall_time:.1f} s")
    if summary.interrupted:
        table.add_row("interrupted", "yes")
    return table
