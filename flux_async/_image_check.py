"""Whether downloaded bytes are a whole image: the type from the first bytes, and the checks on
the first and last bytes that tell a complete PNG, JPEG or WebP from one cut short.

Pure: no I/O, no clock, no aiohttp. The transport keeps the first :data:`HEAD_BYTES` and the
last :data:`TAIL_BYTES` of a body while it streams (to disk or to memory) and asks
:func:`image_defect` once the body has ended, so a large file is checked without being held in
memory. The rules, per format:

- **PNG** ends with a complete ``IEND`` chunk, the 12 bytes ``00 00 00 00 49 45 4E 44 AE 42 60
  82``. Bytes after it are refused too (a decoder would ignore them; a correct encoder never
  writes them).
- **JPEG** ends with the end-of-image marker ``FF D9``, followed by at most
  :data:`JPEG_MAX_PADDING` zero bytes (some encoders and cameras pad a file with zeros; any
  other byte after the last ``FF D9`` reads as a file cut short).
- **WebP**: the RIFF size (little-endian u32 at bytes 4..8) equals the length of the file
  minus 8. RIFF pads an odd-sized payload with one zero byte; a writer that counted the payload
  without that byte is accepted too.

A body that ends before the image does (``truncated``) is what a connection cut short gives, so
fetching it again may work; bytes beyond the image's end would come back the same.
"""

from __future__ import annotations

import attrs

__all__ = [
    "HEAD_BYTES",
    "JPEG_MAX_PADDING",
    "PNG_IEND",
    "TAIL_BYTES",
    "ImageDefect",
    "check_image",
    "image_defect",
    "sniff_image_type",
]

#: How many leading bytes :func:`sniff_image_type` and :func:`image_defect` read.
HEAD_BYTES = 12
#: How many trailing bytes :func:`image_defect` needs: a JPEG's marker and its padding.
TAIL_BYTES = 80
#: The most zero bytes accepted after a JPEG's end-of-image marker.
JPEG_MAX_PADDING = 64
#: A PNG's last chunk, whole: length 0, type ``IEND``, its CRC.
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (_PNG_SIGNATURE, 0, "png"),
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"WEBP", 8, "webp"),
)


def sniff_image_type(head: bytes) -> str | None:
    """The file extension ("png", "jpg", "webp") matching an image's first bytes, or None."""
    for magic, offset, ext in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (ext != "webp" or head[:4] == b"RIFF"):
            return ext
    return None


@attrs.frozen
class ImageDefect:
    """Why bytes are not a whole image. ``truncated``: the body ends before the image does."""

    reason: str
    truncated: bool


def image_defect(ext: str, head: bytes, tail: bytes, size: int) -> ImageDefect | None:
    """What is wrong with an image of type ``ext`` (as :func:`sniff_image_type` named it), or
    None when it is whole.

    ``head`` is its first :data:`HEAD_BYTES` bytes (fewer if it is shorter), ``tail`` its last
    :data:`TAIL_BYTES` (or all of it), ``size`` its length in bytes.
    """
    if ext == "png":
        return _png_defect(tail, size)
    if ext == "jpg":
        return _jpeg_defect(tail, size)
    if ext == "webp":
        return _webp_defect(head, tail, size)
    raise ValueError(f"unknown image type {ext!r}")


def check_image(data: bytes) -> ImageDefect | None:
    """What is wrong with ``data`` as a PNG, JPEG or WebP image, or None when it is one, whole."""
    ext = sniff_image_type(data[:HEAD_BYTES])
    if ext is None:
        return ImageDefect("not a PNG, JPEG or WebP image (magic bytes)", truncated=False)
    return image_defect(ext, data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data))


def _png_defect(tail: bytes, size: int) -> ImageDefect | None:
    if size >= len(_PNG_SIGNATURE) + len(PNG_IEND) and tail.endswith(PNG_IEND):
        return None
    at = tail.rfind(PNG_IEND)
    if at >= 0 and size - (len(tail) - at) >= len(_PNG_SIGNATURE):
        extra = len(tail) - at - len(PNG_IEND)
        return ImageDefect(f"PNG has {extra} bytes after its IEND chunk", truncated=False)
    return ImageDefect("PNG is cut short: it does not end with a complete IEND chunk", truncated=True)


def _jpeg_defect(tail: bytes, size: int) -> ImageDefect | None:
    body = tail.rstrip(b"\x00")
    padding = len(tail) - len(body)
    if body.endswith(_JPEG_EOI) and size - padding >= 4:
        if padding <= JPEG_MAX_PADDING:
            return None
        return ImageDefect(
            f"JPEG has more than {JPEG_MAX_PADDING} zero bytes after its end-of-image marker",
            truncated=False,
        )
    return ImageDefect("JPEG is cut short: it does not end with an end-of-image marker (FF D9)", truncated=True)


def _webp_defect(head: bytes, tail: bytes, size: int) -> ImageDefect | None:
    if len(head) < HEAD_BYTES:
        return ImageDefect("WebP is cut short: no whole RIFF header", truncated=True)
    declared = int.from_bytes(head[4:8], "little")
    actual = size - 8
    if declared == actual:
        return None
    if declared % 2 == 1 and declared + 1 == actual and tail.endswith(b"\x00"):
        return None  # the padding byte of an odd-sized payload, left out of the RIFF size
    if declared > actual:
        return ImageDefect(
            f"WebP is cut short: its RIFF header declares {declared + 8} bytes, {size} arrived",
            truncated=True,
        )
    return ImageDefect(
        f"WebP has {actual - declared} bytes after the end its RIFF header declares", truncated=False
    )
