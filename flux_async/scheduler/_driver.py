"""The scheduler's driver: one task that sends every due poll of a session.

A waiting task is one small slotted record in a min-heap (one heap per provider) keyed by its
next due time; it owns no coroutine, no asyncio task and no timer handle. The driver sleeps until
the earliest due time (due times are rounded up to a quantum, so one wake-up serves a batch),
then hands the due polls to worker tasks in its own task group, at most ``max_in_flight`` polls
at once. Workers are started only when every one is busy, so there are never more than
``max_in_flight`` of them, and they end with the scheduler (handing a poll to a parked worker
costs a sixth of spawning a task for it). It also owns what is shared by a provider's tasks: the
429 pause, the polls-per-second budget, the lag figures, and the wake-ups (:meth:`wake`: a
webhook moves a task's next poll to now, deduplicated by event id and by task).

*When* to poll is not decided here: the driver asks the timing model (``_timing``) after every
answer and only rounds the time it gets to the quantum. Time is injected (``clock``, ``sleep``)
so the driver runs in virtual time under test. This module must not import aiohttp, the
transport, the session or the provider codecs: it only sees ``poll(ref) -> TaskState`` and the
error tree.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc

from .._loop import loop_clock
from .._parking import Parking
from ..errors import RateLimitError, TaskTimeoutError
from ..models import TaskRef, TaskState, TaskStatus
from ..retry import RetryBudget, RetryPolicy, backoff_delay, is_retryable_poll
from ._alarm import Alarm
from ._learned import Learned, refit
from ._meters import LagHistogram, PollBudget
from ._policy import PollPolicy, SchedulerStatistics
from ._records import ConnectionGate, DoneCallback, PollOrder, ProviderQueue, Watch
from ._timing import EPS, learn, next_poll, observe
from ._wakes import Wakes

__all__ = ["DoneCallback", "PollScheduler"]

logger = logging.getLogger(__name__)

_DEFAULT_POLICY = PollPolicy()

# -- the scheduler ------------------------------------------------------------------------------


class PollScheduler:
    """Watches every outstanding task of a session with one driver task.

    ``poll(ref)`` performs one status check and returns the task's state, raising
    :mod:`flux_async.errors` exceptions. ``clock`` defaults to the running loop's time and
    ``sleep`` to :func:`anyio.sleep`; tests inject virtual ones. Use from one event loop.

    With a :class:`ConnectionGate` (:meth:`use_gate`: the session's own connection pool), a due
    poll is handed to a worker only with a connection taken for it: when none is free, the
    order keeps a place in the pool's queue (no task waits for it) and goes to a worker when a
    connection comes to that place, through ``poll_held(ref, gate)``. So a poll costs one
    worker's wake-up, where a worker woken to wait for a connection itself would cost two. And
    none when the connection comes from a request of a task that sends polls itself (a worker,
    or a batch's submitter: :meth:`helping`): that task sends it as soon as its request is done.
    """

    def __init__(
        self,
        poll: Callable[[TaskRef], Awaitable[TaskState]],
        *,
        policy: PollPolicy = _DEFAULT_POLICY,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self._poll = poll
        self._poll_held: Callable[[TaskRef, Any], Awaitable[TaskState]] | None = None
        self._gate: ConnectionGate | None = None
        self._turn: Callable[[], bool] | None = None  # this gate's place-keeper (one per gate)
        # Orders waiting in the gate's queue for a connection (each with a place there).
        self._unconnected: collections.deque[tuple[Watch, float]] = collections.deque()
        self._retry_budget = retry_budget
        self.policy = policy
        self._default_clock = clock is None
        self._clock = clock or self._loop_time
        self._rng = rng or random.Random()
        # Poll errors and 429s without Retry-After back off like any idempotent retry.
        self._error_policy = RetryPolicy(
            base_delay=min(1.0, policy.max_interval),
            max_delay=policy.max_interval,
            jitter="equal",
        )
        self._pause_policy = RetryPolicy(
            base_delay=min(1.0, policy.rate_limit_pause_cap),
            max_delay=policy.rate_limit_pause_cap,
            jitter="equal",
        )
        self._watches: dict[str, Watch] = {}
        self._queues: dict[str, ProviderQueue] = {}
        self._models: dict[tuple[str, str | None], Learned] = {}
        self._ready: collections.deque[tuple[Watch, TaskState]] = collections.deque()
        self._seq = itertools.count()
        self._budget = (
            None if policy.max_polls_per_second is None else PollBudget(policy.max_polls_per_second)
        )
        self._tg: anyio.abc.TaskGroup | None = None
        # Polls handed to the workers, and the event an idle worker waits on: a plain queue, so
        # that taking an order costs no trip through the event loop.
        self._orders: collections.deque[PollOrder] = collections.deque()
        self._idle = Parking()  # workers with nothing to send
        # Tasks that send the waiting orders as soon as a request of theirs is done (see
        # helping()), and whether a look at what they left is due in the loop's next turn.
        self._helpers: set[asyncio.Task[Any] | None] = set()
        self._unserved_check = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the running run()'s
        self._runs = 0  # run() calls: a poll outliving its run leaves the next one's counts
        self._workers = 0
        # The driver's sleep: rung when a poll falls due before it would wake by itself.
        self._alarm = Alarm(clock, sleep)
        self._blocked = False  # due polls are waiting for an in-flight slot
        self._in_flight = 0
        self._lag = LagHistogram()
        self._polls_sent = 0
        self._polls_failed = 0
        self._retries = 0
        self._rate_limited = 0
        self._finished = 0
        self._gave_up = 0
        self._timed_out = 0
        self._wakeups = 0
        self._wakes = Wakes()

    def __repr__(self) -> str:
        return f"<PollScheduler outstanding={len(self._watches)} in_flight={self._in_flight}>"

    # -- public API ------------------------------------------------------------------------------

    def watch(
        self,
        ref: TaskRef,
        on_done: DoneCallback,
        *,
        submitted_at: float | None = None,
        deadline: float | None = None,
        initial: TaskState | None = None,
        push: bool = False,
    ) -> None:
        """Start watching a task. Sync and cheap: no request is made here.

        ``on_done`` is called exactly once, synchronously from the scheduler's own tasks, with
        the terminal :class:`TaskState`, or with the exception that ended the watch: a poll error
        that is not retryable, the last error after ``max_poll_errors`` consecutive retryable
        ones, or :class:`~flux_async.errors.TaskTimeoutError` once ``deadline`` (clock time)
        passes. ``submitted_at`` (clock time; default: now) is when the provider accepted the
        task; ``initial`` is a state already known (e.g. from the submit response). ``push``:
        a webhook should announce the completion (see :meth:`wake`), so the task is only polled
        sparsely, as a safety net for a lost webhook (``PollPolicy.push_*``).

        Raises ValueError if the task is already watched.
        """
        task_id = ref.task_id
        if task_id in self._watches:
            raise ValueError(f"task {task_id} is already watched")
        now = self._clock()
        provider = ref.provider
        queue = self._queues.get(provider)
        if queue is None:
            queue = self._queues[provider] = ProviderQueue()
        key = (provider, ref.model)
        km = self._models.get(key)
        if km is None:
            km = self._models[key] = Learned()
        t0 = now if submitted_at is None else submitted_at
        rec = Watch(ref, on_done, next(self._seq), queue, km, t0, deadline)
        self._watches[task_id] = rec
        if push:  # not counted as running: a lost webhook would make it look longer than it is
            rec.push = True
        else:  # km.enrol(rec), without its call
            rec.live = True
            km.running.append(rec)
            km.alive += 1
        if initial is not None:
            if initial.terminal:
                self._ready.append((rec, initial))
                self._alarm.ring()
                return
            observe(rec, initial, now)
        self._plan(rec, now)

    def use_gate(
        self,
        gate: ConnectionGate | None,
        poll_held: Callable[[TaskRef, Any], Awaitable[TaskState]] | None = None,
    ) -> None:
        """Send polls on connections taken from ``gate`` (see the class), through
        ``poll_held``; None: through ``poll``, each waiting for its connection itself. Set
        while the scheduler is not running (the owner's transport is opened or closed)."""
        if gate is not None and poll_held is None:
            raise ValueError("a gate needs poll_held")
        self._gate, self._poll_held = gate, poll_held
        self._unconnected.clear()
        self._turn = None if gate is None else functools.partial(self._take_turn, gate)

    def unwatch(self, task_id: str) -> bool:
        """Stop watching a task without calling its ``on_done``; True if it was watched."""
        rec = self._watches.pop(task_id, None)
        if rec is None:
            return False
        rec.on_done = None
        rec.km.retire(rec)
        if rec.due is not None:
            rec.due = None
            rec.queue.stale += 1
        return True

    def wake(self, task_id: str, *, event_id: str | None = None) -> bool:
        """Poll a watched task now: its completion was announced (a webhook). Sync, never blocks.

        True if its next poll was brought forward (to the driver's next turn, or ``min_interval``
        after its latest answer). False, and nothing happens, for a task not watched, a recent
        ``event_id`` seen again, a wake-up still pending for the task (until the answer of a poll
        sent after it) or a poll already due as soon. While its poll is in flight: False, and
        that poll answers it (if it finds the task still running, one more follows it). So a
        forged or replayed event costs at most one poll, a flood one per ``min_interval``.
        """
        rec = self._watches.get(task_id)
        due = self._wakes.admit(rec, event_id, self.policy, self._clock())
        if rec is None or due is None:
            return False
        self._push(rec, due)
        return True

    def outstanding(self) -> list[TaskRef]:
        """The refs of the tasks still watched."""
        return [rec.ref for rec in self._watches.values()]

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of the counters."""
        finished = self._finished
        return SchedulerStatistics(
            outstanding=len(self._watches),
            in_flight=self._in_flight,
            polls_sent=self._polls_sent,
            polls_failed=self._polls_failed,
            retries=self._retries,
            rate_limited=self._rate_limited,
            finished=finished,
            gave_up=self._gave_up,
            timed_out=self._timed_out,
            wakeups=self._wakeups,
            polls_per_finished=self._polls_sent / finished if finished else 0.0,
            lag_p50=self._lag.quantile(0.5),
            lag_p99=self._lag.quantile(0.99),
            max_lag=self._lag.max,
            wakes_received=self._wakes.moved + self._wakes.ignored,
            wakes_moved=self._wakes.moved,
            wakes_ignored=self._wakes.ignored,
        )

    async def run(self) -> None:
        """The driver: sends every due poll, until cancelled. Run it in the owner's task group."""
        if self._tg is not None:
            raise RuntimeError("PollScheduler.run() is already running")
        self._loop = asyncio.get_running_loop()
        if self._default_clock:
            self._clock = self._loop_time  # this run's loop
        orders, alarm = self._orders, self._alarm
        try:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    while True:
                        await alarm.rest(self._dispatch())
                        self._wakeups += 1
            finally:
                # Polls handed over but never sent go back to the heap, so that a later
                # run() still watches every task.
                # First the orders still waiting for a connection: their places in the gate's
                # queue, when they come (one may come at once, below), find nothing to take.
                while self._unconnected:
                    rec, _ = self._unconnected.popleft()
                    if rec.on_done is not None:
                        self._push(rec, self._clock())
                while orders:
                    rec, _, held = orders.popleft()
                    if held is not None:
                        held.let_go()  # the connection taken for it goes back to the pool
                    if rec.on_done is not None:
                        self._push(rec, self._clock())
        finally:
            self._tg = None
            self._idle = Parking()
            self._workers = self._in_flight = 0
            self._runs += 1
            self._loop = None

    def _loop_time(self) -> float:
        """The default clock: the running loop's time, as anyio.current_time() gives it, but
        read directly from the asyncio loop (ten times cheaper) when that is the backend."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return anyio.current_time()
        self._clock = loop_clock(loop)
        return self._clock()

    # -- the driver --------------------------------------------------------------------------------

    def _dispatch(self) -> float:
        """Start every due poll that a slot and the budget allow; end watches whose deadline
        passed. Returns when the driver must look again (inf: only when woken)."""
        self._blocked = False
        while self._ready:
            rec, state = self._ready.popleft()
            if rec.on_done is not None:
                self._finish(rec, state)
        tg, orders = self._tg, self._orders
        assert tg is not None
        if orders and not self._idle:
            # Orders handed over by a turn of the gate while no worker was parked.
            policy = self.policy
            for _ in range(min(len(orders), policy.max_in_flight - self._workers)):
                self._workers += 1
                tg.start_soon(self._worker)
        gate = self._gate
        now = self._clock()
        limit = now + EPS
        policy = self.policy
        budget = self._budget
        queues = self._queues.values()
        while True:
            best: ProviderQueue | None = None
            best_due = math.inf
            for queue in queues:
                heap = queue.heap
                while heap and heap[0][2].due != heap[0][0]:  # ended, or planned again
                    heapq.heappop(heap)
                    queue.stale -= 1
                if heap:
                    due = heap[0][0]
                    if due < queue.paused_until:
                        due = queue.paused_until
                    if due < best_due:
                        best, best_due = queue, due
            if best is None or best_due > limit:
                return best_due
            rec = best.heap[0][2]
            if rec.deadline is not None and rec.deadline <= limit:
                heapq.heappop(best.heap)
                rec.due = None
                self._timed_out += 1
                self._finish(
                    rec,
                    TaskTimeoutError(
                        f"task {rec.ref.task_id} did not finish before its deadline",
                        task_id=rec.ref.task_id,
                    ),
                )
                continue
            if self._in_flight >= policy.max_in_flight:
                self._blocked = True
                return math.inf  # a finishing poll dispatches again
            if budget is not None:
                allowed = budget.next_start()
                if allowed > now:  # no tolerance here: the budget is a promise
                    return allowed
                budget.starts.append(now)
            heapq.heappop(best.heap)
            rec.due = None
            self._in_flight += 1
            if gate is not None and not gate.take_connection():
                # No free connection: the order keeps a place in the pool's queue instead of
                # a worker waiting there (see _take_turn).
                self._unconnected.append((rec, best_due))
                assert self._turn is not None
                gate.queue_turn(self._turn)
                continue
            orders.append((rec, best_due, gate))
            if len(self._helpers) > self._workers:
                # Tasks other than the workers send polls too (a batch's submitters): one whose
                # request is answered in this turn of the loop takes the order as it comes back
                # for more. What none took goes to workers in the next turn (see _unserved).
                self._leave_for_helpers()
                continue
            # One parked worker takes the order. With none parked, a new one starts unless
            # there are max_in_flight already: then a busy one takes it when its poll is done.
            if not self._idle.wake_one() and self._workers < policy.max_in_flight:
                self._workers += 1
                tg.start_soon(self._worker)

    def _take_turn(self, gate: ConnectionGate) -> bool:
        """A connection of ``gate`` came to a place an order keeps in its queue: the oldest
        waiting order takes it and goes to a worker. Called synchronously by the gate, in the
        task that let the connection go; False (passed on) when no order waits any more."""
        if gate is not self._gate:
            return False
        unconnected = self._unconnected
        while unconnected:
            rec, due = unconnected.popleft()
            if rec.on_done is None:  # ended meanwhile (unwatched): its slot is free again
                self._in_flight -= 1
                if self._blocked:
                    self._alarm.ring()
                continue
            self._orders.append((rec, due, gate))
            if asyncio.current_task(self._loop) in self._helpers:
                # The task letting the connection go sends the poll once its request is done.
                self._leave_for_helpers()
            elif not self._idle.wake_one():
                self._alarm.ring()  # the driver starts a worker for it
            return True
        return False

    async def _worker(self) -> None:
        """Send the polls handed over by :meth:`_dispatch`, one at a time."""
        orders = self._orders
        with self.helping():  # it looks at the orders as soon as each of its polls is done
            while True:
                while not orders:
                    await self._idle.wait()
                await self._serve(*orders.popleft())

    @contextlib.contextmanager
    def helping(self) -> Iterator[None]:
        """Within: the current task sends the orders waiting in :attr:`orders` (with
        :meth:`send_orders`) as soon as each request of its own is done, without an await in
        between. A connection that one of its requests lets go to a poll in the gate's queue
        is then not handed to a worker woken for it (a trip through the event loop for
        both): the task that had it sends the poll itself, like a worker that finished a
        poll. Should it not get to it in the same turn of the event loop (it awaits something
        else first), a worker is woken for it in the next."""
        me = asyncio.current_task()
        self._helpers.add(me)
        try:
            yield
        finally:
            self._helpers.discard(me)

    @property
    def orders(self) -> collections.deque[PollOrder]:
        """The polls handed over and not yet sent (read-only: for a quick look before
        :meth:`send_orders`)."""
        return self._orders

    async def send_orders(self) -> None:
        """Send the polls handed over and not yet sent, one at a time, in the current task."""
        orders = self._orders
        while orders and self._tg is not None:
            await self._serve(*orders.popleft())

    async def _serve(self, rec: Watch, due: float, held: ConnectionGate | None) -> None:
        """Send one poll handed over and act on its answer."""
        clock = self._clock
        run = self._runs
        start = clock()
        self._lag.add(start - due)
        self._polls_sent += 1
        rec.polls += 1
        if rec.errors == 0 and self._retry_budget is not None:
            self._retry_budget.record_request()  # a first attempt, not a retry
        try:
            if held is None:
                state = await self._poll(rec.ref)
            else:
                assert self._poll_held is not None
                state = await self._poll_held(rec.ref, held)
        except Exception as exc:
            if run == self._runs:  # (a helper's poll may outlive the run that ordered it)
                self._in_flight -= 1
            self._polls_failed += 1
            if rec.on_done is not None:
                self._after_error(rec, exc, clock())
        except BaseException:
            if run == self._runs:
                self._in_flight -= 1
            if rec.on_done is not None:  # cancelled (with the scheduler): poll it next run
                self._push(rec, clock())
            raise
        else:
            if run == self._runs:
                self._in_flight -= 1
            if rec.on_done is not None:
                self._after_state(rec, state, start, clock())
        if self._blocked and self._tg is not None:
            wake_at = self._dispatch()
            if wake_at < self._alarm.at:
                self._alarm.ring()

    def _leave_for_helpers(self) -> None:
        """Orders were left for the helpers: what none of them takes in this turn of the loop
        goes to workers in the next (one look per turn)."""
        if not self._unserved_check:
            self._unserved_check = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._unserved)

    def _unserved(self) -> None:
        """The loop's turn after one in which orders were left for helpers (a connection a
        helper let go, or one the driver took while helpers were about): the orders still
        waiting (no helper came back for them) go to workers."""
        self._unserved_check = False
        pending = len(self._orders)
        while pending and self._idle.wake_one():
            pending -= 1
        if pending:
            self._alarm.ring()  # the driver starts workers for the rest

    def _after_state(self, rec: Watch, state: TaskState, start: float, now: float) -> None:
        rec.errors = 0
        rec.queue.rate_limit_streak = 0
        observed = 0.5 * (start + now)  # the provider answered somewhere in between
        announced = None
        if rec.woken is not None:  # a wake-up is pending
            announced, follow = Wakes.settle(rec, start, state.terminal, self.policy, now)
            if follow is not None:
                observe(rec, state, observed)
                self._push(rec, follow)
                return
        if state.terminal:
            self._finish(rec, state)  # first: a finished task no longer counts as running
            if state.status is TaskStatus.SUCCEEDED:
                km = rec.km
                learn(rec, km, observed, announced)
                if km.fitted is None:  # the model's first belief may be due: it re-plans
                    self._refresh(km, now)
            return
        observe(rec, state, observed)
        self._plan(rec, now)

    def _after_error(self, rec: Watch, exc: Exception, now: float) -> None:
        if isinstance(exc, RateLimitError):
            # A 429 is about the provider, not this task: pause all of the provider's polls.
            self._rate_limited += 1
            self._retries += 1
            queue = rec.queue
            if exc.retry_after is not None and exc.retry_after > 0:
                pause = min(exc.retry_after, self.policy.rate_limit_pause_cap)
            else:
                # No usable Retry-After (absent, 0, negative): a 429 still means slow down.
                if now >= queue.paused_until:  # a new episode, not another answer to the last one
                    queue.rate_limit_streak += 1
                attempt = max(0, queue.rate_limit_streak - 1)
                pause = backoff_delay(self._pause_policy, attempt, self._rng)
            queue.paused_until = max(queue.paused_until, now + pause)
            self._push(rec, now)
            return
        if is_retryable_poll(exc):
            rec.errors += 1
            if rec.errors >= self.policy.max_poll_errors or (
                self._retry_budget is not None and not self._retry_budget.try_spend_retry()
            ):
                self._finish(rec, exc)
                return
            self._retries += 1
            self._push(rec, now + backoff_delay(self._error_policy, rec.errors - 1, self._rng))
            return
        self._finish(rec, exc)

    def _plan(self, rec: Watch, now: float) -> None:
        """Ask the timing model when to poll ``rec`` next, refitting what is learned for its
        model first when there is news."""
        policy = self.policy
        if rec.polls or policy.first_poll is None or rec.push:  # else no belief is read
            self._refresh(rec.km, now)
        self._push(rec, next_poll(rec, rec.km, policy, now, self._rng))

    def _refresh(self, km: Learned, now: float) -> None:
        """Refit what is learned for a model when there is news (cheap to ask)."""
        if km.stale(now) and refit(km, now):
            self._replan(km, now)

    def _replan(self, km: Learned, now: float) -> None:
        """The first belief of a model reaches its waiting tasks: until it, they were planned by
        the backoff alone, whose growing steps can be seconds apart just where the first
        completions show that the others are about to finish. Their polls that the belief
        wants sooner are brought forward (one pass over the model's running tasks, once)."""
        policy, rng = self.policy, self._rng
        for task in km.running:
            rec = task
            # Only tasks without progress: those with it have a better plan than any belief.
            if isinstance(rec, Watch) and rec.live and rec.due is not None and rec.c_t is None:
                due = next_poll(rec, km, policy, now, rng)
                if due < rec.due - policy.quantum:
                    self._push(rec, due)

    def _push(self, rec: Watch, due: float) -> None:
        """Queue ``rec`` for a poll at ``due`` (or for its timeout, if that comes first); an
        entry it already has becomes stale."""
        if rec.deadline is not None and due > rec.deadline:
            due = rec.deadline
        quantum = self.policy.quantum
        if quantum > 0:
            due = math.ceil(due / quantum - 1e-7) * quantum
        queue = rec.queue
        if rec.due is not None:
            queue.stale += 1
        rec.due = due
        heapq.heappush(queue.heap, (due, rec.seq, rec))
        if queue.stale > 64 and queue.stale > len(queue.heap) // 2:
            queue.heap = [entry for entry in queue.heap if entry[2].due == entry[0]]
            heapq.heapify(queue.heap)
            queue.stale = 0
        if due < self._alarm.at:
            self._alarm.ring()

    def _finish(self, rec: Watch, outcome: TaskState | BaseException) -> None:
        callback = rec.on_done
        if callback is None:
            return
        rec.on_done = None
        rec.km.retire(rec)
        if rec.due is not None:
            rec.due = None
            rec.queue.stale += 1
        if self._watches.get(rec.ref.task_id) is rec:
            del self._watches[rec.ref.task_id]
        self._finished += 1
        if isinstance(outcome, BaseException):
            self._gave_up += 1
        try:
            callback(outcome)
        except Exception:
            # The callback belongs to the session; one failing must not stop the other watches.
            logger.exception("on_done callback for task %s raised", rec.ref.task_id)
