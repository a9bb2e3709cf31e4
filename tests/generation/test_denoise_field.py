"""The denoise field end to end: submitted, checked, stored, answered and bound into the workflow."""

from http import HTTPStatus

import pytest

from generation import services
from generation.models import WorkflowTemplate

pytestmark = pytest.mark.django_db


def test_denoise_is_submitted_answered_and_bound(api, worker):
    template = WorkflowTemplate.objects.get(name="sd15-txt2img")
    template.bindings = {**template.bindings, "denoise": ["3", "denoise"]}
    template.save()
    response = api.post("/api/v1/tasks/", {"prompt": "a fox", "denoise": 0.6}, format="json")
    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert response.json()["denoise"] == 0.6
    lease = services.task_lease_next(worker=worker)
    assert lease.workflow["3"]["inputs"]["denoise"] == 0.6


def test_denoise_out_of_range_names_the_field(api):
    response = api.post("/api/v1/tasks/", {"prompt": "a fox", "denoise": 1.5}, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "denoise" in response.json()["fields"]
