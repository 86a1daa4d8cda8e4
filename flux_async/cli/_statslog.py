"""The poll scheduler's decisions in aggregate, in the debug log: one line per session every few
seconds while a command runs (``-vv``). Part of the command line, never imported by the library;
imports anyio and the library's public names only.

The scheduler decides, for every outstanding task, when to poll it next; a line per decision
would drown the log. What a reader wants is the sum over an interval: how many tasks are
watched, how many polls were sent for how many finished jobs, how many were retried or met a
429. :func:`log_scheduling` reads ``session.statistics()`` (counters the session keeps anyway),
so the scheduler's hot path pays nothing for it, and it does nothing at all unless the debug
log is on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ._api import Session, SessionStatistics

__all__ = ["SCHEDULING_LOG_EVERY", "log_scheduling", "scheduling_line"]

#: Seconds between two lines.
SCHEDULING_LOG_EVERY = 5.0

_log = logging.getLogger("flux_async.scheduler")


def scheduling_line(before: SessionStatistics, after: SessionStatistics, seconds: float) -> str:
    """What the scheduler did between two snapshots of one session, as one line."""
    polls = after.polls_sent - before.polls_sent
    finished = (after.succeeded + after.failed) - (before.succeeded + before.failed)
    retries = after.poll_retries - before.poll_retries
    limited = after.rate_limited - before.rate_limited
    rate = polls / seconds if seconds > 0 else 0.0
    return (
        f"{after.provider}: {after.outstanding} task(s) watched, {after.active_tasks} active; "
        f"last {seconds:.1f} s: {polls} poll(s) ({rate:.1f}/s), {finished} finished, "
        f"{retries} poll retr{'y' if retries == 1 else 'ies'}, {limited} answered 429; "
        f"{after.polls_per_finished_task:.2f} polls per finished task so far"
    )


async def log_scheduling(
    sessions: Sequence[Session],
    *,
    every: float = SCHEDULING_LOG_EVERY,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    clock: Callable[[], float] = anyio.current_time,
) -> None:
    """Log :func:`scheduling_line` for each session every ``every`` seconds, until cancelled;
    returns at once when the ``flux_async.scheduler`` logger is not at DEBUG."""
    if not _log.isEnabledFor(logging.DEBUG) or not sessions:
        return
    previous = [session.statistics() for session in sessions]
    since = clock()
    while True:
        await sleep(every)
        now = clock()
        current = [session.statistics() for session in sessions]
        for before, after in zip(previous, current, strict=True):
            _log.debug("%s", scheduling_line(before, after, now - since))
        previous, since = current, now
