"""A task's life: its record, planned outcome, timeline phases, id and provider status.

Owns :class:`Task`, the outcome and phase constants, the providers' task-id shapes and the
status each provider reports at a given time. Pure: no I/O, no clock reads (``now`` is always
passed in), no aiohttp; the standard library and the emulator's scenario and validation values
only, never the core, the app or the wire formats (they read a task, this module never
answers a request).

A task's status is a pure function of (created, duration, outcome, now), so no timer or
coroutine exists per task; a task is one slotted record.
"""

from __future__ import annotations

from typing import Final

from ._scenario import Scenario
from ._validate import Spec

__all__ = [
    "CANCELLED",
    "CONTENT_MODERATED",
    "DONE",
    "FAILED",
    "OK",
    "OUTCOME_NAMES",
    "QUEUED",
    "REQUEST_MODERATED",
    "RUNNING",
    "Task",
    "provider_status",
    "task_id",
]

# Planned outcomes.
OK: Final = 0
FAILED: Final = 1
REQUEST_MODERATED: Final = 2
CONTENT_MODERATED: Final = 3
CANCELLED: Final = 4
OUTCOME_NAMES: Final = ("succeeded", "failed", "request_moderated", "content_moderated", "cancelled")

# Phases of a timeline.
QUEUED: Final = 0
RUNNING: Final = 1
DONE: Final = 2

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

class Task:
    """One task. Slotted: about 200 bytes plus its strings.

    ``cost`` is what the provider says the task costs (price x images, in US dollars; None
    without a price), fixed at creation; :attr:`charged` what it is actually charged.
    """

    __slots__ = (
        "cbid",
        "cost",
        "created",
        "downloads",
        "duplicate_of",
        "duration",
        "fmt",
        "id",
        "lookups",
        "model",
        "n",
        "outcome",
        "polls",
        "prompt",
        "provider",
        "ratio",
        "seed",
        "submits",
        "terminal_polled",
    )

    def __init__(
        self,
        task_id: str,
        provider: str,
        spec: Spec,
        created: float,
        duration: float,
        outcome: int,
        seed: int,
        cost: float | None = None,
    ) -> None:
        self.id = task_id
        self.cost = cost
        self.provider = provider
        self.model = spec.model
        self.prompt = spec.prompt
        self.ratio = spec.ratio
        self.fmt = spec.fmt
        self.n = spec.n
        self.cbid = spec.cbid
        self.seed = seed
        self.created = created
        self.duration = duration
        self.outcome = outcome
        self.submits = 1
        self.polls = 0
        self.lookups = 0
        self.downloads = 0
        self.terminal_polled: float | None = None
        self.duplicate_of: str | None = None

    @property
    def charged(self) -> float | None:
        """What the task is charged, in US dollars: its cost, but nothing for a BFL task refused
        by moderation ("not charged")."""
        if self.provider == "bfl" and self.outcome in (REQUEST_MODERATED, CONTENT_MODERATED):
            return 0.0
        return self.cost

    @property
    def end(self) -> float:
        """When the task reaches its terminal status (emulator clock)."""
        return self.created + self.duration

    def phase(self, now: float, queue_fraction: float) -> tuple[int, float]:
        """(phase, fraction of the running part done) at ``now``."""
        elapsed = now - self.created
        duration = self.duration
        if elapsed >= duration:
            return DONE, 1.0
        queued = duration * queue_fraction
        if elapsed < queued:
            return QUEUED, 0.0
        return RUNNING, (elapsed - queued) / (duration - queued)


def task_id(provider: str, digest: bytes) -> str:
    """The id ``provider`` would give a task, shaped like its real ids, from 16 bytes of digest."""
    if provider == "toapis":
        return "task_img_" + digest[:8].hex()
    if provider == "apimart":
        number = int.from_bytes(digest, "big")
        chars = []
        for _ in range(24):
            number, rest = divmod(number, 32)
            chars.append(_CROCKFORD[rest])
        return "task_01" + "".join(chars)
    h = digest.hex()
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def provider_status(task: Task, now: float, sc: Scenario) -> str:
    """The status string a poll at ``now`` would report, in the provider's spelling (``sc`` is
    the scenario as it applies to ``task.provider``)."""
    phase, _ = task.phase(now, sc.queue_fraction)
    outcome = task.outcome
    if task.provider == "toapis":
        if phase == QUEUED:
            return sc.unknown_status or ("submitted" if sc.toapis_submitted_status else "queued")
        if phase == RUNNING:
            return "in_progress"
        return "completed" if outcome == OK else "failed"
    if task.provider == "apimart":
        if phase == QUEUED:
            return sc.unknown_status or "pending"
        if phase == RUNNING:
            return "processing"
        return {OK: "completed", CANCELLED: "cancelled"}.get(outcome, "failed")
    if phase == QUEUED:
        return sc.unknown_status or "Pending"
    if phase == RUNNING:
        return "Pending"
    return {
        OK: "Ready",
        REQUEST_MODERATED: "Request Moderated",
        CONTENT_MODERATED: "Content Moderated",
    }.get(outcome, "Error")
