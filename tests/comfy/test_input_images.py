"""Input images: ComfyUI's POST /upload/image on the farm, LoadImage workflows that name them, and the
worker fetching them under its lease."""

import hashlib
import io
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from generation.models import InputImage, Task
from tests.conftest import capabilities, make_worker, png_bytes, worker_client

pytestmark = pytest.mark.django_db

LOAD_NODES = ["LoadImage", "ImageInvert", "SaveImage"]


def load_image(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


@pytest.fixture
def loader_worker(db):
    worker, token = make_worker("gpu-load", capabilities(nodes=LOAD_NODES))
    return worker, worker_client(token)


def upload(client, data: bytes, name: str = "cat.png", base: str = "/comfy", **fields):
    image = SimpleUploadedFile(name, data, "image/png")
    return client.post(f"{base}/upload/image", {"image": image, **fields}, format="multipart")


def raw_upload(client, data: bytes, filename: str):
    """A multipart body written by hand: the test client would drop the path from `filename`."""
    head = (
        f'--XX\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + data + b"\r\n--XX--\r\n"
    return client.generic(
        "POST", "/comfy/upload/image", body, content_type="multipart/form-data; boundary=XX"
    )


def test_upload_answers_like_comfyui_and_stores_the_file_for_its_owner(api, user, base):
    data = png_bytes(32, 24)
    answer = upload(api, data, base=base, subfolder="probe", overwrite="true")
    assert answer.status_code == HTTPStatus.OK, answer.content
    assert answer.json() == {"name": "cat.png", "subfolder": "probe", "type": "input"}
    row = InputImage.objects.get()
    assert (row.owner, row.kind, row.subfolder, row.name) == (user, "input", "probe", "cat.png")
    assert (row.width, row.height, row.sha256) == (32, 24, hashlib.sha256(data).hexdigest())
    assert row.file.read() == data and "cat" not in row.file.name  # the storage name is unguessable


def test_same_name_follows_comfyuis_rules(api):
    first, other = png_bytes(8, 8), png_bytes(8, 8, color=(0, 0, 255))
    assert upload(api, first).json()["name"] == "cat.png"
    assert upload(api, first).json()["name"] == "cat.png"  # identical bytes: the same upload
    assert upload(api, other).json()["name"] == "cat (1).png"  # other bytes: a new name
    assert upload(api, other).json()["name"] == "cat (1).png"
    assert upload(api, png_bytes(9, 9), overwrite="true").json()["name"] == "cat.png"  # replaced
    rows = {r.name: (r.width, r.height) for r in InputImage.objects.all()}
    assert rows == {"cat.png": (9, 9), "cat (1).png": (8, 8)}


def test_temp_type_is_kept_apart(api):
    answer = upload(api, png_bytes(), type="temp")
    assert answer.json() == {"name": "cat.png", "subfolder": "", "type": "temp"}
    assert upload(api, png_bytes(), type="output").status_code == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    ("name", "fields", "field"),
    [
        ("cat.png", {"subfolder": "../up"}, "subfolder"),
        ("cat.png", {"subfolder": "a/../../b"}, "subfolder"),
    ],
)
def test_a_path_that_leaves_the_folder_is_a_400(api, name, fields, field):
    answer = upload(api, png_bytes(), name=name, **fields)
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert field in answer.json()["fields"]
    assert not InputImage.objects.exists()


@pytest.mark.parametrize("filename", ["../escape_try.png", "..\\escape.png", "a/b.png"])
def test_a_file_name_with_a_path_is_a_400(api, filename):
    answer = raw_upload(api, png_bytes(), filename)
    assert answer.status_code == HTTPStatus.BAD_REQUEST, answer.content
    assert "image" in answer.json()["fields"]
    assert not InputImage.objects.exists()
    assert raw_upload(api, png_bytes(), "plain.png").json()["name"] == "plain.png"  # the same body works


def test_too_big_is_a_413_json(api, settings):
    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": 2048}
    answer = upload(api, png_bytes(256, 256, color=None) + b"\0" * 4096)
    assert answer.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert answer.json()["error"] in ("too_large", "request_too_large")
    assert not InputImage.objects.exists()


def test_not_an_image_is_a_400(api):
    answer = upload(api, b"this is not a picture", name="x.png")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "image" in answer.json()["fields"]
    assert not InputImage.objects.exists()


def test_no_file_is_a_400(api):
    answer = api.post("/comfy/upload/image", {"subfolder": "x"}, format="multipart")
    assert answer.status_code == HTTPStatus.BAD_REQUEST and "image" in answer.json()["fields"]


def test_loadimage_of_an_upload_records_it_on_the_task(api, loader_worker):
    name = upload(api, png_bytes()).json()["name"]
    answer = api.post("/comfy/prompt", {"prompt": load_image(name)}, format="json")
    assert answer.status_code == HTTPStatus.OK, answer.json()
    task = Task.objects.get()
    assert [i.name for i in task.input_images.all()] == ["cat.png"]


def test_another_users_upload_is_not_yours(api, other_user, loader_worker):
    bob = APIClient()
    bob.force_authenticate(other_user)
    upload(bob, png_bytes(), name="bobs.png")
    answer = api.post("/comfy/prompt", {"prompt": load_image("bobs.png")}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"] == {
        "1": {
            "errors": [
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "image - Invalid image file: bobs.png",
                    "extra_info": {"input_name": "image"},
                }
            ],
            "dependent_outputs": ["3"],
            "class_type": "LoadImage",
        }
    }
    assert not Task.objects.exists()


def test_rest_submit_names_uploads_too(api, loader_worker):
    upload(api, png_bytes(), subfolder="in")
    ok = api.post("/api/v1/tasks/", {"workflow": load_image("in/cat.png")}, format="json")
    assert ok.status_code == HTTPStatus.CREATED, ok.json()
    missing = api.post("/api/v1/tasks/", {"workflow": load_image("cat.png")}, format="json")
    assert missing.status_code == HTTPStatus.BAD_REQUEST
    assert "Invalid image file: cat.png" in missing.json()["fields"]["workflow"][0]


def test_the_worker_gets_each_input_under_its_lease(api, loader_worker):
    data = png_bytes(16, 16)
    upload(api, data, subfolder="s")
    api.post("/comfy/prompt", {"prompt": load_image("s/cat.png")}, format="json")
    _, wapi = loader_worker
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    sha = hashlib.sha256(data).hexdigest()
    assert job["inputs"] == [{"sha256": sha, "name": f"{sha}.png", "subfolder": "t2i_inputs"}]
    assert job["workflow"]["1"]["inputs"]["image"] == f"t2i_inputs/{sha}.png"
    url = f"/api/v1/worker/tasks/{job['task_id']}/inputs/{sha}"
    got = wapi.post(url, {"lease_token": job["lease_token"]}, format="json")
    assert got.status_code == HTTPStatus.OK
    assert b"".join(got.streaming_content) == data
    stale = wapi.post(url, {"lease_token": "00000000-0000-0000-0000-000000000000"}, format="json")
    assert stale.status_code == HTTPStatus.CONFLICT
    other = wapi.post(url.replace(sha, "0" * 64), {"lease_token": job["lease_token"]}, format="json")
    assert other.status_code == HTTPStatus.NOT_FOUND


def test_deleting_an_account_removes_its_input_files_and_the_sweep_keeps_live_ones(
    api, user, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.core.files.storage import default_storage
    from django.utils import timezone

    from generation import jobs, services
    from tests.conftest import media_files

    upload(api, png_bytes())
    stray = default_storage.save("inputs/stray.png", io.BytesIO(png_bytes()))
    later = timezone.now() + timedelta(days=30)
    assert jobs.media_sweep_orphans(now=later) == 1  # the stray file, not the upload
    assert stray not in media_files() and len(media_files()) == 1
    with django_capture_on_commit_callbacks(execute=True):
        services.user_delete(user=user)
    assert media_files() == [] and not InputImage.objects.exists()
