"""Busy is shown (an idle worker holding a lease, Worker.state), no longer stored: busy rows become idle."""

from django.db import migrations


def busy_to_idle(apps, schema_editor):
    apps.get_model("workers_app", "Worker").objects.filter(status="busy").update(status="idle")


class Migration(migrations.Migration):
    dependencies = [("workers_app", "0002_liveness_schedule")]

    operations = [migrations.RunPython(busy_to_idle, migrations.RunPython.noop)]
