"""Cheap, deterministic pictures for the simulator: no per-pixel Python loops, a 512x512 PNG in ~10 ms.

A text prompt becomes a two-colour gradient with a few shapes whose colours hash from the text and whose
layout and grain come from the seed, so different prompts (or seeds) give visibly different images.
"""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageFilter
from PIL.PngImagePlugin import PngInfo

_GRAIN = 4  # noise is drawn at 1/_GRAIN of the size and scaled up: cheap to make and to compress
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


def _noise(width: int, height: int, rng: random.Random) -> Image.Image:
    small_w, small_h = max(1, -(-width // _GRAIN)), max(1, -(-height // _GRAIN))
    small = Image.frombytes("RGB", (small_w, small_h), rng.randbytes(small_w * small_h * 3))
    return small.resize((width, height), Image.Resampling.NEAREST)


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
    return Image.blend(picture, _noise(width, height, rng), 0.12)


def gray(width: int, height: int) -> Image.Image:
    """What decoding an empty latent gives (no sampler ran)."""
    return Image.new("RGB", (width, height), (128, 128, 128))


def encode_png(
    image: Image.Image, text_chunks: dict[str, str] | None = None, compress_level: int = 1
) -> bytes:
    """PNG bytes, with tEXt chunks (SaveImage stores the workflow as `prompt`)."""
    info = None
    if text_chunks:
        info = PngInfo()
        for key, value in text_chunks.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()
