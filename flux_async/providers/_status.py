"""A provider's status string → :class:`~flux_async.models.TaskStatus`, and the once-per-process
warning for a status no table knows. Pure apart from logging: no I/O, no clock, no
aiohttp/anyio, nothing from transport, scheduler or session, and nothing from the other
provider modules.

An unknown status is treated as still running, because failing the task over a new spelling
could lose a paid result; the warning says so once. The set of statuses already warned about
is the one piece of process-wide state here: every codec shares it, and the tests reset it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..models import TaskStatus

__all__ = ["map_status", "warn_unknown_status"]

logger = logging.getLogger("flux_async")


#: At most this many distinct (provider, status) pairs are remembered; a server sending endless
#: new spellings must not grow memory or flood the log.
_WARNED_LIMIT = 128
_warned: set[tuple[str, str]] = set()


def warn_unknown_status(provider: str, status: str) -> None:
    """Log a WARNING the first time ``provider`` sends ``status``, then stay quiet about it."""
    key = (provider, status[:100])
    if key in _warned:
        return
    if len(_warned) >= _WARNED_LIMIT:
        return
    _warned.add(key)
    if len(_warned) == _WARNED_LIMIT:
        logger.warning(
            "%s: unknown task status %r, treated as still running (%d distinct unknown statuses "
            "seen; further ones are not logged)",
            provider,
            key[1],
            _WARNED_LIMIT,
        )
    else:
        logger.warning("%s: unknown task status %r, treated as still running", provider, key[1])


def map_status(provider: str, raw: str, table: Mapping[str, TaskStatus]) -> TaskStatus:
    """The TaskStatus for the provider's ``raw`` status string.

    Case, surrounding space and the separator (space, hyphen, underscore) are not significant:
    ``"Request Moderated"`` is looked up as ``"request_moderated"``, ``"IN_PROGRESS"`` as
    ``"in_progress"``; no spelling can change meaning that way. Anything not in ``table`` is
    treated as still running and logged once.
    """
    status = table.get(raw)  # the spelling the provider documents: no normalising needed
    if status is None:
        status = table.get("_".join(raw.lower().replace("-", " ").replace("_", " ").split()))
    if status is None:
        warn_unknown_status(provider, raw)
        return TaskStatus.RUNNING
    return status


def _reset_unknown_status_warnings() -> None:
    """Forget which statuses were logged (for tests)."""
    _warned.clear()
