"""Simulated execution of the SD1.5 and checkpoint-free graphs: real PNGs of the requested size and batch,
derived from the prompt text (or EmptyImage colour) and the seed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops, ImageStat

from workers_app.simulator import SimulatorHandle

from .recorder import Recorder
from .workflows import CKPT, fetch_images, noise_workflow, run, sd15_workflow, submit

Factory = Callable[..., SimulatorHandle]


@pytest.fixture
def sd_sim(make_simulator: Factory) -> SimulatorHandle:
    return make_simulator(checkpoints=(CKPT,))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def test_sd15_graph_makes_images_of_the_requested_size_and_batch(
    sd_sim: SimulatorHandle, make_recorder: Callable[[SimulatorHandle], Recorder]
) -> None:
    recorder = make_recorder(sd_sim)
    recorder.connect("ws", client_id="sd")
    workflow = sd15_workflow(width=320, height=192, batch=2, steps=7, prefix="sd/fox")
    prompt_id = submit(sd_sim.url, workflow, client_id="sd")["prompt_id"]
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    entry = run(sd_sim.url, workflow)  # identical: replayed from the cache
    assert [item["filename"] for item in entry["outputs"]["9"]["images"]] == [
        "fox_00001_.png",
        "fox_00002_.png",
    ]
    images = fetch_images(sd_sim.url, entry, "9")
    assert [image.size for image in images] == [(320, 192), (320, 192)]
    assert images[0].format == "PNG"
    assert json.loads(images[0].text["prompt"]) == workflow  # the workflow travels in the PNG, like SaveImage
    assert mean_difference(images[0], images[1]) > 5  # batch items differ
    progress = [m["data"] for m in recorder.events() if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(v, 7, "3") for v in range(1, 8)]
    ran = [m["data"]["node"] for m in recorder.events() if m["type"] == "executing"]
    assert sorted(ran[:-1]) == sorted(workflow) and ran[-1] is None
    for node_id, node in workflow.items():  # every node runs after the nodes it links to
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert ran.index(value[0]) < ran.index(node_id)


def test_different_prompts_give_visibly_different_images(sd_sim: SimulatorHandle) -> None:
    def picture(text: str, seed: int, prefix: str) -> Image.Image:
        entry = run(sd_sim.url, sd15_workflow(text=text, seed=seed, width=128, height=128, prefix=prefix))
        return fetch_images(sd_sim.url, entry, "9")[0]

    fox = picture("a red fox in the snow", 1, "d/a")
    castle = picture("a castle on a hill at dusk", 1, "d/b")
    fox_other_seed = picture("a red fox in the snow", 2, "d/c")
    fox_again = picture("a red fox in the snow", 1, "d/d")
    assert mean_difference(fox, castle) > 20
    assert mean_difference(fox, fox_other_seed) > 5
    assert mean_difference(fox, fox_again) == 0  # deterministic


def test_checkpoint_free_graph_follows_the_color_and_seed(simulator: SimulatorHandle) -> None:
    def picture(color: int, seed: int, prefix: str) -> Image.Image:
        entry = run(simulator.url, noise_workflow(prefix, color=color, seed=seed, width=96, height=80))
        return fetch_images(simulator.url, entry, "3")[0]

    red, blue = picture(0xFF0000, 1, "c/red"), picture(0x0000FF, 1, "c/blue")
    assert red.size == (96, 80)
    red_mean, blue_mean = ImageStat.Stat(red.convert("RGB")).mean, ImageStat.Stat(blue.convert("RGB")).mean
    assert red_mean[0] > red_mean[2] + 50
    assert blue_mean[2] > blue_mean[0] + 50
    assert mean_difference(red, picture(0xFF0000, 2, "c/red2")) > 5


def test_batch_num_in_the_prefix_and_subfolders(simulator: SimulatorHandle) -> None:
    entry = run(simulator.url, noise_workflow("deep/er/img_%batch_num%", batch=2))
    assert entry["outputs"]["3"]["images"] == [
        {"filename": "img_0_00001_.png", "subfolder": "deep/er", "type": "output"},
        {"filename": "img_1_00002_.png", "subfolder": "deep/er", "type": "output"},
    ]
    assert len(fetch_images(simulator.url, entry, "3")) == 2


def test_preview_image_writes_temp_files(simulator: SimulatorHandle) -> None:
    workflow = noise_workflow()
    workflow["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    entry = run(simulator.url, workflow)
    (item,) = entry["outputs"]["3"]["images"]
    assert item["type"] == "temp"
    assert item["subfolder"] == ""
    assert item["filename"].startswith("ComfyUI_temp_")
    assert item["filename"].endswith("_00001_.png")
    assert fetch_images(simulator.url, entry, "3")[0].size == (64, 64)


def test_save_image_websocket_sends_each_image_as_a_frame(
    simulator: SimulatorHandle, recorder: Recorder
) -> None:
    recorder.connect("ws", client_id="w")
    workflow = noise_workflow(batch=3, width=40, height=30)
    workflow["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}
    prompt_id = submit(simulator.url, workflow, client_id="w")["prompt_id"]
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    frames = recorder.binaries()
    assert [(f["event_type"], f["image_format"], f["image"]["png_size"]) for f in frames] == [
        (1, 2, [40, 30])
    ] * 3
    progress = [(m["data"]["value"], m["data"]["max"]) for m in recorder.events() if m["type"] == "progress"]
    assert progress == [(0, 3), (1, 3), (2, 3)]
    assert not [m for m in recorder.events() if m["type"] == "executed"]


@pytest.mark.parametrize(
    ("server", "asked", "previews"), [("none", None, 0), ("none", "auto", 3), ("taesd", "none", 0)]
)
def test_samplers_send_latent_previews_when_the_prompt_or_the_server_asks(
    make_simulator: Factory,
    make_recorder: Callable[[SimulatorHandle], Recorder],
    server: str,
    asked: str | None,
    previews: int,
) -> None:
    """As ComfyUI's set_preview_method: the prompt's `extra_data.preview_method`, else the server's."""
    sim = make_simulator(checkpoints=(CKPT,), preview_method=server)
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="sd")
    extra = {"extra_data": {"preview_method": asked}} if asked else {}
    workflow = sd15_workflow(width=128, height=64, steps=3)
    prompt_id = submit(sim.url, workflow, client_id="sd", **extra)["prompt_id"]
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    frames = recorder.binaries()
    assert [(f["event_type"], f["image_format"], f["image"]["png_size"]) for f in frames] == [
        (1, 1, [16, 8])
    ] * previews
    assert all(f["raw_image"].startswith(b"\xff\xd8") for f in frames)  # JPEG, as ComfyUI's previews
