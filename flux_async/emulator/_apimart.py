"""The apimart surface: its routes, its task poll, and its submit and upload replies.

Owns :class:`ApimartSurface`. Imports aiohttp and the emulator's own modules only: never the
client library's apimart codec, session, transport or scheduler (a misreading of the wire
format shared with the client would hide).
"""

from __future__ import annotations

from aiohttp import web

from . import _wire as wire
from ._scenario import Scenario
from ._surface import Surface
from ._task import Task
from ._validate import Spec, parse_apimart

__all__ = ["ApimartSurface"]


class ApimartSurface(Surface):
    """``/apimart/v1/images/generations`` (POST), ``/apimart/v1/tasks/{id}`` (GET),
    ``/apimart/v1/uploads/images`` (POST)."""

    provider = "apimart"
    prefixes = ("/apimart",)
    upload_limit = 20 * 1024 * 1024

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/apimart/v1/images/generations", self.submit)
        router.add_get("/apimart/v1/tasks/{id}", self.poll)
        router.add_post("/apimart/v1/uploads/images", self.upload)

    def parse(self, body: object, path_model: str | None) -> Spec:
        return parse_apimart(body)

    def submitted(self, request: web.Request, task: Task, sc: Scenario) -> bytes:
        return wire.apimart_submit(task, sc)

    async def poll(self, request: web.Request) -> web.Response:
        """A task by its id."""
        core = self.core
        sc = core.plans["apimart"]
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
        return await self._answer_poll(request, "poll", task, sc, wire.apimart_task)

    def uploaded(
        self, upload_id: str, name: str, url: str, mime: str, size: int, filename: str | None
    ) -> dict[str, object]:
        return {"url": url, "filename": filename or name, "content_type": mime,
                "bytes": size, "created_at": int(self.core.clock())}
