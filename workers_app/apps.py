from django.apps import AppConfig


class WorkersAppConfig(AppConfig):
    name = "workers_app"
    verbose_name = "Workers"

    def ready(self) -> None:
        from workers_app import schema  # noqa: F401  (registers the OpenAPI auth extension)
