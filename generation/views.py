"""The web site: server-rendered pages over the same selectors and services as the API.

Views stay thin: read through selectors, change state only through services, and decide who may see or
change a task in the helpers at the top of this file.
"""

import json
import uuid
from http import HTTPStatus
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dates import MONTHS_3
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import Truncator
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from generation import eta, selectors, services, web_selectors, workflow_intake
from generation.client_address import client_address
from generation.exceptions import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    Throttled,
    Unavailable,
)
from generation.forms import GalleryFilterForm, GenerateForm, SignUpForm, WorkflowRunForm
from generation.models import Image, Task, WorkflowTemplate

# Task.error_code → what went wrong, in plain words. The worker's own message is shown below it.
ERROR_SENTENCES = {
    "workflow_invalid": "ComfyUI refused the workflow: a node, model or setting it needs is missing or not "
    "allowed on that machine.",
    "execution_error": "ComfyUI stopped with an error while making the image.",
    "worker_lost": "The worker running this task stopped answering, and no attempts were left.",
    "comfyui_lost": "The worker lost contact with ComfyUI while the task was running.",
    "comfyui_unavailable": "The worker could not reach its ComfyUI server.",
    "upload_failed": "The image was made but could not be uploaded to the scheduler.",
    "internal": "The worker ran into an unexpected error.",
    "cancelled": "This task was cancelled before it finished.",
}
ACTIVE_OR_QUEUED = (Task.Status.QUEUED, *Task.ACTIVE_STATUSES)


# --- Who may do what -------------------------------------------------------------------------------------


def _may_submit(user) -> bool:
    return user.is_authenticated or settings.T2I["ALLOW_ANONYMOUS_SUBMIT"]


def _visible_task(request: HttpRequest, task_id) -> Task:
    """The task if this visitor may see it (selectors.task_visible_to), else 404."""
    try:
        return selectors.task_for(request.user, task_id)
    except NotFound:
        raise Http404("No such task.")


def _visible_image(request: HttpRequest, image_id: uuid.UUID) -> Image:
    """The image with this public id if this visitor may see its task, else 404."""
    image = (
        Image.objects.select_related("task", "task__template", "task__owner", "attempt__worker")
        .filter(public_id=image_id)
        .first()
    )
    if image is None or not selectors.task_visible_to(image.task, request.user):
        raise Http404("No such image.")
    return image


# The session key holding the ids of the tasks this browser submitted anonymously, and how many it keeps.
ANONYMOUS_TASKS = "t2i_anonymous_tasks"
ANONYMOUS_TASKS_KEPT = 200


def _remember_anonymous_task(request: HttpRequest, task: Task) -> None:
    """An anonymous submit from the form: its session will see the task's images in the gallery."""
    if task.owner_id is None:
        kept = request.session.get(ANONYMOUS_TASKS, [])
        request.session[ANONYMOUS_TASKS] = [*kept, str(task.public_id)][-ANONYMOUS_TASKS_KEPT:]


def _anonymous_tasks(request: HttpRequest) -> list[str]:
    return [] if request.user.is_authenticated else request.session.get(ANONYMOUS_TASKS, [])


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return fallback


# --- Generate --------------------------------------------------------------------------------------------


def generate(request: HttpRequest) -> HttpResponse:
    if not _may_submit(request.user):
        if request.method == "POST":
            return redirect_to_login(request.get_full_path())
        return render(request, "generation/welcome.html", {"signup_enabled": settings.T2I["SIGNUP_ENABLED"]})
    samplers, schedulers = web_selectors.worker_options()
    choices = {
        "checkpoints": selectors.checkpoints_available(),
        "templates": list(WorkflowTemplate.objects.values_list("name", flat=True)),
        "samplers": samplers,
        "schedulers": schedulers,
    }
    status = HTTPStatus.OK
    if request.method == "POST":
        form = GenerateForm(request.POST, **choices)
        try:
            services.submit_claim(user=request.user, address=client_address(request))
        except (Throttled, Unavailable) as exc:
            form.add_error(None, exc.detail)
            status = exc.status
        else:
            if form.is_valid():
                try:
                    task = services.task_submit(owner=request.user, data=form.task_fields())
                except InvalidInput as exc:
                    form.add_service_errors(exc)
                else:
                    _remember_anonymous_task(request, task)
                    if task.warning:
                        messages.warning(request, task.warning)
                    return redirect("web:task", task_id=task.public_id)
    else:
        form = GenerateForm(initial=GenerateForm.initial_from_query(request.GET), **choices)
    recent = []
    if request.user.is_authenticated:
        recent = list(selectors.tasks_for(request.user, mine=True)[:6])
    return render(request, "generation/generate.html", {"form": form, "recent": recent}, status=status)


def run_workflow(request: HttpRequest) -> HttpResponse:
    """Run a whole API-format workflow: pasted, or read from a .json file or a ComfyUI PNG. "Check" shows what
    it needs and whether the farm can run it; "Run" stores the LoadImage files given and queues it."""
    if not _may_submit(request.user):
        return redirect_to_login(request.get_full_path())
    report, status = None, HTTPStatus.OK
    form = WorkflowRunForm()
    if request.method == "POST":
        form = WorkflowRunForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                workflow = workflow_intake.read_workflow(
                    form.cleaned_data["workflow"], form.cleaned_data["workflow_file"]
                )
            except InvalidInput as exc:
                form.add_service_errors(exc)
            else:
                form = WorkflowRunForm({"workflow": json.dumps(workflow, indent=2)})
                form.is_valid()
                if request.POST.get("action") == "run":
                    task = _run_workflow(request, form, workflow)
                    if task is not None:
                        return redirect("web:task", task_id=task.public_id)
                report = workflow_intake.describe(workflow, request.user)
        if form.errors:
            status = HTTPStatus.BAD_REQUEST
    return render(request, "generation/run_workflow.html", {"form": form, "report": report}, status=status)


def _run_workflow(request: HttpRequest, form: WorkflowRunForm, workflow: dict) -> Task | None:
    """Queue the workflow with the LoadImage files of the form; None with the errors added to `form`."""
    uploads = {
        name.removeprefix("input_"): upload
        for name, upload in request.FILES.items()
        if name.startswith("input_")
    }
    try:
        services.submit_claim(user=request.user, address=client_address(request))
        workflow = services.workflow_with_uploads(owner=request.user, workflow=workflow, uploads=uploads)
        task = services.task_submit_workflow(owner=request.user, workflow=workflow)
    except DomainError as exc:
        form.add_service_errors(exc)
        return None
    _remember_anonymous_task(request, task)
    if task.warning:
        messages.warning(request, task.warning)
    return task


def settings_query(task: Task, *, with_seed: bool = True) -> str:
    """The generate page's query string that reproduces `task` (without its seed: a new variation)."""
    params = {name: getattr(task, name) for name in GenerateForm.TASK_FIELDS if name != "seed"}
    params |= {"cfg": f"{task.cfg:g}", "template": task.template.name if task.template else ""}
    if with_seed:
        params["seed"] = task.seed
    return urlencode({k: v for k, v in params.items() if v != ""})


# --- Task page, cancel, my queue -------------------------------------------------------------------------


def task_detail(request: HttpRequest, task_id) -> HttpResponse:
    task = _visible_task(request, task_id)
    position = selectors.task_queue_position(task)
    basis = web_selectors.eta_basis() if not task.is_finished else None
    context = {
        "task": task,
        "position": position,
        "eta_basis": basis,
        "eta_seconds": _eta(task, basis, position),
        "images": list(task.images.order_by("index")),
        "error_sentence": ERROR_SENTENCES.get(task.error_code, "The task failed.") if task.error_code else "",
        "may_cancel": not task.is_finished and selectors.task_cancellable_by(task, request.user),
        "again_query": settings_query(task),
        "new_seed_query": settings_query(task, with_seed=False),
    }
    return render(request, "generation/task.html", context)


@require_POST
def task_cancel(request: HttpRequest, task_id) -> HttpResponse:
    task = _visible_task(request, task_id)
    if not selectors.task_cancellable_by(task, request.user):
        raise Http404("No such task.")
    try:
        services.task_cancel(task=task)
    except Conflict as exc:
        messages.info(request, exc.detail)
    else:
        messages.success(request, "The task was cancelled.")
    return redirect(_safe_next(request, reverse("web:task", kwargs={"task_id": task.public_id})))


@login_required
def my_queue(request: HttpRequest) -> HttpResponse:
    tasks = list(
        selectors.tasks_for(request.user, mine=True)
        .filter(status__in=ACTIVE_OR_QUEUED)
        .order_by("-priority", "id")[:200]
    )
    basis = web_selectors.eta_basis()
    rows = []
    for task in sorted(tasks, key=lambda t: t.status == Task.Status.QUEUED):  # running ones first
        position = selectors.task_queue_position(task)
        rows.append({"task": task, "position": position, "eta_seconds": _eta(task, basis, position)})
    return render(request, "generation/queue.html", {"rows": rows, "eta_basis": basis})


def _eta(task: Task, basis: web_selectors.EtaBasis | None, position: int | None) -> float | None:
    """Placement's ETA (generation.eta); the median-based one while no live worker is in the plan."""
    if basis is None:
        return None
    seconds = eta.seconds_left(task)
    return seconds if seconds is not None else basis.for_task(task, position)


# --- Gallery and images ----------------------------------------------------------------------------------


def _int_param(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return min(int(value), web_selectors.MAX_ID) if value.isascii() and value.isdigit() else None


def _cut(text: str, length: int) -> str:
    """The `truncatechars` filter, without its per-character loop for the usual short ASCII prompt."""
    if len(text) <= length and text.isascii():
        return text
    return Truncator(text).chars(length)


def gallery_thumbs(images: list[Image]) -> list[dict]:
    """What the gallery grid shows for each image, worked out here rather than by template filters and tags
    per image (a page of 48 spent most of its time in them).

    The same markup, byte for byte, as `{% url %}`, `truncatechars` and `date` made
    (tests/web/test_gallery.py renders both).
    """
    # One reverse() for the page: the image URL ends in its public id ("…/images/<id>/").
    placeholder = f"{uuid.UUID(int=0)}/"
    image_url = reverse("web:image", args=[uuid.UUID(int=0)])[: -len(placeholder)]
    months = {}
    thumbs = []
    for image in images:
        created = timezone.localtime(image.created_at)
        if (month := months.get(created.month)) is None:
            month = months[created.month] = MONTHS_3[created.month].title()
        prompt = image.task.prompt
        thumbs.append(
            {
                "href": f"{image_url}{image.public_id}/",
                "src": (image.thumbnail or image.file).url,
                "alt": _cut(prompt, 200),
                "caption": _cut(prompt, 90),
                "width": str(image.width),  # text already: the template would localize a number
                "height": str(image.height),
                "iso": created.isoformat(),
                "when": f"{created.day} {month}, {created.hour:02d}:{created.minute:02d}",  # "j M, H:i"
            }
        )
    return thumbs


def gallery(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated and not settings.T2I["ALLOW_ANONYMOUS_SUBMIT"]:
        return redirect_to_login(request.get_full_path())
    checkpoints = [c["name"] for c in selectors.checkpoints_available()]
    form = GalleryFilterForm(request.GET, checkpoints=checkpoints)
    filters = form.filters()
    page = web_selectors.gallery_page(
        request.user,
        filters,
        before=_int_param(request, "before"),
        after=_int_param(request, "after"),
        anonymous_tasks=_anonymous_tasks(request),
    )
    kept = request.GET.copy()
    for name in ("before", "after"):
        kept.pop(name, None)
    base = kept.urlencode()

    def link(**cursor) -> str:
        return "?" + "&".join(part for part in (base, urlencode(cursor)) if part)

    context = {
        "form": form,
        "page": page,
        "thumbs": gallery_thumbs(page.images),
        "filtered": any([filters.q, filters.mine, filters.checkpoint, filters.date_from, filters.date_to]),
        "first_url": "?" + base,
        "newer_url": link(after=page.newer) if page.newer else "",
        "older_url": link(before=page.older) if page.older else "",
        "is_first_page": not request.GET.get("before") and not request.GET.get("after"),
    }
    return render(request, "generation/gallery.html", context)


def image_detail(request: HttpRequest, image_id: uuid.UUID) -> HttpResponse:
    image = _visible_image(request, image_id)
    task = image.task
    attempt = image.attempt
    run_seconds = None
    if attempt.started_at and attempt.finished_at:
        run_seconds = (attempt.finished_at - attempt.started_at).total_seconds()
    context = {
        "image": image,
        "task": task,
        "worker": attempt.worker,
        "run_seconds": run_seconds,
        "siblings": list(task.images.exclude(pk=image.pk).order_by("index")),
        "may_delete": services.image_deletable_by(image, request.user),
        "reuse_query": settings_query(task),
    }
    return render(request, "generation/image.html", context)


def image_download(request: HttpRequest, image_id: uuid.UUID) -> FileResponse:
    image = _visible_image(request, image_id)
    extension = image.file.name.rsplit(".", 1)[-1]
    try:
        handle = image.file.open("rb")
    except FileNotFoundError:
        raise Http404("The image file is missing.")
    return FileResponse(
        handle, as_attachment=True, filename=f"{image.task.public_id}_{image.index}.{extension}"
    )


@require_POST
def image_delete(request: HttpRequest, image_id: uuid.UUID) -> HttpResponse:
    image = _visible_image(request, image_id)
    try:
        services.image_delete(image=image, by=request.user)
    except Forbidden as exc:
        raise PermissionDenied(exc.detail)
    messages.success(request, "The image was deleted.")
    return redirect(_safe_next(request, reverse("web:gallery")))


# --- Accounts --------------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"signup_enabled": settings.T2I["SIGNUP_ENABLED"]}


@never_cache  # a form that comes back with errors holds the typed passwords (forms.SignUpForm)
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.T2I["SIGNUP_ENABLED"]:
        raise Http404("Sign-up is switched off.")
    if request.user.is_authenticated:
        return redirect("web:generate")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}. Your account is ready.")
        return redirect("web:generate")
    return render(request, "registration/signup.html", {"form": form})


# --- The original front end ------------------------------------------------------------------------------


def legacy(request: HttpRequest) -> HttpResponse:
    return render(request, "generation/legacy.html", {"may_submit": _may_submit(request.user)})
