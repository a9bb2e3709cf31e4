"""REST API for people and programs: submit, follow, list and cancel tasks; your uploads; templates; workers
summary."""

import mimetypes

from django.conf import settings
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotFound as CursorNotFound
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import selectors, services, streams
from generation.client_address import client_address
from generation.exceptions import NotFound
from generation.models import Task, WorkflowTemplate
from generation.negotiation import JsonAnswers
from generation.serializers import (
    TaskListOutput,
    TaskOutput,
    TaskPageOutput,
    TaskSubmitInput,
    TemplateInput,
    TemplateOutput,
    UploadOutput,
    UploadPageOutput,
    with_host,
)
from workers_app.models import Worker


class CanSubmit(permissions.BasePermission):
    """Signed-in users, or anyone when T2I_ALLOW_ANONYMOUS_SUBMIT is on (a trusted LAN)."""

    message = "Sign in or use an API token (Authorization: Token <key>) to submit."

    def has_permission(self, request: Request, view) -> bool:
        return bool(request.user and request.user.is_authenticated) or settings.T2I["ALLOW_ANONYMOUS_SUBMIT"]


def submit_task(request: Request) -> Task:
    """Shared by the REST submit and the seed's POST /generate: counted against the submit limit (shared with
    the web form) first, so that invalid submits count too."""
    services.submit_claim(user=request.user, address=client_address(request))
    serializer = TaskSubmitInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    return services.task_submit(owner=request.user, data=serializer.validated_data)


class TaskPagination(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request: Request):
        """DRF's cursor, whose position (a task id here) DRF passes to the query unchecked: a crafted one is
        the same 404 as any other invalid cursor, not a 500."""
        cursor = super().decode_cursor(request)
        position = cursor.position if cursor is not None else None
        if position is not None and not (position.isascii() and position.isdigit() and len(position) <= 18):
            raise CursorNotFound(self.invalid_cursor_message)
        return cursor


class TaskListCreateApi(APIView):
    permission_classes = [CanSubmit]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Task.Status.values),
            OpenApiParameter("mine", bool, description="Staff: only your own tasks."),
            OpenApiParameter("cursor", str, description="From a page's `next` or `previous` link."),
            OpenApiParameter("page_size", int, description=f"1 to {TaskPagination.max_page_size}."),
        ],
        responses=TaskPageOutput,
    )
    def get(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status and status not in Task.Status.values:
            raise serializers.ValidationError({"status": [f"One of {', '.join(Task.Status.values)}."]})
        mine = request.query_params.get("mine", "").lower() in ("1", "true", "yes")
        paginator = TaskPagination()
        page = paginator.paginate_queryset(
            selectors.tasks_for(request.user, mine=mine, status=status), request
        )
        return paginator.get_paginated_response(
            TaskListOutput(page, many=True, context={"request": request}).data
        )

    @extend_schema(request=TaskSubmitInput, responses={201: TaskOutput})
    def post(self, request: Request) -> Response:
        task = submit_task(request)
        task = selectors.task_as_submitted(task)  # the answer of GET tasks/<id>/, without reading it again
        return Response(TaskOutput(task, context={"request": request}).data, status=201)


class TaskDetailApi(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(responses=TaskOutput)
    def get(self, request: Request, task_id) -> Response:
        task = selectors.task_status_for(request.user, task_id)
        return Response(TaskOutput(task, context={"request": request}).data)


def task_event(request, user, task_id: str) -> dict | None:
    """A task as its event streams send it (the JSON of GET tasks/{id}/); None if the user may not see it."""
    try:
        task = selectors.task_status_for(user, task_id)
    except NotFound:
        return None
    return TaskOutput(task, context={"request": request}).data


class TaskPreviewApi(APIView):
    """The newest latent preview of a running task that asked for previews (its `preview_url`)."""

    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses={(200, "image/jpeg"): OpenApiTypes.BINARY, (200, "image/png"): OpenApiTypes.BINARY}
    )
    def get(self, request: Request, task_id) -> HttpResponse:
        preview = selectors.task_preview_for(request.user, task_id)
        response = HttpResponse(bytes(preview.data), content_type=f"image/{preview.image_format}")
        response["Cache-Control"] = "no-store"  # the next one replaces it
        return response


class TaskEventsApi(APIView):
    """Follow one task: server-sent events (generation.streams), its current state first."""

    permission_classes = [permissions.AllowAny]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonAnswers

    @extend_schema(responses={(200, "text/event-stream"): TaskOutput})
    def get(self, request: Request, task_id) -> Response:
        event = task_event(request, request.user, str(task_id))
        if event is None:
            raise NotFound("No such task.")
        response = Response(event)
        response.follow = streams.Follow(
            user=request.user,
            snapshot=task_event,
            landed=with_host,
            events=[event],
            task_ids={event["id"]},
            single=True,
        )
        return response


class MyTaskEventsApi(APIView):
    """Follow all of your unfinished tasks: server-sent events; on reconnect (`Last-Event-ID`) also the tasks
    that finished meanwhile."""

    permission_classes = [permissions.IsAuthenticated]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonAnswers

    @extend_schema(responses={(200, "text/event-stream"): TaskOutput(many=True)})
    def get(self, request: Request) -> Response:
        finished_since = streams.since(request.headers.get("Last-Event-ID"))
        tasks = selectors.tasks_to_follow(request.user, finished_since=finished_since)
        events = [TaskOutput(task, context={"request": request}).data for task in tasks]
        response = Response(events)
        response.follow = streams.Follow(
            user=request.user,
            snapshot=task_event,
            landed=with_host,
            events=events,
            task_ids={event["id"] for event in events},
            owner_id=request.user.pk,
        )
        return response


class TaskCancelApi(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(request=None, responses=TaskOutput)
    def post(self, request: Request, task_id) -> Response:
        task = selectors.task_for(request.user, task_id)
        if not selectors.task_cancellable_by(task, request.user):
            raise NotFound("No such task.")
        task = services.task_cancel(task=task)
        return Response(TaskOutput(task, context={"request": request}).data)


class UploadListApi(APIView):
    """Your uploads, newest first: what ComfyUI's POST /upload/image and /upload/mask stored for you (the
    front door) and the files of the web form's "Run a workflow"."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("type", str, enum=["input", "temp"], description="Only uploads of this type."),
            OpenApiParameter("cursor", str, description="From a page's `next` or `previous` link."),
            OpenApiParameter("page_size", int, description=f"1 to {TaskPagination.max_page_size}."),
        ],
        responses=UploadPageOutput,
        operation_id="api_v1_uploads_list",
    )
    def get(self, request: Request) -> Response:
        kind = request.query_params.get("type") or None
        if kind not in (None, "input", "temp"):
            raise serializers.ValidationError({"type": ["One of input, temp."]})
        paginator = TaskPagination()  # newest first by row, like the task list
        page = paginator.paginate_queryset(selectors.uploads_for(request.user, kind=kind), request)
        return paginator.get_paginated_response(
            UploadOutput(page, many=True, context={"request": request}).data
        )


class UploadDetailApi(APIView):
    """One of your uploads; another user's is a 404, as an unknown id is."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses=UploadOutput)
    def get(self, request: Request, upload_id) -> Response:
        upload = selectors.upload_for(request.user, upload_id)
        return Response(UploadOutput(upload, context={"request": request}).data)

    @extend_schema(
        responses={
            204: None,
            404: OpenApiResponse(description="Not one of your uploads."),
            409: OpenApiResponse(
                description="`upload_in_use`: queued or running tasks need it; `detail` names them and "
                "`fields.tasks` lists their ids. Delete it once they have ended, or cancel them."
            ),
        }
    )
    def delete(self, request: Request, upload_id) -> Response:
        """Delete the upload and its file. Finished tasks that used it keep their workflow, history and
        images; they can no longer be retried."""
        upload = selectors.upload_for(request.user, upload_id)
        services.input_image_delete(upload=upload)
        return Response(status=204)


class UploadFileApi(APIView):
    """The stored image of one of your uploads."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses={(200, "image/*"): OpenApiTypes.BINARY})
    def get(self, request: Request, upload_id) -> FileResponse:
        upload = selectors.upload_for(request.user, upload_id)
        return upload_file_response(upload)


def upload_file_response(upload) -> FileResponse:
    """The file of an upload, as the API and the "My uploads" page serve it to its owner (never cached by a
    shared cache)."""
    try:
        handle = upload.file.open("rb")
    except FileNotFoundError:
        raise NotFound("The upload's file is missing.")
    content_type = mimetypes.guess_type(upload.file.name)[0] or "application/octet-stream"
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


class TemplateListCreateApi(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [permissions.IsAdminUser()]
        return [permissions.IsAuthenticated()]

    @extend_schema(responses=TemplateOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(TemplateOutput(WorkflowTemplate.objects.all(), many=True).data)

    @extend_schema(request=TemplateInput, responses={201: TemplateOutput})
    def post(self, request: Request) -> Response:
        serializer = TemplateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        template = services.template_create(**serializer.validated_data)
        return Response(TemplateOutput(template).data, status=201)


class TemplateDetailApi(APIView):
    @extend_schema(responses=TemplateOutput)
    def get(self, request: Request, name: str) -> Response:
        template = WorkflowTemplate.objects.filter(name=name).first()
        if template is None:
            raise NotFound("No such template.")
        return Response(TemplateOutput(template).data)


class WorkerSummaryOutput(serializers.ModelSerializer):
    status = serializers.ChoiceField(source="state", choices=Worker.Status.choices)
    comfyui_version = serializers.SerializerMethodField()
    device_name = serializers.SerializerMethodField()
    checkpoints = serializers.SerializerMethodField()

    class Meta:
        model = Worker
        fields = [
            "name", "status", "last_heartbeat", "comfyui_version", "device_name", "checkpoints",
            "tasks_completed", "tasks_failed",
        ]  # fmt: skip

    def get_comfyui_version(self, worker: Worker) -> str:
        return worker.capabilities.get("comfyui_version", "")

    def get_device_name(self, worker: Worker) -> str:
        return worker.capabilities.get("device_name", "")

    def get_checkpoints(self, worker: Worker) -> list[str]:
        return worker.checkpoints


class WorkerListApi(APIView):
    """Staff only, as SECURITY.md lists the workers (names, devices, capabilities)."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(responses=WorkerSummaryOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(WorkerSummaryOutput(Worker.objects.with_state(), many=True).data)


class CheckpointListApi(APIView):
    @extend_schema(responses=serializers.ListSerializer(child=serializers.DictField()))
    def get(self, request: Request) -> Response:
        return Response(selectors.checkpoints_available())
