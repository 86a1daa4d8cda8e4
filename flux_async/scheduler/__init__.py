"""The shared poll scheduler: one driver task watches every outstanding task of a session.

Its parts, each importable on its own:

- ``_policy``: :class:`PollPolicy` (the trade-off between requests and detection delay) and
  :class:`SchedulerStatistics`, frozen values;
- ``_timing``: the timing model, plain functions over small values that decide *when* a task
  is polled next (progress windows, learned durations, backoff), testable without a clock or
  an event loop, and the sparse safety-net schedule of tasks that expect a webhook;
- ``_learned``: what is learned per provider and model (the completion-time distribution,
  fitted to the finished tasks and the ones still running), also pure;
- ``_records``: the driver's per-task and per-provider records;
- ``_wakes``: the rules of :meth:`PollScheduler.wake` (a webhook's wake-up), deduplicated by
  event id and by task, with a bounded memory of event ids;
- ``_driver``: :class:`PollScheduler`, the heap, the quantum, the worker pool, the 429 pauses
  and the polls-per-second budget; it asks the timing model and sends the polls.

Nothing here imports aiohttp, the transport, the session or the codecs: the scheduler only sees
``poll(ref) -> TaskState`` and the error tree.
"""

from ._driver import PollScheduler
from ._policy import PollPolicy, SchedulerStatistics

__all__ = ["PollPolicy", "PollScheduler", "SchedulerStatistics"]
