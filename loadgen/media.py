"""Small synthetic images and video frames, encoded as PNG with the standard library only."""

from __future__ import annotations

import random
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """PNG (8-bit RGB, no interlace) of `width` x `height` pixels from row-major RGB bytes."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"need {width * height * 3} RGB bytes, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


def synthetic_image(seed: int, width: int = 64, height: int = 64, phase: float = 0.0) -> bytes:
    """A seeded PNG: a colour gradient with a square whose position moves with `phase` (0..1)."""
    rng = random.Random(seed)
    base = [rng.randrange(256) for _ in range(3)]
    box = [rng.randrange(256) for _ in range(3)]
    side = max(4, width // 4)
    x0 = int((width - side) * phase)
    y0 = rng.randrange(max(1, height - side))
    px = bytearray()
    for y in range(height):
        for x in range(width):
            if x0 <= x < x0 + side and y0 <= y < y0 + side:
                px += bytes(box)
            else:
                px += bytes(((base[0] + x * 3) % 256, (base[1] + y * 3) % 256, base[2]))
    return encode_png(width, height, bytes(px))


def synthetic_frames(seed: int, count: int = 32, width: int = 64, height: int = 64) -> list[bytes]:
    """`count` PNG frames of one seeded clip (the square moves across the frame)."""
    return [synthetic_image(seed, width, height, phase=i / max(1, count - 1)) for i in range(count)]
