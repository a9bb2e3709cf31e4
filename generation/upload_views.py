"""The "My uploads" pages: the signed-in user's uploads (ComfyUI's POST /upload/image and /upload/mask, and
the files of "Run a workflow"), each one's image, and deleting one (a confirmation page, then a POST).
Only the owner sees or deletes an upload (selectors.upload_for); the rule is services.input_image_delete."""

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from generation import selectors, services
from generation.apis import upload_file_response
from generation.exceptions import NotFound, UploadInUse
from generation.models import InputImage, Task

PAGE_SIZE = 24


def _own_upload(request: HttpRequest, upload_id: uuid.UUID) -> InputImage:
    try:
        return selectors.upload_for(request.user, upload_id)
    except NotFound:
        raise Http404("No such upload.")


@login_required
def my_uploads(request: HttpRequest) -> HttpResponse:
    uploads = selectors.uploads_for(request.user)
    page = Paginator(uploads, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "generation/uploads.html", {"page": page})


@login_required
def upload_image(request: HttpRequest, upload_id: uuid.UUID) -> FileResponse:
    try:
        return upload_file_response(_own_upload(request, upload_id))
    except NotFound:
        raise Http404("The upload's file is missing.")


@login_required
@require_http_methods(["GET", "POST"])
def upload_delete(request: HttpRequest, upload_id: uuid.UUID) -> HttpResponse:
    """GET: what deleting the upload does (or why it cannot be deleted now); POST: delete it."""
    upload = _own_upload(request, upload_id)
    if request.method == "POST":
        try:
            services.input_image_delete(upload=upload)
        except UploadInUse as exc:
            messages.error(request, exc.detail)
            return redirect("web:upload-delete", upload_id=upload.public_id)
        except NotFound:
            raise Http404("No such upload.")
        messages.success(request, f"{upload.comfy_name} was deleted.")
        return redirect("web:uploads")
    tasks = upload.tasks.only("public_id", "status", "created_at")
    context = {
        "upload": upload,
        "unfinished": list(tasks.filter(status__in=Task.UNFINISHED_STATUSES).order_by("id")[:20]),
        "finished": list(tasks.filter(status__in=Task.FINISHED_STATUSES).order_by("-id")[:10]),
    }
    return render(request, "generation/upload_delete.html", context)
