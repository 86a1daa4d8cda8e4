"""Webhook receivers for a running :class:`~flux_async.Session`: an ``aiohttp.web`` handler, the
routes each provider posts to, and a small server for programs that have no web app of their own
(the ``batch`` command's ``--webhook-listen``).

A receiver reads the raw body, hands it with the headers to :meth:`Session.notify_webhook`
(verification, then a wake-up of that task's poll) and answers at once: 204 when the delivery
was accepted, 401 when its signature or secret did not verify, 400 when it could not be read.
It never waits for the poll it caused, so a provider's delivery is answered in well under its
timeout. This is an I/O edge like the transport: the verification itself is
:mod:`flux_async.webhooks`' (pure).

With FastAPI or Starlette, the same is a few lines (see the README)::

    @app.post("/flux-async/webhook")
    @app.post("/flux-async/webhook/callback")   # apimart posts to <webhook_url>/callback
    async def flux_webhook(request: Request) -> Response:
        try:
            session.notify_webhook(request.headers, await request.body())
        except WebhookVerificationError as exc:
            return Response(status_code=401 if exc.reason in AUTH_REASONS else 400)
        return Response(status_code=204)
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import WebhookVerificationError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["AUTH_REASONS", "DEFAULT_PATH", "add_webhook_routes", "serve_webhooks", "webhook_handler"]

_log = logging.getLogger("flux_async.webhooks")

#: Where :func:`add_webhook_routes` and :func:`serve_webhooks` listen by default.
DEFAULT_PATH = "/flux-async/webhook"
#: ``WebhookVerificationError.reason`` values answered with 401 (the rest with 400).
AUTH_REASONS = frozenset({"no_secret", "missing_header", "bad_signature", "timestamp_out_of_window"})
#: Largest delivery read (a provider's event is a few kilobytes).
_MAX_BODY = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def webhook_handler(session: Session) -> Handler:
    """An ``aiohttp.web`` handler that verifies each delivery and wakes its task's poll."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return web.Response(status=413)
        body = await request.read()
        try:
            event = session.notify_webhook(request.headers, body)
        except WebhookVerificationError as exc:
            _log.info("webhook delivery refused (%s): %s", exc.reason, exc)
            return web.Response(status=401 if exc.reason in AUTH_REASONS else 400, text=exc.reason)
        _log.debug("webhook event %s for task %s", event.event_id, event.task_id)
        return web.Response(status=204)

    return handle


def add_webhook_routes(app: web.Application, session: Session, path: str = DEFAULT_PATH) -> None:
    """Route POSTs to ``path`` (and ``path + "/callback"``, where apimart delivers) to
    :func:`webhook_handler`. The session's ``webhook_url`` is the public URL of ``path``."""
    handler = webhook_handler(session)
    base = "/" + path.strip("/")
    app.router.add_post(base, handler)
    app.router.add_post(base + "/callback", handler)


@contextlib.asynccontextmanager
async def serve_webhooks(
    session: Session, host: str, port: int, *, path: str = DEFAULT_PATH
) -> AsyncIterator[int]:
    """Listen on ``host:port`` for the session's webhooks while the block runs; yields the
    port (useful with ``port=0``). The server stops when the block ends."""
    app = web.Application(client_max_size=_MAX_BODY)
    add_webhook_routes(app, session, path)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        site = web.SockSite(runner, sock)
        await site.start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
