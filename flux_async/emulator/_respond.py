"""How the emulator answers: the plumbing every provider surface and file handler sends through.

Owns :class:`Responder`: counted JSON answers in the providers' error envelopes, the key check
and the request-rate gate, ``Retry-After``, real latency, and the delivery of a fault in place
of a normal 200 (closed connections, truncated and malformed bodies, HTML pages, slow
answers). Imports aiohttp, the standard library and the emulator's own modules only: never the
client library's codecs, session, transport or scheduler, and no provider's routes (those
build on this module, not the reverse).

Handlers stay lean (no logging, no middleware): the emulator must never be the bottleneck of
a benchmark, so these are plain methods a handler calls directly, never a layer every request
passes through.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time

from aiohttp import web

from . import _wire as wire
from ._core import Core
from ._scenario import Fault, Scenario

__all__ = ["HTML_PAGE", "JSON", "Responder"]

JSON = "application/json"
#: What a 200 looks like when a proxy, not the provider, answered.
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


class Responder:
    """Answers over one :class:`Core`; every answer sent through here is counted once."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def _send(
        self,
        provider: str,
        endpoint: str,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.core.count(provider, endpoint, status)
        return web.Response(status=status, body=body, content_type=JSON, headers=headers)

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

    def _gate(
        self, request: web.Request, provider: str, endpoint: str, sc: Scenario
    ) -> web.Response | None:
        """The key check, then the request-rate limit (the caller has applied latency): None
        if the request may proceed, else the answer that refuses it."""
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
            return self._truncated(request, provider, endpoint, body, JSON)
        if kind == "html":
            self.core.count(provider, endpoint, 200)
            return web.Response(status=200, body=HTML_PAGE, content_type="text/html")
        # slow
        await asyncio.sleep(fault.delay if fault.delay is not None else sc.slow_delay)
        return self._send(provider, endpoint, 200, body)

    def _origin(self, request: web.Request) -> str:
        """Where the URLs handed out point: the server's own address, never a client's say-so."""
        origin = self.core.origin
        return origin if origin is not None else "http://" + request.host
