"""Ship two templates: the canonical SD1.5 text-to-image graph (the default) and a checkpoint-free
noise graph (EmptyImage -> ImageAddNoise -> SaveImage) that runs on any ComfyUI, for tests and smoke checks."""

from django.db import migrations

from generation.workflows import SHIPPED_TEMPLATES as TEMPLATES


def create(apps, schema_editor):
    WorkflowTemplate = apps.get_model("generation", "WorkflowTemplate")
    for name, description, workflow, bindings in TEMPLATES:
        WorkflowTemplate.objects.get_or_create(
            name=name, defaults={"description": description, "workflow": workflow, "bindings": bindings}
        )


def remove(apps, schema_editor):
    apps.get_model("generation", "WorkflowTemplate").objects.filter(name__in=[t[0] for t in TEMPLATES]).delete()


class Migration(migrations.Migration):
    dependencies = [("generation", "0001_initial")]
    operations = [migrations.RunPython(create, remove)]
