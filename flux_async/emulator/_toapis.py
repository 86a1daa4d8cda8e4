"""The toapis surface: its routes, the poll that doubles as a lookup by ``client_business_id``,
and its submit and upload replies.

Owns :class:`ToapisSurface`. Imports aiohttp and the emulator's own modules only: never the
client library's toapis codec, session, transport or scheduler (a misreading of the wire
format shared with the client would hide).
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from . import _wire as wire
from ._scenario import Scenario
from ._surface import Surface
from ._task import Task
from ._validate import Spec, WireError, parse_toapis

__all__ = ["ToapisSurface"]


class ToapisSurface(Surface):
    """``/toapis/v1/images/generations`` (POST, GET ``/{id}``), ``/toapis/v1/uploads/images``."""

    provider = "toapis"
    prefixes = ("/toapis",)
    upload_limit = 10 * 1024 * 1024

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/toapis/v1/images/generations", self.submit)
        router.add_get("/toapis/v1/images/generations/{id}", self.poll)
        router.add_post("/toapis/v1/uploads/images", self.upload)

    def parse(self, body: object, path_model: str | None) -> Spec:
        """A valid submit; its webhook goes to the request's ``callback_url``, which must share
        the origin of the key's default callback URL (``Scenario.toapis_callback_url``), or
        else to that default. Webhooks are set up per key (URL and signing secret): with no
        default configured, nothing is sent, and a ``callback_url`` is accepted and ignored."""
        spec = parse_toapis(body)
        default = self.core.plans["toapis"].toapis_callback_url
        if spec.webhook is None or default is None:
            spec.webhook = default
        elif _origin(spec.webhook) != _origin(default):
            raise WireError(400, "invalid_request",
                            "callback_url must have the origin of the key's default callback URL",
                            "callback_url")
        return spec

    def submitted(self, request: web.Request, task: Task, sc: Scenario) -> bytes:
        return wire.toapis_submit(task, sc)

    async def poll(self, request: web.Request) -> web.Response:
        """A task by its id, or else by its ``client_business_id`` (counted as a lookup)."""
        core = self.core
        sc = core.plans["toapis"]
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
        return await self._answer_poll(request, endpoint, task, sc, wire.toapis_task)

    def upload_error(self, status: int, message: str) -> web.Response:
        # toapis documents every refused upload, even one too large, as a 400 in the upload
        # envelope rather than its usual error object.
        return self._send("toapis", "upload", 400,
                          wire.dumps({"success": False, "message": message}))

    def uploaded(
        self, upload_id: str, name: str, url: str, mime: str, size: int, filename: str | None
    ) -> dict[str, object]:
        return {"success": True, "message": "",
                "data": {"id": upload_id, "url": url, "mime_type": mime, "size": size}}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port
