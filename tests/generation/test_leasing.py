"""Leasing rules, called through the services with the real database and a fake clock: order, capability
matching, expiry and requeue, heartbeats, offline workers, fencing, prefetch and the rules at submit."""

import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from generation import selectors, services
from generation.exceptions import LeaseLost, NoCapableWorker, TooManyLeases
from generation.models import Image, Task, TaskAttempt
from generation.services import completion
from tests.conftest import (
    CHECKPOINT,
    NOISE_NODES,
    capabilities,
    make_worker,
    media_files,
    png_bytes,
    submit_task,
    worker_client,
)
from workers_app import services as worker_services
from workers_app.exceptions import RegisterRequired, WorkerDisabled
from workers_app.models import Worker

pytestmark = pytest.mark.django_db

Status = Task.Status
Outcome = TaskAttempt.Outcome
LEASE = settings.T2I["LEASE_SECONDS"]
OFFLINE_AFTER = settings.T2I["WORKER_OFFLINE_AFTER"]


def lease(worker: Worker, **kwargs) -> services.TaskLease | None:
    """As the worker API leases: after the lazy liveness sweep."""
    return worker_services.worker_lease_next(worker=worker, **kwargs)


def alive(*workers: Worker) -> None:
    """Heartbeats that hold no lease: the daemons are up but are not renewing anything."""
    for worker in workers:
        worker_services.worker_heartbeat(worker=worker, leases=[])


def upload(width: int = 64, height: int = 64) -> SimpleUploadedFile:
    return SimpleUploadedFile("out_00001_.png", png_bytes(width, height), "image/png")


# --- Order and capability matching ----------------------------------------------------------------------


def test_leases_highest_priority_first_then_oldest(worker):
    worker.prefetch = 6  # deep enough for one worker to hold them all and ask once more
    low_old = submit_task(priority=0)
    high_old = submit_task(priority=5)
    low_new = submit_task(priority=0)
    high_new = submit_task(priority=5)
    urgent = submit_task(priority=9)

    order = [lease(worker).task.pk for _ in range(5)]

    assert order == [urgent.pk, high_old.pk, high_new.pk, low_old.pk, low_new.pk]
    assert lease(worker) is None
    assert not Task.objects.filter(status=Status.QUEUED).exists()


def test_worker_never_gets_a_checkpoint_it_lacks():
    has_a, _ = make_worker("gpu-a", capabilities(checkpoints=["a.safetensors"]))
    has_b, _ = make_worker("gpu-b", capabilities(checkpoints=["b.safetensors"]))
    needs_b = submit_task(checkpoint="b.safetensors")

    assert lease(has_a) is None
    needs_b.refresh_from_db()
    assert needs_b.status == Status.QUEUED and needs_b.attempts == 0
    assert not TaskAttempt.objects.exists()

    needs_a = submit_task(checkpoint="a.safetensors")
    assert lease(has_a).task.pk == needs_a.pk
    assert lease(has_b).task.pk == needs_b.pk


def test_worker_never_gets_a_template_needing_a_node_class_it_lacks():
    make_worker("full", capabilities())
    noise_only, _ = make_worker("noise-only", capabilities(checkpoints=[], nodes=NOISE_NODES))
    sd15 = submit_task(priority=10)  # older and more urgent, but needs CheckpointLoaderSimple, KSampler, …
    noise = submit_task(template="noise-test")

    got = lease(noise_only)

    assert got.task.pk == noise.pk
    assert lease(noise_only) is None
    assert Task.objects.get(pk=sd15.pk).status == Status.QUEUED


def test_draining_worker_gets_nothing(worker):
    task = submit_task()
    worker_services.worker_set_state(worker=worker, state="drain")

    assert lease(worker) is None
    assert Task.objects.get(pk=task.pk).status == Status.QUEUED
    assert not TaskAttempt.objects.exists()


def test_disabled_worker_is_refused(worker):
    submit_task()
    worker_services.worker_set_state(worker=worker, state="disable")

    with pytest.raises(WorkerDisabled):
        lease(worker)
    assert not TaskAttempt.objects.exists()


@pytest.mark.parametrize("how", ["went_offline", "never_registered"])
def test_offline_worker_must_register_first(how):
    worker, _ = make_worker("gpu-1", register=how == "went_offline")
    if how == "went_offline":
        worker_services.worker_go_offline(worker=worker)
        worker.refresh_from_db()
    make_worker("gpu-2")  # someone can run the task, so it is accepted
    submit_task()

    with pytest.raises(RegisterRequired):
        lease(worker)
    assert not TaskAttempt.objects.exists()


# --- Expiry, requeue, max attempts, lazy and periodic reaping ----------------------------------------------


def test_expired_lease_is_requeued_and_the_attempt_counts(worker, clock):
    task = submit_task()
    first = lease(worker)
    assert first.attempt.lease_expires_at == clock.now + timedelta(seconds=LEASE)

    clock.advance(LEASE - 1)
    alive(worker)  # the daemon is up but lost the task: it no longer renews this lease
    assert services.tasks_reap_expired() == 0
    clock.advance(2)
    assert services.tasks_reap_expired() == 1

    task.refresh_from_db()
    assert task.status == Status.QUEUED
    assert (task.attempts, task.lease_count) == (1, 1)
    assert task.worker is None and task.lease_token is None and task.lease_expires_at is None
    assert task.error_code == "worker_lost"
    expired = TaskAttempt.objects.get(task=task)
    assert expired.outcome == Outcome.EXPIRED and expired.finished_at == clock.now
    assert expired.error_code == "worker_lost"

    second = lease(worker)
    assert second.task.pk == task.pk
    assert second.attempt.number == 2 and second.attempt.lease_token != first.attempt.lease_token
    task.refresh_from_db()
    assert task.status == Status.LEASED and task.attempts == 2
    assert task.lease_token == second.attempt.lease_token
    assert list(TaskAttempt.objects.filter(task=task).values_list("number", "outcome")) == [
        (1, Outcome.EXPIRED),
        (2, Outcome.ACTIVE),
    ]


def test_after_max_attempts_the_task_fails_with_worker_lost(worker, clock, settings):
    settings.T2I = {**settings.T2I, "MAX_ATTEMPTS": 2}
    task = submit_task()
    assert task.max_attempts == 2

    for _ in range(2):
        alive(worker)
        assert lease(worker).task.pk == task.pk
        clock.advance(LEASE + 1)
        assert services.tasks_reap_expired() == 1

    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error_code == "worker_lost"
    assert task.attempts == 2 and task.finished_at == clock.now and task.lease_token is None
    assert list(TaskAttempt.objects.filter(task=task).values_list("outcome", flat=True)) == [
        Outcome.EXPIRED,
        Outcome.EXPIRED,
    ]
    alive(worker)
    assert lease(worker) is None


def test_the_lease_path_reaps_expired_leases_itself(clock):
    gpu_a, _ = make_worker("gpu-a")
    gpu_b, _ = make_worker("gpu-b")
    task = submit_task()
    first = lease(gpu_a)

    clock.advance(20)
    alive(gpu_a, gpu_b)
    clock.advance(LEASE - 20 + 1)  # the lease ran out; both workers are still live (last beat 11 s ago)

    # No tasks_reap_expired call, no background job: gpu-b's lease request finds the expired lease.
    second = lease(gpu_b)

    assert second.task.pk == task.pk and second.attempt.number == 2
    assert TaskAttempt.objects.get(lease_token=first.attempt.lease_token).outcome == Outcome.EXPIRED
    assert Task.objects.get(pk=task.pk).worker_id == gpu_b.pk
    assert Worker.objects.get(pk=gpu_a.pk).status == Worker.Status.IDLE


def test_the_lease_path_marks_silent_workers_offline(clock):
    silent, _ = make_worker("silent")
    other, _ = make_worker("other")
    task = submit_task()
    lease(silent)

    clock.advance(OFFLINE_AFTER + 1)  # long before the lease itself would expire
    alive(other)
    taken = lease(other)

    assert taken.task.pk == task.pk and taken.attempt.number == 2
    assert Worker.objects.get(pk=silent.pk).status == Worker.Status.OFFLINE
    lost = TaskAttempt.objects.get(task=task, number=1)
    assert lost.outcome == Outcome.EXPIRED and "heartbeat" in lost.error_message


def test_silence_right_after_a_database_restart_marks_nobody_offline(clock, monkeypatch):
    """While the database was down nobody could reach it: workers whose waits could not be renewed are not
    silent workers. Once it has run longer than the offline limit, silence counts again."""
    silent, _ = make_worker("silent")
    clock.advance(OFFLINE_AFTER + 1)
    monkeypatch.setattr(worker_services, "database_started_at", lambda: clock() - timedelta(seconds=3))
    assert worker_services.workers_mark_offline() == 0
    assert Worker.objects.get(pk=silent.pk).status == Worker.Status.IDLE
    monkeypatch.setattr(worker_services, "database_started_at", lambda: clock() - timedelta(hours=1))
    assert worker_services.workers_mark_offline() == 1
    assert Worker.objects.get(pk=silent.pk).status == Worker.Status.OFFLINE


@pytest.mark.postgres
def test_the_database_start_time_is_known_on_postgresql():
    started = worker_services.database_started_at()
    assert started is not None and started < timezone.now()


def test_a_silent_worker_asking_for_work_must_register_again(worker, clock):
    task = submit_task()
    lease(worker)
    clock.advance(OFFLINE_AFTER + 1)

    with pytest.raises(RegisterRequired):
        lease(worker)

    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.OFFLINE
    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.worker is None
    assert TaskAttempt.objects.count() == 1


def test_tasks_reap_expired_requeues_only_expired_leases(worker, clock):
    start = clock.now
    renewed_task, dropped_task = submit_task(), submit_task()
    renewed, dropped = lease(worker), lease(worker)
    assert {renewed.task.pk, dropped.task.pk} == {renewed_task.pk, dropped_task.pk}

    clock.advance(20)
    worker_services.worker_heartbeat(
        worker=worker, leases=[(renewed.task.public_id, renewed.attempt.lease_token)]
    )

    assert services.tasks_reap_expired(now=start + timedelta(seconds=LEASE + 5)) == 1
    assert Task.objects.get(pk=renewed.task.pk).status == Status.LEASED
    assert Task.objects.get(pk=dropped.task.pk).status == Status.QUEUED
    assert TaskAttempt.objects.get(lease_token=dropped.attempt.lease_token).outcome == Outcome.EXPIRED
    assert TaskAttempt.objects.get(lease_token=renewed.attempt.lease_token).outcome == Outcome.ACTIVE


# --- Heartbeats and liveness ----------------------------------------------------------------------------


def test_heartbeat_renews_the_lease(worker, clock):
    task = submit_task()
    held = lease(worker)
    clock.advance(10)

    result = worker_services.worker_heartbeat(
        worker=worker, leases=[(task.public_id, held.attempt.lease_token)]
    )

    renewed_until = clock.now + timedelta(seconds=LEASE)
    assert result.renewed == [task.public_id] and result.cancel == [] and result.lost == []
    assert result.lease_expires_at == renewed_until
    task.refresh_from_db()
    assert task.lease_expires_at == renewed_until
    assert TaskAttempt.objects.get(task=task).lease_expires_at == renewed_until
    assert Worker.objects.get(pk=worker.pk).last_heartbeat == clock.now

    clock.advance(LEASE - 5)  # past the first expiry, within the renewed one
    assert services.tasks_reap_expired() == 0
    assert Task.objects.get(pk=task.pk).status == Status.LEASED


def test_heartbeat_reports_cancelled_and_lost_leases(worker, clock, settings):
    settings.T2I = {**settings.T2I, "SCHEDULER": "fifo"}  # placement would give the third to idle gpu-2
    worker.prefetch = 3  # deep enough to hold the three
    other, _ = make_worker("gpu-2")
    cancelled_task, lost_task, kept_task = (
        submit_task(priority=3),
        submit_task(priority=2),
        submit_task(priority=1),
    )
    held = [lease(worker) for _ in range(3)]
    assert [h.task.pk for h in held] == [cancelled_task.pk, lost_task.pk, kept_task.pk]
    services.task_cancel(task=cancelled_task)
    clock.advance(20)
    worker_services.worker_heartbeat(
        worker=worker, leases=[(kept_task.public_id, held[2].attempt.lease_token)]
    )
    alive(other)
    clock.advance(LEASE - 20 + 1)
    assert lease(other).task.pk == lost_task.pk  # expired and re-leased to gpu-2

    result = worker_services.worker_heartbeat(
        worker=worker, leases=[(h.task.public_id, h.attempt.lease_token) for h in held]
    )

    assert result.renewed == [kept_task.public_id]
    assert result.cancel == [cancelled_task.public_id]
    assert result.lost == [lost_task.public_id]
    assert Task.objects.get(pk=lost_task.pk).worker_id == other.pk  # the heartbeat did not take it back


def test_worker_silent_too_long_goes_offline_and_its_leases_are_requeued(worker, clock):
    other, _ = make_worker("gpu-2")
    task = submit_task()
    lease(worker)
    clock.advance(OFFLINE_AFTER + 1)
    alive(other)

    assert worker_services.workers_mark_offline() == 1

    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.OFFLINE
    assert Worker.objects.get(pk=other.pk).status == Worker.Status.IDLE
    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.worker is None and task.attempts == 1
    attempt = TaskAttempt.objects.get(task=task)
    assert attempt.outcome == Outcome.EXPIRED and attempt.error_code == "worker_lost"
    worker.refresh_from_db()
    with pytest.raises(RegisterRequired):
        worker_services.worker_heartbeat(worker=worker, leases=[])


def test_register_requeues_the_leases_the_worker_held(worker):
    task = submit_task()
    held = lease(worker)
    assert Worker.objects.get(pk=worker.pk).state == Worker.Status.BUSY

    worker_services.worker_register(worker=worker, capabilities=capabilities())

    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.lease_token is None and task.attempts == 1
    attempt = TaskAttempt.objects.get(lease_token=held.attempt.lease_token)
    assert attempt.outcome == Outcome.EXPIRED and "registered again" in attempt.error_message
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE
    assert lease(worker).attempt.number == 2


# --- Release and fail -----------------------------------------------------------------------------------


def test_release_requeues_without_counting_an_attempt(worker):
    task = submit_task()
    held = lease(worker)

    services.task_release(worker=worker, task_id=task.public_id, lease_token=held.attempt.lease_token)

    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.worker is None
    assert (task.attempts, task.lease_count) == (0, 1)
    assert TaskAttempt.objects.get(task=task).outcome == Outcome.RELEASED
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE
    again = lease(worker)
    assert again.attempt.number == 2
    assert Task.objects.get(pk=task.pk).attempts == 1


def test_retryable_failure_requeues(worker):
    task = submit_task()
    held = lease(worker)

    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=held.attempt.lease_token,
        code="comfyui_lost",
        message="ComfyUI restarted",
        retryable=True,
    )

    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.attempts == 1 and task.finished_at is None
    assert task.error_code == "comfyui_lost"
    attempt = TaskAttempt.objects.get(task=task)
    assert attempt.outcome == Outcome.FAILED and attempt.error_message == "ComfyUI restarted"
    assert Worker.objects.get(pk=worker.pk).tasks_failed == 1


def test_non_retryable_failure_fails_the_task(worker):
    task = submit_task()
    held = lease(worker)

    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=held.attempt.lease_token,
        code="workflow_invalid",
        message="Value not in list",
        retryable=False,
    )

    task.refresh_from_db()
    assert task.status == Status.FAILED and task.finished_at is not None
    assert (task.error_code, task.error_message) == ("workflow_invalid", "Value not in list")
    assert lease(worker) is None


def test_retryable_failure_on_the_last_attempt_fails_the_task(worker, settings):
    settings.T2I = {**settings.T2I, "MAX_ATTEMPTS": 1}
    task = submit_task()
    held = lease(worker)

    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=held.attempt.lease_token,
        code="execution_error",
        message="out of memory",
        retryable=True,
    )

    assert Task.objects.get(pk=task.pk).status == Status.FAILED


# --- Fencing: exactly-once completion -------------------------------------------------------------------


def test_stale_worker_cannot_complete_after_the_task_moved_on(clock):
    _, token_a = make_worker("gpu-a")
    gpu_b, token_b = make_worker("gpu-b")
    client_a, client_b = worker_client(token_a), worker_client(token_b)
    task = submit_task()
    job_a = client_a.post("/api/v1/worker/lease", {}, format="json").json()
    clock.advance(20)
    alive(gpu_b)
    clock.advance(LEASE - 20 + 1)
    job_b = client_b.post("/api/v1/worker/lease", {}, format="json").json()
    assert job_b["task_id"] == job_a["task_id"] == str(task.public_id) and job_b["attempt"] == 2
    complete_url = f"/api/v1/worker/tasks/{task.public_id}/complete"

    stale = client_a.post(
        complete_url, {"lease_token": job_a["lease_token"], "images": [upload()]}, format="multipart"
    )
    assert stale.status_code == HTTPStatus.CONFLICT
    assert stale.json()["error"] == "lease_lost"
    assert Task.objects.get(pk=task.pk).status == Status.LEASED
    assert media_files() == [] and not Image.objects.exists()

    done = client_b.post(
        complete_url, {"lease_token": job_b["lease_token"], "images": [upload()]}, format="multipart"
    )
    assert done.status_code == HTTPStatus.OK, done.json()

    # The stale worker retrying after the new owner finished is still refused, not taken for a retry.
    late = client_a.post(
        complete_url, {"lease_token": job_a["lease_token"], "images": [upload()]}, format="multipart"
    )
    assert late.status_code == HTTPStatus.CONFLICT and late.json()["error"] == "lease_lost"

    task.refresh_from_db()
    assert task.status == Status.COMPLETED and task.worker_id == gpu_b.pk
    attempt_b = TaskAttempt.objects.get(lease_token=job_b["lease_token"])
    assert attempt_b.outcome == Outcome.COMPLETED
    assert TaskAttempt.objects.get(lease_token=job_a["lease_token"]).outcome == Outcome.EXPIRED
    image = Image.objects.get(task=task)
    assert image.attempt == attempt_b
    assert set(media_files()) == {image.file.name, image.thumbnail.name} and "_a2_" in image.file.name


def test_losing_the_lease_while_storing_removes_the_written_files(clock, monkeypatch):
    gpu_a, _ = make_worker("gpu-a")
    gpu_b, _ = make_worker("gpu-b")
    task = submit_task()
    held_a = lease(gpu_a)
    real_store = completion._store
    taken_over = {}

    def store_then_lose_the_lease(task_, attempt, index, image):
        name = real_store(task_, attempt, index, image)
        # While gpu-a's files are being written, its lease expires and gpu-b takes the task.
        clock.advance(LEASE + 1)
        alive(gpu_b)
        taken_over["lease"] = lease(gpu_b)
        return name

    monkeypatch.setattr(completion, "_store", store_then_lose_the_lease)
    with pytest.raises(LeaseLost):
        services.task_complete(
            worker=gpu_a, task_id=task.public_id, lease_token=held_a.attempt.lease_token, files=[upload()]
        )
    monkeypatch.setattr(completion, "_store", real_store)

    assert media_files() == []  # the file was written and then removed
    assert not Image.objects.exists()
    task.refresh_from_db()
    assert task.status == Status.LEASED and task.worker_id == gpu_b.pk

    held_b = taken_over["lease"]
    services.task_complete(
        worker=gpu_b, task_id=task.public_id, lease_token=held_b.attempt.lease_token, files=[upload()]
    )
    assert [i.attempt_id for i in Image.objects.filter(task=task)] == [held_b.attempt.pk]
    assert len(media_files()) == 2  # the image and its thumbnail


def test_completion_retried_for_the_same_lease_returns_200_without_duplicates(wapi, worker):
    task = submit_task(batch_size=2)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    body = {"lease_token": job["lease_token"], "comfyui_prompt_id": "p-1"}
    url = f"/api/v1/worker/tasks/{task.public_id}/complete"

    first = wapi.post(url, body | {"images": [upload(), upload()]}, format="multipart")
    retry = wapi.post(url, body | {"images": [upload(), upload()]}, format="multipart")

    assert first.status_code == retry.status_code == HTTPStatus.OK
    assert retry.json()["status"] == "completed"
    assert [i["id"] for i in retry.json()["images"]] == [i["id"] for i in first.json()["images"]]
    assert Image.objects.filter(task=task).count() == 2
    assert len(media_files()) == 4  # two images, two thumbnails
    assert set(Image.objects.values_list("attempt__lease_token", flat=True)) == {
        uuid.UUID(job["lease_token"])
    }
    assert TaskAttempt.objects.filter(task=task, outcome=Outcome.COMPLETED).count() == 1
    assert Worker.objects.get(pk=worker.pk).tasks_completed == 1


def worker_post(wapi, task: Task, what: str, lease_token: str, **body):
    return wapi.post(f"/api/v1/worker/tasks/{task.public_id}/{what}", {"lease_token": lease_token, **body},
                     format="multipart" if what == "complete" else "json")  # fmt: skip


def test_a_completion_without_a_start_report_marks_the_task_started_then(wapi, worker, clock):
    task = submit_task()
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    clock.advance(seconds=2)

    done = worker_post(wapi, task, "complete", job["lease_token"], images=[upload()])

    assert done.status_code == HTTPStatus.OK
    task.refresh_from_db()
    attempt = TaskAttempt.objects.get(task=task)
    assert task.status == Status.COMPLETED
    assert task.started_at == task.finished_at == clock.now
    assert attempt.started_at == attempt.finished_at == clock.now


def test_a_completion_keeps_the_time_its_start_report_recorded(wapi, worker, clock):
    task = submit_task()
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    worker_post(wapi, task, "start", job["lease_token"], comfyui_prompt_id="p-1")
    started = clock.now
    clock.advance(seconds=2)

    worker_post(wapi, task, "complete", job["lease_token"], images=[upload()])

    task.refresh_from_db()
    assert (task.started_at, task.finished_at) == (started, clock.now)
    assert TaskAttempt.objects.get(task=task).started_at == started


@pytest.mark.parametrize(
    "what,body", [("start", {"comfyui_prompt_id": "p-1"}), ("progress", {"value": 3, "max": 4})]
)
def test_a_report_that_arrives_after_its_own_completion_is_answered_and_changes_nothing(
    wapi, worker, what, body
):
    """The daemon does not hold its completion back for a start or progress report still on its way."""
    task = submit_task()
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    worker_post(wapi, task, "complete", job["lease_token"], images=[upload()])
    before = Task.objects.filter(pk=task.pk).values().get()

    late = worker_post(wapi, task, what, job["lease_token"], **body)

    assert late.status_code == HTTPStatus.OK and late.json() == {"cancel": False}
    assert Task.objects.filter(pk=task.pk).values().get() == before
    assert TaskAttempt.objects.get(task=task).outcome == Outcome.COMPLETED


@pytest.mark.parametrize(
    "what,body", [("start", {"comfyui_prompt_id": "p-1"}), ("progress", {"value": 3, "max": 4})]
)
def test_a_report_for_a_lease_that_ended_otherwise_is_lease_lost(wapi, worker, what, body):
    task = submit_task()
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    worker_post(wapi, task, "release", job["lease_token"])  # requeued: the lease ended without a completion

    late = worker_post(wapi, task, what, job["lease_token"], **body)

    assert late.status_code == HTTPStatus.CONFLICT and late.json()["error"] == "lease_lost"
    assert Task.objects.get(pk=task.pk).status == Status.QUEUED


def test_a_completion_can_carry_the_next_lease(wapi, worker):
    first, second = submit_task(), submit_task(priority=5)
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    assert job["task_id"] == str(second.public_id)
    url = f"/api/v1/worker/tasks/{second.public_id}/complete"
    body = {"lease_token": job["lease_token"], "lease_next": "true"}

    answer = wapi.post(url, body | {"images": [upload()]}, format="multipart").json()

    assert answer["status"] == "completed"
    carried = answer["next"]
    assert carried["task_id"] == str(first.public_id)
    attempt = TaskAttempt.objects.get(task=first)
    assert carried["lease_token"] == str(attempt.lease_token)
    assert (attempt.worker_id, Task.objects.get(pk=first.pk).status) == (worker.pk, Status.LEASED)
    assert Task.objects.get(pk=second.pk).status == Status.COMPLETED
    assert Worker.objects.get(pk=worker.pk).state == Worker.Status.BUSY

    retry = wapi.post(url, body | {"images": [upload()]}, format="multipart").json()
    assert retry["next"] is None  # a retry leases nothing more
    assert TaskAttempt.objects.count() == 2


def test_a_completion_without_lease_next_leases_nothing(wapi, worker):
    task, waiting = submit_task(), submit_task()
    job = wapi.post("/api/v1/worker/lease", {}, format="json").json()
    url = f"/api/v1/worker/tasks/{task.public_id}/complete"

    answer = wapi.post(url, {"lease_token": job["lease_token"], "images": [upload()]}, format="multipart")

    assert answer.json()["next"] is None
    assert Task.objects.get(pk=waiting.pk).status == Status.QUEUED
    assert Worker.objects.get(pk=worker.pk).status == Worker.Status.IDLE


def test_the_carried_lease_follows_the_lease_rules(worker):
    """Nothing queued, a prefetch left to an idle worker, a draining worker: the completion lands and
    `next` is None."""
    idle, _ = make_worker("idle")

    def complete(held, **kwargs):
        done = services.task_complete_and_lease(
            worker=worker,
            task_id=held.task.public_id,
            lease_token=held.attempt.lease_token,
            files=[upload()],
            **kwargs,
        )
        return done.task, done.next

    submit_task()
    task, following = complete(lease(worker))
    assert (task.status, following) == (Status.COMPLETED, None)  # nothing queued

    submit_task(), submit_task(), submit_task()
    running, held = lease(worker), lease(worker, prefetch=True)  # two waited, one idle worker: one each
    assert complete(held, prefetch=True)[1] is None  # one waits, for "idle", while `running` still runs

    worker_services.worker_set_state(worker=worker, state="drain")
    worker.refresh_from_db()
    task, following = complete(running)
    assert (task.status, following) == (Status.COMPLETED, None)
    assert Task.objects.filter(status=Status.QUEUED).count() == 1
    assert Worker.objects.get(pk=idle.pk).status == Worker.Status.IDLE


# --- Prefetch and queue positions -----------------------------------------------------------------------


def test_prefetch_only_when_more_tasks_wait_than_other_idle_workers(settings):
    settings.T2I = {**settings.T2I, "SCHEDULER": "fifo"}  # placement: the oldest to the idle one, not busy
    busy, _ = make_worker("busy")
    idle, _ = make_worker("idle")
    submit_task()
    assert lease(busy) is not None  # now busy runs one task
    waiting = submit_task()

    assert lease(busy, prefetch=True) is None  # one waiting task, one idle worker: leave it to gpu "idle"
    assert Task.objects.get(pk=waiting.pk).status == Status.QUEUED

    last = submit_task()
    prefetched = lease(busy, prefetch=True)  # two waiting, one idle worker: one for each
    assert prefetched.task.pk == waiting.pk
    assert lease(busy, prefetch=True) is None  # one left, and "idle" is still idle

    worker_services.worker_go_offline(worker=idle)
    assert lease(busy, prefetch=True) is None  # no idle worker left, but "busy" holds its depth of 2
    Worker.objects.filter(pk=busy.pk).update(prefetch=3)
    busy.refresh_from_db()
    assert lease(busy, prefetch=True).task.pk == last.pk


def test_a_prefetch_request_from_a_worker_that_holds_nothing_is_an_ordinary_lease():
    """Its running task finished while it long-polled with prefetch: true. Deferring to the idle others
    (which may be in the same situation) would leave the task waiting until a long-poll timed out."""
    finished, _ = make_worker("finished")
    make_worker("idle")
    waiting = submit_task()

    assert lease(finished, prefetch=True).task.pk == waiting.pk


def test_queue_positions_follow_the_lease_order(worker, api, staff_api):
    first, second = submit_task(), submit_task()
    urgent = submit_task(priority=5)
    positions = {t.pk: selectors.task_queue_position(t) for t in (first, second, urgent)}
    assert positions == {urgent.pk: 1, first.pk: 2, second.pk: 3}
    assert api.get(f"/api/v1/tasks/{second.public_id}/").json()["queue_position"] == 3

    lease(worker)

    assert selectors.task_queue_position(Task.objects.get(pk=urgent.pk)) is None
    assert selectors.task_queue_position(first) == 1
    assert selectors.task_queue_position(second) == 2
    body = staff_api.get(f"/api/v1/tasks/{urgent.public_id}/").json()  # staff submitted it (priority)
    assert body["queue_position"] is None and body["status"] == "leased"


# --- Capability rules at submit -------------------------------------------------------------------------


def post_task(api, **fields):
    return api.post(
        "/api/v1/tasks/", {"prompt": "a red fox", "width": 64, "height": 64} | fields, format="json"
    )


def test_submit_queues_while_no_worker_has_registered(api):
    make_worker("created-not-registered", register=False)

    response = post_task(api)

    assert response.status_code == HTTPStatus.CREATED, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["warning"] == "" and body["checkpoint"] == ""
    assert Task.objects.get(public_id=body["id"]).status == Status.QUEUED
    named = post_task(api, checkpoint="anything.safetensors")
    assert named.status_code == HTTPStatus.CREATED
    assert Task.objects.get(public_id=named.json()["id"]).checkpoint == "anything.safetensors"


def test_submit_only_offline_workers_can_run_is_accepted_with_a_warning(api):
    gone, _ = make_worker("gone", capabilities(checkpoints=["rare.safetensors"]))
    make_worker("online", capabilities(checkpoints=[CHECKPOINT]))
    worker_services.worker_go_offline(worker=gone)

    response = post_task(api, checkpoint="rare.safetensors")

    assert response.status_code == HTTPStatus.CREATED, response.json()
    assert "offline" in response.json()["warning"]
    task = Task.objects.get(public_id=response.json()["id"])
    assert task.warning == response.json()["warning"] and task.status == Status.QUEUED
    assert post_task(api).json()["warning"] == ""  # the online worker can run the default


def test_submit_nobody_can_run_is_refused_with_what_is_available(api):
    make_worker("gpu-a", capabilities(checkpoints=["a.safetensors"]))
    gone, _ = make_worker("gpu-b", capabilities(checkpoints=["b.safetensors"]))
    worker_services.worker_go_offline(worker=gone)

    response = post_task(api, checkpoint="missing.safetensors")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    body = response.json()
    assert body["error"] == "no_capable_worker"
    assert "a.safetensors" in body["fields"]["checkpoint"][0]
    assert "b.safetensors" in body["fields"]["checkpoint"][0]
    assert not Task.objects.exists()


def test_submit_a_template_whose_nodes_nobody_has_is_refused(api):
    make_worker("sd-only", capabilities(nodes=["CheckpointLoaderSimple", "KSampler", "SaveImage"]))

    with pytest.raises(NoCapableWorker) as refused:
        submit_task(template="noise-test")
    assert "ImageAddNoise" in refused.value.fields["template"][0]

    response = post_task(api, template="noise-test")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"] == "no_capable_worker" and "template" in response.json()["fields"]
    assert not Task.objects.exists()


def test_submit_without_checkpoint_takes_the_configured_default(settings):
    make_worker("gpu-a", capabilities(checkpoints=["a.safetensors", "b.safetensors"]))
    make_worker("gpu-b", capabilities(checkpoints=["a.safetensors"]))
    settings.T2I = {**settings.T2I, "DEFAULT_CHECKPOINT": "b.safetensors"}

    assert submit_task().checkpoint == "b.safetensors"
    assert submit_task(checkpoint="a.safetensors").checkpoint == "a.safetensors"
    assert submit_task(template="noise-test").checkpoint == ""  # that template binds no checkpoint


def test_submit_without_checkpoint_or_default_takes_the_one_most_online_workers_have(settings):
    settings.T2I = {**settings.T2I, "DEFAULT_CHECKPOINT": ""}
    make_worker("gpu-1", capabilities(checkpoints=["common.safetensors", "rare.safetensors"]))
    make_worker("gpu-2", capabilities(checkpoints=["common.safetensors"]))
    for name in ("old-1", "old-2", "old-3"):  # offline workers do not count
        gone, _ = make_worker(name, capabilities(checkpoints=["rare.safetensors"]))
        worker_services.worker_go_offline(worker=gone)

    task = submit_task()

    assert task.checkpoint == "common.safetensors" and task.warning == ""


def test_a_lease_on_an_empty_queue_is_two_reads(worker, django_assert_num_queries):
    """An idle farm's leases (a long poll's first attempt, a completion's lease_next after the last task)
    plan nothing when nothing is queued; a full worker asking without prefetch is still told to back off."""
    with django_assert_num_queries(2):  # the queued requirement keys (none); what the worker holds
        assert services.task_lease_next(worker=worker) is None
    with django_assert_num_queries(1):
        assert services.task_lease_next(worker=worker, prefetch=True) is None
    for _ in range(2):
        submit_task()
    held = [lease(worker), lease(worker)]  # the fixture's depth is 2
    assert all(held)
    with pytest.raises(TooManyLeases):
        services.task_lease_next(worker=worker)
    submit_task()
    assert services.task_lease_next(worker=worker, prefetch=True) is None  # full
    worker.prefetch = 3
    assert services.task_lease_next(worker=worker) is not None  # queued work: the plan


def test_a_worker_that_asks_for_more_than_its_prefetch_depth_is_told_to_back_off(worker):
    """A daemon that keeps asking without prefetch while it holds its depth would hoard the queue: 429."""
    for _ in range(3):
        submit_task()
    held = [lease(worker), lease(worker)]  # the fixture's depth is 2
    assert all(held)
    assert lease(worker, prefetch=True) is None  # full: a prefetch simply gets nothing
    with pytest.raises(TooManyLeases):
        lease(worker)
    assert Task.objects.filter(status=Status.QUEUED).count() == 1
