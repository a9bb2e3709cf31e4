"""Submitting a whole API-format workflow as a task: checked against what the registered workers report,
its needs recorded for matching (generation.api_workflows), then queued like any task."""

import logging
import secrets
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction

from generation import api_workflows, callback_targets, dispatch, limits, node_specs, spec_checks, workflows
from generation.api_workflows import Inventory, Requirements, WorkflowProblem
from generation.exceptions import InvalidInput, WorkflowRejected
from generation.models import SEED_MAX, PreviewMethod, Task
from generation.services.inputs import inputs_hold, inputs_needed
from generation.services.queue_rules import check_priority, check_queued_cap
from generation.services.transitions import farm_setting, task_changed
from workers_app.models import Worker

logger = logging.getLogger(__name__)

SEED_INPUTS = ("seed", "noise_seed")
SIZE_CLASSES = ("EmptyLatentImage", "EmptyImage", "EmptySD3LatentImage")
SUMMARY_CLASSES = ("CLIPTextEncode",)


def registered_workers() -> list[Worker]:
    return list(
        Worker.objects.exclude(registered_at=None).only("name", "status", "capabilities", "inventory_at")
    )


def farm_inventory(workers: list[Worker]) -> Inventory:
    """What the online workers have (the registered ones while none is online)."""
    online = [w for w in workers if w.is_online]
    return api_workflows.inventory(w.capabilities for w in (online or workers))


def workflow_check(workflow: Any, workers: list[Worker]) -> tuple[Requirements, str]:
    """The workflow's needs and a warning, or WorkflowRejected (ComfyUI's shape in `problem`): bad graph,
    a node class or model file no worker has, or no single worker with all of them."""
    try:
        api_workflows.check_shape(workflow)
        farm = farm_inventory(workers)
        api_workflows.check_against(workflow, farm)
    except WorkflowProblem as problem:
        raise WorkflowRejected(problem)
    needs = api_workflows.requirements(workflow, farm)
    if not workers:
        return needs, ""
    capable = [w for w in workers if api_workflows.missing_on(needs, w.capabilities) is None]
    online = [w for w in capable if w.is_online]
    if capable:
        _check_specs(workflow, online or capable)
        if online:
            return needs, ""
        return needs, "Only offline workers can run this task; it waits until one of them is back."
    why = "; ".join(f"{w.name}: {api_workflows.missing_on(needs, w.capabilities)}" for w in workers[:10])
    raise WorkflowRejected(
        WorkflowProblem(
            {
                "type": "invalid_prompt",
                "message": "No single worker has every node class and model file this workflow needs.",
                "details": why,
                "extra_info": {},
            }
        )
    )


def _check_specs(workflow: dict[str, Any], capable: list[Worker]) -> None:
    """Refuse, in ComfyUI's shapes (generation.spec_checks), a workflow that the ComfyUI of none of the
    `capable` workers would accept, when every one of them reported its whole /object_info; the specs most
    workers share answer first, and theirs is the refusal shown."""
    specs = node_specs.capable_specs(capable)
    if not specs:
        return
    first = None
    for _, (spec, _count) in sorted(specs.items(), key=lambda item: (-item[1][1], item[0])):
        problem = spec_checks.check(workflow, spec)
        if problem is None:
            return
        first = first or problem
    raise WorkflowRejected(first)


def task_submit_workflow(
    *,
    owner: AbstractBaseUser | None,
    workflow: Any,
    priority: int = 0,
    callback_url: str = "",
    client_prompt_id: str = "",
    client_id: str = "",
    preview_method: str = "",
) -> Task:
    """Check a whole workflow and queue it as a task that runs it as given (file names aside: each attempt
    writes under its own prefix, api_workflows). Use `comfy_prompt_submit` for a client prompt id."""
    _check_options(priority, callback_url)
    check_priority(priority, owner)
    workers = registered_workers()
    needs, warning = workflow_check(workflow, workers)
    farm = farm_inventory(workers)
    uploads = inputs_needed(owner=owner, workflow=workflow, farm=farm)
    task = Task(
        owner=_owner(owner),
        client_prompt_id=client_prompt_id,
        client_id=client_id,
        preview_method=preview_method,
        workflow=workflow,
        requirements=needs.as_json(),
        requirements_key=needs.key,
        priority=priority,
        callback_url=callback_url,
        warning=warning,
        max_attempts=farm_setting("MAX_ATTEMPTS"),
        shape=workflows.workflow_shape(workflow),
        **_summary(workflow),
    )
    with transaction.atomic():
        check_queued_cap(task.owner_id)
        task.save()
        if uploads:
            task.input_images.set(inputs_hold(workflow=workflow, uploads=uploads, farm=farm))
        task_changed(task.public_id, task.owner_id)
        dispatch.announce_work(checkpoint=needs.checkpoint, owner=task.owner_id)
    logger.info("workflow task queued", extra={"task": task.public_id})
    return task


def comfy_prompt_submit(
    *,
    owner: AbstractBaseUser | None,
    workflow: Any,
    client_prompt_id: str = "",
    client_id: str = "",
    extra_data: Any = None,
) -> tuple[Task, bool]:
    """ComfyUI's POST /prompt: queue the workflow, or, when this owner (the anonymous space counts as one)
    already sent `client_prompt_id`, return that task unchanged. (task, True when it was queued now).
    Of `extra_data`, only `preview_method` reaches the worker's ComfyUI."""
    _check_client_ids(client_prompt_id, client_id)
    preview_method = _preview_method(extra_data)
    if client_prompt_id:
        earlier = _task_named(owner, client_prompt_id)
        if earlier is not None:
            return earlier, False
    try:
        with transaction.atomic():
            task = task_submit_workflow(
                owner=owner,
                workflow=workflow,
                client_prompt_id=client_prompt_id,
                client_id=client_id,
                preview_method=preview_method,
            )
    except IntegrityError:
        earlier = _task_named(owner, client_prompt_id) if client_prompt_id else None
        if earlier is None:
            raise
        return earlier, False  # a concurrent submit of the same id won
    return task, True


def _owner(owner: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return owner if owner is not None and owner.is_authenticated else None


def _task_named(owner: AbstractBaseUser | None, client_prompt_id: str) -> Task | None:
    return Task.objects.filter(owner=_owner(owner), client_prompt_id=client_prompt_id).first()


CLIENT_ID_MAX = 100


def _check_client_ids(client_prompt_id: Any, client_id: Any) -> None:
    errors = {}
    for name, value in (("prompt_id", client_prompt_id), ("client_id", client_id)):
        if not isinstance(value, str) or len(value) > CLIENT_ID_MAX:
            errors[name] = [f"Must be a string of at most {CLIENT_ID_MAX} characters."]
        elif any(ord(c) < 32 or c == "\x7f" for c in value):
            errors[name] = ["Control characters are not allowed."]
    if errors:
        raise InvalidInput("Some fields are not valid.", fields=errors)


# ComfyUI's LatentPreviewMethod values, and "default" (the server's own setting), as `set_preview_method`
# takes them from a prompt's extra_data.
PREVIEW_METHODS = frozenset(PreviewMethod.values) - {PreviewMethod.OFF}


def _preview_method(extra_data: Any) -> str:
    """`extra_data.preview_method`, checked; "" when absent."""
    if extra_data is None:
        return ""
    if not isinstance(extra_data, dict):
        raise InvalidInput("Some fields are not valid.", fields={"extra_data": ["Must be an object."]})
    value = extra_data.get("preview_method")
    if value is None:
        return ""
    if value not in PREVIEW_METHODS:
        choices = ", ".join(sorted(PREVIEW_METHODS))
        raise InvalidInput(
            "Some fields are not valid.", fields={"extra_data.preview_method": [f"Must be one of {choices}."]}
        )
    return value


def _check_options(priority: int, callback_url: str) -> None:
    errors: dict[str, list[str]] = {}
    limit = limits.numbers()["priority"]
    if not limit.allows(priority):
        errors["priority"] = [limit.message]
    if callback_url:
        try:
            callback_targets.check_url(callback_url)
        except callback_targets.Refused as exc:
            errors["callback_url"] = [str(exc)]
    if errors:
        raise InvalidInput("Some fields are not valid.", fields=errors)


def _summary(workflow: dict[str, Any]) -> dict[str, Any]:
    """Task fields that lists and pages show, read from the workflow where it has them: the first prompt
    text, the first seed, the first image size and its batch, the first sampler's steps (size, batch and
    steps are also the work that placement and the learned speeds count)."""
    found: dict[str, Any] = {}
    longest = limits.lengths()["prompt"].high
    for node in workflow.values():
        inputs, kind = node.get("inputs", {}), node["class_type"]
        text = inputs.get("text")
        if "prompt" not in found and kind in SUMMARY_CLASSES and isinstance(text, str) and text.strip():
            found["prompt"] = text[:longest]
        for name in SEED_INPUTS:
            value = inputs.get(name)
            if "seed" not in found and type(value) is int and 0 <= value <= SEED_MAX:
                found["seed"] = value
        if "width" not in found and kind in SIZE_CLASSES:
            width, height = inputs.get("width"), inputs.get("height")
            if type(width) is int and type(height) is int and 0 < width <= 16384 and 0 < height <= 16384:
                found["width"], found["height"] = width, height
                batch = inputs.get("batch_size")
                if type(batch) is int and 0 < batch <= 4096:
                    found["batch_size"] = batch
        steps = inputs.get("steps")
        if "steps" not in found and type(steps) is int and 0 < steps <= 10000:
            found["steps"] = steps
    found.setdefault("prompt", "(workflow)")
    found.setdefault("seed", secrets.randbelow(SEED_MAX + 1))
    return found
