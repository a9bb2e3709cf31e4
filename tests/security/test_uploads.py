"""A compromised worker cannot exhaust the scheduler's memory or disk (SECURITY.md, "Uploads"): what
follows an image's end is dropped (ComfyUI's text chunks kept), uploads are read in chunks, a task's uploads
together and a worker's completions at once are capped, and a full disk refuses a completion (507, retried by
the daemon) without keeping any part of it."""

import errno
import hashlib
import io
import tracemalloc
import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.utils import timezone
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from generation import api_errors, images, services, storage_space
from generation.models import Image, Task
from generation.services import completion_slots
from tests.conftest import png_bytes
from tests.security.test_limits import assert_refused, assert_still_leased, complete, leased, upload
from workers_app import services as worker_services
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

WORKFLOW = '{"3": {"class_type": "KSampler", "inputs": {"seed": 42}}}'


def comfyui_png(width: int = 64, height: int = 64) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: the prompt and workflow as text chunks (here tEXt, iTXt and
    zTXt, all three kinds)."""
    info = PngInfo()
    info.add_text("prompt", WORKFLOW)
    info.add_itxt("workflow", WORKFLOW, lang="en")
    info.add_text("parameters", "steps: 20", zip=True)
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (10, 120, 200)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def stored_bytes() -> bytes:
    image = Image.objects.get()
    with image.file.open("rb") as f:
        return f.read()


def test_data_after_a_pngs_end_is_dropped_and_its_text_chunks_kept(worker, wapi):
    task, token = leased(worker, width=64, height=64)
    png = comfyui_png()
    response = complete(wapi, task, token, upload(png + b"\0" * (3 * 1024 * 1024)))
    assert response.status_code == HTTPStatus.OK, response.content

    kept = stored_bytes()
    assert kept == png
    image = Image.objects.get()
    assert image.size_bytes == len(png) and image.sha256 == hashlib.sha256(png).hexdigest()
    with PILImage.open(io.BytesIO(kept)) as img:
        assert img.text == {"prompt": WORKFLOW, "workflow": WORKFLOW, "parameters": "steps: 20"}


def test_data_after_a_webps_end_is_dropped(worker, wapi):
    task, token = leased(worker, width=64, height=64)
    out = io.BytesIO()
    PILImage.new("RGB", (64, 64), (1, 2, 3)).save(out, format="WEBP")
    webp = out.getvalue()
    response = complete(wapi, task, token, upload(webp + b"junk" * 1000, "out.webp"))
    assert response.status_code == HTTPStatus.OK, response.content
    assert stored_bytes() == webp


def test_a_png_cut_short_is_still_refused(worker, wapi):
    task, token = leased(worker, width=64, height=64)
    png = comfyui_png()
    assert_refused(complete(wapi, task, token, upload(png[: len(png) - 20])))
    assert_still_leased(task)


def test_checking_an_upload_never_holds_the_whole_file_in_memory(settings, tmp_path):
    """A 24 MiB upload (a PNG and what a worker padded it with) is checked and copied in chunks."""
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    padded = TemporaryUploadedFile("out.png", "image/png", 0, None)
    png = comfyui_png()
    padded.write(png)
    for _ in range(24):
        padded.write(b"\1" * (1024 * 1024))
    padded.flush()
    padded.size = padded.tell()
    tracemalloc.start()
    try:
        verified = images.verify_image(padded, width=64, height=64, max_bytes=50 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        padded.close()
    assert verified.size == len(png) and verified.file.read() == png
    assert peak < 4 * 1024 * 1024, peak  # whole, it would be 24 MiB and more


def test_a_tasks_uploads_together_are_capped(settings, worker, wapi):
    png = png_bytes(64, 64)
    settings.T2I = settings.T2I | {"MAX_TASK_UPLOAD_BYTES": 2 * len(png) + 10}
    task, token = leased(worker, width=64, height=64, batch_size=3)
    response = complete(wapi, task, token, *(upload(png, f"{n}.png") for n in range(3)))
    assert_refused(response, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large")
    assert_still_leased(task)

    settings.T2I = settings.T2I | {"MAX_TASK_UPLOAD_BYTES": 3 * len(png)}
    response = complete(wapi, task, token, *(upload(png, f"{n}.png") for n in range(3)))
    assert response.status_code == HTTPStatus.OK, response.content
    assert Image.objects.count() == 3


def test_the_task_cap_also_bounds_the_body_before_it_is_read(settings, worker, wapi):
    from workers_app.parsers import upload_limit

    settings.T2I = settings.T2I | {"MAX_TASK_UPLOAD_BYTES": 4096}
    assert upload_limit() == 4096 + settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    task, token = leased(worker, width=64, height=64)
    big = upload(png_bytes(64, 64) + b"\0" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 8192))
    assert_refused(
        complete(wapi, task, token, big), HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request_too_large", None
    )
    assert_still_leased(task)


def test_a_worker_may_not_complete_more_at_once_than_the_limit(settings, worker, wapi):
    """The slots are counted on the worker's row, so every server process counts the same ones."""
    settings.T2I = settings.T2I | {"MAX_CONCURRENT_COMPLETIONS": 2}
    task, token = leased(worker, width=64, height=64)
    other, _ = worker_services.worker_create(name="other")
    with services.completion_slot(worker_id=worker.pk), services.completion_slot(worker_id=worker.pk):
        assert Worker.objects.get(pk=worker.pk).completing == 2
        response = complete(wapi, task, token, upload(png_bytes(64, 64)))
        assert_refused(response, HTTPStatus.TOO_MANY_REQUESTS, "too_many_completions", None)
        assert response["Retry-After"] == "1"
        assert_still_leased(task)
        with services.completion_slot(worker_id=other.pk):  # another worker's slots are its own
            pass
    assert Worker.objects.get(pk=worker.pk).completing == 0
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))  # both slots are free again
    assert response.status_code == HTTPStatus.OK, response.content
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))  # a retry does not keep a slot
    assert response.status_code == HTTPStatus.OK
    response = complete(wapi, task, str(uuid.uuid4()), upload(png_bytes(64, 64)))  # nor a refused one
    assert response.status_code == HTTPStatus.CONFLICT
    assert Worker.objects.get(pk=worker.pk).completing == 0


@pytest.mark.django_db(transaction=True)  # on_commit runs at the completion's own commit, as in production
def test_a_thumbnail_made_after_the_commit_is_still_inside_the_completions_slot(monkeypatch, worker, wapi):
    """A completion counts itself off in its own transaction, except when an image still needs decoding for
    its thumbnail after the commit: that decode stays inside the slot too."""
    from generation import hooks

    seen = []
    monkeypatch.setattr(images, "_thumbnail_or_none", lambda img, name: b"")
    monkeypatch.setattr(
        hooks, "image_make_thumbnail", lambda image: seen.append(Worker.objects.get(pk=worker.pk).completing)
    )
    task, token = leased(worker, width=64, height=64)
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))
    assert response.status_code == HTTPStatus.OK, response.content
    assert seen == [1]
    assert Worker.objects.get(pk=worker.pk).completing == 0


def test_slots_left_by_a_killed_process_are_forgotten_after_slot_seconds(settings, worker, wapi):
    """A process killed mid-upload never counts its completion off: once no completion of the worker has begun
    for SLOT_SECONDS (none runs that long), the count starts again."""
    settings.T2I = settings.T2I | {"MAX_CONCURRENT_COMPLETIONS": 2}
    task, token = leased(worker, width=64, height=64)
    recent = timezone.now() - timedelta(seconds=completion_slots.SLOT_SECONDS - 5)
    Worker.objects.filter(pk=worker.pk).update(completing=2, completing_since=recent)
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))
    assert_refused(response, HTTPStatus.TOO_MANY_REQUESTS, "too_many_completions", None)

    Worker.objects.filter(pk=worker.pk).update(completing_since=recent - timedelta(seconds=10))
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))
    assert response.status_code == HTTPStatus.OK, response.content
    assert Worker.objects.get(pk=worker.pk).completing == 0  # counted again from one, then off


def test_storage_below_the_free_space_floor_refuses_the_completion_with_507(monkeypatch, worker, wapi):
    task, token = leased(worker, width=64, height=64)
    monkeypatch.setattr(storage_space, "media_free_bytes", lambda: 1024)
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))
    assert_refused(response, HTTPStatus.INSUFFICIENT_STORAGE, "insufficient_storage", None)
    assert response["Retry-After"] == str(storage_space.RETRY_AFTER)
    assert_still_leased(task)

    monkeypatch.undo()
    response = complete(wapi, task, token, upload(png_bytes(64, 64)))  # the daemon's retry, space freed
    assert response.status_code == HTTPStatus.OK, response.content


def test_a_disk_that_fills_up_mid_write_leaves_no_half_stored_image(monkeypatch, worker, wapi):
    task, token = leased(worker, width=64, height=64, batch_size=2)
    real_save = FileSystemStorage._save
    written = []

    def fills_up(self, name, content):
        if written:  # the second image: half of it lands, then the disk is full
            with open(self.path(name), "wb") as f:
                f.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        return real_save(self, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", fills_up)
    files = [upload(png_bytes(64, 64), "a.png"), upload(png_bytes(64, 64, (1, 2, 3)), "b.png")]
    response = complete(wapi, task, token, *files)
    assert_refused(response, HTTPStatus.INSUFFICIENT_STORAGE, "insufficient_storage", None)
    assert_still_leased(task)  # no rows, and neither the first image nor half of the second stays

    monkeypatch.undo()
    files = [upload(png_bytes(64, 64), "a.png"), upload(png_bytes(64, 64, (1, 2, 3)), "b.png")]
    assert complete(wapi, task, token, *files).status_code == HTTPStatus.OK
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and Image.objects.count() == 2


def test_a_full_disk_anywhere_in_a_request_is_a_json_507():
    """Django spooling an upload to its temporary folder may meet the full disk too."""
    response = api_errors.exception_handler(OSError(errno.ENOSPC, "No space left on device"), {})
    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.data["error"] == "insufficient_storage" and response["Retry-After"]


def test_healthz_and_the_dashboard_show_the_media_storages_free_space(
    client, monkeypatch, admin_client, settings
):
    body = client.get("/healthz").json()
    assert body["media_free_bytes"] > 0 and body["media_storage"] == "ok"

    monkeypatch.setattr(storage_space, "media_free_bytes", lambda: 1000)
    body = client.get("/healthz").json()
    assert (body["media_free_bytes"], body["media_storage"]) == (1000, "low")
    page = admin_client.get("/admin/generation/task/dashboard/").content.decode()
    assert "Media free" in page and "1000\xa0bytes" in page


def test_the_image_check_does_not_hold_a_file_beyond_its_use(worker, wapi):
    """Each checked image's temporary copy is closed once the completion is done (no descriptor leak)."""
    task, token = leased(worker, width=64, height=64)
    closed = []
    real = images.VerifiedImage.close

    def close(self):
        closed.append(self.size)
        real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images.VerifiedImage, "close", close)
        assert complete(wapi, task, token, upload(png_bytes(64, 64))).status_code == HTTPStatus.OK
    assert len(closed) == 1
