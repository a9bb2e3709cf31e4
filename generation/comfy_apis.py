"""The ComfyUI front door: ComfyUI's HTTP routes under /comfy/ (and /comfy/api/), answered for the whole
farm, each client seeing its own space (generation.comfy_selectors). Shapes: generation.comfy_shapes."""

from __future__ import annotations

import json
import mimetypes
import platform
import sys
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from generation import comfy_selectors, comfy_shapes, node_specs, services
from generation.api_workflows import WorkflowProblem
from generation.apis import CanSubmit
from generation.authentication import ComfyKeyAuthentication
from generation.client_address import client_address
from generation.exceptions import InvalidInput, WorkflowRejected
from generation.models import Task
from generation.services.workflow_submit import farm_inventory, registered_workers
from generation.upload_parsers import InputUploadParser

HISTORY_DEFAULT_ITEMS = 200
HISTORY_MAX_ITEMS = 1000
HISTORY_MAX_DELETE = 1000


class AnyJsonParser(JSONParser):
    """ComfyUI parses a POST body as JSON whatever its Content-Type says (protocol 3.1)."""

    media_type = "*/*"


class ComfyApi(APIView):
    """Same users and tokens as the REST API, or a URL key (`/comfy/k/<key>/…`, generation.comfy_keys);
    without credentials, the anonymous space when T2I_ALLOW_ANONYMOUS_SUBMIT is on."""

    authentication_classes = [ComfyKeyAuthentication, *api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    permission_classes = [CanSubmit]
    parser_classes = [AnyJsonParser]
    # Not in the REST API's OpenAPI schema: these are ComfyUI's routes, answers and error shapes
    # (docs/comfy-front-door.md), not the REST API's `{"error", "detail", "fields"}`.
    schema = None


def comfy_error(kind: str, message: str, details: str = "") -> Response:
    body = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return Response({"error": body, "node_errors": {}}, status=400)


def empty_ok() -> HttpResponse:
    """ComfyUI's empty 200 answer (POST /queue, /interrupt): no body."""
    response = HttpResponse(status=200)
    del response["Content-Type"]
    return response


class PromptApi(ComfyApi):
    def get(self, request: Request) -> Response:
        return Response({"exec_info": {"queue_remaining": comfy_selectors.queue_remaining(request.user)}})

    def post(self, request: Request) -> Response:
        try:
            body = request.data
        except ParseError:  # ComfyUI answers a 500 here; the farm says what is wrong, in ComfyUI's shape
            return comfy_error("invalid_prompt", "The body is not valid JSON.")
        if not isinstance(body, dict) or "prompt" not in body:
            return comfy_error("no_prompt", "No prompt provided")
        services.submit_claim(user=request.user, address=client_address(request))
        try:
            task, _ = services.comfy_prompt_submit(
                owner=request.user,
                workflow=body["prompt"],
                client_prompt_id=_text(body.get("prompt_id")),
                client_id=_text(body.get("client_id")),
                extra_data=body.get("extra_data"),
            )
        except WorkflowRejected as exc:
            return _rejected(exc.problem)
        return Response({"prompt_id": comfy_shapes.prompt_id_of(task), "number": task.pk, "node_errors": {}})


def _text(value) -> str:
    """An optional id: None means absent; numbers are taken as text (ComfyUI would take them as they are)."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _rejected(problem: WorkflowProblem) -> Response:
    return Response({"error": problem.error, "node_errors": problem.node_errors}, status=400)


class UploadImageApi(ComfyApi):
    """ComfyUI's POST /upload/image: multipart `image`, optional `subfolder`, `type` (input|temp) and
    `overwrite`, stored in the sender's space (services.inputs). A `LoadImage` of the answered name runs."""

    parser_classes = [InputUploadParser]

    def post(self, request: Request) -> Response:
        row = services.input_image_upload(owner=request.user, **_upload_form(request, "file"))
        return Response({"name": row.name, "subfolder": row.subfolder, "type": row.kind})


class UploadMaskApi(ComfyApi):
    """ComfyUI's POST /upload/mask: /upload/image's form plus `original_ref` (JSON {filename, subfolder,
    type}); stores the original's RGB with the mask's alpha under the mask's name (services.inputs)."""

    parser_classes = [InputUploadParser]

    def post(self, request: Request) -> Response:
        original_ref = _json_field(request.data.get("original_ref"), "original_ref")
        row = services.input_image_mask_upload(
            owner=request.user, original_ref=original_ref, **_upload_form(request, "mask")
        )
        return Response({"name": row.name, "subfolder": row.subfolder, "type": row.kind})


def _upload_form(request: Request, what: str) -> dict[str, Any]:
    """/upload/image's form (ComfyUI's fields): the file in `image`, `subfolder`, `type`, `overwrite`."""
    upload = request.FILES.get("image")
    if upload is None:
        raise InvalidInput("No image in the form.", fields={"image": [f"Send the {what} as `image`."]})
    data = request.data
    return {
        "upload": upload,
        "subfolder": str(data.get("subfolder") or ""),
        "kind": str(data.get("type") or "input"),
        "overwrite": str(data.get("overwrite") or "").lower() in ("true", "1"),
    }


def _json_field(raw: Any, name: str) -> Any:
    if not isinstance(raw, str):
        raise InvalidInput(f"{name} is required.", fields={name: ["Send it as JSON text."]})
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidInput(f"{name} is not valid JSON.", fields={name: ["Not valid JSON."]})


class HistoryApi(ComfyApi):
    def get(self, request: Request, prompt_id: str | None = None) -> Response:
        if prompt_id is not None:
            task = comfy_selectors.history_entry(request.user, prompt_id)
            tasks = [task] if task is not None else []
        else:
            max_items = _int_param(request, "max_items", HISTORY_DEFAULT_ITEMS, most=HISTORY_MAX_ITEMS)
            offset = request.query_params.get("offset")
            tasks = comfy_selectors.history(
                request.user,
                max_items=max_items,
                offset=None if offset is None else _int_param(request, "offset", 0),
            )
        entries = ((comfy_shapes.prompt_id_of(task), comfy_shapes.history_entry(task)) for task in tasks)
        return Response({pid: entry for pid, entry in entries if entry is not None})

    def post(self, request: Request, prompt_id: str | None = None) -> HttpResponse:
        """{"clear": true} and/or {"delete": [ids]}: finished prompts leave this client's history (ComfyUI
        3.4); their images stay. ComfyUI answers bad input with a 500; the farm with a 400 in its shape."""
        if prompt_id is not None:
            return HttpResponse(status=405)
        try:
            body = request.data
        except ParseError:
            return comfy_error("invalid_request", "The body is not valid JSON.")
        if not isinstance(body, dict):
            return comfy_error("invalid_request", "The body must be a JSON object.")
        clear, delete = body.get("clear", False), body.get("delete", [])
        if not isinstance(clear, bool):
            return comfy_error("invalid_request", "clear must be true or false.")
        if not isinstance(delete, list) or not all(isinstance(i, str) for i in delete):
            return comfy_error("invalid_request", "delete must be a list of prompt ids.")
        if len(delete) > HISTORY_MAX_DELETE:
            return comfy_error("invalid_request", f"delete takes at most {HISTORY_MAX_DELETE} ids at once.")
        services.comfy_history_hide(user=request.user, prompt_ids=delete, clear=clear)
        return empty_ok()


def _int_param(request: Request, name: str, default: int, *, most: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"{name} must be a whole number.", fields={name: ["Must be a whole number."]})
    return min(int(raw), most) if most else int(raw)


class ViewApi(ComfyApi):
    def get(self, request: Request) -> HttpResponse:
        """The image's bytes, read here on the view's thread (an image is at most T2I_MAX_IMAGE_BYTES). A
        FileResponse would stream them, and under ASGI Django reads a file's synchronous iterator on the
        process's shared thread (all of it, then sends it): one more hop per image, behind the worker calls
        and socket steps that thread serves."""
        params = request.query_params
        if params.get("type", "output") != "output":
            raise InvalidInput("The farm keeps output images only.", fields={"type": ["Must be output."]})
        image = comfy_selectors.image_named(
            request.user, params.get("subfolder", ""), params.get("filename", "")
        )
        if image is None:
            return HttpResponse(status=404)
        content_type = mimetypes.guess_type(image.file.name)[0] or "application/octet-stream"
        with image.file.open("rb") as stored:
            return HttpResponse(stored.read(), content_type=content_type)


class QueueApi(ComfyApi):
    def get(self, request: Request) -> Response:
        running, pending = comfy_selectors.queue(request.user)
        return Response(
            {
                "queue_running": [comfy_shapes.queue_item(t) for t in running],
                "queue_pending": [comfy_shapes.queue_item(t) for t in pending],
            }
        )

    def post(self, request: Request) -> HttpResponse:
        """{"delete": [ids]} or {"clear": true}: pending prompts only (ComfyUI 3.2)."""
        body = request.data if isinstance(request.data, dict) else {}
        pending = comfy_selectors.space(request.user).filter(status=Task.Status.QUEUED)
        if body.get("clear") is True:
            _cancel_all(pending)
        delete = body.get("delete")
        if isinstance(delete, list):
            ids = [i for i in delete if isinstance(i, str)][:1000]
            for prompt_id in ids:
                _cancel_all(
                    comfy_selectors.by_prompt_id(request.user, prompt_id).filter(status=Task.Status.QUEUED)
                )
        return empty_ok()


class InterruptApi(ComfyApi):
    def post(self, request: Request) -> HttpResponse:
        """The client's running prompts, or only the one named (a pending one is left alone, as ComfyUI)."""
        body = request.data if isinstance(request.data, dict) else {}
        running = comfy_selectors.space(request.user).filter(status__in=Task.ACTIVE_STATUSES)
        prompt_id = body.get("prompt_id")
        if isinstance(prompt_id, str) and prompt_id:
            running = running & comfy_selectors.by_prompt_id(request.user, prompt_id)
        _cancel_all(running)
        return empty_ok()


def _cancel_all(tasks) -> None:
    services.tasks_cancel(tasks=list(tasks[:1000]))


class ObjectInfoApi(ComfyApi):
    def get(self, request: Request, node_class: str | None = None) -> HttpResponse:
        """The online workers' /object_info merged (generation.node_specs), rendered once per set of specs.
        `X-T2I-Partial` while some worker has reported only its node classes, output flags and model files."""
        farm = node_specs.farm_object_info(registered_workers())
        if node_class is None:
            body = farm.body
        else:
            entry = farm.info.get(node_class)
            body = json.dumps({node_class: entry} if entry is not None else {}, ensure_ascii=False).encode()
        response = HttpResponse(body, content_type="application/json")
        if farm.partial:
            response["X-T2I-Partial"] = "some workers report node classes, output flags and model files only"
        return response


class SystemStatsApi(ComfyApi):
    def get(self, request: Request) -> Response:
        online = [w for w in registered_workers() if w.is_online]
        versions = sorted({w.capabilities.get("comfyui_version") or "" for w in online} - {""})
        return Response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": 0,
                    "ram_free": 0,
                    "comfyui_version": ", ".join(versions) or "farm",
                    "python_version": platform.python_version(),
                    "pytorch_version": "",
                    "embedded_python": False,
                    "argv": [],
                },
                "devices": comfy_shapes.devices({**w.capabilities, "worker": w.name} for w in online),
            }
        )


class FeaturesApi(ComfyApi):
    def get(self, request: Request) -> Response:
        return Response(
            {"supports_preview_metadata": False, "max_upload_size": settings.T2I["MAX_IMAGE_BYTES"]}
        )


class ModelsApi(ComfyApi):
    def get(self, request: Request, folder: str | None = None) -> Response:
        folders = comfy_shapes.model_folders(farm_inventory(registered_workers()))
        if folder is None:
            return Response(sorted(folders))
        if folder not in folders:
            return Response(
                {"error": "not_found", "detail": f"No model folder {folder!r}.", "fields": {}}, 404
            )
        return Response(folders[folder])


class EmbeddingsApi(ComfyApi):
    def get(self, request: Request) -> Response:
        """Workers do not report their embeddings yet: an empty list, as a ComfyUI without any answers."""
        return Response([])
