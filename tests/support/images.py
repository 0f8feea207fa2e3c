"""Image files as bytes, made on the spot: what tests upload, serve or store as job images."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    """One image of one colour in a format Pillow writes (PNG, JPEG, WEBP, GIF, BMP...).

    GIF is written as a palette image (its only mode); `color` does not apply to it.
    """
    buffer = io.BytesIO()
    if fmt == "GIF":
        Image.new("P", size, 1).save(buffer, fmt)
    else:
        Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def single_colour_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of one colour: tens of KB on disk, width x height decoded.

    Written row by row, as Pillow would need the whole decoded image in memory to write it: the
    decompression bomb of the upload tests.
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def many_scans_jpeg(side: int, scans: int) -> bytes:
    """A valid progressive greyscale JPEG, then `scans` more scans of one EOB run each: a few
    dozen bytes a scan, each decoded over every 8x8 block of the image (the scan bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=90)
    base = buffer.getvalue()
    start = base.index(b"\xff\xda")
    head, body = base[:start], base[start:-2]  # up to the first scan; the scans, without EOI
    # An AC table with one 1-bit code for symbol 0xE0 (an EOB run of 14 more bits).
    dht = b"\xff\xc4" + struct.pack(">H", 20) + bytes([0x11, 1] + [0] * 15 + [0xE0])
    bits, left = "", ((side + 7) // 8) ** 2
    while left > 0:
        bits += "0" + "1" * 14  # EOBRUN = 2^14 + 16383 blocks
        left -= 32767
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for index in range(0, len(bits), 8):
        data.append(int(bits[index : index + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)  # byte stuffing
    # One component (1), DC table 0 / AC table 1, spectral 1..63, no approximation.
    scan = b"\xff\xda" + struct.pack(">H", 8) + bytes([1, 1, 0x01, 1, 63, 0]) + bytes(data)
    return head + body + dht + scan * scans + b"\xff\xd9"
