"""The emulator's state: tasks, their lazily computed timelines, limits, faults and counters.

No I/O and no aiohttp: every method takes the current time from the injected clock, so a
task's status is a pure function of (created, duration, outcome, now). No timer or coroutine
exists per task; a task is one slotted record (plus one float per active-task heap it sits in).

Standard library and the emulator's own modules only.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from typing import Final, NotRequired, TypedDict

from ._scenario import PROVIDERS, Fault, FaultRates, Scenario, uniforms
from ._validate import Spec

__all__ = ["Core", "EmulatorStats", "Task", "TaskStats"]


class TaskStats(TypedDict):
    """One task's row in the stats (see the package docstring for the meaning of each key)."""

    id: str
    provider: str
    model: str
    status: str
    provider_status: str
    outcome: str
    submits: int
    polls: int
    lookups: int
    downloads: int
    created_at: float
    duration: float
    completed_at: float | None
    first_terminal_poll_at: float | None
    client_business_id: str | None
    duplicate_of: str | None


class EmulatorStats(TypedDict):
    """The ``/_emulator/stats`` document (``tasks`` is absent with ``?tasks=0``)."""

    now: float
    requests: dict[str, int]
    by_provider: dict[str, dict[str, int]]
    status_codes: dict[str, int]
    tasks_created: int
    duplicate_submits: int
    rate_limited: dict[str, int]
    dropped_connections: dict[str, int]
    faults: dict[str, int]
    active_now: dict[str, int]
    active_high_water: dict[str, int]
    pending_scripted_faults: int
    tasks: NotRequired[list[TaskStats]]

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
    """One task. Slotted: about 200 bytes plus its strings."""

    __slots__ = (
        "cbid",
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
    ) -> None:
        self.id = task_id
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


def _task_id(provider: str, digest: bytes) -> str:
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


class _Pending:
    """A scripted fault and how many more requests it applies to."""

    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


class Core:
    """Everything the handlers share. One instance per running emulator."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.epoch = 0
        self.scenario = scenario
        self.plans: dict[str, Scenario] = {}
        self.keys: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {}
        self.script: list[_Pending] = []
        self._rates: dict[tuple[str, str], FaultRates | None] = {}
        self._fault_rngs: dict[tuple[str, str], random.Random] = {}
        self._status_faults: dict[tuple[str, int], Fault] = {}
        self._kind_faults: dict[tuple[str, str], Fault] = {}
        self.latency_rng = random.Random(f"{scenario.seed}:latency")
        self._buckets: dict[str, list[float]] = {}
        self.set_scenario(scenario)
        self._clear()

    # -- scenario ------------------------------------------------------------------------------

    def set_scenario(self, scenario: Scenario) -> None:
        """Switch behaviour; tasks and counters stay, the fault script is replaced."""
        self.scenario = scenario
        self.plans = {p: scenario.for_provider(p) for p in PROVIDERS}
        self.keys = {
            p: (frozenset(sc.api_keys), frozenset(sc.forbidden_keys), frozenset(sc.no_credit_keys))
            for p, sc in self.plans.items()
        }
        self._rates = {
            (p, endpoint): _rates_for(sc, endpoint)
            for p, sc in self.plans.items()
            for endpoint in ("submit", "poll", "lookup", "upload", "download")
        }
        self.script = [_Pending(f) for f in scenario.faults]
        self._fault_rngs.clear()
        self._buckets.clear()
        self.latency_rng = random.Random(f"{scenario.seed}:latency")

    def reset(self) -> None:
        """Forget every task and counter (the scenario stays; its fault script is re-armed).

        Task ids after a reset differ from those before it, so a stale id is never mistaken
        for a new task.
        """
        self.epoch += 1
        self._clear()
        self.set_scenario(self.scenario)

    def _clear(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.by_cbid: dict[str, Task] = {}
        self.fingerprints: dict[int, Task] = {}
        self.counters: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.active: dict[str, list[float]] = {}
        self.high_water: dict[str, int] = {}
        self.requests: dict[str, int] = dict.fromkeys(
            ("submit", "poll", "lookup", "upload", "download", "other"), 0
        )
        self.by_provider: dict[str, dict[str, int]] = {p: {} for p in PROVIDERS}
        self.status_codes: dict[int, int] = {}
        self.rate_limited = {"cap": 0, "rate": 0, "scripted": 0}
        self.dropped = {"submit_before_create": 0, "submit_after_create": 0, "other": 0}
        self.faults_sent: dict[str, int] = {}
        self.duplicate_submits = 0
        self.tasks_created = 0

    # -- counting ------------------------------------------------------------------------------

    def count(self, provider: str, endpoint: str, status: int) -> None:
        """Record one answered request."""
        self.requests[endpoint] += 1
        per = self.by_provider[provider]
        per[endpoint] = per.get(endpoint, 0) + 1
        self.status_codes[status] = self.status_codes.get(status, 0) + 1

    def count_drop(self, provider: str, endpoint: str, which: str) -> None:
        """Record one request answered by closing the connection."""
        self.requests[endpoint] += 1
        per = self.by_provider[provider]
        per[endpoint] = per.get(endpoint, 0) + 1
        self.dropped[which] += 1

    def count_fault(self, kind: str) -> None:
        """Record one fault delivered (scripted or drawn)."""
        self.faults_sent[kind] = self.faults_sent.get(kind, 0) + 1

    # -- faults --------------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Append a scripted fault after those already pending."""
        self.script.append(_Pending(fault))

    def next_fault(self, endpoint: str, provider: str) -> Fault | None:
        """The fault this request gets, if any: scripted first, then the scenario's rates."""
        if self.script:
            for entry in self.script:
                fault = entry.fault
                if fault.endpoint == endpoint and fault.provider in (None, provider):
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        self.script.remove(entry)
                    self.count_fault(fault.kind)
                    return fault
        rates = self._rates[(provider, endpoint)]
        if rates is None:
            return None
        sc = self.plans[provider]
        key = (provider, endpoint)
        rng = self._fault_rngs.get(key)
        if rng is None:
            rng = self._fault_rngs[key] = random.Random(f"{sc.seed}:{provider}:{endpoint}")
        drawn = self._draw(endpoint, rates, rng.random(), rng, sc)
        if drawn is not None:
            self.count_fault(drawn.kind)
        return drawn

    def _draw(
        self, endpoint: str, rates: FaultRates, u: float, rng: random.Random, sc: Scenario
    ) -> Fault | None:
        download = endpoint == "download"
        for name, rate in (
            ("server_error", rates.server_error),
            ("drop", rates.drop),
            ("drop_after_create", rates.drop_after_create),
            ("malformed", rates.malformed),
            ("slow", rates.slow),
            ("oversized", rates.oversized),
            ("wrong_magic", rates.wrong_magic),
            ("redirect_scheme", rates.bad_redirect),
        ):
            if u < rate:
                if name == "server_error":
                    statuses = sc.server_error_statuses
                    return self._status_fault(endpoint, statuses[rng.randrange(len(statuses))])
                if name == "drop_after_create" and endpoint != "submit":
                    name = "drop"
                elif name == "malformed":
                    name = sc.malformed_kinds[rng.randrange(len(sc.malformed_kinds))]
                    if download and name == "malformed_json":
                        name = "wrong_magic"
                elif name in ("oversized", "wrong_magic", "redirect_scheme") and not download:
                    return None
                return self._kind_fault(endpoint, name)
            u -= rate
        return None

    def _status_fault(self, endpoint: str, status: int) -> Fault:
        fault = self._status_faults.get((endpoint, status))
        if fault is None:
            fault = Fault(endpoint=endpoint, kind="status", status=status)  # type: ignore[arg-type]
            self._status_faults[(endpoint, status)] = fault
        return fault

    def _kind_fault(self, endpoint: str, kind: str) -> Fault:
        fault = self._kind_faults.get((endpoint, kind))
        if fault is None:
            fault = Fault(endpoint=endpoint, kind=kind)  # type: ignore[arg-type]
            self._kind_faults[(endpoint, kind)] = fault
        return fault

    # -- limits --------------------------------------------------------------------------------

    def rate_check(self, provider: str, sc: Scenario, now: float) -> float | None:
        """Token bucket of ``sc.rate_limit`` requests/s: None if allowed, else seconds to wait."""
        rate = sc.rate_limit
        if rate is None:
            return None
        burst = float(sc.rate_limit_burst or max(1, math.ceil(rate)))
        bucket = self._buckets.get(provider)
        if bucket is None:
            bucket = self._buckets[provider] = [burst, now]
        tokens = min(burst, bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _active(self, key: str, now: float) -> list[float]:
        heap = self.active.get(key)
        if heap is None:
            heap = self.active[key] = []
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return heap

    def cap_check(self, provider: str, model: str, sc: Scenario, now: float) -> float | None:
        """None if a task may start, else seconds until the earliest active one ends."""
        caps = sc.active_task_cap
        wait: float | None = None
        for key in (provider, f"{provider}/{model}"):
            heap = self._active(key, now)
            cap = caps.get(key)
            if cap is not None and len(heap) >= cap:
                left = heap[0] - now
                wait = left if wait is None else max(wait, left)
        return wait

    # -- tasks ---------------------------------------------------------------------------------

    def create(self, provider: str, spec: Spec, fingerprint: int, moderated: bool) -> Task:
        """Create (and charge) a task; its outcome and duration are drawn here, once."""
        sc = self.plans[provider]
        now = self.clock()
        k = self.counters[provider]
        self.counters[provider] = k + 1
        if sc.outcome_key == "prompt":
            u_out, u_dur, u_mod, u_seed = uniforms(sc.seed, provider, spec.model, spec.prompt)
        else:
            u_out, u_dur, u_mod, u_seed = uniforms(sc.seed, provider, k)
        duration = sc.duration_for(provider, spec.model).sample(u_dur) * sc.time_scale
        if moderated:
            outcome = REQUEST_MODERATED
        elif u_out < sc.failure_rate:
            outcome = FAILED
        elif u_out < sc.failure_rate + sc.moderation_rate:
            outcome = REQUEST_MODERATED if u_mod < sc.request_moderation_share else CONTENT_MODERATED
        elif u_out < sc.failure_rate + sc.moderation_rate + sc.cancellation_rate:
            outcome = CANCELLED
        else:
            outcome = OK
        seed = spec.seed if spec.seed is not None else int(u_seed * 2**31)
        salt = 0
        while True:
            digest = hashlib.blake2b(
                repr((sc.seed, self.epoch, provider, k, salt)).encode(), digest_size=16
            ).digest()
            task_id = _task_id(provider, digest)
            if task_id not in self.tasks:
                break
            salt += 1
        task = Task(task_id, provider, spec, now, duration, outcome, seed)
        self.tasks[task_id] = task
        self.tasks_created += 1
        # Duplicate detection: the same client_business_id, or a byte-identical body.
        original = None
        if spec.cbid is not None:
            original = self.by_cbid.get(spec.cbid)
            if original is None:
                self.by_cbid[spec.cbid] = task
        if original is None:
            original = self.fingerprints.get(fingerprint)
            if original is None:
                self.fingerprints[fingerprint] = task
        if original is not None:
            original.submits += 1
            task.duplicate_of = original.id
            self.duplicate_submits += 1
        end = now + duration
        for key in (provider, f"{provider}/{spec.model}"):
            heap = self._active(key, now)
            heapq.heappush(heap, end)
            if len(heap) > self.high_water.get(key, 0):
                self.high_water[key] = len(heap)
        return task

    # -- stats ---------------------------------------------------------------------------------

    def provider_status(self, task: Task, now: float) -> str:
        """The status string a poll at ``now`` would report, in the provider's spelling."""
        sc = self.plans[task.provider]
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

    def task_stats(self, task: Task, now: float) -> TaskStats:
        """One task's row of ``/_emulator/stats``."""
        sc = self.plans[task.provider]
        phase, _ = task.phase(now, sc.queue_fraction)
        done = phase == DONE
        return {
            "id": task.id,
            "provider": task.provider,
            "model": task.model,
            "status": OUTCOME_NAMES[task.outcome] if done else ("queued", "running")[phase],
            "provider_status": self.provider_status(task, now),
            "outcome": OUTCOME_NAMES[task.outcome],
            "submits": task.submits,
            "polls": task.polls,
            "lookups": task.lookups,
            "downloads": task.downloads,
            "created_at": task.created,
            "duration": task.duration,
            "completed_at": task.end if done else None,
            "first_terminal_poll_at": task.terminal_polled,
            "client_business_id": task.cbid,
            "duplicate_of": task.duplicate_of,
        }

    def stats(self, *, tasks: bool = True) -> EmulatorStats:
        """The whole ``/_emulator/stats`` document (see the package docstring)."""
        now = self.clock()
        active_now = {key: len(self._active(key, now)) for key in list(self.active)}
        out: EmulatorStats = {
            "now": now,
            "requests": dict(self.requests),
            "by_provider": {p: dict(v) for p, v in self.by_provider.items()},
            "status_codes": {str(k): v for k, v in sorted(self.status_codes.items())},
            "tasks_created": self.tasks_created,
            "duplicate_submits": self.duplicate_submits,
            "rate_limited": dict(self.rate_limited),
            "dropped_connections": dict(self.dropped, total=sum(self.dropped.values())),
            "faults": dict(self.faults_sent),
            "active_now": active_now,
            "active_high_water": dict(self.high_water),
            "pending_scripted_faults": sum(e.remaining for e in self.script),
        }
        if tasks:
            out["tasks"] = [self.task_stats(t, now) for t in self.tasks.values()]
        return out


def _rates_for(sc: Scenario, endpoint: str) -> FaultRates | None:
    if endpoint == "submit":
        rates = sc.submit_faults
    elif endpoint in ("poll", "lookup"):
        rates = sc.poll_faults
    elif endpoint == "upload":
        rates = sc.upload_faults
    else:
        rates = sc.download_faults
    return rates if rates.total() > 0 else None
