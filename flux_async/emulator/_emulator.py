"""``Emulator``: the in-process handle on a running emulator server.

Owns the aiohttp runner and site; everything else lives in the core (state) and the app
(handlers). Imports aiohttp, the standard library and the emulator's own modules only.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from ._app import EmulatorApp
from ._core import Core, EmulatorStats, TaskStats
from ._images import ImageCache
from ._sampling import wall_clock
from ._scenario import PROVIDERS, Fault, Scenario

__all__ = ["Emulator"]


class Emulator:
    """A local server speaking toapis, apimart and BFL, scripted by a :class:`Scenario`.

    ::

        async with Emulator(Scenario(seed=1), clock=clock) as emu:
            base = emu.base_url("toapis")      # http://127.0.0.1:PORT/toapis
            ...
            emu.stats()["requests"]["submit"]

    ``clock`` (default: ``time.time``) is what the emulator believes the time is: task
    timelines, URL expiry, rate limits and the timestamps it reports all read it, so a test can
    pass a :class:`ManualClock` and ``advance()`` it instead of sleeping. Only real waits
    (``latency``, ``slow`` faults) use real time.

    The URLs the emulator hands out (BFL's ``polling_url``, result and upload URLs) start with
    :attr:`url`, whatever ``Host`` a request names; ``public_url`` replaces it when clients
    reach the server at another address (a container's published port, a proxy).
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
        image_cache_size: int = 2048,
        shutdown_timeout: float = 1.0,
        public_url: str | None = None,
    ) -> None:
        self._core = Core(scenario if scenario is not None else Scenario(), clock or wall_clock)
        self._app = EmulatorApp(self._core, ImageCache(image_cache_size))
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._public_url = None if public_url is None else public_url.rstrip("/")
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (``port=0`` picks a free port; read it from :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("this emulator is already running")
        runner = web.AppRunner(
            self._app.app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self._port = int(address[1])
                break
        self._core.origin = self._public_url or self.url

    async def stop(self) -> None:
        """Stop serving; open connections are closed. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The host bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port (the real one once started, even if 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the server (no trailing slash)."""
        host = "127.0.0.1" if self._host in ("0.0.0.0", "", "::") else self._host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def base_url(self, provider: str) -> str:
        """The base URL to give a client for ``provider`` (``toapis``, ``apimart``, ``bfl``)."""
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; one of {PROVIDERS}")
        return f"{self.url}/{provider}"

    # -- behaviour -------------------------------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        """The scenario in force; assign to change it (tasks and counters are kept)."""
        return self._core.scenario

    @scenario.setter
    def scenario(self, scenario: Scenario) -> None:
        self.set_scenario(scenario)

    def set_scenario(self, scenario: Scenario) -> None:
        """Change behaviour now. Existing tasks keep the duration and outcome drawn at their
        creation; the pending fault script is replaced by ``scenario.faults``."""
        self._core.set_scenario(scenario)

    @property
    def clock(self) -> Callable[[], float]:
        """The emulator's clock."""
        return self._core.clock

    def inject(self, *faults: Fault) -> None:
        """Script one-off faults, applied after those already pending."""
        for fault in faults:
            self._core.faults.inject(fault)

    def fail_next(
        self,
        endpoint: str,
        kind: str = "status",
        *,
        count: int = 1,
        provider: str | None = None,
        status: int = 503,
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Shorthand for ``inject(Fault(...))``: the next ``count`` matching requests get
        ``kind`` (e.g. ``emu.fail_next("submit", "drop_after_create", provider="toapis")``)."""
        self.inject(
            Fault(
                endpoint=endpoint,  # type: ignore[arg-type]
                kind=kind,
                count=count,
                provider=provider,
                status=status,
                retry_after=retry_after,
                delay=delay,
            )
        )

    def pending_faults(self) -> list[tuple[Fault, int]]:
        """Scripted faults not yet used up, with how many requests each still applies to."""
        return [(entry.fault, entry.remaining) for entry in self._core.faults.script]

    # -- observation -----------------------------------------------------------------------------

    def stats(self, *, tasks: bool = True) -> EmulatorStats:
        """The same document as ``GET /_emulator/stats`` (see the package docstring)."""
        return self._core.stats(tasks=tasks)

    def statistics(self) -> EmulatorStats:
        """Alias of :meth:`stats` (the project's name for counters of long-lived objects)."""
        return self.stats()

    def task(self, task_id: str) -> TaskStats | None:
        """One task's stats row, or None if no such task exists."""
        found = self._core.tasks.get(task_id)
        return None if found is None else self._core.task_stats(found, self._core.clock())

    def task_ids(self) -> list[str]:
        """Ids of every task created since the last reset, in creation order."""
        return list(self._core.tasks)

    async def wait_webhooks_idle(self) -> None:
        """Wait until no webhook is in flight and none is due at the emulator's current time
        (with a :class:`ManualClock`: advance it, then await this instead of sleeping). The
        counters are in ``stats()["webhooks"]``."""
        await self._app.webhooks.wait_idle()

    def reset(self) -> None:
        """Forget tasks and counters (as ``POST /_emulator/reset``)."""
        self._core.reset()

    def __repr__(self) -> str:
        state = f"listening on {self.url}" if self.running else "stopped"
        return f"<Emulator {state}>"
