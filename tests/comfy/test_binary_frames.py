"""Binary frames on the front door's socket: the images of SaveImageWebsocket-style nodes (stored as the
task's images, sent as ComfyUI's type 1 frames before the prompt's end, absent from history) and the latent
previews a client asked for with `extra_data.preview_method` (stored as the task's newest preview, read when
the event channel names it)."""

import asyncio
import base64
import json
import struct

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from generation import comfy_shapes, services
from generation.exceptions import InvalidInput
from generation.jobs import retention_job
from generation.models import Task, TaskPreview
from generation.services.frames import PREVIEW
from t2i_project.asgi import application
from tests.comfy.workflows import NOISE
from tests.conftest import NOISE_NODES, SD15_NODES, capabilities, make_worker, off_thread, png_bytes
from tests.factories import UserFactory, api_token_for

pytestmark = pytest.mark.django_db(transaction=True)

SOCKET_NODES = (*SD15_NODES, *NOISE_NODES, "SaveImageWebsocket")


def socket_workflow() -> dict:
    """NOISE whose node 3 sends its images on the socket, plus a SaveImage (10) that writes a file."""
    workflow = json.loads(json.dumps(NOISE))
    workflow["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}
    workflow["10"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "plain"}}
    return workflow


class Socket:
    """A client socket on the ASGI application that keeps text and binary frames apart."""

    def __init__(self, token: str) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        headers = [(b"authorization", f"Token {token}".encode())]
        scope = {"type": "websocket", "path": "/comfy/ws", "query_string": b"clientId=c1", "headers": headers}
        self.app = asyncio.ensure_future(application(scope, self.inbox.get, self.outbox.put))

    async def connect(self) -> None:
        await self.inbox.put({"type": "websocket.connect"})
        assert (await asyncio.wait_for(self.outbox.get(), 5))["type"] == "websocket.accept"

    async def message(self, timeout: float = 5) -> dict | bytes:
        sent = await asyncio.wait_for(self.outbox.get(), timeout)
        return sent["bytes"] if sent.get("bytes") is not None else json.loads(sent["text"])

    async def until_done(self) -> list[dict | bytes]:
        messages = [await self.message()]
        while not (isinstance(messages[-1], dict) and _is_end(messages[-1])):
            messages.append(await self.message())
        return messages

    async def close(self) -> None:
        await self.inbox.put({"type": "websocket.disconnect"})
        await asyncio.wait_for(self.app, 5)


def _is_end(frame: dict) -> bool:
    return frame["type"] == "executing" and frame["data"]["node"] is None


def submit(owner, workflow: dict, **extra) -> Task:
    task, _ = services.comfy_prompt_submit(
        owner=owner, workflow=workflow, client_prompt_id="p1", client_id="c1", **extra
    )
    return task


def lease(worker, task: Task):
    leased = services.task_lease_next(worker=worker)
    assert leased.task.pk == task.pk
    return leased.attempt.lease_token


def complete_one(worker, task: Task, lease_token) -> None:
    """Complete the task with one image, saved by node 3."""
    image = SimpleUploadedFile("a.png", png_bytes(), "image/png")
    services.task_complete(
        worker=worker, task_id=task.public_id, lease_token=lease_token, files=[image], node_ids=["3"]
    )


def test_socket_images_reach_the_client_as_binary_frames_before_the_end_and_stay_out_of_history():
    user = UserFactory(username="ann")
    token = api_token_for(user)
    worker, _ = make_worker(caps=capabilities(nodes=SOCKET_NODES))
    sent = [png_bytes(color=(1, 2, 3)), png_bytes(color=(4, 5, 6)), png_bytes(color=(7, 8, 9))]

    def run() -> Task:
        task = submit(user, socket_workflow())
        lease_token = lease(worker, task)
        files = [SimpleUploadedFile(f"{i}.png", data, "image/png") for i, data in enumerate(sent)]
        services.task_complete(
            worker=worker,
            task_id=task.public_id,
            lease_token=lease_token,
            files=files,
            node_ids=["3", "3", "10"],
        )
        return task

    async def follow():
        socket = Socket(token)
        await socket.connect()
        await socket.message()  # status
        task = await off_thread(run)
        messages = await socket.until_done()
        await socket.close()
        return task, messages

    task, messages = asyncio.run(follow())
    binary = [m for m in messages if isinstance(m, bytes)]
    assert binary == [struct.pack(">II", 1, 2) + sent[0], struct.pack(">II", 1, 2) + sent[1]]
    kinds = [m if isinstance(m, bytes) else m["type"] for m in messages if not _is_status(m)]
    assert kinds == [*binary, "executed", "execution_success", "executing"]
    executed = next(m for m in messages if isinstance(m, dict) and m["type"] == "executed")
    assert executed["data"]["node"] == "10"  # SaveImageWebsocket leaves no UI output, as in ComfyUI
    task.refresh_from_db()
    assert task.images.count() == 3  # the REST API and the gallery have every image
    assert list(comfy_shapes.history_entry(task)["outputs"]) == ["10"]


def _is_status(message) -> bool:
    return isinstance(message, dict) and message["type"] == "status"


def test_tooling_nodes_socket_images_are_listed_as_websocket_images():
    user = UserFactory(username="ann")
    worker, _ = make_worker(caps=capabilities(nodes=(*SOCKET_NODES, "ETN_SendImageWebSocket")))
    workflow = socket_workflow()
    workflow["3"] = {"class_type": "ETN_SendImageWebSocket", "inputs": {"images": ["2", 0], "format": "PNG"}}
    task = submit(user, workflow)
    lease_token = lease(worker, task)
    complete_one(worker, task, lease_token)
    task.refresh_from_db()
    outputs = comfy_shapes.history_entry(task)["outputs"]
    assert outputs == {
        "3": {"images": [{"source": "websocket", "content-type": "image/png", "type": "output"}]}
    }


def preview_frame(data: bytes, image_format: str = "jpeg", node: str = "3") -> list:
    return [PREVIEW, {"node": node, "format": image_format, "image": base64.b64encode(data).decode()}]


def test_a_client_that_asked_for_previews_gets_the_newest_as_a_binary_frame():
    user = UserFactory(username="ann")
    token = api_token_for(user)
    worker, _ = make_worker()
    first, newest = b"\xff\xd8first-jpeg", b"\xff\xd8newest-jpeg"

    def relay(task: Task, lease_token, frames: list) -> int:
        return services.task_relay_frames(
            worker=worker, task_id=task.public_id, lease_token=lease_token, frames=frames
        )

    async def follow():
        socket = Socket(token)
        await socket.connect()
        await socket.message()  # status
        task = await off_thread(submit, user, NOISE, extra_data={"preview_method": "auto"})
        await socket.message()  # status: queued 1
        lease_token = await off_thread(lease, worker, task)
        # Two batches: the socket may read the first marker after the second preview replaced the first.
        await off_thread(relay, task, lease_token, [preview_frame(first)])
        got = await socket.message()
        await off_thread(relay, task, lease_token, [preview_frame(newest, "png")])
        while got != struct.pack(">II", 1, 2) + newest:
            got = await socket.message()
        await socket.close()
        return task

    task = asyncio.run(follow())
    stored = TaskPreview.objects.get(task=task)
    assert (stored.seq, bytes(stored.data), stored.node_id) == (2, newest, "3")


def test_previews_are_not_kept_for_a_client_that_did_not_ask():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit(user, NOISE)
    lease_token = lease(worker, task)
    relayed = services.task_relay_frames(
        worker=worker, task_id=task.public_id, lease_token=lease_token, frames=[preview_frame(b"x")]
    )
    assert relayed == 0 and not TaskPreview.objects.exists()


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ([PREVIEW, {"node": "3", "format": "gif", "image": "eA=="}], "frames.format"),
        ([PREVIEW, {"node": "3", "format": "png", "image": "not base64!"}], "frames.image"),
        ([PREVIEW, {"node": "", "format": "png", "image": "eA=="}], "frames.node"),
        ([PREVIEW, {"node": "3", "format": "png", "image": "A" * 800_000}], "frames.image"),
    ],
)
def test_a_bad_preview_is_refused_naming_the_field(frame, field):
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit(user, NOISE, extra_data={"preview_method": "taesd"})
    lease_token = lease(worker, task)
    with pytest.raises(InvalidInput) as refused:
        services.task_relay_frames(
            worker=worker, task_id=task.public_id, lease_token=lease_token, frames=[frame]
        )
    assert field in refused.value.fields
    assert not TaskPreview.objects.exists()


def test_the_preview_method_goes_with_the_lease_and_a_bad_one_is_refused():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit(user, NOISE, extra_data={"preview_method": "latent2rgb", "extra_pnginfo": {"x": 1}})
    leased = services.task_lease_next(worker=worker)
    from workers_app.apis import LeaseOutput

    assert LeaseOutput(leased).data["preview_method"] == "latent2rgb"
    assert task.preview_method == "latent2rgb"
    for extra_data, field in (({"preview_method": "fast"}, "extra_data.preview_method"), ([], "extra_data")):
        with pytest.raises(InvalidInput) as refused:
            services.comfy_prompt_submit(owner=user, workflow=NOISE, client_id="c1", extra_data=extra_data)
        assert field in refused.value.fields
    assert Task.objects.count() == 1


def test_the_retention_job_deletes_the_previews_of_tasks_no_longer_running():
    user = UserFactory(username="ann")
    worker, _ = make_worker()
    task = submit(user, NOISE, extra_data={"preview_method": "auto"})
    lease_token = lease(worker, task)
    services.task_relay_frames(
        worker=worker, task_id=task.public_id, lease_token=lease_token, frames=[preview_frame(b"x")]
    )
    assert "preview" not in retention_job()  # still running: kept
    complete_one(worker, task, lease_token)
    assert "1 preview(s) deleted" in retention_job()
    assert not TaskPreview.objects.exists()
