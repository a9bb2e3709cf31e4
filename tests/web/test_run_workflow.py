"""The "Run a workflow" page: paste, .json file or ComfyUI PNG; what it needs; LoadImage files; run."""

import io
import json
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from generation.models import InputImage, Task
from tests.comfy.workflows import NOISE, sd15_with
from tests.conftest import capabilities, make_worker, png_bytes

pytestmark = pytest.mark.django_db

URL = reverse("web:run-workflow")
LOAD = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}


@pytest.fixture
def farm(db):
    return make_worker("gpu-1", capabilities(nodes=["EmptyImage", "ImageAddNoise", "SaveImage", "LoadImage",
                                                    "ImageInvert"]))  # fmt: skip


def comfy_png(chunks: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_the_page_is_in_the_navigation_and_needs_a_submitter(client, alice):
    html = alice.get(reverse("web:gallery")).content.decode()
    assert f'href="{URL}"' in html
    page = alice.get(URL)
    assert page.status_code == HTTPStatus.OK and b'name="workflow"' in page.content
    assert client.get(URL).status_code == HTTPStatus.FOUND  # to the login page


def test_check_a_pasted_workflow_shows_what_it_needs(alice, farm):
    page = alice.post(URL, {"workflow": json.dumps(NOISE), "action": "check"})
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert "The farm can run this workflow." in html
    assert "<code>ImageAddNoise</code>" in html and "<code>EmptyImage</code>" in html
    assert not Task.objects.exists()


def test_a_workflow_the_farm_cannot_run_says_why(alice, farm):
    page = alice.post(URL, {"workflow": json.dumps(sd15_with("nope.safetensors")), "action": "check"})
    html = page.content.decode()
    assert "The farm cannot run this workflow" in html
    assert "does not exist" in html  # CheckpointLoaderSimple is not on this worker


def test_run_a_pasted_workflow_redirects_to_its_task(alice, farm, user):
    answer = alice.post(URL, {"workflow": json.dumps({"prompt": NOISE}), "action": "run"})
    task = Task.objects.get()
    assert answer.status_code == HTTPStatus.FOUND
    assert answer["Location"] == reverse("web:task", args=[task.public_id])
    assert task.workflow == NOISE and task.owner == user


def test_a_png_that_comfyui_made_gives_its_prompt(alice, farm):
    png = comfy_png({"prompt": json.dumps(NOISE), "workflow": "{}"})
    page = alice.post(
        URL, {"workflow_file": SimpleUploadedFile("ComfyUI_00001_.png", png), "action": "check"}
    )
    assert page.status_code == HTTPStatus.OK
    html = page.content.decode()
    assert "The farm can run this workflow." in html and "ImageAddNoise" in html
    assert page.context["form"]["workflow"].value() == json.dumps(NOISE, indent=2)  # editable now


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"workflow": "{not json"}, "This is not valid JSON"),
        ({"workflow": ""}, "Paste a workflow, or choose a file."),
        ({"workflow": json.dumps({"nodes": [], "links": []})}, "editor format"),
        ({"workflow": "[1, 2]"}, "A workflow is a JSON object"),
        ({"workflow_file": SimpleUploadedFile("x.png", comfy_png({"workflow": "{}"}))}, "carries no ComfyUI"),
        ({"workflow_file": SimpleUploadedFile("x.json", b"\xff\xfe\x00")}, "neither JSON nor a PNG"),
    ],
)
def test_bad_input_is_shown_on_the_form(alice, farm, data, message):
    page = alice.post(URL, {**data, "action": "run"})
    assert page.status_code == HTTPStatus.BAD_REQUEST
    assert message in page.content.decode()
    assert 'class="error-summary"' in page.content.decode()
    assert not Task.objects.exists()


def test_loadimage_asks_for_its_file_and_runs_with_it(alice, farm, user):
    check = alice.post(URL, {"workflow": json.dumps(LOAD), "action": "check"})
    assert 'name="input_1"' in check.content.decode()
    refused = alice.post(URL, {"workflow": json.dumps(LOAD), "action": "run"})
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert "Invalid image file: photo.png" in refused.content.decode()
    image = SimpleUploadedFile("photo.png", png_bytes(16, 16), "image/png")
    answer = alice.post(URL, {"workflow": json.dumps(LOAD), "action": "run", "input_1": image})
    assert answer.status_code == HTTPStatus.FOUND
    task = Task.objects.get()
    assert task.workflow["1"]["inputs"]["image"] == "web/photo.png"
    assert [(i.owner, i.subfolder, i.name) for i in task.input_images.all()] == [(user, "web", "photo.png")]


def test_a_bad_input_image_is_shown_on_the_form(alice, farm):
    bad = SimpleUploadedFile("photo.png", b"not an image", "image/png")
    page = alice.post(URL, {"workflow": json.dumps(LOAD), "action": "run", "input_1": bad})
    assert page.status_code == HTTPStatus.BAD_REQUEST
    assert "not a valid image" in page.content.decode()
    assert not Task.objects.exists() and not InputImage.objects.exists()
