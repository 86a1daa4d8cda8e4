"""The aiohttp transport against small local servers: bodies arriving in pieces, size caps."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
from aiohttp import web

from flux_async._http import HttpRequest
from flux_async.errors import TransportError
from flux_async.transport import MAX_API_BODY, AiohttpTransport

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
