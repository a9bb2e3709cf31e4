"""Cheap, deterministic pictures for the simulator: no per-pixel Python loops (figures: bench/README.md).

A text prompt becomes a two-colour gradient with a few shapes whose colours hash from the text and whose
layout and grain come from the seed, so different prompts (or seeds) give visibly different images. The
picture is drawn at 1/_DETAIL of its size and scaled up into pixel blocks, which `encode_png` stores
cheaply (a repeated row costs next to nothing to filter and to deflate).
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib

from PIL import Image, ImageDraw, ImageFilter
from PIL.PngImagePlugin import PngInfo

_GRAIN = 4  # noise is drawn at 1/_GRAIN of the size and scaled up: cheap to make and to compress
_DETAIL = 4  # render_prompt draws at 1/_DETAIL of the size (when that leaves at least 16 px)
_PNG_COLOR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # mode -> (PNG colour type, bytes/pixel)
_GRADIENT_TURNS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
)


def _rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def solid(width: int, height: int, color: int) -> Image.Image:
    """What EmptyImage makes: one colour, given as a 24-bit RGB integer."""
    return Image.new("RGB", (width, height), _rgb(color))


def _noise(width: int, height: int, rng: random.Random, grain: int = _GRAIN) -> Image.Image:
    small_w, small_h = max(1, -(-width // grain)), max(1, -(-height // grain))
    small = Image.frombytes("RGB", (small_w, small_h), rng.randbytes(small_w * small_h * 3))
    return small if grain == 1 else small.resize((width, height), Image.Resampling.NEAREST)


def add_noise(image: Image.Image, seed: int, index: int, strength: float) -> Image.Image:
    """ImageAddNoise: seeded noise blended in; `index` is the position in the batch."""
    rng = random.Random(f"noise:{seed}:{index}")
    return Image.blend(image, _noise(image.width, image.height, rng), min(1.0, strength * 0.6))


def blur(image: Image.Image, sigma: float) -> Image.Image:
    """ImageBlur, approximated: a Gaussian on a reduced copy, scaled back (a few ms even at 1024x1024)."""
    factor = max(1, min(8, int(sigma // 2)))
    if factor > 1 and min(image.size) >= factor * 4:
        small = image.reduce(factor).filter(ImageFilter.GaussianBlur(radius=sigma / factor))
        return small.resize(image.size, Image.Resampling.BILINEAR)
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def render_prompt(width: int, height: int, text: str, seed: int, index: int = 0) -> Image.Image:
    """The 'decoded' picture of a sampled latent: colours from the text, layout and grain from the seed."""
    factor = _DETAIL if min(width, height) >= 16 * _DETAIL else 1
    if factor == 1:
        return _draw(width, height, text, seed, index, _GRAIN)
    small = _draw(-(-width // factor), -(-height // factor), text, seed, index, 1)
    return small.resize((width, height), Image.Resampling.NEAREST)


def _draw(width: int, height: int, text: str, seed: int, index: int, grain: int) -> Image.Image:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    top, bottom = digest[0:3], digest[3:6]
    gradient = Image.linear_gradient("L")
    turn = _GRADIENT_TURNS[digest[6] % 4]
    if turn is not None:
        gradient = gradient.transpose(turn)
    gradient = gradient.resize((width, height), Image.Resampling.BILINEAR)
    picture = Image.composite(
        Image.new("RGB", (width, height), tuple(top)),
        Image.new("RGB", (width, height), tuple(bottom)),
        gradient,
    )
    rng = random.Random(f"layout:{seed}:{index}")
    draw = ImageDraw.Draw(picture)
    short = min(width, height)
    for shape in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(1, short // 8), max(2, short // 3))
        fill = tuple(digest[7 + shape * 3 : 10 + shape * 3])
        if shape % 2:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    return Image.blend(picture, _noise(width, height, rng, grain), 0.12)


def gray(width: int, height: int) -> Image.Image:
    """What decoding an empty latent gives (no sampler ran)."""
    return Image.new("RGB", (width, height), (128, 128, 128))


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes, as ComfyUI encodes its latent previews (quality 95)."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def encode_png(
    image: Image.Image, text_chunks: dict[str, str] | None = None, compress_level: int = 1
) -> bytes:
    """PNG bytes, with tEXt chunks (SaveImage stores the workflow as `prompt`).

    8-bit L/RGB/RGBA images are written here: filter None, or Up (all zeros) for a row equal to the one
    above, then one zlib stream; several times cheaper than Pillow's encoder, which tries every filter on
    every row.
    """
    if image.mode in _PNG_COLOR_TYPES:
        return _encode_rows(image, text_chunks or {}, compress_level)
    info = None
    if text_chunks:
        info = PngInfo()
        for key, value in text_chunks.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _encode_rows(image: Image.Image, text_chunks: dict[str, str], compress_level: int) -> bytes:
    color_type, pixel_bytes = _PNG_COLOR_TYPES[image.mode]
    width, height = image.size
    raw = image.tobytes()
    stride = width * pixel_bytes
    up_row = b"\x02" + bytes(stride)  # filter Up, no change
    rows, previous = [], None
    for start in range(0, stride * height, stride):
        row = raw[start : start + stride]
        rows.append(up_row if row == previous else b"\x00" + row)
        previous = row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    chunks += [_text_chunk(key, value) for key, value in text_chunks.items()]
    chunks += [_chunk(b"IDAT", zlib.compress(b"".join(rows), compress_level)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt when the text is Latin-1, else iTXt (UTF-8), as Pillow's PngInfo.add_text does."""
    keyword = key.encode("latin-1", "strict")
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1", "strict"))
    except UnicodeError:
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
