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
