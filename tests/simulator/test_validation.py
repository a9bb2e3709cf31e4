"""Prompt validation rules not covered by the validation_errors trace (pure functions, no server)."""

from __future__ import annotations

import pytest

from workers_app.simulator.nodes import load_object_info
from workers_app.simulator.validation import validate_prompt

from .workflows import CKPT, noise_workflow, sd15_workflow

OBJECT_INFO = load_object_info((CKPT,))


def only_error(prompt: dict) -> dict:
    result = validate_prompt(prompt, OBJECT_INFO)
    assert not result.ok
    ((node_id, entry),) = result.node_errors.items()
    (error,) = entry["errors"]
    return {"node": node_id, **error}


def test_long_combo_lists_are_summarised() -> None:
    prompt = sd15_workflow()
    prompt["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    error = only_error(prompt)
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "sampler_name: 'no_such_sampler' not in (list of length 42)"
    assert error["extra_info"]["input_config"] is None


def test_short_combo_lists_are_listed() -> None:
    prompt = sd15_workflow()
    prompt["3"]["inputs"]["scheduler"] = "weird"
    error = only_error(prompt)
    assert error["details"].startswith("scheduler: 'weird' not in ['simple', 'sgm_uniform', ")
    assert error["extra_info"]["input_config"][0][0] == "simple"


def test_a_link_of_the_wrong_length_is_a_bad_linked_input() -> None:
    prompt = noise_workflow()
    prompt["3"]["inputs"]["images"] = ["2", 0, 1]
    error = only_error(prompt)
    assert (error["node"], error["type"], error["details"]) == ("3", "bad_linked_input", "images")


def test_values_are_converted_in_place() -> None:
    prompt = noise_workflow()
    prompt["1"]["inputs"].update(width="16", color=255.0)
    prompt["2"]["inputs"]["strength"] = "0.25"
    result = validate_prompt(prompt, OBJECT_INFO)
    assert result.ok
    assert (prompt["1"]["inputs"]["width"], prompt["2"]["inputs"]["strength"]) == (16, 0.25)
    assert result.outputs == ["3"]


def test_nodes_outside_the_outputs_are_not_validated() -> None:
    prompt = noise_workflow()
    prompt["9"] = {"class_type": "EmptyImage", "inputs": {"width": -5}}
    assert validate_prompt(prompt, OBJECT_INFO).ok


def test_one_bad_output_is_reported_with_the_good_one_queued() -> None:
    prompt = noise_workflow()
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    result = validate_prompt(prompt, OBJECT_INFO)
    assert result.ok
    assert result.outputs == ["3"]
    assert result.node_errors["4"]["errors"][0]["type"] == "required_input_missing"


def test_a_prompt_that_is_not_a_mapping_raises() -> None:
    with pytest.raises(TypeError):
        validate_prompt([1, 2, 3], OBJECT_INFO)
