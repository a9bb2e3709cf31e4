from django.apps import AppConfig


class WorkersAppConfig(AppConfig):
    name = "workers_app"
    verbose_name = "Workers"
