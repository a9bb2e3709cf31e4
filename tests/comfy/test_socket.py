"""The front door's socket (generation.comfy_ws), driven as an ASGI server drives it; the task's changes
happen on other threads through the services, as the worker's requests would make them."""

import asyncio
import json
import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from generation import comfy_ws, services
from t2i_project.asgi import application
from tests.comfy.workflows import two_outputs
from tests.conftest import make_worker, off_thread, png_bytes
from tests.factories import UserFactory, api_token_for

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """One client socket on the ASGI application."""

    def __init__(self, query: str = "", token: str | None = None, path: str = "/comfy/ws") -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        headers = [(b"authorization", f"Token {token}".encode())] if token else []
        scope = {"type": "websocket", "path": path, "query_string": query.encode(), "headers": headers}
        self.app = asyncio.ensure_future(application(scope, self.inbox.get, self.outbox.put))

    async def connect(self) -> dict:
        await self.inbox.put({"type": "websocket.connect"})
        return await asyncio.wait_for(self.outbox.get(), 5)

    async def frame(self, timeout: float = 5) -> dict:
        return json.loads((await asyncio.wait_for(self.outbox.get(), timeout))["text"])

    async def until_done(self) -> list[dict]:
        """Frames up to `executing` with node null."""
        frames = [await self.frame()]
        while not (frames[-1]["type"] == "executing" and frames[-1]["data"]["node"] is None):
            frames.append(await self.frame())
        return frames

    async def close(self) -> None:
        await self.inbox.put({"type": "websocket.disconnect"})
        await asyncio.wait_for(self.app, 5)


in_thread = off_thread


async def submit_p1(owner):
    """The two-output workflow as prompt p1 of client c1."""
    fields = {"workflow": two_outputs(), "client_prompt_id": "p1", "client_id": "c1"}
    task, _ = await in_thread(services.comfy_prompt_submit, owner=owner, **fields)
    return task


def relay_and_complete(worker, task) -> None:
    lease = services.task_lease_next(worker=worker)
    assert lease.task.pk == task.pk
    token = lease.attempt.lease_token
    frames = [
        ["execution_start", {"prompt_id": "worker-side-id", "timestamp": 1}],
        ["execution_cached", {"nodes": [], "prompt_id": "worker-side-id", "timestamp": 2}],
        ["executing", {"node": "2", "display_node": "2", "prompt_id": "worker-side-id"}],
        ["progress", {"value": 1, "max": 2, "node": "2", "prompt_id": "worker-side-id"}],
        [
            "executed",
            {"node": "3", "output": {"images": [{"filename": "x.png"}]}, "prompt_id": "worker-side-id"},
        ],
        ["status", {"status": {}}],
        ["executing", {"node": None, "display_node": None, "prompt_id": "worker-side-id"}],
    ]
    assert (
        services.task_relay_frames(worker=worker, task_id=task.public_id, lease_token=token, frames=frames)
        == 4
    )
    files = [
        SimpleUploadedFile("a.png", png_bytes(), "image/png"),
        SimpleUploadedFile("b.png", png_bytes(), "image/png"),
    ]
    services.task_complete(
        worker=worker, task_id=task.public_id, lease_token=token, files=files, node_ids=["3", "10"]
    )


def test_a_client_gets_its_prompts_frames_in_comfyuis_order():
    user = UserFactory(username="ann")
    token = api_token_for(user)
    worker, _ = make_worker()

    async def follow():
        socket = Socket("clientId=c1", token)
        assert (await socket.connect())["type"] == "websocket.accept"
        first = await socket.frame()
        assert first == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c1"},
        }
        task = await submit_p1(user)
        assert await socket.frame() == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 1}}},
        }
        await in_thread(relay_and_complete, worker, task)
        frames = await socket.until_done()
        await socket.close()
        return frames

    frames = asyncio.run(follow())
    # A status frame comes whenever the queue count moved as the socket saw it; under load the socket may
    # look at an event late and send one more. The prompt's own frames keep ComfyUI's order.
    kinds = [f["type"] for f in frames if f["type"] != "status"]
    assert kinds == [
        "execution_start", "execution_cached", "executing", "progress",
        "executed", "executed", "execution_success", "executing",
    ]  # fmt: skip
    assert frames[-2]["type"] == "status"
    assert all(f["data"]["prompt_id"] == "p1" for f in frames if f["type"] != "status")
    executed = {
        f["data"]["node"]: f["data"]["output"]["images"][0] for f in frames if f["type"] == "executed"
    }
    assert set(executed) == {"3", "10"} and all(ref["type"] == "output" for ref in executed.values())
    assert frames[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert len(comfy_ws.hub._connections) == 0


def test_other_clients_and_users_get_none_of_it():
    ann, bob = UserFactory(username="ann"), UserFactory(username="bob")
    ann_token, bob_token = api_token_for(ann), api_token_for(bob)
    worker, _ = make_worker()

    async def watch():
        other_client, other_user = Socket("clientId=c2", ann_token), Socket("clientId=c1", bob_token)
        for socket in (other_client, other_user):
            await socket.connect()
            await socket.frame()  # status
        task = await submit_p1(ann)
        # The queue count moved (the task waits until it is leased below, so the count is 1 when the
        # socket looks, however slowly its event is handled).
        seen_other_client = [await other_client.frame()]
        await in_thread(relay_and_complete, worker, task)
        with pytest.raises(asyncio.TimeoutError):
            while True:
                seen_other_client.append(await other_client.frame(timeout=0.5))
        with pytest.raises(asyncio.TimeoutError):
            await other_user.frame(timeout=0.3)
        for socket in (other_client, other_user):
            await socket.close()
        return seen_other_client

    seen = asyncio.run(watch())
    assert seen[0]["data"]["status"]["exec_info"]["queue_remaining"] == 1
    assert {f["type"] for f in seen} == {"status"}  # the same user's queue count, nothing else


def test_without_credentials_the_handshake_is_refused_unless_anonymous_is_on(settings):
    async def connect(**kwargs) -> dict:
        socket = Socket("clientId=x", **kwargs)
        answer = await socket.connect()
        if answer["type"] == "websocket.accept":
            await socket.frame()
            await socket.close()
        return answer

    assert asyncio.run(connect())["type"] == "websocket.close"
    assert asyncio.run(connect(token="not-a-token"))["type"] == "websocket.close"
    assert asyncio.run(connect(path="/comfy/other"))["type"] == "websocket.close"
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}
    assert asyncio.run(connect())["type"] == "websocket.accept"


def test_a_client_id_too_long_is_refused(settings):
    settings.T2I = {**settings.T2I, "ALLOW_ANONYMOUS_SUBMIT": True}

    async def connect() -> dict:
        return await Socket("clientId=" + "x" * 101).connect()

    assert asyncio.run(connect())["type"] == "websocket.close"


def test_frames_that_came_before_the_end_are_sent_even_when_the_socket_looks_late():
    """Under load the socket may read a task event only after the task has ended: the worker's frames that
    came meanwhile still go out, before the end frames."""
    user = UserFactory(username="ann")
    token = api_token_for(user)
    worker, _ = make_worker()

    async def follow():
        socket = Socket("clientId=c1", token)
        await socket.connect()
        await socket.frame()  # status
        task = await submit_p1(user)
        await socket.frame()  # status: queued 1
        # Lease, relay and complete while this loop is blocked: every event is queued before the socket
        # reads the first, which then finds the task ended.
        thread = threading.Thread(target=lambda: _closing(relay_and_complete, worker, task))
        thread.start()
        thread.join(10)
        frames = await socket.until_done()
        await socket.close()
        return frames

    kinds = [f["type"] for f in asyncio.run(follow())]
    assert kinds[:4] == ["execution_start", "execution_cached", "executing", "progress"]
    assert kinds[-1] == "executing"


def _closing(function, *args) -> None:
    try:
        function(*args)
    finally:
        connection.close()


def test_a_completions_event_reads_the_task_with_its_images_in_one_query(django_assert_num_queries):
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    fields = {"workflow": two_outputs(), "client_prompt_id": "p1", "client_id": "c1"}
    task, _ = services.comfy_prompt_submit(owner=user, **fields)
    relay_and_complete(worker, task)
    with django_assert_num_queries(2):  # the images with their task, the queue count
        frames = comfy_ws.Session(user, "c1").task_changed(str(task.public_id), landed=True)
    assert [f["type"] for f in frames] == ["executed", "executed", "execution_success", "status", "executing"]
    with django_assert_num_queries(3):  # another change: the task, then its images as it has ended, the count
        assert comfy_ws.Session(user, "c1").task_changed(str(task.public_id)) == frames
    stranger = comfy_ws.Session(UserFactory(), "c1")
    with django_assert_num_queries(2):  # not a task of this space: no images, no task; no frames
        assert stranger.task_changed(str(task.public_id), landed=True) == []


def test_a_templates_task_completion_costs_the_sockets_nothing():
    """A REST task's completion (its landed state names a template) is in no front-door space: the owner's
    sockets are not woken to read it."""

    class Loop:
        def call_soon_threadsafe(self, function, *args):
            function(*args)

    hub = comfy_ws.Hub()
    connection = comfy_ws.Connection(Loop(), 7, "c1")
    hub.add(connection)
    hub.task({"id": "a", "owner": 7, "state": {"status": "completed", "template": "noise-test"}})
    hub.task({"id": "b", "owner": 7, "state": {"status": "completed", "template": None}})
    hub.task({"id": "c", "owner": 7})
    assert list(connection.items) == [("task", ("b", True)), ("task", ("c", False))]
