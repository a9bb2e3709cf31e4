"""Checking uploaded images and making thumbnails, with Pillow."""

import hashlib
import io
import logging
import struct
import tempfile
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from generation.exceptions import InvalidInput

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
THUMBNAIL_SIZE = 384
THUMBNAIL_EXTENSION = "thumb.jpg"


CHUNK = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MAX_CHUNK = 2**31 - 1  # the PNG specification's limit on a chunk's length


@dataclass(frozen=True)
class VerifiedImage:
    """A checked image: `file` holds exactly the bytes to store (anything after the image's end dropped),
    spooled to disk beyond FILE_UPLOAD_MAX_MEMORY_SIZE; the caller closes it."""

    file: IO[bytes]
    size: int
    width: int
    height: int
    format: str
    sha256: str
    thumbnail: bytes = b""  # JPEG; empty when not asked for

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]

    def close(self) -> None:
        self.file.close()


class _Copy:
    """Copies bytes from an upload into a spooled temporary file, counting and hashing them as they pass;
    past `limit` it counts without keeping (the caller checks `size`)."""

    def __init__(self, source, *, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.size = 0
        self.hash = hashlib.sha256()
        self.out = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (verify_image closes it, or its caller)
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, dir=settings.FILE_UPLOAD_TEMP_DIR
        )

    def take(self, count: int) -> bytes:
        """Copy a few bytes (a header) and return them."""
        data = self.source.read(count)
        self._keep(data)
        return data

    def copy(self, count: int | None = None) -> None:
        """Copy `count` bytes (None: to the end) in chunks, stopping early at the end or past the limit."""
        while (count is None or count > 0) and self.size <= self.limit:
            block = self.source.read(CHUNK if count is None else min(CHUNK, count))
            if not block:
                return
            self._keep(block)
            if count is not None:
                count -= len(block)

    def _keep(self, block: bytes) -> None:
        self.size += len(block)
        if self.size <= self.limit:
            self.out.write(block)
            self.hash.update(block)


def _copy_to_its_end(upload, *, max_bytes: int) -> _Copy:
    """The upload's bytes up to the image's end: a PNG's IEND chunk (every chunk before it kept, ComfyUI's
    tEXt/iTXt/zTXt workflow metadata included), a WebP's RIFF length; other formats whole. What follows is
    not copied. Never holds more than one chunk of the upload in memory."""
    if hasattr(upload, "seek"):
        upload.seek(0)
    copy = _Copy(upload, limit=max_bytes)
    head = copy.take(8)
    if head == PNG_SIGNATURE:
        while copy.size <= copy.limit:  # whole chunks: length, type, data, CRC
            header = copy.take(8)
            if len(header) < 8:
                break  # truncated: Pillow says so
            length, kind = struct.unpack(">I4s", header)
            if length > PNG_MAX_CHUNK:
                break  # not a PNG: Pillow says so
            copy.copy(length + 4)
            if kind == b"IEND":
                break
    else:
        head += copy.take(4)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            riff_size = struct.unpack("<I", head[4:8])[0]
            copy.copy(riff_size + (riff_size & 1) - 4)  # "WEBP" is counted in the RIFF size
        else:
            copy.copy()
    copy.out.seek(0)
    return copy


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
    """Check an upload is a whole PNG/JPEG/WebP of exactly `width`×`height` (any size up to
    MAX_PIXELS_ANY_SIZE when they are None) and copy what is to be stored (the image up to its end, see
    _copy_to_its_end) to a temporary file; with `thumbnail`, also make its thumbnail from the pixels already
    decoded.

    The size is checked from the header before any pixel is decoded, so a decompression bomb is refused
    without being expanded; then every pixel is decoded, so a truncated or corrupt file is refused too. The
    file itself is read in chunks, never whole into memory.
    """
    name = getattr(upload, "name", "upload")
    if getattr(upload, "size", 0) > max_bytes:
        raise InvalidInput(f"{name}: larger than {max_bytes} bytes.", fields={field: [f"{name}: too large."]})
    copy = _copy_to_its_end(upload, max_bytes=max_bytes)
    try:
        if copy.size > max_bytes:
            raise InvalidInput(
                f"{name}: larger than {max_bytes} bytes.", fields={field: [f"{name}: too large."]}
            )
        fmt, size, thumb = _check_pixels(
            copy.out, name=name, width=width, height=height, field=field, thumbnail=thumbnail
        )
    except BaseException:
        copy.out.close()
        raise
    copy.out.seek(0)
    return VerifiedImage(
        file=copy.out,
        size=copy.size,
        width=size[0],
        height=size[1],
        format=fmt,
        sha256=copy.hash.hexdigest(),
        thumbnail=thumb,
    )


def _check_pixels(
    file: IO[bytes], *, name: str, width: int | None, height: int | None, field: str, thumbnail: bool
):
    """(format, (width, height), thumbnail JPEG or b"") of the image in `file`, or InvalidInput."""
    try:
        with PILImage.open(file) as img:
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
        file.seek(0)
        with PILImage.open(file) as img:
            img.load()
            return fmt, size, _thumbnail_or_none(img, name) if thumbnail else b""
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        # Pillow names the file it read (`<tempfile.SpooledTemporaryFile object at 0x…>`) when it knows no
        # format: say so in words instead.
        why = "an unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InvalidInput(
            f"{name}: not a valid image ({why}).", fields={field: [f"{name}: not a valid image."]}
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


def with_mask_alpha(original: IO[bytes], mask: IO[bytes], *, name: str) -> bytes:
    """ComfyUI's /upload/mask: a PNG of the original's RGB with the mask's alpha, the original's PNG text
    chunks (ComfyUI's workflow metadata) kept. Both must be the same size (InvalidInput names `image`)."""
    try:
        with PILImage.open(original) as source, PILImage.open(mask) as alpha:
            metadata = PngInfo()
            for key, value in (getattr(source, "text", None) or {}).items():
                metadata.add_text(key, value)
            if alpha.size != source.size:
                width, height = source.size
                raise InvalidInput(
                    f"{name}: {alpha.size[0]}x{alpha.size[1]}, the original is {width}x{height}.",
                    fields={"image": [f"{name}: the mask must be {width}x{height}, as the original."]},
                )
            combined = source.convert("RGBA")
            combined.putalpha(alpha.convert("RGBA").getchannel("A"))
        out = io.BytesIO()
        combined.save(out, format="PNG", compress_level=4, pnginfo=metadata)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        raise InvalidInput(f"{name}: cannot be combined ({exc}).", fields={"image": [f"{name}: not usable."]})
    return out.getvalue()
