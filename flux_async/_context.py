"""What a session's parts share: the provider's codec, the transport once open, the clock, the
retry policy with its budget, and the counters; plus the two requests that any part may make
(one poll, and an idempotent request retried on transient failures).

The session builds one :class:`Context` and hands it to its money path, its uploads and its
scheduler; it is the one place that knows whether the session is open. It must not import the
session, the scheduler, the batch machinery or aiohttp (the transport is reached through the
:class:`~flux_async.transport.Transport` protocol).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

from ._http import HttpResponse
from ._loop import loop_clock
from ._throttle import Throttle
from .errors import ConfigurationError, FluxError, RateLimitError
from .models import TaskRef, TaskState
from .providers.base import Codec
from .retry import RetryBudget, RetryPolicy, is_retryable_poll, retry_delay
from .transport import AiohttpTransport, Transport

__all__ = ["NOT_OPEN", "Context"]

T = TypeVar("T")

NOT_OPEN = "use the Session as `async with Session(...) as session:`"


def _running_loop_time() -> float:
    """The running loop's time (anyio.current_time() on asyncio, read directly)."""
    return loop_clock(asyncio.get_running_loop())()


class Context:
    """The shared state of one session's I/O parts (see the module docstring)."""

    __slots__ = (
        "base_url",
        "budget",
        "clock",
        "codec",
        "counts",
        "now",
        "provider",
        "retry_policy",
        "rng",
        "sleep",
        "throttle",
        "transport",
    )

    def __init__(
        self,
        provider: str,
        codec: Codec,
        base_url: str,
        retry_policy: RetryPolicy,
        *,
        clock: Callable[[], float] | None,
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
        throttle: Throttle | None = None,
    ) -> None:
        self.provider = provider
        self.codec = codec
        self.base_url = base_url
        self.retry_policy = retry_policy
        self.budget = RetryBudget(retry_policy)
        self.clock = clock
        #: The session's clock: the injected one, else the running loop's time (read without
        #: a call of ours once the session is open: see :meth:`open_clock`).
        self.now: Callable[[], float] = clock if clock is not None else _running_loop_time
        self.sleep = sleep
        self.rng = rng
        self.counts: Counter[str] = Counter()
        #: The session's pacing after rate limits, shared by its submits and polls.
        self.throttle = throttle or Throttle()
        self.transport: Transport | None = None  # set while the session is open

    def open_clock(self) -> None:
        """The session opens on the running loop: without an injected clock, :attr:`now` reads
        that loop's clock directly from now on (``time.monotonic`` itself on the standard
        loops: one C call, where a method would look the loop up each time)."""
        if self.clock is None:
            self.now = loop_clock(asyncio.get_running_loop())

    def close_clock(self) -> None:
        """The session closed: :attr:`now` looks for the running loop again."""
        if self.clock is None:
            self.now = _running_loop_time

    def net(self) -> Transport:
        """The open transport (RuntimeError when the session is not open)."""
        if self.transport is None:
            raise RuntimeError(NOT_OPEN)
        return self.transport

    async def poll(self, ref: TaskRef) -> TaskState:
        """One status request, read into a state: what the scheduler calls for every poll.

        A 429 answer pauses the session's submits and cuts their rate before the error goes
        back to the scheduler (which pauses the polls itself)."""
        if ref.polling_url is not None:
            self.check_polling_host(ref.polling_url)
        response = await (self.transport or self.net()).send(self.codec.build_poll(ref))
        return self._read_poll(response, ref)

    async def poll_held(self, ref: TaskRef, gate: AiohttpTransport) -> TaskState:
        """:meth:`poll` on a connection of the transport's pool taken for it already (``gate``
        is the transport: the scheduler took the connection in its turn); given back when the
        request cannot be made."""
        try:
            if ref.polling_url is not None:
                self.check_polling_host(ref.polling_url)
            request = self.codec.build_poll(ref)
        except BaseException:
            gate.let_go()
            raise
        response = await gate.send(request, held=True)
        try:  # (_read_poll, without its call: every poll of a batch comes here)
            return self.codec.parse_poll(response, ref=ref)
        except RateLimitError as exc:
            self._rate_limited(exc)
            raise

    def _read_poll(self, response: HttpResponse, ref: TaskRef) -> TaskState:
        try:
            return self.codec.parse_poll(response, ref=ref)
        except RateLimitError as exc:
            self._rate_limited(exc)
            raise

    def _rate_limited(self, exc: RateLimitError) -> None:
        """A poll was answered 429: the session's submits pause and slow down too."""
        delay = retry_delay(self.retry_policy, 0, self.rng, retry_after=exc.retry_after)
        self.throttle.rate_limited(self.now(), delay)

    def check_polling_host(self, url: str) -> None:
        """Refuse to send the key to a polling URL on a host we do not trust.

        BFL's ``polling_url`` names a regional host and is used verbatim, with the key; a
        tampered ref (a resume file, say) must not be able to send the key anywhere else. Trusted:
        the session's own base host and BFL's hosts (``bfl.ai`` and its subdomains).
        """
        host = (urlsplit(url).hostname or "").lower()
        base = (urlsplit(self.base_url).hostname or "").lower()
        if host and (host == base or host == "bfl.ai" or host.endswith(".bfl.ai")):
            return
        raise ConfigurationError(
            f"refusing to poll {host or url!r}: a polling URL must be on {base!r} or a bfl.ai host"
        )

    async def idempotent(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retryable: Callable[[FluxError], bool] = is_retryable_poll,
    ) -> T:
        """Run ``call`` (a request that creates nothing paid), retrying the failures
        ``retryable`` accepts (by default transport errors, 429 with its ``Retry-After``, 5xx)
        up to the retry policy's attempts."""
        policy = self.retry_policy
        attempt = 0
        while True:
            try:
                return await call()
            except FluxError as exc:
                if not retryable(exc) or attempt + 1 >= policy.max_attempts:
                    raise
                retry_after = getattr(exc, "retry_after", None)
                await self.sleep(retry_delay(policy, attempt, self.rng, retry_after=retry_after))
                attempt += 1
