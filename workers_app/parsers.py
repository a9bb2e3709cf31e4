"""The parser for image uploads (`complete`): multipart with a cap on the whole body."""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.parsers import MultiPartParser


def upload_limit() -> int:
    """Bytes a completion may send: BATCH_MAX images of MAX_IMAGE_BYTES each, at most MAX_TASK_UPLOAD_BYTES
    together, plus the form fields."""
    t2i = settings.T2I
    images = min(t2i["MAX_IMAGE_BYTES"] * t2i["BATCH_MAX"], t2i["MAX_TASK_UPLOAD_BYTES"])
    return images + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class ImageUploadParser(MultiPartParser):
    """multipart/form-data, refused (413) from its Content-Length before a byte is read when it is larger than
    any completion can be. Django caps only the form fields (DATA_UPLOAD_MAX_MEMORY_SIZE) and spools files of
    any size to disk; each image is checked against T2I_MAX_IMAGE_BYTES afterwards (generation.images)."""

    def parse(self, stream, media_type=None, parser_context=None):
        meta = parser_context["request"].META
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # Django reads no body without a valid length
        if length > upload_limit():
            raise RequestDataTooBig("The upload is larger than any completion can be.")
        return super().parse(stream, media_type, parser_context)
