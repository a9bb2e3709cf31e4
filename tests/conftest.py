"""Shared fixtures: users, API clients, a registered worker with its token, tiny real images, and
`submit_task`, the one way tests queue a task through the service."""

import io
import os
import socket
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage
from rest_framework.test import APIClient

from generation import eta, farm_snapshot, node_specs, services
from generation.models import Task, WorkflowTemplate
from generation.workflows import SHIPPED_TEMPLATES
from tests.factories import UserFactory, registered_capabilities, worker_with_token

SD15_NODES = [
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
]
NOISE_NODES = ["EmptyImage", "ImageAddNoise", "SaveImage"]
CHECKPOINT = "sim-v1-5.safetensors"


def capabilities(checkpoints=(CHECKPOINT,), nodes=(*SD15_NODES, *NOISE_NODES)) -> dict:
    return {
        "comfyui_version": "0.3.64",
        "device_name": "Simulated GPU",
        "vram_total": 8 * 2**30,
        "checkpoints": list(checkpoints),
        "node_classes": list(nodes),
        "samplers": ["euler"],
        "schedulers": ["normal"],
    }


def off_thread(function, *args, **kwargs):
    """`function` as a coroutine on a thread of asgiref's pool, as another process's request would run it; the
    thread's database connection goes back to the pool when it is done (a pool thread outlives the test, and
    a connection it kept would be missing from the pool for the rest of the run)."""
    from asgiref.sync import sync_to_async

    def run():
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(run, thread_sensitive=False)()


def png_bytes(width: int = 64, height: int = 64, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _shipped_templates(request):
    """The templates migration 0002 ships. A transactional test's flush deletes them, so every test that
    uses the database gets them back first."""
    uses_db = request.node.get_closest_marker("django_db") is not None or {
        "db",
        "transactional_db",
        "live_server",
    } & set(request.fixturenames)
    if not uses_db:
        return
    request.getfixturevalue("django_db_setup")  # the test database, never the real one
    with request.getfixturevalue("django_db_blocker").unblock():
        for name, description, workflow, bindings in SHIPPED_TEMPLATES:
            WorkflowTemplate.objects.get_or_create(
                name=name, defaults={"description": description, "workflow": workflow, "bindings": bindings}
            )


@pytest.fixture(autouse=True)
def _fresh_placement_cache():
    """Placement caches workers' learned costs and the queue's users per process; tests reuse row ids."""
    farm_snapshot.clear_cache()
    eta.clear_cache()
    node_specs.clear_caches()
    yield
    farm_snapshot.clear_cache()
    node_specs.clear_caches()
    eta.clear_cache()


@pytest.fixture(autouse=True)
def _no_lazy_reap_throttle(settings):
    settings.T2I = {**settings.T2I, "REAP_EVERY": 0}


def child_database_url() -> str:
    """DATABASE_URL of the test database this session created (what a child process must open)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(Path(s["NAME"]).resolve())
    auth = quote(s.get("USER") or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{'@' if auth else ''}{host}{port}/{quote(s['NAME'], safe='')}"


def media_files() -> list[str]:
    """Every file under MEDIA_ROOT, relative to it (the autouse fixture makes MEDIA_ROOT a fresh folder)."""
    root = Path(django_settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class Clock:
    """A fake `timezone.now`: frozen until a test moves it with `advance(seconds)`."""

    def __init__(self, start) -> None:
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(timezone.now())
    monkeypatch.setattr(timezone, "now", fake)
    return fake


def submit_task(owner=None, **fields) -> Task:
    """Queue a task through `generation.services.task_submit`, as the API and the pages do: for tests of
    submitting, leasing and dispatch, which rely on what the service decides (template, checkpoint, seed,
    the wake-up of waiting leases). `fields` are the submitter's input; the size defaults to 64x64. A
    priority above the default needs staff: without an owner, an `operator` staff account submits it.
    The only place the tests call `task_submit`; tests that just need a task row use `TaskFactory`."""
    data = {"prompt": "a red fox in snow", "width": 64, "height": 64} | fields
    if owner is None and data.get("priority", 0) > 0:
        owner = UserFactory(username="operator", is_staff=True)
    return services.task_submit(owner=owner, data=data)


@pytest.fixture
def user():
    return UserFactory(username="alice", password="pw-alice-123")


@pytest.fixture
def other_user():
    return UserFactory(username="bob", password="pw-bob-123")


@pytest.fixture
def staff():
    return UserFactory(username="ops", password="pw-ops-123", is_staff=True, is_superuser=True)


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def client_for():
    """A page client signed in as the given user (or anonymous for None)."""

    def make(user) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_api(staff) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff)
    return client


def make_worker(name: str = "gpu-1", caps: dict | None = None, register: bool = True):
    """A worker and its token, registered with `caps` (default: `capabilities()`) unless `register=False`."""
    if not register:
        return worker_with_token(name=name, unregistered=True)
    return worker_with_token(name=name, capabilities=registered_capabilities(caps or capabilities()))


def worker_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def worker_and_token(db):
    return make_worker()


@pytest.fixture
def worker(worker_and_token):
    return worker_and_token[0]


@pytest.fixture
def wapi(worker_and_token) -> APIClient:
    return worker_client(worker_and_token[1])


# --- PostgreSQL-only tests ------------------------------------------------------------------------------


def _postgres_reachable() -> bool:
    url = urlparse(os.environ.get("T2I_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _postgres_only(request):
    """`@pytest.mark.postgres` tests run in the PostgreSQL pass. Elsewhere they skip, except under CI=true
    when the server is unreachable: then they fail, so a broken CI database can never pass silently."""
    if request.node.get_closest_marker("postgres") is None:
        return
    if connection.vendor == "postgresql":
        return
    if os.environ.get("CI", "").lower() == "true" and not _postgres_reachable():
        pytest.fail("PostgreSQL is unreachable, and CI=true requires the PostgreSQL tests to run.")
    pytest.skip("PostgreSQL-only: runs in the PostgreSQL pass (DATABASE_URL=postgres://…).")
