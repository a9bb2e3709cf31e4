"""The worker socket (workers_app.worker_socket, protocol 3), driven as an ASGI server drives it: each call
answers as its HTTP twin does and changes the database the same way."""

import asyncio
import json
import uuid

import pytest

from generation import services
from generation.models import Task, TaskAttempt
from t2i_project.asgi import application
from tests.conftest import make_worker
from tests.factories import TaskFactory
from workers_app.models import Worker
from workers_app.worker_socket import PATH

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """One daemon's socket on the ASGI application."""

    def __init__(self, token: str, protocol: str = "3") -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        headers = [(b"authorization", f"Bearer {token}".encode()), (b"t2i-protocol", protocol.encode())]
        scope = {"type": "websocket", "path": PATH, "query_string": b"", "headers": headers}
        self.app = asyncio.ensure_future(application(scope, self.inbox.get, self.outbox.put))
        self.calls = 0

    async def connect(self) -> dict:
        await self.inbox.put({"type": "websocket.connect"})
        return await asyncio.wait_for(self.outbox.get(), 5)

    async def send_text(self, text: str) -> dict:
        await self.inbox.put({"type": "websocket.receive", "text": text})
        return json.loads((await asyncio.wait_for(self.outbox.get(), 5))["text"])

    async def call(self, op: str, **body) -> dict:
        self.calls += 1
        answer = await self.send_text(json.dumps({"id": self.calls, "op": op, **body}))
        assert answer["id"] == self.calls
        return answer

    async def close(self) -> None:
        await self.inbox.put({"type": "websocket.disconnect"})
        await asyncio.wait_for(self.app, 5)


def leased(worker: Worker) -> tuple[Task, str]:
    task = TaskFactory()
    lease = services.task_lease_next(worker=worker)
    assert lease.task.pk == task.pk
    return task, str(lease.attempt.lease_token)


def test_start_progress_and_heartbeat_answer_and_change_the_task_as_over_http():
    worker, token = make_worker()
    task, lease_token = leased(worker)
    task_id = str(task.public_id)

    async def session():
        socket = Socket(token)
        accept = await socket.connect()
        assert accept["type"] == "websocket.accept"
        assert (b"T2I-Protocol", b"3") in accept["headers"]
        started = await socket.call(
            "start", task_id=task_id, lease_token=lease_token, comfyui_prompt_id="p-1"
        )
        progressed = await socket.call("progress", task_id=task_id, lease_token=lease_token, value=5, max=20)
        beat = await socket.call("heartbeat", tasks=[{"task_id": task_id, "lease_token": lease_token}])
        await socket.close()
        return started, progressed, beat

    started, progressed, beat = asyncio.run(session())
    assert started == {"id": 1, "status": 200, "body": {"cancel": False}}
    assert progressed == {"id": 2, "status": 200, "body": {"cancel": False}}
    assert beat["status"] == 200
    assert beat["body"]["renewed"] == [task_id] and beat["body"]["lost"] == []
    task.refresh_from_db()
    assert task.status == Task.Status.RUNNING
    assert (task.progress_value, task.progress_max) == (5, 20)
    assert TaskAttempt.objects.get(task=task).comfyui_prompt_id == "p-1"


def test_errors_are_the_http_calls_answers_and_the_socket_stays_open():
    worker, token = make_worker()
    task, lease_token = leased(worker)
    task_id = str(task.public_id)

    async def session():
        socket = Socket(token)
        await socket.connect()
        answers = [
            await socket.call("progress", task_id=task_id, lease_token=str(uuid.uuid4()), value=1, max=2),
            await socket.call("progress", task_id=task_id, lease_token=lease_token, value=3, max=2),
            await socket.call("start", task_id="not-a-uuid", lease_token=lease_token),
            await socket.call("complete", task_id=task_id, lease_token=lease_token),
            await socket.send_text("{not json"),
            await socket.send_text("[1, 2]"),
            await socket.call("progress", task_id=task_id, lease_token=lease_token, value=1, max=2),
        ]
        await socket.close()
        return answers

    lost, out_of_range, bad_id, unknown_op, not_json, not_object, fine = asyncio.run(session())
    assert (lost["status"], lost["body"]["error"]) == (409, "lease_lost")
    assert out_of_range["status"] == 400 and "value" in out_of_range["body"]["fields"]
    assert bad_id["status"] == 404
    assert unknown_op["status"] == 400 and "op" in unknown_op["body"]["fields"]
    assert not_json == {"id": None, "status": 400, "body": {**not_json["body"], "error": "parse_error"}}
    assert not_object["status"] == 400
    assert fine["status"] == 200
    task.refresh_from_db()
    assert (task.progress_value, task.progress_max) == (1, 2)


@pytest.mark.parametrize("case", ["unknown token", "protocol 2", "disabled worker"])
def test_a_refused_handshake_is_closed_before_it_is_accepted(case):
    worker, token = make_worker()
    if case == "disabled worker":
        Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DISABLED)

    async def session():
        socket = Socket("nope" if case == "unknown token" else token, "2" if case == "protocol 2" else "3")
        answer = await socket.connect()
        await asyncio.wait_for(socket.app, 5)
        return answer

    assert asyncio.run(session()) == {"type": "websocket.close", "code": 1008}


def test_a_worker_disabled_while_its_socket_is_open_is_told_at_its_next_heartbeat():
    worker, token = make_worker()

    async def session():
        socket = Socket(token)
        await socket.connect()
        first = await socket.call("heartbeat", tasks=[])
        await asyncio.to_thread(
            lambda: Worker.objects.filter(pk=worker.pk).update(status=Worker.Status.DISABLED)
        )
        second = await socket.call("heartbeat", tasks=[])
        closed = await asyncio.wait_for(socket.outbox.get(), 5)
        await asyncio.wait_for(socket.app, 5)
        return first, second, closed

    first, second, closed = asyncio.run(session())
    assert first["status"] == 200
    assert (second["status"], second["body"]["error"]) == (403, "worker_disabled")
    assert closed == {"type": "websocket.close", "code": 4403}
