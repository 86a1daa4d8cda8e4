"""The emulator's result images are real files: a PNG with valid chunks and CRCs, a baseline
JFIF JPEG with the markers a decoder needs, both at the requested aspect ratio (64 px on the
short side), deterministic from the prompt. The JPEG is decoded here by a small independent
baseline decoder and compared with the PNG pixel for pixel.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from flux_async.emulator import DEFAULT_API_KEY, Emulator, ManualClock, Scenario
from flux_async.emulator._images import ImageCache, dimensions

BEARER = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
XKEY = {"x-key": DEFAULT_API_KEY}


# -- format readers (independent of the encoders) --------------------------------------------------


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes); checks the signature, every CRC and the filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    chunks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = []
    for y in range(height):
        assert raw[y * stride] == 0  # filter type None
        rows.append(raw[y * stride + 1 : (y + 1) * stride])
    return width, height, rows


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Marker segments up to SOS (marker, payload), and the entropy-coded data after it."""
    assert data[:2] == b"\xff\xd8"
    assert data[-2:] == b"\xff\xd9"
    pos = 2
    segments = []
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:
            return segments, data[pos:-2]


def _huffman(bits: bytes, vals: bytes) -> dict[tuple[int, int], int]:
    table = {}
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            table[(length, code)] = vals[k]
            k += 1
            code += 1
        code <<= 1
    return table


def decode_baseline_jpeg(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """Decode a baseline 3-component 4:4:4 JPEG whose blocks carry only DC energy: returns
    (width, height, RGB colour of every 8x8 block). Fails on anything it does not understand."""
    segments, scan = jpeg_segments(data)
    markers = [m for m, _ in segments]
    assert markers == [0xE0, 0xDB, 0xC0, 0xC4, 0xDA]
    app0 = segments[0][1]
    assert app0[:5] == b"JFIF\x00"
    dqt = segments[1][1]
    assert len(dqt) == 65
    assert dqt[0] == 0  # 8-bit table 0
    assert all(1 <= q <= 255 for q in dqt[1:])
    sof = segments[2][1]
    precision, height, width, ncomp = struct.unpack(">BHHB", sof[:6])
    assert (precision, ncomp) == (8, 3)
    for i in range(3):
        cid, sampling, tq = sof[6 + 3 * i : 9 + 3 * i]
        assert (cid, sampling, tq) == (i + 1, 0x11, 0)
    tables: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    dht = segments[3][1]
    pos = 0
    while pos < len(dht):
        tc_th = dht[pos]
        bits = dht[pos + 1 : pos + 17]
        count = sum(bits)
        tables[(tc_th >> 4, tc_th & 15)] = _huffman(bits, dht[pos + 17 : pos + 17 + count])
        pos += 17 + count
    sos = segments[4][1]
    assert sos[0] == 3
    assert sos[-3:] == bytes([0, 63, 0])
    selectors = [(sos[2 + 2 * i] >> 4, sos[2 + 2 * i] & 15) for i in range(3)]

    # Unstuff: every 0xFF in the scan is followed by 0x00.
    raw = bytearray()
    i = 0
    while i < len(scan):
        raw.append(scan[i])
        if scan[i] == 0xFF:
            assert scan[i + 1] == 0x00
            i += 1
        i += 1
    bitpos = 0

    def bit() -> int:
        nonlocal bitpos
        value = (raw[bitpos >> 3] >> (7 - (bitpos & 7))) & 1
        bitpos += 1
        return value

    def symbol(table: dict[tuple[int, int], int]) -> int:
        code = 0
        for length in range(1, 17):
            code = (code << 1) | bit()
            if (length, code) in table:
                return table[(length, code)]
        raise AssertionError("bad Huffman code")

    def extend(size: int) -> int:
        value = 0
        for _ in range(size):
            value = (value << 1) | bit()
        return value if value >= 1 << (size - 1) else value - (1 << size) + 1

    cols, rows = -(-width // 8), -(-height // 8)
    pred = [0, 0, 0]
    q0 = dqt[1]
    blocks: list[list[tuple[int, int, int]]] = []
    for _ in range(rows):
        row = []
        for _ in range(cols):
            ycc = []
            for comp in range(3):
                dc_table, ac_table = selectors[comp]
                size = symbol(tables[(0, dc_table)])
                pred[comp] += extend(size) if size else 0
                # AC: the first symbol must be EOB (flat blocks have no AC energy)
                assert symbol(tables[(1, ac_table)]) == 0x00, "unexpected AC coefficient"
                ycc.append(pred[comp] * q0 / 8 + 128)  # IDCT of a DC-only block
            y, cb, cr = ycc
            rgb = (y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                   y + 1.772 * (cb - 128))
            row.append(tuple(max(0, min(255, round(c))) for c in rgb))
        blocks.append(row)  # type: ignore[arg-type]
    assert (bitpos + 7) // 8 == len(raw)  # the scan ends where the data ends (1-bit padding)
    return width, height, blocks


# -- the encoders ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("1:1", (64, 64)), ("16:9", (114, 64)), ("9:16", (64, 114)), ("21:9", (149, 64)),
     ("9:21", (64, 149)), ("4:3", (85, 64)), ("2:3", (64, 96)), ("match_input_image", (64, 64))],
)
def test_dimensions(ratio: str, size: tuple[int, int]) -> None:
    assert dimensions(ratio) == size


@pytest.mark.parametrize("ratio", ["1:1", "16:9", "9:21", "21:9", "3:7"])
def test_png_and_jpeg_are_valid_and_agree(ratio: str) -> None:
    cache = ImageCache()
    png = cache.get("a red fox", ratio, "png")
    jpeg = cache.get("a red fox", ratio, "jpeg")
    width, height, rows = read_png(png)
    assert (width, height) == dimensions(ratio)
    jw, jh, blocks = decode_baseline_jpeg(jpeg)
    assert (jw, jh) == (width, height)
    for by, block_row in enumerate(blocks):
        for bx, colour in enumerate(block_row):
            x, y = min(bx * 8 + 4, width - 1), min(by * 8 + 4, height - 1)
            pixel = tuple(rows[y][3 * x : 3 * x + 3])
            assert all(abs(a - b) <= 2 for a, b in zip(colour, pixel, strict=True)), (bx, by)


def test_images_are_deterministic_and_differ_by_prompt() -> None:
    a, b = ImageCache(), ImageCache()
    assert a.get("prompt one", "16:9", "png") == b.get("prompt one", "16:9", "png")
    assert a.get("prompt one", "16:9", "jpg") == b.get("prompt one", "16:9", "jpg")
    assert a.get("prompt one", "16:9", "png") != a.get("prompt two", "16:9", "png")
    assert a.get("prompt one", "16:9", "png", 0) != a.get("prompt one", "16:9", "png", 1)


def test_cache_is_bounded() -> None:
    cache = ImageCache(capacity=3)
    for i in range(10):
        cache.get(f"p{i}", "1:1", "png")
    assert len(cache) == 3
    cache.get("p9", "1:1", "png")
    assert cache.hits == 1
    assert cache.misses == 10


# -- served by the emulator ------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.anyio
async def test_served_images_follow_the_request(http: aiohttp.ClientSession) -> None:
    async with Emulator(Scenario(), clock=ManualClock()) as emu:
        cases = [
            ("toapis", {"model": "flux-kontext-pro", "prompt": "x"}, (114, 64), b"\xff\xd8"),
            ("toapis", {"model": "grok-4-1-image", "prompt": "x", "size": "2:3",
                        "metadata": {"response_format": "png"}}, (64, 96), b"\x89PNG"),
            ("apimart", {"model": "flux-kontext-pro", "prompt": "x", "size": "4:3"}, (85, 64),
             b"\x89PNG"),
            ("apimart", {"model": "flux-kontext-pro", "prompt": "x", "response_format": "jpg"},
             (114, 64), b"\xff\xd8"),
            ("bfl", {"prompt": "x", "aspect_ratio": "9:21", "output_format": "png"}, (64, 149),
             b"\x89PNG"),
            ("bfl", {"prompt": "x"}, (64, 64), b"\xff\xd8"),
        ]
        for provider, body, size, magic in cases:
            if provider == "bfl":
                async with http.post(emu.base_url("bfl") + "/v1/flux-kontext-pro", headers=XKEY,
                                     json=body) as resp:
                    poll_url = (await resp.json())["polling_url"]
                async with http.get(poll_url, headers=XKEY) as resp:
                    url = (await resp.json())["result"]["sample"]
            else:
                async with http.post(emu.base_url(provider) + "/v1/images/generations",
                                     headers=BEARER, json=body) as resp:
                    sub = await resp.json()
                if provider == "toapis":
                    poll = emu.base_url("toapis") + "/v1/images/generations/" + sub["id"]
                    async with http.get(poll, headers=BEARER) as resp:
                        url = (await resp.json())["result"]["data"][0]["url"]
                else:
                    poll = emu.base_url("apimart") + "/v1/tasks/" + sub["data"][0]["task_id"]
                    async with http.get(poll, headers=BEARER) as resp:
                        url = (await resp.json())["data"]["result"]["images"][0]["url"][0]
            async with http.get(url) as resp:
                data = await resp.read()
            assert data.startswith(magic), (provider, body)
            if magic == b"\x89PNG":
                width, height, _ = read_png(data)
            else:
                width, height, _ = decode_baseline_jpeg(data)
            assert (width, height) == size, (provider, body)
