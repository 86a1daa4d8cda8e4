"""Creating many real emulator tasks quickly, through the emulator's ordinary submit endpoint.

The ``scale`` scenario needs up to 100,000 tasks that the emulator really holds. They are
submitted over HTTP/1.1 keep-alive connections with pipelining, by a bare asyncio protocol that
costs the orchestrating process far less per request than a full client would, so setting up
100k tasks takes seconds of emulator time rather than a minute. This is set-up, never measured.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable

__all__ = ["submit_many"]


class _Conn(asyncio.Protocol):
    """One keep-alive connection keeping up to ``depth`` requests in flight."""

    def __init__(
        self, make: Callable[[], bytes | None], on_reply: Callable[[int, bytes], None], depth: int
    ) -> None:
        self.make = make
        self.on_reply = on_reply
        self.depth = depth
        self.buf = bytearray()
        self.inflight = 0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exhausted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._fill()

    def _fill(self) -> None:
        assert self.transport is not None
        chunks = []
        while not self.exhausted and self.inflight < self.depth:
            request = self.make()
            if request is None:
                self.exhausted = True
                break
            chunks.append(request)
            self.inflight += 1
        if chunks:
            self.transport.write(b"".join(chunks))
        if self.exhausted and self.inflight == 0:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.inflight -= 1
            self.on_reply(status, body)
            self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _submit_many(
    host: str, port: int, path: str, headers: dict[str, str], bodies: list[bytes],
    connections: int, depth: int, time_limit: float,
) -> list[str]:  # fmt: skip
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    pending = collections.deque(bodies)
    ids: list[str] = []
    errors: list[int] = []

    def make() -> bytes | None:
        if not pending:
            return None
        body = pending.popleft()
        return (
            head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def on_reply(status: int, body: bytes) -> None:
        if status == 200:
            ids.append(json.loads(body)["id"])
        else:
            errors.append(status)

    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Conn(make, on_reply, depth), host, port)
        conns.append(proto)
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), time_limit)
    if errors or len(ids) != len(bodies):
        raise RuntimeError(
            f"bulk submit: {len(ids)} of {len(bodies)} created, statuses {collections.Counter(errors)}"
        )
    return ids


def submit_many(
    base_url: str, path: str, headers: dict[str, str], bodies: list[bytes], *,
    connections: int = 16, depth: int = 32, time_limit: float = 300.0,
) -> tuple[list[str], float]:  # fmt: skip
    """POST every body to ``base_url + path``; return the created task ids and the seconds taken."""
    rest = base_url.split("://", 1)[1]
    hostport, _, prefix = rest.partition("/")
    host, _, port = hostport.partition(":")
    full = ("/" + prefix if prefix else "") + path
    started = time.monotonic()
    ids = asyncio.run(
        _submit_many(host, int(port), full, headers, bodies, connections, depth, time_limit)
    )
    return ids, time.monotonic() - started
