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

__all__ = ["Counts", "ProgressView", "RunSummary", "rate_text", "summary_json", "summary_table"]


@attrs.define
class Counts:
    """The tally of one batch, as the progress display and the summary show it.

    ``previous_done`` / ``previous_failed`` are requests settled by an earlier run of a resumed
    batch; ``elsewhere`` / ``elsewhere_failed`` those settled by other processes of a shared
    batch (``--redis``) during this run; everything else counts this run. ``failed`` jobs are settled (a result line);
    ``unresolved`` ones failed in a way ``--resume`` retries (no result line); ``in_doubt`` ones
    may have created a task nobody recorded, and are sent again only with
    ``--resubmit-in-doubt``. ``running`` is accepted and not yet finished.
    """

    label: str
    total: int
    previous_done: int = 0
    previous_failed: int = 0
    elsewhere: int = 0
    elsewhere_failed: int = 0
    submitted: int = 0
    reattached: int = 0
    succeeded: int = 0
    failed: int = 0
    unresolved: int = 0
    in_doubt: int = 0
    finished_with_task: int = 0
    spent_usd: float = 0.0  # what this run's finished jobs cost (the known amounts)
    unknown_cost: int = 0  # finished jobs whose cost is not known
    failures: Counter[str] = attrs.field(factory=Counter)
    stopping: bool = False

    @property
    def finished(self) -> int:
        """Requests finished in this run, settled or not."""
        return self.succeeded + self.failed + self.unresolved + self.in_doubt

    @property
    def running(self) -> int:
        """Accepted tasks not finished yet (re-attached ones included)."""
        return self.submitted + self.reattached - self.finished_with_task

    @property
    def completed(self) -> int:
        """Requests dealt with, this run and earlier ones (the progress bar)."""
        return self.previous_done + self.elsewhere + self.finished

    @property
    def settled(self) -> int:
        """Requests with a result line, this run and earlier ones."""
        return self.previous_done + self.elsewhere + self.succeeded + self.failed

    def fields(self) -> str:
        """The counters as one line of text."""
        parts = [
            f"submitted {self.submitted}",
            f"running {self.running}",
            f"done {self.succeeded}",
            f"failed {self.failed + self.unresolved}",
        ]
        if self.in_doubt:
            parts.append(f"in doubt {self.in_doubt}")
        if self.unknown_cost and not self.spent_usd:
            parts.append("cost unknown")
        elif self.spent_usd or self.unknown_cost:
            parts.append(f"${self.spent_usd:.2f}" + (" + unknown" if self.unknown_cost else ""))
        if self.reattached:
            parts.insert(1, f"re-attached {self.reattached}")
        if self.previous_done:
            parts.append(f"earlier {self.previous_done}")
        if self.elsewhere:
            parts.append(f"other processes {self.elsewhere}")
        text = " · ".join(parts)
        if self.stopping:
            text += f" · stopping, waiting for {self.running}"
        return text


#: A rate is shown once this many jobs finished in this run, over at least this many seconds:
#: before that it is noise (three jobs done in a few milliseconds are not "600 per second").
_RATE_MIN_JOBS = 5
_RATE_MIN_SECONDS = 2.0


def rate_text(finished: int, elapsed: float | None) -> str | None:
    """The rate of finished jobs (``12.5/s``, ``40/min``), or None while it would be noise."""
    if elapsed is None or finished < _RATE_MIN_JOBS or elapsed < _RATE_MIN_SECONDS:
        return None
    rate = finished / elapsed
    if rate >= 1.0:
        return f"{rate:.1f}/s"
    per_minute = rate * 60.0
    return f"{per_minute:.1f}/min" if per_minute < 10 else f"{per_minute:.0f}/min"


class _CountsColumn(ProgressColumn):
    """The counters, the rate of finished jobs and the time left, as one line of text.

    The rate is this run's average (jobs finished by this run over the time it has run), the
    time left that rate applied to what is left; neither is shown while there is too little to
    go on, and no time left is shown once the batch is stopping (what is left of the file will
    not be run).
    """

    def render(self, task: Task) -> Text:
        text = Text(str(task.fields.get("counts", "")))
        finished = int(task.fields.get("finished", 0))
        rate = rate_text(finished, task.elapsed)
        if rate is not None:
            text.append(f" · {rate}", style="progress.data.speed")
        stopping = bool(task.fields.get("stopping", False))
        if rate is not None and task.elapsed and not stopping and not task.finished and task.total is not None:
            remaining = (task.total - task.completed) * task.elapsed / finished
            minutes, seconds = divmod(int(remaining), 60)
            hours, minutes = divmod(minutes, 60)
            left = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
            text.append(f" · ETA {left}", style="progress.remaining")
        return text


def _row_fields(counts: Counts) -> dict[str, Any]:
    return {"counts": counts.fields(), "finished": counts.finished, "stopping": counts.stopping}


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
            # The counters matter more than the bar: narrow terminals, and output that is not a
            # terminal at all (a log file), get only the counters.
            wide = console.is_terminal and console.width >= 110
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
                self._progress.update(task_id, completed=counts.completed, **_row_fields(counts))
            self._progress.stop()

    def add(self, counts: Counts) -> None:
        """Show a row for ``counts``."""
        if self._progress is None:
            return
        task_id = self._progress.add_task(
            escape(counts.label), total=counts.total, completed=counts.completed, **_row_fields(counts)
        )
        self._rows[id(counts)] = (task_id, counts)

    def update(self, counts: Counts) -> None:
        """Redraw the row of ``counts``."""
        if self._progress is None:
            return
        row = self._rows.get(id(counts))
        if row is not None:
            self._progress.update(row[0], completed=counts.completed, **_row_fields(counts))

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
    in_doubt: int = 0
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    carried_over_usd: float = 0.0
    unknown_cost_jobs: int = 0
    max_spend_usd: float | None = None
    budget_stopped: bool = False
    outage_stopped: bool = False
    previous_done: int
    previous_failed: int
    elsewhere: int = 0  #: lines settled by other processes of a shared batch during this run
    elsewhere_failed: int = 0
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
    def requests_per_job(self) -> float | None:
        """HTTP requests (submits, polls, uploads, downloads) per job finished in this run.

        None when it would mislead: no job finished, or accepted tasks were left unfinished (an
        interrupted batch): their requests are counted but not their jobs.
        """
        finished = self.succeeded + self.failed + self.unresolved + self.in_doubt
        if not finished or self.left_accepted:
            return None
        return self.requests / finished


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """The summary as a JSON-ready dict."""
    out = attrs.asdict(summary)
    per_job = summary.requests_per_job
    out["requests_per_job"] = None if per_job is None else round(per_job, 3)
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
    if summary.in_doubt:
        table.add_row(
            "in doubt",
            f"{summary.in_doubt} (a task may exist unrecorded: only --resume --resubmit-in-doubt sends them, "
            "at the risk of paying twice)",
        )
    if summary.previous_done:
        table.add_row("finished earlier", f"{summary.previous_done} ({summary.previous_failed} failed)")
    if summary.elsewhere:
        table.add_row(
            "by other processes", f"{summary.elsewhere} ({summary.elsewhere_failed} failed; shared batch)"
        )
    table.add_row("submitted", str(summary.submitted))
    if summary.reattached:
        table.add_row("re-attached", str(summary.reattached))
    if summary.left_accepted:
        table.add_row("accepted, not collected", f"{summary.left_accepted} (--resume re-attaches them)")
    if summary.not_submitted:
        table.add_row("not submitted", f"{summary.not_submitted} (--resume submits them)")
    if summary.spent_usd or summary.reserved_usd or summary.unknown_cost_jobs or summary.max_spend_usd is not None:
        table.add_row("spent", _spend_text(summary))
    if summary.budget_stopped and summary.max_spend_usd is not None:
        table.add_row(
            "budget", f"reached (--max-spend ${summary.max_spend_usd:.2f}): the rest was not sent; "
            "--resume with a larger --max-spend continues"
        )  # fmt: skip
    if summary.outage_stopped:
        table.add_row("outage", "submits kept failing: the rest was not sent; --resume continues")
    per_job = summary.requests_per_job
    if per_job is not None:
        table.add_row("requests per job", f"{per_job:.2f}  ({summary.requests} requests)")
    else:
        why = "jobs left unfinished" if summary.left_accepted else "no job finished"
        table.add_row("requests per job", f"- ({why}; {summary.requests} requests)")
    table.add_row("retries", str(summary.retries))
    table.add_row("429 answers", str(summary.rate_limited))
    table.add_row("wall time", f"{summary.wall_time:.1f} s")
    if summary.interrupted:
        table.add_row("interrupted", "yes")
    return table


def _spend_text(summary: RunSummary) -> str:
    """``$1.20 this run`` with what is held, earlier runs' spend, unknown costs and the budget."""
    text = f"${summary.spent_usd:.2f} this run"
    if summary.reserved_usd:
        text += f" (${summary.reserved_usd:.2f} of it held by jobs not settled or in doubt)"
    if summary.carried_over_usd:
        text += f", ${summary.carried_over_usd:.2f} in earlier runs"
    if summary.unknown_cost_jobs:
        text += f", and {summary.unknown_cost_jobs} job(s) of unknown cost (no price known for their model)"
    if summary.max_spend_usd is not None:
        text += f" (budget ${summary.max_spend_usd:.2f})"
    return text
