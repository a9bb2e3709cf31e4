"""OpenAPI description of the user API token scheme (drf-spectacular extension, loaded by the app config)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "generation.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <token>`: a token from your account's API tokens page, or "
            "`python manage.py createapitoken USER`.",
        }
