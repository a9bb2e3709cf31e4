"""Whole API-format workflows submitted as tasks: their shape, what they need from a worker (node classes and
model files), and whether a worker has it. Pure functions; errors come in ComfyUI's shapes (protocol 3.1) so
the front door can answer as ComfyUI does and the REST API can name the field."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from generation import workflows

MAX_NODES = 2000
MAX_BYTES = 2 * 1024 * 1024
# Model inputs every ComfyUI has (older daemons report only the checkpoint list): (class_type, input name).
CHECKPOINT_INPUT = ("CheckpointLoaderSimple", "ckpt_name")
# Node classes whose result has no SaveImage but can end a prompt (ComfyUI's output_node flag), when workers
# report none of their own.
OUTPUT_NODE_CLASSES = workflows.OUTPUT_NODE_CLASSES
# Inputs that name a file in ComfyUI's input folder, which POST /upload/image fills: (class_type, input name).
INPUT_IMAGE_INPUTS = frozenset({("LoadImage", "image"), ("LoadImageMask", "image")})
INPUT_KINDS = ("input", "temp")  # the folders an upload may go to; ` [temp]` after a name picks the second
VALUE_LIST_SHOWN = 20  # ComfyUI prints longer choice lists as "(list of length N)"


@dataclass
class WorkflowProblem(Exception):
    """Why a workflow cannot run, as ComfyUI says it: `error` {type, message, details, extra_info} and
    `node_errors` {node id: {errors, dependent_outputs, class_type}}."""

    error: dict[str, Any]
    node_errors: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[str]:
        """One readable line per problem, for the REST API's `fields`."""
        lines = []
        for node_id, entry in self.node_errors.items():
            for err in entry.get("errors", []):
                detail = f": {err['details']}" if err.get("details") else ""
                lines.append(f"Node {node_id!r} ({entry.get('class_type')}) {err['message']}{detail}")
        if not lines:
            detail = f" ({self.error['details']})" if self.error.get("details") else ""
            lines.append(f"{self.error['message']}{detail}")
        return lines


@dataclass(frozen=True)
class Inventory:
    """What the registered workers report, merged: node classes, output node classes, and the file lists of
    model inputs by (class_type, input name). Empty when no worker has registered (then anything queues)."""

    node_classes: frozenset[str] = frozenset()
    output_nodes: frozenset[str] = frozenset()
    model_inputs: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return bool(self.node_classes)


def capabilities_models(capabilities: Mapping[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """A worker's model inputs as (class_type, input) -> files: `model_inputs` if it reports them, else its
    checkpoint list for CheckpointLoaderSimple."""
    reported = capabilities.get("model_inputs")
    models: dict[tuple[str, str], frozenset[str]] = {}
    if isinstance(reported, dict):
        for class_type, inputs in reported.items():
            for name, files in (inputs or {}).items():
                models[(class_type, name)] = frozenset(files or ())
    if CHECKPOINT_INPUT not in models and "CheckpointLoaderSimple" in (
        capabilities.get("node_classes") or ()
    ):
        models[CHECKPOINT_INPUT] = frozenset(capabilities.get("checkpoints") or ())
    return models


def inventory(capabilities: Iterable[Mapping[str, Any]]) -> Inventory:
    node_classes: set[str] = set()
    outputs: set[str] = set()
    models: dict[tuple[str, str], set[str]] = {}
    for caps in capabilities:
        node_classes.update(caps.get("node_classes") or ())
        outputs.update(caps.get("output_nodes") or ())
        for key, files in capabilities_models(caps).items():
            models.setdefault(key, set()).update(files)
    return Inventory(
        frozenset(node_classes), frozenset(outputs), {k: frozenset(v) for k, v in models.items()}
    )


def check_shape(workflow: Any) -> dict[str, Any]:
    """The workflow if it is a storable API-format graph of bounded size, every link to a node in it, no cycle
    and an output node; else WorkflowProblem."""
    if not isinstance(workflow, dict):
        raise _invalid("The prompt must be a JSON object mapping node ids to nodes (API format).")
    if not workflow:
        raise WorkflowProblem(_error("prompt_no_outputs", "Prompt has no outputs"))
    if len(workflow) > MAX_NODES:
        raise _invalid(f"The prompt has {len(workflow)} nodes; the farm takes at most {MAX_NODES}.")
    if len(json.dumps(workflow, separators=(",", ":"), default=str).encode()) > MAX_BYTES:
        raise _invalid(f"The prompt is larger than {MAX_BYTES} bytes.")
    problem = workflows.unstorable(workflow)
    if problem:
        raise _invalid(problem)
    for node_id, node in workflow.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not node["class_type"]
        ):
            raise _invalid(
                "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'"
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise _invalid("A node's inputs must be an object.", f"Node ID '#{node_id}'")
    return workflow


def check_against(workflow: dict[str, Any], farm: Inventory) -> None:
    """What the farm can tell before running it: unknown node classes, no output node, links to missing
    nodes, cycles, model files no worker has. Raises WorkflowProblem; an unknown inventory checks the graph
    only."""
    if farm.known:
        for node_id, node in workflow.items():
            if node["class_type"] not in farm.node_classes:
                raise _invalid(
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
    outputs = [
        nid for nid, n in workflow.items() if n["class_type"] in (OUTPUT_NODE_CLASSES | farm.output_nodes)
    ]
    if not outputs:
        raise WorkflowProblem(_error("prompt_no_outputs", "Prompt has no outputs"))
    node_errors: dict[str, Any] = {}
    for node_id, node in workflow.items():
        for name, value in node.get("inputs", {}).items():
            if workflows.is_link(value) and value[0] not in workflow:
                _add(node_errors, workflow, node_id, _link_error(name, value))
            elif isinstance(value, str) and (node["class_type"], name) in farm.model_inputs:
                files = farm.model_inputs[(node["class_type"], name)]
                if value not in files:
                    _add(node_errors, workflow, node_id, _not_in_list(name, value, files))
    if not node_errors:
        cycle = workflows.find_cycle(workflow)
        if cycle:
            message = f"Dependency cycle through nodes {', '.join(cycle)}"
            _add(
                node_errors,
                workflow,
                cycle[0],
                _error("dependency_cycle_detected", message, ", ".join(cycle)),
            )
    if node_errors:
        _fill_dependents(node_errors, workflow, outputs)
        raise WorkflowProblem(
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), node_errors
        )


@dataclass(frozen=True)
class Requirements:
    """What a worker must have to run a workflow: every node class, and each model file a loader input names
    (as (class_type, input name, file))."""

    node_classes: tuple[str, ...]
    models: tuple[tuple[str, str, str], ...]

    def as_json(self) -> dict[str, Any]:
        return {"node_classes": list(self.node_classes), "models": [list(m) for m in self.models]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Requirements:
        return cls(tuple(data.get("node_classes") or ()), tuple(tuple(m) for m in data.get("models") or ()))

    @property
    def key(self) -> str:
        """A digest naming these requirements: tasks with equal needs share it (leasing groups by it)."""
        text = json.dumps(self.as_json(), separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def checkpoint(self) -> str:
        """The first checkpoint named, for waking a worker that has it (dispatch.announce_work)."""
        return next((m[2] for m in self.models if (m[0], m[1]) == CHECKPOINT_INPUT), "")


def requirements(workflow: dict[str, Any], farm: Inventory) -> Requirements:
    """Node classes of every node (ComfyUI refuses a prompt naming a class it lacks, used or not) and the
    files named by inputs that some worker reports as a model list (plus the checkpoint loader's, always)."""
    classes = sorted({node["class_type"] for node in workflow.values()})
    models = set()
    for node in workflow.values():
        for name, value in node.get("inputs", {}).items():
            key = (node["class_type"], name)
            if isinstance(value, str) and (key in farm.model_inputs or key == CHECKPOINT_INPUT):
                models.add((*key, value))
    return Requirements(tuple(classes), tuple(sorted(models)))


def missing_on(needs: Requirements, capabilities: Mapping[str, Any]) -> str | None:
    """Why a worker with these capabilities cannot run a workflow with these needs, or None if it can."""
    return missing_in(needs, set(capabilities.get("node_classes") or ()), capabilities_models(capabilities))


def missing_in(
    needs: Requirements, have: Collection[str], models: Mapping[tuple[str, str], frozenset[str]]
) -> str | None:
    """`missing_on` for a worker's node classes and model lists already read from its capabilities."""
    lacking = [c for c in needs.node_classes if c not in have]
    if lacking:
        return f"no node class {', '.join(lacking)}"
    for class_type, name, value in needs.models:
        files = models.get((class_type, name))
        if files is not None and value not in files:
            return f"no {name} {value!r}"
    return None


def input_image_refs(workflow: Mapping[str, Any]) -> dict[str, tuple[str, str, str]]:
    """The uploaded files a workflow's LoadImage nodes name, by node id: (kind, subfolder, name) parsed from
    ComfyUI's `subfolder/name [kind]` (kind `input` when there is no suffix). A value that cannot name an
    upload (an `[output]` file, `..`) parses to kind ""."""
    refs = {}
    for node_id, node in workflow.items():
        for name, value in (node.get("inputs") or {}).items():
            if (node.get("class_type"), name) in INPUT_IMAGE_INPUTS and isinstance(value, str):
                refs[node_id] = parse_input_name(value)
    return refs


def parse_input_name(value: str) -> tuple[str, str, str]:
    """(kind, subfolder, name) of a LoadImage value; kind "" when it names no upload the farm can hold."""
    kind = "input"
    for each in ("input", "temp", "output"):
        if value.endswith(f" [{each}]"):
            kind, value = each, value[: -len(each) - 3]
    subfolder, _, name = value.rpartition("/")
    parts = subfolder.split("/") if subfolder else []
    if kind not in INPUT_KINDS or not name or any(p in ("", ".", "..") for p in parts) or name in (".", ".."):
        return "", subfolder, name
    return kind, subfolder, name


def check_input_images(
    workflow: dict[str, Any], have: Collection[tuple[str, str, str]], farm: Inventory
) -> None:
    """Refuse, as ComfyUI's LoadImage does (`custom_validation_failed`, "Invalid image file"), a workflow that
    names an uploaded file not among `have` ((kind, subfolder, name) of the sender's uploads)."""
    node_errors: dict[str, Any] = {}
    for node_id, ref in input_image_refs(workflow).items():
        if ref[0] and ref in have:
            continue
        value = workflow[node_id]["inputs"]["image"]
        error = _error(
            "custom_validation_failed",
            "Custom validation failed for node",
            f"image - Invalid image file: {value}",
            {"input_name": "image"},
        )
        _add(node_errors, workflow, node_id, error)
    if node_errors:
        outputs = [
            nid for nid, n in workflow.items() if n["class_type"] in (OUTPUT_NODE_CLASSES | farm.output_nodes)
        ]
        _fill_dependents(node_errors, workflow, outputs)
        raise WorkflowProblem(
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), node_errors
        )


def with_input_names(workflow: dict[str, Any], names: Mapping[tuple[str, str, str], str]) -> dict[str, Any]:
    """A copy in which each LoadImage naming an upload in `names` names the file the worker stored instead."""
    built = copy.deepcopy(workflow)
    for node_id, ref in input_image_refs(workflow).items():
        if ref in names:
            built[node_id]["inputs"]["image"] = names[ref]
    return built


# -- error shapes -------------------------------------------------------------------------------------------
def keys_runnable(needs: Mapping[str, Requirements], capabilities: Mapping[str, Any]) -> frozenset[str]:
    """The requirement keys among `needs` whose every need a worker with these capabilities has."""
    return frozenset(key for key, need in needs.items() if missing_on(need, capabilities) is None)


def _error(kind: str, message: str, details: str = "", extra_info: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _invalid(message: str, details: str = "") -> WorkflowProblem:
    return WorkflowProblem(_error("invalid_prompt", message, details))


def _link_error(name: str, link: list) -> dict[str, Any]:
    missing = repr(link[0])
    return _error(
        "exception_during_validation",
        "Exception when validating node",
        missing,
        {"input_name": name, "exception_type": "KeyError", "exception_message": missing, "linked_node": link},
    )


def _not_in_list(name: str, value: str, files: frozenset[str]) -> dict[str, Any]:
    choices = sorted(files)
    shown = str(choices) if len(choices) <= VALUE_LIST_SHOWN else f"(list of length {len(choices)})"
    config = [choices, {}] if len(choices) <= VALUE_LIST_SHOWN else None
    return _error(
        "value_not_in_list",
        "Value not in list",
        f"{name}: '{value}' not in {shown}",
        {"input_name": name, "input_config": config, "received_value": value},
    )


def _add(node_errors: dict[str, Any], workflow: dict[str, Any], node_id: str, error: dict[str, Any]) -> None:
    entry = node_errors.setdefault(
        node_id, {"errors": [], "dependent_outputs": [], "class_type": workflow[node_id]["class_type"]}
    )
    entry["errors"].append(error)


def _fill_dependents(node_errors: dict[str, Any], workflow: dict[str, Any], outputs: list[str]) -> None:
    """Each failing node's `dependent_outputs`: the output nodes that reach it through links."""
    for output in outputs:
        seen, stack = {output}, [output]
        while stack:
            for value in workflow[stack.pop()].get("inputs", {}).values():
                if workflows.is_link(value) and value[0] in workflow and value[0] not in seen:
                    seen.add(value[0])
                    stack.append(value[0])
        for node_id in node_errors:
            if node_id in seen:
                node_errors[node_id]["dependent_outputs"].append(output)


def with_prefix(workflow: dict[str, Any], filename_prefix: str) -> dict[str, Any]:
    """A copy in which every SaveImage writes under `filename_prefix` (one per node, so two nodes never write
    the same names, and a rerun writes new files rather than meeting ComfyUI's cache, protocol 6)."""
    built = copy.deepcopy(workflow)
    for node_id, node in built.items():
        if node.get("class_type") == "SaveImage":
            safe_id = re.sub(r"[^A-Za-z0-9_-]", "_", node_id)[:32]
            node.setdefault("inputs", {})["filename_prefix"] = f"{filename_prefix}_n{safe_id}"
    return built
