"""User API tokens: `Authorization: Token <token>`, looked up by its SHA-256 (generation.models.ApiToken)."""

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from generation.services import api_token_user


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
