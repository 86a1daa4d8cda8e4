"""``flux-async batch``: the click command, its first pass over the input file and the opening
of its output directory. Part of the command line, never imported by the library; the engine
that runs the batch is ``_batch``'s, the file reading ``_batchfile``'s, the journal ``_journal``'s.

The command checks every line of the file before it opens a connection, then hands the file,
the journal and a :class:`~flux_async.Session` to a :class:`~flux_async.cli._batch.BatchRunner`
under the shared progress display and Ctrl-C handling of ``_runtime``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
import click

from ._api import WEBHOOK_PATH, ConfigurationError, Limits, PollPolicy, Session, serve_webhooks
from ._batch import BatchRunner
from ._batchentry import Defaults
from ._batchfile import BatchFileError, CheckReport, check_file, read_entries
from ._batchstate import BatchState, JournalError, JournalHeader
from ._display import Counts, ProgressView
from ._journal import JOURNAL_NAME, SHARED_RESULTS_NAME, OutputDir
from ._options import (
    connection_options,
    local_images,
    open_session,
    output_options,
    request_options,
)
from ._report import write_report
from ._runtime import (
    EXIT_USAGE,
    Output,
    Run,
    execute,
    exit_on_error,
    fail,
    printable,
    report,
    run_command,
    summarize,
)
from ._shared import SharedLines, shared_batch_id
from ._spend import check_budget, estimate, read_prices, spend_options
from ._spend import dry_run as show_dry_run

__all__ = ["batch"]

_MAX_LISTED_ERRORS = 50

#: ``--retry-failed`` kinds, and the error each one means in ``results.jsonl``.
RETRY_KINDS = {
    "failed": "TaskFailedError",
    "moderation": "ModerationError",
    "not-found": "TaskNotFoundError",
    "rejected": "BadRequestError",
    "expired": "ResultExpiredError",
}


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Directory for the images, results.jsonl and the journal.",
)  # fmt: skip
@request_options
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
    help="Submissions in flight at once.",
)  # fmt: skip
@click.option(
    "--max-outstanding", type=click.IntRange(min=1), default=512, show_default=True,
    help="Jobs accepted and not yet finished at once.",
)  # fmt: skip
@click.option(
    "--max-submits-per-second", "submit_rate", type=click.FloatRange(min=0, min_open=True), default=None,
    metavar="RATE", help="A hard cap on submissions per second (429s slow the batch down anyway).",
)  # fmt: skip
@click.option(
    "--max-polls-per-second", "poll_rate", type=click.FloatRange(min=0, min_open=True), default=None,
    metavar="RATE", help="A hard cap on status requests per second.",
)  # fmt: skip
@click.option(
    "--resume", is_flag=True,
    help="Continue the batch in OUTPUT: re-attach to accepted jobs, skip finished ones, submit the rest.",
)  # fmt: skip
@click.option(
    "--resubmit-in-doubt", is_flag=True,
    help=(
        "With --resume: send again the requests whose POST may have created a task that was "
        "never recorded (apimart, BFL; the process died mid-POST). This risks paying twice."
    ),
)  # fmt: skip
@click.option(
    "--retry-failed", "retry_failed", metavar="KINDS", default=None,
    help=(
        "With --resume: submit again the requests that failed for good, of these kinds "
        f"(comma-separated: {', '.join(RETRY_KINDS)}, or all). Each is a new, paid task. "
        "Requests in doubt are not among them (see --resubmit-in-doubt)."
    ),
)  # fmt: skip
@spend_options
@click.option(
    "--redis", "redis_url", metavar="URL", envvar="FLUX_ASYNC_REDIS_URL", default=None,
    help=(
        "Share the account with every other process using this Redis server (pip install "
        "\"flux-async[redis]\"): the provider's active-task caps, --max-spend and idempotency "
        "keys hold for all of them together, and the batch is shared: the same command started "
        "on several machines (or several times) splits FILE between them, each line done once. "
        "The batch's journal is kept in Redis; started again, the command continues the batch. "
        "A process that dies is taken over FLUX_ASYNC_REDIS_LEASE seconds (15) after its last "
        "heartbeat."
    ),
)  # fmt: skip
@click.option(
    "--webhook-listen", "webhook_listen", metavar="HOST:PORT", default=None,
    help=(
        "Receive the provider's webhooks on HOST:PORT (path /flux-async/webhook): a finished job "
        "is then collected at once, with one status request. Off by default."
    ),
)  # fmt: skip
@click.option(
    "--webhook-url", "webhook_url", metavar="URL", default=None,
    help=(
        "The public URL the provider posts webhooks to, reaching --webhook-listen (default: "
        "http://HOST:PORT/flux-async/webhook)."
    ),
)  # fmt: skip
@click.option(
    "--webhook-secret", "webhook_secret", envvar="FLUX_ASYNC_WEBHOOK_SECRET", default=None,
    show_envvar=True, help="The webhook signing secret (toapis: your key's; BFL: sent with each job).",
)  # fmt: skip
@click.option(
    "--no-report", is_flag=True,
    help="Do not write OUTPUT/report.html at the end (flux-async report OUTPUT writes it any time).",
)  # fmt: skip
@connection_options
@output_options
def batch(
    file: Path,
    output: Path,
    model: str,
    size: str | None,
    images: tuple[str, ...],
    n: int | None,
    seed: int | None,
    concurrency: int,
    max_outstanding: int,
    submit_rate: float | None,
    poll_rate: float | None,
    resume: bool,
    resubmit_in_doubt: bool,
    retry_failed: str | None,
    price: tuple[str, ...],
    prices_file: Path | None,
    max_spend: float | None,
    dry_run: bool,
    redis_url: str | None,
    webhook_listen: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    no_report: bool,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Run every request of FILE: .txt (a prompt per line), .jsonl (a request object per line)
    or .csv (a header of request fields). Options fill in what a line leaves out.

    The whole file is checked first: bad lines are listed with their line numbers and nothing
    is submitted (exit 2). Images are written to OUTPUT as <index>-<task_id>.<ext>; each
    finished request is appended to OUTPUT/results.jsonl. OUTPUT/journal.jsonl is the batch's
    ledger: every submit is written there before it is sent and every accepted task before it
    is waited on, so --resume never pays twice. A request whose POST was on the wire when the
    process died is looked up (toapis) or reported in doubt and not sent again unless
    --resubmit-in-doubt is given. Ctrl-C, SIGTERM or SIGHUP stops submitting and waits for the
    jobs in flight; a second Ctrl-C exits at once. --dry-run prints what the batch would cost
    and sends nothing; --max-spend caps what all runs of the batch may spend (exit 3 when it
    stops the batch). Rate limits (429) slow the batch down rather than fail its jobs; when
    submissions keep failing (an outage), the batch stops submitting, finishes what was
    accepted and exits 4: --resume continues it.
    """
    out = Output.make(quiet=quiet, json_=json_)
    defaults = Defaults(model=model, size=size, n=n, images=local_images(images), seed=seed)
    limits = Limits(
        max_concurrent_submits=concurrency,
        max_outstanding=max_outstanding,
        max_spend_usd=max_spend,
        max_submits_per_second=submit_rate,
    )
    poll_policy = PollPolicy(max_polls_per_second=poll_rate)
    input_path = os.path.abspath(file)
    output_path = output.resolve()  # a shared batch is named after its directory's name
    with exit_on_error(out):
        if resubmit_in_doubt and not resume:
            fail("--resubmit-in-doubt only applies to --resume", EXIT_USAGE)
        retry_kinds = _retry_kinds(retry_failed, resume=resume)
        if retry_kinds and redis_url is not None:
            fail("--retry-failed is not available for a batch shared through --redis", EXIT_USAGE)
        listen, webhooks = _webhook_options(webhook_listen, webhook_url, webhook_secret, provider)
        fleet = _fleet_options(redis_url)
        prices = read_prices(price, prices_file, provider)
        # The first pass, before any connection: every line is checked.
        checked = _check_input(out, file, defaults, provider)
        if dry_run or max_spend is not None:
            found = estimate(file, defaults, provider, prices)
            if dry_run:
                raise SystemExit(show_dry_run(out, file, found, max_spend))
            check_budget(found, max_spend)

    async def body() -> int:
        # A missing key stops here, before anything is written.
        open_session(provider, api_key, base_url, limits, poll_policy=poll_policy, **webhooks)
        header = JournalHeader(
            provider=provider,
            input=input_path,
            fingerprint=checked.fingerprint,
            requests=checked.requests,
            defaults=defaults.to_dict(),
        )
        coordinator = fleet.get("coordinator")
        if coordinator is not None:
            # A shared batch: its id names it on every machine that runs the same command.
            batch_id = shared_batch_id(provider, checked.fingerprint, defaults.to_dict(), output_path.name)
            header = attrs.evolve(header, run=batch_id)
            try:
                ledger: Any = coordinator.ledger(f"batch-{batch_id}")
                journal, state = OutputDir.shared(output, header), None
            except (ConfigurationError, JournalError) as exc:
                fail(f"--redis: {exc}" if isinstance(exc, ConfigurationError) else str(exc), EXIT_USAGE)
        else:
            journal, state = _open_output(output, header, resume=resume)
            if state is not None and retry_kinds:
                state = state.retrying(retry_kinds)
            ledger = journal.ledger
        session = open_session(
            provider,
            api_key,
            base_url,
            limits,
            ledger=ledger,
            resubmit_in_doubt=resubmit_in_doubt,
            prices=prices,
            poll_policy=poll_policy,
            **webhooks,
            **fleet,
        )
        counts = Counts(
            label=file.name,
            total=checked.requests,
            previous_done=0 if state is None else state.previous_done,
            previous_failed=0 if state is None else state.failed,
        )
        view = ProgressView(out.err, enabled=out.interactive)
        started = time.monotonic()
        # The journal closes after the session: a submit still on the wire when the session
        # shuts down is answered and recorded.
        with closing(journal):
            async with _listening(session, listen), session:
                shared = None
                if coordinator is not None:
                    shared = await _join(out, coordinator, journal, counts, output_path, view, concurrency)
                runner = BatchRunner(
                    session,
                    journal,
                    counts,
                    source=lambda: read_entries(file, defaults),
                    state=state,
                    on_change=view.update,
                    shared=shared,
                )
                view.add(counts)
                with view:
                    flags = await execute([runner], out)
                if shared is not None:
                    await _tally_others(out, shared, counts, journal)
                runs = [Run(counts, runner, session.statistics())]
        summary = summarize(output, runs, time.monotonic() - started, flags)
        extra = {"unrecorded_tasks": [ref.to_dict() for ref in runs[0].stats.unrecorded_tasks]}
        report(out, summary, runs, title=f"batch {file.name}", extra=extra)
        if not no_report:
            _write_report(out, output)
        return summary.exit_code

    run_command(out, body, verbose=verbose)


def _fleet_options(redis_url: str | None) -> dict[str, Any]:
    """The Session's coordinator for ``--redis`` (exit 2 when the extra is missing). The batch
    takes over no other process's tasks through the coordinator's orphans (those are the
    account's other sessions' to adopt): a dead process's lines of the same batch are taken over
    line by line instead (``_shared``)."""
    if redis_url is None:
        return {}
    try:
        from ..fleet import RedisCoordinator
    except ImportError as exc:
        fail(f"--redis: {exc}", EXIT_USAGE)
    lease = os.environ.get("FLUX_ASYNC_REDIS_LEASE", "").strip()
    try:
        lease_ttl = float(lease) if lease else 15.0
    except ValueError:
        fail(f"FLUX_ASYNC_REDIS_LEASE must be a number of seconds, not {printable(lease)!r}", EXIT_USAGE)
    try:
        coordinator = RedisCoordinator(redis_url, lease_ttl=lease_ttl, poll_interval=min(1.0, lease_ttl / 3))
    except ConfigurationError as exc:
        fail(f"--redis: {exc}", EXIT_USAGE)
    return {"coordinator": coordinator, "adopt_orphans": False}


async def _join(
    out: Output,
    coordinator: Any,
    journal: OutputDir,
    counts: Counts,
    output_path: Path,
    view: ProgressView,
    concurrency: int,
) -> SharedLines:
    """Start or join the shared batch ``journal.header`` names: its lines, and what every
    process did before this one started (counted as done earlier)."""
    header = journal.header
    batch = coordinator.batch(header.run)
    stored, progress = await batch.open(header.to_json())
    reason = JournalHeader.from_json(stored).mismatch(header)
    if reason is not None:
        fail(f"cannot join shared batch {header.run}: {reason}", EXIT_USAGE)
    counts.previous_done = progress.done
    counts.previous_failed = progress.failed
    joined = f", {progress.claimed} held by running processes" if progress.claimed else ""
    out.info(
        f"shared batch {header.run[:12]}: {progress.done} of {header.requests} line(s) done{joined}"
    )
    origin = {"host": socket.gethostname(), "output": os.fspath(output_path)}

    def on_progress(done: int) -> None:
        # The other processes' settled lines, as far as this one knows (exact at the end).
        mine = counts.succeeded + counts.failed
        counts.elsewhere = max(0, done - counts.previous_done - mine)
        view.update(counts)

    # Lines are claimed while fewer than twice the submits in flight wait to be sent.
    return SharedLines(
        batch, interval=coordinator.poll_interval, origin=origin, ahead=2 * concurrency, on_progress=on_progress
    )


async def _tally_others(out: Output, shared: SharedLines, counts: Counts, journal: OutputDir) -> None:
    """Count what the other processes settled while this one ran (for the summary), and write
    every line's recorded result into ``shared-results.jsonl``."""
    records = await shared.results()
    if records is not None:
        try:
            await anyio.to_thread.run_sync(journal.write_shared_results, records)
        except OSError as exc:
            out.error(f"could not write {SHARED_RESULTS_NAME} in {journal.path}: {exc}")
    progress = await shared.progress()
    if progress is None:
        return
    mine_failed = counts.failed
    counts.elsewhere = max(0, progress.done - counts.previous_done - counts.succeeded - mine_failed)
    counts.elsewhere_failed = max(0, progress.failed - counts.previous_failed - mine_failed)


def _webhook_options(
    listen: str | None, url: str | None, secret: str | None, provider: str
) -> tuple[tuple[str, int] | None, dict[str, str]]:
    """Where to listen for webhooks and the Session's webhook settings (exit 2 when wrong)."""
    if listen is None:
        if url is not None:
            fail("--webhook-url needs --webhook-listen: this process must receive the webhooks", EXIT_USAGE)
        return None, {}
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        fail(f"--webhook-listen: expected HOST:PORT, got {printable(listen)!r}", EXIT_USAGE)
    if secret is None and provider in ("toapis", "bfl"):
        fail(
            f"--webhook-listen on {provider} needs --webhook-secret (or FLUX_ASYNC_WEBHOOK_SECRET): "
            "its webhooks are signed, and unsigned ones are refused",
            EXIT_USAGE,
        )
    port = int(port_text)
    shown = f"[{host}]" if ":" in host else host
    webhooks = {"webhook_url": url or f"http://{shown}:{port}{WEBHOOK_PATH}"}
    if secret is not None:
        webhooks["webhook_secret"] = secret
    return (host, port), webhooks


@contextlib.asynccontextmanager
async def _listening(session: Session, listen: tuple[str, int] | None) -> AsyncIterator[None]:
    """Receive the session's webhooks while the block runs (nothing without ``listen``)."""
    if listen is None:
        yield
        return
    host, port = listen
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(serve_webhooks(session, host, port))
        except OSError as exc:
            fail(f"--webhook-listen: cannot listen on {host}:{port} ({exc.strerror or exc})", EXIT_USAGE)
        yield


def _retry_kinds(option: str | None, *, resume: bool) -> frozenset[str]:
    """The error kinds ``--retry-failed`` names (exit 2 on a kind it does not know)."""
    if option is None:
        return frozenset()
    if not resume:
        fail("--retry-failed only applies to --resume", EXIT_USAGE)
    names = {name.strip().lower() for name in option.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(RETRY_KINDS.values())
    unknown = sorted(names - RETRY_KINDS.keys())
    if unknown or not names:
        fail(
            f"--retry-failed: unknown kind(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(RETRY_KINDS)} or all",
            EXIT_USAGE,
        )
    return frozenset(RETRY_KINDS[name] for name in names)


def _write_report(out: Output, output: Path) -> None:
    """The batch's ``report.html``; a report that cannot be written is said, and changes no
    exit status (the batch itself is recorded)."""
    try:
        path = write_report(output)
    except OSError as exc:
        out.error(f"could not write the report in {output}: {exc}")
        return
    out.info(f"report: {path}")


def _check_input(out: Output, file: Path, defaults: Defaults, provider: str) -> CheckReport:
    """The first pass over the file: every line checked, every bad one listed; exit 2 if any."""
    try:
        checked = check_file(file, defaults, provider, max_errors=_MAX_LISTED_ERRORS)
    except BatchFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if not checked.ok:
        for problem in checked.errors:
            out.err.print(f"{file}:{problem}", soft_wrap=True, markup=False)
        more = checked.error_count - len(checked.errors)
        if more:
            out.err.print(f"... and {more} more", markup=False)
        fail(
            f"{file}: {checked.error_count} bad line(s) in {checked.requests} request(s); nothing was submitted",
            EXIT_USAGE,
        )
    if checked.requests == 0:
        out.info(f"{file} holds no requests")
    return checked


def _open_output(output: Path, header: JournalHeader, *, resume: bool) -> tuple[OutputDir, BatchState | None]:
    """A new batch directory, or (``--resume`` and a journal there) the existing one."""
    try:
        if resume and (output / JOURNAL_NAME).exists():
            journal, state = OutputDir.reopen(output)
            reason = state.header.mismatch(header)
            if reason is not None:
                journal.close()
                fail(f"cannot resume the batch in {output}: {reason}", EXIT_USAGE)
            return journal, state
        return OutputDir.create(output, header), None
    except JournalError as exc:
        fail(str(exc), EXIT_USAGE)
