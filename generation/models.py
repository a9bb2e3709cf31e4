"""Tasks, their attempts (leases), their images, and the ComfyUI workflow templates they run."""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from generation import workflows

SEED_MAX = 2**64 - 1


class Uint64Field(models.CharField):
    """An unsigned 64-bit integer (ComfyUI seeds reach 2**64-1) stored as decimal text.

    Neither SQLite's INTEGER nor PostgreSQL's bigint holds 2**64-1, and SQLite silently turns larger numbers
    into floats, so text is the lossless choice on both databases.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("max_length", 20)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        return None if value is None else int(value)

    def to_python(self, value):
        if value is None or isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValidationError("Enter a whole number.", code="invalid")

    def get_prep_value(self, value):
        value = self.to_python(value)
        return None if value is None else str(value)

    def formfield(self, **kwargs):
        from django import forms

        return forms.IntegerField(min_value=0, max_value=SEED_MAX, **kwargs)


class WorkflowTemplate(models.Model):
    """A ComfyUI API-format workflow plus the map of which node input receives each task field."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    workflow = models.JSONField(help_text="ComfyUI API-format workflow (a map of node id to node).")
    bindings = models.JSONField(
        default=dict,
        help_text='Task field to [node id, input name], e.g. {"seed": ["3", "seed"]}. Fields: '
        + ", ".join(workflows.BINDABLE_FIELDS)
        + ".",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = workflows.validate_template(self.workflow, self.bindings)
        if errors:
            raise ValidationError(errors)

    @property
    def node_classes(self) -> set[str]:
        return workflows.node_classes(self.workflow)

    def binds(self, field: str) -> bool:
        return field in (self.bindings or {})


# The fields a submit may set (REST, the seed's POST /generate and the web form), besides `template`, which
# is given by name. Their types, limits of length and defaults come from the fields below.
TASK_INPUT_FIELDS = (
    "prompt", "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "seed",
    "batch_size", "checkpoint", "preview_method", "priority", "callback_url",
)  # fmt: skip


class PreviewMethod(models.TextChoices):
    """ComfyUI's latent preview methods as a prompt's `extra_data.preview_method` takes them (its
    `set_preview_method`): the worker's ComfyUI sends previews under the last three."""

    OFF = "", "Off"
    NONE = "none", "None (ComfyUI's word for off)"
    DEFAULT = "default", "The worker's own setting"
    AUTO = "auto", "On"
    LATENT2RGB = "latent2rgb", "On, fast and coarse (latent2rgb)"
    TAESD = "taesd", "On, detailed (TAESD)"


PREVIEWING = frozenset({PreviewMethod.AUTO, PreviewMethod.LATENT2RGB, PreviewMethod.TAESD})


class Task(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LEASED = "leased", "Leased"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATUSES = (Status.LEASED, Status.RUNNING)
    FINISHED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
    # Not finished: such a task may still need its uploads (services.input_image_delete keeps them).
    UNFINISHED_STATUSES = (Status.QUEUED, *ACTIVE_STATUSES)
    RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED)  # services.task_retry puts these back in the queue

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # None: an anonymous submit. A deleted account takes its tasks with it (generation.services.user_delete
    # also removes their files), so no task ever becomes anonymous, and so visible by its id, that way.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks"
    )
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    width = models.PositiveIntegerField(default=512)
    height = models.PositiveIntegerField(default=512)
    steps = models.PositiveSmallIntegerField(default=20)
    cfg = models.FloatField(default=7.0)
    sampler = models.CharField(max_length=64, default="euler")
    scheduler = models.CharField(max_length=64, default="normal")
    seed = Uint64Field()
    batch_size = models.PositiveSmallIntegerField(default=1)
    checkpoint = models.CharField(max_length=255, blank=True)
    # A task runs either a template with its fields bound in, or a whole API-format workflow as given.
    template = models.ForeignKey(
        WorkflowTemplate, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks"
    )
    workflow = models.JSONField(null=True, blank=True, help_text="A whole API-format workflow (no template).")
    # What a workflow task needs from a worker (generation.api_workflows.Requirements) and its digest, which
    # leasing groups queued workflow tasks by.
    requirements = models.JSONField(default=dict, blank=True)
    requirements_key = models.CharField(max_length=64, blank=True)
    # The ComfyUI front door (/comfy/): the client's own prompt id, unique per owner (an idempotency key),
    # and the clientId whose socket gets this task's frames.
    client_prompt_id = models.CharField(max_length=100, blank=True)
    client_id = models.CharField(max_length=100, blank=True)
    # A whole workflow's graph without its input values (workflows.workflow_shape): workers learn their speed
    # per shape, as a workflow's cost depends on its graph, not only its size. Blank for template tasks.
    shape = models.CharField(max_length=32, blank=True)
    # Latent previews while it runs (a front-door client's `extra_data.preview_method`, or the REST field and
    # the web form's "Live preview"): the worker's ComfyUI makes them, the worker sends them, the task keeps
    # the newest (TaskPreview) for the client's socket and the task page. Blank leaves the worker's ComfyUI
    # its own setting, and nothing is relayed.
    preview_method = models.CharField(
        max_length=16,
        blank=True,
        choices=PreviewMethod.choices,
        default=PreviewMethod.OFF,
        help_text="Live previews while the task runs: auto, latent2rgb or taesd.",
    )
    # When a front-door client took it out of its ComfyUI history (POST /comfy/history, delete or clear). Only
    # that history stops showing it: the task, its images and files stay for the web pages and the REST API.
    comfy_history_hidden_at = models.DateTimeField(null=True, blank=True)
    # The uploaded images its LoadImage nodes name (POST /comfy/upload/image): the worker fetches each one.
    input_images = models.ManyToManyField("InputImage", blank=True, related_name="tasks")
    priority = models.SmallIntegerField(default=0, help_text="Higher runs first.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress_value = models.FloatField(default=0)
    progress_max = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    leased_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    warning = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Leases that counted against the limit.")
    lease_count = models.PositiveSmallIntegerField(default=0, help_text="Leases handed out, counted or not.")
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # The current lease, copied from its TaskAttempt so fencing is one conditional UPDATE on this row.
    worker = models.ForeignKey(
        "workers_app.Worker", null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Where to POST a signed JSON summary when the task completes or fails (generation.webhooks).
    callback_url = models.URLField(max_length=500, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # task_lease_next: WHERE status='queued' [AND checkpoint …] ORDER BY priority DESC, id; also the
            # queue position count and the queue depth figures.
            models.Index(fields=["status", "-priority", "id"], name="task_claim_idx"),
            # Placement's window (generation.farm_snapshot): the users with queued tasks, and the first
            # queued tasks of users the head of the queue does not show: WHERE status='queued' AND owner_id
            # IN (…) ORDER BY priority DESC, id; also the per-user cap on queued tasks.
            models.Index(
                fields=["owner", "-priority", "id"],
                condition=Q(status="queued"),
                name="task_queued_owner_idx",
            ),
            # tasks_reap_expired: WHERE status IN ('leased','running') AND lease_expires_at < now
            models.Index(fields=["status", "lease_expires_at"], name="task_lease_expiry_idx"),
            # "my tasks": WHERE owner_id = ? ORDER BY id DESC
            models.Index(fields=["owner", "-id"], name="task_owner_idx"),
            # Dashboard and metrics: WHERE status IN ('completed','failed') AND finished_at >= now - 1h;
            # retention: WHERE status IN (finished) AND finished_at < cutoff.
            models.Index(fields=["status", "finished_at"], name="task_finished_idx"),
            # task_lease_next: SELECT DISTINCT requirements_key WHERE status='queued'
            models.Index(fields=["status", "requirements_key"], name="task_requirements_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(width__gt=0) & Q(height__gt=0) & Q(batch_size__gt=0), name="task_positive_size"
            ),
            models.CheckConstraint(
                condition=~Q(status__in=["leased", "running"]) | Q(lease_token__isnull=False),
                name="task_active_has_lease",
            ),
            models.CheckConstraint(
                condition=Q(template__isnull=False) | Q(workflow__isnull=False),
                name="task_has_something_to_run",
            ),
            # One task per (user, client prompt id); the anonymous space is one more "user". Also the index of
            # the front door's lookup: WHERE owner_id = ? AND client_prompt_id = ?
            models.UniqueConstraint(
                fields=["owner", "client_prompt_id"],
                condition=~Q(client_prompt_id=""),
                name="task_unique_client_prompt_id",
            ),
            models.UniqueConstraint(
                fields=["client_prompt_id"],
                condition=~Q(client_prompt_id="") & Q(owner=None),
                name="task_unique_anonymous_client_prompt_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    @property
    def wants_previews(self) -> bool:
        """The worker's ComfyUI makes latent previews for it, and the worker sends them."""
        return self.preview_method in PREVIEWING

    @property
    def is_retryable(self) -> bool:
        return self.status in self.RETRYABLE_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def is_workflow(self) -> bool:
        """A whole workflow, run as given (no template)."""
        return self.template_id is None

    @property
    def progress_percent(self) -> int:
        if self.status == self.Status.COMPLETED:
            return 100
        if not self.progress_max:
            return 0
        # Divide first: 100 × a value near the float maximum would overflow to infinity.
        return max(0, min(100, round(self.progress_value / self.progress_max * 100)))

    @property
    def wait_seconds(self) -> float | None:
        if self.leased_at is None:
            return None
        return (self.leased_at - self.created_at).total_seconds()

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class TaskAttempt(models.Model):
    """One lease of a task to a worker: the history of why a task ran twice, and the fencing token."""

    class Outcome(models.TextChoices):
        ACTIVE = "active", "Active"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Lease expired"
        RELEASED = "released", "Handed back"
        CANCELLED = "cancelled", "Cancelled"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attempt_set")
    worker = models.ForeignKey(
        "workers_app.Worker", null=True, on_delete=models.SET_NULL, related_name="attempts"
    )
    number = models.PositiveSmallIntegerField()
    lease_token = models.UUIDField(unique=True, editable=False)
    lease_expires_at = models.DateTimeField()
    leased_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.ACTIVE)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    comfyui_prompt_id = models.CharField(max_length=64, blank=True)
    # Why placement gave it to this worker (generation.placement), what it expected it to take, and whether
    # the worker had to switch models for it (learned costs: generation.services.learning).
    placement = models.CharField(max_length=32, blank=True)
    expected_seconds = models.FloatField(null=True, blank=True)
    switched = models.BooleanField(default=False)

    class Meta:
        ordering = ["task_id", "number"]
        indexes = [
            # worker_heartbeat / dashboard: a worker's active attempts
            models.Index(fields=["worker", "outcome"], name="attempt_worker_outcome_idx"),
            # The workers' admin columns, dashboard utilisation and the metrics roll-up:
            # WHERE worker_id = ? (or IN (…)) AND finished_at >= start of window
            models.Index(fields=["worker", "finished_at"], name="attempt_worker_finished_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="attempt_unique_number"),
            # At most one active lease per task.
            models.UniqueConstraint(
                fields=["task"], condition=Q(outcome="active"), name="attempt_one_active_per_task"
            ),
            # A task completes once: at most one completed attempt.
            models.UniqueConstraint(
                fields=["task"], condition=Q(outcome="completed"), name="attempt_one_completed_per_task"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task.public_id} #{self.number}"


class UserShare(models.Model):
    """A user's fair share (generation.placement.order_jobs): a weight set in the admin, and the GPU-seconds
    used recently, decayed (generation.placement.decayed) and added to when an attempt completes."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share")
    weight = models.FloatField(default=1.0, help_text="Share of the GPUs against other users (1 = equal).")
    usage_seconds = models.FloatField(default=0, help_text="Recent GPU-seconds, decayed.")
    usage_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(weight__gt=0), name="share_weight_positive")]

    def __str__(self) -> str:
        return f"{self.user_id}: weight {self.weight}"


class InputImage(models.Model):
    """An image a user uploaded for LoadImage (ComfyUI's POST /upload/image), under the name ComfyUI would
    give it. Each owner (the anonymous space counts as one) has their own names; the file's storage name is
    unguessable. Written only after its file is stored. Deleted only through services.input_image_delete (or
    the temp retention, or an account's deletion), never while a queued or running task needs it."""

    # What "My uploads" and /api/v1/uploads/ name an upload by: unguessable, unlike the row id.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="input_images"
    )
    kind = models.CharField(max_length=5, default="input", help_text="ComfyUI's `type`: input or temp.")
    subfolder = models.CharField(max_length=200, blank=True)
    name = models.CharField(max_length=200)
    file = models.FileField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # services.input_image_upload and the submit's lookup: WHERE owner_id = ? AND kind = ? AND …
            models.UniqueConstraint(
                fields=["owner", "kind", "subfolder", "name"], name="input_image_unique_name"
            ),
            models.UniqueConstraint(
                fields=["kind", "subfolder", "name"],
                condition=Q(owner=None),
                name="input_image_unique_anonymous_name",
            ),
        ]
        indexes = [
            # "My uploads" and GET /api/v1/uploads/: WHERE owner_id = ? ORDER BY id DESC
            models.Index(fields=["owner", "-id"], name="input_image_owner_idx"),
            # The retention of temp uploads: WHERE kind = 'temp' AND created_at < cutoff
            models.Index(fields=["kind", "created_at"], name="input_image_kind_age_idx"),
        ]

    def __str__(self) -> str:
        return self.comfy_name

    @property
    def comfy_name(self) -> str:
        """What a LoadImage node names it by: `subfolder/name`, or `name` (` [temp]` after a temp file)."""
        name = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        return name if self.kind == "input" else f"{name} [{self.kind}]"

    @property
    def ref(self) -> tuple[str, str, str]:
        return (self.kind, self.subfolder, self.name)


class Image(models.Model):
    """An image a task produced. The row is written only after its file is fully stored."""

    # What image pages, downloads and the API name an image by: unguessable, unlike the row id.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="images")
    # An attempt with images is not deleted on its own, but it goes with its task (which takes the images).
    attempt = models.ForeignKey(TaskAttempt, on_delete=models.RESTRICT, related_name="images")
    index = models.PositiveSmallIntegerField(default=0, help_text="Position in the batch.")
    node_id = models.CharField(max_length=64, blank=True, help_text="The ComfyUI node that saved it.")
    file = models.FileField(max_length=255)
    thumbnail = models.FileField(max_length=255, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "index"], name="image_unique_index_per_task"),
        ]

    def __str__(self) -> str:
        return self.file.name


class TaskPreview(models.Model):
    """The newest latent preview of a running task whose front-door client asked for previews: the worker
    sends it, the client's socket (generation.comfy_ws) reads it when the event channel says it changed, as
    the channel carries ids, not images. One row per task, replaced by each preview; the maintenance job
    deletes it once the task has ended."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, primary_key=True, related_name="preview")
    seq = models.PositiveIntegerField(default=1, help_text="Bumped by each preview.")
    node_id = models.CharField(max_length=64)
    image_format = models.CharField(max_length=8, help_text="png or jpeg")
    data = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"preview {self.seq} of task {self.task_id}"


class WebhookDelivery(models.Model):
    """One callback POST for a finished task, with its retry state (generation.webhooks sends it)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="webhook_deliveries")
    url = models.URLField(max_length=500)
    event = models.CharField(max_length=32)
    payload = models.JSONField(help_text="The JSON body; every try sends the same bytes.")
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_tried_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_try_at = models.DateTimeField(null=True, blank=True, help_text="Empty once delivered or given up.")

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # webhooks_deliver_due: WHERE next_try_at <= now ORDER BY next_try_at
            models.Index(fields=["next_try_at"], name="webhook_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.url}"

    @property
    def state(self) -> str:
        if self.delivered_at is not None:
            return "delivered"
        return "pending" if self.next_try_at is not None else "gave up"


class MetricCounter(models.Model):
    """A running total behind /metrics (generation.metrics): each scrape adds what finished since the
    last one, so the counters stay exact, agree across server processes, and survive the retention purge."""

    name = models.CharField(max_length=64)
    labels = models.CharField(max_length=255, blank=True, help_text="Sorted JSON object of label values.")
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="metric_counter_unique")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} = {self.value}"


class SubmitCount(models.Model):
    """How many submits one submitter (a user, or an anonymous client's address) made in one window of the
    submit limit (generation.services.submit_limit). The retention job deletes the rows of ended windows."""

    submitter = models.CharField(max_length=100, help_text="user:<id>, addr:<address> or net:<IPv6 /64>.")
    window_end = models.BigIntegerField(help_text="When the window ends, in whole seconds since the epoch.")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            # submit_claim: UPDATE … SET count = count + 1 WHERE submitter = ? AND window_end = ? AND
            # count < limit (and what makes two first submits of one window one row). The retention job's
            # WHERE window_end <= now scans the table, which holds about an hour of windows: no index.
            models.UniqueConstraint(fields=["submitter", "window_end"], name="submit_count_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.submitter} until {self.window_end}: {self.count}"


class ApiToken(models.Model):
    """A user's REST API token (`Authorization: Token <token>`), or a ComfyUI URL key (`/comfy/k/<key>/…`, for
    clients that cannot send headers; it opens the front door only). Only its SHA-256 is kept: the token
    itself is shown once, when it is made (generation.services.api_tokens)."""

    class Kind(models.TextChoices):
        API = "api", "API token"
        COMFY_KEY = "comfy_key", "ComfyUI URL key"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.API)
    name = models.CharField(max_length=100, blank=True, help_text="What the owner uses it for.")
    # api_token_user: WHERE token_hash = sha256(presented token) (the unique index)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(max_length=8, editable=False, help_text="First characters of the token.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name or 'token'} ({self.token_hint}…) of {self.user}"

    def is_expired(self, now) -> bool:
        return self.expires_at is not None and self.expires_at <= now
