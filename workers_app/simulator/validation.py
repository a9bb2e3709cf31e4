"""Prompt validation with the real server's rules and error shapes (ComfyUI 0.3.64 `execution.py`).

Runs against the simulator's own /object_info. Quirks kept on purpose: only output nodes and what they
depend on are validated; undeclared inputs are ignored; literal values are converted in place (so "16" is
stored as 16); a missing linked node is a KeyError reported as `exception_during_validation` (directly
from an output) or `exception_during_inner_validation` (filed under the upstream node); `error.details`
lists only the output nodes' own errors; a prompt whose `prompt` is not an object raises (HTTP 500).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from .nodes import CUSTOM_VALIDATION

ObjectInfo = dict[str, dict[str, Any]]
Validated = dict[str, tuple[bool, list[dict[str, Any]], str]]


@dataclass
class ValidationResult:
    """`ok` False means HTTP 400 with `error`; `outputs` are the output node ids that passed."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)


def full_type_name(klass: type) -> str:
    """`KeyError` for builtins, `module.Name` otherwise (e.g. `torch.OutOfMemoryError`)."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


def input_info(class_info: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any] | None]:
    """(input_type, category, extra_info) of one declared input, or (None, None, None)."""
    declared = class_info["input"]
    for category in ("required", "optional", "hidden"):
        spec = declared.get(category, {}).get(name)
        if spec is not None:
            if category == "hidden":
                return spec, category, {}
            return spec[0], category, (spec[1] if len(spec) > 1 else {})
    return None, None, None


def declared_inputs(class_info: dict[str, Any]) -> list[str]:
    """Required then optional input names, in declaration order."""
    declared = class_info["input"]
    return [*declared.get("required", {}), *declared.get("optional", {})]


def _types_match(received_type: Any, input_type: Any) -> bool:
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    expected = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in expected:
        return True
    return bool(received & expected)


def _error(kind: str, message: str, details: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def validate_inputs(
    prompt: dict[str, Any],
    object_info: ObjectInfo,
    unique_id: str,
    validated: Validated,
    dirs: dict[str, str] | None = None,
) -> tuple:
    """Validates one node and, recursively, the nodes it links to. May raise (KeyError, IndexError...).
    `dirs` (input, temp, output folders) serve the VALIDATE_INPUTS of the classes that have one."""
    if unique_id in validated:
        return validated[unique_id]
    inputs = prompt[unique_id]["inputs"]
    class_type = prompt[unique_id]["class_type"]
    class_info = object_info[class_type]
    errors: list[dict[str, Any]] = []
    valid = True
    custom_inputs, custom_check = CUSTOM_VALIDATION.get(class_type, (frozenset(), None))

    for name in declared_inputs(class_info):
        input_type, category, extra_info = input_info(class_info, name)
        assert extra_info is not None
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error("required_input_missing", "Required input is missing", name, {"input_name": name})
                )
            continue
        val = inputs[name]
        info = [input_type, extra_info]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        {"input_name": name, "input_config": info, "received_value": val},
                    )
                )
                continue
            o_id = val[0]
            o_class_type = prompt[o_id]["class_type"]
            received_type = tuple(object_info[o_class_type]["output"])[val[1]]
            if not _types_match(received_type, input_type):
                errors.append(
                    _error(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                        {
                            "input_name": name,
                            "input_config": info,
                            "received_type": received_type,
                            "linked_node": val,
                        },
                    )
                )
                continue
            try:
                r = validate_inputs(prompt, object_info, o_id, validated, dirs)
                if r[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                validated[o_id] = (
                    False,
                    [
                        _error(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            str(ex),
                            {
                                "input_name": name,
                                "input_config": info,
                                "exception_message": str(ex),
                                "exception_type": full_type_name(type(ex)),
                                "traceback": traceback.format_tb(sys.exc_info()[2]),
                                "linked_node": val,
                            },
                        )
                    ],
                    o_id,
                )
                continue
        else:
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[name] = val
                converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(
                    input_type if isinstance(input_type, str) else ""
                )
                if converter is not None:
                    val = converter(val)
                    inputs[name] = val
            except Exception as ex:
                errors.append(
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {input_type} value",
                        f"{name}, {val}, {ex}",
                        {
                            "input_name": name,
                            "input_config": info,
                            "received_value": val,
                            "exception_message": str(ex),
                        },
                    )
                )
                continue
            if "min" in extra_info and val < extra_info["min"]:
                errors.append(
                    _error(
                        "value_smaller_than_min",
                        "Value {} smaller than min of {}".format(val, extra_info["min"]),
                        name,
                        {"input_name": name, "input_config": info, "received_value": val},
                    )
                )
                continue
            if "max" in extra_info and val > extra_info["max"]:
                errors.append(
                    _error(
                        "value_bigger_than_max",
                        "Value {} bigger than max of {}".format(val, extra_info["max"]),
                        name,
                        {"input_name": name, "input_config": info, "received_value": val},
                    )
                )
                continue
            if isinstance(input_type, list) and val not in input_type and name not in custom_inputs:
                input_config: Any = info
                if len(input_type) > 20:
                    list_info = f"(list of length {len(input_type)})"
                    input_config = None
                else:
                    list_info = str(input_type)
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{val}' not in {list_info}",
                        {"input_name": name, "input_config": input_config, "received_value": val},
                    )
                )
                continue

    if custom_check is not None and dirs is not None:
        checked = {name: inputs[name] for name in custom_inputs if name in inputs}
        ret = custom_check(checked, dirs)
        if ret is not True:
            for name in checked:
                details = name if ret is False else f"{name} - {ret}"
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        details,
                        {"input_name": name},
                    )
                )

    ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
    validated[unique_id] = ret
    return ret


def validate_prompt(
    prompt: Any,
    object_info: ObjectInfo,
    partial_execution_list: list[str] | None = None,
    dirs: dict[str, str] | None = None,
) -> ValidationResult:
    """The whole-prompt check of POST /prompt. Raises for a prompt that is not a mapping (HTTP 500)."""
    outputs: dict[str, None] = {}  # ordered set
    for x in prompt:
        if "class_type" not in prompt[x]:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{x}'",
                    {},
                ),
            )
        class_type = prompt[x]["class_type"]
        class_info = object_info.get(class_type) if isinstance(class_type, str) else None
        if class_info is None:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{x}'",
                    {},
                ),
            )
        if class_info.get("output_node") is True and (
            partial_execution_list is None or x in partial_execution_list
        ):
            outputs[x] = None

    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs", "", {}))

    good_outputs: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: Validated = {}
    for o in outputs:
        try:
            valid, reasons, _ = validate_inputs(prompt, object_info, o, validated, dirs)
        except Exception as ex:
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    {
                        "exception_type": full_type_name(type(ex)),
                        "traceback": traceback.format_tb(sys.exc_info()[2]),
                    },
                )
            ]
            validated[o] = (False, reasons, o)
        if valid is True:
            good_outputs.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            # Nodes that are invalid only because an upstream node is invalid carry no reasons: not listed.
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    if not good_outputs:
        details = "\n".join(
            f"{error['message']}: {error['details']}" for _, errors in failed for error in errors
        )
        return ValidationResult(
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}),
            [],
            node_errors,
        )
    return ValidationResult(True, None, good_outputs, node_errors)
