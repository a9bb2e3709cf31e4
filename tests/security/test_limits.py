"""Limits and hostile input that tests/generation/test_bad_input.py does not cover: the upload byte limit at
its edge and from the environment, bodies larger than any completion, files that only look like images,
decompression bombs beyond a PNG header, file names that try to leave MEDIA_ROOT, `..` in media URLs, odd
numbers in query strings, control characters and markup through the web form and pages, and workflow graphs
with cycles."""

import io
import json
import struct
import zlib
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from rest_framework.test import APIClient

from generation import services
from generation.models import Image, Task, WorkflowTemplate
from tests.conftest import media_files, png_bytes, submit_task
from tests.security.test_controls import settings_in_subprocess
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

W = "/api/v1/worker/"


def leased(worker, **fields) -> tuple[Task, str]:
    task = submit_task(prompt="a red fox", **fields)
    lease = services.task_lease_next(worker=worker)
    assert lease.task.pk == task.pk
    return task, str(lease.attempt.lease_token)


def complete(wapi, task: Task, token: str, *files: SimpleUploadedFile, seed: bool = False):
    if seed:
        body = {"prompt_id": str(task.public_id), "lease_token": token, "images": list(files)}
        return wapi.post("/complete", body, format="multipart")
    body = {"lease_token": token, "images": list(files)}
    return wapi.post(f"{W}tasks/{task.public_id}/complete", body, format="multipart")


def upload(data: bytes, name: str = "out.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, "image/png")


def encoded(fmt: str, width: int = 64, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.effect_noise((width, height), 60).convert("RGB").save(out, format=fmt)
    return out.getvalue()


def assert_refused(response, status=HTTPStatus.BAD_REQUEST, error="invalid", field="images") -> None:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "fields"} and body["error"] == error, body
    if field:
        assert field in body["fields"], body


def assert_still_leased(task: Task) -> None:
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED
    assert Image.objects.count() == 0
    assert media_files() == []


# --- Upload size ----------------------------------------------------------------------------------------


def test_an_image_at_the_byte_limit_is_accepted_and_one_byte_over_is_refused(wapi, worker, settings):
    data = png_bytes(64, 64)
    task, token = leased(worker)
    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": len(data) - 1}
    assert_refused(complete(wapi, task, token, upload(data)))
    assert_still_leased(task)

    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": len(data)}
    response = complete(wapi, task, token, upload(data))

    assert response.status_code == HTTPStatus.OK, response.json()
    assert Image.objects.get().size_bytes == len(data)


def test_the_image_byte_limit_comes_from_the_environment():
    ok = settings_in_subprocess(
        {"SECRET_KEY": "k" * 50, "T2I_MAX_IMAGE_BYTES": "2048"}, "print(s.T2I['MAX_IMAGE_BYTES'])"
    )
    assert ok.stdout.strip() == "2048"
    bad = settings_in_subprocess({"SECRET_KEY": "k" * 50, "T2I_MAX_IMAGE_BYTES": "2k"}, "")
    assert "T2I_MAX_IMAGE_BYTES='2k' is not an integer" in bad.stderr


@pytest.mark.parametrize("seed", [False, True], ids=["worker-api", "seed-complete"])
def test_a_body_larger_than_any_completion_is_refused_from_its_length(wapi, worker, settings, seed):
    # Limit: BATCH_MAX × MAX_IMAGE_BYTES + DATA_UPLOAD_MAX_MEMORY_SIZE = 1 × 4 KiB + 1 MiB here.
    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": 4096, "BATCH_MAX": 1}
    task, token = leased(worker)
    big = upload(png_bytes(64, 64) + b"\0" * (django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 8192))

    response = complete(wapi, task, token, big, seed=seed)

    assert_refused(response, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request_too_large", field=None)
    assert_still_leased(task)


# --- Files that are not (whole) images, and bombs ---------------------------------------------------------


def png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A valid 64×64 PNG with one extra chunk after IHDR."""
    data = png_bytes(64, 64)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:33] + chunk + data[33:]


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded("JPEG", 8, 8))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded("WEBP", 8, 8))
    vp8 = data.find(b"VP8 ")
    if vp8 >= 0:  # lossy: 14-bit sizes after the start code
        struct.pack_into("<HH", data, vp8 + 14, width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


TEXT_BOMB = zlib.compress(b"A" * 200_000_000, 9)  # 200 MB of text in ~200 KB
NOT_IMAGES = {
    "html": b"<!doctype html><script>alert(document.cookie)</script>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="64" height="64"/></svg>',
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "zip": b"PK\x03\x04" + b"\0" * 100,
    "png-magic-only": b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
    "truncated-jpeg": encoded("JPEG")[:-200],
    "truncated-webp": encoded("WEBP")[:-40],
    "jpeg-bomb-65500-square": jpeg_claiming(65500, 65500),
    "webp-bomb-16383-square": webp_claiming(16383, 16383),
    "png-ztxt-bomb": png_with_chunk(b"zTXt", b"comment\x00\x00" + TEXT_BOMB),
    "png-itxt-bomb": png_with_chunk(b"iTXt", b"comment\x00\x01\x00\x00\x00" + TEXT_BOMB),
    "png-iccp-bomb": png_with_chunk(b"iCCP", b"profile\x00\x00" + TEXT_BOMB),
}


@pytest.mark.parametrize("data", NOT_IMAGES.values(), ids=NOT_IMAGES.keys())
def test_files_that_are_not_whole_images_are_refused_and_nothing_is_stored(wapi, worker, data):
    task, token = leased(worker)

    response = complete(wapi, task, token, upload(data))
    assert_refused(response)
    assert " at 0x" not in response.json()["detail"]  # no Python object's repr reaches the client
    assert_still_leased(task)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_real_images_of_each_accepted_format_are_stored(wapi, worker, fmt):
    task, token = leased(worker)

    response = complete(wapi, task, token, upload(encoded(fmt), f"out.{fmt.lower()}"))

    assert response.status_code == HTTPStatus.OK, response.json()
    assert Image.objects.get().file.name.endswith({"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[fmt])


# --- File names and paths -------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd.png",
    "/etc/passwd.png",
    "..\\..\\windows\\win.ini.png",
    "images/../../../escape.png",
    "%2e%2e%2fescape.png",
    "....//....//escape.png",
    "a" * 300 + ".png",
    "name\x00.php.png",
    "CON.png",
]


@pytest.mark.parametrize("seed", [False, True], ids=["worker-api", "seed-complete"])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_upload_names_never_choose_where_a_file_lands(wapi, worker, settings, tmp_path, name, seed):
    media = Path(settings.MEDIA_ROOT)
    assert media.parent == tmp_path
    task, token = leased(worker)

    response = complete(wapi, task, token, upload(png_bytes(64, 64), name), seed=seed)

    assert response.status_code == HTTPStatus.OK, response.json()
    image = Image.objects.get()
    assert image.file.name.startswith("images/")
    assert image.file.name.endswith(f"/{task.public_id}_a1_0.png")  # generated on the server
    assert image.thumbnail.name == image.file.name.removesuffix(".png") + ".thumb.jpg"
    stored = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert stored == [media / image.file.name, media / image.thumbnail.name]
    assert all(p.resolve().is_relative_to(media.resolve()) for p in stored)


@pytest.mark.parametrize(
    "path",
    [
        "/media/../secret.txt",
        "/media/%2e%2e/secret.txt",
        "/media/images/../../secret.txt",
        "/media/..%2fsecret.txt",
        "/media/..%5csecret.txt",
        "/media/%252e%252e/secret.txt",
        "/media//" + "{tmp}/secret.txt",
    ],
)
def test_media_serving_refuses_paths_outside_media_root(client, settings, tmp_path, path):
    (tmp_path / "secret.txt").write_text("the database password")
    Path(settings.MEDIA_ROOT).mkdir(parents=True, exist_ok=True)

    response = client.get(path.replace("{tmp}", str(tmp_path).lstrip("/")))

    assert response.status_code in (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"the database password" not in body


def test_media_serving_lists_no_directories(client, wapi, worker):
    task, token = leased(worker)
    assert complete(wapi, task, token, upload(png_bytes(64, 64))).status_code == HTTPStatus.OK
    image = Image.objects.get()
    folder = image.file.url.rsplit("/", 1)[0] + "/"

    for url in ("/media/", "/media/images/", folder):
        assert client.get(url).status_code == HTTPStatus.NOT_FOUND, url
    assert client.get(image.file.url).status_code == HTTPStatus.OK


# --- Numbers in query strings and progress ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "page_size=-1",
        "page_size=0",
        f"page_size={10**30}",
        "page_size=1e3",
        "mine=%00",
        "status=",
        "x=" + "9" * 5000,
    ],
)
def test_task_list_query_parameters_out_of_range_are_ignored(api, user, query):
    submit_task(user, prompt="a fox")

    response = api.get(f"/api/v1/tasks/?{query}")

    assert response.status_code == HTTPStatus.OK
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(
    "cursor", ["garbage", "%00", "cD0" + "A" * 5000, "cj0xJnA9OTk5OTk5OTk5OTk5OTk5OTk5OTk5"]
)
def test_a_forged_list_cursor_is_refused_or_ignored(api, cursor):
    response = api.get(f"/api/v1/tasks/?cursor={cursor}")

    if response.status_code == HTTPStatus.OK:
        assert response.json()["results"] == []
    else:
        assert_refused(response, HTTPStatus.NOT_FOUND, "not_found", field=None)


@pytest.mark.parametrize("wait", ["-1", "1e309", "nan", "-inf", "1" * 400])
def test_lease_wait_in_the_query_string_must_be_a_finite_non_negative_number(wapi, wait):
    response = wapi.post(f"{W}lease?wait={wait}", {}, format="json")

    assert_refused(response, field="wait")


def test_progress_at_the_edge_of_float_range_is_kept_and_shown(wapi, worker, api):
    task, token = leased(worker)
    url = f"{W}tasks/{task.public_id}/progress"

    for value, maximum in ((5e-324, 1.7e308), (1.7e308, 1.7e308)):
        body = {"lease_token": token, "value": value, "max": maximum}
        assert wapi.post(url, body, format="json").status_code == HTTPStatus.OK

    response = APIClient().get(f"/api/v1/tasks/{task.public_id}/")
    assert response.status_code == HTTPStatus.OK
    assert response.json()["progress"]["percent"] == 100
    assert APIClient().get(f"/status/{task.public_id}").json()["progress"] == 100


# --- Control characters and markup through the web form and pages -----------------------------------------


def web_form(**changes) -> dict:
    """The generate page's fields (generation.forms.GenerateForm), filled in as a browser would."""
    return {
        "prompt": "a red fox",
        "negative_prompt": "",
        "size": "custom",
        "width": "64",
        "height": "64",
        "steps": "4",
        "cfg": "7",
        "seed": "",
        "sampler": "euler",
        "scheduler": "normal",
        "checkpoint": "",
        "template": "sd15-txt2img",
        "batch_size": "1",
    } | changes


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f"], ids=["nul", "escape", "bell", "delete"])
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_the_web_form_refuses_control_characters_and_names_the_field(client, user, worker, field, char):
    client.force_login(user)
    data = web_form(**{field: f"a {char}[31m fox"})

    response = client.post(reverse("web:generate"), data)

    assert response.status_code == HTTPStatus.OK  # the form again
    assert field in response.context["form"].errors
    assert Task.objects.count() == 0


def test_emoji_cjk_and_markup_round_trip_through_the_web_form_and_are_escaped(client, user, worker, staff):
    prompt = "富士山と桜 🌸🐈‍⬛ <script>alert('x')</script> & <b>bold</b>"
    client.force_login(user)

    response = client.post(reverse("web:generate"), web_form(prompt=prompt), follow=True)

    task = Task.objects.get()
    assert task.prompt == prompt
    for page in (response, client.get(reverse("web:queue")), client.get(reverse("web:gallery"))):
        assert "<script>alert" not in page.content.decode()
    assert "富士山と桜 🌸🐈‍⬛ &lt;script&gt;" in response.content.decode()
    assert APIClient().get(f"/status/{task.public_id}").status_code == HTTPStatus.NOT_FOUND
    api = APIClient()
    api.force_authenticate(user)
    exact = api.get(f"/api/v1/tasks/{task.public_id}/")
    assert exact.json()["prompt"] == prompt  # JSON keeps it as it is (served as JSON, nosniff)
    assert exact["Content-Type"] == "application/json"
    client.force_login(staff)
    admin_page = client.get(reverse("admin:generation_task_changelist")).content.decode()
    assert "<script>alert" not in admin_page


def test_a_workers_failure_message_is_shown_escaped(wapi, worker, client, user):
    task, token = leased(worker)
    Task.objects.filter(pk=task.pk).update(owner=user)
    body = {
        "lease_token": token,
        "code": "execution_error",
        "message": '<img src=x onerror="alert(1)"> \x1b[2J',
        "retryable": False,
    }
    assert wapi.post(f"{W}tasks/{task.public_id}/fail", body, format="json").status_code == HTTPStatus.OK
    client.force_login(user)

    page = client.get(reverse("web:task", kwargs={"task_id": task.public_id})).content.decode()

    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=" in page


# --- Workflow graphs ------------------------------------------------------------------------------------


def ring(size: int) -> dict:
    """`size` nodes, each linking to the next, the last back to the first, plus an output."""
    nodes = {
        str(i): {"class_type": "ImageAddNoise", "inputs": {"image": [str((i + 1) % size), 0]}}
        for i in range(size)
    }
    return nodes | {"out": {"class_type": "SaveImage", "inputs": {"images": ["0", 0]}}}


WORKFLOWS = {
    "self-loop": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}},
    "ring-of-two": ring(2),
    "ring-of-5000": ring(5000),
    "null": None,
    "number": 3,
    "true": True,
    "empty-object": {},
}


@pytest.mark.parametrize("workflow", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_templates_with_a_cycle_or_not_an_object_are_refused(staff_api, workflow):
    body = {"name": "bad", "workflow": workflow, "bindings": {}}

    response = staff_api.post("/api/v1/templates/", json.dumps(body), content_type="application/json")

    assert_refused(response, field="workflow")
    assert not WorkflowTemplate.objects.filter(name="bad").exists()


def test_a_long_chain_without_a_cycle_is_accepted(staff_api):
    chain = {
        str(i): {"class_type": "ImageAddNoise", "inputs": {"image": [str(i + 1), 0]}} for i in range(3000)
    }
    chain["3000"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    chain["out"] = {"class_type": "SaveImage", "inputs": {"images": ["0", 0], "filename_prefix": "t2i"}}
    bindings = {"filename_prefix": ["out", "filename_prefix"]}

    response = staff_api.post("/api/v1/templates/", {"name": "long", "workflow": chain, "bindings": bindings})

    assert response.status_code == HTTPStatus.CREATED, response.json()


# --- Unknown URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nope/",
        "/api/v1/tasks/not-a-uuid/",
        "/api/v1/worker/tasks/1/complete",
        "/status/",
        "/generate/x",
    ],
)
def test_unknown_api_urls_answer_json_404(api, path):
    assert_refused(api.get(path), HTTPStatus.NOT_FOUND, "not_found", field=None)


def test_unknown_pages_answer_the_sites_404_page(client):
    response = client.get("/no-such-page/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response["Content-Type"].startswith("text/html")


# --- The database going away, and files it never recorded --------------------------------------------


def test_a_database_error_is_a_json_503_the_caller_can_retry(wapi, monkeypatch):
    from django.db import OperationalError

    from workers_app import services as worker_services

    def unreachable(**kwargs):
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(worker_services, "worker_heartbeat", unreachable)

    response = wapi.post(f"{W}heartbeat", {}, format="json")

    assert_refused(response, HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", field=None)
    assert response["Retry-After"] == "2"


def test_a_thumbnail_whose_row_cannot_be_updated_leaves_no_file(wapi, worker, monkeypatch):
    from django.db import OperationalError

    from generation import thumbnails

    task, token = leased(worker)
    assert complete(wapi, task, token, upload(png_bytes(64, 64))).status_code == HTTPStatus.OK
    image = Image.objects.get()
    assert image.thumbnail  # made in the completion; here the periodic job makes it again
    default_storage.delete(image.thumbnail.name)
    Image.objects.filter(pk=image.pk).update(thumbnail="")
    image.refresh_from_db()

    class Unreachable:
        def update(self, **kwargs):
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(thumbnails.Image.objects, "filter", lambda **kwargs: Unreachable())
    with pytest.raises(OperationalError):
        thumbnails.image_make_thumbnail(image=image)

    assert media_files() == [image.file.name]  # the original only: no thumbnail without its row


@pytest.mark.parametrize(("key", "most"), [("checkpoints", 1000), ("node_classes", 5000), ("samplers", 200)])
def test_a_worker_cannot_report_more_capabilities_than_any_real_comfyui(wapi, worker, key, most):
    """26,000 checkpoint names once made every generate page 2.9 MB: the lists are bounded at register."""
    before = Worker.objects.get(pk=worker.pk).capabilities
    names = [f"model-{i:05d}.safetensors" for i in range(most + 1)]
    response = wapi.post("/api/v1/worker/register", {"capabilities": {key: names}}, format="json")
    assert_refused(response, field=f"capabilities.{key}")
    assert Worker.objects.get(pk=worker.pk).capabilities == before
    ok = wapi.post("/api/v1/worker/register", {"capabilities": {key: names[:most]}}, format="json")
    assert ok.status_code == HTTPStatus.OK
    assert len(Worker.objects.get(pk=worker.pk).capabilities[key]) == most


def test_workers_silent_for_long_shape_no_users_choices(settings, client, worker):
    """A worker that reported odd names and went quiet stops being offered after T2I_WORKER_CHOICES_HOURS:
    the generate form's checkpoint, sampler and scheduler lists, the checkpoints API and a refusal's list."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.conftest import make_worker

    settings.T2I = settings.T2I | {"WORKER_CHOICES_HOURS": 2.0}
    gone, _ = make_worker(
        "gone-gpu",
        caps={
            "checkpoints": ["gone-ckpt.safetensors"],
            "samplers": ["gone_sampler"],
            "schedulers": ["gone_sch"],
        },
    )
    Worker.objects.filter(pk=gone.pk).update(
        status=Worker.Status.OFFLINE, last_heartbeat=timezone.now() - timedelta(hours=3)
    )
    client.force_login(get_user_model().objects.create_user("carol"))
    page = client.get(reverse("web:generate")).content.decode()
    assert "gone-ckpt" not in page and "gone_sampler" not in page and "gone_sch" not in page
    api = APIClient()
    api.force_authenticate(get_user_model().objects.get(username="carol"))
    names = [c["name"] for c in api.get("/api/v1/checkpoints/").json()]
    assert names and "gone-ckpt.safetensors" not in names
    refused = api.post("/api/v1/tasks/", {"prompt": "x", "checkpoint": "nope.safetensors"}, format="json")
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert "gone-ckpt" not in json.dumps(refused.json())

    Worker.objects.filter(pk=gone.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    assert "gone-ckpt" in client.get(reverse("web:generate")).content.decode()  # seen lately: offered
