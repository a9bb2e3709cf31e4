"""The status read (selectors.task_status_for, with its prefetches) gives the same TaskOutput as plain lazy
ORM access to the same task, in every state, within its query budget."""

import json
import uuid
from http import HTTPStatus

import pytest
from django.test import RequestFactory
from rest_framework.request import Request

from generation import selectors, services
from generation.exceptions import NotFound
from generation.models import Task, TaskAttempt
from generation.serializers import TaskOutput
from tests.conftest import make_worker
from tests.factories import TaskFactory
from tests.web.conftest import complete_next, completed

pytestmark = pytest.mark.django_db


def as_json(data: dict) -> dict:
    return json.loads(json.dumps(data))


def expected(task: Task) -> dict:
    """What the REST detail returned before the status read had its own path."""
    request = Request(RequestFactory().get("/"))
    return as_json(TaskOutput(Task.objects.get(pk=task.pk), context={"request": request}).data)


def fast(task: Task, user) -> dict:
    request = Request(RequestFactory().get("/"))
    task = selectors.task_status_for(user, task.public_id)
    return as_json(TaskOutput(task, context={"request": request}).data)


def test_queued_task_matches_task_output_with_its_queue_position(user):
    TaskFactory(owner=user, prompt="first")
    urgent = TaskFactory(owner=user, prompt="urgent", priority=5)
    task = TaskFactory(owner=user, prompt="second")
    assert fast(task, user) == expected(task)
    assert fast(task, user)["queue_position"] == 3
    assert fast(urgent, user)["queue_position"] == 1


def test_queue_position_is_the_leasing_order(user):
    tasks = [
        TaskFactory(owner=user, prompt=f"t{i}", priority=p) for i, p in enumerate([0, 2, -1, 2, 0, 1, -1])
    ]
    positions = [selectors.task_queue_position(task) for task in tasks]
    assert positions == [4, 1, 6, 2, 5, 3, 7]


def test_running_task_with_attempt_history_matches_task_output(user, worker):
    task = TaskFactory(owner=user, prompt="runs", steps=4)
    lease = services.task_lease_next(worker=worker)
    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=lease.attempt.lease_token,
        code="comfyui_lost",
        message="gone",
        retryable=True,
    )
    lease = services.task_lease_next(worker=worker)
    services.task_start(worker=worker, task_id=task.public_id, lease_token=lease.attempt.lease_token)
    services.task_report_progress(
        worker=worker, task_id=task.public_id, lease_token=lease.attempt.lease_token, value=1, maximum=3
    )
    body = fast(task, user)
    assert body == expected(task)
    assert body["status"] == "running" and body["worker"] == worker.name
    assert [a["outcome"] for a in body["attempt_history"]] == ["failed", "active"]


def test_completed_batch_and_failed_and_anonymous_tasks_match_task_output(user, staff, worker):
    batch = completed(user, worker, "a batch", batch_size=3)
    assert len(fast(batch, user)["images"]) == 3
    assert fast(batch, user) == expected(batch)
    # An image without a thumbnail, and an attempt whose worker was deleted.
    batch.images.filter(index=1).update(thumbnail="")
    TaskAttempt.objects.filter(task=batch).update(worker=None)
    assert fast(batch, staff) == expected(batch)

    failed = TaskFactory(prompt="anonymous, fails")
    lease = services.task_lease_next(worker=worker)
    services.task_fail(
        worker=worker,
        task_id=failed.public_id,
        lease_token=lease.attempt.lease_token,
        code="execution_error",
        message="out of memory",
        retryable=False,
    )
    body = fast(failed, user)
    assert body == expected(failed)
    assert body["owner"] is None and body["error"] == {"code": "execution_error", "message": "out of memory"}


def test_seeds_beyond_signed_64_bits_survive(user):
    task = TaskFactory(owner=user, prompt="big seed", seed=2**64 - 1)
    assert fast(task, user)["seed"] == str(2**64 - 1) == expected(task)["seed"]


def test_unknown_malformed_and_invisible_ids_are_not_found(user, other_user):
    task = TaskFactory(owner=user)
    for public_id in (uuid.uuid4(), "not-a-uuid", ""):
        with pytest.raises(NotFound):
            selectors.task_status_for(user, public_id)
    with pytest.raises(NotFound):
        selectors.task_status_for(other_user, task.public_id)


def test_rest_detail_and_seed_status_answer_from_the_same_read(api, user, django_assert_max_num_queries):
    worker, _ = make_worker("gpu-status")
    task = TaskFactory(owner=user, prompt="watched", batch_size=2)
    complete_next(worker)
    with django_assert_max_num_queries(3):  # task, images, attempts (the test client skips auth)
        detail = api.get(f"/api/v1/tasks/{task.public_id}/")
    assert detail.status_code == HTTPStatus.OK
    assert detail.json() == as_json(
        TaskOutput(Task.objects.get(pk=task.pk), context={"request": detail.wsgi_request}).data
    )
    with django_assert_max_num_queries(2):  # task, images
        seed = api.get(f"/status/{str(task.public_id).upper()}")
    assert seed.status_code == HTTPStatus.OK
    urls = [f"http://testserver{image.file.url}" for image in task.images.order_by("index")]
    assert seed.json()["images"] == urls and seed.json()["image_url"] == urls[0]
    assert seed.json()["prompt_id"] == str(task.public_id) and seed.json()["progress"] == 100


def test_the_submit_answer_is_the_task_output_of_the_new_task(api, user):
    response = api.post("/api/v1/tasks/", {"prompt": "a fox", "width": 64, "height": 64}, format="json")

    assert response.status_code == HTTPStatus.CREATED, response.json()
    task = Task.objects.get(public_id=response.json()["id"])
    assert task.owner == user
    assert response.json() == expected(task)


def test_a_status_read_skips_what_the_task_cannot_have_yet(api, user, django_assert_num_queries):
    """A task never leased has no attempt and no image, one not completed has no image: no read for them."""
    worker, _ = make_worker("gpu-budget")
    task = TaskFactory(owner=user, prompt="soon")
    answer = expected(task)  # also makes the farm's ETA estimate, which is then reused for a moment
    with django_assert_num_queries(3):  # task, and its queue position (two counts)
        queued = api.get(f"/api/v1/tasks/{task.public_id}/")
    assert queued.json() == answer and queued.json()["attempt_history"] == []
    assert services.task_lease_next(worker=worker) is not None
    answer = expected(task)
    with django_assert_num_queries(2):  # task, attempts
        leased = api.get(f"/api/v1/tasks/{task.public_id}/")
    assert leased.json() == answer and len(leased.json()["attempt_history"]) == 1


def test_the_submit_answers_from_the_task_it_queued_without_reading_it_back(api, user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    body = {"prompt": "a fox", "width": 64, "height": 64, "seed": 7, "priority": 0}
    with CaptureQueriesContext(connection) as queries:
        response = api.post("/api/v1/tasks/", body, format="json")

    assert response.status_code == HTTPStatus.CREATED, response.json()
    task = Task.objects.get(public_id=response.json()["id"])
    assert response.json() == expected(task)
    by_id = 'WHERE "generation_task"."public_id"'
    read_back = [q["sql"] for q in queries.captured_queries if by_id in q["sql"]]
    assert read_back == []
