"""Who may jump the queue, and how many tasks a user may keep queued (issue 15)."""

from http import HTTPStatus

import pytest

from generation.models import Task

pytestmark = pytest.mark.django_db

URL = "/api/v1/tasks/"


def submit(client, **fields):
    return client.post(URL, {"prompt": "a red fox", "width": 64, "height": 64, **fields}, format="json")


@pytest.mark.parametrize("priority", [1, 1000])
def test_only_staff_may_set_a_priority_above_the_default(api, staff_api, worker, priority):
    refused = submit(api, priority=priority)
    assert refused.status_code == HTTPStatus.FORBIDDEN
    body = refused.json()
    assert body["error"] == "priority_forbidden" and "priority" in body["fields"]
    assert not Task.objects.exists()
    assert submit(staff_api, priority=priority).status_code == HTTPStatus.CREATED
    assert Task.objects.get().priority == priority


def test_anyone_may_lower_their_priority(api, worker):
    assert submit(api, priority=-5).status_code == HTTPStatus.CREATED
    assert submit(api, priority=0).status_code == HTTPStatus.CREATED


def test_queued_tasks_per_user_are_capped_with_a_429(api, staff_api, worker, settings):
    settings.T2I = {**settings.T2I, "MAX_QUEUED_PER_USER": 2}
    assert [submit(api).status_code for _ in range(2)] == [HTTPStatus.CREATED] * 2
    refused = submit(api)
    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert refused.json()["error"] == "queue_full" and "2" in refused.json()["detail"]
    assert refused["Retry-After"] == "5"
    assert Task.objects.count() == 2
    assert submit(staff_api).status_code == HTTPStatus.CREATED  # per user: others are not blocked
    Task.objects.filter(owner__username="alice").update(status=Task.Status.CANCELLED)  # no longer queued
    assert submit(api).status_code == HTTPStatus.CREATED  # only queued tasks count
