"""OpenAPI description of the worker token scheme (drf-spectacular extension, loaded by the app config)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class WorkerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "workers_app.authentication.WorkerTokenAuthentication"
    name = "WorkerToken"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A worker token from `python manage.py createworker NAME`.",
        }
