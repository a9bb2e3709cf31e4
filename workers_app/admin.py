"""The operators' view of the workers: live status, today's figures, capabilities, and the state actions.

Every change goes through workers_app.services; rows are never saved from a stale admin form (heartbeats
update them every few seconds), so the only editable field is the name, written with a targeted UPDATE.
"""

import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from generation import dashboard, placement, unrunnable
from generation.admin_helpers import ObjectActionsMixin, seconds_text, status_badge
from generation.exceptions import DomainError
from workers_app import services
from workers_app.models import Worker

STATUS_COLOURS = {
    Worker.Status.IDLE: "#2e7d32",
    Worker.Status.BUSY: "#1565c0",
    Worker.Status.DRAINING: "#ef6c00",
    Worker.Status.OFFLINE: "#757575",
    Worker.Status.DISABLED: "#c62828",
}


def token_page(request, model_admin, tokens: list[tuple[Worker, str]], title: str) -> TemplateResponse:
    """New tokens, shown once on a page of their own: never in a message (the cookie or session that carries
    messages would keep them), never cached; only their hashes are stored."""
    response = TemplateResponse(
        request,
        "admin/workers_app/worker/tokens.html",
        {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "tokens": tokens,
            "opts": Worker._meta,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


class WorkerForm(forms.ModelForm):
    class Meta:
        model = Worker
        fields = ["name"]


class StateFilter(admin.SimpleListFilter):
    """By the state the list shows: busy is an idle worker holding a lease (Worker.state)."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return Worker.Status.choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == Worker.Status.BUSY:
            return queryset.filter(status=Worker.Status.IDLE, holds_leases=True)
        if value == Worker.Status.IDLE:
            return queryset.filter(status=Worker.Status.IDLE, holds_leases=False)
        return queryset.filter(status=value) if value in Worker.Status.values else queryset


@admin.register(Worker)
class WorkerAdmin(ObjectActionsMixin, admin.ModelAdmin):
    form = WorkerForm
    object_actions = {
        "drain": "Drain",
        "enable": "Enable",
        "disable": "Disable",
        "rotate_token": "Rotate token",
    }
    list_display = [
        "name",
        "status_column",
        "heartbeat_column",
        "current_tasks",
        "comfyui_version",
        "done_today_column",
        "median_run_column",
        "failure_rate_column",
        "skew_column",
    ]
    list_filter = [StateFilter]
    search_fields = ["name"]
    actions = ["drain", "enable", "disable", "rotate_token"]
    readonly_fields = [
        "status_column",
        "heartbeat_column",
        "token_hint",
        "registered_at",
        "created_at",
        "prefetch",
        "current_tasks",
        "done_today_column",
        "failed_today_column",
        "median_run_column",
        "failure_rate_column",
        "lifetime_column",
        "skew_column",
        "capabilities_view",
        "inventory_at",
        "inventory_view",
        "warm_checkpoint",
        "learned_costs_view",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "status_column",
                    "heartbeat_column",
                    "token_hint",
                    "registered_at",
                    "created_at",
                ]
            },
        ),
        (
            "Work",
            {
                "description": "Today means since midnight (TIME_ZONE); lifetime counts never reset.",
                "fields": [
                    "current_tasks",
                    "prefetch",
                    "done_today_column",
                    "failed_today_column",
                    "median_run_column",
                    "failure_rate_column",
                    "lifetime_column",
                ],
            },
        ),
        (
            "Learned costs (placement and ETAs)",
            {
                "description": "Seconds per unit of work (pixels × steps × batch) per checkpoint, an "
                "exponentially weighted mean of its finished attempts; the extra seconds of a model switch.",
                "fields": ["warm_checkpoint", "learned_costs_view"],
            },
        ),
        (
            "Inventory (as its daemon last reported it)",
            {"fields": ["inventory_at", "inventory_view", "skew_column", "capabilities_view"]},
        ),
    ]

    # --- Queries: annotations for the counts, one grouped query per page for the rest ---------------------

    def get_queryset(self, request):
        workers = super().get_queryset(request).with_state()
        return dashboard.workers_with_stats(workers, since=dashboard.start_of_today())

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        self._decorate(list(changelist.result_list))
        return changelist

    def get_object(self, request, object_id, from_field=None):
        worker = super().get_object(request, object_id, from_field)
        if worker is not None:
            self._decorate([worker])
        return worker

    @staticmethod
    def _decorate(workers: list[Worker]) -> None:
        ids = [w.pk for w in workers]
        medians = dashboard.median_run_seconds(ids, since=dashboard.start_of_today())
        active = dashboard.active_tasks_by_worker(ids)
        skew = dashboard.version_skew(workers)
        for worker in workers:
            worker.median_run = medians.get(worker.pk)
            worker.active_tasks = active.get(worker.pk, [])
            worker.skew_notes = skew.get(worker.pk, [])

    # --- Columns ------------------------------------------------------------------------------------------

    @admin.display(description="Status", ordering="status")
    def status_column(self, worker: Worker):
        state = worker.state
        return status_badge(Worker.Status(state).label, STATUS_COLOURS.get(state, "#757575"))

    @admin.display(description="Heartbeat", ordering="last_heartbeat")
    def heartbeat_column(self, worker: Worker):
        if worker.last_heartbeat is None:
            return "never"
        age = (timezone.now() - worker.last_heartbeat).total_seconds()
        stale = age > settings.T2I["WORKER_OFFLINE_AFTER"]
        return format_html(
            '<span class="console-nowrap" title="{}" style="color:{}">{} ago</span>',
            worker.last_heartbeat.isoformat(timespec="seconds"),
            "#c62828" if stale and worker.is_online else "inherit",
            seconds_text(max(age, 0)),
        )

    @admin.display(description="Working on")
    def current_tasks(self, worker: Worker):
        tasks = getattr(worker, "active_tasks", [])
        if not tasks:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            '<span class="console-nowrap"><a href="{}">{}</a> {} {}%</span>',
            (
                (
                    reverse("admin:generation_task_change", args=[t.pk]),
                    str(t.public_id)[:8],
                    t.get_status_display().lower(),
                    t.progress_percent,
                )
                for t in tasks
            ),
        )

    @admin.display(description="Device")
    def device_column(self, worker: Worker):
        caps = worker.capabilities or {}
        vram = caps.get("vram_total") or 0
        if not caps.get("device_name") and not vram:
            return "—"
        return f"{caps.get('device_name') or '?'} · {vram / 2**30:.0f} GiB"

    @admin.display(description="ComfyUI")
    def comfyui_version(self, worker: Worker):
        """The version, with the device and the checkpoint count as its tooltip (the list stays narrow)."""
        version = (worker.capabilities or {}).get("comfyui_version") or "—"
        details = f"{self.device_column(worker)} · {self.checkpoint_count(worker)} checkpoint(s)"
        return format_html('<span class="console-nowrap" title="{}">{}</span>', details, version)

    @admin.display(description="Ckpts")
    def checkpoint_count(self, worker: Worker):
        return len(worker.checkpoints)

    @admin.display(description="Done today", ordering="done_today")
    def done_today_column(self, worker: Worker):
        return getattr(worker, "done_today", 0)

    @admin.display(description="Failed today", ordering="failed_today")
    def failed_today_column(self, worker: Worker):
        return getattr(worker, "failed_today", 0)

    @admin.display(description="Median run")
    def median_run_column(self, worker: Worker):
        return seconds_text(getattr(worker, "median_run", None))

    @admin.display(description="Fail rate")
    def failure_rate_column(self, worker: Worker):
        rate = dashboard.failure_rate(worker)
        if rate is None:
            return "—"
        colour = "#c62828" if rate >= 0.2 else "#ef6c00" if rate >= 0.05 else "inherit"
        return format_html('<span style="color:{}">{}</span>', colour, f"{rate:.0%}")

    @admin.display(description="Lifetime")
    def lifetime_column(self, worker: Worker):
        return f"{worker.tasks_completed} completed, {worker.tasks_failed} failed"

    @admin.display(description="Skew")
    def skew_column(self, worker: Worker):
        notes = getattr(worker, "skew_notes", [])
        if not notes:
            return "—"
        return format_html(
            '<span class="console-cut" style="color:#ef6c00;font-weight:600" title="{}">⚠ {}</span>',
            "; ".join(notes),
            "; ".join(notes),
        )

    @admin.display(description="Capabilities")
    @admin.display(description="Learned")
    def learned_costs_view(self, worker: Worker):
        job = placement.work_units(512, 512, 20, 1)
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    s.checkpoint or "(template's own)",
                    f"workflow {s.shape[:8]}" if s.shape else "templates",
                    f"{s.seconds_per_unit:.3g}",
                    seconds_text(s.seconds_per_unit * job),
                    s.samples,
                )
                for s in worker.speeds.all()
            ),
        )
        switch = (
            "not learned yet"
            if worker.switch_seconds is None
            else (f"{seconds_text(worker.switch_seconds)} ({worker.switch_samples} switches)")
        )
        return format_html(
            "<table><tr><th>checkpoint</th><th>tasks</th><th>s/unit</th><th>512×512×20</th><th>runs</th></tr>"
            "{}</table>"
            "<p>Model switch: {}</p>",
            rows or mark_safe("<tr><td colspan=4>Nothing learned yet.</td></tr>"),
            switch,
        )

    @admin.display(description="Has")
    def inventory_view(self, worker: Worker):
        """What the worker can run: checkpoints, the model list of each loader input, node class count."""
        caps = worker.capabilities or {}
        if not caps:
            return "Not registered yet."
        models = caps.get("model_inputs") or {}
        rows = [
            (
                "Checkpoints",
                len(caps.get("checkpoints") or ()),
                ", ".join(caps.get("checkpoints") or ()) or "—",
            ),
            *(
                (f"{cls}.{name}", len(files), ", ".join(files) or "—")
                for cls, inputs in sorted(models.items())
                for name, files in sorted(inputs.items())
            ),
            ("Node classes", len(caps.get("node_classes") or ()), "listed below"),
        ]
        return format_html(
            "<table><tr><th>list</th><th>files</th><th>names</th></tr>{}</table>"
            '<p><a href="{}">Queued tasks no online worker can run</a></p>',
            format_html_join("", "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>", rows),
            reverse("admin:workers_app_worker_unrunnable"),
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.unrunnable_view)
        return [path("unrunnable/", view, name="workers_app_worker_unrunnable"), *super().get_urls()]

    def unrunnable_view(self, request):
        """Queued tasks no online worker can be handed, and why (generation.unrunnable)."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Queued tasks no online worker can run",
            "rows": unrunnable.queued_unrunnable(),
            "shown": unrunnable.SHOWN,
            "opts": Worker._meta,
        }
        return TemplateResponse(request, "admin/workers_app/worker/unrunnable.html", context)

    def capabilities_view(self, worker: Worker):
        caps = worker.capabilities or {}
        if not caps:
            return "Not registered yet."

        def chips(values):
            if not values:
                return "—"
            return format_html_join(
                " ",
                '<code style="display:inline-block;margin:1px;padding:1px 5px;border-radius:4px;'
                'background:var(--darkened-bg)">{}</code>',
                ((v,) for v in values),
            )

        rows = [
            ("ComfyUI version", caps.get("comfyui_version") or "—"),
            ("Device", caps.get("device_name") or "—"),
            ("VRAM", f"{(caps.get('vram_total') or 0) / 2**30:.1f} GiB"),
            (f"Checkpoints ({len(caps.get('checkpoints') or [])})", chips(caps.get("checkpoints"))),
            ("Samplers", chips(caps.get("samplers"))),
            ("Schedulers", chips(caps.get("schedulers"))),
            (f"Node classes ({len(caps.get('node_classes') or [])})", chips(caps.get("node_classes"))),
        ]
        table = format_html_join(
            "",
            '<tr><th style="white-space:nowrap;vertical-align:top">{}</th><td>{}</td></tr>',
            rows,
        )
        return format_html(
            '<table style="width:100%">{}</table><details><summary>Raw JSON</summary>'
            '<pre style="max-height:30em;overflow:auto">{}</pre></details>',
            table,
            json.dumps(caps, indent=2, sort_keys=True),
        )

    # --- Add and change: through the services -------------------------------------------------------------

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [
                (None, {"fields": ["name"], "description": "The worker's token is shown once, after saving."})
            ]
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else super().get_readonly_fields(request, obj)

    def save_model(self, request, obj, form, change):
        if change:
            if "name" in form.changed_data:
                Worker.objects.filter(pk=obj.pk).update(name=obj.name)
            return
        worker, token = services.worker_create(name=form.cleaned_data["name"])
        obj.pk, obj.token_hint = worker.pk, worker.token_hint
        request.new_worker_token = token  # shown by response_add, once

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(request, "new_worker_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        return token_page(request, self, [(obj, token)], "Worker added")

    def has_delete_permission(self, request, obj=None):
        # A worker that holds leases is disabled (which requeues them), not deleted.
        if obj is not None and (obj.is_online or obj.tasks.filter(status__in=["leased", "running"]).exists()):
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    # --- Actions ------------------------------------------------------------------------------------------

    def _set_state(self, request, queryset, state: str, done: str) -> None:
        changed = 0
        for worker in queryset:
            try:
                services.worker_set_state(worker=worker, state=state)
                changed += 1
            except DomainError as exc:
                messages.error(request, f"{worker.name}: {exc.detail}")
        if changed:
            messages.success(request, f"{changed} worker(s) {done}.")

    @admin.action(description="Drain (finish current work, take nothing new)", permissions=["change"])
    def drain(self, request, queryset):
        self._set_state(request, queryset, "drain", "draining")

    @admin.action(
        description="Enable (drained: take work again; disabled: may register again)", permissions=["change"]
    )
    def enable(self, request, queryset):
        self._set_state(request, queryset, "enable", "enabled")

    @admin.action(description="Disable (refuse the worker, requeue its tasks)", permissions=["change"])
    def disable(self, request, queryset):
        self._set_state(request, queryset, "disable", "disabled")

    @admin.action(description="Rotate token (the new one is shown once)", permissions=["change"])
    def rotate_token(self, request, queryset):
        tokens = [(worker, services.worker_rotate_token(worker=worker)) for worker in queryset]
        return token_page(request, self, tokens, "New worker tokens")
