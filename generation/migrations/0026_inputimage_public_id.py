"""Uploads get an unguessable id ("My uploads" and /api/v1/uploads/ name them by it), and the indexes of the
owner's list and of the temp uploads' retention. Non-atomic: on PostgreSQL the fill and the ALTER that makes
the column unique must not share a transaction (as 0009-0011 did for images, in one file)."""

import uuid

from django.db import migrations, models, transaction

BATCH = 1000


def fill(apps, schema_editor):
    InputImage = apps.get_model("generation", "InputImage")
    while batch := list(InputImage.objects.filter(public_id__isnull=True).only("pk")[:BATCH]):
        for row in batch:
            row.public_id = uuid.uuid4()
        with transaction.atomic(using=schema_editor.connection.alias):
            InputImage.objects.bulk_update(batch, ["public_id"])


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("generation", "0025_task_preview_method_choices"),
    ]

    operations = [
        migrations.AddField(
            model_name="inputimage",
            name="public_id",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="inputimage",
            name="public_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AddIndex(
            model_name="inputimage",
            index=models.Index(fields=["owner", "-id"], name="input_image_owner_idx"),
        ),
        migrations.AddIndex(
            model_name="inputimage",
            index=models.Index(fields=["kind", "created_at"], name="input_image_kind_age_idx"),
        ),
    ]
