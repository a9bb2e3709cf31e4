"""A workflow checked against one worker's whole `/object_info` (generation.node_specs) as ComfyUI 0.3.64's
`validate_prompt` checks it (protocol 3.1, traces `validation_errors.jsonl`), in its error shapes: a required
input missing, a literal that does not convert to its INT/FLOAT, a number below `min` or above `max`, a
choice not in a combo's list, a link of the wrong length or whose output type does not fit the input.

As ComfyUI: only output nodes and the nodes they reach through links are checked; a link (a widget turned
into an input included) satisfies an input and is not checked as a value; optional inputs are checked only
when given, `hidden` ones and inputs the class does not declare never; a node whose only fault is upstream
carries no error of its own.

Where `/object_info` cannot tell what ComfyUI would do, nothing is refused: choices of upload inputs
(`image_upload` and the like, `remote` lists: their nodes check the file themselves), type checks unless both
types are names, and a link to an output index the class does not have. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from generation import api_workflows

VALUE_LIST_SHOWN = api_workflows.VALUE_LIST_SHOWN
CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def check(workflow: dict[str, Any], spec: Mapping[str, Any]) -> api_workflows.WorkflowProblem | None:
    """Why a ComfyUI with this `/object_info` would refuse `workflow` (already through
    api_workflows.check_shape and check_against), or None. A prompt whose outputs fail only in part is
    refused too: ComfyUI would run the valid outputs only, and the worker fails a task it answers so."""
    for node_id, node in workflow.items():
        if not isinstance(spec.get(node["class_type"]), dict):
            return api_workflows.WorkflowProblem(
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
            )
    outputs = [nid for nid, node in workflow.items() if spec[node["class_type"]].get("output_node") is True]
    if not outputs:
        return api_workflows.WorkflowProblem(_error("prompt_no_outputs", "Prompt has no outputs"))
    own: dict[str, list[dict[str, Any]]] = {}
    upstream: dict[str, list[str]] = {}
    seen: set[str] = set()
    node_errors: dict[str, Any] = {}
    failed: list[str] = []
    for output in outputs:
        closure = _closure(output, workflow, spec, own, upstream)
        seen |= closure
        if any(own[n] for n in closure):
            failed.append(output)
            for node_id in (n for n in workflow if n in seen and own[n]):
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": own[node_id],
                        "dependent_outputs": [],
                        "class_type": workflow[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(output)
    if not node_errors:
        return None
    details = "\n".join(f"{e['message']}: {e['details']}" for o in failed for e in own[o])
    return api_workflows.WorkflowProblem(
        _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), node_errors
    )


def _closure(
    start: str,
    workflow: dict[str, Any],
    spec: Mapping[str, Any],
    own: dict[str, list[dict[str, Any]]],
    upstream: dict[str, list[str]],
) -> set[str]:
    """`start` and the nodes ComfyUI validates for it (through links that pass their type check), each
    node's own errors in `own`."""
    closure, stack = {start}, [start]
    while stack:
        node_id = stack.pop()
        if node_id not in own:
            own[node_id], upstream[node_id] = node_errors_of(workflow, node_id, spec)
        for source in upstream[node_id]:
            if source not in closure:
                closure.add(source)
                stack.append(source)
    return closure


def node_errors_of(
    workflow: dict[str, Any], node_id: str, spec: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """(errors of this node's own inputs, the nodes its checked links lead to)."""
    node = workflow[node_id]
    class_type = node["class_type"]
    inputs = node.get("inputs") or {}
    declared = spec[class_type].get("input") or {}
    errors: list[dict[str, Any]] = []
    links: list[str] = []
    for category in ("required", "optional"):
        group = declared.get(category)
        for name, input_spec in group.items() if isinstance(group, dict) else ():
            if not isinstance(input_spec, list) or not input_spec:
                continue
            input_type = input_spec[0]
            extra = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
            info = [input_type, extra]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error(
                            "required_input_missing", "Required input is missing", name, {"input_name": name}
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                error, source = _link(name, value, info, workflow, spec)
            else:
                error, source = _literal(class_type, name, value, info), None
            if error is not None:
                errors.append(error)
            if source is not None:
                links.append(source)
    return errors, links


def _link(
    name: str, value: list, info: list, workflow: dict[str, Any], spec: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    if len(value) != 2:
        return _error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            {"input_name": name, "input_config": info, "received_value": value},
        ), None
    source, index = value
    if not isinstance(source, str) or source not in workflow:
        return None, None  # api_workflows.check_against answers for missing nodes
    returns = spec[workflow[source]["class_type"]].get("output")
    try:
        received = returns[index] if isinstance(index, int) and not isinstance(index, bool) else None
    except (LookupError, TypeError):  # not a list of the class's outputs: leave it to the worker
        received = None
    input_type = info[0]
    if isinstance(received, str) and isinstance(input_type, str) and not types_match(received, input_type):
        return _error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            f"{name}, received_type({received}) mismatch input_type({input_type})",
            {"input_name": name, "input_config": info, "received_type": received, "linked_node": value},
        ), None
    return None, source


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's validate_node_input: equal, or a `*`, or the comma-separated unions share a type."""
    if received == expected:
        return True
    got = {t.strip() for t in received.split(",")}
    wanted = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in wanted or bool(got & wanted)


def _literal(class_type: str, name: str, value: Any, info: list) -> dict[str, Any] | None:
    input_type, extra = info
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    converter = CONVERTERS.get(input_type) if isinstance(input_type, str) else None
    if converter is not None:
        try:
            value = converter(value)
        except Exception as exc:  # whatever int()/float() raise, as ComfyUI catches it
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {input_type} value",
                f"{name}, {value}, {exc}",
                {
                    "input_name": name,
                    "input_config": info,
                    "received_value": value,
                    "exception_message": str(exc),
                },
            )
    try:
        if "min" in extra and value < extra["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {extra['min']}",
                name,
                {"input_name": name, "input_config": info, "received_value": value},
            )
        if "max" in extra and value > extra["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {extra['max']}",
                name,
                {"input_name": name, "input_config": info, "received_value": value},
            )
    except TypeError:
        return None  # ComfyUI would fail with an exception here; leave it to the worker
    return _not_in_list(class_type, name, value, info)


def _not_in_list(class_type: str, name: str, value: Any, info: list) -> dict[str, Any] | None:
    input_type, extra = info
    if isinstance(input_type, list):
        options = input_type
    elif input_type == "COMBO":
        options = extra.get("options", [])
    else:
        return None
    if (
        not isinstance(options, list)
        or (class_type, name) in api_workflows.INPUT_IMAGE_INPUTS
        or "remote" in extra
        or any(isinstance(k, str) and k.endswith("_upload") and v for k, v in extra.items())
    ):
        return None
    if extra.get("multiselect") and isinstance(value, list):
        wrong = [v for v in value if v not in options]
    else:
        wrong = [value] if value not in options else []
    if not wrong:
        return None
    shown, config = (
        (str(options), info)
        if len(options) <= VALUE_LIST_SHOWN
        else (f"(list of length {len(options)})", None)
    )
    return _error(
        "value_not_in_list",
        "Value not in list",
        f"{name}: '{value}' not in {shown}",
        {"input_name": name, "input_config": config, "received_value": value},
    )


def _error(kind: str, message: str, details: str = "", extra_info: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}
