"""The operations console: tasks, images, uploads, workflow templates, webhook deliveries and the farm
dashboard.

Tasks, images and deliveries are view-only: every change is an action that calls a service (task_cancel,
task_retry, task_set_priority, webhook_retry_now), and domain errors come back as messages.
"""

import json
import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, RelatedFieldListFilter
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Q
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from generation import (
    admin_accounts,  # noqa: F401  (the users' admin: deleting an account takes its tasks)
    dashboard,
    eta,
    services,
    storage_space,
    webhooks,
)
from generation.admin_helpers import ObjectActionsMixin, seconds_text, status_badge
from generation.exceptions import DomainError
from generation.models import (
    ApiToken,
    Image,
    InputImage,
    Task,
    TaskAttempt,
    WebhookDelivery,
    WorkflowTemplate,
)
from workers_app.models import Worker

TASK_COLOURS = {
    Task.Status.QUEUED: "#757575",
    Task.Status.LEASED: "#6a1b9a",
    Task.Status.RUNNING: "#1565c0",
    Task.Status.COMPLETED: "#2e7d32",
    Task.Status.FAILED: "#c62828",
    Task.Status.CANCELLED: "#5d4037",
}


def task_link(task: Task):
    return format_html(
        '<a href="{}"><code>{}</code></a>',
        reverse("admin:generation_task_change", args=[task.pk]),
        str(task.public_id)[:8],
    )


def thumbnail(image: Image, size: int = 96):
    source = image.thumbnail or image.file
    return format_html(
        '<a href="{}" target="_blank" rel="noopener"><img src="{}" alt="image {}" loading="lazy" '
        'style="max-width:{}px;max-height:{}px;border-radius:4px;vertical-align:middle"></a>',
        image.file.url,
        source.url,
        image.index,
        size,
        size,
    )


class ViewOnlyMixin:
    """Rows change only through actions (services): no add, no edit form, no delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # Without an object this is the permission to run actions from the list.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False


# --- Tasks ----------------------------------------------------------------------------------------------


class AttemptInline(admin.TabularInline):
    model = TaskAttempt
    fields = [
        "number",
        "worker",
        "leased_at",
        "started_at",
        "finished_at",
        "outcome",
        "placement",
        "expected_seconds",
        "switched",
        "error_code",
        "error_message",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = "Attempts (leases)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("worker")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class TaskPaginator(Paginator):
    """Exact counts, except for the unfiltered list on PostgreSQL: there COUNT(*) would read every task, so
    the planner's estimate (pg_class.reltuples, kept by autovacuum) stands in once the table is large."""

    ESTIMATE_ABOVE = 100_000

    @cached_property
    def count(self) -> int:
        if connection.vendor == "postgresql" and not self.object_list.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [Task._meta.db_table]
                )
                estimate = cursor.fetchone()[0]
            if estimate > self.ESTIMATE_ABOVE:
                return estimate
        return super().count


class CheckpointFilter(admin.SimpleListFilter):
    """Checkpoints the workers reported (a DISTINCT over a million tasks would be slow)."""

    title = "checkpoint"
    parameter_name = "checkpoint"

    def lookups(self, request, model_admin):
        names = {
            c for w in Worker.objects.exclude(registered_at=None).only("capabilities") for c in w.checkpoints
        }
        return [(name, name) for name in sorted(names)] + [("-", "(none)")]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(checkpoint="" if value == "-" else value)


@admin.register(Task)
class TaskAdmin(ObjectActionsMixin, ViewOnlyMixin, admin.ModelAdmin):
    object_actions = {"cancel": "Cancel", "retry": "Retry", "raise_priority": "Priority +10"}
    list_display = [
        "id_column",
        "status_column",
        "prompt_column",
        "owner",
        "worker",
        "checkpoint_column",
        "priority_column",
        "created_column",
        "wait_column",
        "run_column",
        "progress_column",
    ]
    list_display_links = ["id_column"]
    list_filter = [
        "status",
        ("worker", RelatedFieldListFilter),
        ("owner", RelatedFieldListFilter),
        CheckpointFilter,
        ("created_at", DateFieldListFilter),
        "template",
    ]
    search_fields = ["prompt"]
    search_help_text = "Words in the prompt, or a task id."
    list_select_related = ["worker", "owner", "template"]
    list_per_page = 50
    paginator = TaskPaginator
    show_full_result_count = False
    actions = ["retry", "cancel", "raise_priority"]
    inlines = [AttemptInline]
    readonly_fields = [
        "status_column",
        "wait_column",
        "run_column",
        "progress_column",
        "gallery",
        "deliveries",
        "waiting_column",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "public_id",
                    "status_column",
                    "progress_column",
                    "owner",
                    "template",
                    "checkpoint",
                    "priority",
                    "worker",
                    "waiting_column",
                    ("attempts", "max_attempts", "lease_count"),
                    "warning",
                    ("error_code", "error_message"),
                ]
            },
        ),
        ("Prompt", {"fields": ["prompt", "negative_prompt"]}),
        (
            "Parameters",
            {
                "fields": [
                    ("width", "height", "batch_size"),
                    ("steps", "cfg"),
                    ("sampler", "scheduler"),
                    "seed",
                ]
            },
        ),
        (
            "Timing",
            {
                "fields": [
                    ("created_at", "leased_at", "started_at", "finished_at"),
                    ("wait_column", "run_column"),
                    "lease_expires_at",
                ]
            },
        ),
        ("Images", {"fields": ["gallery"]}),
        ("Callback", {"fields": ["callback_url", "deliveries"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("worker", "owner", "template")

    def object_action_applies(self, obj: Task, action: str) -> bool:
        """Cancel while the task can still finish, Retry once it failed or was cancelled, Priority while it
        waits in the queue (services.task_cancel, task_retry and task_set_priority refuse the rest)."""
        if action == "cancel":
            return not obj.is_finished
        if action == "retry":
            return obj.is_retryable
        if action == "raise_priority":
            return obj.status == Task.Status.QUEUED
        return True

    def get_object(self, request, object_id, from_field=None):
        queryset = self.get_queryset(request).prefetch_related("images", "webhook_deliveries")
        try:
            return queryset.get(pk=int(object_id))
        except (Task.DoesNotExist, ValueError):
            return None

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        try:
            return queryset.filter(public_id=uuid.UUID(term)), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    @admin.display(description="Why")
    def waiting_column(self, task: Task):
        """Queued: why it waits (generation.eta.why_waiting); else why it went to its worker."""
        if task.status == Task.Status.QUEUED:
            return eta.why_waiting(task)
        attempt = task.attempt_set.order_by("-number").first()
        if attempt is None or not attempt.placement:
            return "—"
        return f"Placed on its worker by: {attempt.placement}."

    @admin.display(description="Task", ordering="id")
    def id_column(self, task: Task):
        return format_html("<code>{}</code>", str(task.public_id)[:8])

    @admin.display(description="Status", ordering="status")
    def status_column(self, task: Task):
        return status_badge(task.get_status_display(), TASK_COLOURS.get(task.status, "#757575"))

    @admin.display(description="Prompt")
    def prompt_column(self, task: Task):
        return format_html(
            '<span class="console-cut console-cut-short" title="{}">{}</span>',
            task.prompt[:500],
            task.prompt[:200],
        )

    @admin.display(description="Checkpoint", ordering="checkpoint")
    def checkpoint_column(self, task: Task):
        name = task.checkpoint.removesuffix(".safetensors") or "—"
        return format_html('<span class="console-cut" title="{}">{}</span>', task.checkpoint, name)

    @admin.display(description="Created", ordering="created_at")
    def created_column(self, task: Task):
        local = timezone.localtime(task.created_at)
        if local.date() == timezone.localdate():
            return format_html(
                '<span class="console-nowrap" title="{}">{}</span>',
                local.isoformat(timespec="seconds"),
                local.strftime("%H:%M:%S"),
            )
        # An older day on two short lines, so the column is no wider than today's times (the list's columns
        # fit 1280 px however old the tasks on the page are).
        return format_html(
            '<span title="{}">{}<br>{}</span>',
            local.isoformat(timespec="seconds"),
            local.strftime("%b %d"),
            local.strftime("%H:%M"),
        )

    @admin.display(description="Prio", ordering="priority")
    def priority_column(self, task: Task):
        return task.priority

    @admin.display(description="Attempts")
    def attempts_column(self, task: Task):
        return f"{task.attempts}/{task.max_attempts}"

    @admin.display(description="Wait")
    def wait_column(self, task: Task):
        return format_html('<span class="console-num">{}</span>', seconds_text(task.wait_seconds))

    @admin.display(description="Run")
    def run_column(self, task: Task):
        return format_html('<span class="console-num">{}</span>', seconds_text(task.run_seconds))

    @admin.display(description="Progress")
    def progress_column(self, task: Task):
        if task.status not in (Task.Status.RUNNING, Task.Status.COMPLETED):
            return "—"
        return format_html(
            '<span class="console-nowrap"><progress value="{}" max="100" style="width:48px"></progress>'
            " {}%</span>",
            task.progress_percent,
            task.progress_percent,
        )

    @admin.display(description="Images")
    def gallery(self, task: Task):
        images = list(task.images.all())
        if not images:
            return "—"
        return format_html_join(" ", "{}", ((thumbnail(image, 192),) for image in images))

    @admin.display(description="Webhook deliveries")
    def deliveries(self, task: Task):
        rows = list(task.webhook_deliveries.all())
        if not rows:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            '<a href="{}">{} → {}</a>: {} after {} try(s){}',
            (
                (
                    reverse("admin:generation_webhookdelivery_change", args=[d.pk]),
                    d.event,
                    d.url,
                    d.state,
                    d.attempts,
                    f" (last: {d.last_status_code or d.last_error[:80]})" if d.delivered_at is None else "",
                )
                for d in rows
            ),
        )

    # --- Actions ------------------------------------------------------------------------------------------

    def _each(self, request, queryset, call, done: str) -> None:
        changed = 0
        for task in queryset:
            try:
                call(task)
                changed += 1
            except DomainError as exc:
                messages.error(request, f"{task.public_id}: {exc.detail}")
        if changed:
            messages.success(request, f"{changed} task(s) {done}.")

    @admin.action(
        description="Retry (failed or cancelled tasks go back to the queue)", permissions=["change"]
    )
    def retry(self, request, queryset):
        self._each(request, queryset, lambda task: services.task_retry(task=task), "requeued")

    @admin.action(description="Cancel", permissions=["change"])
    def cancel(self, request, queryset):
        self._each(request, queryset, lambda task: services.task_cancel(task=task), "cancelled")

    @admin.action(description="Raise priority by 10", permissions=["change"])
    def raise_priority(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda task: services.task_set_priority(task=task, priority=task.priority + 10),
            "raised by 10",
        )

    # --- The farm dashboard -------------------------------------------------------------------------------

    def get_urls(self):
        dashboard_url = path(
            "dashboard/", self.admin_site.admin_view(self.dashboard_view), name="generation_dashboard"
        )
        return [dashboard_url, *super().get_urls()]

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        figures = dashboard.farm_figures()
        peak = max(figures.per_minute_max, 1)
        deepest = max((n for _, n in figures.queue_by_priority), default=1)
        counts = figures.tasks_by_status
        context = {
            **self.admin_site.each_context(request),
            "title": "Farm dashboard",
            "opts": self.model._meta,
            "figures": figures,
            "cards": [
                ("Queued", figures.queued, ""),
                ("Starting / running", f"{counts.get('leased', 0)} / {counts.get('running', 0)}", ""),
                ("Completed (1 h)", figures.completed_last_hour, "ok"),
                ("Failed (1 h)", figures.failed_last_hour, "bad" if figures.failed_last_hour else ""),
                ("Throughput, last 5 min", f"{figures.recent_throughput_per_minute(5):.1f}/min", ""),
                ("Throughput, hour average", f"{figures.throughput_per_minute:.1f}/min", ""),
                ("Oldest queued", seconds_text(figures.oldest_queued_age), ""),
                ("Wait p50 (1 h)", seconds_text(figures.wait_p50), ""),
                ("Wait p95 (1 h)", seconds_text(figures.wait_p95), ""),
                ("Run p50 (1 h)", seconds_text(figures.run_p50), ""),
                ("Run p95 (1 h)", seconds_text(figures.run_p95), ""),
                _free_space_card(),
            ],
            "bars": [
                {
                    "minute": minute,
                    "completed": completed,
                    "failed": failed,
                    "completed_pct": 100 * completed / peak,
                    "failed_pct": 100 * failed / peak,
                }
                for minute, completed, failed in figures.per_minute
            ],
            "ticks": chart_ticks([minute for minute, _, _ in figures.per_minute]),
            "peak": figures.per_minute_max,
            "queue": [(priority, n, 100 * n / deepest) for priority, n in figures.queue_by_priority],
            "utilisation": [
                {
                    "worker": u.worker,
                    "busy": seconds_text(u.busy_seconds),
                    "online": seconds_text(u.online_seconds),
                    "pct": None if u.ratio is None else min(100 * u.ratio, 100),
                }
                for u in figures.utilisation
            ],
            "running": [
                {
                    "task": t,
                    "link": task_link(t),
                    "age": seconds_text((figures.now - t.leased_at).total_seconds()),
                }
                for t in figures.running
            ],
        }
        return TemplateResponse(request, "admin/generation/dashboard.html", context)


def chart_ticks(minutes: list, every: int = 10) -> list[dict]:
    """Time-axis labels for the per-minute chart: one at every `every`-th minute of the clock, placed at the
    centre of its bar (as a percentage of the chart's width), in local time."""
    count = len(minutes)
    return [
        {"left": 100 * (i + 0.5) / count, "label": timezone.localtime(minute).strftime("%H:%M")}
        for i, minute in enumerate(minutes)
        if timezone.localtime(minute).minute % every == 0
    ]


def _free_space_card() -> tuple[str, str, str]:
    """Free space of the media storage; red below T2I_MEDIA_MIN_FREE_BYTES, where completions are refused."""
    free = storage_space.media_free_bytes()
    if free is None:
        return ("Media free", "unknown", "bad")
    low = free < settings.T2I["MEDIA_MIN_FREE_BYTES"]
    return ("Media free", filesizeformat(free), "bad" if low else "")


# --- Images ---------------------------------------------------------------------------------------------


@admin.register(Image)
class ImageAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = ["thumbnail_column", "task_column", "index", "size_column", "size_bytes", "created_at"]
    list_select_related = ["task"]
    readonly_fields = ["thumbnail_column", "task_column"]
    fields = [
        "thumbnail_column",
        "task_column",
        "public_id",
        "index",
        ("width", "height"),
        "size_bytes",
        "sha256",
        "file",
        "thumbnail",
        "created_at",
    ]
    show_full_result_count = False
    actions = None

    @admin.display(description="Image")
    def thumbnail_column(self, image: Image):
        return thumbnail(image)

    @admin.display(description="Task", ordering="task_id")
    def task_column(self, image: Image):
        return task_link(image.task)

    @admin.display(description="Size")
    def size_column(self, image: Image):
        return f"{image.width}×{image.height}"


# --- Uploads (input images) -----------------------------------------------------------------------------


@admin.register(InputImage)
class InputImageAdmin(ViewOnlyMixin, admin.ModelAdmin):
    """Users' uploads for LoadImage. Deleting goes through services.input_image_delete (the "Delete" action):
    one that a queued or running task needs is kept, with a message naming the tasks."""

    list_display = [
        "image_column", "name_column", "owner", "kind", "size_column", "size_bytes", "used_by_column",
        "created_at",
    ]  # fmt: skip
    list_select_related = ["owner"]
    list_filter = ["kind", ("created_at", DateFieldListFilter)]
    search_fields = ["name", "subfolder", "owner__username", "=public_id", "=sha256"]
    readonly_fields = ["image_column", "name_column", "used_by_column"]
    fields = [
        "image_column", "name_column", "owner", "public_id", "kind", "subfolder", "name", ("width", "height"),
        "size_bytes", "sha256", "file", "used_by_column", "created_at",
    ]  # fmt: skip
    show_full_result_count = False
    actions = ["delete_uploads"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                task_count=Count("tasks"),
                unfinished_count=Count("tasks", filter=Q(tasks__status__in=Task.UNFINISHED_STATUSES)),
            )
        )

    @admin.display(description="Image")
    def image_column(self, upload: InputImage):
        return format_html(
            '<img src="{}" alt="" loading="lazy" style="max-width:64px;max-height:64px;border-radius:4px">',
            upload.file.url,
        )

    @admin.display(description="ComfyUI name", ordering="name")
    def name_column(self, upload: InputImage):
        return upload.comfy_name

    @admin.display(description="Size")
    def size_column(self, upload: InputImage):
        return f"{upload.width}×{upload.height}"

    @admin.display(description="Used by", ordering="task_count")
    def used_by_column(self, upload: InputImage):
        text = f"{upload.task_count} task(s)"
        return text + (f", {upload.unfinished_count} not finished" if upload.unfinished_count else "")

    @admin.action(description="Delete (kept while a queued or running task needs it)", permissions=["change"])
    def delete_uploads(self, request, queryset):
        deleted = 0
        for upload in queryset:
            try:
                services.input_image_delete(upload=upload)
                deleted += 1
            except DomainError as exc:
                messages.error(request, exc.detail)
        if deleted:
            messages.success(request, f"{deleted} upload(s) deleted.")


# --- Workflow templates ---------------------------------------------------------------------------------


class PrettyJSONField(forms.JSONField):
    """A JSON editor: monospace, pretty-printed; invalid JSON is an inline error on the field."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "widget",
            forms.Textarea(
                attrs={
                    "rows": 24,
                    "spellcheck": "false",
                    "style": "width:100%;max-width:60em;font-family:ui-monospace,Menlo,Consolas,monospace;"
                    "font-size:12px;tab-size:2;white-space:pre",
                }
            ),
        )
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)


class WorkflowTemplateForm(forms.ModelForm):
    workflow = PrettyJSONField(help_text=WorkflowTemplate._meta.get_field("workflow").help_text)
    bindings = PrettyJSONField(help_text=WorkflowTemplate._meta.get_field("bindings").help_text)

    class Meta:
        model = WorkflowTemplate
        fields = ["name", "description", "workflow", "bindings"]


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(admin.ModelAdmin):
    form = WorkflowTemplateForm
    list_display = ["name", "description", "node_count", "checkpoint_column", "fit_column", "updated_at"]
    search_fields = ["name", "description"]
    readonly_fields = ["fit_table"]
    actions = ["check_against_workers"]

    def get_fields(self, request, obj=None):
        return ["name", "description", "workflow", "bindings"] + (["fit_table"] if obj else [])

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        workers = dashboard.online_workers()
        for template in changelist.result_list:
            template.fits = dashboard.template_fit(template, workers)
        return changelist

    @admin.display(description="Nodes")
    def node_count(self, template: WorkflowTemplate):
        return len(template.workflow or {})

    @admin.display(description="Checkpoint")
    def checkpoint_column(self, template: WorkflowTemplate):
        return dashboard.template_checkpoint(template) or "—"

    @admin.display(description="Online workers that can run it")
    def fit_column(self, template: WorkflowTemplate):
        fits = getattr(template, "fits", [])
        if not fits:
            return "no online workers"
        ok = sum(f.ok for f in fits)
        colour = "#2e7d32" if ok == len(fits) else "#c62828" if ok == 0 else "#ef6c00"
        return format_html('<span style="color:{};font-weight:600">{} of {}</span>', colour, ok, len(fits))

    @admin.display(description="Online workers")
    def fit_table(self, template: WorkflowTemplate):
        fits = dashboard.template_fit(template, dashboard.online_workers())
        if not fits:
            return "No worker is online."
        return format_html(
            "<table><tr><th>Worker</th><th>Ready</th><th>Missing node classes</th><th>Checkpoint</th></tr>"
            "{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", _fit_rows(fits)),
        )

    @admin.action(description="Check against the online workers")
    def check_against_workers(self, request, queryset):
        workers = dashboard.online_workers()
        rows = [(template, dashboard.template_fit(template, workers)) for template in queryset]
        for template, fits in rows:
            level = messages.SUCCESS if fits and all(f.ok for f in fits) else messages.WARNING
            ready = ", ".join(f.worker.name for f in fits if f.ok) or "none"
            self.message_user(request, f"{template.name}: ready on {ready} ({len(fits)} online).", level)
        context = {
            **self.admin_site.each_context(request),
            "title": "Workflow templates against the online workers",
            "opts": self.model._meta,
            "workers": workers,
            "rows": rows,
        }
        return TemplateResponse(request, "admin/generation/workflowtemplate/check_workers.html", context)


def _fit_rows(fits):
    for fit in fits:
        yield (
            fit.worker.name,
            "✔" if fit.ok else "✘",
            ", ".join(fit.missing_nodes) or "—",
            "—"
            if fit.checkpoint is None
            else f"{fit.checkpoint}: {'present' if fit.has_checkpoint else 'MISSING'}",
        )


# --- Webhook deliveries ---------------------------------------------------------------------------------


class DeliveryStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("delivered", "Delivered"), ("pending", "Pending"), ("gave_up", "Gave up")]

    def queryset(self, request, queryset):
        if self.value() == "delivered":
            return queryset.exclude(delivered_at=None)
        if self.value() == "pending":
            return queryset.filter(delivered_at=None).exclude(next_try_at=None)
        if self.value() == "gave_up":
            return queryset.filter(delivered_at=None, next_try_at=None)
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "task_column",
        "event",
        "url",
        "state_column",
        "attempts",
        "last_status_code",
        "error_column",
        "delivered_at",
        "next_try_at",
    ]
    list_filter = [DeliveryStateFilter, "event"]
    search_fields = ["url"]
    list_select_related = ["task"]
    readonly_fields = ["task_column", "state_column", "payload_view"]
    fields = [
        "task_column",
        "event",
        "url",
        "state_column",
        ("attempts", "last_status_code"),
        "last_error",
        ("created_at", "last_tried_at", "delivered_at", "next_try_at"),
        "payload_view",
    ]
    actions = ["send_now"]

    def changelist_view(self, request, extra_context=None):
        """The list says so when nothing can be sent (webhooks.py refuses to send callbacks unsigned)."""
        context = {**(extra_context or {}), "webhooks_can_send": webhooks.webhooks_can_send()}
        return super().changelist_view(request, context)

    @admin.display(description="Task", ordering="task_id")
    def task_column(self, delivery: WebhookDelivery):
        return task_link(delivery.task)

    @admin.display(description="State")
    def state_column(self, delivery: WebhookDelivery):
        colour = {"delivered": "#2e7d32", "pending": "#ef6c00"}.get(delivery.state, "#c62828")
        return status_badge(delivery.state, colour)

    @admin.display(description="Last error")
    def error_column(self, delivery: WebhookDelivery):
        return delivery.last_error[:80] or "—"

    @admin.display(description="Body")
    def payload_view(self, delivery: WebhookDelivery):
        return format_html(
            '<pre style="max-height:30em;overflow:auto">{}</pre>', json.dumps(delivery.payload, indent=2)
        )

    @admin.action(description="Send again now (undelivered only)", permissions=["change"])
    def send_now(self, request, queryset):
        count = sum(webhooks.webhook_retry_now(delivery=d) for d in queryset)
        messages.success(
            request, f"{count} delivery(ies) due now; the webhooks job sends them within a minute."
        )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Users' API tokens: staff see them (never the token, only its first characters) and revoke them by
    deleting. Tokens are made by their owner (the account page) or `manage.py createapitoken`."""

    list_display = ("name", "kind", "user", "token_hint", "created_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("name", "user__username")
    readonly_fields = ("user", "kind", "name", "token_hint", "created_at", "expires_at")
    fields = readonly_fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
