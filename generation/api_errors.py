"""One exception handler for the whole API: every error is JSON `{"error", "detail", "fields"}`."""

from http import HTTPStatus

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from generation.exceptions import DomainError


def error_body(code: str, detail: str, fields: dict | None = None) -> dict:
    return {"error": code, "detail": detail, "fields": fields or {}}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.detail, exc.fields), status=exc.status)
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        return Response(
            error_body("request_too_large", "The request body is larger than this server accepts."),
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, RecursionError):
        # json.loads raises RecursionError, not ValueError, on very deeply nested input, and DRF's JSONParser
        # only turns ValueError into a parse error.
        return Response(
            error_body("parse_error", "The JSON is nested too deeply."), status=HTTPStatus.BAD_REQUEST
        )
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("bad_request", "The request was refused."), status=HTTPStatus.BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid", "Some fields are not valid.", _flatten(fields))
    elif isinstance(exc, drf.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = error_body(code, str(exc.detail))
    return response


def _flatten(fields: dict, prefix: str = "") -> dict:
    """Nested serializer errors become dotted field names: {"capabilities.checkpoints": [...]}."""
    flat: dict = {}
    for name, value in fields.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat |= _flatten(value, f"{key}.")
        else:
            flat[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flat
