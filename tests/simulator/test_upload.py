"""POST /upload/image and LoadImage on the simulator, as the trace `upload_loadimage` shows ComfyUI."""

from __future__ import annotations

import io
from http import HTTPStatus

import requests
from PIL import Image

from workers_app.simulator import SimulatorHandle

from .workflows import run


def png(color=(10, 200, 30), size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def upload(url: str, data: bytes, filename: str = "in.png", **fields: str) -> requests.Response:
    return requests.post(
        f"{url}/upload/image", files={"image": (filename, data, "image/png")}, data=fields, timeout=10
    )


def load_invert_save(name: str, prefix: str = "trace/upload") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def test_upload_then_loadimage_runs_and_inverts(simulator: SimulatorHandle) -> None:
    answer = upload(simulator.url, png(), overwrite="true", type="input")
    assert answer.status_code == HTTPStatus.OK
    assert answer.json() == {"name": "in.png", "subfolder": "", "type": "input"}
    info = requests.get(f"{simulator.url}/object_info/LoadImage", timeout=10).json()
    assert info["LoadImage"]["input"]["required"]["image"] == [["in.png"], {"image_upload": True}]
    entry = run(simulator.url, load_invert_save("in.png"))
    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["3"]["images"]
    data = requests.get(f"{simulator.url}/view", params=image, timeout=10).content
    with Image.open(io.BytesIO(data)) as saved:
        assert saved.size == (64, 48) and saved.convert("RGB").getpixel((0, 0)) == (245, 55, 225)


def test_same_name_rules(simulator: SimulatorHandle) -> None:
    assert upload(simulator.url, png(), subfolder="probe").json()["name"] == "in.png"
    assert upload(simulator.url, png()).json()["name"] == "in.png"  # identical: kept
    other = upload(simulator.url, png((1, 2, 3)), subfolder="probe").json()
    assert other == {"name": "in (1).png", "subfolder": "probe", "type": "input"}
    replaced = upload(simulator.url, png((1, 2, 3)), subfolder="probe", overwrite="true").json()
    assert replaced["name"] == "in.png"
    entry = run(simulator.url, load_invert_save("probe/in (1).png", "sub"))
    assert entry["status"]["status_str"] == "success"


def test_missing_file_and_escaping_name_are_refused(simulator: SimulatorHandle) -> None:
    answer = requests.post(
        f"{simulator.url}/prompt", json={"prompt": load_invert_save("no_such_file.png")}, timeout=10
    )
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert answer.json()["node_errors"]["1"] == {
        "errors": [
            {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": "image - Invalid image file: no_such_file.png",
                "extra_info": {"input_name": "image"},
            }
        ],
        "dependent_outputs": ["3"],
        "class_type": "LoadImage",
    }
    escaped = upload(simulator.url, png(), filename="../escape_try.png")
    assert escaped.status_code == HTTPStatus.BAD_REQUEST and escaped.content == b""
