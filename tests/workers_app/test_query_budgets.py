"""Query budgets of the worker API's hot requests: a change that adds a query per lease, completion or
heartbeat fails here, on both databases. Each budget counts the token lookup, the SAVEPOINT and RELEASE of
each transaction (a test runs inside one) and, because the tests sweep on every lease (REAP_EVERY=0), the
lazy liveness sweep's three reads."""

import json
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation import farm_snapshot, services
from generation.models import Task
from tests.conftest import png_bytes
from workers_app.models import Worker, hash_token
from workers_app.worker_socket import Session

pytestmark = pytest.mark.django_db


def queue(count: int = 1) -> None:
    for _ in range(count):
        services.task_submit(owner=None, data={"prompt": "a red fox", "width": 64, "height": 64})


def lease(wapi) -> dict:
    response = wapi.post("/api/v1/worker/lease", {}, format="json")
    assert response.status_code == HTTPStatus.OK, response.content
    return response.json()


# Placement (T2I_SCHEDULER=smart) reads the live workers and a window of the queue before the claim's
# transaction; the users with queued tasks and the workers' learned costs are cached per process (a second,
# five seconds), so the budgets are measured with warm caches: the first lease of each test warms them.
SMART_READS = 2


@pytest.fixture(params=["fifo", "smart"])
def scheduler(request, settings, monkeypatch) -> int:
    settings.T2I = {**settings.T2I, "SCHEDULER": request.param}
    # The caches stay warm however slowly this machine runs the test: a budget counts queries, not time.
    for name in ("OWNERS_SECONDS", "LIVE_SECONDS", "STATIC_SECONDS"):
        monkeypatch.setattr(farm_snapshot, name, 3600.0)
    return SMART_READS if request.param == "smart" else 0


def test_a_lease_stays_within_its_query_budget(wapi, django_assert_max_num_queries, scheduler):
    queue(3)
    lease(wapi)  # warms the caches
    # token, sweep (3), templates, workflow requirement keys, held (the depth), savepoint, pick (locked),
    # claim, attempt, release; smart: the live workers and the queue's window
    with django_assert_max_num_queries(12 + scheduler):
        body = lease(wapi)
    assert Task.objects.get(public_id=body["task_id"]).status == Task.Status.LEASED


def test_a_prefetching_lease_stays_within_its_query_budget(wapi, django_assert_max_num_queries, scheduler):
    queue(3)
    lease(wapi)
    # The lease's, and the prefetch rule's two counts (idle others, runnable).
    with django_assert_max_num_queries(14 + scheduler):
        response = wapi.post("/api/v1/worker/lease", {"prefetch": True}, format="json")
    assert response.status_code == HTTPStatus.OK


def complete(wapi, job: dict, **fields):
    files = {"images": SimpleUploadedFile("out.png", png_bytes(64, 64), "image/png")}
    data = {"lease_token": job["lease_token"], **fields, **files}
    return wapi.post(f"/api/v1/worker/tasks/{job['task_id']}/complete", data, format="multipart")


def test_a_completion_stays_within_its_query_budget(wapi, django_assert_max_num_queries):
    queue()
    job = lease(wapi)
    # token, attempt with its task, savepoint, fence, images, attempt, the worker's counters and warm
    # checkpoint, release (an attempt that never reported its start teaches no speed); and the worker's
    # completion slot on its row (services.completion_slot): a conditional UPDATE claims it, the counters'
    # UPDATE frees it.
    with django_assert_max_num_queries(9):
        response = complete(wapi, job)
    assert response.status_code == HTTPStatus.OK, response.content
    assert Task.objects.get(public_id=job["task_id"]).status == Task.Status.COMPLETED


def test_a_completion_carrying_the_next_lease_stays_within_its_query_budget(
    wapi, django_assert_max_num_queries, scheduler
):
    queue(2)
    job = lease(wapi)
    # The completion's 9 and a lease without the token lookup and the sweep (8).
    with django_assert_max_num_queries(17 + scheduler):
        response = complete(wapi, job, lease_next=True)
    assert response.status_code == HTTPStatus.OK, response.content
    assert response.json()["next"] is not None


def test_a_started_completion_adds_the_learned_costs_and_the_usage(wapi, user, django_assert_max_num_queries):
    def started_lease() -> dict:
        job = lease(wapi)
        url = f"/api/v1/worker/tasks/{job['task_id']}/start"
        assert wapi.post(url, {"lease_token": job["lease_token"]}).status_code == HTTPStatus.OK
        return job

    for _ in range(2):
        services.task_submit(owner=user, data={"prompt": "a red fox", "width": 64, "height": 64})
    assert complete(wapi, started_lease()).status_code == HTTPStatus.OK  # makes the speed and share rows
    job = started_lease()
    # The completion's 9; then, after its commit, in a transaction of their own (savepoint, release): the
    # speed (read, write), the owner's share (read, write)
    with django_assert_max_num_queries(15):
        response = complete(wapi, job)
    assert response.status_code == HTTPStatus.OK, response.content


def test_a_heartbeat_stays_within_its_query_budget(wapi, django_assert_max_num_queries):
    queue(2)
    held = [lease(wapi), lease(wapi)]
    body = {"tasks": [{"task_id": j["task_id"], "lease_token": j["lease_token"]} for j in held]}
    # token, savepoint, the held tasks (locked), renew them, their attempts, the worker's beat, release
    with django_assert_max_num_queries(7):
        response = wapi.post("/api/v1/worker/heartbeat", body, format="json")
    assert response.status_code == HTTPStatus.OK
    assert sorted(response.json()["renewed"]) == sorted(j["task_id"] for j in held)


def test_an_idle_heartbeat_is_two_queries_in_a_transaction(wapi, django_assert_num_queries):
    with django_assert_num_queries(4):  # token, savepoint, the worker's beat, release
        response = wapi.post("/api/v1/worker/heartbeat", {"tasks": []}, format="json")
    assert response.status_code == HTTPStatus.OK


def test_busy_is_shown_from_the_leases_not_stored(wapi, worker, staff_api, staff):
    """A lease writes nothing to the worker's row; the worker shows as busy while it holds one."""
    queue()
    job = lease(wapi)
    worker.refresh_from_db()
    assert worker.status == Worker.Status.IDLE and worker.state == Worker.Status.BUSY
    listed = {w["name"]: w["status"] for w in staff_api.get("/api/v1/workers/").json()}
    assert listed[worker.name] == "busy"
    assert complete(wapi, job).status_code == HTTPStatus.OK
    assert Worker.objects.with_state().get(pk=worker.pk).state == Worker.Status.IDLE


def test_reports_on_the_worker_socket_stay_within_their_query_budgets(
    wapi, worker_and_token, django_assert_max_num_queries
):
    worker, token = worker_and_token
    queue(1)
    job = lease(wapi)
    session = Session(worker, hash_token(token))
    refs = {"task_id": job["task_id"], "lease_token": job["lease_token"]}
    progress = json.dumps({"id": 1, "op": "progress", **refs, "value": 1, "max": 20})
    with django_assert_max_num_queries(2):  # the fenced update, the event (PostgreSQL's NOTIFY)
        assert session.answer(progress)["status"] == HTTPStatus.OK
    beat = json.dumps({"id": 2, "op": "heartbeat", "tasks": [refs]})
    # the worker's row read again, then the HTTP heartbeat's queries without its token lookup
    with django_assert_max_num_queries(7):
        answer = session.answer(beat)
    assert answer["status"] == HTTPStatus.OK and answer["body"]["renewed"] == [job["task_id"]]
