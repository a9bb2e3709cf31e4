"""The metrics roll-up job's schedule (generation.jobs.SCHEDULES; ensure_schedules is idempotent): /metrics
no longer rolls the counters up itself, it only reads."""

from django.db import migrations


def create(apps, schema_editor):
    from generation.jobs import ensure_schedules

    ensure_schedules(schedule_model=apps.get_model("django_q", "Schedule"))


class Migration(migrations.Migration):
    dependencies = [("generation", "0014_hash_plaintext_api_tokens")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
