"""PostgreSQL only: a trigram index for prompt search (gallery `?q=`, admin search).

Django compiles `prompt__icontains` to `UPPER(prompt) LIKE UPPER('%…%')`, so the index is on that
expression. SQLite has no trigram indexes; search there scans, which is fine at its scale.
"""

from django.db import migrations


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # gallery and admin search: WHERE UPPER(prompt) LIKE UPPER('%…%')
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS task_prompt_upper_trgm "
            "ON generation_task USING gin (UPPER(prompt) gin_trgm_ops)"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS task_prompt_upper_trgm")


class Migration(migrations.Migration):
    dependencies = [("generation", "0006_metric_counters")]
    operations = [migrations.RunPython(forwards, backwards)]
