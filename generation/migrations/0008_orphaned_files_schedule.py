"""The orphaned-files job's schedule (generation.jobs.SCHEDULES; ensure_schedules is idempotent)."""

from django.db import migrations


def create(apps, schema_editor):
    from generation.jobs import ensure_schedules

    ensure_schedules(schedule_model=apps.get_model("django_q", "Schedule"))


class Migration(migrations.Migration):
    dependencies = [("generation", "0007_prompt_trigram_index")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
