"""The Black Forest Labs surface: a submit path per model, the polls, their replies.

Owns :class:`BflSurface`. BFL's ``polling_url`` names a *regional* path
(``/bfl-us1/v1/get_result?id=``), which a client must use verbatim; the global host answers
``/v1/get_result?id=`` too, as BFL's does, and those polls are counted apart
(``bfl_global_polls``) so a test can tell whether a client rebuilt the URL. BFL's paths are
served under ``/bfl`` and at the root (a client built for BFL takes a host root as its base). Imports aiohttp, the standard library and the emulator's own modules
only: never the client library's BFL codec, session, transport or scheduler (a misreading of
the wire format shared with the client would hide).
"""

from __future__ import annotations

import json

from aiohttp import web

from . import _wire as wire
from ._scenario import Scenario
from ._surface import Surface
from ._task import Task
from ._validate import BFL_MODELS, Spec, bfl_json_error, parse_bfl

__all__ = ["BflSurface"]

_NOT_FOUND = wire.dumps({"detail": "Not Found"})
_MISSING_ID = wire.dumps(
    {"detail": [{"type": "missing", "loc": ["query", "id"], "msg": "Field required",
                 "input": None}]}
)


class BflSurface(Surface):
    """``/bfl/v1/{model}`` and ``/v1/{model}`` (POST), ``/bfl-us1/v1/get_result?id=`` (GET,
    regional), ``/bfl/v1/get_result?id=`` and ``/v1/get_result?id=`` (GET, global)."""

    provider = "bfl"
    prefixes = ("/bfl", "/bfl-us1", "/v1")
    # BFL accepts the prompt and moderates the task: the poll says ``Request Moderated``.
    refuses_blocked_prompts = False

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/bfl/v1/{model}", self.submit_model)
        router.add_get("/bfl-us1/v1/get_result", self.poll)
        router.add_get("/bfl/v1/get_result", self.poll_global)
        router.add_post("/v1/{model}", self.submit_model)
        router.add_get("/v1/get_result", self.poll_global)

    async def submit_model(self, request: web.Request) -> web.Response:
        """A submit to ``/v1/{model}``; an unknown model is FastAPI's plain 404."""
        model = request.match_info["model"]
        if model not in BFL_MODELS:
            return self._send("bfl", "submit", 404, _NOT_FOUND)
        return await self.submit(request, model)

    def parse(self, body: object, path_model: str | None) -> Spec:
        assert path_model is not None
        return parse_bfl(path_model, body)

    def invalid_json(self, exc: ValueError) -> Exception:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        return bfl_json_error(pos, str(exc))

    def submitted(self, request: web.Request, task: Task, sc: Scenario) -> bytes:
        return wire.bfl_submit(task, sc, self._origin(request))

    async def poll(self, request: web.Request) -> web.Response:
        """A task by ``?id=``; an unknown id is a 200 saying ``Task not found``, as BFL does."""
        core = self.core
        sc = core.plans["bfl"]
        if sc.latency or sc.latency_jitter:
            await self._latency(sc)
        denied = self._gate(request, "bfl", "poll", sc)
        if denied is not None:
            return denied
        ident = request.query.get("id")
        if not ident:
            return self._send("bfl", "poll", 422, _MISSING_ID)
        task = core.tasks.get(ident)
        if task is None or task.provider != "bfl":
            return self._send("bfl", "poll", 200, wire.bfl_not_found(ident))
        task.polls += 1
        return await self._answer_poll(request, "poll", task, sc, wire.bfl_task)

    async def poll_global(self, request: web.Request) -> web.Response:
        """A poll on the global host: answered as the regional one, and counted apart."""
        self.core.bfl_global_polls += 1
        return await self.poll(request)

    async def not_found(self, request: web.Request) -> web.Response:
        return self._send("bfl", "other", 404, _NOT_FOUND)
