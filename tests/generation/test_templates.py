"""Workflow templates: the API (create, list, detail), validation (API and the model's clean(), which the
admin uses), and tasks built from a template."""

import copy
from http import HTTPStatus

import pytest
from django.core.exceptions import ValidationError

from generation.models import Task, WorkflowTemplate
from generation.workflows import NOISE_TEST_BINDINGS, NOISE_TEST_WORKFLOW

pytestmark = pytest.mark.django_db

TEMPLATES = "/api/v1/templates/"


def noise(**node_changes) -> dict:
    """The shipped noise workflow with some nodes replaced (None removes one)."""
    workflow = copy.deepcopy(NOISE_TEST_WORKFLOW)
    for node_id, node in node_changes.items():
        if node is None:
            workflow.pop(node_id)
        else:
            workflow[node_id] = node
    return workflow


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t2i"}}
BAD_TEMPLATES = [
    pytest.param([NOISE_TEST_WORKFLOW], NOISE_TEST_BINDINGS, "workflow", id="workflow-is-a-list"),
    pytest.param("SaveImage", {}, "workflow", id="workflow-is-a-string"),
    pytest.param({}, {}, "workflow", id="workflow-empty"),
    pytest.param(noise(**{"2": "ImageAddNoise"}), {}, "workflow", id="node-not-an-object"),
    pytest.param(
        noise(**{"2": {"inputs": {"image": ["1", 0]}}}), {}, "workflow", id="node-without-class-type"
    ),
    pytest.param(
        noise(**{"2": {"class_type": "", "inputs": {}}}), {}, "workflow", id="node-with-empty-class-type"
    ),
    pytest.param(
        noise(**{"2": {"class_type": "ImageAddNoise", "inputs": ["image"]}}),
        {},
        "workflow",
        id="inputs-not-object",
    ),
    pytest.param(
        noise(**{"3": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}),
        {},
        "workflow",
        id="link-to-missing-node",
    ),
    pytest.param(noise(**{"3": None}), {"width": ["1", "width"]}, "workflow", id="no-output-node"),
    pytest.param(
        noise(**{"1": {"class_type": "ImageAddNoise", "inputs": {"image": ["2", 0], "seed": 0}}}),
        {},
        "workflow",
        id="cycle",
    ),
    pytest.param(
        NOISE_TEST_WORKFLOW, NOISE_TEST_BINDINGS | {"width": ["9", "width"]}, "bindings", id="missing-node"
    ),
    pytest.param(
        NOISE_TEST_WORKFLOW, NOISE_TEST_BINDINGS | {"width": ["1", "wide"]}, "bindings", id="missing-input"
    ),
    pytest.param(NOISE_TEST_WORKFLOW, {"prompt": ["2", "image"]}, "bindings", id="binding-to-a-link-input"),
    pytest.param(NOISE_TEST_WORKFLOW, {"colour": ["1", "color"]}, "bindings", id="unknown-bindable-field"),
    pytest.param(NOISE_TEST_WORKFLOW, {"width": "1.width"}, "bindings", id="binding-not-a-pair"),
    pytest.param(NOISE_TEST_WORKFLOW, {"width": ["1", 2]}, "bindings", id="binding-not-strings"),
    pytest.param(NOISE_TEST_WORKFLOW, [["1", "width"]], "bindings", id="bindings-not-an-object"),
]


def test_create_list_and_show_a_template(staff_api, api):
    body = {
        "name": "noise-small",
        "description": "Smaller noise",
        "workflow": noise(**{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}}),
        "bindings": {"width": ["1", "width"], "height": ["1", "height"]},
    }

    created = staff_api.post(TEMPLATES, body, format="json")

    assert created.status_code == HTTPStatus.CREATED, created.json()
    assert created.json()["name"] == "noise-small"
    assert created.json()["node_classes"] == ["EmptyImage", "ImageAddNoise", "SaveImage"]
    stored = WorkflowTemplate.objects.get(name="noise-small")
    assert (stored.workflow, stored.bindings, stored.description) == (
        body["workflow"],
        body["bindings"],
        "Smaller noise",
    )
    names = [t["name"] for t in api.get(TEMPLATES).json()]
    assert names == ["noise-small", "noise-test", "sd15-txt2img"]
    detail = api.get(f"{TEMPLATES}noise-test/")
    assert detail.status_code == HTTPStatus.OK
    assert (
        detail.json()["workflow"] == NOISE_TEST_WORKFLOW and detail.json()["bindings"] == NOISE_TEST_BINDINGS
    )
    missing = api.get(f"{TEMPLATES}no-such-template/")
    assert missing.status_code == HTTPStatus.NOT_FOUND and missing.json()["error"] == "not_found"


@pytest.mark.parametrize(("workflow", "bindings", "field"), BAD_TEMPLATES)
def test_the_api_refuses_a_bad_template(staff_api, workflow, bindings, field):
    count = WorkflowTemplate.objects.count()

    response = staff_api.post(
        TEMPLATES, {"name": "bad", "workflow": workflow, "bindings": bindings}, format="json"
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    body = response.json()
    assert body["error"] == "invalid" and body["fields"][field], body
    assert WorkflowTemplate.objects.count() == count


@pytest.mark.parametrize(("workflow", "bindings", "field"), BAD_TEMPLATES)
def test_the_model_clean_refuses_a_bad_template(workflow, bindings, field):
    template = WorkflowTemplate(name="bad", workflow=workflow, bindings=bindings)

    with pytest.raises(ValidationError) as refused:
        template.clean()

    assert refused.value.message_dict[field]


def test_the_model_clean_accepts_the_shipped_templates():
    for template in WorkflowTemplate.objects.all():
        template.full_clean()
    assert WorkflowTemplate.objects.count() == 2


def test_a_noise_test_task_binds_size_seed_and_prefix_and_no_checkpoint(api, wapi):
    response = api.post(
        "/api/v1/tasks/",
        {
            "prompt": "noise",
            "template": "noise-test",
            "width": 128,
            "height": 96,
            "seed": 42,
            "batch_size": 2,
        },
        format="json",
    )
    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert response.json()["template"] == "noise-test" and response.json()["checkpoint"] == ""
    task = Task.objects.get(public_id=response.json()["id"])
    assert task.template.name == "noise-test" and task.checkpoint == ""

    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()

    workflow = job["workflow"]
    assert workflow["1"]["inputs"] == {"width": 128, "height": 96, "batch_size": 2, "color": 3368601}
    assert workflow["2"]["inputs"] == {"image": ["1", 0], "seed": 42, "strength": 0.5}
    assert workflow["3"]["inputs"]["filename_prefix"] == job["filename_prefix"]
    assert job["filename_prefix"] == f"t2i/{task.public_id}_a1"
    assert job["checkpoint"] == ""
    assert {node["class_type"] for node in workflow.values()} == {"EmptyImage", "ImageAddNoise", "SaveImage"}
    assert WorkflowTemplate.objects.get(name="noise-test").workflow == NOISE_TEST_WORKFLOW  # not changed


def test_a_template_made_through_the_api_runs(staff_api, api, wapi):
    workflow = noise(
        **{"2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.9}}}
    )
    staff_api.post(
        TEMPLATES,
        {"name": "strong-noise", "workflow": workflow, "bindings": {"seed": ["2", "seed"]}},
        format="json",
    )

    submitted = api.post(
        "/api/v1/tasks/", {"prompt": "x", "template": "strong-noise", "seed": 7}, format="json"
    )
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()

    assert submitted.status_code == HTTPStatus.CREATED
    assert job["task_id"] == submitted.json()["id"]
    assert job["workflow"]["2"]["inputs"] == {"image": ["1", 0], "seed": 7, "strength": 0.9}
    assert job["workflow"]["1"]["inputs"]["width"] == 512  # unbound: the template's own value


@pytest.mark.parametrize("path", ["/api/v1/tasks/", "/generate"])
def test_an_unknown_template_is_refused(api, path):
    response = api.post(path, {"prompt": "x", "template": "does-not-exist"}, format="json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    body = response.json()
    assert body["error"] == "unknown_template"
    assert "does-not-exist" in body["fields"]["template"][0]
    assert "noise-test" in body["fields"]["template"][0] and "sd15-txt2img" in body["fields"]["template"][0]
    assert not Task.objects.exists()
