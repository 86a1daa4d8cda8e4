"""What the three provider surfaces share: the submit flow, the end of a poll, the upload flow.

Owns :class:`Surface`, the base of the toapis, apimart and BFL surfaces. A subclass names its
provider, registers its routes, finds the task a poll asks for, and supplies the few steps
that differ (parsing a submit, the submit reply, upload replies and errors); the flows around
those steps are written once, here. Imports aiohttp, the standard library and the emulator's
own modules only: never the client library's codecs, session, transport or scheduler.

The aggregators register :meth:`Surface.submit` and :meth:`Surface.upload` as handlers
directly, and an answer without a fault skips the fault delivery, so no request makes more
calls than when each provider's handlers were written out in full: this is a benchmark's hot
path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import ClassVar

from aiohttp import BodyPartReader, web

from . import _wire as wire
from ._core import Core
from ._files import UploadStore, sniff
from ._respond import Responder
from ._scenario import Scenario
from ._task import Task
from ._validate import BflValidationError, Spec, WireError

__all__ = ["Surface"]

#: How a provider renders a task for a poll: ``(task, now, scenario, origin) -> body``.
Render = Callable[[Task, float, Scenario, str], bytes]


class Surface(Responder):
    """One provider's HTTP surface over the shared core and upload store."""

    #: The provider this surface speaks for.
    provider: ClassVar[str]
    #: Path prefixes under which any other path gets this provider's 404.
    prefixes: ClassVar[tuple[str, ...]]
    #: Whether a prompt holding a blocked term is refused at submit (the aggregators' 422)
    #: rather than accepted and moderated later (BFL).
    refuses_blocked_prompts: ClassVar[bool] = True
    #: The largest upload accepted, in bytes (0: the provider has no upload endpoint).
    upload_limit: ClassVar[int] = 0

    def __init__(self, core: Core, uploads: UploadStore) -> None:
        super().__init__(core)
        self.uploads = uploads

    # -- what a provider supplies --------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register this provider's endpoints (not its catch-all 404, see :attr:`prefixes`)."""
        raise NotImplementedError

    def parse(self, body: object, path_model: str | None) -> Spec:
        """Validate a submit's decoded JSON body (``path_model``: the model named in the path)."""
        raise NotImplementedError

    def invalid_json(self, exc: ValueError) -> Exception:
        """The error a submit whose body is not JSON gets."""
        return WireError(400, "invalid_json", f"request body is not valid JSON: {exc}")

    def submitted(self, request: web.Request, task: Task, sc: Scenario) -> bytes:
        """The reply to an accepted submit."""
        raise NotImplementedError

    def upload_error(self, status: int, message: str) -> web.Response:
        """A refused upload."""
        return self._error(self.provider, "upload", status, message)

    def uploaded(
        self, upload_id: str, name: str, url: str, mime: str, size: int, filename: str | None
    ) -> dict[str, object]:
        """The reply to an accepted upload."""
        raise NotImplementedError

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path under this provider's prefixes."""
        return self._error(self.provider, "other", 404, f"no route for {request.method} "
                           f"{request.path}")

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, request: web.Request, path_model: str | None = None) -> web.Response:
        """Authenticate, validate, apply the limits and faults, then create the task."""
        provider = self.provider
        core = self.core
        sc = core.plans[provider]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, provider, "submit", sc)
        if denied is not None:
            return denied
        raw = await request.read()
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise self.invalid_json(exc) from None
            spec = self.parse(body, path_model)
        except WireError as err:
            return self._error(provider, "submit", err.status, err.message, code=err.code,
                               param=err.param)
        except BflValidationError as err:
            return self._send(provider, "submit", 422, wire.dumps({"detail": err.detail}))
        moderated = False
        if sc.blocked_terms:
            lowered = spec.prompt.lower()
            moderated = any(term.lower() in lowered for term in sc.blocked_terms)
            if moderated and self.refuses_blocked_prompts:
                return self._error(provider, "submit", 422,
                                   "Your prompt was rejected by the safety system",
                                   code="content_policy_violation", param="prompt")
        wait = core.cap_check(provider, spec.model, sc, core.clock())
        if wait is not None:
            core.rate_limited["cap"] += 1
            message = (
                "You have reached the maximum number of active tasks; "
                "wait for some to finish before submitting more"
            )
            return self._error(provider, "submit", 429, message,
                               headers=self._retry_after(sc, wait))
        # Faults apply only to submits the provider would otherwise accept.
        fault = core.faults.take("submit", provider)
        if fault is not None:
            if fault.kind == "status":
                return self._fault_status(provider, "submit", fault, sc)
            if fault.kind == "drop":
                return self._drop(request, provider, "submit", "submit_before_create")
        task = core.create(provider, spec, hash((provider, path_model, raw)), moderated)
        reply = self.submitted(request, task, sc)
        if fault is None:
            # The common case answers at once, without awaiting the fault delivery.
            return self._send(provider, "submit", 200, reply)
        return await self._deliver(request, provider, "submit", fault, sc, reply)

    # -- poll ----------------------------------------------------------------------------------

    async def _answer_poll(
        self, request: web.Request, endpoint: str, task: Task, sc: Scenario, render: Render
    ) -> web.Response:
        """The end of every poll once the task is found and counted: the task as ``render``
        shows it now, spoiled by a fault if this request gets one."""
        core = self.core
        fault = core.faults.take(endpoint, self.provider)
        now = core.clock()
        body = render(task, now, sc, self._origin(request))
        if fault is None or fault.kind == "slow":
            # The first poll that reports the terminal status intact is what a client could
            # have acted on; a spoiled answer does not count.
            if task.terminal_polled is None and now >= task.created + task.duration:
                task.terminal_polled = now
            if fault is None:
                return self._send(self.provider, endpoint, 200, body)
        return await self._deliver(request, self.provider, endpoint, fault, sc, body)

    # -- upload --------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """Receive one image in the multipart field ``file`` and serve it under ``/files``."""
        provider = self.provider
        sc = self.core.plans[provider]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, provider, "upload", sc)
        if denied is not None:
            return denied
        limit = self.upload_limit
        if not request.content_type.startswith("multipart/"):
            return self.upload_error(400, "Expected a multipart/form-data body")
        data: bytes | None = None
        filename = None
        too_large = False
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name != "file" or data is not None or too_large:
                await part.release()
                continue
            filename = part.filename
            buf = bytearray()
            while chunk := await part.read_chunk(65536):
                if too_large:
                    continue  # keep draining so the client reads our answer, not a reset
                buf += chunk
                if len(buf) > limit:
                    too_large = True
                    buf = bytearray()
            if not too_large:
                data = bytes(buf)
        if too_large:
            mb = limit // (1024 * 1024)
            return self.upload_error(413, f"Image too large. Maximum size is {mb}MB")
        if data is None:
            return self.upload_error(400, "No file provided: send it in the 'file' field")
        kind = sniff(data)
        if kind is None:
            return self.upload_error(400, "Unsupported file type. Allowed: JPEG, PNG, WebP, GIF")
        mime, ext = kind
        fault = self.core.faults.take("upload", provider)
        if fault is not None and fault.kind in ("status", "drop"):
            return await self._deliver(request, provider, "upload", fault, sc, b"")
        upload_id = self.uploads.new_id(sc.seed, self.core.epoch)
        name = f"{upload_id}.{ext}"
        self.uploads.put(name, data, mime, provider)
        url = f"{self._origin(request)}/files/uploads/{name}"
        reply = self.uploaded(upload_id, name, url, mime, len(data), filename)
        return await self._deliver(request, provider, "upload", fault, sc, wire.dumps(reply))
