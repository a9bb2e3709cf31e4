"""ComfyUI API-format workflows: template validation and building a task's workflow. Pure functions."""

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

# Task fields a template can bind to a node input; a lease fills each in from the task.
TASK_FIELDS_BOUND = (
    "prompt", "negative_prompt", "width", "height", "seed", "steps", "cfg", "sampler", "scheduler",
    "checkpoint", "batch_size",
)  # fmt: skip
BINDABLE_FIELDS = (*TASK_FIELDS_BOUND, "filename_prefix")

# Node classes that write results (ComfyUI's output_node=True). Only these and what they depend on run.
OUTPUT_NODE_CLASSES = frozenset(
    {"SaveImage", "PreviewImage", "SaveImageWebsocket", "SaveAnimatedWEBP", "SaveAnimatedPNG", "PreviewAny"}
)


def node_classes(workflow: Any) -> set[str]:
    if not isinstance(workflow, dict):
        return set()
    return {
        node["class_type"] for node in workflow.values() if isinstance(node, dict) and "class_type" in node
    }


def workflow_shape(workflow: Mapping[str, Any]) -> str:
    """A digest of a workflow's graph without its input values: node ids, classes, input names and links.
    Runs of one workflow with other prompts, seeds, sizes, steps or files share it, so what a worker learns
    from one run (services.learning) is used for the next."""
    graph = {
        str(node_id): [
            node.get("class_type"),
            sorted(
                [name, value if _is_link(value) else None]
                for name, value in (node.get("inputs") or {}).items()
            ),
        ]
        for node_id, node in workflow.items()
        if isinstance(node, dict)
    }
    return hashlib.sha256(json.dumps(graph, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def validate_template(workflow: Any, bindings: Any) -> dict[str, list[str]]:
    """Return errors by field (`workflow`, `bindings`); empty when the template is usable."""
    errors: dict[str, list[str]] = {}
    for field, value in (("workflow", workflow), ("bindings", bindings)):
        problem = unstorable(value)
        if problem:
            errors[field] = [problem]
    if errors:
        return errors
    workflow_errors = _workflow_errors(workflow)
    if workflow_errors:
        errors["workflow"] = workflow_errors
    binding_errors = _binding_errors(
        workflow if not workflow_errors else {}, bindings, check_nodes=not workflow_errors
    )
    if binding_errors:
        errors["bindings"] = binding_errors
    return errors


MAX_JSON_DEPTH = 32


def unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored and sent on as it is, or None. PostgreSQL's jsonb refuses NUL
    characters, unpaired surrogates and non-finite numbers (JSON has none), and absurd nesting would make
    every copy of the workflow fail later. Iterative, so deep input cannot overflow the stack here."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"Nested deeper than {MAX_JSON_DEPTH} levels."
        if isinstance(item, dict):
            stack.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list):
            stack.extend((part, depth + 1) for part in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "Numbers must be finite."
        elif isinstance(item, str) and ("\x00" in item or not _encodable(item)):
            return "Text must not contain NUL characters or unpaired surrogates."
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _workflow_errors(workflow: Any) -> list[str]:
    if not isinstance(workflow, dict) or not workflow:
        return ["Must be a non-empty JSON object mapping node ids to nodes (ComfyUI API format)."]
    errors = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            errors.append(f"Node {node_id!r} must be an object.")
            continue
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            errors.append(f"Node {node_id!r} has no class_type.")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(f"Node {node_id!r}: inputs must be an object.")
            continue
        for name, value in inputs.items():
            if is_link(value) and value[0] not in workflow:
                errors.append(f"Node {node_id!r} input {name!r} links to missing node {value[0]!r}.")
    if errors:
        return errors
    if not any(node["class_type"] in OUTPUT_NODE_CLASSES for node in workflow.values()):
        errors.append("The workflow has no output node (e.g. SaveImage).")
    cycle = find_cycle(workflow)
    if cycle:
        errors.append(f"The workflow has a cycle through nodes {', '.join(cycle)}.")
    return errors


def _binding_errors(workflow: dict, bindings: Any, *, check_nodes: bool) -> list[str]:
    if not isinstance(bindings, dict):
        return ['Must be an object like {"seed": ["3", "seed"]}.']
    errors = []
    for field, target in bindings.items():
        if field not in BINDABLE_FIELDS:
            errors.append(f"Unknown field {field!r}; bindable fields: {', '.join(BINDABLE_FIELDS)}.")
            continue
        if not (isinstance(target, list) and len(target) == 2 and all(isinstance(x, str) for x in target)):
            errors.append(f"{field}: must be [node id, input name] (two strings).")
            continue
        if not check_nodes:
            continue
        node_id, input_name = target
        node = workflow.get(node_id)
        if node is None:
            errors.append(f"{field}: node {node_id!r} is not in the workflow.")
        elif input_name not in node.get("inputs", {}):
            errors.append(f"{field}: node {node_id!r} ({node['class_type']}) has no input {input_name!r}.")
        elif is_link(node["inputs"][input_name]):
            errors.append(f"{field}: input {input_name!r} of node {node_id!r} is a link, not a value.")
    return errors


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def find_cycle(workflow: dict) -> list[str]:
    """Node ids on a cycle of links, or [] (iterative DFS, so deep graphs cannot overflow the stack)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in workflow:
        if state.get(root):
            continue
        stack = [(root, iter(_links(workflow, root)))]
        path = [root]
        state[root] = 1
        while stack:
            node_id, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node_id] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(_links(workflow, child))))
    return []


def _links(workflow: dict, node_id: str) -> list[str]:
    return [v[0] for v in workflow[node_id].get("inputs", {}).values() if is_link(v) and v[0] in workflow]


def build_workflow(workflow: dict, bindings: dict, values: dict[str, Any]) -> dict:
    """A copy of `workflow` with each bound task field written into its node input."""
    built = copy.deepcopy(workflow)
    for field, (node_id, input_name) in bindings.items():
        if field in values:
            built[node_id]["inputs"][input_name] = values[field]
    return built


# The canonical SD1.5 text-to-image graph (protocol sheet, section 2).
DEFAULT_SD15_WORKFLOW: dict = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "seed": 0,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t2i"}},
}
DEFAULT_SD15_BINDINGS: dict = {
    "checkpoint": ["4", "ckpt_name"],
    "prompt": ["6", "text"],
    "negative_prompt": ["7", "text"],
    "width": ["5", "width"],
    "height": ["5", "height"],
    "batch_size": ["5", "batch_size"],
    "seed": ["3", "seed"],
    "steps": ["3", "steps"],
    "cfg": ["3", "cfg"],
    "sampler": ["3", "sampler_name"],
    "scheduler": ["3", "scheduler"],
    "filename_prefix": ["9", "filename_prefix"],
}

# Checkpoint-free test workflow: EmptyImage -> ImageAddNoise -> SaveImage (runs on any ComfyUI).
NOISE_TEST_WORKFLOW: dict = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 3368601},
    },
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t2i"}},
}
NOISE_TEST_BINDINGS: dict = {
    "width": ["1", "width"],
    "height": ["1", "height"],
    "batch_size": ["1", "batch_size"],
    "seed": ["2", "seed"],
    "filename_prefix": ["3", "filename_prefix"],
}


# The templates migration 0002 ships: (name, description, workflow, bindings).
SHIPPED_TEMPLATES = [
    (
        "sd15-txt2img",
        "Stable Diffusion 1.5 text-to-image (checkpoint, two prompts, KSampler, VAE decode).",
        DEFAULT_SD15_WORKFLOW,
        DEFAULT_SD15_BINDINGS,
    ),
    (
        "noise-test",
        "Checkpoint-free test graph: a solid image with seeded noise. Runs on any ComfyUI.",
        NOISE_TEST_WORKFLOW,
        NOISE_TEST_BINDINGS,
    ),
]
