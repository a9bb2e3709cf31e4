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


def test_lora_choices_are_the_configured_files_and_others_are_value_not_in_list():
    info = load_object_info(("m.safetensors",), ("style.safetensors",))
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "10": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["4", 0],
                "clip": ["4", 1],
                "lora_name": "other.safetensors",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["10", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["6", 0],
                "latent_image": ["5", 0],
                "seed": 1,
                "steps": 1,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "l"}},
    }
    result = validate_prompt(prompt, info)
    [error] = result.node_errors["10"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "lora_name: 'other.safetensors' not in ['style.safetensors']"
    prompt["10"]["inputs"]["lora_name"] = "style.safetensors"
    assert validate_prompt(prompt, info).ok
