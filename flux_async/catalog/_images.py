"""What an input image is: a URL sent as is, or a local path or bytes to upload; and its format
from its first bytes. Pure: no I/O at all (the one look at a local file is ``_validate``'s), no
aiohttp/anyio, nothing from session, transport or scheduler; imports only ``flux_async.errors``.

``session.py`` uses these functions directly for a request's images and for a direct upload;
the model tables name the MIME types defined here.
"""

from __future__ import annotations

import os
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

from ..errors import ValidationError

__all__ = [
    "GIF",
    "JPEG",
    "PNG",
    "SNIFF_BYTES",
    "WEBP",
    "ImageKind",
    "classify_image",
    "error_value",
    "sniff_image_type",
]

#: How an input image reaches the provider: sent as a URL, or read from a path / bytes and uploaded.
ImageKind: TypeAlias = Literal["url", "path", "bytes"]

JPEG, PNG, WEBP, GIF = "image/jpeg", "image/png", "image/webp", "image/gif"

#: Magic bytes: (mime type, ((offset, bytes), ...)); every part must match.
_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    (PNG, ((0, b"\x89PNG\r\n\x1a\n"),)),
    (JPEG, ((0, b"\xff\xd8\xff"),)),
    (WEBP, ((0, b"RIFF"), (8, b"WEBP"))),
    (GIF, ((0, b"GIF87a"),)),
    (GIF, ((0, b"GIF89a"),)),
)
#: How many leading bytes :func:`sniff_image_type` needs to tell every format above apart.
SNIFF_BYTES = 12


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of an image from its first bytes (PNG, JPEG, WebP, GIF), or None."""
    for mime, parts in _MAGIC:
        if all(data.startswith(magic, offset) for offset, magic in parts):
            return mime
    return None


def error_value(value: object) -> object:
    """What an error keeps of an image: bytes are summarised, never held or repr'd whole."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


_IMAGE_ALLOWED = "an http(s) URL, a local file path (str or os.PathLike) or bytes"


def classify_image(value: object, *, index: int = 0) -> ImageKind:
    """Whether an input image is a URL (sent as is), a local path or bytes (both uploaded).

    A str containing ``://`` or starting with ``data:`` is a URL and must be http(s) with a
    host; any other str, or an ``os.PathLike``, is a path. Raises ValidationError on
    ``images[index]`` for anything else (data URIs, ftp://, file://, other types).
    """
    field = f"images[{index}]"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if (b"\0" if isinstance(path, bytes) else "\0") in path:
            raise ValidationError(field, value, _IMAGE_ALLOWED, reason="the path contains a NUL byte")
        return "path"
    if not isinstance(value, str):
        reason = f"unsupported image type {type(value).__name__}"
        if isinstance(value, bytearray | memoryview):
            reason += "; pass bytes(...)"
        raise ValidationError(field, error_value(value), _IMAGE_ALLOWED, reason=reason)
    if not value:
        raise ValidationError(field, value, _IMAGE_ALLOWED, reason="empty string")
    if value[:5].lower() == "data:":
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason="base64/data URIs are not accepted; pass bytes or a path",
        )
    if "://" not in value:
        if "\0" in value:  # no file can be named so; os.stat would raise ValueError
            raise ValidationError(field, value, _IMAGE_ALLOWED, reason="the path contains a NUL byte")
        return "path"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValidationError(
            field, value, _IMAGE_ALLOWED, reason=f"malformed URL: {exc}"
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason=f"only http(s) URLs are accepted (scheme {parts.scheme!r}); pass a local file "
            "as a path or bytes (a file whose name contains '://' as a pathlib.Path)",
        )
    if not parts.hostname:
        raise ValidationError(field, value, _IMAGE_ALLOWED, reason="the URL has no host")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason="the URL contains whitespace or control characters (percent-encode them)",
        )
    return "url"
