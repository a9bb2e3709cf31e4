"""Input and output shapes of the task API. Inputs check types only; the services check the rules."""

from django.core.validators import URLValidator
from rest_framework import serializers

from generation import selectors, services
from generation.models import SEED_MAX, Image, Task, TaskAttempt, WorkflowTemplate


class TaskSubmitInput(serializers.Serializer):
    prompt = serializers.CharField(trim_whitespace=False)
    negative_prompt = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, default=""
    )
    width = serializers.IntegerField(required=False, default=512)
    height = serializers.IntegerField(required=False, default=512)
    steps = serializers.IntegerField(required=False, default=20)
    cfg = serializers.FloatField(required=False, default=7.0)
    sampler = serializers.CharField(required=False, max_length=64, default="euler")
    scheduler = serializers.CharField(required=False, max_length=64, default="normal")
    seed = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=SEED_MAX
    )
    batch_size = serializers.IntegerField(required=False, default=1)
    checkpoint = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
    template = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    priority = serializers.IntegerField(required=False, default=0)
    callback_url = serializers.URLField(
        required=False,
        allow_blank=True,
        max_length=500,
        default="",
        validators=[URLValidator(schemes=["http", "https"], message="Must be an http or https URL.")],
    )

    def to_task_input(self) -> services.TaskInput:
        return services.TaskInput(**self.validated_data)


class ImageOutput(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "index",
            "url",
            "thumbnail_url",
            "width",
            "height",
            "size_bytes",
            "sha256",
            "created_at",
        ]

    def _absolute(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url

    def get_url(self, image: Image) -> str:
        return self._absolute(image.file.url)

    def get_thumbnail_url(self, image: Image) -> str | None:
        return self._absolute(image.thumbnail.url) if image.thumbnail else None


class AttemptOutput(serializers.ModelSerializer):
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = TaskAttempt
        fields = [
            "number",
            "worker",
            "leased_at",
            "started_at",
            "finished_at",
            "outcome",
            "error_code",
            "error_message",
        ]


class TaskOutput(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    seed = serializers.CharField(
        help_text="Decimal string: seeds reach 2**64-1, beyond JSON's safe integers."
    )
    template = serializers.SlugRelatedField(slug_field="name", read_only=True)
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    images = ImageOutput(many=True, read_only=True)
    attempt_history = AttemptOutput(many=True, read_only=True, source="attempt_set")

    class Meta:
        model = Task
        fields = [
            "id", "status", "owner", "prompt", "negative_prompt", "width", "height", "steps", "cfg",
            "sampler", "scheduler", "seed", "batch_size", "checkpoint", "template", "priority", "progress",
            "queue_position", "worker", "attempts", "max_attempts", "error", "warning", "created_at",
            "leased_at", "started_at", "finished_at", "images", "attempt_history",
        ]  # fmt: skip

    def get_progress(self, task: Task) -> dict:
        return {"value": task.progress_value, "max": task.progress_max, "percent": task.progress_percent}

    def get_queue_position(self, task: Task) -> int | None:
        return services.task_queue_position(task)

    def get_error(self, task: Task) -> dict | None:
        if not task.error_code:
            return None
        return {"code": task.error_code, "message": task.error_message}


# The status read (REST detail, GET /status/{id}) is polled every second by every watcher. Instantiating
# TaskOutput deep-copies its declared fields and builds the model fields for each response, several times the
# cost of the rest of the request, so that read builds the same JSON with plain code. TaskOutput stays the
# schema's description of it, and tests/generation/test_status_read.py holds the two equal.
_DATETIME = serializers.DateTimeField()


def image_output(image: Image, request) -> dict:
    """ImageOutput(image, context={"request": request}).data"""
    return {
        "id": image.pk,
        "index": image.index,
        "url": request.build_absolute_uri(image.file.url),
        "thumbnail_url": request.build_absolute_uri(image.thumbnail.url) if image.thumbnail else None,
        "width": image.width,
        "height": image.height,
        "size_bytes": image.size_bytes,
        "sha256": image.sha256,
        "created_at": _DATETIME.to_representation(image.created_at),
    }


def task_status_output(status: selectors.TaskStatus, request) -> dict:
    """TaskOutput(task).data for a task read by selectors.task_status_for."""
    task = status.task
    when = _DATETIME.to_representation
    progress = {"value": task.progress_value, "max": task.progress_max, "percent": task.progress_percent}
    return {
        "id": str(task.public_id),
        "status": task.status,
        "owner": task.owner_username,
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt,
        "width": task.width,
        "height": task.height,
        "steps": task.steps,
        "cfg": float(task.cfg),
        "sampler": task.sampler,
        "scheduler": task.scheduler,
        "seed": str(task.seed),
        "batch_size": task.batch_size,
        "checkpoint": task.checkpoint,
        "template": task.template_name,
        "priority": task.priority,
        "progress": progress,
        "queue_position": task.queue_position,
        "worker": task.worker_name,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "error": {"code": task.error_code, "message": task.error_message} if task.error_code else None,
        "warning": task.warning,
        "created_at": when(task.created_at),
        "leased_at": when(task.leased_at),
        "started_at": when(task.started_at),
        "finished_at": when(task.finished_at),
        "images": [image_output(image, request) for image in status.images],
        "attempt_history": [
            {
                "number": attempt.number,
                "worker": attempt.worker_name,
                "leased_at": when(attempt.leased_at),
                "started_at": when(attempt.started_at),
                "finished_at": when(attempt.finished_at),
                "outcome": attempt.outcome,
                "error_code": attempt.error_code,
                "error_message": attempt.error_message,
            }
            for attempt in status.attempts
        ],
    }


class TaskListOutput(TaskOutput):
    class Meta(TaskOutput.Meta):
        fields = [f for f in TaskOutput.Meta.fields if f not in ("attempt_history", "queue_position")]


class TemplateInput(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    workflow = serializers.JSONField()
    bindings = serializers.JSONField()


class TemplateOutput(serializers.ModelSerializer):
    node_classes = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowTemplate
        fields = ["name", "description", "workflow", "bindings", "node_classes", "created_at", "updated_at"]

    def get_node_classes(self, template: WorkflowTemplate) -> list[str]:
        return sorted(template.node_classes)
