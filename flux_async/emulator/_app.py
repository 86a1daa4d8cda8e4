"""The emulator's aiohttp.web application: one server, three provider surfaces.

Routes (the providers' paths under a per-provider prefix):

- ``/toapis/v1/images/generations`` (POST submit, GET ``/{id}`` poll or lookup by
  ``client_business_id``), ``/toapis/v1/uploads/images`` (POST)
- ``/apimart/v1/images/generations`` (POST), ``/apimart/v1/tasks/{id}`` (GET),
  ``/apimart/v1/uploads/images`` (POST)
- ``/bfl/v1/{model}`` (POST); polls go to the *regional* ``/bfl-us1/v1/get_result?id=`` that the
  submit reply names, never derivable from ``/bfl`` + id
- ``/files/{provider}/{task_id}/{index}.{ext}`` result images, ``/files/uploads/{name}``
- ``/_emulator/stats`` (GET), ``/_emulator/reset`` (POST), ``/_emulator/scenario`` (GET, PUT),
  ``/_emulator/faults`` (POST) for tests and benchmarks; ``/`` an index

Handlers stay lean (no logging, no middleware): the emulator must never be the bottleneck of
a benchmark. Only aiohttp, the standard library and the emulator's own modules are imported.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import BodyPartReader, web

from . import _wire as wire
from ._core import DONE, OK, Core, Task
from ._images import ImageCache
from ._scenario import DEFAULT_API_KEY, PROVIDERS, Fault, Scenario
from ._validate import (
    BFL_MODELS,
    BflValidationError,
    Spec,
    WireError,
    bfl_json_error,
    parse_apimart,
    parse_bfl,
    parse_toapis,
)

__all__ = ["EmulatorApp"]

_JSON = "application/json"
_HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
_NOT_AN_IMAGE = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code>'
    b"<Message>The server encountered an internal error.</Message></Error>"
)
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
_UPLOAD_LIMITS = {"toapis": 10 * 1024 * 1024, "apimart": 20 * 1024 * 1024}
_UPLOAD_STORE_BYTES = 256 * 1024 * 1024
_MAX_REQUEST = 64 * 1024 * 1024
_ZEROS = bytes(65536)


def _sniff(data: bytes) -> tuple[str, str] | None:
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


class EmulatorApp:
    """The web application and its handlers over one :class:`Core`."""

    def __init__(self, core: Core, images: ImageCache) -> None:
        self.core = core
        self.images = images
        self.uploads: OrderedDict[str, tuple[bytes, str, str]] = OrderedDict()
        self._upload_bytes = 0
        self._upload_counter = 0
        self.base_url_of: dict[str, str] = {}
        app = web.Application(client_max_size=_MAX_REQUEST)
        r = app.router
        r.add_post("/toapis/v1/images/generations", self._toapis_submit)
        r.add_get("/toapis/v1/images/generations/{id}", self._toapis_poll)
        r.add_post("/toapis/v1/uploads/images", self._toapis_upload)
        r.add_post("/apimart/v1/images/generations", self._apimart_submit)
        r.add_get("/apimart/v1/tasks/{id}", self._apimart_poll)
        r.add_post("/apimart/v1/uploads/images", self._apimart_upload)
        r.add_post("/bfl/v1/{model}", self._bfl_submit)
        r.add_get("/bfl-us1/v1/get_result", self._bfl_poll)
        r.add_get("/files/uploads/{name}", self._uploaded_file)
        r.add_get("/files/{provider}/{id}/{name}", self._download)
        r.add_get("/_emulator/stats", self._stats)
        r.add_post("/_emulator/reset", self._reset)
        r.add_get("/_emulator/scenario", self._get_scenario)
        r.add_put("/_emulator/scenario", self._put_scenario)
        r.add_post("/_emulator/faults", self._post_faults)
        r.add_get("/", self._index)
        for provider, prefix in (("toapis", "/toapis"), ("apimart", "/apimart"),
                                 ("bfl", "/bfl"), ("bfl", "/bfl-us1")):
            r.add_route("*", prefix + "/{tail:.*}", self._not_found_handler(provider))
        self.app = app

    # -- plumbing ------------------------------------------------------------------------------

    def _send(
        self,
        provider: str,
        endpoint: str,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.core.count(provider, endpoint, status)
        return web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    def _error(
        self,
        provider: str,
        endpoint: str,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = wire.error_body(provider, status, message, code=code, param=param)
        return self._send(provider, endpoint, status, body, headers)

    def _retry_after(
        self, sc: Scenario, computed: float | None, explicit: float | None = None
    ) -> dict[str, str] | None:
        fmt = sc.retry_after_format
        if explicit is not None:
            value = explicit
            if fmt == "absent":
                fmt = "seconds"
        elif fmt == "absent":
            return None
        elif sc.retry_after is not None:
            value = sc.retry_after
        else:
            value = max(1.0, computed if computed is not None else 1.0)
        seconds = max(0, math.ceil(value))
        if fmt == "http_date":
            # An HTTP date is absolute: it is read against the client's wall clock, so it is
            # computed from real time even when the emulator runs on an injected clock.
            return {"Retry-After": email.utils.formatdate(time.time() + seconds, usegmt=True)}
        return {"Retry-After": str(seconds)}

    async def _latency(self, sc: Scenario) -> None:
        delay = sc.latency
        if sc.latency_jitter:
            delay += sc.latency_jitter * self.core.latency_rng.random()
        if delay > 0:
            await asyncio.sleep(delay)

    def _drop(self, request: web.Request, provider: str, endpoint: str, which: str) -> web.Response:
        transport = request.transport
        if transport is not None:
            transport.close()
        self.core.count_drop(provider, endpoint, which)
        return web.Response()  # never written: the transport is gone

    def _truncated(
        self, request: web.Request, provider: str, endpoint: str, body: bytes, content_type: str
    ) -> web.Response:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            transport.write(head + body[: len(body) // 2])
            transport.close()
        self.core.count(provider, endpoint, 200)
        return web.Response()

    def _auth(
        self, request: web.Request, provider: str, endpoint: str, sc: Scenario
    ) -> web.Response | None:
        keys, forbidden, no_credit = self.core.keys[provider]
        if provider == "bfl":
            key = request.headers.get("x-key")
        else:
            header = request.headers.get("Authorization")
            key = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        if not key:
            return self._error(provider, endpoint, 401, "Missing API key")
        if key in forbidden:
            return self._error(provider, endpoint, 403)
        if key in no_credit:
            if endpoint in ("submit", "upload"):
                return self._error(provider, endpoint, 402)
        elif key not in keys and not sc.accept_any_key:
            return self._error(provider, endpoint, 401, "Invalid API key")
        if (
            provider == "toapis"
            and sc.toapis_require_user_agent
            and not request.headers.get("User-Agent")
        ):
            return self._error(provider, endpoint, 403, "A User-Agent header is required")
        return None

    def _gate(
        self, request: web.Request, provider: str, endpoint: str, sc: Scenario
    ) -> web.Response | None:
        """Authentication, then the request-rate limit (the caller has applied latency)."""
        denied = self._auth(request, provider, endpoint, sc)
        if denied is not None:
            return denied
        if sc.rate_limit is not None and (sc.rate_limit_scope == "all" or endpoint == "submit"):
            wait = self.core.rate_check(provider, sc, self.core.clock())
            if wait is not None:
                self.core.rate_limited["rate"] += 1
                return self._error(provider, endpoint, 429, headers=self._retry_after(sc, wait))
        return None

    def _fault_status(
        self, provider: str, endpoint: str, fault: Fault, sc: Scenario
    ) -> web.Response:
        headers = None
        if fault.status == 429:
            self.core.rate_limited["scripted"] += 1
            headers = self._retry_after(sc, 1.0, fault.retry_after)
        elif fault.retry_after is not None:
            headers = self._retry_after(sc, None, fault.retry_after)
        return self._error(provider, endpoint, fault.status, headers=headers)

    async def _deliver(
        self,
        request: web.Request,
        provider: str,
        endpoint: str,
        fault: Fault | None,
        sc: Scenario,
        body: bytes,
    ) -> web.Response:
        """Send a 200 JSON ``body``, spoiled by ``fault`` if there is one."""
        if fault is None:
            return self._send(provider, endpoint, 200, body)
        kind = fault.kind
        if kind == "status":
            return self._fault_status(provider, endpoint, fault, sc)
        if kind == "drop":
            return self._drop(request, provider, endpoint, "other")
        if kind == "drop_after_create":
            return self._drop(request, provider, endpoint, "submit_after_create")
        if kind == "malformed_json":
            return self._send(provider, endpoint, 200, body[: max(1, len(body) // 2)])
        if kind == "truncated":
            return self._truncated(request, provider, endpoint, body, _JSON)
        if kind == "html":
            self.core.count(provider, endpoint, 200)
            return web.Response(status=200, body=_HTML, content_type="text/html")
        # slow
        await asyncio.sleep(fault.delay if fault.delay is not None else sc.slow_delay)
        return self._send(provider, endpoint, 200, body)

    @staticmethod
    def _origin(request: web.Request) -> str:
        return "http://" + request.host

    # -- submit --------------------------------------------------------------------------------

    async def _toapis_submit(self, request: web.Request) -> web.Response:
        return await self._submit(request, "toapis", None)

    async def _apimart_submit(self, request: web.Request) -> web.Response:
        return await self._submit(request, "apimart", None)

    async def _bfl_submit(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model not in BFL_MODELS:
            return self._send("bfl", "submit", 404, wire.dumps({"detail": "Not Found"}))
        return await self._submit(request, "bfl", model)

    async def _submit(
        self, request: web.Request, provider: str, path_model: str | None
    ) -> web.Response:
        core = self.core
        sc = self.core.plans[provider]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, provider, "submit", sc)
        if denied is not None:
            return denied
        raw = await request.read()
        spec: Spec
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                if provider == "bfl":
                    pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
                    raise bfl_json_error(pos, str(exc)) from None
                raise WireError(
                    400, "invalid_json", f"request body is not valid JSON: {exc}"
                ) from None
            if provider == "toapis":
                spec = parse_toapis(body)
            elif provider == "apimart":
                spec = parse_apimart(body)
            else:
                assert path_model is not None
                spec = parse_bfl(path_model, body)
        except WireError as err:
            return self._error(provider, "submit", err.status, err.message, code=err.code,
                               param=err.param)
        except BflValidationError as err:
            return self._send(provider, "submit", 422, wire.dumps({"detail": err.detail}))
        moderated = False
        if sc.blocked_terms:
            lowered = spec.prompt.lower()
            moderated = any(term.lower() in lowered for term in sc.blocked_terms)
            if moderated and provider != "bfl":
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
        fault = core.next_fault("submit", provider)
        if fault is not None:
            if fault.kind == "status":
                return self._fault_status(provider, "submit", fault, sc)
            if fault.kind == "drop":
                return self._drop(request, provider, "submit", "submit_before_create")
        task = core.create(provider, spec, hash((provider, path_model, raw)), moderated)
        if provider == "toapis":
            reply = wire.toapis_submit(task, sc)
        elif provider == "apimart":
            reply = wire.apimart_submit(task, sc)
        else:
            reply = wire.bfl_submit(task, sc, self._origin(request))
        return await self._deliver(request, provider, "submit", fault, sc, reply)

    # -- poll ----------------------------------------------------------------------------------

    @staticmethod
    def _mark(task: Task, now: float) -> None:
        """Remember the first poll that reports the terminal status (sent intact)."""
        if task.terminal_polled is None and now >= task.created + task.duration:
            task.terminal_polled = now

    async def _toapis_poll(self, request: web.Request) -> web.Response:
        core = self.core
        sc = self.core.plans["toapis"]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, "toapis", "poll", sc)
        if denied is not None:
            return denied
        ident = request.match_info["id"]
        task = core.tasks.get(ident)
        endpoint = "poll"
        if task is None or task.provider != "toapis":
            task = core.by_cbid.get(ident)
            if task is None:
                return self._error("toapis", "poll", 404, f"task {ident} not found")
            endpoint = "lookup"
            task.lookups += 1
        else:
            task.polls += 1
        fault = core.next_fault(endpoint, "toapis")
        now = core.clock()
        body = wire.toapis_task(task, now, sc, self._origin(request))
        if fault is None or fault.kind == "slow":
            self._mark(task, now)
        return await self._deliver(request, "toapis", endpoint, fault, sc, body)

    async def _apimart_poll(self, request: web.Request) -> web.Response:
        core = self.core
        sc = self.core.plans["apimart"]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, "apimart", "poll", sc)
        if denied is not None:
            return denied
        ident = request.match_info["id"]
        task = core.tasks.get(ident)
        if task is None or task.provider != "apimart":
            return self._error("apimart", "poll", 404, f"task {ident} not found")
        task.polls += 1
        fault = core.next_fault("poll", "apimart")
        now = core.clock()
        body = wire.apimart_task(task, now, sc, self._origin(request))
        if fault is None or fault.kind == "slow":
            self._mark(task, now)
        return await self._deliver(request, "apimart", "poll", fault, sc, body)

    async def _bfl_poll(self, request: web.Request) -> web.Response:
        core = self.core
        sc = self.core.plans["bfl"]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, "bfl", "poll", sc)
        if denied is not None:
            return denied
        ident = request.query.get("id")
        if not ident:
            detail = [{"type": "missing", "loc": ["query", "id"], "msg": "Field required",
                       "input": None}]
            return self._send("bfl", "poll", 422, wire.dumps({"detail": detail}))
        task = core.tasks.get(ident)
        if task is None or task.provider != "bfl":
            return self._send("bfl", "poll", 200, wire.bfl_not_found(ident))
        task.polls += 1
        fault = core.next_fault("poll", "bfl")
        now = core.clock()
        body = wire.bfl_task(task, now, sc, self._origin(request))
        if fault is None or fault.kind == "slow":
            self._mark(task, now)
        return await self._deliver(request, "bfl", "poll", fault, sc, body)

    # -- uploads -------------------------------------------------------------------------------

    async def _toapis_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, "toapis")

    async def _apimart_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, "apimart")

    def _upload_error(self, provider: str, status: int, message: str) -> web.Response:
        if provider == "toapis":
            return self._send(provider, "upload", 400,
                              wire.dumps({"success": False, "message": message}))
        return self._error(provider, "upload", status, message)

    async def _upload(self, request: web.Request, provider: str) -> web.Response:
        sc = self.core.plans[provider]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, provider, "upload", sc)
        if denied is not None:
            return denied
        limit = _UPLOAD_LIMITS[provider]
        if not request.content_type.startswith("multipart/"):
            return self._upload_error(provider, 400, "Expected a multipart/form-data body")
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
            return self._upload_error(provider, 413, f"Image too large. Maximum size is {mb}MB")
        if data is None:
            return self._upload_error(provider, 400, "No file provided: send it in the 'file' field")
        kind = _sniff(data)
        if kind is None:
            return self._upload_error(
                provider, 400, "Unsupported file type. Allowed: JPEG, PNG, WebP, GIF"
            )
        mime, ext = kind
        fault = self.core.next_fault("upload", provider)
        if fault is not None and fault.kind in ("status", "drop"):
            return await self._deliver(request, provider, "upload", fault, sc, b"")
        self._upload_counter += 1
        upload_id = "upload_" + hashlib.blake2b(
            repr((sc.seed, self.core.epoch, self._upload_counter)).encode(), digest_size=6
        ).hexdigest()
        name = f"{upload_id}.{ext}"
        self._store_upload(name, data, mime, provider)
        url = f"{self._origin(request)}/files/uploads/{name}"
        if provider == "toapis":
            reply = {"success": True, "message": "",
                     "data": {"id": upload_id, "url": url, "mime_type": mime, "size": len(data)}}
        else:
            reply = {"url": url, "filename": filename or name, "content_type": mime,
                     "bytes": len(data), "created_at": int(self.core.clock())}
        return await self._deliver(request, provider, "upload", fault, sc, wire.dumps(reply))

    def _store_upload(self, name: str, data: bytes, mime: str, provider: str) -> None:
        self.uploads[name] = (data, mime, provider)
        self._upload_bytes += len(data)
        while self._upload_bytes > _UPLOAD_STORE_BYTES and len(self.uploads) > 1:
            _, (old, _, _) = self.uploads.popitem(last=False)
            self._upload_bytes -= len(old)

    async def _uploaded_file(self, request: web.Request) -> web.Response:
        found = self.uploads.get(request.match_info["name"])
        if found is None:
            self.core.requests["other"] += 1
            return web.Response(status=404, text="Not Found")
        data, mime, provider = found
        self.core.count(provider, "other", 200)
        return web.Response(body=data, content_type=mime)

    # -- downloads -----------------------------------------------------------------------------

    def _download_404(self, provider: str) -> web.Response:
        self.core.count(provider, "download", 404)
        body, ctype = _EXPIRED_BODIES[404]
        return web.Response(status=404, body=body, content_type=ctype)

    async def _download(self, request: web.Request) -> web.StreamResponse:
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
        task.downloads += 1
        now = core.clock()
        phase, _ = task.phase(now, sc.queue_fraction)
        if phase != DONE or task.outcome != OK:
            return self._download_404(provider)
        fault = core.next_fault("download", provider)
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
            return web.Response(body=_HTML, content_type="text/html")
        if kind == "wrong_magic":
            core.count(provider, "download", 200)
            return web.Response(body=_NOT_AN_IMAGE, content_type=ctype)
        if kind == "redirect_scheme":
            core.count(provider, "download", 302)
            return web.Response(status=302, headers={"Location": "file:///etc/passwd"})
        if kind in ("oversized", "oversized_chunked"):
            core.count(provider, "download", 200)
            return await self._oversized(request, data, ctype, sc.oversized_bytes,
                                         chunked=kind == "oversized_chunked")
        # slow
        assert fault is not None
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

    # -- catch-all -----------------------------------------------------------------------------

    def _not_found_handler(
        self, provider: str
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def not_found(request: web.Request) -> web.Response:
            if provider == "bfl":
                return self._send(provider, "other", 404, wire.dumps({"detail": "Not Found"}))
            return self._error(provider, "other", 404, f"no route for {request.method} "
                               f"{request.path}")

        return not_found

    # -- control endpoints ---------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        origin = self._origin(request)
        return web.json_response(
            {
                "emulator": "flux_async",
                "providers": {p: f"{origin}/{p}" for p in PROVIDERS},
                "stats": f"{origin}/_emulator/stats",
                "default_api_key": DEFAULT_API_KEY,
            }
        )

    async def _stats(self, request: web.Request) -> web.Response:
        with_tasks = request.query.get("tasks", "1").lower() not in ("0", "false", "no")
        return web.Response(body=wire.dumps(self.core.stats(tasks=with_tasks)),
                            content_type=_JSON)

    async def _reset(self, request: web.Request) -> web.Response:
        self.core.reset()
        return web.json_response({"ok": True})

    async def _get_scenario(self, request: web.Request) -> web.Response:
        return web.Response(body=wire.dumps(self.core.scenario.to_dict()), content_type=_JSON)

    async def _put_scenario(self, request: web.Request) -> web.Response:
        try:
            scenario = Scenario.from_dict(json.loads(await request.read()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.core.set_scenario(scenario)
        return web.Response(body=wire.dumps(scenario.to_dict()), content_type=_JSON)

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            items = payload if isinstance(payload, list) else [payload]
            faults = [Fault(**item) for item in items]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for fault in faults:
            self.core.inject(fault)
        return web.json_response({"ok": True, "pending": sum(e.remaining for e in self.core.script)})
