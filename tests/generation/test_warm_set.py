"""The warm set: what the daemon says its ComfyUI has loaded, stored on the worker for placement."""

from http import HTTPStatus

import pytest

from tests.conftest import CHECKPOINT
from workers_app.models import Worker

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/v1/worker/lease", "/api/v1/worker/heartbeat"])
def test_leases_and_heartbeats_store_the_reported_warm_checkpoint(wapi, worker, path):
    assert wapi.post(path, {"warm_checkpoint": CHECKPOINT}, format="json").status_code < 300
    assert Worker.objects.get(pk=worker.pk).warm_checkpoint == CHECKPOINT
    assert wapi.post(path, {}, format="json").status_code < 300  # not reported: kept
    assert Worker.objects.get(pk=worker.pk).warm_checkpoint == CHECKPOINT
    assert wapi.post(path, {"warm_checkpoint": ""}, format="json").status_code < 300  # its ComfyUI restarted
    assert Worker.objects.get(pk=worker.pk).warm_checkpoint == ""


@pytest.mark.parametrize("path", ["/api/v1/worker/lease", "/api/v1/worker/heartbeat"])
@pytest.mark.parametrize("bad", ["x" * 256, ["a"], {"a": 1}])
def test_a_bad_warm_checkpoint_is_a_400_naming_the_field(wapi, worker, path, bad):
    response = wapi.post(path, {"warm_checkpoint": bad}, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "warm_checkpoint" in response.json()["fields"]
    assert Worker.objects.get(pk=worker.pk).warm_checkpoint == ""
