"""ETAs from learned speeds and placement, counting the work the workers hold (generation.eta)."""

from datetime import timedelta
from http import HTTPStatus

import pytest

from generation import eta, farm_snapshot, placement
from generation.models import Task
from tests.conftest import CHECKPOINT, submit_task
from tests.generation.test_leasing import lease
from workers_app.models import Worker, WorkerSpeed

pytestmark = pytest.mark.django_db


def test_a_task_behind_running_and_prefetched_work_counts_it(worker, user, api, client_for, clock):
    """The issue's case: behind a running and a prefetched task, a task takes their time plus its own."""
    unit = placement.work_units(64, 64, 20, 1)
    WorkerSpeed.objects.create(worker=worker, checkpoint=CHECKPOINT, seconds_per_unit=10.0 / unit, samples=5)
    Worker.objects.filter(pk=worker.pk).update(warm_checkpoint=CHECKPOINT)  # no model switch to count
    running, prefetched, mine = (submit_task(owner=user, checkpoint=CHECKPOINT) for _ in range(3))
    assert lease(worker).task.pk == running.pk
    Task.objects.filter(pk=running.pk).update(status=Task.Status.RUNNING, started_at=clock.now)
    assert lease(worker, prefetch=True).task.pk == prefetched.pk  # no other worker is idle
    clock.advance(4)

    body = api.get(f"/api/v1/tasks/{mine.public_id}/").json()
    assert body["eta_seconds"] == pytest.approx(6 + 10 + 10, abs=0.2)  # 6 s left, the prefetched, its own
    assert api.get(f"/status/{mine.public_id}").json()["eta_seconds"] == pytest.approx(26, abs=0.2)
    assert api.get(f"/api/v1/tasks/{running.public_id}/").json()["eta_seconds"] == pytest.approx(6, abs=0.2)
    page = client_for(user).get(f"/tasks/{mine.public_id}/")
    assert page.status_code == HTTPStatus.OK and "26 s" in page.content.decode()


def test_no_eta_without_a_live_worker_or_once_finished(worker, user, api, clock):
    task = submit_task(owner=user)
    clock.advance(3600)  # the worker's heartbeat is long gone
    assert api.get(f"/api/v1/tasks/{task.public_id}/").json()["eta_seconds"] is None
    Task.objects.filter(pk=task.pk).update(status=Task.Status.CANCELLED, finished_at=clock.now)
    clock.advance(timedelta(seconds=3).total_seconds())
    assert api.get(f"/api/v1/tasks/{task.public_id}/").json()["eta_seconds"] is None


def test_the_admin_says_why_a_task_waits_and_why_it_went_to_its_worker(worker, admin_client_for_eta):
    client, owner, other = admin_client_for_eta

    def page(task) -> str:
        eta.clear_cache()  # a process reuses its estimate for ETA_SECONDS
        return client.get(f"/admin/generation/task/{task.pk}/change/").content.decode()

    first = submit_task(owner=owner)
    second = submit_task(owner=owner)
    assert "Next in line" in page(first)
    assert "Behind 1 older task(s) of its owner" in page(second)
    urgent = submit_task(owner=None, priority=5)
    assert "Behind 1 task(s) of higher priority" in page(first)
    assert lease(worker).task.pk == urgent.pk
    assert "Placed on its worker by: fair share." in page(urgent)
    Worker.objects.filter(pk=worker.pk).update(capabilities={})
    farm_snapshot.clear_cache()
    assert "No capable worker is online" in page(first)
    assert other  # a second account exists: fair share is between users


@pytest.fixture
def admin_client_for_eta(client_for, staff, user, other_user):
    return client_for(staff), user, other_user


def test_recent_arrivals_sum_each_users_work_submitted_in_the_window(user, other_user, clock):
    old = submit_task(owner=user, width=64, height=64)
    clock.advance(placement.ARRIVAL_WINDOW + 1)
    done = submit_task(owner=user, width=64, height=64)
    Task.objects.filter(pk=done.pk).update(status=Task.Status.COMPLETED, finished_at=clock.now)
    submit_task(owner=other_user, width=128, height=64)
    arrived = eta.recent_arrivals(clock.now)
    assert arrived == {
        user.pk: placement.work_units(64, 64, 20, 1),
        other_user.pk: placement.work_units(128, 64, 20, 1),
    }
    assert old.pk  # submitted before the window: not counted
