"""Worker daemons, each driving one ComfyUI server (one GPU)."""

from django.db import models
from django.db.models import Exists, OuterRef

from generation.models import Task
from generation.tokens import hash_token, new_token

__all__ = ["ObjectInfoSpec", "Worker", "hash_token", "new_token"]


class WorkerQuerySet(models.QuerySet):
    def with_state(self) -> "WorkerQuerySet":
        """Each worker with `holds_leases` (an active task of its own), which `Worker.state` shows."""
        active = Task.objects.filter(worker=OuterRef("pk"), status__in=Task.ACTIVE_STATUSES)
        return self.annotate(holds_leases=Exists(active))


class Worker(models.Model):
    class Status(models.TextChoices):
        IDLE = "idle", "Idle"
        # Shown, never stored: an idle worker that holds a lease (Worker.state). Keeping it out of the row
        # spares every lease and completion a write to it, and it cannot drift from the leases.
        BUSY = "busy", "Busy"
        OFFLINE = "offline", "Offline"
        DRAINING = "draining", "Draining"
        DISABLED = "disabled", "Disabled"

    name = models.CharField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(max_length=8, editable=False, help_text="First characters of the token.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OFFLINE)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    capabilities = models.JSONField(
        default=dict,
        blank=True,
        help_text="As reported at register: comfyui_version, device_name, vram_total, checkpoints, "
        "node_classes, samplers, schedulers.",
    )
    # When its capabilities last changed (register, or POST inventory): placement's per-process cache of what
    # each worker can run is keyed by it (generation.farm_snapshot).
    inventory_at = models.DateTimeField(null=True, blank=True)
    prefetch = models.PositiveSmallIntegerField(default=2)
    # What placement (generation.placement) knows of it: the checkpoint of its last task, as the daemon
    # reports it (empty after its ComfyUI restarted), and the learned extra seconds of a model switch.
    warm_checkpoint = models.CharField(max_length=255, blank=True)
    switch_seconds = models.FloatField(null=True, blank=True, help_text="Learned extra seconds of a switch.")
    switch_samples = models.PositiveIntegerField(default=0)
    tasks_completed = models.PositiveIntegerField(default=0)
    tasks_failed = models.PositiveIntegerField(default=0)
    # This worker's completions under way, across server processes, and when the last of them began
    # (generation.services.completion_slots); written only by conditional UPDATEs, never by save().
    completing = models.PositiveSmallIntegerField(default=0, editable=False)
    completing_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            # workers_mark_offline: status IN (idle, busy, draining) AND last_heartbeat < cutoff
            models.Index(fields=["status", "last_heartbeat"], name="worker_status_hb_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def set_token(self, token: str) -> None:
        self.token_hash = hash_token(token)
        self.token_hint = token[:4]

    @property
    def state(self) -> str:
        """The status to show: busy for an idle worker holding a lease. Read from `holds_leases` when the
        queryset has it (WorkerQuerySet.with_state), else from its tasks."""
        if self.status != self.Status.IDLE:
            return self.status
        holds = getattr(self, "holds_leases", None)
        if holds is None:
            holds = self.tasks.filter(status__in=Task.ACTIVE_STATUSES).exists()
        return self.Status.BUSY if holds else self.status

    @property
    def is_online(self) -> bool:
        return self.status in (self.Status.IDLE, self.Status.DRAINING)

    @property
    def checkpoints(self) -> list[str]:
        return list(self.capabilities.get("checkpoints") or [])

    @property
    def node_classes(self) -> set[str]:
        return set(self.capabilities.get("node_classes") or [])


class WorkerSpeed(models.Model):
    """A worker's learned speed on one checkpoint, for template tasks (blank `shape`) or one whole-workflow
    shape (Task.shape): seconds per unit of work (pixels x steps x batch), an exponentially weighted mean of
    its finished attempts that ran without a model switch (generation.services.learning)."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="speeds")
    checkpoint = models.CharField(max_length=255, blank=True)
    shape = models.CharField(max_length=32, blank=True)
    seconds_per_unit = models.FloatField()
    samples = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["worker", "checkpoint", "shape"]
        constraints = [
            # The lease path reads all of them for the live workers; completion updates one by this key.
            models.UniqueConstraint(fields=["worker", "checkpoint", "shape"], name="worker_speed_unique"),
        ]

    def __str__(self) -> str:
        shape = f" shape {self.shape[:8]}" if self.shape else ""
        return f"{self.worker_id}/{self.checkpoint}{shape}: {self.seconds_per_unit:.3g} s/unit"


class ObjectInfoSpec(models.Model):
    """One distinct ComfyUI `/object_info` answer, as a worker's daemon read it: stored once however many
    workers report it (the same install and model files answer the same bytes). A worker names its spec by
    `capabilities["object_info_sha256"]`; the daemon sends the body only when the scheduler lacks it
    (docs/worker-api.md, `POST object_info/<sha256>`)."""

    sha256 = models.CharField(max_length=64, primary_key=True, help_text="Of the unpacked JSON bytes.")
    body = models.BinaryField(help_text="The JSON bytes as ComfyUI answered them, gzip-compressed.")
    size = models.PositiveIntegerField(help_text="Bytes of the unpacked JSON.")
    classes = models.PositiveIntegerField(help_text="Node classes in it.")
    created_at = models.DateTimeField(auto_now_add=True)
    # When a worker last named it (register, inventory, upload): specs no worker names are deleted an hour
    # after that (workers_app.object_info_specs.object_info_specs_prune).
    named_at = models.DateTimeField()

    class Meta:
        ordering = ["-named_at"]
        verbose_name = "object_info spec"

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.classes} classes)"
