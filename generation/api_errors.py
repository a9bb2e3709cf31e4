"""One exception handler for the whole API: every error is JSON `{"error", "detail", "fields"}`."""

import logging
from http import HTTPStatus

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from generation import storage_space
from generation.exceptions import DomainError

logger = logging.getLogger(__name__)


def error_body(code: str, detail: str, fields: dict | None = None) -> dict:
    return {"error": code, "detail": detail, "fields": fields or {}}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(error_body(exc.code, exc.detail, exc.fields), status=exc.status, headers=headers)
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        return Response(
            error_body("request_too_large", "The request body is larger than this server accepts."),
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    if storage_space.is_disk_full(exc):
        # Django spooling an upload, or a storage write outside the completion service: nothing was kept.
        logger.warning("disk full: %s", exc)
        error = storage_space.disk_full()
        return Response(
            error_body(error.code, error.detail),
            status=error.status,
            headers={"Retry-After": str(error.retry_after)},
        )
    if isinstance(exc, RecursionError):
        # json.loads raises RecursionError, not ValueError, on very deeply nested input, and DRF's JSONParser
        # only turns ValueError into a parse error.
        return Response(
            error_body("parse_error", "The JSON is nested too deeply."), status=HTTPStatus.BAD_REQUEST
        )
    if isinstance(exc, OperationalError | InterfaceError):
        # The database went away (restart, failover, network): a 503 the daemon retries (its calls are fenced,
        # so a retry is safe). A submit may have been stored before the error: clients look before resending.
        logger.warning("database unavailable: %s", str(exc).strip()[:200])
        return Response(
            error_body("unavailable", "The database is unavailable; retry shortly."),
            status=HTTPStatus.SERVICE_UNAVAILABLE,
            headers={"Retry-After": "2"},
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


# --- Errors raised outside DRF views (no URL matched, CSRF, a crash): JSON on API paths, pages elsewhere ---

SEED_API_PATHS = frozenset({"/generate", "/register", "/heartbeat", "/task", "/complete"})


def is_api_path(path: str) -> bool:
    first = "/" + path.lstrip("/").split("/", 1)[0]
    return first in ("/api", "/status", "/comfy") or first in SEED_API_PATHS


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(error_body("bad_request", "The request was refused."), status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(error_body("permission_denied", "You may not do this."), status=403)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(error_body("not_found", "No such endpoint or object."), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(
            error_body("server_error", "The server failed; the error was logged."), status=500
        )
    return defaults.server_error(request)
