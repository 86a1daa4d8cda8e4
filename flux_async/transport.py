"""The I/O edge: sends :class:`HttpRequest` values over aiohttp and streams result downloads.

This is the only client-side module that imports aiohttp. It owns the ``ClientSession`` (one per
``Session``, or one the caller passes in and keeps), timeouts, the one place where aiohttp's
exceptions become :class:`~flux_async.errors.TransportError`, and the download safety checks
(scheme, result hosts, redirects, byte cap, a whole image, atomic files). It must not import the
session, the scheduler or the codecs.

Downloads go through a connection pool of their own, even when the caller supplied the aiohttp
session for API requests: its resolver refuses a result host whose name resolves to an address
the :class:`~flux_async._hosts.HostPolicy` refuses, before any connection to it is made.

With the ``flux_async.transport`` logger at DEBUG, every request is logged once it ends: method,
URL (credentials and query values redacted: a signed result URL carries its signature there),
status or failure, time taken; a finished download is logged at INFO. Keys travel only in
headers, which are never logged. With DEBUG off a request costs one level check and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import attrs
import yarl
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict, CIMultiDictProxy

from ._hosts import HostPolicy, refuse_url
from ._http import FixedHeaders, HttpRequest, HttpResponse, redact_url
from ._image_check import HEAD_BYTES, TAIL_BYTES, image_defect, sniff_image_type
from .errors import DownloadError, ResultExpiredError, TransportError, TransportTimeout

__all__ = [
    "AiohttpTransport",
    "DownloadLimits",
    "Transport",
    "TransportStatistics",
    "sniff_image_type",
]

#: Largest API (JSON) response body read into memory; anything larger is a protocol fault.
MAX_API_BODY = 16 * 1024 * 1024

#: Distinct FixedHeaders whose aiohttp form is kept (a codec has one).
_FIXED_KEPT = 8

#: Bytes asked of the socket per read on an API connection. asyncio reads into a fresh buffer of
#: 256 KiB and shrinks it to what came; the C allocator (glibc's) maps a buffer that large from
#: the system and unmaps it again unless the process freed a larger one before, so a read of a
#: small answer can cost a map, a remap and an unmap: 15 µs a read where it was measured, 2 µs
#: with 64 KiB. API answers are small: their connections read 64 KiB at a time. (Downloads keep
#: asyncio's size: their bodies are large.)
API_READ_SIZE = 64 * 1024

_log = logging.getLogger("flux_async.transport")
_DEBUG = logging.DEBUG

@attrs.frozen(kw_only=True)
class DownloadLimits:
    """Safety limits applied to every result download."""

    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    timeout: float = 120.0


@attrs.frozen(kw_only=True)
class TransportStatistics:
    """Counters of one transport."""

    requests_sent: int
    transport_errors: int
    downloads: int
    bytes_downloaded: int
    open_connections: int


class Transport(Protocol):
    """What the session needs from the network: one ``send``, one ``download`` and ``aclose``.

    Tests can hand the session an in-memory object with these methods.
    """

    async def send(self, request: HttpRequest, *, time_limit: float | None = None) -> HttpResponse:
        """Send ``request`` and return the whole response; raise TransportError on failure."""
        ...

    async def download(
        self, url: str, dest: Path | None, *, limits: DownloadLimits, expires_at: datetime | None = None
    ) -> tuple[bytes | Path, str]:
        """Fetch an image; return (bytes or the written path, extension)."""
        ...

    async def aclose(self) -> None:
        """Release connections (a caller-supplied aiohttp session is left open)."""
        ...

    def statistics(self) -> TransportStatistics:
        """Counters."""
        ...


async def _read_bounded(resp: aiohttp.ClientResponse, method: str, url: str) -> bytes:
    """A body of unknown length, read to its end but never past ``MAX_API_BODY``."""
    # read(n) returns what has arrived so far: keep reading until the end, so that a body split
    # over several chunks is never cut short.
    buf = bytearray()
    while chunk := await resp.content.read(MAX_API_BODY + 1 - len(buf)):
        buf += chunk
        if len(buf) > MAX_API_BODY:
            raise TransportError(f"{method} {_path(url)}: response is too large", request_sent=True)
    return bytes(buf)


def _map_exception(exc: BaseException, what: str) -> TransportError:
    """The one translation of aiohttp/OS failures into the library's transport errors.

    ``request_sent`` tells whether the server may have received the request: only a failure to
    connect at all proves it did not.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportTimeout(f"{what}: timed out while connecting", request_sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(f"{what}: could not connect ({exc.os_error.__class__.__name__})", request_sent=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError(f"{what}: invalid URL", request_sent=False)
    if isinstance(exc, (aiohttp.SocketTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return TransportTimeout(f"{what}: timed out waiting for the response", request_sent=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError(f"{what}: server closed the connection without a response", request_sent=True)
    return TransportError(f"{what}: {exc.__class__.__name__}: {exc}", request_sent=True)


class _HostRefused(OSError):
    """Raised by the download resolver: aiohttp hands it back inside its connector error."""


class _GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, refusing a name that resolves to an address ``policy``
    refuses (any one of them: a rebinding name gets no connection at all)."""

    def __init__(self, policy: HostPolicy) -> None:
        self._policy = policy
        self._inner: AbstractResolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            reason = self._policy.refuse_address(host, entry["host"])
            if reason is not None:
                raise _HostRefused(reason)
        return found

    async def close(self) -> None:
        await self._inner.close()


class _Turn:
    """A place in the connection queue kept by a callback instead of a waiting task."""

    __slots__ = ("turn",)

    def __init__(self, turn: Callable[[], bool]) -> None:
        self.turn = turn


class AiohttpTransport:
    """The aiohttp transport.

    ``base_url`` is joined to relative request paths; absolute URLs (BFL's ``polling_url``) are
    used verbatim. Credentials travel only in the headers a codec put on an API request: the
    aiohttp session itself carries none, so a download never sends a key to a result host.
    ``result_hosts`` says where results may be fetched from (default: the policy of
    ``base_url``, see :meth:`HostPolicy.for_base_url`); every URL, every redirect hop and every
    address a result host's name resolves to is checked against it.
    """

    def __init__(
        self,
        *,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 100,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        result_hosts: HostPolicy | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._hosts = result_hosts if result_hosts is not None else HostPolicy.for_base_url(base_url)
        self._downloader: aiohttp.ClientSession | None = None
        self._owned = session is None
        self._session = session
        self._max_connections = max_connections
        # API answers are small: one deadline per request (``read_timeout``, connecting included)
        # costs one timer, where a per-read timeout would re-arm a timer on every chunk received.
        self._timeout = aiohttp.ClientTimeout(
            total=read_timeout, sock_connect=connect_timeout, connect=connect_timeout
        )
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._small_reads = session is None  # see API_READ_SIZE (not a caller's own connections)
        # API requests on the owned pool wait for a free connection here, in order, rather than
        # in aiohttp's pool, whose wait costs about as much again as the request it delays.
        # (A caller's own aiohttp session keeps its own pool's limits: nothing waits here.)
        self._free = max_connections
        # Waiting requests (their futures) and, in turn with them, places kept by the poll
        # scheduler (see queue_turn).
        self._queue: deque[asyncio.Future[None] | _Turn] = deque()
        self._fixed: dict[int, tuple[Mapping[str, str], CIMultiDictProxy[str]]] = {}
        self._requests = 0
        self._errors = 0
        self._downloads = 0
        self._bytes = 0

    def __repr__(self) -> str:
        return f"AiohttpTransport(base_url={self._base_url!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
        return self._session

    def _download_client(self) -> aiohttp.ClientSession:
        if self._downloader is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, resolver=_GuardedResolver(self._hosts)
            )
            self._downloader = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
        return self._downloader

    async def send(
        self, request: HttpRequest, *, time_limit: float | None = None, held: bool = False
    ) -> HttpResponse:
        """Send one API request and read its whole (bounded) body. ``held``: a connection of
        the pool was taken for it already (:meth:`take_connection`, or a turn of
        :meth:`queue_turn`); it is let go when the request ends, like any other."""
        url = request.url
        if url.startswith("/"):  # a path (an absolute URL, BFL's polling_url, is used verbatim)
            url = self._base_url + url
        headers = request.headers
        if headers.__class__ is FixedHeaders:
            # A codec's own headers, the same object on each of its requests: aiohttp takes
            # its read-only multidict as it is, where it would build one from any other
            # mapping on every request.
            known = self._fixed.get(id(headers))
            if known is None or known[0] is not headers:
                known = self._fix(headers)
            headers = known[1]
        # The common request (a JSON body or none, the session's timeout) is made without a
        # keyword dict of its own; an upload or a time limit builds one.
        kwargs: dict[str, object] | None = None
        if time_limit is not None or request.form is not None:
            kwargs = {"headers": headers, "allow_redirects": False}
            if time_limit is not None:
                kwargs["timeout"] = aiohttp.ClientTimeout(
                    total=time_limit, sock_connect=min(time_limit, self._connect_timeout)
                )
            if request.json is not None:
                kwargs["json"] = request.json
            elif request.form is not None:
                form = aiohttp.FormData()
                for field in request.form:
                    form.add_field(field.name, field.value, filename=field.filename, content_type=field.content_type)
                kwargs["data"] = form
        self._requests += 1
        client = self._session or self._client()
        gated = self._owned
        if gated and not held:
            if self._free:
                self._free -= 1
            else:
                await self._connection()
        debug = _log.isEnabledFor(_DEBUG)
        started = time.monotonic() if debug else 0.0
        try:
            if kwargs is None:
                made = client.request(request.method, url, headers=headers, allow_redirects=False, json=request.json)
            else:
                made = client.request(request.method, url, **kwargs)  # type: ignore[arg-type]
            async with made as resp:
                if self._small_reads:
                    self._read_small(resp)
                received = resp.headers
                declared = received.get(hdrs.CONTENT_LENGTH)  # (aiohttp checked it is a number)
                length = None if declared is None else int(declared)
                if length is not None and length > MAX_API_BODY:
                    raise TransportError(f"{request.method} {_path(url)}: response of {length} bytes is too large", request_sent=True)
                if length is not None and received.get(hdrs.CONTENT_ENCODING, "identity") == "identity":
                    # A declared length of an uncompressed body bounds it: read it whole in one
                    # call. (A compressed body can unpack to far more than its length says.)
                    body = await resp.read()
                else:
                    body = await _read_bounded(resp, request.method, url)
                if debug:
                    _log.debug(
                        "%s %s -> %d (%.0f ms, %d bytes)", request.method, redact_url(url),
                        resp.status, (time.monotonic() - started) * 1000, len(body),
                    )
                return HttpResponse(
                    status=resp.status,
                    # aiohttp's read-only multidict, wrapped rather than copied: most responses
                    # are parsed without a look at their headers.
                    headers=MappingProxyType(received),
                    body=body,
                    arrived=time.time(),
                )
        except TransportError as exc:
            self._errors += 1
            if debug:
                _log_failure(request.method, url, started, exc)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._errors += 1
            mapped = _map_exception(exc, f"{request.method} {_path(url)}")
            if debug:
                _log_failure(request.method, url, started, mapped)
            raise mapped from exc
        finally:
            if gated:
                self._hand_on()

    def _read_small(self, resp: aiohttp.ClientResponse) -> None:
        """Later reads of ``resp``'s connection ask for :data:`API_READ_SIZE` bytes (the start
        of this answer was read already). Where the connection's transport has no such setting
        (a loop other than asyncio's own), nothing is changed, and it is not tried again."""
        try:
            sock = resp._protocol.transport  # type: ignore[union-attr]
            if sock.max_size > API_READ_SIZE:  # type: ignore[union-attr]
                sock.max_size = API_READ_SIZE  # type: ignore[union-attr]
        except AttributeError:
            self._small_reads = False

    def _fix(self, headers: Mapping[str, str]) -> tuple[Mapping[str, str], CIMultiDictProxy[str]]:
        """aiohttp's form of a :class:`FixedHeaders`, kept (with the headers, so that their
        id is not reused) for the few a session's codecs have."""
        if len(self._fixed) >= _FIXED_KEPT:
            self._fixed.clear()
        known = self._fixed[id(headers)] = (headers, CIMultiDictProxy(CIMultiDict(headers)))
        return known

    async def _connection(self) -> None:
        """Wait for a free connection of the pool (FIFO); the time waited here is not part of
        the request's timeout, which bounds each request holding a connection."""
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_on()  # handed a connection just as it was cancelled: pass it on
            raise

    # -- the pool's queue, shared with the poll scheduler ------------------------------------------

    @property
    def gated(self) -> bool:
        """True when API requests wait for a connection of this transport's own pool here (not
        for a caller's aiohttp session, whose pool has its own limits)."""
        return self._owned

    def take_connection(self) -> bool:
        """Take a free connection of the pool for a request sent later with ``held=True``;
        False when none is free (or the pool is not :attr:`gated`)."""
        if self._owned and self._free:
            self._free -= 1
            return True
        return False

    def queue_turn(self, turn: Callable[[], bool]) -> None:
        """Keep a place in the pool's queue without a waiting task: when a connection comes to
        it, ``turn()`` is called at once (in the task that let the connection go) and returns
        True when it took the connection (for a request sent later with ``held=True``), False
        to pass it on. It must not raise or block; one that raises passes it on."""
        self._queue.append(_Turn(turn))

    def let_go(self) -> None:
        """Give back a connection taken for a request that will not be sent."""
        self._hand_on()

    def _hand_on(self) -> None:
        """A request let go of its connection: the longest waiter takes it (a request, or a
        turn that wants it), else it is free."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter.__class__ is _Turn:
                try:
                    took = waiter.turn()
                except Exception:  # never into the request that let the connection go
                    _log.exception("a turn in the connection queue failed")
                    took = False
                if took:
                    return
            elif not waiter.done():  # type: ignore[union-attr]  # a cancelled waiter is skipped
                waiter.set_result(None)  # type: ignore[union-attr]
                return
        self._free += 1

    async def download(
        self, url: str, dest: Path | None, *, limits: DownloadLimits, expires_at: datetime | None = None
    ) -> tuple[bytes | Path, str]:
        """Fetch a result image with every safety check.

        Only http(s) URLs on hosts the result-host policy allows, at most
        ``limits.max_redirects`` redirects (each checked again), at most ``limits.max_bytes``
        bytes, and a whole PNG, JPEG or WebP image (its first and last bytes checked). With
        ``dest`` the bytes stream into a temporary file beside it that is renamed into place
        only when complete (``dest``'s suffix is replaced by the detected type's); otherwise
        they are returned.
        """
        current = url
        # The session's read timeout applies to every read of a download too: a result host
        # that stops sending must not hold a job for the whole of limits.timeout.
        timeout = aiohttp.ClientTimeout(
            total=limits.timeout, sock_connect=self._connect_timeout, sock_read=self._read_timeout
        )
        debug = _log.isEnabledFor(_DEBUG)
        for _hop in range(limits.max_redirects + 1):
            _check_scheme(current)
            self._check_host(current)
            self._requests += 1
            started = time.monotonic() if debug else 0.0
            try:
                async with self._download_client().get(current, allow_redirects=False, timeout=timeout) as resp:
                    if debug:
                        _log.debug(
                            "GET %s -> %d (%.0f ms to the headers)", redact_url(current),
                            resp.status, (time.monotonic() - started) * 1000,
                        )
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            raise DownloadError("redirect without a Location header", url=_path(current))
                        current = urljoin(current, location)
                        continue
                    if resp.status in (403, 404, 410):
                        expired = expires_at is not None and expires_at <= datetime.now(UTC)
                        reason = "has expired" if expired else "is no longer available (it may have expired)"
                        raise ResultExpiredError(f"result URL {reason}: HTTP {resp.status}", url=_path(current))
                    if resp.status != 200:
                        raise DownloadError(
                            f"result download failed: HTTP {resp.status}",
                            url=_path(current),
                            retryable=resp.status >= 500 or resp.status == 429,
                        )
                    if resp.content_length is not None and resp.content_length > limits.max_bytes:
                        raise DownloadError(
                            f"result is {resp.content_length} bytes, over the {limits.max_bytes}-byte cap",
                            url=_path(current),
                        )
                    return await self._stream(resp, dest, limits, current)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._errors += 1
                refused = getattr(exc, "os_error", None)
                if isinstance(refused, _HostRefused):
                    raise _refusal(str(refused), current) from None
                mapped = _map_exception(exc, "download")
                if debug:
                    _log_failure("GET", current, started, mapped)
                # The network failed (worth another try); the local disk did not (it would again).
                network = not isinstance(exc, OSError) or isinstance(exc, ConnectionError)
                raise DownloadError(str(mapped), url=_path(current), retryable=network) from exc
        raise DownloadError(f"more than {limits.max_redirects} redirects", url=_path(url))

    async def _stream(
        self, resp: aiohttp.ClientResponse, dest: Path | None, limits: DownloadLimits, url: str
    ) -> tuple[bytes | Path, str]:
        head = b""
        first = b""  # the first HEAD_BYTES, kept for the completeness check
        tail = b""  # the last TAIL_BYTES so far: the file itself is never held whole
        ext: str | None = None
        chunks: list[bytes] = []
        size = 0
        tmp_fd: int | None = None
        tmp_path: str | None = None
        try:
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise DownloadError(f"result exceeds the {limits.max_bytes}-byte cap", url=_path(url))
                tail = chunk[-TAIL_BYTES:] if len(chunk) >= TAIL_BYTES else (tail + chunk)[-TAIL_BYTES:]
                if ext is None:
                    head += chunk
                    if len(head) < HEAD_BYTES:
                        continue
                    ext = _require_image(head, url)
                    first = head[:HEAD_BYTES]
                    chunk, head = head, b""
                if dest is None:
                    chunks.append(chunk)
                else:
                    if tmp_fd is None:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        tmp_fd, tmp_path = _create_part_file(dest.parent)
                    os.write(tmp_fd, chunk)
            if ext is None:
                ext = _require_image(head, url)
                first = head
                chunks.append(head)
                if dest is not None:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp_fd, tmp_path = _create_part_file(dest.parent)
                    os.write(tmp_fd, head)
            defect = image_defect(ext, first, tail, size)
            if defect is not None:
                # Checked before the file is renamed into place: the finally below removes it.
                raise DownloadError(
                    f"result image is incomplete or damaged: {defect.reason}",
                    url=_path(url),
                    retryable=defect.truncated,  # a body cut short in transit may come whole
                )
            self._downloads += 1
            self._bytes += size
            if dest is None:
                _log.info("downloaded %s: %d bytes of %s", redact_url(url), size, ext)
                return b"".join(chunks), ext
            assert tmp_fd is not None
            assert tmp_path is not None
            os.close(tmp_fd)
            tmp_fd = None
            final = dest.with_suffix("." + ext)
            os.replace(tmp_path, final)
            tmp_path = None
            _log.info("downloaded %s to %s (%d bytes)", redact_url(url), final, size)
            return final, ext
        finally:
            if tmp_fd is not None:
                os.close(tmp_fd)
            if tmp_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_path)

    def _check_host(self, url: str) -> None:
        """Refuse a URL whose host is an address literal the policy refuses, as this module's
        URL parser reads it and as aiohttp will (full-width digits, say, become ASCII there)."""
        reason = refuse_url(url, self._hosts)
        if reason is None:
            try:
                host = yarl.URL(url).host
            except (ValueError, TypeError):
                host = None
            if host:
                reason = self._hosts.refuse_host(host)
        if reason is not None:
            raise _refusal(reason, url)

    async def aclose(self) -> None:
        """Close the aiohttp session if this transport created it, and the download pool."""
        downloader, self._downloader = self._downloader, None
        if downloader is not None:
            await downloader.close()
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    def statistics(self) -> TransportStatistics:
        """Counters, including the connections the pool still holds."""
        open_connections = 0
        for client in (self._session, self._downloader):
            if client is not None and not client.closed and client.connector is not None:
                # aiohttp exposes no public count of pooled connections; these two attributes
                # are its idle pool and in-use set.
                conns = getattr(client.connector, "_conns", {})
                acquired: set[object] = getattr(client.connector, "_acquired", set())
                open_connections += sum(len(v) for v in conns.values()) + len(acquired)
        return TransportStatistics(
            requests_sent=self._requests,
            transport_errors=self._errors,
            downloads=self._downloads,
            bytes_downloaded=self._bytes,
            open_connections=open_connections,
        )


def _path(url: str) -> str:
    """A URL without its query string (signed URLs carry credentials in the query) or user info."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _log_failure(method: str, url: str, started: float, error: BaseException) -> None:
    _log.debug(
        "%s %s failed after %.0f ms: %s", method, redact_url(url),
        (time.monotonic() - started) * 1000, error,
    )


def _create_part_file(directory: Path) -> tuple[int, str]:
    """A new, empty ``.part-*`` file beside the destination.

    Created with mode 0o666 filtered by the umask, like any file the user writes, so the image
    it becomes is readable as usual (a private temporary file would stay 0600 after the rename).
    """
    while True:
        path = os.path.join(directory, f".part-{secrets.token_hex(8)}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to fetch a {scheme or 'scheme-less'} URL: only http(s) is allowed", url=None)


def _refusal(reason: str, url: str) -> DownloadError:
    return DownloadError(
        f"refusing to fetch a result from {reason}: results are fetched from public addresses "
        "only (Limits.allow_private_result_hosts=True allows others)",
        url=_path(url),
    )


def _require_image(head: bytes, url: str) -> str:
    ext = sniff_image_type(head)
    if ext is None:
        raise DownloadError("result is not a PNG, JPEG or WebP image (magic bytes)", url=_path(url))
    return ext
