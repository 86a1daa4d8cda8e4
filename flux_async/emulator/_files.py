"""The files the emulator serves: result images at expiring URLs, and the images clients upload.

Owns :class:`UploadStore` (uploaded bytes, bounded, oldest dropped first), :func:`sniff` and
:class:`Files` (the ``/files/...`` handlers, with the download faults: expiry, oversized and
chunked bodies, wrong magic, an image cut short, a redirect to another scheme); a BFL result
URL whose signature does not match is refused (403) as BFL's delivery host refuses it. Receiving an upload is each
provider surface's; serving it back is here. Imports aiohttp, the standard library and the
emulator's own modules only: never the client library's codecs, session, transport or
scheduler.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import OrderedDict

from aiohttp import web

from . import _wire as wire
from ._core import Core
from ._images import ImageCache
from ._respond import HTML_PAGE, Responder
from ._scenario import PROVIDERS
from ._task import DONE, OK

__all__ = ["Files", "UploadStore", "sniff"]

_NOT_AN_IMAGE = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code>'
    b"<Message>The server encountered an internal error.</Message></Error>"
)
# What storage services answer for an expired or missing object, by the status a scenario picks.
_EXPIRED_BODIES = {
    410: (b"Gone: this URL has expired", "text/plain"),
    403: (
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
        b"<Message>Signed expiry time has expired</Message></Error>",
        "application/xml",
    ),
    404: (
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
        b"<Message>The specified blob does not exist.</Message></Error>",
        "application/xml",
    ),
}
#: What a signed-URL store answers when the signature does not match the URL.
_BAD_SIGNATURE = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
    b"<Message>Server failed to authenticate the request. Make sure the value of the "
    b"signature is formed correctly.</Message></Error>"
)
_UPLOAD_STORE_BYTES = 256 * 1024 * 1024
_ZEROS = bytes(65536)


def sniff(data: bytes) -> tuple[str, str] | None:
    """(mime type, extension) of an accepted upload, from its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif", "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


class UploadStore:
    """Uploaded images by file name, shared by every provider; kept across resets."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, tuple[bytes, str, str]] = OrderedDict()
        self._bytes = 0
        self._counter = 0

    def new_id(self, seed: int, epoch: int) -> str:
        """A fresh upload id, deterministic for the seed, the reset epoch and the count."""
        self._counter += 1
        return "upload_" + hashlib.blake2b(
            repr((seed, epoch, self._counter)).encode(), digest_size=6
        ).hexdigest()

    def put(self, name: str, data: bytes, mime: str, provider: str) -> None:
        """Keep ``data`` under ``name``; the oldest files go once the store is over budget."""
        self.files[name] = (data, mime, provider)
        self._bytes += len(data)
        while self._bytes > _UPLOAD_STORE_BYTES and len(self.files) > 1:
            _, (old, _, _) = self.files.popitem(last=False)
            self._bytes -= len(old)


def _signed(request: web.Request, task_id: str, index: int) -> bool:
    """Whether a BFL result URL carries the signature the emulator gave it."""
    expires = request.query.get("se", "")
    given = request.query.get("sig", "")
    if not expires.isdigit() or not given:
        return False
    return hmac.compare_digest(given, wire.signature(task_id, index, int(expires)))


class Files(Responder):
    """The ``/files/...`` handlers: result images and uploaded files."""

    def __init__(self, core: Core, images: ImageCache, uploads: UploadStore) -> None:
        super().__init__(core)
        self.images = images
        self.uploads = uploads

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the file routes."""
        router.add_get("/files/uploads/{name}", self.uploaded_file)
        router.add_get("/files/{provider}/{id}/{name}", self.download)

    async def uploaded_file(self, request: web.Request) -> web.Response:
        """An uploaded file, as long as the store keeps it."""
        found = self.uploads.files.get(request.match_info["name"])
        if found is None:
            self.core.requests["other"] += 1
            return web.Response(status=404, text="Not Found")
        data, mime, provider = found
        self.core.count(provider, "other", 200)
        return web.Response(body=data, content_type=mime)

    def _download_404(self, provider: str) -> web.Response:
        self.core.count(provider, "download", 404)
        body, ctype = _EXPIRED_BODIES[404]
        return web.Response(status=404, body=body, content_type=ctype)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """A result image, until its URL expires (or the fault this request gets)."""
        core = self.core
        provider = request.match_info["provider"]
        if provider not in PROVIDERS:
            core.requests["other"] += 1
            return web.Response(status=404, text="Not Found")
        sc = core.plans[provider]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        task = core.tasks.get(request.match_info["id"])
        index_text, _, ext = request.match_info["name"].partition(".")
        if (
            task is None
            or task.provider != provider
            or ext != task.fmt
            or not index_text.isdigit()
            or int(index_text) >= task.n
        ):
            return self._download_404(provider)
        index = int(index_text)
        if provider == "bfl" and not _signed(request, task.id, index):
            self.core.count(provider, "download", 403)
            return web.Response(status=403, body=_BAD_SIGNATURE, content_type="application/xml")
        task.downloads += 1
        now = core.clock()
        phase, _ = task.phase(now, sc.queue_fraction)
        if phase != DONE or task.outcome != OK:
            return self._download_404(provider)
        fault = core.faults.take("download", provider)
        kind = fault.kind if fault is not None else None
        if kind == "expired" or now >= task.end + sc.url_ttl.get(provider, 86400.0):
            status = sc.url_expired_status
            core.count(provider, "download", status)
            body, ctype = _EXPIRED_BODIES[status]
            return web.Response(status=status, body=body, content_type=ctype)
        data = self.images.get(task.prompt, task.ratio, task.fmt, index)
        ctype = "image/png" if task.fmt == "png" else "image/jpeg"
        if fault is None:
            core.count(provider, "download", 200)
            return web.Response(body=data, content_type=ctype)
        if kind == "status":
            core.count(provider, "download", fault.status)
            return web.Response(status=fault.status, text="Service Unavailable")
        if kind == "drop":
            return self._drop(request, provider, "download", "other")
        if kind == "truncated":
            return self._truncated(request, provider, "download", data, ctype)
        if kind == "html":
            core.count(provider, "download", 200)
            return web.Response(body=HTML_PAGE, content_type="text/html")
        if kind == "wrong_magic":
            core.count(provider, "download", 200)
            return web.Response(body=_NOT_AN_IMAGE, content_type=ctype)
        if kind == "truncated_image":
            # A whole HTTP answer (its Content-Length matches) carrying half an image: what a
            # storage service hands out for an object whose upload was cut short.
            core.count(provider, "download", 200)
            return web.Response(body=data[: len(data) // 2], content_type=ctype)
        if kind == "redirect_scheme":
            core.count(provider, "download", 302)
            return web.Response(status=302, headers={"Location": "file:///etc/passwd"})
        if kind in ("oversized", "oversized_chunked"):
            core.count(provider, "download", 200)
            return await self._oversized(request, data, ctype, sc.oversized_bytes,
                                         chunked=kind == "oversized_chunked")
        # slow
        await asyncio.sleep(fault.delay if fault.delay is not None else sc.slow_delay)
        core.count(provider, "download", 200)
        return web.Response(body=data, content_type=ctype)

    @staticmethod
    async def _oversized(
        request: web.Request, head: bytes, ctype: str, size: int, *, chunked: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_type = ctype
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = max(size, len(head))
        try:
            await resp.prepare(request)
            await resp.write(head)
            remaining = size - len(head)
            while remaining > 0:
                n = min(remaining, len(_ZEROS))
                await resp.write(_ZEROS if n == len(_ZEROS) else _ZEROS[:n])
                remaining -= n
            await resp.write_eof()
        except ConnectionError:
            pass  # the client gave up, as a careful client should
        return resp
