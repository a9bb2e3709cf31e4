"""Workflows and small HTTP helpers for the simulator tests."""

from __future__ import annotations

import io
import time
from typing import Any

import requests
from PIL import Image

CKPT = "sim-v1-5.safetensors"


def noise_workflow(
    prefix: str = "t/noise",
    color: int = 0x336699,
    seed: int = 1,
    width: int = 64,
    height: int = 64,
    batch: int = 1,
) -> dict[str, Any]:
    """The checkpoint-free graph: EmptyImage -> ImageAddNoise -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": seed, "strength": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def blur_workflow(prefix: str = "t/blur", blurs: int = 1, seed: int = 1) -> dict[str, Any]:
    """EmptyImage -> ImageAddNoise -> n x ImageBlur -> SaveImage: slow when ImageBlur has a class delay."""
    workflow = noise_workflow(prefix, seed=seed)
    previous = "2"
    for index in range(blurs):
        node_id = str(10 + index)
        workflow[node_id] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 31, "sigma": 10.0},
        }
        previous = node_id
    workflow["3"]["inputs"]["images"] = [previous, 0]
    return workflow


def sd15_workflow(
    text: str = "a red fox in the snow",
    seed: int = 8566257,
    width: int = 512,
    height: int = 512,
    batch: int = 1,
    steps: int = 20,
    prefix: str = "t/sd15",
    ckpt: str = CKPT,
) -> dict[str, Any]:
    """The canonical SD1.5 text-to-image graph (node ids as in ComfyUI's default workflow)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 8.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def submit(url: str, workflow: dict[str, Any], client_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": workflow, **fields}
    if client_id is not None:
        body["client_id"] = client_id
    response = requests.post(f"{url}/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_history(url: str, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Polls GET /history/{id} until the entry exists; returns the entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/history/{prompt_id}", timeout=10).json()
        if body:
            return body[prompt_id]
        time.sleep(0.01)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def run(url: str, workflow: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Submits and waits for the history entry."""
    return wait_history(url, submit(url, workflow, **fields)["prompt_id"])


def fetch_images(url: str, entry: dict[str, Any], node_id: str) -> list[Image.Image]:
    images = []
    for item in entry["outputs"][node_id]["images"]:
        response = requests.get(f"{url}/view", params=item, timeout=10)
        assert response.status_code == 200
        image = Image.open(io.BytesIO(response.content))
        image.load()
        images.append(image)
    return images
