"""Result downloads are safe: a byte cap, magic bytes, only http(s) (checked again after every
redirect), a bounded number of redirects, never the API key sent to a result host, and atomic
files (after any failure: no half-written image, no ``.part-*`` file left, an earlier file at
the destination untouched).

A small aiohttp server on 127.0.0.1 plays the result host (and, for the end-to-end check of the
headers, a provider whose result URLs point at it); it records the headers of every request.
"""

from __future__ import annotations

import struct
import tempfile
import types
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from flux_async import (
    DownloadError,
    GeneratedImage,
    GenerationRequest,
    ResultExpiredError,
)
from flux_async import transport as transport_module
from flux_async.retry import RetryPolicy
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

KEY = "download-safety-key-Xw93Lq"
FAST = PollPolicy(target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005,
                  max_interval=0.05)


def _png(extra: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x10\x20\x30" * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"tEXt", b"x" * extra)
            + chunk(b"IEND", b""))


PNG = _png()
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(200) + b"\xff\xd9"
# RIFF size: "WEBP", the chunk's 8-byte header, its 200 bytes (the file's length minus 8).
WEBP = b"RIFF" + struct.pack("<I", 212) + b"WEBPVP8 " + struct.pack("<I", 200) + bytes(200)
XML = b'<?xml version="1.0"?><Error><Code>InternalError</Code></Error>'


class ResultHost:
    """The result host, and a provider (toapis, apimart or bfl) whose results it serves."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.release = anyio.Event()
        self.stalled = anyio.Event()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        path = request.path
        if path.startswith(("/toapis/", "/apimart/", "/bfl/")):
            return self._api(request)
        fixed = {"/png": (PNG, "image/png"), "/jpeg": (JPEG, "image/jpeg"),
                 "/webp": (WEBP, "image/webp"), "/xml": (XML, "image/png"),
                 "/html": (b"<html>oops</html>", "text/html"), "/tiny": (PNG[:6], "image/png")}
        if path in fixed:
            body, ctype = fixed[path]
            return web.Response(body=body, content_type=ctype)
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]), text="no")
        if path.startswith("/redirect/"):
            # /redirect/<n>/<target...>: n more hops, then <target>
            _, _, hops, target = path.split("/", 3)
            n = int(hops)
            location = f"/redirect/{n - 1}/{target}" if n > 1 else (
                target if ":" in target.split("/", 1)[0] else "/" + target)
            if target.startswith("abs/"):
                location = self.url("/" + target[4:], host="localhost") if n <= 1 else location
            return web.Response(status=302, headers={"Location": location})
        if path == "/big":
            return await self._stream(request, 4 << 20, declared=request.query.get("declared") == "1")
        if path == "/partial":
            return self._partial(request)
        if path == "/stall":
            return await self._stall(request)
        return web.Response(status=404)

    def _api(self, request: web.Request) -> web.Response:
        provider = request.path.split("/")[1]
        image = self.url("/redirect/1/abs/png")  # through a redirect to another host name
        if request.method == "POST":
            if provider == "apimart":
                return web.json_response({"code": 200, "data": [{"task_id": "t1"}]})
            if provider == "bfl":
                return web.json_response(
                    {"id": "t1", "polling_url": self.url("/bfl/v1/get_result?id=t1")})
            return web.json_response({"id": "t1", "status": "queued"})
        if provider == "apimart":
            return web.json_response({"code": 200, "data": {"status": "completed",
                                      "result": {"images": [{"url": [image]}]}}})
        if provider == "bfl":
            return web.json_response({"id": "t1", "status": "Ready", "result": {"sample": image}})
        return web.json_response({"id": "t1", "status": "completed",
                                  "result": {"data": [{"url": image}]}})

    async def _stream(self, request: web.Request, size: int, *, declared: bool) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "image/png"
        if declared:
            resp.content_length = size
        else:
            resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            await resp.write(PNG)
            sent = len(PNG)
            while sent < size:
                await resp.write(bytes(65536))
                sent += 65536
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped reading, as it should
        return resp

    def _partial(self, request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n"
                b"Connection: close\r\n\r\n")
        transport.write(head + PNG + bytes(5000))
        transport.close()
        return web.Response()

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "image/png"
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(PNG + bytes(70_000))  # enough that the client starts a file
        self.stalled.set()
        await self.release.wait()
        return resp

    def image_requests(self) -> list[dict[str, str]]:
        return [headers for path, headers in self.seen if not path.startswith(("/toapis", "/apimart", "/bfl"))]


@pytest.fixture
async def host() -> AsyncIterator[ResultHost]:
    server = ResultHost()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def _session(provider: str = "toapis", **limits: Any) -> Session:
    # Quick retries: a 5xx download is tried again (a few times) before it fails.
    return Session(provider, api_key=KEY, base_url="http://127.0.0.1:9", poll_policy=FAST,
                   limits=Limits(**limits), retry_policy=RetryPolicy(base_delay=0.005, max_delay=0.01))


def _nothing_written(directory: Path) -> None:
    assert list(directory.iterdir()) == [], list(directory.iterdir())


# -- good images ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "suffix"),
                         [("/png", PNG, ".png"), ("/jpeg", JPEG, ".jpg"), ("/webp", WEBP, ".webp")])
async def test_an_image_is_written_whole_with_its_real_suffix(
    host: ResultHost, tmp_path: Path, path: str, body: bytes, suffix: str
) -> None:
    async with _session() as session:
        written = await session.download(GeneratedImage(host.url(path)), tmp_path / "out.img")
        data = await session.download(host.url(path))
    assert written == tmp_path / f"out{suffix}"
    assert written.read_bytes() == body
    assert data == body
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]


# -- the byte cap --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_the_byte_cap_stops_an_oversized_result(
    host: ResultHost, tmp_path: Path, declared: bool
) -> None:
    url = host.url(f"/big?declared={int(declared)}")
    with anyio.fail_after(10):
        async with _session(max_download_bytes=256 * 1024) as session:
            with pytest.raises(DownloadError, match="cap"):
                await session.download(url, tmp_path / "out.img")
            with pytest.raises(DownloadError, match="cap"):
                await session.download(url)
    _nothing_written(tmp_path)


@pytest.mark.anyio
async def test_the_byte_cap_is_inclusive(host: ResultHost, tmp_path: Path) -> None:
    async with _session(max_download_bytes=len(PNG)) as session:
        assert (await session.download(host.url("/png"))) == PNG
    async with _session(max_download_bytes=len(PNG) - 1) as session:
        with pytest.raises(DownloadError):
            await session.download(host.url("/png"), tmp_path / "out.img")
    _nothing_written(tmp_path)


# -- magic bytes ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/xml", "/html", "/tiny"])
async def test_bytes_that_are_not_an_image_are_refused(
    host: ResultHost, tmp_path: Path, path: str
) -> None:
    async with _session() as session:
        with pytest.raises(DownloadError, match="magic"):
            await session.download(host.url(path), tmp_path / "out.img")
        with pytest.raises(DownloadError, match="magic"):
            await session.download(host.url(path))
    _nothing_written(tmp_path)


# -- schemes and redirects -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://127.0.0.1/x.png", "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)", "/relative/x.png", "gopher://127.0.0.1:70/x",
])
async def test_only_http_urls_are_fetched(host: ResultHost, tmp_path: Path, url: str) -> None:
    async with _session() as session:
        with pytest.raises(DownloadError):
            await session.download(GeneratedImage(url), tmp_path / "out.img")
    assert host.seen == []
    _nothing_written(tmp_path)


@pytest.mark.anyio
@pytest.mark.parametrize("target", [
    "file:///etc/passwd", "ftp://127.0.0.1/x.png", "data:image/png;base64,iVBORw0KGgo=",
])
async def test_a_redirect_to_another_scheme_is_refused(
    host: ResultHost, tmp_path: Path, target: str
) -> None:
    async with _session() as session:
        with pytest.raises(DownloadError, match="only http"):
            await session.download(host.url(f"/redirect/1/{target}"), tmp_path / "out.img")
    _nothing_written(tmp_path)


@pytest.mark.anyio
async def test_redirects_are_followed_up_to_the_limit_and_checked_again(
    host: ResultHost, tmp_path: Path
) -> None:
    async with _session(max_redirects=3) as session:
        ok = await session.download(host.url("/redirect/3/png"), tmp_path / "ok.img")
        assert ok.read_bytes() == PNG
        with pytest.raises(DownloadError, match="redirects"):
            await session.download(host.url("/redirect/4/png"), tmp_path / "far.img")
        # The target of a redirect gets every check the first URL got.
        with pytest.raises(DownloadError, match="magic"):
            await session.download(host.url("/redirect/2/xml"), tmp_path / "xml.img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [403, 404, 410])
async def test_a_gone_result_is_result_expired(host: ResultHost, tmp_path: Path, status: int) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with _session() as session:
        with pytest.raises(ResultExpiredError, match="has expired"):
            await session.download(GeneratedImage(host.url(f"/status/{status}"), past), tmp_path / "a")
        with pytest.raises(ResultExpiredError, match="may have expired"):
            await session.download(host.url(f"/status/{status}"), tmp_path / "b")
        with pytest.raises(DownloadError):
            await session.download(host.url("/status/500"), tmp_path / "c")
    _nothing_written(tmp_path)


# -- the key never goes to a result host ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_the_key_is_never_sent_to_a_result_host(
    host: ResultHost, tmp_path: Path, provider: str
) -> None:
    session = Session(provider, api_key=KEY, base_url=host.url(f"/{provider}"), poll_policy=FAST)
    with anyio.fail_after(10):
        async with session:
            request = GenerationRequest(model="flux-kontext-pro", prompt="fox")
            outcomes = [o async for o in session.as_completed([request], download_to=tmp_path)]
            await session.download(host.url("/redirect/2/abs/png"), tmp_path / "direct.img")
    (outcome,) = outcomes
    assert outcome.ok, outcome.error
    assert outcome.files[0].read_bytes() == PNG
    # The API requests carried the key (so it was really in use)...
    api = [headers for path, headers in host.seen if path.startswith(f"/{provider}")]
    assert api
    assert all(KEY in " ".join(h.values()) for h in api)
    # ...the image requests, redirects included, never did.
    images = host.image_requests()
    assert len(images) == 5  # 2 hops for the outcome's image, 3 for the direct download
    for headers in images:
        names = {name.lower() for name in headers}
        assert not names & {"authorization", "x-key", "cookie", "proxy-authorization"}
        assert KEY not in " ".join(headers.values())


# -- atomic files --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_broken_transfer_leaves_no_file_and_keeps_an_earlier_one(
    host: ResultHost, tmp_path: Path
) -> None:
    earlier = tmp_path / "out.png"
    earlier.write_bytes(b"an earlier image")
    async with _session() as session:
        with pytest.raises(DownloadError):
            await session.download(host.url("/partial"), tmp_path / "out.img")
        with pytest.raises(DownloadError):
            await session.download(host.url("/xml"), tmp_path / "out.img")
    assert earlier.read_bytes() == b"an earlier image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.anyio
async def test_cancelling_a_download_mid_stream_leaves_no_part_file(
    host: ResultHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = anyio.Event()
    _signal_when_the_part_file_exists(monkeypatch, started)
    with anyio.fail_after(10):
        async with _session() as session:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.download, host.url("/stall"), tmp_path / "out.img")
                await started.wait()
                assert [p.name[:6] for p in tmp_path.iterdir()] == [".part-"]
                tg.cancel_scope.cancel()
            transport = session._net()
        assert transport.statistics().open_connections == 0
    _nothing_written(tmp_path)


def _signal_when_the_part_file_exists(monkeypatch: pytest.MonkeyPatch, event: anyio.Event) -> None:
    """Set ``event`` once the transport has created its temporary ``.part-*`` file (by wrapping
    the function that creates it), so the test cancels mid-stream without guessing a time."""
    if hasattr(transport_module, "_create_part_file"):
        real = transport_module._create_part_file

        def create(*args: Any, **kwargs: Any) -> Any:
            made = real(*args, **kwargs)
            event.set()
            return made

        monkeypatch.setattr(transport_module, "_create_part_file", create)
        return
    real_mkstemp = tempfile.mkstemp  # an earlier transport used tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        made = real_mkstemp(*args, **kwargs)
        event.set()
        return made

    monkeypatch.setattr(transport_module, "tempfile", types.SimpleNamespace(mkstemp=mkstemp),
                        raising=False)


@pytest.mark.anyio
async def test_a_stalled_result_host_fails_by_the_read_timeout(host: ResultHost, tmp_path: Path) -> None:
    async with _session(read_timeout=0.2) as session:
        with anyio.fail_after(1.5), pytest.raises(DownloadError):
            await session.download(host.url("/stall"), tmp_path / "out.img")
    _nothing_written(tmp_path)


# -- a paid image is worth another try -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("kind", "status"), [("status", 503), ("status", 500), ("drop", 503)])
async def test_a_download_is_retried_after_a_5xx_or_a_dropped_connection(kind: str, status: int) -> None:
    from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
    from flux_async.retry import RetryPolicy

    async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.01))) as emu:
        policy = RetryPolicy(base_delay=0.01, max_delay=0.02, max_attempts=4)
        async with Session("toapis", api_key=DEFAULT_API_KEY, base_url=emu.base_url("toapis"),
                           poll_policy=FAST, retry_policy=policy) as session:
            result = await session.generate(GenerationRequest(model="flux-kontext-pro", prompt="a fox"))
            emu.fail_next("download", kind, count=2, status=status)
            data = await session.download(result.images[0])
            assert data[:4] in (PNG[:4], JPEG[:4])
            assert emu.stats()["requests"]["download"] == 3  # two spoilt, then the image

            emu.fail_next("download", kind, count=10, status=status)
            with pytest.raises(DownloadError) as caught:
                await session.download(result.images[0])
            assert caught.value.retryable
            sent = emu.stats()["requests"]["download"] - 3
            if kind == "status":
                assert sent == 4  # the policy's attempts, no more
            else:  # aiohttp itself resends a GET once on a reused connection found closed
                assert 4 <= sent <= 8


@pytest.mark.anyio
async def test_an_expired_or_unsafe_download_is_not_retried() -> None:
    from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario

    async with (
        Emulator(Scenario(seed=1, duration=Duration.fixed(0.01))) as emu,
        Session("toapis", api_key=DEFAULT_API_KEY, base_url=emu.base_url("toapis"), poll_policy=FAST) as session,
    ):
        result = await session.generate(GenerationRequest(model="flux-kontext-pro", prompt="a fox"))
        for kind, error in (("expired", ResultExpiredError), ("wrong_magic", DownloadError)):
            before = emu.stats()["requests"]["download"]
            emu.fail_next("download", kind)
            with pytest.raises(error) as caught:
                await session.download(result.images[0])
            assert not caught.value.retryable
            assert emu.stats()["requests"]["download"] == before + 1
