"""``Job``: one accepted task as its caller sees it, and the error a terminal state stands for.

A job is woken once, by the scheduler's ``on_done`` through :meth:`Job._on_done`, and then tells
its owner (the session's :class:`~flux_async._jobs.Jobs`) and its listeners. It holds no
coroutine while it waits. Imports values, errors, the catalog's model data and anyio's event only:
never the transport, the scheduler or the codecs; its owner is known to it only as what it
reports to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from . import catalog
from .errors import (
    ConfigurationError,
    ModerationError,
    ProtocolError,
    TaskFailedError,
    TaskNotFoundError,
    ValidationError,
)
from .models import Cost, GenerationRequest, GenerationResult, TaskRef, TaskState, TaskStatus

if TYPE_CHECKING:
    from ._jobs import Jobs

__all__ = ["Job"]

_log = logging.getLogger("flux_async")


class Job:
    """One submitted task. ``await job.result()`` waits on the session's shared scheduler.

    A waiting job is a few slots: its wake-up event exists only once somebody waits on it.

    ``cost`` is what the job costs as far as it is known: its reservation (the price table's,
    or :attr:`Cost.UNKNOWN`), or the provider's figure once it gives one (BFL's submit answer);
    once the job is done, its settled cost (a reported one wins), which is also on its result.
    """

    __slots__ = (
        "_done",
        "_error",
        "_event",
        "_listener",
        "_listeners",
        "_owner",
        "_state",
        "cost",
        "key",
        "ref",
        "request",
    )

    def __init__(
        self,
        ref: TaskRef,
        request: GenerationRequest | None,
        owner: Jobs,
        key: str | None = None,
        cost: Cost = Cost.UNKNOWN,
    ) -> None:
        self.ref = ref
        self.request = request
        self.cost = cost
        self.key = key  # the ledger's idempotency key (None for a task resumed by ref alone)
        self._owner: Jobs | None = owner
        self._done = False
        self._event: anyio.Event | None = None
        self._state: TaskState | None = None
        self._error: BaseException | None = None
        # The first listener on its own, more in a list: most jobs have one (or none).
        self._listener: Callable[[Job], None] | None = None
        self._listeners: list[Callable[[Job], None]] | None = None

    def __repr__(self) -> str:
        return f"Job(task_id={self.ref.task_id!r}, provider={self.ref.provider!r}, done={self._done})"

    @property
    def task_id(self) -> str:
        """The provider's task id."""
        return self.ref.task_id

    @property
    def state(self) -> TaskState | None:
        """The terminal state, once known."""
        return self._state

    def done(self) -> bool:
        """True once the task reached a terminal state (or watching it failed)."""
        return self._done

    @property
    def error(self) -> BaseException | None:
        """The error that ended the job, once done; None on success."""
        return self._error

    async def wait(self) -> None:
        """Wait until the job is done, without raising its error."""
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    async def result(self) -> GenerationResult:
        """Wait for the task and return its result, or raise the error that ended it."""
        await self.wait()
        if self._error is not None:
            raise self._error
        assert self._state is not None
        assert self._state.result is not None
        return self._state.result

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once the job is done (at once if it already is).

        The callback runs synchronously on the session's event loop and must not block; it is
        how many jobs are awaited without a coroutine each.
        """
        if self._done:
            callback(self)
        else:
            self._add_listener(callback)

    def _add_listener(self, listener: Callable[[Job], None]) -> None:
        if self._listener is None:
            self._listener = listener
        elif self._listeners is None:
            self._listeners = [listener]
        else:
            self._listeners.append(listener)

    def _on_done(self, value: TaskState | BaseException) -> None:
        """Called once by the scheduler with the terminal state or the error that ended it."""
        if isinstance(value, BaseException):
            self._error = value
        else:
            self._state = value
            self._error = _error_for_state(value, self.ref)
        self._done = True
        owner, self._owner = self._owner, None
        if owner is not None:
            try:
                owner.finished(self)
            except Exception:
                # Its bookkeeping failed (a ledger's settlement that raised, against the
                # ledger's contract): reported, and the job is still delivered to whoever
                # waits for it, rather than never.
                _log.exception("task %s ended, but recording its end failed", self.ref.task_id)
        if self._event is not None:
            self._event.set()
        first, self._listener = self._listener, None
        if first is not None:
            first(self)
            listeners, self._listeners = self._listeners, None
            for listener in listeners or ():
                listener(self)


#: The most images a job of a model this library does not know may bring back.
_MOST_IMAGES_UNKNOWN = 10


def _most_images(ref: TaskRef) -> int:
    """How many images a task of ``ref``'s model can make (its largest ``n``, else 1)."""
    if ref.model is None:
        return _MOST_IMAGES_UNKNOWN
    key = (ref.provider, ref.model)
    most = _MOST_IMAGES.get(key)
    if most is None:
        try:
            spec = catalog.model_spec(ref.provider, ref.model)
        except (ConfigurationError, ValidationError):  # a provider or model the catalog lacks
            return _MOST_IMAGES_UNKNOWN
        most = max(spec.n_values) if spec.n_values else 1
        _MOST_IMAGES[key] = most  # only the catalog's models get here: a bounded set
    return most


#: The catalog's answers, per (provider, model): asked once per model, not per job.
_MOST_IMAGES: dict[tuple[str, str], int] = {}


def _error_for_state(state: TaskState, ref: TaskRef) -> BaseException | None:
    """The error a terminal non-success state stands for (None for success)."""
    if state.status is TaskStatus.SUCCEEDED:
        if state.result is None or not state.result.images:
            return TaskFailedError("task completed without any image", task_id=state.task_id)
        count = len(state.result.images)
        # Every model makes at least one: a single image needs no look at its model.
        if count > 1 and count > (most := _most_images(ref)):
            # A result listing more images than the model makes is not to be trusted: fetching
            # it could mean thousands of downloads and files for one job.
            return ProtocolError(
                f"task {state.task_id} lists {count} images, and "
                f"{ref.model or 'its model'} makes at most {most}: not fetching them",
                provider=ref.provider,
            )
        return None
    failure = state.failure
    message = failure.message if failure is not None else state.raw_status
    code = failure.code if failure is not None else None
    if state.status is TaskStatus.MODERATED:
        return ModerationError(f"moderated: {message}", task_id=state.task_id)
    if state.status is TaskStatus.NOT_FOUND:
        return TaskNotFoundError(f"task not found: {message}", task_id=state.task_id)
    return TaskFailedError(message or "task failed", task_id=state.task_id, code=code)
