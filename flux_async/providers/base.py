"""The interface every provider codec implements, and the registry of codecs.

Pure: a codec turns values into :class:`~flux_async._http.HttpRequest` and
:class:`~flux_async._http.HttpResponse` into values. It never awaits, sleeps, reads a clock,
or imports aiohttp/anyio, transport, scheduler or session.
"""

from __future__ import annotations

from typing import Protocol

from .._http import HttpRequest, HttpResponse
from ..errors import APIError
from ..models import GenerationRequest, TaskRef, TaskState

__all__ = ["Codec"]


class Codec(Protocol):
    """One provider's wire format.

    A codec is built with the API key (``Codec(api_key=...)``) and puts it in the auth header
    of every request it builds; it never shows the key in a repr.
    """

    #: "toapis", "apimart" or "bfl".
    name: str
    #: The provider's public base URL.
    default_base_url: str
    #: Largest upload (or inline image) the provider accepts, in bytes.
    max_upload_bytes: int
    #: True when the provider can look a task up by a client-chosen id (toapis).
    supports_client_business_id: bool

    def build_submit(
        self,
        request: GenerationRequest,
        *,
        client_business_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> HttpRequest:
        """The POST that creates a task. ``request`` is already validated and defaulted by the
        catalog; its ``images`` are URL strings (or bytes on BFL, inlined as base64).
        ``client_business_id`` is what a later lookup finds the task by (toapis);
        ``idempotency_key`` is sent where the provider documents a header for it (apimart), as a
        courtesy: nothing relies on the provider honouring it. ``webhook_url`` asks the
        provider to push the task's completion there (toapis ``callback_url``, apimart
        ``webhook``, BFL ``webhook_url``) and ``webhook_secret`` is BFL's ``webhook_secret`` (the
        others sign with a per-key secret, or not at all); both are None by default."""
        ...

    def parse_submit(self, response: HttpResponse, *, model: str) -> TaskRef:
        """The task reference from a 2xx submit response; raises APIError for an HTTP error and
        ProtocolError for a 2xx body without a task id."""
        ...

    def submit_cost(self, response: HttpResponse) -> float | None:
        """What a 2xx submit answer says the task costs, in US dollars (BFL: ``cost`` in
        credits), or None when it says nothing usable. Never raises: a cost is a hint."""
        ...

    def build_poll(self, ref: TaskRef) -> HttpRequest:
        """The GET that reads a task's state (BFL: the ``polling_url`` verbatim)."""
        ...

    def parse_poll(self, response: HttpResponse, *, ref: TaskRef) -> TaskState:
        """The task's state from a poll response. A 404 on an aggregator is a terminal
        ``NOT_FOUND`` state; other HTTP errors raise APIError; an unreadable 2xx ProtocolError."""
        ...

    def build_lookup(self, client_business_id: str) -> HttpRequest | None:
        """The GET that finds a task by ``client_business_id``, or None where unsupported."""
        ...

    def parse_lookup(self, response: HttpResponse, *, model: str) -> TaskRef | None:
        """The task found by a lookup, or None when the provider has no such task (404)."""
        ...

    def build_upload(self, data: bytes, *, filename: str, content_type: str) -> HttpRequest:
        """The multipart POST that uploads an input image (aggregators only)."""
        ...

    def parse_upload(self, response: HttpResponse) -> str:
        """The URL of an uploaded image."""
        ...

    def parse_error(self, response: HttpResponse) -> APIError:
        """The APIError subclass for a non-2xx response, with code, message and request id."""
        ...
