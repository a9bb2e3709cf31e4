"""The liveness sweep's django-q2 schedule now runs workers_app.jobs.farm_maintenance (it was
generation.jobs.farm_maintenance, created by generation/0005): same name, same interval."""

from django.db import migrations


def forwards(apps, schema_editor):
    from generation.jobs import ensure_schedules
    from workers_app.jobs import SCHEDULES

    ensure_schedules(schedules=SCHEDULES, schedule_model=apps.get_model("django_q", "Schedule"))


def backwards(apps, schema_editor):
    from workers_app.jobs import SCHEDULES

    names = [name for name, _, _ in SCHEDULES]
    apps.get_model("django_q", "Schedule").objects.filter(name__in=names).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("workers_app", "0001_initial"),
        ("generation", "0005_schedules"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
