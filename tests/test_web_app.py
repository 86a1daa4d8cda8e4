"""The README's web-application pattern: one Session for the app's lifetime, opened in
``cleanup_ctx``, shared by concurrent handlers, closed cleanly at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import flux_async
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario

FLUX = web.AppKey("flux", flux_async.Session)


@pytest.mark.anyio
async def test_handlers_share_one_session_for_the_app_lifetime() -> None:
    async with Emulator(Scenario(seed=4, duration=Duration.fixed(0.02))) as emu:

        async def flux_session(app: web.Application) -> AsyncIterator[None]:
            policy = flux_async.PollPolicy(first_poll=0.01, min_interval=0.01, quantum=0.005)
            async with flux_async.Session(
                "toapis", api_key=DEFAULT_API_KEY, base_url=emu.base_url("toapis"), poll_policy=policy
            ) as session:
                app[FLUX] = session
                yield

        async def create_image(request: web.Request) -> web.Response:
            body = await request.json()
            try:
                result = await request.app[FLUX].generate(model="flux-kontext-pro", prompt=body["prompt"])
            except flux_async.ValidationError as exc:
                return web.json_response({"field": exc.field}, status=400)
            return web.json_response({"urls": [image.url for image in result.images]})

        app = web.Application()
        app.cleanup_ctx.append(flux_session)
        app.router.add_post("/images", create_image)
        statuses: list[int] = []
        async with TestClient(TestServer(app)) as client:

            async def call(i: int) -> None:
                resp = await client.post("/images", json={"prompt": f"fox {i}"})
                statuses.append(resp.status)
                assert len((await resp.json())["urls"]) == 1

            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(call, i)
            bad = await client.post("/images", json={"prompt": ""})
            assert bad.status == 400
            assert (await bad.json())["field"] == "prompt"
            session = app[FLUX]
            assert session.statistics().submitted == 30
        assert statuses == [200] * 30
        assert session.statistics().outstanding == 0
        assert emu.stats()["tasks_created"] == 30
