"""User API tokens: `Authorization: Token <token>`, looked up by its SHA-256 (generation.models.ApiToken);
and ComfyUI URL keys, taken out of the path by generation.comfy_keys."""

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from generation import comfy_keys
from generation.models import ApiToken
from generation.services import api_token_user


class ComfyKeyAuthentication(authentication.BaseAuthentication):
    """The front door's `/comfy/k/<key>/…`: the user who owns the key. A key that names no one is refused,
    never taken for anonymous."""

    def authenticate(self, request: Request):
        key = request.META.get(comfy_keys.META_KEY)
        if not key:
            return None
        user = api_token_user(key, kind=ApiToken.Kind.COMFY_KEY)
        if user is None:
            raise exceptions.AuthenticationFailed("Unknown, expired or revoked ComfyUI URL key.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return ApiTokenAuthentication.keyword  # 401, as the front door answered before keys (first class)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token <token>'.")
        try:
            token = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed token.")
        user = api_token_user(token)
        if user is None:
            raise exceptions.AuthenticationFailed("Unknown, expired or revoked API token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
