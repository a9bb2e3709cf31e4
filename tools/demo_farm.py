"""A small, believable farm in the database: three workers (one on an older ComfyUI), two users, finished,
failed, running, starting and queued tasks with real pictures. For the screenshots (tools/screenshots.py)
and the browser tests of the pages' layout (tests/web/test_layout.py).

Everything goes through the services, as the API and the workers would; only the pictures are drawn here
(by the simulator's renderer) and, afterwards, the finished tasks' timestamps are spread over the last
forty minutes (`_spread_in_time`), so that the dashboard and the console show a farm that has been at work
rather than one whose every task took no time at all.
"""

import io
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from generation import services
from generation.models import Task, TaskAttempt
from workers_app import services as worker_services
from workers_app.models import Worker
from workers_app.simulator.images import render_prompt

NODES = [
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
    "SaveImageWebsocket",
    "EmptyImage",
    "ImageAddNoise",
]
CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors"]
PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, watercolour",
    "an old harbour town at night, lanterns on the water",
    "a bowl of lemons on a blue tablecloth, still life",
    "mountain lake at sunrise, mist over the pines",
    "a tram in the rain, Lisbon, 1950s photograph",
    "a hot-air balloon festival over green hills",
    "an owl on a mossy branch, detailed illustration",
]
PASSWORD = "demo-passphrase-2026"  # noqa: S105  (a throwaway demo database)


@dataclass
class DemoFarm:
    staff: object
    user: object
    workers: list[Worker]
    completed: list[Task]
    running: Task
    queued: list[Task]


def _capabilities(version: str, device: str, vram_gib: int) -> dict:
    return {
        "comfyui_version": version,
        "device_name": device,
        "vram_total": vram_gib * 2**30,
        "checkpoints": CHECKPOINTS,
        "node_classes": NODES,
        "samplers": ["euler", "euler_ancestral", "dpmpp_2m"],
        "schedulers": ["normal", "karras"],
    }


def _png(task: Task, index: int) -> SimpleUploadedFile:
    out = io.BytesIO()
    render_prompt(task.width, task.height, task.prompt, task.seed, index).save(out, format="PNG")
    return SimpleUploadedFile(f"out_{index}.png", out.getvalue(), "image/png")


def _lease(worker: Worker):
    lease = services.task_lease_next(worker=worker)
    assert lease is not None, "nothing to lease"
    return lease.task, lease.attempt.lease_token


def _spread_in_time(tasks: list[Task]) -> None:
    """Demo data only: task n waited a few seconds, ran 4 to 13 s and finished 5 * (len - n) minutes ago."""
    now = timezone.now()
    for n, task in enumerate(tasks):
        finished = now - timedelta(minutes=5 * (len(tasks) - n), seconds=17 * n % 50)
        started = finished - timedelta(seconds=4 + 7 * n % 10)
        leased = started - timedelta(seconds=1)
        created = leased - timedelta(seconds=2 + 3 * n % 7)
        stamps = {"leased_at": leased, "started_at": started, "finished_at": finished}
        Task.objects.filter(pk=task.pk).update(created_at=created, **stamps)
        TaskAttempt.objects.filter(task=task).update(**stamps)
        task.refresh_from_db()


def seed_demo_farm() -> DemoFarm:
    """Users `admin` (staff) and `alice`, both with the password PASSWORD, and a farm at work."""
    users = get_user_model().objects
    staff = users.create_user("admin", password=PASSWORD, is_staff=True, is_superuser=True)
    alice = users.create_user("alice", password=PASSWORD)
    workers = []
    for name, version, device, vram in (
        ("studio-4090", "0.3.64", "NVIDIA GeForce RTX 4090", 24),
        ("lab-3060", "0.3.64", "NVIDIA GeForce RTX 3060", 12),
        ("attic-2080", "0.3.52", "NVIDIA GeForce RTX 2080", 8),
    ):
        worker, _token = worker_services.worker_create(name=name)
        workers.append(
            worker_services.worker_register(worker=worker, capabilities=_capabilities(version, device, vram))
        )

    completed = []
    for n, prompt in enumerate(PROMPTS):
        owner = alice if n % 3 else staff
        size = 768 if n % 4 == 0 else 512
        services.task_submit(
            owner=owner,
            data={
                "prompt": prompt,
                "width": size,
                "height": size,
                "steps": 20,
                "seed": 1000 + n,
                "checkpoint": CHECKPOINTS[n % 2],
            },
        )
        worker = workers[n % 2]
        task, token = _lease(worker)
        services.task_start(worker=worker, task_id=task.public_id, lease_token=token)
        files = [_png(task, i) for i in range(task.batch_size)]
        completed.append(
            services.task_complete(worker=worker, task_id=task.public_id, lease_token=token, files=files).task
        )
    _spread_in_time(completed)

    services.task_submit(
        owner=alice, data={"prompt": "a glass city under water", "width": 512, "height": 512}
    )
    task, token = _lease(workers[2])
    services.task_start(worker=workers[2], task_id=task.public_id, lease_token=token)
    services.task_fail(
        worker=workers[2],
        task_id=task.public_id,
        lease_token=token,
        code="execution_error",
        message="CUDA out of memory",
        retryable=False,
    )

    services.task_submit(owner=alice, data={"prompt": "a paper boat on a puddle, macro", "steps": 30})
    running, token = _lease(workers[0])
    services.task_start(worker=workers[0], task_id=running.public_id, lease_token=token)
    services.task_report_progress(
        worker=workers[0], task_id=running.public_id, lease_token=token, value=12, maximum=30
    )
    queued = [
        services.task_submit(owner=alice, data={"prompt": prompt, "width": 512, "height": 512})
        for prompt in ("a quiet library at night", "sunflowers after the storm", "a dragon kite over dunes")
    ]
    running.refresh_from_db()
    return DemoFarm(
        staff=staff, user=alice, workers=workers, completed=completed, running=running, queued=queued
    )
