from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        from generation import schema  # noqa: F401  (registers the OpenAPI auth extension)

        post_migrate.connect(create_cache_table, sender=self)


def create_cache_table(using: str, **kwargs) -> None:
    """Every `migrate` (runfarm's, a deployment's, the tests') makes the database cache's table when
    settings.CACHES uses it (no T2I_REDIS_URL), so the shared cache is there before the first request, also
    after switching from Redis. Does nothing when the table exists or the cache is Redis."""
    call_command("createcachetable", database=using, verbosity=0)
