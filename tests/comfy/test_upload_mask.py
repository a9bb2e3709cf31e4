"""ComfyUI's POST /upload/mask on the front door: the original's RGB with the mask's alpha, stored as a new
input image of the caller; the original must be the caller's upload or an image of their history."""

import io
import json
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from rest_framework.test import APIClient

from generation.models import InputImage, Task
from tests.comfy.test_front_door import prompt, run
from tests.comfy.test_input_images import load_image, upload
from tests.conftest import capabilities, make_worker, png_bytes, worker_client

pytestmark = pytest.mark.django_db


def rgb_with_text(width=8, height=6) -> bytes:
    """A PNG whose pixels differ (so the RGB can be checked) and which carries ComfyUI's `prompt` chunk."""
    img = PILImage.new("RGB", (width, height))
    img.putdata([(x * 20 % 256, y * 30 % 256, 7) for y in range(height) for x in range(width)])
    info = PngInfo()
    info.add_text("prompt", '{"1": {}}')
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def mask_png(width=8, height=6, alpha=lambda x, y: 255 if x < 4 else 0) -> bytes:
    img = PILImage.new("RGBA", (width, height))
    img.putdata([(0, 0, 0, alpha(x, y)) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def upload_mask(client, ref, data=None, name="clipspace-mask-1.png", base="/comfy", **fields):
    image = SimpleUploadedFile(name, data or mask_png(), "image/png")
    form = {"image": image, "original_ref": ref if isinstance(ref, str) else json.dumps(ref), **fields}
    return client.post(f"{base}/upload/mask", form, format="multipart")


def pixels(row: InputImage) -> tuple[str, list, dict]:
    with row.file.open("rb") as f, PILImage.open(f) as img:
        img.load()
        return img.mode, every_pixel(img), dict(img.text)


def every_pixel(img) -> list:
    return [img.getpixel((x, y)) for y in range(img.height) for x in range(img.width)]


def test_mask_of_an_upload_answers_like_comfyui_and_stores_rgb_with_the_masks_alpha(api, user, base):
    original = rgb_with_text()
    upload(api, original, name="photo.png", subfolder="clipspace")
    ref = {"filename": "photo.png", "subfolder": "clipspace", "type": "input"}
    answer = upload_mask(api, ref, base=base, type="input", subfolder="clipspace")
    assert answer.status_code == HTTPStatus.OK, answer.content
    assert answer.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
    row = InputImage.objects.get(name="clipspace-mask-1.png")
    assert (row.owner, row.kind, row.subfolder, row.width, row.height) == (user, "input", "clipspace", 8, 6)
    mode, data, text = pixels(row)
    with PILImage.open(io.BytesIO(original)) as img:
        rgb = every_pixel(img.convert("RGB"))
    assert mode == "RGBA" and [p[:3] for p in data] == rgb
    assert [p[3] for p in data] == [255 if x < 4 else 0 for _y in range(6) for x in range(8)]
    assert text == {"prompt": '{"1": {}}'}  # the original's PNG text chunks are kept, as ComfyUI keeps them
    assert InputImage.objects.count() == 2 and InputImage.objects.get(name="photo.png").sha256 != row.sha256


def test_the_masked_image_runs_in_a_loadimage(api, db):
    make_worker("gpu-load", capabilities(nodes=["LoadImage", "ImageInvert", "SaveImage"]))
    upload(api, png_bytes(8, 6), name="photo.png")
    name = upload_mask(api, {"filename": "photo.png", "type": "input"}).json()["name"]
    answer = api.post("/comfy/prompt", {"prompt": load_image(name)}, format="json")
    assert answer.status_code == HTTPStatus.OK, answer.json()
    assert [i.name for i in Task.objects.get().input_images.all()] == ["clipspace-mask-1.png"]


def test_comfyuis_naming_and_annotated_names(api):
    upload(api, png_bytes(8, 6), name="photo.png", type="temp")
    ref = {"filename": "photo.png [temp]", "subfolder": ""}  # the annotation gives the type
    assert upload_mask(api, ref).json()["name"] == "clipspace-mask-1.png"
    assert upload_mask(api, ref).json()["name"] == "clipspace-mask-1.png"  # the same result again
    other = mask_png(alpha=lambda x, y: 100)
    assert upload_mask(api, ref, other).json()["name"] == "clipspace-mask-1 (1).png"
    assert upload_mask(api, ref, other, overwrite="true").json()["name"] == "clipspace-mask-1.png"
    assert InputImage.objects.filter(kind="input").count() == 2


def test_mask_of_an_image_from_the_users_history(api, worker_and_token):
    prompt(api, prompt_id="p1")
    run(worker_client(worker_and_token[1]), Task.objects.get(), [("3", rgb_with_text())])
    ref = api.get("/comfy/history/p1").json()["p1"]["outputs"]["3"]["images"][0]
    assert ref["type"] == "output"
    answer = upload_mask(api, ref)
    assert answer.status_code == HTTPStatus.OK, answer.content
    _mode, data, _text = pixels(InputImage.objects.get())
    assert [p[3] for p in data][:8] == [255, 255, 255, 255, 0, 0, 0, 0]
    del ref["type"]  # ComfyUI's default type is output
    assert upload_mask(api, ref, name="again.png").status_code == HTTPStatus.OK


def test_another_users_images_are_not_yours(api, bob, worker_and_token):
    upload(bob, png_bytes(8, 6), name="bobs.png")
    prompt(bob, prompt_id="b1")
    run(worker_client(worker_and_token[1]), Task.objects.get(), [("3", png_bytes(8, 6))])
    output = bob.get("/comfy/history/b1").json()["b1"]["outputs"]["3"]["images"][0]
    for ref in ({"filename": "bobs.png", "type": "input"}, output):
        answer = upload_mask(api, ref)
        assert answer.status_code == HTTPStatus.BAD_REQUEST, answer.content
        assert "original_ref" in answer.json()["fields"]
    assert list(InputImage.objects.values_list("name", flat=True)) == ["bobs.png"]


@pytest.mark.parametrize(
    "ref",
    [
        {"filename": "../photo.png", "type": "input"},
        {"filename": "/etc/passwd", "type": "input"},
        {"filename": "photo.png", "subfolder": "../..", "type": "input"},
        {"filename": "photo.png", "subfolder": "/abs", "type": "input"},
        {"filename": "x\\..\\photo.png", "type": "input"},
        {"filename": "", "type": "input"},
        {"filename": "photo.png", "type": "models"},
        {"filename": 7, "type": "input"},
        {"filename": "nope.png", "type": "input"},
        ["photo.png"],
        "{not json",
    ],
)
def test_a_bad_original_ref_is_a_400(api, ref):
    upload(api, png_bytes(8, 6), name="photo.png")
    answer = upload_mask(api, ref)
    assert answer.status_code == HTTPStatus.BAD_REQUEST, answer.content
    assert "original_ref" in answer.json()["fields"]
    assert InputImage.objects.count() == 1


def test_bad_masks_and_forms_are_400s(api):
    upload(api, png_bytes(8, 6), name="photo.png")
    ref = {"filename": "photo.png", "type": "input"}
    cases = [
        (upload_mask(api, ref, b"not a picture"), "image"),
        (upload_mask(api, ref, mask_png(4, 4)), "image"),  # not the original's size
        (upload_mask(api, ref, type="output"), "type"),
        (upload_mask(api, ref, subfolder="../up"), "subfolder"),
        (api.post("/comfy/upload/mask", {"original_ref": json.dumps(ref)}, format="multipart"), "image"),
        (api.post("/comfy/upload/mask", {"image": _file()}, format="multipart"), "original_ref"),
    ]
    for answer, field in cases:
        assert answer.status_code == HTTPStatus.BAD_REQUEST, answer.content
        assert field in answer.json()["fields"], answer.json()
    assert InputImage.objects.count() == 1


def _file():
    return SimpleUploadedFile("m.png", mask_png(), "image/png")


def test_a_mask_file_name_with_a_path_is_a_400(api):
    upload(api, png_bytes(8, 6), name="photo.png")
    head = (
        b'--XX\r\nContent-Disposition: form-data; name="original_ref"\r\n\r\n'
        b'{"filename": "photo.png", "type": "input"}\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="image"; filename="../escape.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    body = head + mask_png() + b"\r\n--XX--\r\n"
    answer = api.generic("POST", "/comfy/upload/mask", body, content_type="multipart/form-data; boundary=XX")
    assert answer.status_code == HTTPStatus.BAD_REQUEST and "image" in answer.json()["fields"]
    assert InputImage.objects.count() == 1


def test_too_big_is_a_413_json(api, settings):
    upload(api, png_bytes(8, 6), name="photo.png")
    settings.T2I = {**settings.T2I, "MAX_IMAGE_BYTES": 2048}
    answer = upload_mask(api, {"filename": "photo.png", "type": "input"}, mask_png() + b"\0" * 4096)
    assert answer.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert InputImage.objects.count() == 1


def test_anonymous_masks_only_when_allowed(settings, api):
    anon = APIClient()
    upload(api, png_bytes(8, 6), name="photo.png")
    ref = {"filename": "photo.png", "type": "input"}
    assert upload_mask(anon, ref).status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    assert upload_mask(anon, ref).status_code == HTTPStatus.BAD_REQUEST  # alice's upload is not theirs
    upload(anon, png_bytes(8, 6), name="photo.png")
    assert upload_mask(anon, ref).status_code == HTTPStatus.OK
    assert InputImage.objects.get(name="clipspace-mask-1.png").owner is None


def test_an_unreadable_original_is_a_400_not_a_500(api):
    upload(api, png_bytes(8, 6), name="photo.png")
    row = InputImage.objects.get()
    with row.file.open("wb") as f:  # the stored file went bad after its upload
        f.write(b"garbage")
    answer = upload_mask(api, {"filename": "photo.png", "type": "input"})
    assert answer.status_code == HTTPStatus.BAD_REQUEST and "image" in answer.json()["fields"]
    assert InputImage.objects.count() == 1
