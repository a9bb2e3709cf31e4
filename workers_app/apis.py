"""The worker API (docs/worker-api.md): thin views over workers_app.services and generation.services."""

from dataclasses import dataclass, replace

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.parsers import BaseParser, FormParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import services
from generation.exceptions import InvalidInput, TooLarge, WorkerDisabled
from generation.negotiation import JsonAnswers
from generation.serializers import ImageOutput
from workers_app import object_info_specs, waiting
from workers_app import services as worker_services
from workers_app.authentication import IsWorker, WorkerTokenAuthentication
from workers_app.models import Worker
from workers_app.parsers import ImageUploadParser

PROTOCOL_HEADER = "T2I-Protocol"
PROTOCOL_VERSION = 3  # 3: the worker socket (workers_app.worker_socket); docs/worker-api.md has the history
# The previous daemon releases keep working (README: rolling upgrades). 1 = no header.
PROTOCOLS_SERVED = (1, 2, 3)


class ProtocolUnsupported(InvalidInput):
    code = "protocol_unsupported"


def check_protocol(request: Request) -> int:
    """The protocol version the daemon speaks (its `T2I-Protocol` header; none is version 1)."""
    raw = request.headers.get(PROTOCOL_HEADER, "1")
    version = int(raw) if raw.isdigit() else 0
    if version not in PROTOCOLS_SERVED:
        raise ProtocolUnsupported(
            f"This scheduler speaks worker protocol {', '.join(map(str, PROTOCOLS_SERVED))}, "
            f"not {raw[:20]!r}: upgrade the scheduler before its daemons.",
            fields={PROTOCOL_HEADER: [f"One of {list(PROTOCOLS_SERVED)}."]},
        )
    return version


class WorkerApi(APIView):
    authentication_classes = [WorkerTokenAuthentication]
    permission_classes = [IsWorker]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonAnswers

    @property
    def worker(self) -> Worker:
        return self.request.auth

    def initial(self, request: Request, *args, **kwargs) -> None:
        check_protocol(request)
        super().initial(request, *args, **kwargs)
        # A disabled worker is refused on every endpoint, whatever it still believes it holds.
        if self.worker.status == Worker.Status.DISABLED:
            raise WorkerDisabled("This worker is disabled by an operator.")

    def finalize_response(self, request: Request, response: Response, *args, **kwargs) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        response[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
        return response


class CapabilitiesInput(serializers.Serializer):
    comfyui_version = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
    device_name = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
    vram_total = serializers.IntegerField(required=False, min_value=0, max_value=2**53, default=0)
    checkpoints = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, default=list
    )
    node_classes = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, default=list
    )
    samplers = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, default=list
    )
    schedulers = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, default=list
    )
    output_nodes = serializers.ListField(
        child=serializers.CharField(max_length=255),
        required=False,
        default=list,
        help_text="Node classes with output_node in /object_info.",
    )
    model_inputs = serializers.DictField(
        child=serializers.DictField(child=serializers.ListField(child=serializers.CharField(max_length=255))),
        required=False,
        help_text="{class_type: {input name: [file, …]}}: the file choices of model inputs in /object_info.",
    )
    object_info_sha256 = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        required=False,
        help_text="SHA-256 of the JSON bytes of ComfyUI's /object_info as read; the answer's `object_info` "
        "says whether to send them (POST object_info/<sha256>).",
    )


class RegisterInput(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=100)
    prefetch = serializers.IntegerField(required=False, min_value=1, max_value=8, default=2)
    capabilities = CapabilitiesInput(required=False, default=dict)


OBJECT_INFO_HELP = (
    '"have": the scheduler stores the /object_info that `object_info_sha256` names; "send": POST it to '
    "object_info/<sha256>; null: no digest was sent."
)


class RegisterOutput(serializers.Serializer):
    worker_id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    status = serializers.CharField()
    heartbeat_interval = serializers.SerializerMethodField()
    lease_seconds = serializers.SerializerMethodField()

    def get_heartbeat_interval(self, worker: Worker) -> float:
        return settings.T2I["HEARTBEAT_INTERVAL"]

    def get_lease_seconds(self, worker: Worker) -> float:
        return settings.T2I["LEASE_SECONDS"]

    object_info = serializers.SerializerMethodField(help_text=OBJECT_INFO_HELP)

    def get_object_info(self, worker: Worker) -> str | None:
        return object_info_specs.object_info_wanted(worker=worker)


def register(request: Request, worker: Worker) -> Worker:
    """Shared by the worker API and the seed's POST /register."""
    serializer = RegisterInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    return worker_services.worker_register(
        worker=worker, capabilities=data.get("capabilities") or {}, prefetch=data["prefetch"]
    )


class RegisterApi(WorkerApi):
    @extend_schema(request=RegisterInput, responses=RegisterOutput)
    def post(self, request: Request) -> Response:
        return Response(RegisterOutput(register(request, self.worker)).data)


class LeaseRef(serializers.Serializer):
    task_id = serializers.UUIDField()
    lease_token = serializers.UUIDField()


WARM_HELP = (
    "The checkpoint this worker's ComfyUI has loaded (its last task's); empty: none. Omit when unknown."
)


class HeartbeatInput(serializers.Serializer):
    tasks = LeaseRef(many=True, required=False, default=list)
    warm_checkpoint = serializers.CharField(
        required=False, allow_blank=True, max_length=255, help_text=WARM_HELP
    )


class HeartbeatOutput(serializers.Serializer):
    worker_status = serializers.CharField()
    lease_expires_at = serializers.DateTimeField()
    renewed = serializers.ListField(child=serializers.UUIDField())
    cancel = serializers.ListField(child=serializers.UUIDField())
    lost = serializers.ListField(child=serializers.UUIDField())


def heartbeat(worker: Worker, body) -> dict:
    """The heartbeat call, over HTTP or the worker socket (workers_app.worker_socket)."""
    data = _valid(HeartbeatInput, body)
    leases = [(t["task_id"], t["lease_token"]) for t in data["tasks"]]
    if "warm_checkpoint" in data:
        worker_services.worker_note_warm(worker=worker, checkpoint=data["warm_checkpoint"])
    return HeartbeatOutput(worker_services.worker_heartbeat(worker=worker, leases=leases)).data


class HeartbeatApi(WorkerApi):
    @extend_schema(request=HeartbeatInput, responses=HeartbeatOutput)
    def post(self, request: Request) -> Response:
        return Response(heartbeat(self.worker, request.data))


class LeaseInput(serializers.Serializer):
    wait = serializers.FloatField(required=False, min_value=0, default=0)
    prefetch = serializers.BooleanField(required=False, default=False)
    warm_checkpoint = serializers.CharField(
        required=False, allow_blank=True, max_length=255, help_text=WARM_HELP
    )


class LeaseOutput(serializers.Serializer):
    task_id = serializers.UUIDField(source="task.public_id")
    lease_token = serializers.UUIDField(source="attempt.lease_token")
    attempt = serializers.IntegerField(source="attempt.number")
    lease_expires_at = serializers.DateTimeField(source="attempt.lease_expires_at")
    workflow = serializers.JSONField()
    filename_prefix = serializers.CharField()
    width = serializers.IntegerField(source="task.width")
    height = serializers.IntegerField(source="task.height")
    batch_size = serializers.IntegerField(source="task.batch_size")
    seed = serializers.CharField(source="task.seed")
    checkpoint = serializers.CharField(source="task.checkpoint")
    prompt = serializers.CharField(source="task.prompt")
    negative_prompt = serializers.CharField(source="task.negative_prompt")
    relay_frames = serializers.SerializerMethodField(
        help_text="A ComfyUI front-door client follows this task: send its socket frames (POST …/frames)."
    )
    preview_method = serializers.CharField(
        source="task.preview_method",
        help_text="The client's `extra_data.preview_method`: pass it to ComfyUI with the prompt and, unless "
        "it is none or default, relay the latent previews (`t2i_preview` frames). Empty: send no extra_data.",
    )

    inputs = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()),
        help_text="Uploaded images the workflow's LoadImage nodes name, as {sha256, name, subfolder}: "
        "fetch each (POST tasks/{id}/inputs/{sha256}) and upload it to ComfyUI (/upload/image) first.",
    )

    expected_seconds = serializers.FloatField(
        source="attempt.expected_seconds",
        allow_null=True,
        help_text="Seconds the scheduler expects this task to take here from ComfyUI's start to its end, "
        "model switch included (its learned costs; null when it has none): a daemon goes by it until the "
        "sampler's pace is known, to ask for the next task just in time.",
    )

    def get_relay_frames(self, lease) -> bool:
        return bool(lease.task.client_id)


@dataclass(frozen=True)
class PendingWait:
    """What a lease attempt that found nothing hands to the long poll around it (workers_app.long_poll)."""

    worker_id: int
    limit: int  # open waits allowed: the worker's prefetch depth
    checkpoints: frozenset[str]
    prefetch: bool
    seconds: float
    warm: str = ""
    queued: bool = False  # after a wake-up: work is still queued (the wake is handed on)


def lease_once(request: Request, worker: Worker) -> services.TaskLease | PendingWait:
    """One lease attempt: the lease, or when nothing was found, how long the caller may wait for work
    (`wait`, capped by T2I_LEASE_MAX_WAIT) and for which worker."""
    body = request.data
    # A body that is not an object goes to the serializer as it is, which refuses it.
    data = {**request.query_params.dict(), **body} if isinstance(body, dict) else body
    valid = _valid(LeaseInput, data)
    if "warm_checkpoint" in valid:
        worker_services.worker_note_warm(worker=worker, checkpoint=valid["warm_checkpoint"])
    result = worker_services.worker_lease_next(worker=worker, prefetch=valid["prefetch"])
    if result is not None:
        return result
    return PendingWait(
        worker_id=worker.pk,
        limit=worker.prefetch,
        checkpoints=frozenset((worker.capabilities or {}).get("checkpoints") or ()),
        prefetch=valid["prefetch"],
        seconds=min(valid["wait"], settings.T2I["LEASE_MAX_WAIT"]),
        warm=worker.warm_checkpoint,
    )


class LeaseApi(WorkerApi):
    """One lease attempt. The URL serves it through `workers_app.long_poll`, which waits when it finds
    nothing and calls it again, with the wait as `request.waited`, each time it is woken."""

    @extend_schema(
        request=LeaseInput,
        parameters=[
            OpenApiParameter("wait", float, description="Seconds to long-poll when nothing is queued.")
        ],
        responses={200: LeaseOutput, 204: None},
    )
    def post(self, request: Request) -> Response:
        waited: PendingWait | None = getattr(request, "waited", None)
        if waited is not None:  # woken during the long poll: another attempt, for the worker as it is now
            found = worker_services.worker_lease_next(worker=self.worker, prefetch=waited.prefetch)
            if found is None:
                found = replace(waited, queued=waiting.work_queued())
        else:
            found = lease_once(request, self.worker)
        if isinstance(found, PendingWait):
            if found.seconds > 0 and waited is None:
                waiting.room.assert_room(found.worker_id, limit=found.limit)
            response = Response(status=204)
            response.pending_wait = found
            return response
        return Response(self.lease_answer(found))

    @staticmethod
    def lease_answer(result: services.TaskLease) -> dict:
        return LeaseOutput(result).data


class InventoryInput(serializers.Serializer):
    capabilities = CapabilitiesInput()


class InventoryOutput(serializers.Serializer):
    changed = serializers.BooleanField()
    object_info = serializers.CharField(allow_null=True, help_text=OBJECT_INFO_HELP)


class InventoryApi(WorkerApi):
    """What the worker's ComfyUI has now, sent when it changed (docs/worker-api.md, `POST inventory`)."""

    @extend_schema(request=InventoryInput, responses=InventoryOutput)
    def post(self, request: Request) -> Response:
        data = _valid(InventoryInput, request.data)
        changed = worker_services.worker_update_inventory(
            worker=self.worker, capabilities=data["capabilities"]
        )
        wanted = object_info_specs.object_info_wanted(worker=self.worker)
        return Response({"changed": changed, "object_info": wanted})


class RawBodyParser(BaseParser):
    """The body as bytes, refused (413) from its Content-Length before a byte is read when it is larger than
    T2I_OBJECT_INFO_MAX_BYTES; read past Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which caps form fields."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        most = settings.T2I["OBJECT_INFO_MAX_BYTES"]
        meta = parser_context["request"].META
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > most:
            raise TooLarge(f"/object_info may be at most {most} bytes.", fields={"body": ["Too large."]})
        return stream.read(most + 1) if stream is not None else b""


class ObjectInfoOutput(serializers.Serializer):
    sha256 = serializers.CharField()
    stored = serializers.BooleanField(help_text="False when the scheduler had it already.")


class ObjectInfoApi(WorkerApi):
    """The body of this worker's ComfyUI /object_info, sent when register or inventory answered
    `"object_info": "send"` (docs/worker-api.md). `Content-Encoding: gzip` is welcome."""

    parser_classes = [RawBodyParser]

    @extend_schema(request={"application/json": dict}, responses=ObjectInfoOutput)
    def post(self, request: Request, sha256: str) -> Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise InvalidInput(
                "Content-Encoding must be gzip or identity.",
                fields={"Content-Encoding": ["gzip or identity."]},
            )
        data = request.data if isinstance(request.data, bytes) else b""
        stored = object_info_specs.worker_store_object_info(
            worker=self.worker, sha256=sha256, data=data, gzipped=encoding == "gzip"
        )
        return Response({"sha256": sha256, "stored": stored})


class LeaseTokenInput(serializers.Serializer):
    lease_token = serializers.UUIDField()


class StartInput(LeaseTokenInput):
    comfyui_prompt_id = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")


class ProgressInput(LeaseTokenInput):
    value = serializers.FloatField(min_value=0)
    max = serializers.FloatField(min_value=0)


class CancelFlagOutput(serializers.Serializer):
    cancel = serializers.BooleanField()


def start(worker: Worker, task_id, body) -> dict:
    """The start report, over HTTP or the worker socket."""
    services.task_start(worker=worker, task_id=task_id, **_valid(StartInput, body))
    return {"cancel": False}


def progress(worker: Worker, task_id, body) -> dict:
    """A progress report, over HTTP or the worker socket."""
    data = _valid(ProgressInput, body)
    services.task_report_progress(
        worker=worker,
        task_id=task_id,
        lease_token=data["lease_token"],
        value=data["value"],
        maximum=data["max"],
    )
    return {"cancel": False}


class TaskStartApi(WorkerApi):
    @extend_schema(request=StartInput, responses=CancelFlagOutput)
    def post(self, request: Request, task_id) -> Response:
        return Response(start(self.worker, task_id, request.data))


class TaskProgressApi(WorkerApi):
    @extend_schema(request=ProgressInput, responses=CancelFlagOutput)
    def post(self, request: Request, task_id) -> Response:
        return Response(progress(self.worker, task_id, request.data))


class FramesInput(LeaseTokenInput):
    frames = serializers.ListField(
        child=serializers.ListField(min_length=2, max_length=2), max_length=500, allow_empty=True
    )

    def validate_frames(self, frames: list) -> list:
        for kind, data in frames:
            if not isinstance(kind, str) or len(kind) > 64 or not isinstance(data, dict):
                raise serializers.ValidationError("Each frame is [type, data object].")
        return frames


class FramesOutput(serializers.Serializer):
    relayed = serializers.IntegerField()


def frames(worker: Worker, task_id, body) -> dict:
    """A batch of relayed ComfyUI frames, over HTTP or the worker socket."""
    data = _valid(FramesInput, body)
    relayed = services.task_relay_frames(
        worker=worker, task_id=task_id, lease_token=data["lease_token"], frames=data["frames"]
    )
    return {"relayed": relayed}


class TaskFramesApi(WorkerApi):
    @extend_schema(request=FramesInput, responses=FramesOutput)
    def post(self, request: Request, task_id) -> Response:
        return Response(frames(self.worker, task_id, request.data))


class TaskInputApi(WorkerApi):
    """The bytes of one uploaded input image of a task this worker holds the live lease of."""

    @extend_schema(request=LeaseTokenInput, responses={(200, "application/octet-stream"): bytes})
    def post(self, request: Request, task_id, sha256: str) -> FileResponse:
        data = _valid(LeaseTokenInput, request.data)
        row = services.input_image_for_worker(
            worker_id=self.worker.pk, task_id=task_id, lease_token=data["lease_token"], sha256=sha256
        )
        return FileResponse(row.file.open("rb"), content_type="application/octet-stream")


class CompleteInput(LeaseTokenInput):
    images = serializers.ListField(child=serializers.FileField(), allow_empty=False)
    node_ids = serializers.ListField(
        child=serializers.CharField(max_length=64, allow_blank=True),
        required=False,
        default=list,
        help_text="The ComfyUI node id of each image, in the order of `images`.",
    )
    comfyui_prompt_id = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    lease_next = serializers.BooleanField(
        required=False, default=False, help_text="Also lease the next task; the answer carries it in `next`."
    )
    prefetch = serializers.BooleanField(
        required=False, default=False, help_text="With `lease_next`: as `prefetch` on `POST lease`."
    )


class CompleteOutput(serializers.Serializer):
    task_id = serializers.UUIDField(source="task.public_id")
    status = serializers.CharField(source="task.status")
    images = ImageOutput(many=True)
    next = LeaseOutput(
        allow_null=True,
        help_text="The next lease when `lease_next` asked for one and a task was there; else null.",
    )


def complete(request: Request, worker: Worker, task_id, lease_token: str | None = None) -> dict:
    """Shared by the worker API and the seed's POST /complete (which may name the lease another way). Holds
    one of the worker's completion slots (services.completion_slot) from before the body is read."""
    with services.completion_slot(worker_id=worker.pk) as slot:
        return _complete(request, worker, task_id, lease_token, slot)


def _complete(request: Request, worker: Worker, task_id, lease_token: str | None, slot) -> dict:
    body = request.data
    data = {
        "lease_token": lease_token or body.get("lease_token"),
        "comfyui_prompt_id": body.get("comfyui_prompt_id", ""),
        "images": request.FILES.getlist("images"),
        "node_ids": body.getlist("node_ids") if hasattr(body, "getlist") else body.get("node_ids", []),
        **{key: body[key] for key in ("lease_next", "prefetch") if key in body},
    }
    valid = _valid(CompleteInput, data)
    arguments = {
        "worker": worker,
        "task_id": task_id,
        "lease_token": valid["lease_token"],
        "files": valid["images"],
        "comfyui_prompt_id": valid["comfyui_prompt_id"],
        "node_ids": valid["node_ids"],
        "slot": slot,
    }
    if valid["lease_next"]:
        done = services.task_complete_and_lease(**arguments, prefetch=valid["prefetch"])
    else:
        done = services.task_complete(**arguments)
    return CompleteOutput(done, context={"request": request}).data


class TaskCompleteApi(WorkerApi):
    parser_classes = [ImageUploadParser, FormParser]

    @extend_schema(request={"multipart/form-data": CompleteInput}, responses=CompleteOutput)
    def post(self, request: Request, task_id) -> Response:
        return Response(complete(request, self.worker, task_id))


class FailInput(LeaseTokenInput):
    code = serializers.RegexField(r"^[a-z][a-z0-9_]{0,63}$")
    message = serializers.CharField(max_length=4000, allow_blank=True, trim_whitespace=False)
    retryable = serializers.BooleanField(default=False)
    details = serializers.DictField(required=False, default=dict)


class TaskSummaryOutput(serializers.Serializer):
    task_id = serializers.UUIDField(source="public_id")
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    max_attempts = serializers.IntegerField()


class TaskFailApi(WorkerApi):
    @extend_schema(request=FailInput, responses=TaskSummaryOutput)
    def post(self, request: Request, task_id) -> Response:
        data = _valid(FailInput, request.data)
        details = data["details"]
        message = data["message"]
        where = ", ".join(f"{k}={details[k]}" for k in ("node_id", "node_type", "input") if details.get(k))
        if where:
            message = f"{message} ({where})"
        model = [details.get(k) for k in ("node_type", "input", "value")]
        if data["code"] == services.MODEL_MISSING and all(isinstance(v, str) and v for v in model):
            task = services.task_fail_model_missing(
                worker=self.worker,
                task_id=task_id,
                lease_token=data["lease_token"],
                message=message,
                class_type=model[0],
                input_name=model[1],
                value=model[2],
            )
            return Response(TaskSummaryOutput(task).data)
        task = services.task_fail(
            worker=self.worker,
            task_id=task_id,
            lease_token=data["lease_token"],
            code=data["code"],
            message=message,
            retryable=data["retryable"],
        )
        return Response(TaskSummaryOutput(task).data)


class TaskReleaseApi(WorkerApi):
    @extend_schema(request=LeaseTokenInput, responses=TaskSummaryOutput)
    def post(self, request: Request, task_id) -> Response:
        data = _valid(LeaseTokenInput, request.data)
        task = services.task_release(worker=self.worker, task_id=task_id, lease_token=data["lease_token"])
        return Response(TaskSummaryOutput(task).data)


class OfflineApi(WorkerApi):
    @extend_schema(request=None, responses={200: None})
    def post(self, request: Request) -> Response:
        requeued = worker_services.worker_go_offline(worker=self.worker)
        return Response({"status": "offline", "requeued": requeued})


def _valid(serializer_class: type[serializers.Serializer], data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
