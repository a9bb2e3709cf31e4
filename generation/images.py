"""Checking uploaded images and making thumbnails, with Pillow."""

import hashlib
import io
import logging
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from generation.exceptions import InvalidInput

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
THUMBNAIL_SIZE = 384
THUMBNAIL_EXTENSION = "thumb.jpg"


@dataclass(frozen=True)
class VerifiedImage:
    data: bytes
    width: int
    height: int
    format: str
    sha256: str
    thumbnail: bytes = b""  # JPEG; empty when not asked for

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


MAX_PIXELS_ANY_SIZE = 16384 * 16384  # an image of a whole workflow, whose size the farm cannot know


def verify_image(
    upload,
    *,
    width: int | None,
    height: int | None,
    max_bytes: int,
    field: str = "images",
    thumbnail: bool = False,
) -> VerifiedImage:
    """Read an upload and check it is a whole PNG/JPEG/WebP of exactly `width`×`height` (any size up to
    MAX_PIXELS_ANY_SIZE when they are None); with `thumbnail`, also make its thumbnail from the pixels
    already decoded.

    The size is checked from the header before any pixel is decoded, so a decompression bomb is refused
    without being expanded; then every pixel is decoded, so a truncated or corrupt file is refused too.
    """
    name = getattr(upload, "name", "upload")
    if getattr(upload, "size", 0) > max_bytes:
        raise InvalidInput(f"{name}: larger than {max_bytes} bytes.", fields={field: [f"{name}: too large."]})
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidInput(f"{name}: larger than {max_bytes} bytes.", fields={field: [f"{name}: too large."]})
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
            if fmt not in ALLOWED_FORMATS:
                raise InvalidInput(
                    f"{name}: {fmt} is not accepted.", fields={field: [f"{name}: must be PNG, JPEG or WebP."]}
                )
            if width is None or height is None:
                if size[0] * size[1] > MAX_PIXELS_ANY_SIZE:
                    raise InvalidInput(f"{name}: too many pixels.", fields={field: [f"{name}: too large."]})
            elif size != (width, height):
                raise InvalidInput(
                    f"{name}: {size[0]}x{size[1]}, expected {width}x{height}.",
                    fields={field: [f"{name}: is {size[0]}x{size[1]}, expected {width}x{height}."]},
                )
            img.verify()
        # verify() checks the container (PNG chunk CRCs) but not JPEG or WebP data: decode every pixel too,
        # so a truncated file is refused here rather than failing the thumbnail job later. Bounded: the size
        # was checked above.
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
            thumb = _thumbnail_or_none(img, name) if thumbnail else b""
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        # Pillow names the buffer it read (`<_io.BytesIO object at 0x…>`) when it knows no format: say so in
        # words instead.
        why = "an unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InvalidInput(
            f"{name}: not a valid image ({why}).", fields={field: [f"{name}: not a valid image."]}
        )
    return VerifiedImage(
        data=data,
        width=size[0],
        height=size[1],
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        thumbnail=thumb,
    )


def make_thumbnail(data: bytes, *, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG thumbnail (THUMBNAIL_EXTENSION) whose longer side is at most `size` pixels.

    The periodic job makes the ones a completion could not (see generation.thumbnails).
    """
    with PILImage.open(io.BytesIO(data)) as img:
        return _thumbnail_of(img, size=size)


def _thumbnail_or_none(img: PILImage.Image, name: str) -> bytes:
    """A valid image whose thumbnail cannot be made is still stored; the periodic job tries again."""
    try:
        return _thumbnail_of(img)
    except Exception:
        logger.exception("%s: no thumbnail", name)
        return b""


def _thumbnail_of(img: PILImage.Image, *, size: int = THUMBNAIL_SIZE) -> bytes:
    """Made in the completion request from the pixels it already decoded, so it is on every task's path and
    kept cheap: bilinear resizing rather than Pillow's default bicubic thumbnail(), and JPEG rather than
    WebP, which is slower to encode even at its fastest method (figures: bench/README.md)."""
    width, height = img.size
    scale = min(1.0, size / max(width, height))
    if img.mode != "RGB":
        img = img.convert("RGB")
    if scale < 1.0:
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = img.resize(target, PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=82)
    return out.getvalue()
