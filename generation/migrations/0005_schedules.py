"""Create the background-job schedules (django-q2). generation.jobs.ensure_schedules() is idempotent and can be
run again by hand after SCHEDULES changes. (The liveness sweep's schedule, created here at first, is
workers_app.jobs's since workers_app/0002.)"""

from django.db import migrations


def create(apps, schema_editor):
    from generation.jobs import ensure_schedules

    ensure_schedules(schedule_model=apps.get_model("django_q", "Schedule"))


def remove(apps, schema_editor):
    from generation.jobs import SCHEDULES

    names = [name for name, _, _ in SCHEDULES]
    apps.get_model("django_q", "Schedule").objects.filter(name__in=names).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0004_ops_console"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]
    operations = [migrations.RunPython(create, remove)]
