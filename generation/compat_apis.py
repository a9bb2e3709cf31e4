"""The original design's user endpoints, kept as a compatibility surface over the same services:
`POST /generate` and `GET /status/{prompt_id}` (prompt_id is the task's public id)."""

from operator import attrgetter

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import eta, selectors
from generation.apis import CanSubmit, submit_task
from generation.models import Task
from generation.serializers import TaskSubmitInput

# The seed's words for task states.
SEED_STATUS = {
    Task.Status.QUEUED: "pending",
    Task.Status.LEASED: "pending",
    Task.Status.RUNNING: "running",
    Task.Status.COMPLETED: "completed",
    Task.Status.FAILED: "failed",
    Task.Status.CANCELLED: "cancelled",
}

StatusOutput = inline_serializer(
    "SeedStatus",
    {
        "prompt_id": serializers.UUIDField(),
        "status": serializers.ChoiceField(choices=sorted(set(SEED_STATUS.values()))),
        "progress": serializers.IntegerField(help_text="Percent, 0..100."),
        "image_url": serializers.URLField(allow_null=True),
        "images": serializers.ListField(child=serializers.URLField()),
        "error": serializers.CharField(allow_null=True),
        "queue_position": serializers.IntegerField(allow_null=True),
        "eta_seconds": serializers.FloatField(allow_null=True, help_text="Seconds until it should be done."),
    },
)


class GenerateApi(APIView):
    permission_classes = [CanSubmit]

    @extend_schema(
        request=TaskSubmitInput,
        responses={
            200: inline_serializer(
                "SeedGenerate", {"prompt_id": serializers.UUIDField(), "status": serializers.CharField()}
            )
        },
    )
    def post(self, request: Request) -> Response:
        task = submit_task(request)
        return Response({"prompt_id": str(task.public_id), "status": SEED_STATUS[task.status]})


class StatusApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=StatusOutput)
    def get(self, request: Request, prompt_id) -> Response:
        task = selectors.task_status_for(request.user, prompt_id, with_attempts=False)
        images = sorted(task.images.all(), key=attrgetter("index"))
        urls = [request.build_absolute_uri(image.file.url) for image in images]
        error = f"{task.error_code}: {task.error_message}" if task.error_code else None
        return Response(
            {
                "prompt_id": str(task.public_id),
                "status": SEED_STATUS[task.status],
                "progress": task.progress_percent,
                "image_url": urls[0] if urls else None,
                "images": urls,
                "error": error if task.status in (Task.Status.FAILED, Task.Status.CANCELLED) else None,
                "queue_position": selectors.task_queue_position(task),
                "eta_seconds": _rounded(eta.seconds_left(task)),
            }
        )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
