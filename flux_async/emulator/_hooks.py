"""The emulator's webhook deliveries as state: what is due when, what each provider sends, the
faults, retries and counters. No I/O and no aiohttp: :mod:`._hooksend` does the posting and
reports each answer back here. Every method takes the current time as an argument; the
standard library and the emulator's own modules only, never the client library (the
emulator signs from the providers' documentation, so a misreading shared with
``flux_async.webhooks`` cannot hide).

One event per task that asked for a webhook, due when the task reaches its terminal status
(every provider here pushes terminal states only: toapis ``generation.completed`` /
``generation.failed``, apimart ``completed`` / ``failed`` / ``cancelled``, BFL ``Ready``,
``Error`` and the moderated ones). An event is one slotted record in a heap keyed by its due
time; nothing runs per task.

What is sent:

- toapis: ``POST`` to the task's callback URL, ``{"id": "evt_...", "type":
  "generation.completed" | "generation.failed", "data": {"task_id", "task_type", "model",
  "status"}}`` (no result URL), signed with every secret of ``toapis_webhook_secrets``
  (``X-ToAPIs-Webhook-Signature: v1=<hex>[,v1=<hex>]`` over ``id.timestamp.body``). A retry
  carries the same id and body with a new timestamp and signature.
- apimart: ``POST <webhook>/callback`` with the body ``GET /v1/tasks/{id}`` answers; unsigned.
- BFL: ``POST webhook_url`` with ``{"id", "status", "result": {"sample", "prompt", "seed"},
  "timestamp"}`` (``Ready``), ``{"id", "status": "Error", "error", "message", "timestamp"}``,
  or ``{"id", "status": "Request Moderated" | "Content Moderated", "details", "timestamp"}``;
  with the task's ``webhook_secret``, ``X-BFL-Signature: sha256=<hmac of the body>`` and/or
  ``X-Webhook-Secret: <secret>`` as ``bfl_webhook_scheme`` says (no secret: no header).

Retries follow ``webhook_retry_delays`` (scaled by ``time_scale``, like job durations) after
a connection error, a timeout or a non-2xx answer, except a 4xx other than 408 and 429, which
is final (apimart's rule, applied to all three). Fault delays (``delayed``, ``replayed``) are
seconds of the emulator clock, not scaled: a replay must land outside a receiver's window.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import random
from collections.abc import Callable
from typing import Final

from . import _wire as wire
from ._faults import FaultSource
from ._scenario import WEBHOOK_FAULT_KINDS, Fault, Scenario
from ._task import CANCELLED, CONTENT_MODERATED, OK, REQUEST_MODERATED, Task

__all__ = ["COUNTERS", "Delivery", "Outgoing", "WebhookQueue"]

#: The webhook counters of the stats, in order.
COUNTERS: Final = (
    "events", "attempted", "delivered", "failed", "retried", "gave_up", "lost", "delayed",
    "duplicated", "replayed", "badly_signed", "pending",
)

#: One POST as it goes on the wire: URL, headers, body.
Outgoing = tuple[str, dict[str, str], bytes]

_NORMAL: Final = 0
_COPY: Final = 1  # a duplicate or a replay: sent once as frozen, never retried
_WRONG_KEY = b"not the secret this endpoint was given"


class Delivery:
    """One webhook event of one task (or a frozen copy of one), waiting in the heap or in
    flight."""

    __slots__ = (
        "attempt", "bad", "body", "event_id", "frozen", "kind", "provider", "replay_at",
        "secret", "task", "twin", "url",
    )

    def __init__(self, task: Task, url: str, secret: str | None) -> None:
        self.task = task
        self.provider = task.provider
        self.url = url
        self.secret = secret
        self.kind = _NORMAL
        self.attempt = 0  # attempts made so far
        self.bad = False  # signed wrongly (a bad_signature fault)
        self.twin = False  # send a byte-identical duplicate with the first attempt
        self.replay_at: float | None = None  # send it again, frozen, at this time
        self.event_id: str | None = None
        self.body: bytes | None = None  # fixed at the first attempt
        self.frozen: Outgoing | None = None  # a copy's request


class WebhookQueue:
    """Every pending webhook delivery of one emulator, and the counters."""

    def __init__(self, clock: Callable[[], float], faults: FaultSource) -> None:
        self.clock = clock
        self.faults = faults
        #: Called whenever the earliest due time may have moved (the sender sets it).
        self.notify: Callable[[], None] = _nothing
        self.origin = "http://127.0.0.1"
        self.clear()

    def clear(self) -> None:
        """Forget every pending delivery and counter (an emulator reset)."""
        self._heap: list[tuple[float, int, Delivery]] = []
        self._seq = 0
        self.in_flight = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._rngs: dict[str, random.Random] = {}
        self.notify()

    # -- scheduling ------------------------------------------------------------------------------

    def schedule(self, task: Task, url: str, secret: str | None) -> None:
        """Post ``task``'s webhook to ``url`` once the task reaches its terminal status."""
        self._push(task.end, Delivery(task, url, secret))

    def _push(self, due: float, delivery: Delivery) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, delivery))
        self.notify()

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due (emulator clock), or None."""
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        """Deliveries waiting or in flight."""
        return len(self._heap) + self.in_flight

    def pop_due(self, now: float, limit: int, plans: dict[str, Scenario]) -> list[Delivery]:
        """Up to ``limit`` deliveries to post now; faults are decided as an event first falls
        due (a lost one is dropped, a delayed one goes back in the heap)."""
        out: list[Delivery] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < limit:
            _, _, delivery = heapq.heappop(heap)
            if delivery.kind == _NORMAL and delivery.attempt == 0 and delivery.event_id is None:
                sc = plans[delivery.provider]
                self.counters["events"] += 1
                delivery.event_id = self._event_id(delivery.task, sc)
                fault = self._fault(delivery.provider, sc)
                if fault is not None:
                    kind, delay = fault
                    self.counters[_COUNTED[kind]] += 1
                    if kind == "lost":
                        continue
                    if kind == "delayed":
                        self._push(now + (sc.webhook_delay if delay is None else delay), delivery)
                        continue
                    if kind == "duplicated":
                        delivery.twin = True
                    elif kind == "replayed":
                        delivery.replay_at = now + (
                            sc.webhook_replay_after if delay is None else delay
                        )
                    else:
                        delivery.bad = True
            self.in_flight += 1
            out.append(delivery)
        return out

    def _fault(self, provider: str, sc: Scenario) -> tuple[str, float | None] | None:
        """The fault this event gets: scripted first, then drawn from ``webhook_faults``."""
        allowed = _UNSIGNED_KINDS if provider == "apimart" else None
        scripted: Fault | None = self.faults.take("webhook", provider, allowed)
        if scripted is not None:
            return scripted.kind, scripted.delay
        rates = sc.webhook_faults
        if rates.total() <= 0:
            return None
        rng = self._rngs.get(provider)
        if rng is None:
            rng = self._rngs[provider] = random.Random(f"{sc.seed}:{provider}:webhook")
        u = rng.random()
        for kind in WEBHOOK_FAULT_KINDS:
            rate = getattr(rates, kind)
            if u < rate:
                if kind == "bad_signature" and provider == "apimart":
                    return None
                self.faults.sent[kind] = self.faults.sent.get(kind, 0) + 1
                return kind, None
            u -= rate
        return None

    # -- what goes on the wire -------------------------------------------------------------------

    def prepare(self, delivery: Delivery, now: float, sc: Scenario) -> list[Outgoing]:
        """The request(s) to post for ``delivery`` now: one, or two identical ones for a
        duplicated event. A replay is put back in the heap, frozen, for later."""
        if delivery.frozen is not None:
            return [delivery.frozen]
        task = delivery.task
        if delivery.body is None:
            delivery.body = _body(task, delivery.event_id or "", now, sc, self.origin)
        body = delivery.body
        headers = {"Content-Type": "application/json", "User-Agent": _AGENTS[task.provider]}
        if task.provider == "toapis":
            keys = [_WRONG_KEY] if delivery.bad else [s.encode() for s in sc.toapis_webhook_secrets]
            stamp = str(int(now))
            signed = f"{delivery.event_id}.{stamp}.".encode() + body
            headers["X-ToAPIs-Webhook-Id"] = delivery.event_id or ""
            headers["X-ToAPIs-Webhook-Timestamp"] = stamp
            headers["X-ToAPIs-Webhook-Signature"] = ",".join(
                "v1=" + hmac.new(key, signed, hashlib.sha256).hexdigest() for key in keys
            )
        elif task.provider == "bfl" and delivery.secret is not None:
            key = _WRONG_KEY if delivery.bad else delivery.secret.encode()
            if sc.bfl_webhook_scheme in ("signature", "both"):
                headers["X-BFL-Signature"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
            if sc.bfl_webhook_scheme in ("secret_header", "both"):
                headers["X-Webhook-Secret"] = key.decode("utf-8", "replace")
        out: Outgoing = (delivery.url, headers, body)
        requests = [out]
        if delivery.twin:
            delivery.twin = False
            requests.append(out)
        if delivery.replay_at is not None:
            copy = Delivery(task, delivery.url, delivery.secret)
            copy.kind = _COPY
            copy.frozen = out
            copy.event_id = delivery.event_id
            self._push(delivery.replay_at, copy)
            delivery.replay_at = None
        self.counters["attempted"] += len(requests)
        return requests

    def finish(self, delivery: Delivery, statuses: list[int | None], now: float,
               sc: Scenario) -> None:
        """Record the answers to :meth:`prepare`'s requests (None: no answer) and schedule a
        retry when the first one failed in a way the provider retries."""
        self.in_flight -= 1
        for status in statuses:
            ok = status is not None and 200 <= status < 300
            self.counters["delivered" if ok else "failed"] += 1
        status = statuses[0]
        if status is not None and 200 <= status < 300:
            return
        retryable = status is None or not 400 <= status < 500 or status in (408, 429)
        delays = sc.webhook_retry_delays.get(delivery.provider, ())
        if delivery.kind == _NORMAL and retryable and delivery.attempt < len(delays):
            delay = delays[delivery.attempt]
            delivery.attempt += 1
            self.counters["retried"] += 1
            self._push(now + delay * sc.time_scale, delivery)
        elif delivery.kind == _NORMAL:
            self.counters["gave_up"] += 1

    def stats(self) -> dict[str, int]:
        """The counters, ``pending`` as of now."""
        return dict(self.counters, pending=self.pending())

    def _event_id(self, task: Task, sc: Scenario) -> str:
        digest = hashlib.blake2b(f"{sc.seed}:{task.id}:webhook".encode(), digest_size=12)
        return "evt_" + digest.hexdigest()


_COUNTED = {"lost": "lost", "delayed": "delayed", "duplicated": "duplicated",
            "replayed": "replayed", "bad_signature": "badly_signed"}
_UNSIGNED_KINDS = frozenset({"lost", "delayed", "duplicated", "replayed"})
_AGENTS = {"toapis": "toapis-webhooks/1 (emulated)", "apimart": "apimart-webhook/1 (emulated)",
           "bfl": "bfl-webhooks/1 (emulated)"}


def _nothing() -> None:
    return None


def _body(task: Task, event_id: str, now: float, sc: Scenario, origin: str) -> bytes:
    """The webhook body of ``task`` (terminal at ``now``), as its provider sends it."""
    if task.provider == "apimart":
        return wire.apimart_task(task, now, sc, origin)
    ok = task.outcome == OK
    if task.provider == "toapis":
        status = "completed" if ok else "failed"
        return wire.dumps({
            "id": event_id,
            "type": f"generation.{status}",
            "created_at": int(now),
            "data": {"task_id": task.id, "task_type": "image_generation", "model": task.model,
                     "status": status},
        })
    body: dict[str, object] = {"id": task.id}
    if ok:
        expires = task.end + sc.url_ttl.get("bfl", 600.0)
        body["status"] = "Ready"
        body["result"] = {"sample": wire.result_url(origin, task, 0, expires),
                          "prompt": task.prompt, "seed": task.seed}
    elif task.outcome in (REQUEST_MODERATED, CONTENT_MODERATED):
        moderated = task.outcome == REQUEST_MODERATED
        body["status"] = "Request Moderated" if moderated else "Content Moderated"
        body["details"] = {"Moderation Reasons": ["Derivative Works" if moderated
                                                  else "Explicit Content"]}
    else:
        body["status"] = "Error"
        body["error"] = "Generation failed: internal error"
        body["message"] = "task cancelled" if task.outcome == CANCELLED else "generation failed"
    body["timestamp"] = int(now)
    return wire.dumps(body)
