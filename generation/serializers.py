"""Input and output shapes of the task API, one per message. Inputs check types only; the services check
the rules."""

import copy

from django.core.validators import URLValidator
from django.urls import reverse
from rest_framework import serializers

from generation import eta, limits, selectors
from generation.models import (
    SEED_MAX,
    TASK_INPUT_FIELDS,
    Image,
    InputImage,
    Task,
    TaskAttempt,
    WorkflowTemplate,
)


class FieldsBuiltOnce:
    """For a ModelSerializer: its fields built once per class and `fields_key()`, then copied for each
    instance (as a plain Serializer copies its declared ones). ModelSerializer builds them from the model on
    every instantiation, which cost more than the rest of a status read."""

    def fields_key(self) -> str:
        """What the fields depend on beyond the class (nothing, unless a subclass says)."""
        return ""

    def get_fields(self) -> dict:
        cls, key = type(self), self.fields_key()
        built = cls.__dict__.get("_built_fields")
        if built is None or built[0] != key:  # the first, or what they depend on changed
            built = cls._built_fields = (key, super().get_fields())
        return copy.deepcopy(built[1])


class TaskSubmitInput(FieldsBuiltOnce, serializers.ModelSerializer):
    """A task as a submit asks for it: the model's input fields (their types, lengths and defaults) and the
    template by name. Types, and the farm's limits so that the schema shows them (get_extra_kwargs);
    generation.services checks every rule, the limits included, for every caller."""

    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=SEED_MAX)
    template = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    workflow = serializers.JSONField(
        required=False,
        help_text="A whole ComfyUI API-format workflow, run as given, instead of a template and its fields "
        "(only priority and callback_url go with it).",
    )
    callback_url = serializers.URLField(
        required=False,
        allow_blank=True,
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"], message="Must be an http or https URL.")],
    )

    class Meta:
        model = Task
        fields = [*TASK_INPUT_FIELDS, "template", "workflow"]
        extra_kwargs = {
            "prompt": {"trim_whitespace": False, "required": False},
            "negative_prompt": {"trim_whitespace": False},
        }

    def fields_key(self) -> str:
        """The fields carry the farm's limits (settings): built again when they change."""
        return repr(self.get_extra_kwargs())

    def get_extra_kwargs(self) -> dict:
        """Meta.extra_kwargs plus the farm's limits (generation.limits, read from settings on each use): the
        schema shows them, and a value beyond them gets the service's own message."""
        extra = super().get_extra_kwargs()
        for name, limit in limits.numbers().items():
            kwargs = {"min_value": limit.low, "max_value": limit.high}
            kwargs["error_messages"] = {"min_value": limit.message, "max_value": limit.message}
            if limit.step:
                kwargs["help_text"] = limit.message
            extra[name] = extra.get(name, {}) | kwargs
        for name, limit in limits.lengths().items():
            kwargs = {"max_length": limit.high, "error_messages": {"max_length": limit.message}}
            extra[name] = extra.get(name, {}) | kwargs
        return extra


class ModelOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    """An answer described by a model's fields, which depend on its class alone (FieldsBuiltOnce)."""

    def _absolute(self, url: str) -> str:
        """`url` as the request's host names it (the path alone without a request)."""
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class ImageOutput(ModelOutput):
    id = serializers.UUIDField(source="public_id")
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

    def get_url(self, image: Image) -> str:
        return self._absolute(image.file.url)

    def get_thumbnail_url(self, image: Image) -> str | None:
        return self._absolute(image.thumbnail.url) if image.thumbnail else None


class AttemptOutput(ModelOutput):
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


class TaskOutput(ModelOutput):
    id = serializers.UUIDField(source="public_id")
    seed = serializers.CharField(
        help_text="Decimal string: seeds reach 2**64-1, beyond JSON's safe integers."
    )
    template = serializers.SlugRelatedField(slug_field="name", read_only=True)
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField(
        help_text="Seconds until the task should be done (learned speeds, the queue ahead and the work the "
        "workers hold); null when finished or no live worker can run it."
    )
    error = serializers.SerializerMethodField()
    preview_url = serializers.SerializerMethodField(
        help_text="While a task that asked for previews (preview_method) runs: its newest latent preview "
        "(GET tasks/{id}/preview; 404 until the first comes). It changes with the progress, so a page that "
        "follows the task's events shows each new one."
    )
    images = ImageOutput(many=True, read_only=True)
    attempt_history = AttemptOutput(many=True, read_only=True, source="attempt_set")

    class Meta:
        model = Task
        # The submitted fields (but the callback, which stays private), then the task's state.
        fields = [
            "id", "status", "owner", *(f for f in TASK_INPUT_FIELDS if f != "callback_url"), "template",
            "progress", "preview_url", "queue_position", "eta_seconds", "worker", "attempts", "max_attempts",
            "error",
            "warning", "created_at", "leased_at", "started_at", "finished_at", "images", "attempt_history",
        ]  # fmt: skip

    def get_progress(self, task: Task) -> dict:
        return {"value": task.progress_value, "max": task.progress_max, "percent": task.progress_percent}

    def get_preview_url(self, task: Task) -> str | None:
        if task.status != Task.Status.RUNNING or not task.wants_previews:
            return None
        return self._absolute(
            reverse("api:task-preview", args=[task.public_id]) + f"?at={task.progress_value:g}"
        )

    def get_queue_position(self, task: Task) -> int | None:
        return selectors.task_queue_position(task)

    def get_eta_seconds(self, task: Task) -> float | None:
        seconds = eta.seconds_left(task)
        return None if seconds is None else round(seconds, 1)

    def get_error(self, task: Task) -> dict | None:
        if not task.error_code:
            return None
        return {"code": task.error_code, "message": task.error_message}


class LandedTaskOutput(TaskOutput):
    """TaskOutput but its two lists, which `landed_task_json` adds from the rows in hand."""

    class Meta(TaskOutput.Meta):
        fields = [f for f in TaskOutput.Meta.fields if f not in ("images", "attempt_history")]


def landed_task_json(task: Task, images: list[Image], attempts: list[TaskAttempt]) -> dict:
    """TaskOutput's JSON of a task from its row, its images (newest first) and its attempts (oldest first)
    as the caller holds them, without a query (its template, owner and worker loaded with it): what a
    completion's event hands the task's streams (generation.streams). URLs are paths; `with_host` names
    their host."""
    data = dict(LandedTaskOutput(task).data)  # the lists are the last of TaskOutput's fields
    data["images"] = ImageOutput(images, many=True).data
    data["attempt_history"] = AttemptOutput(attempts, many=True).data
    return data


def with_host(request, data: dict) -> dict:
    """A task's JSON made without a request (`landed_task_json`) with its URLs as `request`'s host names
    them, as TaskOutput with that request gives them (ModelOutput._absolute)."""
    absolute = request.build_absolute_uri
    images = [
        {
            **image,
            "url": absolute(image["url"]),
            "thumbnail_url": image["thumbnail_url"] and absolute(image["thumbnail_url"]),
        }
        for image in data["images"]
    ]
    preview = data["preview_url"] and absolute(data["preview_url"])
    return {**data, "preview_url": preview, "images": images}


class TaskListOutput(TaskOutput):
    class Meta(TaskOutput.Meta):
        fields = [
            f for f in TaskOutput.Meta.fields if f not in ("attempt_history", "queue_position", "eta_seconds")
        ]


class TaskPageOutput(serializers.Serializer):
    """A page of GET /api/v1/tasks/ (generation.apis.TaskPagination): follow `next` for older tasks."""

    next = serializers.URLField(allow_null=True, help_text="The next page (older tasks); null on the last.")
    previous = serializers.URLField(allow_null=True)
    results = TaskListOutput(many=True)


class UploadOutput(ModelOutput):
    """One of your uploads (ComfyUI's POST /upload/image or /upload/mask, or a file of the web form's
    "Run a workflow"), as GET /api/v1/uploads/ lists it."""

    id = serializers.UUIDField(source="public_id", help_text="Names the upload in /api/v1/uploads/<id>/.")
    name = serializers.CharField(
        source="comfy_name",
        help_text="What a LoadImage node names it by: `subfolder/filename`, ` [temp]` after a temp upload.",
    )
    filename = serializers.CharField(source="name")
    type = serializers.ChoiceField(source="kind", choices=["input", "temp"])
    task_count = serializers.IntegerField(help_text="Tasks that used it and still record it.")
    unfinished_task_count = serializers.IntegerField(
        source="unfinished_count",
        help_text="Of those, the queued or running ones: while this is not 0 the upload cannot be deleted.",
    )
    file_url = serializers.SerializerMethodField(help_text="The stored image (for you only).")

    class Meta:
        model = InputImage
        fields = [
            "id", "name", "filename", "subfolder", "type", "width", "height", "size_bytes", "sha256",
            "created_at", "task_count", "unfinished_task_count", "file_url",
        ]  # fmt: skip

    def get_file_url(self, upload: InputImage) -> str:
        return self._absolute(reverse("api:upload-file", args=[upload.public_id]))


class UploadPageOutput(serializers.Serializer):
    """A page of GET /api/v1/uploads/ (newest first): follow `next` for older uploads."""

    next = serializers.URLField(allow_null=True, help_text="The next page (older uploads); null on the last.")
    previous = serializers.URLField(allow_null=True)
    results = UploadOutput(many=True)


class TemplateInput(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    workflow = serializers.JSONField()
    bindings = serializers.JSONField()


class TemplateOutput(ModelOutput):
    node_classes = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowTemplate
        fields = ["name", "description", "workflow", "bindings", "node_classes", "created_at", "updated_at"]

    def get_node_classes(self, template: WorkflowTemplate) -> list[str]:
        return sorted(template.node_classes)
