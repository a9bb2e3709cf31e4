"""The ComfyUI front door end to end: a client drives /comfy/ as it would drive one ComfyUI, and the farm's
workers (daemons on simulators) run its workflows."""

import copy
import hashlib
import io
import json
from pathlib import Path

import pytest
import requests
import websocket
from PIL import Image as PILImage

from generation.models import Task, TaskAttempt
from tests.comfy.workflows import sd15_with, two_outputs
from tests.e2e.conftest import CHECKPOINT
from tests.e2e.helpers import wait_until

pytestmark = pytest.mark.e2e

TWO_OUTPUTS = two_outputs()
SD15 = sd15_with(CHECKPOINT)  # the simulator's default checkpoint


def assert_all_ran_on(farm, ids: list[str], worker_name: str) -> None:
    """Wait until every prompt in `ids` has a history entry, then check they all completed on that worker."""

    history = f"{farm.scheduler.url}/comfy/history"

    def finished() -> bool:
        return all(farm.api.get(f"{history}/{pid}", timeout=30).json() for pid in ids)

    wait_until(finished, timeout=40, what="the prompts to finish")
    tasks = Task.objects.filter(client_prompt_id__in=ids)
    assert {t.status for t in tasks} == {Task.Status.COMPLETED}
    leased_to = set(TaskAttempt.objects.filter(task__in=tasks).values_list("worker__name", flat=True))
    assert leased_to == {worker_name}


def test_prompt_history_view_with_a_client_prompt_id(farm):
    simulator = farm.simulator(job_time=0.1)
    farm.wait_registered(farm.worker(simulator))
    url = f"{farm.scheduler.url}/comfy"
    body = {"prompt": TWO_OUTPUTS, "client_id": "e2e-client", "prompt_id": "e2e-prompt-1"}

    answer = farm.api.post(f"{url}/prompt", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt_id"] == "e2e-prompt-1" and answer.json()["node_errors"] == {}
    again = farm.api.post(f"{url}/api/prompt", json=body, timeout=30)
    assert again.json() == answer.json() and Task.objects.count() == 1

    def history():
        return farm.api.get(f"{url}/history/e2e-prompt-1", timeout=30).json()

    wait_until(lambda: history() != {}, timeout=30, what="the prompt's history entry")
    entry = history()["e2e-prompt-1"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == "e2e-prompt-1" and entry["prompt"][2] == TWO_OUTPUTS
    assert set(entry["outputs"]) == {"3", "10"}

    saved = Path(simulator.simulator.dirs["output"]) / "t2i"
    for node_id in ("3", "10"):
        [ref] = entry["outputs"][node_id]["images"]
        view = farm.api.get(f"{url}/view", params=ref, timeout=30)
        assert view.status_code == 200 and view.headers["Content-Type"] == "image/png"
        [original] = saved.glob(f"*_n{node_id}_*.png")  # what ComfyUI wrote for that node
        assert hashlib.sha256(view.content).digest() == hashlib.sha256(original.read_bytes()).digest()
        with PILImage.open(io.BytesIO(view.content)) as png:
            assert "prompt" in png.info  # ComfyUI's workflow metadata survived the farm


def test_a_workflow_naming_a_model_only_one_worker_has_goes_there(farm):
    has_a = farm.worker(farm.simulator(checkpoints=("model-a.safetensors",)), name="has-a")
    has_b = farm.worker(farm.simulator(checkpoints=("model-b.safetensors",)), name="has-b")
    farm.wait_registered(has_a, has_b)
    url = f"{farm.scheduler.url}/comfy"
    missing = copy.deepcopy(SD15)
    missing["4"]["inputs"]["ckpt_name"] = "model-c.safetensors"
    refused = farm.api.post(f"{url}/prompt", json={"prompt": missing}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"

    ids = []
    for n in range(3):
        workflow = sd15_with("model-b.safetensors")
        workflow["3"]["inputs"]["seed"] = n
        answer = farm.api.post(f"{url}/prompt", json={"prompt": workflow, "prompt_id": f"b-{n}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["prompt_id"])

    assert_all_ran_on(farm, ids, "has-b")


# One server process: on SQLite the event channel reaches only the process that published (comfy_ws).
@pytest.mark.parametrize("farm", [{"workers": 1}], indirect=True)
def test_the_socket_relays_the_workers_frames_and_ends_with_executing_null(farm):
    farm.wait_registered(farm.worker(farm.simulator(job_time=0.3)))
    url = farm.scheduler.url
    ws = websocket.create_connection(
        f"ws{url[4:]}/comfy/ws?clientId=e2e-socket",
        header=[f"Authorization: {farm.api.headers['Authorization']}"],
        timeout=20,
    )
    try:
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == "e2e-socket"
        body = {"prompt": SD15, "client_id": "e2e-socket", "prompt_id": "sock-1"}
        assert farm.api.post(f"{url}/comfy/prompt", json=body, timeout=30).status_code == 200
        frames = []
        while not (frames and frames[-1]["type"] == "executing" and frames[-1]["data"]["node"] is None):
            frames.append(json.loads(ws.recv()))
    finally:
        ws.close()
    kinds = [f["type"] for f in frames if f["type"] != "status"]
    assert kinds[0] == "execution_start" and kinds[-3:] == ["executed", "execution_success", "executing"]
    assert "progress" in kinds and "executing" in kinds[:-1]
    assert all(f["data"]["prompt_id"] == "sock-1" for f in frames if f["type"] != "status")
    [executed] = [f for f in frames if f["type"] == "executed"]
    assert executed["data"]["node"] == "9"
    view = farm.api.get(f"{url}/comfy/view", params=executed["data"]["output"]["images"][0], timeout=30)
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("farm", [{"workers": 1}], indirect=True)
def test_socket_images_and_asked_for_previews_reach_the_client_as_binary_frames(farm):
    """Krita-style: the images come only as binary frames (SaveImageWebsocket), with latent previews on
    the way; the farm stores the images as the task's and sends them before the prompt's end."""
    farm.wait_registered(farm.worker(farm.simulator(job_time=1.0)))
    url = farm.scheduler.url
    workflow = copy.deepcopy(SD15)
    workflow["3"]["inputs"]["steps"] = 8
    workflow["9"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    ws = websocket.create_connection(
        f"ws{url[4:]}/comfy/ws?clientId=e2e-binary",
        header=[f"Authorization: {farm.api.headers['Authorization']}"],
        timeout=20,
    )
    messages: list = []
    try:
        json.loads(ws.recv())  # status
        body = {
            "prompt": workflow,
            "client_id": "e2e-binary",
            "prompt_id": "bin-1",
            "extra_data": {"preview_method": "latent2rgb"},
        }
        assert farm.api.post(f"{url}/comfy/prompt", json=body, timeout=30).status_code == 200
        while not (
            messages
            and isinstance(messages[-1], dict)
            and messages[-1]["type"] == "executing"
            and messages[-1]["data"]["node"] is None
        ):
            opcode, data = ws.recv_data()
            messages.append(data if opcode == websocket.ABNF.OPCODE_BINARY else json.loads(data))
    finally:
        ws.close()
    binary = [m for m in messages if isinstance(m, bytes)]
    previews = [m for m in binary if m[:8] == b"\0\0\0\x01\0\0\0\x01"]  # type 1, JPEG
    images = [m for m in binary if m[:8] == b"\0\0\0\x01\0\0\0\x02"]  # type 1, PNG
    assert previews and all(p[8:10] == b"\xff\xd8" for p in previews)
    task = Task.objects.get(client_prompt_id="bin-1")
    assert task.status == Task.Status.COMPLETED
    [stored] = task.images.all()
    [image] = images
    assert hashlib.sha256(image[8:]).hexdigest() == stored.sha256  # the bytes ComfyUI sent, stored
    kinds = [m if isinstance(m, bytes) else m["type"] for m in messages]
    end = kinds.index("execution_success")
    assert kinds.index(images[0]) < end and max(kinds.index(p) for p in previews) < end
    assert farm.api.get(f"{url}/comfy/history/bin-1", timeout=30).json()["bin-1"]["outputs"] == {}


def with_lora(name: str, seed: int = 1) -> dict:
    """SD15 with a LoraLoader between the checkpoint and the sampler and text encoders."""
    workflow = copy.deepcopy(SD15)
    workflow["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": name,
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    workflow["3"]["inputs"]["model"] = ["10", 0]
    workflow["3"]["inputs"]["seed"] = seed
    workflow["6"]["inputs"]["clip"] = workflow["7"]["inputs"]["clip"] = ["10", 1]
    return workflow


def test_a_workflow_naming_a_lora_only_one_worker_has_goes_there(farm):
    plain = farm.worker(farm.simulator(), name="plain")
    styled = farm.worker(farm.simulator(loras=("style.safetensors",)), name="styled")
    farm.wait_registered(plain, styled)
    url = f"{farm.scheduler.url}/comfy"
    refused = farm.api.post(f"{url}/prompt", json={"prompt": with_lora("nope.safetensors")}, timeout=30)
    assert refused.status_code == 400
    [error] = refused.json()["node_errors"]["10"]["errors"]
    assert error["details"] == "lora_name: 'nope.safetensors' not in ['style.safetensors']"

    ids = [f"lora-{n}" for n in range(3)]
    for n, pid in enumerate(ids):
        body = {"prompt": with_lora("style.safetensors", seed=n), "prompt_id": pid}
        assert farm.api.post(f"{url}/prompt", json=body, timeout=30).status_code == 200

    assert_all_ran_on(farm, ids, "styled")


@pytest.mark.parametrize("farm", [{"workers": 1}], indirect=True)
def test_interrupt_stops_the_running_prompt_and_the_socket_says_so(farm):
    simulator = farm.simulator(job_time=0.1, class_delays={"KSampler": 6.0})
    farm.wait_registered(farm.worker(simulator))
    url = farm.scheduler.url
    ws = websocket.create_connection(
        f"ws{url[4:]}/comfy/api/ws?clientId=e2e-int",
        header=[f"Authorization: {farm.api.headers['Authorization']}"],
        timeout=30,
    )
    try:
        json.loads(ws.recv())  # status
        body = {"prompt": SD15, "client_id": "e2e-int", "prompt_id": "int-1"}
        assert farm.api.post(f"{url}/comfy/prompt", json=body, timeout=30).status_code == 200
        frames = [json.loads(ws.recv())]
        while not (frames[-1]["type"] == "executing" and frames[-1]["data"]["node"] == "3"):
            frames.append(json.loads(ws.recv()))  # until the slow sampler runs
        assert (
            farm.api.post(f"{url}/comfy/interrupt", json={"prompt_id": "int-1"}, timeout=30).status_code
            == 200
        )
        while not (frames[-1]["type"] == "executing" and frames[-1]["data"]["node"] is None):
            frames.append(json.loads(ws.recv()))
    finally:
        ws.close()
    kinds = [f["type"] for f in frames if f["type"] != "status"]
    assert kinds[-2:] == ["execution_interrupted", "executing"]
    status = farm.api.get(f"{url}/comfy/history/int-1", timeout=30).json()["int-1"]["status"]
    assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"
    assert Task.objects.get(client_prompt_id="int-1").status == Task.Status.CANCELLED

    def comfyui_idle() -> bool:
        return requests.get(f"{simulator.url}/prompt", timeout=5).json()["exec_info"]["queue_remaining"] == 0

    wait_until(comfyui_idle, timeout=10, what="ComfyUI to stop the prompt")


def test_upload_then_loadimage_runs_on_a_worker(farm):
    """A client uploads an image, sends a LoadImage workflow that names it, and gets the inverted picture."""
    simulator = farm.simulator(job_time=0.05)
    farm.wait_registered(farm.worker(simulator))
    url = f"{farm.scheduler.url}/comfy"
    source = io.BytesIO()
    PILImage.new("RGB", (48, 32), (10, 200, 30)).save(source, format="PNG")
    files = {"image": ("fox.png", source.getvalue(), "image/png")}
    uploaded = farm.api.post(f"{url}/upload/image", files=files, data={"subfolder": "mine"}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == {"name": "fox.png", "subfolder": "mine", "type": "input"}
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "mine/fox.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    missing = copy.deepcopy(workflow)
    missing["1"]["inputs"]["image"] = "other.png"
    refused = farm.api.post(f"{url}/prompt", json={"prompt": missing}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"

    body = {"prompt": workflow, "prompt_id": "e2e-load-1"}
    assert farm.api.post(f"{url}/prompt", json=body, timeout=30).status_code == 200

    def history():
        return farm.api.get(f"{url}/history/e2e-load-1", timeout=30).json()

    wait_until(lambda: history() != {}, timeout=30, what="the LoadImage prompt's history entry")
    entry = history()["e2e-load-1"]
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["prompt"][2] == workflow  # the client's names, not the worker's
    [ref] = entry["outputs"]["3"]["images"]
    view = farm.api.get(f"{url}/view", params=ref, timeout=30)
    assert view.status_code == 200
    with PILImage.open(io.BytesIO(view.content)) as image:
        assert image.size == (48, 32) and image.convert("RGB").getpixel((0, 0)) == (245, 55, 225)
    digest = hashlib.sha256(source.getvalue()).hexdigest()
    on_worker = Path(simulator.simulator.dirs["input"]) / "t2i_inputs" / f"{digest}.png"
    assert on_worker.read_bytes() == source.getvalue()
