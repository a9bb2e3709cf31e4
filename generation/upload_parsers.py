"""The parser for ComfyUI's POST /upload/image: multipart, capped from its Content-Length, and keeping the
fact that a file name carried a path (Django keeps only its last part): `../x.png` is refused, not renamed."""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles, MultiPartParser, get_encoding

# Put before the kept part of a file name that had a path in it; services.inputs refuses such a name.
PATH_MARK = "\x00path\x00"


class _PathMarkingParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        name = super().sanitize_file_name(file_name)
        if name is not None and ("/" in file_name or "\\" in file_name):
            return PATH_MARK + name
        return name


class InputUploadParser(MultiPartParser):
    """multipart/form-data up to one image of T2I_MAX_IMAGE_BYTES plus the form fields (else 413)."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.T2I["MAX_IMAGE_BYTES"] + settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise RequestDataTooBig("The upload is larger than an input image may be.")
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        parser = _PathMarkingParser(meta, stream, request.upload_handlers, get_encoding(parser_context))
        try:
            data, files = parser.parse()
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error - {exc}")
        return DataAndFiles(data, files)
