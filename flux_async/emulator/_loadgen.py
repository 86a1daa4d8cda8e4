"""The self-benchmark's load generator, and the child servers it measures.

Owns a minimal keep-alive HTTP/1.1 client on a bare asyncio protocol (:func:`run_phase`), the
raw requests it sends, :class:`Server` (a child process serving on 127.0.0.1, optionally
pinned to CPUs), the bare-aiohttp baseline server (:func:`serve_floor`) and the /proc readings
(CPU time, RSS). The standard library only (aiohttp only inside the baseline server): never
the client library's session or transport, which would cost more per request than the server
being measured, and none of the emulator's state modules (it talks to the emulator over HTTP).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "Server",
    "cpu_seconds",
    "get_request",
    "post_request",
    "rss_bytes",
    "run_phase",
    "serve_floor",
]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (None where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class _Client(asyncio.Protocol):
    """One keep-alive connection keeping ``depth`` requests in flight (1 = no pipelining).

    A bare protocol rather than asyncio streams: the load generator must cost far less per
    request than the server it measures.
    """

    def __init__(self, load: _Load, depth: int) -> None:
        self.load = load
        self.depth = depth
        self.buf = bytearray()
        self.need: int | None = None
        self.status = 0
        self.inflight: collections.deque[int] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        batch = []
        for _ in range(self.depth):
            index = self.load.take()
            if index is None:
                break
            self.inflight.append(index)
            batch.append(self.load.make(index))
        if batch:
            transport.write(b"".join(batch))
        else:
            transport.close()

    def _next(self) -> None:
        assert self.transport is not None
        index = self.load.take()
        if index is None:
            if not self.inflight:
                self.transport.close()
            return
        self.inflight.append(index)
        self.transport.write(self.load.make(index))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                self.need = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
                del buf[: end + 4]
            if len(buf) < self.need:
                return
            body = bytes(buf[: self.need])
            del buf[: self.need]
            self.need = None
            self.load.done(self.inflight.popleft(), self.status, body)
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Load:
    """A bounded request count shared by the connections of one phase."""

    def __init__(
        self,
        count: int,
        make: Callable[[int], bytes],
        on_body: Callable[[int, bytes], None] | None,
    ) -> None:
        self.count = count
        self.make = make
        self.on_body = on_body
        self.issued = 0
        self.errors = 0

    def take(self) -> int | None:
        if self.issued >= self.count:
            return None
        self.issued += 1
        return self.issued - 1

    def done(self, index: int, status: int, body: bytes) -> None:
        if status != 200:
            self.errors += 1
        elif self.on_body is not None:
            self.on_body(index, body)


def post_request(host: str, path: str, headers: str, body: bytes) -> bytes:
    """The bytes of one JSON POST (``headers``: complete header lines, CRLF-terminated)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get_request(host: str, path: str, headers: str) -> bytes:
    """The bytes of one GET (``headers``: complete header lines, CRLF-terminated)."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()


async def run_phase(
    port: int,
    concurrency: int,
    count: int,
    make: Callable[[int], bytes],
    on_body: Callable[[int, bytes], None] | None = None,
    depth: int = 1,
) -> tuple[float, int]:
    """Send ``count`` requests built by ``make(i)`` over ``concurrency`` connections."""
    loop = asyncio.get_running_loop()
    load = _Load(count, make, on_body)
    start = time.perf_counter()
    clients = []
    for _ in range(concurrency):
        _, client = await loop.create_connection(lambda: _Client(load, depth), "127.0.0.1", port)
        clients.append(client)
    await asyncio.gather(*(c.closed for c in clients))
    elapsed = time.perf_counter() - start
    return elapsed, load.errors


class Server:
    """A child process serving HTTP on 127.0.0.1 (the emulator, or the bare-aiohttp floor)."""

    def __init__(self, args: list[str], cpus: set[int] | None) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.pinned = False
        if cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
                self.pinned = True
            except OSError:
                pass

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def serve_floor() -> None:
    """The baseline: bare aiohttp handlers answering a constant small JSON body."""
    from aiohttp import web

    reply = b'{"id":"00000000-0000-4000-a000-000000000000","status":"Pending","progress":null}'

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=reply, content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/floor", get)
        app.router.add_post("/floor", post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
