"""Local images on their way into a request: read, checked, and uploaded once per session.

On the aggregators a path or bytes in ``images`` becomes a URL from the provider's upload API;
the same bytes are uploaded once per session however many requests use them (concurrent users
of the same bytes wait on the one upload). On BFL they are sent inline, so only read here. An
upload creates nothing paid, so it is retried on any transient failure.

It must not import the session, the scheduler, the batch machinery or aiohttp: it sees a
:class:`~flux_async._context.Context` and values.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import attrs

from . import catalog
from ._context import Context
from .errors import ConfigurationError, ValidationError
from .models import GenerationRequest, ImageInput

__all__ = ["Uploads"]


class _Upload:
    """One upload shared by every request that uses the same bytes."""

    __slots__ = ("_done", "_error", "_url")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._url: str | None = None
        self._error: BaseException | None = None

    def set(self, url: str) -> None:
        self._url = url
        self._done.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._done.set()

    async def get(self) -> str:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._url is not None
        return self._url


class Uploads:
    """A session's uploads, keyed by the SHA-256 of their bytes."""

    __slots__ = ("_ctx", "_uploads")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._uploads: dict[str, _Upload] = {}

    async def prepare_images(self, request: GenerationRequest) -> GenerationRequest:
        """The request with every local image uploaded (aggregators) or read (BFL)."""
        if not request.images:
            return request
        images: list[ImageInput] = []
        changed = False
        for index, image in enumerate(request.images):
            kind = catalog.classify_image(image, index=index)
            if kind == "url":
                images.append(image)
                continue
            changed = True
            data = image if isinstance(image, bytes) else await anyio.Path(os.fspath(image)).read_bytes()
            if self._ctx.provider == "bfl":
                images.append(data)
            else:
                images.append(await self._upload_bytes(data, _filename(image)))
        return attrs.evolve(request, images=tuple(images)) if changed else request

    async def upload(self, source: str | os.PathLike[str] | bytes) -> str:
        """Check and upload a local image (path or bytes); return its URL (aggregators only)."""
        provider = self._ctx.provider
        if provider == "bfl":
            raise ConfigurationError("BFL has no upload API: pass the bytes or path in `images` and they are sent inline")
        catalog.check_upload(provider, source)  # a path's file looked at before it is read
        data = source if isinstance(source, bytes) else await anyio.Path(os.fspath(source)).read_bytes()
        # A request's images were checked by catalog.validate; a direct upload is checked here.
        limit = catalog.max_upload_bytes(provider)
        if len(data) > limit:
            raise ValidationError("images", f"<{len(data)} bytes>", f"at most {limit} bytes", reason="image is too large")
        if catalog.sniff_image_type(data) is None:
            raise ValidationError("images", f"<{len(data)} bytes>", "JPEG, PNG, WebP or GIF", reason="not a supported image")
        return await self._upload_bytes(data, _filename(source))

    async def _upload_bytes(self, data: bytes, filename: str) -> str:
        """Upload checked bytes once per session (``catalog.validate`` or :meth:`upload` checked them)."""
        ctx = self._ctx
        content_type = catalog.sniff_image_type(data) or "application/octet-stream"
        digest = hashlib.sha256(data).hexdigest()
        entry = self._uploads.get(digest)
        if entry is not None:
            ctx.counts["upload_cache_hits"] += 1
            return await entry.get()
        entry = _Upload()
        self._uploads[digest] = entry

        async def send() -> str:
            response = await ctx.net().send(request)
            ctx.counts["uploads"] += 1
            return ctx.codec.parse_upload(response)

        try:
            request = ctx.codec.build_upload(data, filename=filename, content_type=content_type)
            url = await ctx.idempotent(send)
        except BaseException as exc:
            del self._uploads[digest]
            entry.fail(exc)
            raise
        entry.set(url)
        return url


def _filename(source: ImageInput) -> str:
    if isinstance(source, bytes):
        return "image"
    return Path(os.fspath(source)).name or "image"
