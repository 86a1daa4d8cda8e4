"""Small, real, deterministic images for the emulator's result URLs: PNG and baseline JPEG.

The picture is a mosaic of flat 8x8 cells (a diagonal gradient between two colours picked
from the prompt, with a checker tint), 64 px on the short side at the requested aspect ratio.
Flat cells make both encoders cheap: the PNG is rows of repeated bytes through zlib, and every
JPEG block has only a DC coefficient, so no DCT is needed while the file stays an ordinary
baseline JFIF (SOI, APP0, DQT, SOF0, DHT, SOS, EOI) that any decoder reads.

Standard library only.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import OrderedDict

__all__ = ["ImageCache", "dimensions", "encode_jpeg", "encode_png", "render"]

SHORT_SIDE = 64
_CELL = 8


def dimensions(ratio: str, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(width, height) of an image of aspect ``ratio`` ("W:H"; anything else means 1:1)."""
    try:
        w_text, h_text = ratio.split(":")
        w, h = float(w_text), float(h_text)
    except ValueError:
        w = h = 1.0
    if not (w > 0 and h > 0):
        w = h = 1.0
    if w >= h:
        return round(short_side * w / h), short_side
    return short_side, round(short_side * h / w)


def render(seed_text: str, width: int, height: int) -> list[list[tuple[int, int, int]]]:
    """The colour of every 8x8 cell, rows of cells, a pure function of ``seed_text``."""
    d = hashlib.blake2b(seed_text.encode(), digest_size=8).digest()
    c0 = (d[0], d[1], d[2])
    c1 = (d[3], d[4], d[5])
    tint = 16 + d[6] % 32
    cols = -(-width // _CELL)
    rows = -(-height // _CELL)
    span = max(1, cols + rows - 2)
    cells: list[list[tuple[int, int, int]]] = []
    for cy in range(rows):
        row: list[tuple[int, int, int]] = []
        for cx in range(cols):
            t = (cx + cy) / span
            bump = tint if (cx + cy) % 2 else 0
            row.append(
                (
                    min(255, round(c0[0] + (c1[0] - c0[0]) * t) + bump),
                    min(255, round(c0[1] + (c1[1] - c0[1]) * t) + bump),
                    min(255, round(c0[2] + (c1[2] - c0[2]) * t) + bump),
                )
            )
        cells.append(row)
    return cells


# -- PNG -------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(cells: list[list[tuple[int, int, int]]], width: int, height: int) -> bytes:
    """An 8-bit RGB PNG of the cell mosaic."""
    raw = bytearray()
    for y in range(height):
        row = cells[y // _CELL]
        line = b"".join(bytes(c) * _CELL for c in row)[: width * 3]
        raw += b"\x00" + line  # filter type 0 (None)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(raw), 6))
        + _chunk(b"IEND", b"")
    )


# -- JPEG ------------------------------------------------------------------------------------------

# ITU T.81 Annex K.1 luminance table in zig-zag order, with the DC step set to 8 so that a flat
# block's level (value - 128) is its quantised DC coefficient exactly.
_QUANT = bytes(
    [8, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35,
     37, 29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109,
     81, 87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99]
)  # fmt: skip
# Annex K.3 DC luminance table (categories 0..11), shared by all three components.
_DC_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
_DC_VALS = bytes(range(12))
# Every block is flat, so the only AC symbol ever written is EOB (0x00): a one-code table.
_AC_BITS = bytes([1] + [0] * 15)
_AC_VALS = bytes([0x00])


def _canonical_codes(bits: bytes, vals: bytes) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length) for a JPEG Huffman table given as BITS/HUFFVAL (Annex C)."""
    codes: dict[int, tuple[int, int]] = {}
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


_DC_CODES = _canonical_codes(_DC_BITS, _DC_VALS)
_EOB = _canonical_codes(_AC_BITS, _AC_VALS)[0]


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _ycc(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return (
        max(0, min(255, round(y))),
        max(0, min(255, round(cb))),
        max(0, min(255, round(cr))),
    )


def encode_jpeg(cells: list[list[tuple[int, int, int]]], width: int, height: int) -> bytes:
    """A baseline JFIF JPEG (YCbCr 4:4:4, one flat block per cell) of the cell mosaic."""
    acc = 0  # bit accumulator
    nbits = 0
    out = bytearray()

    def put(code: int, length: int) -> None:
        nonlocal acc, nbits
        acc = (acc << length) | code
        nbits += length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << nbits) - 1

    pred = [0, 0, 0]
    for row in cells:
        for rgb in row:
            ycc = _ycc(rgb)
            for comp in range(3):
                level = ycc[comp] - 128  # quantised DC of a flat block (step 8)
                diff = level - pred[comp]
                pred[comp] = level
                size = abs(diff).bit_length()
                code, length = _DC_CODES[size]
                put(code, length)
                if size:
                    put(diff if diff > 0 else diff + (1 << size) - 1, size)
                put(*_EOB)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with one-bits

    app0 = b"JFIF\x00" + struct.pack(">BBBHHBB", 1, 1, 0, 1, 1, 0, 0)
    dqt = b"\x00" + _QUANT
    sof0 = struct.pack(">BHHB", 8, height, width, 3) + b"".join(
        struct.pack(">BBB", cid, 0x11, 0) for cid in (1, 2, 3)
    )
    dht = b"\x00" + _DC_BITS + _DC_VALS + b"\x10" + _AC_BITS + _AC_VALS
    sos = struct.pack(">B", 3) + b"".join(struct.pack(">BB", cid, 0x00) for cid in (1, 2, 3))
    sos += bytes([0, 63, 0])
    return (
        b"\xff\xd8"
        + _segment(0xE0, app0)
        + _segment(0xDB, dqt)
        + _segment(0xC0, sof0)
        + _segment(0xC4, dht)
        + _segment(0xDA, sos)
        + bytes(out)
        + b"\xff\xd9"
    )


class ImageCache:
    """Generated images by (prompt, ratio, format, index), least recently used evicted first."""

    __slots__ = ("_items", "capacity", "hits", "misses")

    def __init__(self, capacity: int = 2048) -> None:
        self._items: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()
        self.capacity = capacity
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str, ratio: str, fmt: str, index: int = 0) -> bytes:
        """The image bytes; ``fmt`` is ``png`` or ``jpg``/``jpeg``."""
        key = (prompt, ratio, fmt, index)
        data = self._items.get(key)
        if data is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return data
        self.misses += 1
        width, height = dimensions(ratio)
        cells = render(f"{index}:{prompt}", width, height)
        if fmt == "png":
            data = encode_png(cells, width, height)
        else:
            data = encode_jpeg(cells, width, height)
        self._items[key] = data
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return data

    def __len__(self) -> int:
        return len(self._items)
