"""What a worker has and what a queued task needs of it: whether the worker could be handed the task, why
not, and a worker's reported inventory without a model its ComfyUI said it lacks. Pure functions over
capabilities (workers_app.models.Worker.capabilities) and a task's own fields; the lease path
(generation.services.leasing) applies the same rules as database filters."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

from generation import api_workflows

# ckpt_name: one folder (checkpoints) for every loader that has the input
CHECKPOINT_INPUT_NAME = api_workflows.CHECKPOINT_INPUT[1]


def without_model(capabilities: Mapping[str, Any], class_type: str, input_name: str, value: str) -> dict:
    """`capabilities` without the file `value` in the list of (class_type, input_name); for `ckpt_name`
    also in the checkpoint list and every other loader's `ckpt_name` list (the same folder)."""
    caps = copy.deepcopy(dict(capabilities))
    models = caps.get("model_inputs")
    if isinstance(models, dict):
        for cls, inputs in models.items():
            for name, files in (inputs or {}).items():
                same = (cls, name) == (class_type, input_name) or name == input_name == CHECKPOINT_INPUT_NAME
                if same and value in files:
                    inputs[name] = [f for f in files if f != value]
    if input_name == CHECKPOINT_INPUT_NAME and value in (caps.get("checkpoints") or ()):
        caps["checkpoints"] = [c for c in caps["checkpoints"] if c != value]
    return caps


def why_not(
    capabilities: Mapping[str, Any],
    *,
    template_classes: Collection[str] | None,
    checkpoint: str,
    requirements: Mapping[str, Any] | None,
) -> str | None:
    """Why a worker with these capabilities is not handed a task, or None when it may be.

    A template task (`template_classes`: its template's node classes) needs those classes and, when it names
    one, its checkpoint; a whole-workflow task (`template_classes` None) its `requirements`
    (api_workflows.missing_on)."""
    if template_classes is None:
        needs = api_workflows.Requirements.from_json(requirements or {})
        return api_workflows.missing_on(needs, capabilities)
    have = set(capabilities.get("node_classes") or ())
    lacking = sorted(c for c in template_classes if c not in have)
    if lacking:
        return f"no node class {', '.join(lacking)}"
    if checkpoint and checkpoint not in (capabilities.get("checkpoints") or ()):
        return f"no checkpoint {checkpoint!r}"
    return None
