"""Many completed tasks with one image each, for the web benchmark (bench/web_pages.py calls
seed_gallery()); `python -m bench.seed_gallery --count 100000` does the same from the shell. Rows are
bulk-inserted; every image row points at the same two small files (a PNG and its JPEG thumbnail), so
100,000 images take seconds and a few kilobytes of disk.

Owners: five users `bench-user-1..5` and one staff account `bench-staff` (passwords unusable; the benchmark
logs in with force_login). A few queued tasks and two online workers are added too, so the task page has a
queue position and an ETA to compute.
"""

import argparse
import os
import random
import secrets
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import django

if __name__ == "__main__":  # set Django up before the models are imported
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
    django.setup()

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from generation.images import make_thumbnail
from generation.models import Image, Task, TaskAttempt, WorkflowTemplate
from workers_app.models import Worker, hash_token

BATCH = 2000
USERS = [f"bench-user-{n}" for n in range(1, 6)]
CHECKPOINTS = ["sd15-base.safetensors", "dreamshaper-8.safetensors", "realistic-vision-6.safetensors"]
SUBJECTS = (
    "a red fox", "an old lighthouse", "a mountain village", "a robot gardener", "a koi pond",
    "a night market", "a sailing ship", "a cat astronaut", "a desert caravan", "a glass greenhouse",
    "a steam locomotive",
    "a paper lantern festival", "a snowy owl", "an abandoned castle", "a coral reef", "a city skyline",
)  # fmt: skip
PLACES = (
    "at dusk", "in the rain", "under northern lights", "in early morning fog", "at golden hour",
    "in a snowstorm", "by candlelight", "in spring bloom", "at midnight", "on a summer afternoon",
)  # fmt: skip
STYLES = (
    "oil painting", "watercolour", "35mm photograph", "isometric illustration", "ukiyo-e woodblock print",
    "pencil sketch", "cinematic still", "low-poly render", "gouache", "art nouveau poster",
)  # fmt: skip


def seed_gallery(
    *, count: int = 100_000, queued: int = 50, days: int = 180, seed: int = 1, log: Callable = print
) -> None:
    """Add `count` completed tasks with one image each, spread over `days`, and `queued` queued tasks."""
    rng = random.Random(seed)
    users = _users()
    worker = _workers()
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    file_name, thumb_name = _files()
    now = timezone.now()
    start = now - timedelta(days=days)
    step = (now - start) / max(count, 1)
    done = 0
    while done < count:
        size = min(BATCH, count - done)
        times = [start + step * (done + i) for i in range(size)]
        _batch(rng, users, worker, template, times, file_name, thumb_name)
        done += size
        if done % 20_000 == 0 or done == count:
            log(f"{done} images")
    with _created_at_as_given():
        Task.objects.bulk_create(
            _task(rng, rng.choice(users), template, status=Task.Status.QUEUED, created=now)
            for _ in range(queued)
        )
    log(f"Added {count} completed tasks with images and {queued} queued.")


def _users() -> list:
    User = get_user_model()
    users = []
    for name in USERS:
        user, created = User.objects.get_or_create(username=name)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        users.append(user)
    staff, _ = User.objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    return [*users, staff]


def _workers() -> Worker:
    caps = {
        "checkpoints": CHECKPOINTS,
        "node_classes": [],
        "samplers": ["euler"],
        "schedulers": ["normal"],
    }
    first = None
    for n in (1, 2):
        worker, _ = Worker.objects.update_or_create(
            name=f"bench-gpu-{n}",
            defaults={
                "token_hash": hash_token(secrets.token_urlsafe(32)),
                "status": Worker.Status.IDLE,
                "last_heartbeat": timezone.now(),
                "registered_at": timezone.now(),
                "capabilities": caps,
            },
        )
        first = first or worker
    return first


def _files() -> tuple[str, str]:
    import io

    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.new("RGB", (64, 64), (90, 110, 200)).save(out, format="PNG")
    name = default_storage.save("bench/seed.png", ContentFile(out.getvalue()))
    thumb = default_storage.save("bench/seed.thumb.jpg", ContentFile(make_thumbnail(out.getvalue())))
    return name, thumb


def _batch(rng, users, worker, template, times, file_name, thumb_name) -> None:
    with transaction.atomic(), _created_at_as_given():
        tasks = Task.objects.bulk_create(
            _task(rng, rng.choice(users), template, status=Task.Status.COMPLETED, created=t, worker=worker)
            for t in times
        )
        attempts = TaskAttempt.objects.bulk_create(
            TaskAttempt(
                task=task,
                worker=worker,
                number=1,
                lease_token=uuid.uuid4(),
                lease_expires_at=task.finished_at,
                leased_at=task.leased_at,
                started_at=task.started_at,
                finished_at=task.finished_at,
                outcome=TaskAttempt.Outcome.COMPLETED,
            )
            for task in tasks
        )
        Image.objects.bulk_create(
            Image(
                task=task,
                attempt=attempt,
                index=0,
                file=file_name,
                thumbnail=thumb_name,
                width=task.width,
                height=task.height,
                size_bytes=4096,
                sha256="0" * 64,
                created_at=task.finished_at,
            )
            for task, attempt in zip(tasks, attempts, strict=True)
        )


def _task(rng, owner, template, *, status, created, worker=None) -> Task:
    width, height = rng.choice([(512, 512), (768, 768), (512, 768), (768, 512), (1024, 1024)])
    run = rng.uniform(4, 40)
    finished = status == Task.Status.COMPLETED
    return Task(
        owner=owner,
        prompt=f"{rng.choice(SUBJECTS)} {rng.choice(PLACES)}, {rng.choice(STYLES)}",
        negative_prompt="blurry, low quality",
        width=width,
        height=height,
        steps=rng.choice([20, 25, 30]),
        cfg=rng.choice([6.0, 7.0, 7.5]),
        seed=rng.randrange(2**64),
        checkpoint=rng.choice(CHECKPOINTS),
        template=template,
        status=status,
        progress_value=20 if finished else 0,
        progress_max=20 if finished else 0,
        created_at=created,
        leased_at=created + timedelta(seconds=1) if finished else None,
        started_at=created + timedelta(seconds=2) if finished else None,
        finished_at=created + timedelta(seconds=2 + run) if finished else None,
        attempts=1 if finished else 0,
        lease_count=1 if finished else 0,
        worker=worker,
    )


@contextmanager
def _created_at_as_given():
    """bulk_create keeps the created_at we set instead of stamping every row with now()."""
    fields = [Task._meta.get_field("created_at"), Image._meta.get_field("created_at")]
    for field in fields:
        field.auto_now_add = False
    try:
        yield
    finally:
        for field in fields:
            field.auto_now_add = True


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Bulk-insert completed tasks with images for bench/web_pages.py."
    )
    parser.add_argument("--count", type=int, default=100_000, help="Images (and tasks) to add.")
    parser.add_argument("--queued", type=int, default=50, help="Queued tasks to add as well.")
    parser.add_argument("--days", type=int, default=180, help="Spread the images over this many days.")
    parser.add_argument("--seed", type=int, default=1, help="Random seed (prompts, owners, times).")
    args = parser.parse_args()
    seed_gallery(count=args.count, queued=args.queued, days=args.days, seed=args.seed)


if __name__ == "__main__":
    main()
