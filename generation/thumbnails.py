"""Thumbnails: made once per image with Pillow and stored beside the original."""

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generation.images import THUMBNAIL_EXTENSION, make_thumbnail
from generation.models import Image


def image_make_thumbnail(*, image: Image) -> str:
    with default_storage.open(image.file.name, "rb") as f:
        data = f.read()
    stem = image.file.name.rsplit(".", 1)[0]
    name = default_storage.save(f"{stem}.{THUMBNAIL_EXTENSION}", ContentFile(make_thumbnail(data)))
    try:
        Image.objects.filter(pk=image.pk).update(thumbnail=name)
    except BaseException:
        default_storage.delete(name)  # no row names it: the periodic job makes it again
        raise
    image.thumbnail = name
    return name


def images_make_missing_thumbnails(*, limit: int = 200) -> int:
    """Periodic job: thumbnails for images that have none yet (e.g. the after-commit hook failed)."""
    count = 0
    for image in Image.objects.filter(thumbnail="").order_by("id")[:limit]:
        if default_storage.exists(image.file.name):
            image_make_thumbnail(image=image)
            count += 1
    return count
