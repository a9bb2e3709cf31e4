"""Task event streams (generation.streams): clients follow tasks without polling.

The streams are read with Django's async test client, in an event loop of the test's own; the task changes
happen on other threads through the services, as a worker's requests would make them (so the tests use
committed data).
"""

import asyncio
import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient, RequestFactory

from generation import apis, dispatch, selectors, services, streams
from generation.serializers import TaskOutput, with_host
from generation.services import completion
from tests.conftest import make_worker, off_thread, png_bytes, submit_task
from tests.factories import UserFactory, api_token_for
from workers_app import services as worker_services

pytestmark = pytest.mark.django_db(transaction=True)


class TokenClient(AsyncClient):
    """An async test client that sends the user's API token with every request."""

    def __init__(self, user) -> None:
        super().__init__()
        self.auth = {"Authorization": f"Token {api_token_for(user)}"}

    async def get(self, path, headers=None, **extra):
        return await super().get(path, headers={**self.auth, **(headers or {})}, **extra)


def client_for(user) -> TokenClient:
    return TokenClient(user)


def parse(chunk: bytes | str) -> list[dict]:
    """The task events in a chunk of the stream."""
    text = chunk.decode() if isinstance(chunk, bytes) else chunk
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def next_events(stream, timeout: float = 5.0) -> list[dict]:
    """The next chunk that carries task events (keep-alives and the retry line are skipped)."""
    while True:
        events = parse(await asyncio.wait_for(anext(stream), timeout))
        if events:
            return events


def upload() -> SimpleUploadedFile:
    return SimpleUploadedFile("out.png", png_bytes(64, 64), content_type="image/png")


def run_task(worker):
    """Lease, start, report progress and complete, as a worker's requests would."""
    held = worker_services.worker_lease_next(worker=worker)
    token = held.attempt.lease_token
    task_id = held.task.public_id
    services.task_start(worker=worker, task_id=task_id, lease_token=token)
    services.task_report_progress(worker=worker, task_id=task_id, lease_token=token, value=5, maximum=10)
    services.task_complete(worker=worker, task_id=task_id, lease_token=token, files=[upload()])


def test_a_finished_tasks_stream_is_its_final_event_and_ends():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    run_task(worker)

    client = client_for(user)

    async def read():
        response = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        return [chunk async for chunk in response.streaming_content]

    chunks = asyncio.run(read())
    events = [event for chunk in chunks for event in parse(chunk)]
    assert [e["status"] for e in events] == ["completed"]
    assert events[0]["images"][0]["url"].startswith("http")
    assert len(streams.registry) == 0


def test_a_stream_follows_its_task_from_queued_to_completed():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)

    client = client_for(user)

    async def follow() -> list[str]:
        response = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        stream = aiter(response.streaming_content)
        seen = [e["status"] for e in await next_events(stream)]
        assert seen == ["queued"]
        work = asyncio.ensure_future(off_thread(run_task, worker))
        async for chunk in stream:  # ends with the final event
            seen += [e["status"] for e in parse(chunk)]
        await work
        return seen

    seen = asyncio.run(follow())
    assert seen[0] == "queued" and seen[-1] == "completed"
    assert set(seen) <= {"queued", "leased", "running", "completed"}
    assert len(streams.registry) == 0


def test_a_queued_tasks_position_moves_when_a_task_ahead_of_it_is_leased(monkeypatch):
    monkeypatch.setattr(streams, "QUEUE_SECONDS", 0.2)
    ann, bob = UserFactory(username="ann"), UserFactory(username="bob")
    worker, _ = make_worker()
    submit_task(owner=bob)
    mine = submit_task(owner=ann)

    client = client_for(ann)

    async def follow() -> list[tuple[str, int | None]]:
        response = await client.get(f"/api/v1/tasks/{mine.public_id}/events")
        stream = aiter(response.streaming_content)
        seen = [(e["status"], e["queue_position"]) for e in await next_events(stream)]
        # Bob's task ahead is leased: another task's event, which moves ann's task up the queue.
        await off_thread(worker_services.worker_lease_next, worker=worker)
        seen += [(e["status"], e["queue_position"]) for e in await next_events(stream)]
        await stream.aclose()
        return seen

    assert asyncio.run(follow()) == [("queued", 2), ("queued", 1)]
    assert len(streams.registry) == 0


def test_someone_elses_task_is_a_404_and_the_all_tasks_stream_needs_a_user():
    owner, stranger = UserFactory(username="ann"), UserFactory(username="bob")
    task = submit_task(owner=owner)

    client = client_for(stranger)

    async def ask():
        mine = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        anonymous = await AsyncClient().get("/api/v1/tasks/events")
        return mine, anonymous

    mine, anonymous = asyncio.run(ask())
    assert mine.status_code == 404
    assert mine.json()["error"] == "not_found"
    assert anonymous.status_code in (401, 403)
    assert len(streams.registry) == 0


def test_the_all_tasks_stream_sends_new_tasks_and_on_reconnect_what_finished_meanwhile():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    first = submit_task(owner=user)

    client = client_for(user)

    async def follow() -> tuple[list[dict], str]:
        response = await client.get("/api/v1/tasks/events")
        stream = aiter(response.streaming_content)
        opening = await next_events(stream)
        assert [e["id"] for e in opening] == [str(first.public_id)]
        second = await off_thread(submit_task, owner=user)
        added = await next_events(stream)
        assert added[0]["id"] == str(second.public_id)
        await stream.aclose()
        return opening, "0"

    asyncio.run(follow())
    run_task(worker)  # the first task completes while nobody follows

    async def reconnect() -> list[dict]:
        response = await client.get("/api/v1/tasks/events", headers={"Last-Event-ID": "1"})
        return await next_events(aiter(response.streaming_content))

    events = {e["id"]: e["status"] for e in asyncio.run(reconnect())}
    assert events[str(first.public_id)] == "completed"


def test_a_last_event_id_that_is_not_a_time_is_ignored():
    assert streams.since("1733400000000") is not None
    assert streams.since("not-a-number") is None
    assert streams.since("9" * 40) is None
    assert streams.since(None) is None


def test_under_wsgi_a_stream_is_refused_so_that_the_client_polls(api, user):
    """Django would collect a whole stream before sending it through WSGI: the answer says to poll instead."""
    task = submit_task(owner=user)
    response = api.get(f"/api/v1/tasks/{task.public_id}/events")
    assert response.status_code == 503
    assert response.json()["error"] == "streams_unavailable"


def completion_events(monkeypatch) -> list[dict]:
    """The `task` events published from now on, as their subscribers get them."""
    published: list[dict] = []
    monkeypatch.setitem(dispatch._subscribers, "task", [published.append])
    return published


def as_read(task, request) -> dict:
    """GET tasks/{id}/'s JSON of the task now."""
    return TaskOutput(
        selectors.task_status_for(task.owner, task.public_id), context={"request": request}
    ).data


@pytest.mark.parametrize("batch", [1, 2])
def test_a_completions_event_carries_the_task_exactly_as_get_reads_it(monkeypatch, batch):
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user, batch_size=batch)
    published = completion_events(monkeypatch)
    held = worker_services.worker_lease_next(worker=worker)
    token = held.attempt.lease_token
    services.task_start(worker=worker, task_id=task.public_id, lease_token=token)
    services.task_report_progress(
        worker=worker, task_id=task.public_id, lease_token=token, value=5, maximum=10
    )
    files = [upload() for _ in range(batch)]
    services.task_complete(worker=worker, task_id=task.public_id, lease_token=token, files=files)
    request = RequestFactory().get("/", HTTP_HOST="testserver")
    state = published[-1]["state"]
    assert with_host(request, state) == as_read(task, request)
    assert list(with_host(request, state)) == list(as_read(task, request))  # the same keys in the same order
    assert state["images"][0]["url"].startswith("/media/")  # a path: each stream names its own host


def test_a_report_that_lands_during_a_completion_leaves_its_streams_to_read_the_task(monkeypatch):
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    held = worker_services.worker_lease_next(worker=worker)
    token = held.attempt.lease_token
    verify = completion._verify_batch

    def progress_lands_meanwhile(*args):
        services.task_report_progress(
            worker=worker, task_id=task.public_id, lease_token=token, value=3, maximum=7
        )
        return verify(*args)

    published = completion_events(monkeypatch)
    with mock.patch.object(completion, "_verify_batch", progress_lands_meanwhile):
        services.task_complete(worker=worker, task_id=task.public_id, lease_token=token, files=[upload()])
    assert "state" not in published[-1]
    task.refresh_from_db()
    assert task.status == "completed" and task.started_at is not None
    assert (task.progress_value, task.progress_max) == (7, 7)  # the report's maximum, as before
    assert (
        task.attempt_set.get().started_at == task.started_at or task.attempt_set.get().started_at is not None
    )


def test_a_retried_tasks_completion_leaves_its_streams_to_read_its_attempts(monkeypatch):
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    first = worker_services.worker_lease_next(worker=worker)
    services.task_fail(
        worker=worker,
        task_id=task.public_id,
        lease_token=first.attempt.lease_token,
        code="internal",
        message="try again",
        retryable=True,
    )
    held = worker_services.worker_lease_next(worker=worker)
    published = completion_events(monkeypatch)
    services.task_complete(
        worker=worker, task_id=task.public_id, lease_token=held.attempt.lease_token, files=[upload()]
    )
    assert "state" not in published[-1]


def counting_reads(monkeypatch) -> list[str]:
    """The status of every task a stream reads (its first events and each change without the task's JSON)."""
    read: list[str] = []

    def task_event(request, user, task_id):
        event = apis.task_event.__wrapped__(request, user, task_id)
        read.append(event["status"])
        return event

    task_event.__wrapped__ = apis.task_event
    monkeypatch.setattr(apis, "task_event", task_event)
    return read


def test_a_stream_sends_the_completed_task_from_its_event_without_reading_it(monkeypatch):
    """The task runs before the stream opens, so the completion's is the only change the stream hears: a
    start or progress event arriving late would be read, and may read the task completed by then."""
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    held = worker_services.worker_lease_next(worker=worker)
    lease = {"worker": worker, "task_id": task.public_id, "lease_token": held.attempt.lease_token}
    services.task_start(**lease)
    services.task_report_progress(**lease, value=5, maximum=10)
    monkeypatch.setattr(streams, "FALLBACK_SECONDS", 3600.0)  # no look of its own meanwhile
    read = counting_reads(monkeypatch)
    client = client_for(user)

    async def follow() -> list[dict]:
        response = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        stream = aiter(response.streaming_content)
        seen = await next_events(stream)
        work = asyncio.ensure_future(off_thread(services.task_complete, **lease, files=[upload()]))
        async for chunk in stream:  # ends with the final event
            seen += parse(chunk)
        await work
        return seen

    seen = asyncio.run(follow())
    assert seen[-1]["status"] == "completed" and "completed" not in read
    assert seen[-1] == json.loads(json.dumps(as_read(task, RequestFactory().get("/"))))


def test_changes_in_a_burst_wait_for_one_read_and_a_final_change_goes_out_at_once(monkeypatch):
    """Lease, start and progress within the read interval cost no read; the cancel, a final change without
    the task's JSON, is read at once, and that one read stands for all of them."""
    monkeypatch.setattr(streams, "READ_SECONDS", 3600.0)
    monkeypatch.setattr(streams, "FALLBACK_SECONDS", 3600.0)
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    read = counting_reads(monkeypatch)
    client = client_for(user)

    def lease_start_progress():
        held = worker_services.worker_lease_next(worker=worker)
        lease = {"worker": worker, "task_id": task.public_id, "lease_token": held.attempt.lease_token}
        services.task_start(**lease)
        services.task_report_progress(**lease, value=5, maximum=10)

    async def follow() -> list[str]:
        response = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        stream = aiter(response.streaming_content)
        seen = [e["status"] for e in await next_events(stream)]
        await off_thread(lease_start_progress)
        await off_thread(services.task_cancel, task=task)
        async for chunk in stream:  # ends with the final event
            seen += [e["status"] for e in parse(chunk)]
        return seen

    assert asyncio.run(follow()) == ["queued", "cancelled"]
    assert read == ["queued", "cancelled"]
    assert len(streams.registry) == 0


def test_a_change_that_is_not_final_is_read_once_it_has_been_gathered_for_a_moment(monkeypatch):
    monkeypatch.setattr(streams, "READ_SECONDS", 0.2)
    monkeypatch.setattr(streams, "FALLBACK_SECONDS", 3600.0)
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit_task(owner=user)
    client = client_for(user)

    async def follow() -> list[str]:
        response = await client.get(f"/api/v1/tasks/{task.public_id}/events")
        stream = aiter(response.streaming_content)
        seen = [e["status"] for e in await next_events(stream)]
        await off_thread(worker_services.worker_lease_next, worker=worker)
        seen += [e["status"] for e in await next_events(stream)]
        await stream.aclose()
        return seen

    assert asyncio.run(follow()) == ["queued", "leased"]


def test_only_finishing_changes_are_final_events(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda kind, data: published.append((kind, data)))
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    requeued = submit_task(owner=user)
    held = worker_services.worker_lease_next(worker=worker)
    services.task_release(worker=worker, task_id=requeued.public_id, lease_token=held.attempt.lease_token)
    services.task_cancel(task=requeued)
    finals = [data.get("final", False) for kind, data in published if kind == "task"]
    assert finals == [False, False, False, True]  # submitted, leased, released (queued again), cancelled


def test_an_all_tasks_stream_sends_a_short_job_as_its_final_event_without_reading_it(monkeypatch):
    """A client that keeps the all-tasks stream open (as a ComfyUI client keeps its socket) and runs one job
    at a time: the new task, its lease, start and progress are gathered, and the completion's event, which
    carries the task, stands for them all: no read, also when the stream has been quiet for longer than it
    gathers changes (its last read long past)."""
    monkeypatch.setattr(streams, "READ_SECONDS", 1.0)
    monkeypatch.setattr(streams, "FALLBACK_SECONDS", 3600.0)
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    client = client_for(user)

    read = counting_reads(monkeypatch)

    async def follow() -> list[dict]:
        response = await client.get("/api/v1/tasks/events")
        stream = aiter(response.streaming_content)
        assert parse(await anext(stream)) == []  # open (nothing to follow yet): it listens from now on
        await asyncio.sleep(1.2)  # quiet for longer than READ_SECONDS
        reading = asyncio.ensure_future(next_events(stream))  # the stream runs while the job does
        task = await off_thread(submit_task, owner=user)
        await off_thread(run_task, worker)
        events = await reading
        await stream.aclose()
        return task, events

    task, events = asyncio.run(follow())
    assert [(e["id"], e["status"]) for e in events] == [(str(task.public_id), "completed")]
    assert events[0]["images"][0]["url"].startswith("http")
    assert read == []
