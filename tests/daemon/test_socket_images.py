"""Images ComfyUI sends as binary socket frames: parsed (socket_images), routed to the prompt that sent them
(ComfyUIClient), and kept as the task's outputs or relayed as previews (runner)."""

from __future__ import annotations

import base64
import struct
import threading

import pytest

from tests.daemon.fakes import FakeComfy, FakeScheduler, make_lease, png_bytes, type1, type4, wait_until
from tests.daemon.test_comfyui_client import WORKFLOW
from workers_app.daemon.frames import MAX_PREVIEW_BYTES, FrameRelay
from workers_app.daemon.prompt_tracker import OutcomeStatus, PromptOutcome
from workers_app.daemon.runner import RunnerSettings, TaskResult, run_task
from workers_app.daemon.socket_images import SocketImage, parse, socket_image_nodes

PNG = png_bytes()


# -- parsing ------------------------------------------------------------------------------------------------
def test_both_image_frame_types_are_parsed():
    assert parse(type1(PNG)) == SocketImage("png", PNG)
    assert parse(type1(b"\xff\xd8jpeg", 1)) == SocketImage("jpeg", b"\xff\xd8jpeg")
    assert parse(type4(PNG, node_id="3", prompt_id="p")) == SocketImage("png", PNG, "3", "p")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        struct.pack(">I", 1),
        type1(PNG, 7),  # unknown image format
        type1(b""),
        struct.pack(">II", 3, 1) + b"3node text",  # TEXT frames carry no image
        struct.pack(">II", 4, 100) + b"{}",  # metadata longer than the frame
        struct.pack(">II", 4, 2) + b"[]" + PNG,  # metadata not an object
        struct.pack(">II", 4, 4) + b"nope" + PNG,
        type4(PNG, image_type="image/gif"),
    ],
)
def test_other_and_malformed_frames_are_ignored(payload):
    assert parse(payload) is None


def test_the_socket_image_nodes_of_a_workflow():
    workflow = {
        **WORKFLOW,
        "4": {"class_type": "SaveImageWebsocket", "inputs": {}},
        "5": {"class_type": "ETN_SendImageWebSocket", "inputs": {}},
    }
    assert socket_image_nodes(workflow) == {"4", "5"}


# -- the runner ---------------------------------------------------------------------------------------------
SOCKET_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    "3": {"class_type": "KSampler", "inputs": {}},
}


def run(comfy, sched, lease):
    settings = RunnerSettings(sleep=lambda seconds: None, progress_interval=0.0)
    return run_task(lease, comfy=comfy, scheduler=sched, settings=settings)


def run_until_frames_sent(comfy, sched, lease):
    """Run the task, its prompt (in a FakeComfy without auto_finish) ending once frames were sent: frames
    not yet sent when a task ends are dropped."""
    results = []
    thread = threading.Thread(target=lambda: results.append(run(comfy, sched, lease)))
    thread.start()
    assert wait_until(lambda: sched.calls_of("frames"))
    comfy.finish("p1")
    thread.join(5)
    return results[0]


def test_socket_images_are_uploaded_as_the_tasks_images_with_their_node():
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: PromptOutcome(OutcomeStatus.SUCCESS, pid, ())  # history has no file
    comfy.socket_images = [("2", SocketImage("png", PNG)), ("2", SocketImage("jpeg", b"\xff\xd8j"))]
    sched = FakeScheduler()
    assert run(comfy, sched, make_lease(workflow=SOCKET_WORKFLOW)) is TaskResult.COMPLETED
    (complete,) = sched.calls_of("complete")
    assert complete["images"] == [("socket_2_00001.png", PNG, "2"), ("socket_2_00002.jpg", b"\xff\xd8j", "2")]
    assert "extra_data" not in comfy.submit_options["p1"]


def test_socket_images_missed_while_the_socket_was_down_fail_the_attempt_for_a_retry():
    comfy = FakeComfy()
    comfy.outcome_for = lambda pid: PromptOutcome(OutcomeStatus.SUCCESS, pid, (), socket_gap=True)
    comfy.socket_images = [("2", SocketImage("png", PNG))]
    sched = FakeScheduler()
    assert run(comfy, sched, make_lease(workflow=SOCKET_WORKFLOW)) is TaskResult.FAILED
    (failed,) = sched.calls_of("fail")
    assert failed["code"] == "comfyui_lost" and failed["retryable"] is True
    assert not sched.calls_of("complete")


def test_previews_go_to_a_front_door_client_that_asked_for_them():
    comfy = FakeComfy(auto_finish=False)
    comfy.socket_images = [("3", SocketImage("jpeg", b"\xff\xd8preview"))]
    sched = FakeScheduler()
    lease = make_lease(workflow=SOCKET_WORKFLOW, relay_frames=True, preview_method="taesd")
    assert run_until_frames_sent(comfy, sched, lease) is TaskResult.COMPLETED
    assert comfy.submit_options["p1"]["extra_data"] == {"preview_method": "taesd"}
    (frame,) = [f for call in sched.calls_of("frames") for f in call["frames"]]
    encoded = base64.b64encode(b"\xff\xd8preview").decode()
    assert frame == ["t2i_preview", {"node": "3", "format": "jpeg", "image": encoded}]
    # A preview is not an output: only the history's image was uploaded.
    assert [name for name, _, _ in sched.calls_of("complete")[0]["images"]] == ["p1.png"]


def test_previews_go_nowhere_unless_the_task_asked_for_them():
    comfy = FakeComfy()
    comfy.socket_images = [("3", SocketImage("jpeg", b"\xff\xd8preview"))]
    sched = FakeScheduler()
    lease = make_lease(workflow=SOCKET_WORKFLOW, relay_frames=True)
    assert run(comfy, sched, lease) is TaskResult.COMPLETED
    assert not sched.calls_of("frames")


def test_a_task_that_asked_for_previews_without_a_socket_client_sends_them_for_its_page():
    comfy = FakeComfy(auto_finish=False)
    comfy.socket_images = [
        ("3", SocketImage("jpeg", b"\xff\xd8preview")),
        ("3", SocketImage("jpeg", b"\xff\xd8x")),
    ]
    sched = FakeScheduler()
    lease = make_lease(workflow=SOCKET_WORKFLOW, preview_method="auto")
    assert run_until_frames_sent(comfy, sched, lease) is TaskResult.COMPLETED
    assert "on_frame" not in comfy.submit_options["p1"]  # no socket client: ComfyUI's text frames stay here
    sent = [f for call in sched.calls_of("frames") for f in call["frames"]]
    assert [kind for kind, _ in sent] == ["t2i_preview"]  # the second came too soon after the first


def test_a_preview_the_scheduler_would_refuse_is_dropped_at_the_worker():
    sent: list = []
    relay = FrameRelay(sent.extend, clock=lambda: 100.0, sleep=lambda seconds: None)
    relay.put_preview("3", SocketImage("webp", b"RIFF"))
    relay.put_preview("3", SocketImage("jpeg", b"\xff" * (MAX_PREVIEW_BYTES + 1)))
    relay.put_preview("3", SocketImage("jpeg", b"\xff\xd8"))
    relay.put_preview("3", SocketImage("jpeg", b"\xff\xd8 too soon"))  # the same instant: over 4 a second
    assert relay.join(2)
    assert [data["image"] for _, data in sent] == [base64.b64encode(b"\xff\xd8").decode()]
