"""What every command shares: output streams, error-to-exit-code mapping, running batches under
the two-stage Ctrl-C, and the closing summary.

Exit codes: 0 everything succeeded, 1 some job (or the service) failed, 2 a usage or input
error, 3 the budget (``--max-spend``) stopped the batch, 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import anyio
import attrs
import click
from anyio.abc import TaskStatus
from rich.console import Console
from rich.logging import RichHandler

from ._api import ConfigurationError, FluxError, SessionStatistics, ValidationError
from ._batch import BatchRunner
from ._display import Counts, RunSummary, summary_json, summary_table
from ._statslog import log_scheduling

__all__ = [
    "EXIT_BUDGET",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTAGE",
    "EXIT_USAGE",
    "CommandError",
    "Interrupts",
    "Output",
    "Run",
    "console",
    "execute",
    "exit_on_error",
    "fail",
    "library_log",
    "printable",
    "report",
    "run_command",
    "sole_error",
    "summarize",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_OUTAGE = 4
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """Ends a command with ``message`` on stderr and exit code ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    """Raise :class:`CommandError`."""
    raise CommandError(message, code)


#: The width given to output that is not a terminal (a pipe, a log file): wide enough that no
#: line of ours is wrapped, which would split one record over several lines.
_UNWRAPPED_WIDTH = 512


def console(*, stderr: bool) -> Console:
    """A rich console on stdout or stderr. Off a terminal, with no ``COLUMNS`` set, lines are
    not wrapped at the default 80 columns."""
    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made = Console(stderr=stderr, highlight=False, width=_UNWRAPPED_WIDTH)
    return made


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes included) written as ``\\xNN``;
    newlines and tabs stay."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


@attrs.define
class Output:
    """Where a command writes: stdout for data, stderr for people."""

    quiet: bool
    json: bool
    err: Console

    @classmethod
    def make(cls, *, quiet: bool, json_: bool) -> Output:
        """Consoles are made per command so they bind the streams of that invocation."""
        return cls(quiet=quiet, json=json_, err=console(stderr=True))

    @property
    def interactive(self) -> bool:
        """True when progress displays and notes are wanted."""
        return not (self.quiet or self.json)

    def info(self, message: str) -> None:
        """A note for people (hidden by --quiet and --json)."""
        if self.interactive:
            self.err.print(message, soft_wrap=True, markup=False)

    def error(self, message: str) -> None:
        """An error: always shown, on stderr (control characters shown escaped: a provider's
        message must not drive the terminal)."""
        self.err.print("[bold red]error:[/] ", end="")
        self.err.print(printable(message), soft_wrap=True, markup=False)

    def data(self, value: Any) -> None:
        """Machine output on stdout: JSON with --json, else the text."""
        click.echo(json.dumps(value, ensure_ascii=False) if self.json else value)


@contextmanager
def library_log(output: Output, verbose: int) -> Iterator[None]:
    """The library's log on stderr while a command runs: errors only, unless -v (info) or -vv
    (debug). The logger is put back as it was afterwards (the command may run in-process)."""
    logger = logging.getLogger("flux_async")
    saved = (logger.level, logger.propagate)
    handler: logging.Handler
    if output.err.is_terminal:
        handler = RichHandler(console=output.err, show_path=False)
    else:
        # A log file gets one plain line per record.
        handler = logging.StreamHandler(output.err.file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.setLevel(logging.ERROR if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error inside (possibly nested) groups, or None when there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    return leaves[0] if len(leaves) == 1 else None


@contextmanager
def exit_on_error(output: Output) -> Iterator[None]:
    """Turn the errors a command can end with into a message on stderr and an exit code."""
    try:
        try:
            yield
        except BaseExceptionGroup as group:
            # A task group may wrap the one error that ended a command: report that error.
            sole = sole_error(group)
            if sole is None:
                raise
            raise sole from None
    except CommandError as exc:
        output.error(str(exc))
        raise SystemExit(exc.code) from None
    except (ConfigurationError, ValidationError) as exc:
        output.error(str(exc))
        raise SystemExit(EXIT_USAGE) from None
    except FluxError as exc:
        output.error(f"{type(exc).__name__}: {exc}")
        raise SystemExit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        output.error("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except OSError as exc:
        # A file that cannot be written (a full disk...): the journal keeps what was accepted.
        output.error(f"{type(exc).__name__}: {exc}")
        raise SystemExit(EXIT_FAILED) from None


def run_command(output: Output, body: Callable[[], Awaitable[int]], *, verbose: int = 0) -> NoReturn:
    """Run an async command body on asyncio and exit with its code, mapping errors to codes."""
    with exit_on_error(output), library_log(output, verbose):
        code = anyio.run(body, backend="asyncio")
    raise SystemExit(code)


# -- running batches -----------------------------------------------------------------------------


@attrs.define
class Interrupts:
    """What Ctrl-C did: ``soft`` (stop submitting) and ``hard`` (stop everything)."""

    soft: bool = False
    hard: bool = False

    @property
    def any(self) -> bool:
        """True after at least one Ctrl-C."""
        return self.soft or self.hard


async def execute(runners: Sequence[BatchRunner], out: Output) -> Interrupts:
    """Run the batches to their end. The first Ctrl-C (or SIGTERM, or SIGHUP) stops submitting
    and waits for what is in flight; a second Ctrl-C cancels everything at once (the ledger
    already holds the intent of every submit sent and the acceptance of every task answered, so
    ``--resume`` neither loses nor repays any)."""
    flags = Interrupts()
    with anyio.CancelScope() as everything:
        async with anyio.create_task_group() as tg:
            # Started (the handler installed) before the first request can be sent.
            await tg.start(_watch_interrupts, runners, everything, flags, out)
            # The scheduler's work in aggregate, with -vv (returns at once otherwise).
            tg.start_soon(log_scheduling, [runner.session for runner in runners])
            async with anyio.create_task_group() as work:
                for runner in runners:
                    work.start_soon(runner.run)
            tg.cancel_scope.cancel()
    return flags


async def _watch_interrupts(
    runners: Sequence[BatchRunner],
    everything: anyio.CancelScope,
    flags: Interrupts,
    out: Output,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with ExitStack() as stack:
        try:
            signals = stack.enter_context(
                anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            )
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            # No signal handling here (not the main thread, another platform): Ctrl-C then
            # raises KeyboardInterrupt, which leaves the journal intact all the same.
            task_status.started()
            return
        task_status.started()
        async for signum in signals:
            if not flags.soft:
                flags.soft = True
                for runner in runners:
                    runner.request_stop()
                waiting = sum(runner.in_flight for runner in runners)
                out.err.print(
                    f"Stopping: nothing more will be submitted; waiting for {waiting} job(s) in "
                    "flight. Press Ctrl-C again to exit now (--resume collects them later).",
                    soft_wrap=True,
                    markup=False,
                )
            elif signum == signal.SIGINT:
                flags.hard = True
                everything.cancel()
                return
            # A repeated SIGTERM or SIGHUP (a service manager, a closed terminal) keeps the
            # graceful stop under way: only a person's second Ctrl-C cuts it short.


@attrs.frozen
class Run:
    """One finished batch: its tally, its runner and its session's statistics."""

    counts: Counts
    runner: BatchRunner
    stats: SessionStatistics


def summarize(output: Path, runs: Sequence[Run], wall_time: float, flags: Interrupts) -> RunSummary:
    """The closing summary of one or more batches (the demo runs one per provider)."""
    failures: dict[str, int] = {}
    for run in runs:
        for kind, count in run.counts.failures.items():
            failures[kind] = failures.get(kind, 0) + count
    failed = sum(r.counts.failed for r in runs)
    unresolved = sum(r.counts.unresolved for r in runs)
    in_doubt = sum(r.counts.in_doubt for r in runs)
    previous_failed = sum(r.counts.previous_failed + r.counts.elsewhere_failed for r in runs)
    left_accepted = sum(r.runner.left_accepted for r in runs)
    not_submitted = sum(
        max(0, r.counts.total - r.counts.settled - r.runner.left_accepted - r.counts.in_doubt) for r in runs
    )
    trouble = any(
        r.runner.fatal is not None or r.runner.results_error is not None or r.stats.unrecorded_tasks
        for r in runs
    )
    budget_stopped = any(r.runner.budget_error is not None for r in runs)
    outage_stopped = any(r.runner.outage_error is not None for r in runs)
    if flags.any:
        code = EXIT_INTERRUPTED
    elif budget_stopped:
        code = EXIT_BUDGET
    elif outage_stopped:
        code = EXIT_OUTAGE
    elif trouble or failed or unresolved or in_doubt or previous_failed or left_accepted or not_submitted:
        code = EXIT_FAILED
    else:
        code = EXIT_OK
    return RunSummary(
        output=str(output),
        jobs=sum(r.counts.total for r in runs),
        succeeded=sum(r.counts.succeeded for r in runs),
        failed=failed,
        failures=failures,
        unresolved=unresolved,
        in_doubt=in_doubt,
        # This run's spend: what its jobs settled at or still hold, less what earlier runs held.
        spent_usd=max(0.0, sum(r.stats.spent_usd + r.stats.reserved_usd - r.stats.carried_over_usd for r in runs)),
        reserved_usd=sum(r.stats.reserved_usd for r in runs),
        carried_over_usd=sum(r.stats.carried_over_usd for r in runs),
        unknown_cost_jobs=sum(r.stats.unknown_cost_jobs for r in runs),
        max_spend_usd=runs[0].stats.max_spend_usd if len(runs) == 1 else None,
        budget_stopped=budget_stopped,
        outage_stopped=outage_stopped,
        previous_done=sum(r.counts.previous_done for r in runs),
        previous_failed=sum(r.counts.previous_failed for r in runs),
        elsewhere=sum(r.counts.elsewhere for r in runs),
        elsewhere_failed=sum(r.counts.elsewhere_failed for r in runs),
        submitted=sum(r.counts.submitted for r in runs),
        reattached=sum(r.counts.reattached for r in runs),
        left_accepted=left_accepted,
        not_submitted=not_submitted,
        requests=sum(
            r.stats.submit_attempts + r.stats.polls_sent + r.stats.uploads + r.stats.downloads for r in runs
        ),
        retries=sum(r.stats.submit_retries + r.stats.poll_retries for r in runs),
        rate_limited=sum(r.stats.rate_limited for r in runs),
        wall_time=wall_time,
        interrupted=flags.any,
        exit_code=code,
    )


_LISTED_UNRESOLVED = 10


def report(out: Output, summary: RunSummary, runs: Sequence[Run], *, title: str, extra: dict[str, Any] | None = None) -> None:
    """Errors that need attention on stderr, then the summary (a table, or JSON with --json)."""
    for run in runs:
        runner = run.runner
        if runner.fatal is not None:
            out.error(f"stopped submitting: {type(runner.fatal).__name__}: {runner.fatal}")
        if runner.outage_error is not None:
            outage = runner.outage_error
            out.error(
                f"stopped submitting: {outage.streak} submits to {outage.provider} failed one after "
                f"another (last: {printable(outage.last_error)}); what was accepted was collected"
            )
        if runner.results_error is not None:
            out.error(
                f"cannot write results.jsonl ({runner.results_error}); submitting was stopped "
                "(the jobs are in the ledger: --resume collects them once there is room)"
            )
        for ref in run.stats.unrecorded_tasks:
            out.error(
                f"task {ref.task_id} was paid for but the ledger could not record it; resume it by hand "
                f"(flux-async status, or Session.resume) with: {json.dumps(ref.to_dict(), sort_keys=True)}"
            )
    doubtful = [(run, item) for run in runs for item in run.runner.in_doubt]
    for run, (index, line, sent, doubt) in doubtful[:_LISTED_UNRESOLVED]:
        if sent is None:  # this run's submit failed ambiguously
            why = f"{doubt}"
        else:  # an earlier run's submit, on the wire when that process ended
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sent))
            why = (
                f"its submit was sent at {when} and its answer never recorded, and "
                f"{run.stats.provider} has no way to look it up, so it was not sent again"
            )
        out.error(f"request {index} (line {line}) is in doubt: {why}")
    if summary.in_doubt > _LISTED_UNRESOLVED:
        out.error(f"... and {summary.in_doubt - _LISTED_UNRESOLVED} more in doubt")
    if summary.in_doubt:
        out.error(
            "check your account for those tasks; to send them again anyway (at the risk of paying "
            "twice), rerun with --resume --resubmit-in-doubt"
        )
    unresolved = [item for run in runs for item in run.runner.unresolved]
    listed = summary.unresolved
    if summary.outage_stopped:
        # The outage line above says why: the submits it made fail are counted, not listed.
        unresolved = [item for item in unresolved if item[2] is not None]
        listed = sum(r.runner.unresolved_tasks for r in runs)
        outage_failures = summary.unresolved - listed
        if outage_failures:
            out.error(f"{outage_failures} submit(s) failed during the outage without creating a task (no result line)")
    for index, line, task_id, error in unresolved[:_LISTED_UNRESOLVED]:
        task = f" (task {task_id})" if task_id else ""
        out.error(f"request {index} (line {line}){task}: {type(error).__name__}: {error}")
    if listed > _LISTED_UNRESOLVED:
        out.error(f"... and {listed - _LISTED_UNRESOLVED} more")
    if summary.left_accepted or summary.not_submitted:
        how = "--resume and a larger --max-spend" if summary.budget_stopped else "--resume"
        if summary.outage_stopped:
            how = "--resume once the provider is back"
        out.error(
            f"{summary.left_accepted} accepted job(s) not collected and {summary.not_submitted} request(s) "
            f"not submitted: rerun with {how} to finish the batch (nothing is paid for twice)"
        )
    if out.json:
        out.data({**summary_json(summary), **(extra or {})})
    elif not out.quiet:
        console(stderr=False).print(summary_table(summary, title=title))
