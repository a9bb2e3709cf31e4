"""Create the background-job schedules (django-q2). generation.jobs.ensure_schedules() is idempotent and can be
run again by hand after SCHEDULES changes."""

from django.db import migrations


def create(apps, schema_editor):
    from generation.jobs import ensure_schedules

    ensure_schedules(apps.get_model("django_q", "Schedule"))


def remove(apps, schema_editor):
    from generation.jobs import SCHEDULE_PREFIX

    apps.get_model("django_q", "Schedule").objects.filter(name__startswith=SCHEDULE_PREFIX).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0004_ops_console"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]
    operations = [migrations.RunPython(create, remove)]
