"""The aiohttp transport against small local servers: bodies arriving in pieces, size caps."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from flux_async._http import FixedHeaders, HttpRequest
from flux_async.errors import TransportError
from flux_async.transport import API_READ_SIZE, MAX_API_BODY, AiohttpTransport

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture(params=["chunked", "content-length"])
async def chunked_server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A body sent in two pieces, with chunked encoding or under a declared Content-Length
    (the transport reads the two differently)."""
    body = json.dumps({"id": "task_1", "status": "queued", "padding": "p" * 5000}).encode()
    framing = request.param

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if framing == "chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        # Two writes with a pause between them: the client sees the body in two pieces.
        await response.write(body[:20])
        await anyio.sleep(0.05)
        await response.write(body[20:])
        await response.write_eof()
        return response

    runner, url = await _serve(handler)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_body_in_several_chunks_is_read_whole(chunked_server: str) -> None:
    transport = AiohttpTransport(base_url=chunked_server)
    try:
        response = await transport.send(HttpRequest(method="GET", url="/x"))
    finally:
        await transport.aclose()
    assert response.status == 200
    data = response.json()
    assert data["id"] == "task_1"
    assert len(data["padding"]) == 5000


@pytest.mark.anyio
async def test_an_oversized_api_body_is_refused() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"x" * (1024 * 1024)
        for _ in range(MAX_API_BODY // len(chunk) + 2):
            await response.write(chunk)
        await response.write_eof()
        return response

    runner, url = await _serve(handler)
    transport = AiohttpTransport(base_url=url)
    try:
        with pytest.raises(TransportError, match="too large"):
            await transport.send(HttpRequest(method="GET", url="/x"))
    finally:
        await transport.aclose()
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_small_compressed_body_that_unpacks_past_the_cap_is_refused() -> None:
    """Content-Length counts the compressed bytes: the cap applies to what they unpack to."""
    packed = gzip.compress(b"{" + b" " * (MAX_API_BODY + 1024) + b"}")
    assert len(packed) < MAX_API_BODY // 100

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip",
                                                  "Content-Type": "application/json"})

    runner, url = await _serve(handler)
    transport = AiohttpTransport(base_url=url)
    try:
        with pytest.raises(TransportError, match="too large"):
            await transport.send(HttpRequest(method="GET", url="/x"))
    finally:
        await transport.aclose()
        await runner.cleanup()


@pytest.mark.anyio
async def test_requests_past_the_pool_wait_their_turn_and_a_cancelled_wait_frees_nothing() -> None:
    """At most max_connections API requests are on the wire at once; the rest wait in the
    transport (first come, first served) and each one still gets its answer; a waiter cancelled
    while it waits takes no connection and loses none."""
    release = anyio.Event()
    three_on_wire = anyio.Event()
    on_wire: list[int] = []
    most = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal most
        n = int(request.query["n"])
        on_wire.append(n)
        most = max(most, len(on_wire))
        if len(on_wire) == 3:
            three_on_wire.set()
        await release.wait()
        on_wire.remove(n)
        return web.json_response({"n": n})

    runner, url = await _serve(handler)
    transport = AiohttpTransport(base_url=url, max_connections=3)
    answers: dict[int, int] = {}
    started: list[int] = []
    try:
        async def one(n: int) -> None:
            started.append(n)
            response = await transport.send(HttpRequest(method="GET", url=f"/x?n={n}"))
            answers[n] = json.loads(response.body)["n"]

        doomed = anyio.CancelScope()
        gave_up = anyio.Event()

        async def cancelled_while_waiting() -> None:
            with doomed:
                await one(99)
            gave_up.set()

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(one, n)
            tg.start_soon(cancelled_while_waiting)
            await three_on_wire.wait()
            assert len(started) == 9
            assert sorted(on_wire) == [0, 1, 2]  # the first three, the others waiting
            assert len(transport._queue) == 6
            doomed.cancel()
            await gave_up.wait()
            assert transport._queue[-1].cancelled()  # its place is given up...
            release.set()
        assert answers == {n: n for n in range(8)}
        assert 99 not in answers
        assert most == 3
        assert transport._free == 3  # every connection back
        assert not transport._queue
    finally:
        await transport.aclose()
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_waiter_handed_a_connection_as_it_is_cancelled_passes_it_on() -> None:
    """asyncio's own cancellation (task.cancel()) of a waiter whose turn has just come."""
    transport = AiohttpTransport(base_url="http://127.0.0.1:9", max_connections=1)
    transport._free = 0  # the one connection is in use
    waiter = asyncio.ensure_future(transport._connection())
    await anyio.lowlevel.checkpoint()  # it runs, and waits
    assert len(transport._queue) == 1
    transport._hand_on()  # the request in flight ends: the waiter is handed its connection...
    assert transport._free == 0
    waiter.cancel()  # ...and cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert transport._free == 1  # the connection was passed on, not lost
    assert not transport._queue
    await transport.aclose()


@pytest.mark.anyio
async def test_fixed_headers_are_sent_as_given_and_their_aiohttp_form_is_made_once() -> None:
    """A codec's FixedHeaders reach the server on every request; the transport builds aiohttp's
    form of them once and reuses it, and an entry left by other headers under the same id
    (freed and their id reused) is never sent in their place."""
    seen: list[tuple[str | None, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("X-Which"), request.headers.get("X-Also")))
        return web.json_response({})

    runner, url = await _serve(handler)
    transport = AiohttpTransport(base_url=url)
    try:
        first = FixedHeaders({"X-Which": "first", "X-Also": "yes"})
        for _ in range(3):
            await transport.send(HttpRequest(method="GET", url="/x", headers=first))
        assert len(transport._fixed) == 1
        made = transport._fixed[id(first)][1]
        await transport.send(HttpRequest(method="GET", url="/x", headers=first))
        assert transport._fixed[id(first)][1] is made  # reused, not rebuilt

        second = FixedHeaders({"X-Which": "second"})
        stale = FixedHeaders({"X-Which": "stale"})
        transport._fixed[id(second)] = (stale, transport._fix(stale)[1])  # as if id(stale) == id(second)
        await transport.send(HttpRequest(method="GET", url="/x", headers=second))
        await transport.send(HttpRequest(method="GET", url="/x", headers={"X-Which": "plain"}))
        assert seen == [("first", "yes")] * 4 + [("second", None), ("plain", None)]
    finally:
        await transport.aclose()
        await runner.cleanup()


def test_fixed_headers_are_read_only_copies_and_keep_keys_out_of_their_repr() -> None:
    given = {"Authorization": "Bearer sk-secret-value", "Accept": "application/json"}
    fixed = FixedHeaders(given)
    given["Accept"] = "text/plain"  # the caller's dict changes: the headers do not
    assert dict(fixed) == {"Authorization": "Bearer sk-secret-value", "Accept": "application/json"}
    with pytest.raises(TypeError):
        fixed["Accept"] = "text/plain"  # type: ignore[index]
    assert "sk-secret-value" not in repr(fixed)
    assert "application/json" in repr(fixed)


@pytest.mark.anyio
async def test_turns_in_the_connection_queue_take_or_pass_on_a_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = AiohttpTransport(base_url="http://127.0.0.1:9", max_connections=1)
    assert transport.gated
    assert transport.take_connection()
    assert not transport.take_connection()  # the pool's one connection is taken
    calls: list[str] = []

    def broken() -> bool:
        calls.append("broken")
        raise RuntimeError("boom")

    def passes() -> bool:
        calls.append("passes")
        return False

    def takes() -> bool:
        calls.append("takes")
        return True

    for turn in (broken, passes, takes):
        transport.queue_turn(turn)
    transport.let_go()  # down the queue: a failing turn is logged and passed over, never raised
    assert calls == ["broken", "passes", "takes"]
    assert "a turn in the connection queue failed" in caplog.text
    assert not transport.take_connection()  # the last turn holds it
    transport.let_go()  # nothing waits: free again
    assert transport.take_connection()
    await transport.aclose()


@pytest.mark.anyio
async def test_a_callers_aiohttp_session_has_no_gate_to_take_from() -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        transport = AiohttpTransport(base_url="http://127.0.0.1:9", session=http)
        assert not transport.gated
        assert not transport.take_connection()


def _recording_client_reads(monkeypatch: pytest.MonkeyPatch, port: int) -> list[int]:
    """The sizes the client's sockets to ``port`` ask for on each read (the server's own
    sockets, in this process too, are left out)."""
    asked: list[int] = []
    real_recv = socket.socket.recv

    def recv(self: socket.socket, size: int, *args: int) -> bytes:
        if self.getpeername()[1] == port:
            asked.append(size)
        return real_recv(self, size, *args)

    monkeypatch.setattr(socket.socket, "recv", recv)
    return asked


_BIG = {"blob": "x" * 200_000}


async def _big_or_small(request: web.Request) -> web.StreamResponse:
    return web.json_response(_BIG if "big" in request.query else {"ok": True})


@pytest.mark.anyio
async def test_api_connections_read_in_chunks_of_api_read_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio reads into a fresh 256 KiB buffer; the session's own API connections ask for
    API_READ_SIZE instead (see there why), from their second answer on, and a large body
    still arrives whole."""
    runner, url = await _serve(_big_or_small)
    asked = _recording_client_reads(monkeypatch, int(url.rsplit(":", 1)[1]))
    transport = AiohttpTransport(base_url=url, max_connections=1)
    try:
        await transport.send(HttpRequest(method="GET", url="/x"))  # the connection's first answer
        assert asked == [256 * 1024]  # asyncio's own size
        asked.clear()
        response = await transport.send(HttpRequest(method="GET", url="/x?big=1"))
        assert json.loads(response.body) == _BIG
        assert set(asked) == {API_READ_SIZE}
        assert len(asked) >= len(response.body) // API_READ_SIZE
    finally:
        await transport.aclose()
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_callers_own_session_keeps_its_read_size(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, url = await _serve(_big_or_small)
    asked = _recording_client_reads(monkeypatch, int(url.rsplit(":", 1)[1]))
    async with aiohttp.ClientSession() as session:
        transport = AiohttpTransport(base_url=url, session=session)
        try:
            for _ in range(3):
                await transport.send(HttpRequest(method="GET", url="/x"))
            assert asked == [256 * 1024] * 3  # its connections are left as the caller made them
        finally:
            await transport.aclose()
            await runner.cleanup()
