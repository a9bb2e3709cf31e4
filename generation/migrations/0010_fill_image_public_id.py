"""Give every existing image its unguessable id (0009 added the column empty; 0011 makes it unique and
required). Image pages and downloads go by it instead of the sequential row id."""

import uuid

from django.db import migrations

BATCH = 1000


def fill(apps, schema_editor):
    Image = apps.get_model("generation", "Image")
    while batch := list(Image.objects.filter(public_id__isnull=True).only("pk")[:BATCH]):
        for image in batch:
            image.public_id = uuid.uuid4()
        Image.objects.bulk_update(batch, ["public_id"])


class Migration(migrations.Migration):
    dependencies = [("generation", "0009_image_public_id")]
    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
