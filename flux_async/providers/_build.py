"""Pieces of request building the codecs share: the body fields both aggregators send, the
rules for ``n``, ``seed`` and input images, ``extra`` merging, and URL path segments. Pure: no
I/O, no clock, no aiohttp/anyio, nothing from transport, scheduler or session, and nothing
from the other provider modules.

The request helpers take a :class:`~flux_async.models.GenerationRequest` the catalog has
already validated; what they refuse (ValidationError) is what a provider's wire format cannot
carry, so nothing the caller asked for is dropped silently.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .._checks import check_task_id
from ..errors import ValidationError
from ..models import GenerationRequest

__all__ = [
    "aggregator_fields",
    "inline_image",
    "merge_extra",
    "path_segment",
    "send_n",
    "url_images",
    "webhook_secret_field",
    "webhook_target",
]


def merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``body`` last: its keys win, and where both sides hold an object
    (toapis ``metadata``) the objects are merged the same way instead of replaced."""
    for key, value in extra.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            body[key] = merge_extra(dict(current), value)
        else:
            body[key] = value
    return body


def url_images(request: GenerationRequest, *, provider: str) -> list[str]:
    """The request's images, which must all be http(s) URLs on an aggregator (the session
    uploads paths and bytes first and passes the returned URLs)."""
    urls = []
    for index, image in enumerate(request.images):
        if not (isinstance(image, str) and image.lower().startswith(("http://", "https://"))):
            raise ValidationError(
                f"images[{index}]",
                f"<{len(image)} bytes>" if isinstance(image, bytes) else image,
                "an http(s) URL",
                reason=f"{provider} accepts image URLs only; upload the image first",
            )
        urls.append(image)
    return urls


_AGGREGATOR_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}


def aggregator_fields(
    request: GenerationRequest, *, provider: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body fields toapis and apimart share (``model``, ``prompt``, ``size``, ``n``,
    ``image_urls``) and, apart, the options, which toapis nests in ``metadata`` and apimart puts
    at the top level (``response_format`` spelt ``png``/``jpg`` on both). Only set fields are
    included.

    Neither documents ``seed``, so it is not sent: a request with ``seed`` set is refused
    (ValidationError) rather than silently losing it; ``extra`` can still carry one.
    """
    if request.seed is not None:
        raise ValidationError(
            "seed",
            request.seed,
            f"None on {provider}",
            reason=f"{provider} does not document seed; pass it via extra if you must",
        )
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
    if request.size is not None:
        body["size"] = request.size
    if send_n(request):
        body["n"] = request.n
    if request.images:
        body["image_urls"] = url_images(request, provider=provider)
    options: dict[str, Any] = {}
    if request.response_format is not None:
        fmt = request.response_format
        options["response_format"] = _AGGREGATOR_FORMATS.get(fmt, fmt)
    if request.safety_tolerance is not None:
        options["safety_tolerance"] = request.safety_tolerance
    if request.prompt_upsampling is not None:
        options["prompt_upsampling"] = request.prompt_upsampling
    return body, options


def send_n(request: GenerationRequest) -> bool:
    """True when ``n`` goes on the wire: Grok models take it; the Flux models make one image
    per task, so there ``n`` must be None or 1 (dropping a larger one would silently charge
    for fewer images than asked)."""
    if request.n is None:
        return False
    if request.model.startswith("grok"):
        return True
    if request.n != 1:
        raise ValidationError(
            "n", request.n, "1", reason=f"{request.model} makes one image per task"
        )
    return False


def inline_image(image: object, index: int) -> str:
    """An image for BFL's JSON body: a string as is (URL or base64), bytes as base64 text."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, str):
        return image
    raise ValidationError(
        f"images[{index}]", image, "a URL, base64 text or bytes", reason="read the file first"
    )


def path_segment(value: str, field: str = "task_id") -> str:
    """``value`` as one URL path segment or query value, as it is: it must be a usable task id
    (unreserved characters only, not only dots; see ``_checks.check_task_id``), so nothing in
    it can be read as ``/``, ``?``, ``#``, ``%`` or a dot segment. Anything else is a
    ValidationError naming ``field``, raised before a request is built."""
    return check_task_id(value, field)


def webhook_target(url: object) -> str:
    """A webhook URL to send as is: an absolute http(s) URL with a host and nothing unprintable.

    The value is not echoed in the error (a receiver URL may carry a token in its query).
    """
    if isinstance(url, str) and url.isprintable() and not any(c.isspace() for c in url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() in ("http", "https") and parts.hostname:
            return url
    shown = f"<{type(url).__name__} of {len(url)} characters>" if isinstance(url, str) else url
    raise ValidationError("webhook_url", shown, "an absolute http(s) URL")


def webhook_secret_field(secret: object) -> str:
    """A webhook secret to send: a non-empty printable string (never echoed in an error)."""
    if isinstance(secret, str) and secret and secret.isprintable():
        return secret
    raise ValidationError("webhook_secret", "<hidden>", "a non-empty printable string")
