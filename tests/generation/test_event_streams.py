"""Task event streams (generation.streams): clients follow tasks without polling.

The streams are read with Django's async test client, in an event loop of the test's own; the task changes
happen on other threads through the services, as a worker's requests would make them (so the tests use
committed data).
"""

import asyncio
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from generation import services, streams
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
