"""The farm's tasks in ComfyUI's answer shapes (protocol sheet, sections 3.2 and 3.4): history entries, queue
items, object_info, models. Pure functions of rows already read; the front door (generation.comfy_apis)
serves them."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from generation import api_workflows
from generation.models import Image, Task

# Model folders of ComfyUI (folder_paths) by the name of the input that lists their files.
MODEL_FOLDERS = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "control_net_name": "controlnet",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_vision_name": "clip_vision",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "upscale_model_name": "upscale_models",
}
_NUMBERED = re.compile(r"(.*_name)\d+")
# Output nodes whose images reach a ComfyUI client only as binary socket frames, never as files
# (workers_app.daemon.socket_images names the same classes); of these, the tooling nodes' one still lists
# each image in history and `executed`, as {"source": "websocket", …}.
SOCKET_IMAGE_CLASSES = frozenset({"SaveImageWebsocket", "ETN_SendImageWebSocket"})
SOCKET_IMAGES_LISTED = frozenset({"ETN_SendImageWebSocket"})


def prompt_id_of(task: Task) -> str:
    """The id a ComfyUI client knows the task by: its own, or the farm's."""
    return task.client_prompt_id or str(task.public_id)


def output_node_ids(task: Task) -> list[str]:
    classes = api_workflows.OUTPUT_NODE_CLASSES
    return [node_id for node_id, node in (task.workflow or {}).items() if node.get("class_type") in classes]


def queue_item(task: Task) -> list[Any]:
    """[number, prompt_id, prompt, extra_data, outputs_to_execute], as /queue and history carry it."""
    return [task.pk, prompt_id_of(task), task.workflow, {"client_id": task.client_id}, output_node_ids(task)]


def image_ref(image: Image) -> dict[str, str]:
    """How /view finds an image again: its storage name split as ComfyUI splits its output files."""
    subfolder, filename = posixpath.split(image.file.name)
    return {"filename": filename, "subfolder": subfolder, "type": "output"}


def history_entry(task: Task, images: Iterable[Image] | None = None) -> dict[str, Any] | None:
    """A finished task as ComfyUI's history has it; None where ComfyUI keeps nothing (a prompt deleted from
    the queue before it ran) or the task has not finished. Its images are `task.images` unless given."""
    if not task.is_finished or (task.status == Task.Status.CANCELLED and task.started_at is None):
        return None
    prompt_id = prompt_id_of(task)
    start = _ms(task.started_at or task.created_at)
    messages: list[list[Any]] = [["execution_start", {"prompt_id": prompt_id, "timestamp": start}]]
    outputs: dict[str, Any] = {}
    if task.status == Task.Status.COMPLETED:
        socket_nodes = socket_image_nodes(task)
        for image in sorted(task.images.all() if images is None else images, key=lambda i: i.index):
            socket_class = socket_nodes.get(image.node_id)
            if socket_class is None:
                ref = image_ref(image)
            elif socket_class in SOCKET_IMAGES_LISTED:
                ref = {"source": "websocket", "content-type": f"image/{image_format(image)}"}
                ref["type"] = "output"
            else:
                continue
            outputs.setdefault(image.node_id or "", {"images": []})["images"].append(ref)
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": _ms(task.finished_at)}])
    elif task.status == Task.Status.CANCELLED:
        messages.append(["execution_interrupted", _interrupted(task, prompt_id)])
    else:
        messages.append(["execution_error", _error(task, prompt_id)])
    completed = task.status == Task.Status.COMPLETED
    return {
        "prompt": queue_item(task),
        "outputs": outputs,
        "status": {
            "status_str": "success" if completed else "error",
            "completed": completed,
            "messages": messages,
        },
        "meta": {
            node_id: {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            for node_id in outputs
        },
    }


def socket_image_nodes(task: Task) -> dict[str, str]:
    """{node id: class} of the task's nodes whose images ComfyUI sends only on its socket."""
    return {
        node_id: node["class_type"]
        for node_id, node in (task.workflow or {}).items()
        if isinstance(node, dict) and node.get("class_type") in SOCKET_IMAGE_CLASSES
    }


def socket_images(task: Task, images: Iterable[Image] | None = None) -> list[Image]:
    """The task's images (`task.images` unless given) that its client gets as binary socket frames, in
    order."""
    nodes = socket_image_nodes(task)
    found = task.images.all() if images is None else images
    return [image for image in sorted(found, key=lambda i: i.index) if image.node_id in nodes]


def image_format(image: Image) -> str:
    """png, jpeg or webp, from the stored file's name (the completion checked the bytes with Pillow)."""
    extension = posixpath.splitext(image.file.name)[1].lower().lstrip(".")
    return {"jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}.get(extension, "png")


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000)


def _interrupted(task: Task, prompt_id: str) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "node_id": "",
        "node_type": "",
        "executed": [],
        "timestamp": _ms(task.finished_at),
    }


def _error(task: Task, prompt_id: str) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "node_id": "",
        "node_type": "",
        "executed": [],
        "exception_message": task.error_message,
        "exception_type": task.error_code,
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": _ms(task.finished_at),
    }


def model_folders(inventory: api_workflows.Inventory) -> dict[str, list[str]]:
    """Files by ComfyUI model folder, merged over the workers' model inputs."""
    folders: dict[str, set[str]] = {}
    for (class_type, name), files in inventory.model_inputs.items():
        folder = folder_of(class_type, name)
        if folder:
            folders.setdefault(folder, set()).update(files)
    return {folder: sorted(files) for folder, files in sorted(folders.items())}


def folder_of(class_type: str, name: str) -> str | None:
    if class_type == "UpscaleModelLoader" and name == "model_name":
        return "upscale_models"
    numbered = _NUMBERED.fullmatch(name)
    return MODEL_FOLDERS.get(numbered.group(1) if numbered else name)


def object_info(inventory: api_workflows.Inventory) -> dict[str, Any]:
    """/object_info as far as the workers report it: every node class, whether it is an output node, and the
    file choices of its model inputs (no other input specs: workers do not report them)."""
    outputs = inventory.output_nodes | api_workflows.OUTPUT_NODE_CLASSES
    inputs: dict[str, dict[str, Any]] = {}
    for (class_type, name), files in inventory.model_inputs.items():
        inputs.setdefault(class_type, {})[name] = [sorted(files), {}]
    return {
        name: {
            "input": {"required": inputs.get(name, {})},
            "input_order": {"required": sorted(inputs.get(name, {}))},
            "output": [],
            "output_is_list": [],
            "output_name": [],
            "name": name,
            "display_name": name,
            "description": "",
            "python_module": "farm",
            "category": "",
            "output_node": name in outputs,
        }
        for name in sorted(inventory.node_classes)
    }


def devices(workers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """/system_stats devices: one per online worker (its name and its GPU as it reported them)."""
    return [
        {
            "name": f"{caps.get('worker', '')}: {caps.get('device_name') or 'unknown'}",
            "type": "cuda",
            "index": index,
            "vram_total": caps.get("vram_total") or 0,
            "vram_free": 0,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }
        for index, caps in enumerate(workers)
    ]
