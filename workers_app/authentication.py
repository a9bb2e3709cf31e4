"""Worker authentication: `Authorization: Bearer <token>`, the token looked up by its SHA-256."""

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from workers_app.models import Worker
from workers_app.services import worker_by_token


class WorkerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            token = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed token.")
        worker = worker_by_token(token)
        if worker is None:
            raise exceptions.AuthenticationFailed("Unknown worker token.")
        return AnonymousUser(), worker

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class IsWorker(permissions.BasePermission):
    message = "A worker token is required (Authorization: Bearer <token>)."

    def has_permission(self, request: Request, view) -> bool:
        return isinstance(request.auth, Worker)
