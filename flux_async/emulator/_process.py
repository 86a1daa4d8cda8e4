"""Running the emulator outside the caller's event loop: ``run_forever`` (blocking, in this
process) and ``EmulatorProcess`` (a child process, optionally pinned to CPUs, controlled over
HTTP), for benchmarks that keep the emulator off the client's core.

Imports the standard library and the emulator's own modules only (aiohttp via ``Emulator``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, cast

import attrs

from ._core import EmulatorStats
from ._scenario import PROVIDERS, Fault, Scenario

__all__ = ["EmulatorProcess", "run_forever"]

if TYPE_CHECKING:
    from ._emulator import Emulator


def run_forever(
    port: int = 8080,
    scenario: Scenario | None = None,
    *,
    host: str = "127.0.0.1",
    on_ready: Callable[[Emulator], None] | None = None,
    public_url: str | None = None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (blocking; runs its own event loop).

    ``on_ready(emulator)`` is called once the socket is bound (with the real port, useful when
    ``port=0``). ``public_url``: see :class:`Emulator`.
    """
    from ._emulator import Emulator

    async def serve() -> None:
        emulator = Emulator(scenario, host=host, port=port, public_url=public_url)
        await emulator.start()
        try:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, stop.set)
            if on_ready is not None:
                on_ready(emulator)
            await stop.wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


class EmulatorProcess:
    """An emulator in a child process (``python -m flux_async.emulator``), synchronously
    controlled::

        with EmulatorProcess(Scenario(duration=Duration.fixed(10)), cpus={0}) as emu:
            emu.base_url("bfl"); emu.stats(tasks=False); emu.reset()

    ``cpus`` pins the child with ``os.sched_setaffinity`` where the platform allows it.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cpus: Iterable[int] | None = None,
        python: str = sys.executable,
        startup_timeout: float = 30.0,
    ) -> None:
        self._scenario = scenario if scenario is not None else Scenario()
        self._host = host
        self._port = port
        self._cpus = set(cpus) if cpus is not None else None
        self._python = python
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.pinned = False

    def start(self) -> None:
        """Spawn the child and wait until it listens."""
        if self._proc is not None:
            raise RuntimeError("already started")
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        args = [
            self._python, "-m", "flux_async.emulator", "--host", self._host,
            "--port", str(self._port), "--scenario", json.dumps(self._scenario.to_dict()),
            "--json",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self._startup_timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("the emulator process did not start")
        info = json.loads(line)
        self.url = str(info["url"])
        self._port = int(info["port"])
        if self._cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(proc.pid, self._cpus)
                self.pinned = True
            except OSError:
                self.pinned = False

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._proc is None:
            raise RuntimeError("not running")
        return self._proc.pid

    @property
    def port(self) -> int:
        """The port the child listens on."""
        return self._port

    def base_url(self, provider: str) -> str:
        """The base URL to give a client for ``provider``."""
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}")
        return f"{self.url}/{provider}"

    def _call(self, method: str, path: str, payload: object = None) -> object:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stats(self, *, tasks: bool = True) -> EmulatorStats:
        """``GET /_emulator/stats`` of the child."""
        result = self._call("GET", "/_emulator/stats" + ("" if tasks else "?tasks=0"))
        assert isinstance(result, dict)
        return cast(EmulatorStats, result)

    def reset(self) -> None:
        """``POST /_emulator/reset``."""
        self._call("POST", "/_emulator/reset", {})

    def set_scenario(self, scenario: Scenario) -> None:
        """``PUT /_emulator/scenario``."""
        self._scenario = scenario
        self._call("PUT", "/_emulator/scenario", scenario.to_dict())

    def inject(self, *faults: Fault) -> None:
        """``POST /_emulator/faults``."""
        self._call("POST", "/_emulator/faults", [attrs.asdict(f) for f in faults])
