"""The emulator's aiohttp.web application: one server, three provider surfaces.

Owns :class:`EmulatorApp`: it builds the application, mounts the provider surfaces
(:mod:`._toapis`, :mod:`._apimart`, :mod:`._bfl`) and the file handlers (:mod:`._files`), and
serves the control endpoints. Imports aiohttp, the standard library and the emulator's own
modules only: never the client library's codecs, session, transport or scheduler.

Routes (the providers' paths under a per-provider prefix):

- ``/toapis/v1/images/generations`` (POST submit, GET ``/{id}`` poll or lookup by
  ``client_business_id``), ``/toapis/v1/uploads/images`` (POST)
- ``/apimart/v1/images/generations`` (POST), ``/apimart/v1/tasks/{id}`` (GET),
  ``/apimart/v1/uploads/images`` (POST)
- ``/bfl/v1/{model}`` (POST) and ``/bfl/v1/get_result?id=`` (GET, the global host); the submit
  reply's ``polling_url`` names the *regional* ``/bfl-us1/v1/get_result?id=``. BFL's paths are
  served at the root too (``/v1/{model}``, ``/v1/get_result``): they collide with no
  aggregator's, and clients built for BFL take a host root as their base URL
- ``/files/{provider}/{task_id}/{index}.{ext}`` result images, ``/files/uploads/{name}``
- ``/_emulator/stats`` (GET), ``/_emulator/reset`` (POST), ``/_emulator/scenario`` (GET, PUT),
  ``/_emulator/faults`` (POST) for tests and benchmarks; ``/`` an index
- anything else under a provider's prefix: that provider's 404

Handlers stay lean (no logging, no middleware): the emulator must never be the bottleneck of
a benchmark.
"""

from __future__ import annotations

import json

from aiohttp import web

from . import _wire as wire
from ._apimart import ApimartSurface
from ._bfl import BflSurface
from ._core import Core
from ._files import Files, UploadStore
from ._hooksend import WebhookSender
from ._images import ImageCache
from ._respond import JSON
from ._scenario import DEFAULT_API_KEY, PROVIDERS, Fault, Scenario
from ._surface import Surface
from ._toapis import ToapisSurface

__all__ = ["EmulatorApp"]

_MAX_REQUEST = 64 * 1024 * 1024


class EmulatorApp:
    """The web application over one :class:`Core`."""

    def __init__(self, core: Core, images: ImageCache) -> None:
        self.core = core
        self.images = images
        self.uploads = UploadStore()
        surfaces: tuple[Surface, ...] = (
            ToapisSurface(core, self.uploads),
            ApimartSurface(core, self.uploads),
            BflSurface(core, self.uploads),
        )
        app = web.Application(client_max_size=_MAX_REQUEST)
        #: Posts the webhooks; its driver and deliveries live and die with the application.
        self.webhooks = WebhookSender(core)
        app.cleanup_ctx.append(self.webhooks.lifespan)
        r = app.router
        for surface in surfaces:
            surface.add_routes(r)
        Files(core, images, self.uploads).add_routes(r)
        r.add_get("/_emulator/stats", self._stats)
        r.add_post("/_emulator/reset", self._reset)
        r.add_get("/_emulator/scenario", self._get_scenario)
        r.add_put("/_emulator/scenario", self._put_scenario)
        r.add_post("/_emulator/faults", self._post_faults)
        r.add_get("/", self._index)
        # Last: a catch-all must not shadow the provider routes under the same prefix.
        for surface in surfaces:
            for prefix in surface.prefixes:
                r.add_route("*", prefix + "/{tail:.*}", surface.not_found)
        self.app = app

    # -- control endpoints ---------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        origin = self.core.origin or "http://" + request.host
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
                            content_type=JSON)

    async def _reset(self, request: web.Request) -> web.Response:
        self.core.reset()
        return web.json_response({"ok": True})

    async def _get_scenario(self, request: web.Request) -> web.Response:
        return web.Response(body=wire.dumps(self.core.scenario.to_dict()), content_type=JSON)

    async def _put_scenario(self, request: web.Request) -> web.Response:
        try:
            scenario = Scenario.from_dict(json.loads(await request.read()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.core.set_scenario(scenario)
        return web.Response(body=wire.dumps(scenario.to_dict()), content_type=JSON)

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            items = payload if isinstance(payload, list) else [payload]
            faults = [Fault(**item) for item in items]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for fault in faults:
            self.core.faults.inject(fault)
        return web.json_response({"ok": True, "pending": self.core.faults.pending()})
