"""Whole workflows: shape checks, requirements and matching (generation.api_workflows), pure."""

import copy

import pytest

from generation import api_workflows
from generation.api_workflows import Inventory, WorkflowProblem
from tests.comfy.workflows import NOISE, SD15, two_outputs
from tests.conftest import CHECKPOINT, capabilities

FARM = api_workflows.inventory([capabilities()])


def problem_of(workflow, farm: Inventory = FARM) -> WorkflowProblem:
    with pytest.raises(WorkflowProblem) as caught:
        api_workflows.check_against(api_workflows.check_shape(workflow), farm)
    return caught.value


def test_a_valid_workflow_passes():
    api_workflows.check_against(api_workflows.check_shape(copy.deepcopy(SD15)), FARM)


@pytest.mark.parametrize("bad", [[], "x", 3, None])
def test_a_prompt_that_is_not_an_object_is_invalid_prompt(bad):
    assert problem_of(bad).error["type"] == "invalid_prompt"


def test_an_empty_prompt_has_no_outputs():
    assert problem_of({}).error["type"] == "prompt_no_outputs"


def test_a_node_without_class_type_is_named():
    problem = problem_of({"1": {"inputs": {}}})
    assert problem.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#1'",
        "extra_info": {},
    }


def test_an_unknown_node_class_reads_as_comfyui_says_it():
    workflow = {**NOISE, "9": {"class_type": "NoSuchNode", "inputs": {}}}
    problem = problem_of(workflow)
    assert problem.error["message"] == "Cannot execute because node NoSuchNode does not exist."
    assert problem.error["details"] == "Node ID '#9'"


def test_unknown_classes_pass_while_no_worker_has_registered():
    workflow = {**NOISE, "9": {"class_type": "NoSuchNode", "inputs": {}}}
    api_workflows.check_against(workflow, Inventory())


def test_no_output_node():
    assert problem_of({"1": NOISE["1"]}).error["type"] == "prompt_no_outputs"


def test_a_link_to_a_missing_node_is_a_node_error_with_its_dependent_output():
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["image"] = ["99", 0]
    problem = problem_of(workflow)
    assert problem.error["type"] == "prompt_outputs_failed_validation"
    entry = problem.node_errors["2"]
    assert entry["class_type"] == "ImageAddNoise" and entry["dependent_outputs"] == ["3"]
    assert entry["errors"][0]["type"] == "exception_during_validation"
    assert entry["errors"][0]["details"] == "'99'"


def test_a_cycle_is_refused():
    workflow = copy.deepcopy(NOISE)
    workflow["1"] = {"class_type": "ImageAddNoise", "inputs": {"image": ["2", 0], "seed": 1, "strength": 0.1}}
    problem = problem_of(workflow)
    [entry] = problem.node_errors.values()
    assert entry["errors"][0]["type"] == "dependency_cycle_detected"


def test_too_many_nodes_and_too_many_bytes():
    many = {str(i): {"class_type": "SaveImage", "inputs": {}} for i in range(api_workflows.MAX_NODES + 1)}
    assert "at most" in problem_of(many).error["message"]
    huge = copy.deepcopy(NOISE)
    huge["3"]["inputs"]["filename_prefix"] = "x" * (api_workflows.MAX_BYTES + 1)
    assert "larger than" in problem_of(huge).error["message"]


def test_nul_characters_are_refused():
    workflow = copy.deepcopy(NOISE)
    workflow["3"]["inputs"]["filename_prefix"] = "a\x00b"
    assert problem_of(workflow).error["type"] == "invalid_prompt"


def test_a_model_no_worker_has_is_value_not_in_list_in_comfyuis_shape():
    workflow = copy.deepcopy(SD15)
    workflow["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    problem = problem_of(workflow)
    error = problem.node_errors["4"]["errors"][0]
    assert error == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": f"ckpt_name: 'missing.safetensors' not in ['{CHECKPOINT}']",
        "extra_info": {
            "input_name": "ckpt_name",
            "input_config": [[CHECKPOINT], {}],
            "received_value": "missing.safetensors",
        },
    }
    assert problem.node_errors["4"]["dependent_outputs"] == ["9"]


def test_reported_model_inputs_are_checked_and_required():
    caps = {**capabilities(), "model_inputs": {"LoraLoader": {"lora_name": ["a.safetensors"]}}}
    caps["node_classes"] = [*caps["node_classes"], "LoraLoader"]
    farm = api_workflows.inventory([caps])
    workflow = copy.deepcopy(NOISE)
    workflow["5"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "b.safetensors"}}
    assert problem_of(workflow, farm).node_errors["5"]["errors"][0]["type"] == "value_not_in_list"
    workflow["5"]["inputs"]["lora_name"] = "a.safetensors"
    needs = api_workflows.requirements(workflow, farm)
    assert ("LoraLoader", "lora_name", "a.safetensors") in needs.models
    assert api_workflows.missing_on(needs, caps) is None
    without = {**caps, "model_inputs": {"LoraLoader": {"lora_name": []}}}
    assert api_workflows.missing_on(needs, without) == "no lora_name 'a.safetensors'"


def test_requirements_name_every_node_class_and_the_checkpoint():
    needs = api_workflows.requirements(SD15, FARM)
    assert set(needs.node_classes) == {n["class_type"] for n in SD15.values()}
    assert needs.models == (("CheckpointLoaderSimple", "ckpt_name", CHECKPOINT),)
    assert needs.checkpoint == CHECKPOINT
    assert api_workflows.Requirements.from_json(needs.as_json()) == needs
    assert (
        api_workflows.missing_on(needs, capabilities(checkpoints=["other.ckpt"]))
        == f"no ckpt_name {CHECKPOINT!r}"
    )
    assert api_workflows.missing_on(needs, capabilities(nodes=["SaveImage"])).startswith("no node class")


def test_equal_needs_share_a_key():
    a = api_workflows.requirements(NOISE, FARM)
    b = api_workflows.requirements(copy.deepcopy(NOISE), FARM)
    assert a.key == b.key != api_workflows.requirements(SD15, FARM).key


def test_each_save_image_writes_under_its_own_prefix():
    built = api_workflows.with_prefix(two_outputs(), "t2i/abc_a1")
    assert built["3"]["inputs"]["filename_prefix"] == "t2i/abc_a1_n3"
    assert built["10"]["inputs"]["filename_prefix"] == "t2i/abc_a1_n10"
    assert two_outputs()["3"]["inputs"]["filename_prefix"] == "mine"  # the stored one is not changed
