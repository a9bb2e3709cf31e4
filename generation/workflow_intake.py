"""The "Run a workflow" page's reads: an API-format workflow from pasted text, a .json file or a PNG that
ComfyUI saved (its `prompt` text chunk), and what it needs from the farm (api_workflows' checks)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from generation import api_workflows
from generation.exceptions import InvalidInput, WorkflowRejected
from generation.models import InputImage
from generation.services.workflow_submit import farm_inventory, registered_workers, workflow_check

PNG_MAX_BYTES = 20 * 1024 * 1024
UI_FORMAT = (
    "This is ComfyUI's editor format. In ComfyUI, use Workflow › Export (API) and paste or upload that file."
)


def _bad(field_name: str, message: str) -> InvalidInput:
    return InvalidInput(message, fields={field_name: [message]})


def read_workflow(text: str, upload: Any = None) -> dict[str, Any]:
    """The workflow in `upload` (a .json file or a PNG with a `prompt` chunk) if given, else in `text`; or
    InvalidInput naming the field (`workflow_file` or `workflow`)."""
    if upload is not None:
        return _from_file(upload)
    if not text.strip():
        raise _bad("workflow", "Paste a workflow, or choose a file.")
    return _from_json(text, "workflow")


def _from_file(upload: Any) -> dict[str, Any]:
    if getattr(upload, "size", 0) > PNG_MAX_BYTES:
        raise _bad("workflow_file", f"The file is larger than {PNG_MAX_BYTES // (1024 * 1024)} MB.")
    data = upload.read(PNG_MAX_BYTES + 1)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _from_png(data)
    if len(data) > api_workflows.MAX_BYTES:
        raise _bad("workflow_file", f"A workflow may be at most {api_workflows.MAX_BYTES} bytes.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("workflow_file", "The file is neither JSON nor a PNG.")
    return _from_json(text, "workflow_file")


def _from_png(data: bytes) -> dict[str, Any]:
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            chunks = dict(getattr(image, "text", None) or image.info)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        raise _bad("workflow_file", "The PNG cannot be read.")
    prompt = chunks.get("prompt")
    if not isinstance(prompt, str):
        why = " (it has only the editor's workflow)" if "workflow" in chunks else ""
        raise _bad("workflow_file", f"This PNG carries no ComfyUI prompt{why}.")
    return _from_json(prompt, "workflow_file")


def _from_json(text: str, field_name: str) -> dict[str, Any]:
    if len(text.encode()) > api_workflows.MAX_BYTES:
        raise _bad(field_name, f"A workflow may be at most {api_workflows.MAX_BYTES} bytes.")
    try:
        workflow = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(field_name, f"This is not valid JSON ({str(exc)[:120]}).")
    if isinstance(workflow, dict) and "prompt" in workflow and isinstance(workflow["prompt"], dict):
        workflow = workflow["prompt"]  # a POST /prompt body
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise _bad(field_name, UI_FORMAT)
    if not isinstance(workflow, dict):
        raise _bad(field_name, "A workflow is a JSON object of nodes (ComfyUI's API format).")
    return workflow


@dataclass
class InputSlot:
    """A LoadImage node: the file it names and whether this user has uploaded it."""

    node_id: str
    value: str
    uploaded: bool


@dataclass
class WorkflowReport:
    """What a workflow needs and whether the farm can run it now (`problems` says why not)."""

    node_classes: list[str] = field(default_factory=list)
    models: list[tuple[str, str, str]] = field(default_factory=list)
    inputs: list[InputSlot] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warning: str = ""

    @property
    def runnable(self) -> bool:
        return not self.problems


def describe(workflow: dict[str, Any], owner: AbstractBaseUser | None) -> WorkflowReport:
    """Node classes, model files and input images of `workflow`, checked as a submit would check them (input
    images still to be uploaded on the form do not count as problems)."""
    report = WorkflowReport()
    try:
        api_workflows.check_shape(workflow)
    except api_workflows.WorkflowProblem as problem:
        report.problems = problem.messages()
        return report
    workers = registered_workers()
    needs = api_workflows.requirements(workflow, farm_inventory(workers))
    report.node_classes, report.models = list(needs.node_classes), list(needs.models)
    mine = _uploaded_refs(owner)
    for node_id, ref in api_workflows.input_image_refs(workflow).items():
        value = workflow[node_id]["inputs"]["image"]
        report.inputs.append(InputSlot(node_id, value, ref in mine))
    try:
        _, report.warning = workflow_check(workflow, workers)
    except WorkflowRejected as exc:
        report.problems = exc.problem.messages()
    return report


def _uploaded_refs(owner: AbstractBaseUser | None) -> set[tuple[str, str, str]]:
    owner = owner if owner is not None and owner.is_authenticated else None
    rows = InputImage.objects.filter(owner=owner).values_list("kind", "subfolder", "name")[:5000]
    return set(rows)
