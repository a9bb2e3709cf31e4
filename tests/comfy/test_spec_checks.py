"""Submit-time checks against the workers' whole /object_info (generation.spec_checks): ComfyUI's own
refusals, in its shapes, at POST /comfy/prompt and the REST workflow submit, when every worker that could
run the workflow reported its spec."""

import copy
import json
from http import HTTPStatus

import pytest

from generation import spec_checks
from generation.models import Task
from tests.comfy.specs import TRACES, give, subset
from tests.comfy.workflows import NOISE, SD15
from tests.conftest import make_worker

pytestmark = pytest.mark.django_db


def trace_cases() -> list[tuple[str, dict, dict]]:
    """(case, prompt, ComfyUI's 400 body) of validation_errors.jsonl that a spec can tell."""
    cases, note, request = [], "", None
    for line in (TRACES / "validation_errors.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["dir"] == "note":
            note = entry["text"]
        elif entry["dir"] == "http_request" and entry["path"] == "/prompt":
            request = entry.get("body")
        elif (
            entry["dir"] == "http_response"
            and entry["path"] == "/prompt"
            and entry["status"] == 400
            and entry["body"]["node_errors"]
            and "linked to a node id" not in note  # missing nodes: api_workflows answers
            and "index" not in note  # an output index out of range: left to the worker
        ):
            cases.append((note, request["prompt"], entry["body"]))
    return cases


CASES = trace_cases()


def test_the_traces_give_the_cases():
    assert len(CASES) == 6, [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c[0][:40] for c in CASES])
def test_each_refusal_is_comfyuis_own(case):
    _, workflow, body = case
    problem = spec_checks.check(copy.deepcopy(workflow), subset(checkpoints=()))
    assert problem is not None
    assert {"error": problem.error, "node_errors": problem.node_errors} == body


def test_a_workflow_comfyui_accepts_passes():
    assert spec_checks.check(copy.deepcopy(NOISE), subset()) is None
    assert spec_checks.check(copy.deepcopy(SD15), subset()) is None


def test_links_satisfy_inputs_and_optional_hidden_and_unknown_inputs_are_not_required():
    spec = subset()
    spec["ImageAddNoise"]["input"]["optional"] = {"mask": ["MASK", {}], "level": ["INT", {"min": 1}]}
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["seed"] = ["9", 0]  # a widget turned into an input, fed by a link
    workflow["9"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    workflow["2"]["inputs"]["whatever"] = "ignored"
    workflow["3"]["inputs"].pop("filename_prefix")
    problem = spec_checks.check(workflow, spec)
    # SaveImage's filename_prefix is required; the link into seed is checked for its type, not its value
    assert [e["type"] for n in problem.node_errors.values() for e in n["errors"]] == [
        "return_type_mismatch",
        "required_input_missing",
    ]
    assert problem.error["details"] == "Required input is missing: filename_prefix"
    workflow["9"] = {"class_type": "KSampler", "inputs": {}}  # not reached by an output: never checked
    workflow["2"]["inputs"]["seed"] = 5
    workflow["3"]["inputs"]["filename_prefix"] = "x"
    workflow["2"]["inputs"]["level"] = 0  # an optional input, given: checked
    problem = spec_checks.check(workflow, spec)
    assert list(problem.node_errors) == ["2"]
    assert problem.node_errors["2"]["errors"][0]["type"] == "value_smaller_than_min"


def test_combo_choices_of_any_input_new_style_and_upload_lists():
    spec = subset()
    workflow = copy.deepcopy(SD15)
    workflow["3"]["inputs"]["sampler_name"] = "nope"
    error = spec_checks.check(workflow, spec).node_errors["3"]["errors"][0]
    assert error["details"] == "sampler_name: 'nope' not in (list of length 42)"
    assert error["extra_info"]["input_config"] is None
    spec["KSampler"]["input"]["required"]["sampler_name"] = [
        "COMBO",
        {"options": ["euler"], "multiselect": False},
    ]
    error = spec_checks.check(workflow, spec).node_errors["3"]["errors"][0]
    assert error["details"] == "sampler_name: 'nope' not in ['euler']"
    spec["KSampler"]["input"]["required"]["sampler_name"] = [[], {"image_upload": True}]
    assert spec_checks.check(workflow, spec) is None  # its node checks the file itself


def test_the_front_door_refuses_what_every_capable_worker_would(api, worker):
    give(worker, subset())
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["strength"] = 1.5
    answer = api.post("/comfy/prompt", {"prompt": workflow}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    (error,) = answer.json()["node_errors"]["2"]["errors"]
    assert error["type"] == "value_bigger_than_max" and error["message"] == "Value 1.5 bigger than max of 1.0"
    assert answer.json()["node_errors"]["2"]["dependent_outputs"] == ["3"]
    assert not Task.objects.exists()


def test_the_rest_submit_names_the_problem(api, worker):
    give(worker, subset())
    workflow = copy.deepcopy(NOISE)
    del workflow["2"]["inputs"]["seed"]
    answer = api.post("/api/v1/tasks/", {"workflow": workflow}, format="json")
    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "Required input is missing" in json.dumps(answer.json()) and not Task.objects.exists()


def test_one_worker_that_accepts_is_enough(api, worker):
    give(worker, subset())
    newer, _ = make_worker("gpu-2")
    wider = subset()
    wider["ImageAddNoise"]["input"]["required"]["strength"][1]["max"] = 2.0
    give(newer, wider)
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["strength"] = 1.5
    assert api.post("/comfy/prompt", {"prompt": workflow}, format="json").status_code == HTTPStatus.OK


def test_no_check_while_a_capable_worker_has_not_reported_its_spec(api, worker):
    give(worker, subset())
    make_worker("old-daemon")  # reports node classes and model files only
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["strength"] = 1.5
    assert api.post("/comfy/prompt", {"prompt": workflow}, format="json").status_code == HTTPStatus.OK


def test_a_spec_the_scheduler_does_not_hold_yet_checks_nothing(api, worker):
    give(worker, subset(), stored=False)
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["strength"] = 1.5
    assert api.post("/comfy/prompt", {"prompt": workflow}, format="json").status_code == HTTPStatus.OK


def test_existing_checks_answer_first(api, worker):
    give(worker, subset())
    workflow = copy.deepcopy(SD15)
    workflow["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    body = api.post("/comfy/prompt", {"prompt": workflow}, format="json").json()
    (error,) = body["node_errors"]["4"]["errors"]
    assert (
        error["type"] == "value_not_in_list"
        and error["extra_info"]["received_value"] == "missing.safetensors"
    )


def test_odd_specs_and_values_never_raise():
    spec = subset()
    spec["ImageAddNoise"]["output"] = {"weird": True}
    spec["EmptyImage"]["input"]["required"]["width"] = ["INT", {"min": "x"}]
    workflow = copy.deepcopy(NOISE)
    workflow["2"]["inputs"]["strength"] = {"__value__": [1]}
    workflow["3"]["inputs"]["images"] = ["2", "0"]
    workflow["1"]["inputs"]["color"] = 10**400
    problem = spec_checks.check(workflow, spec)
    assert {n: [e["type"] for e in entry["errors"]] for n, entry in problem.node_errors.items()} == {
        "1": ["value_bigger_than_max"],  # color; width's "min" cannot be compared: left to the worker
        "2": ["invalid_input_type"],  # float([1])
    }
