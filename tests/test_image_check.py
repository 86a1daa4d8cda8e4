"""A downloaded image is whole: the pure checks on its first and last bytes (PNG ``IEND``,
JPEG ``EOI`` with a little zero padding, WebP's RIFF length), over hand-built byte strings.

The transport streams a result to disk and keeps only its head and tail; every case here is
checked both on the whole bytes and in that streamed form, which must agree.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from flux_async import transport
from flux_async._image_check import (
    HEAD_BYTES,
    JPEG_MAX_PADDING,
    PNG_IEND,
    TAIL_BYTES,
    ImageDefect,
    check_image,
    image_defect,
    sniff_image_type,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png() -> bytes:
    raw = b"".join(b"\x00" + b"\x10\x20\x30" * 4 for _ in range(4))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _webp(payload: int) -> bytes:
    """A RIFF/WebP file with one VP8 chunk of ``payload`` bytes, padded as RIFF says."""
    body = b"VP8 " + struct.pack("<I", payload) + b"\x9d" * payload + b"\x00" * (payload % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


PNG = _png()
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x7a" * 300 + b"\xff\xd9"
WEBP = _webp(200)
WEBP_ODD = _webp(201)


def _streamed(data: bytes) -> ImageDefect | None:
    """What the transport asks: only the head, the tail and the length."""
    ext = sniff_image_type(data[:HEAD_BYTES])
    assert ext is not None
    return image_defect(ext, data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data))


def _both(data: bytes) -> ImageDefect | None:
    whole = check_image(data)
    assert _streamed(data) == whole
    return whole


@pytest.mark.parametrize("data", [PNG, JPEG, WEBP, WEBP_ODD], ids=["png", "jpeg", "webp", "webp-odd"])
def test_a_whole_image_passes(data: bytes) -> None:
    assert PNG.endswith(PNG_IEND)
    assert _both(data) is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (PNG[:-1], "IEND"),
        (PNG[:-6], "IEND"),  # cut inside the IEND chunk
        (PNG[: len(PNG) // 2], "IEND"),  # cut mid-IDAT
        (PNG[:33], "IEND"),  # signature and IHDR only
        (JPEG[:-1], "FF D9"),
        (JPEG[:-2], "FF D9"),
        (JPEG[:40], "FF D9"),
        (WEBP[:-1], "declares 220 bytes, 219 arrived"),
        (WEBP[:100], "declares 220 bytes, 100 arrived"),
        (WEBP[:12], "declares 220 bytes, 12 arrived"),
    ],
    ids=["png-1", "png-mid-iend", "png-mid-idat", "png-no-idat", "jpeg-1", "jpeg-2", "jpeg-half",
         "webp-1", "webp-half", "webp-header"],
)
def test_an_image_cut_short_is_a_truncated_defect(data: bytes, words: str) -> None:
    defect = _both(data)
    assert defect is not None
    assert defect.truncated
    assert words in defect.reason


@pytest.mark.parametrize("data", [PNG, JPEG, WEBP, WEBP_ODD], ids=["png", "jpeg", "webp", "webp-odd"])
def test_every_shorter_prefix_is_refused(data: bytes) -> None:
    for size in range(HEAD_BYTES, len(data)):
        defect = _both(data[:size])
        assert defect is not None, size
        assert defect.truncated, size


def test_jpeg_zero_padding_after_the_end_marker_is_tolerated_up_to_the_limit() -> None:
    assert _both(JPEG + bytes(1)) is None
    assert _both(JPEG + bytes(JPEG_MAX_PADDING)) is None
    too_much = _both(JPEG + bytes(JPEG_MAX_PADDING + 1))
    assert too_much is not None
    assert not too_much.truncated
    assert "zero bytes after its end-of-image marker" in too_much.reason
    # Anything but zeros after the marker reads as a file cut short.
    other = _both(JPEG + b"\x01")
    assert other is not None
    assert "FF D9" in other.reason


def test_bytes_after_a_png_iend_are_refused_but_not_as_truncation() -> None:
    defect = _both(PNG + b"junk")
    assert defect == ImageDefect("PNG has 4 bytes after its IEND chunk", truncated=False)


def test_a_webp_longer_than_its_riff_size_is_refused_but_not_as_truncation() -> None:
    defect = _both(WEBP + b"\x00\x00")
    assert defect is not None
    assert not defect.truncated
    assert "2 bytes after the end its RIFF header declares" in defect.reason


def test_a_webp_whose_riff_size_leaves_out_the_padding_byte_is_accepted() -> None:
    # An odd payload: a writer that counted it without RIFF's zero pad byte.
    unpadded = WEBP_ODD[:4] + struct.pack("<I", len(WEBP_ODD) - 9) + WEBP_ODD[8:]
    assert _both(unpadded) is None
    # ... but only a zero byte is padding.
    assert _both(unpadded[:-1] + b"\x01") is not None


def test_bytes_that_are_no_image_are_a_defect_and_the_sniffer_is_shared() -> None:
    assert check_image(b"<html>not an image</html>") == ImageDefect(
        "not a PNG, JPEG or WebP image (magic bytes)", truncated=False
    )
    assert transport.sniff_image_type is sniff_image_type
    with pytest.raises(ValueError, match="unknown image type"):
        image_defect("gif", b"GIF89a", b"", 6)
