"""ComfyUIClient against a fake ComfyUI (aiohttp HTTP + WebSocket) that replays recorded answers."""

from __future__ import annotations

import socket

import pytest

from tests.daemon.fakes import (
    FakeComfyUIServer,
    load_trace,
    png_bytes,
    trace_exchange,
    type1,
    type4,
    wait_until,
)
from workers_app.daemon import comfyui
from workers_app.daemon.comfyui import ComfyUIClient, ComfyUIError
from workers_app.daemon.prompt_tracker import ImageRef, OutcomeStatus

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 1, "strength": 0.5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t2i/x"}},
}
FAST = {
    "connect_wait": 2.0,
    "poll_interval": 0.05,
    "silence_poll_after": 0.5,
    "final_marker_wait": 0.3,
    "history_retry_delays": (0.02, 0.02, 0.05),
    "reconnect_initial": 0.05,
    "reconnect_max": 0.2,
    "timeout": 2.0,
}


@pytest.fixture
def server():
    fake = FakeComfyUIServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(server):
    comfy = ComfyUIClient(server.url, client_id="test-client", **FAST)
    comfy.connect()
    assert comfy.wait_connected(2)
    yield comfy
    comfy.close()


def events(pid: str, *, images: tuple[str, ...] = ("out_00001_.png",), progress: int = 0) -> list[dict]:
    """A minimal fresh run of ``pid`` as the socket shows it (protocol 4.4)."""
    msgs = [
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}},
        {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": 1}},
        {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": pid}},
    ]
    msgs += [
        {"type": "progress", "data": {"value": v, "max": progress, "prompt_id": pid, "node": "3"}}
        for v in range(progress)
    ]
    output = {"images": [{"filename": f, "subfolder": "t2i", "type": "output"} for f in images]}
    msgs += [
        {"type": "executed", "data": {"node": "3", "display_node": "3", "output": output, "prompt_id": pid}},
        {"type": "execution_success", "data": {"prompt_id": pid, "timestamp": 2}},
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
        {"type": "executing", "data": {"node": None, "prompt_id": pid}},
    ]
    return msgs


def history_entry(pid: str, images: tuple[str, ...] = ("out_00001_.png",)) -> dict:
    return {
        "prompt": [1, pid, WORKFLOW, {"client_id": "test-client"}, ["3"]],
        "outputs": {"3": {"images": [{"filename": f, "subfolder": "t2i", "type": "output"} for f in images]}},
        "status": {
            "status_str": "success",
            "completed": True,
            "messages": [["execution_success", {"prompt_id": pid}]],
        },
    }


def run_normally(server: FakeComfyUIServer, **kwargs) -> None:
    def on_prompt(pid, body):
        server.history[pid] = history_entry(pid)
        server.play(events(pid, **kwargs))

    server.on_prompt = on_prompt


# -- introspection ------------------------------------------------------------------------------------------
def test_capabilities_from_system_stats_and_object_info(client):
    caps = client.capabilities()
    assert caps["comfyui_version"] == "0.3.64"
    assert caps["device_name"] == "cpu" and isinstance(caps["vram_total"], int)
    assert caps["checkpoints"] == []  # the capture server had no model files
    assert "euler" in caps["samplers"] and "karras" in caps["schedulers"]
    assert {"KSampler", "SaveImage", "CheckpointLoaderSimple"} <= set(caps["node_classes"])
    assert {"SaveImage", "PreviewImage"} <= set(caps["output_nodes"]) and "KSampler" not in caps[
        "output_nodes"
    ]
    assert caps["model_inputs"]["CheckpointLoaderSimple"] == {"ckpt_name": []}


def test_model_inputs_of_both_choice_shapes_by_name_or_by_file_extension():
    info = {
        "LoraLoader": {
            "input": {"required": {"lora_name": [["a.safetensors"], {}], "strength": ["FLOAT", {}]}}
        },
        "UNETLoader": {"input": {"required": {"unet_name": ["COMBO", {"options": ["u.gguf"]}]}}},
        "Custom": {"input": {"optional": {"weights": [["w.pth", "v.pth"]], "mode": [["fast", "slow"]]}}},
    }
    assert comfyui.model_inputs(info) == {
        "LoraLoader": {"lora_name": ["a.safetensors"]},
        "UNETLoader": {"unet_name": ["u.gguf"]},
        "Custom": {"weights": ["w.pth", "v.pth"]},
    }


def test_model_lists_beyond_the_budget_are_left_out_longest_first(caplog):
    found = {
        "CheckpointLoaderSimple": {"ckpt_name": ["a.safetensors"]},
        "LoraLoader": {"lora_name": [f"lora-{n}.safetensors" for n in range(100)]},
    }
    assert comfyui.fit_model_inputs(found, budget=10_000) == found
    assert comfyui.fit_model_inputs(found, budget=200) == {
        "CheckpointLoaderSimple": {"ckpt_name": ["a.safetensors"]}
    }
    assert "LoraLoader.lora_name" in caplog.text


# -- submit -------------------------------------------------------------------------------------------------
def test_submit_connects_the_socket_first_and_sends_client_and_prompt_id(server, client):
    prompt_id = client.submit(WORKFLOW)
    (body,) = server.bodies("/prompt")
    assert body["client_id"] == "test-client" == client.client_id
    assert body["prompt_id"] == prompt_id and body["prompt"] == WORKFLOW
    assert server.sockets_open_at_post == [1]
    assert server.paths("GET")[0] == "/ws"


def test_submit_follows_the_servers_prompt_id_when_it_ignores_ours(server, client):
    server.prompt_answers.append((200, {"prompt_id": "server-id", "number": 3, "node_errors": {}}))
    assert client.submit(WORKFLOW) == "server-id"


def _validation_answers():
    lines = load_trace("validation_errors")
    return [
        (line["status"], line["body"])
        for line in lines
        if line["dir"] == "http_response" and line["status"] == 400
    ]


@pytest.mark.parametrize("status,answer", _validation_answers()[:3])
def test_submit_400_is_a_non_retryable_workflow_error(server, client, status, answer):
    server.prompt_answers.append((status, answer))
    with pytest.raises(ComfyUIError) as caught:
        client.submit(WORKFLOW)
    assert caught.value.code == "workflow_invalid" and caught.value.retryable is False


def test_submit_400_reports_node_class_input_and_message(server, client):
    answer = next(a for _, a in _validation_answers() if "ckpt_name" in str(a))
    server.prompt_answers.append((400, answer))
    with pytest.raises(ComfyUIError) as caught:
        client.submit(WORKFLOW)
    details = caught.value.details
    assert (details["node_id"], details["node_type"], details["input"]) == (
        "4",
        "CheckpointLoaderSimple",
        "ckpt_name",
    )
    assert "not in []" in caught.value.message


def test_submit_200_with_node_errors_fails_and_removes_the_queued_prompt(server, client):
    line = next(
        line
        for line in load_trace("validation_errors")
        if line["dir"] == "http_response" and line["status"] == 200 and line["path"] == "/prompt"
    )
    server.prompt_answers.append((200, line["body"]))
    with pytest.raises(ComfyUIError) as caught:
        client.submit(WORKFLOW)
    assert caught.value.code == "workflow_invalid"
    assert caught.value.details["node_type"] == "SaveImage" and caught.value.details["input"] == "images"
    assert server.bodies("/queue") == [{"delete": [line["body"]["prompt_id"]]}]
    assert server.bodies("/interrupt") == [{"prompt_id": line["body"]["prompt_id"]}]


def test_submit_text_500_is_not_retryable(server, client):
    server.prompt_answers.append((500, "500 Internal Server Error\n\nServer got itself in trouble"))
    with pytest.raises(ComfyUIError) as caught:
        client.submit(WORKFLOW)
    assert not caught.value.retryable and "HTTP 500" in caught.value.message


def test_submit_to_a_dead_server_is_retryable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    comfy = ComfyUIClient(f"http://127.0.0.1:{port}", **{**FAST, "connect_wait": 0.1})
    try:
        with pytest.raises(ComfyUIError) as caught:
            comfy.submit(WORKFLOW)
        assert caught.value.retryable and caught.value.code == "unreachable"
    finally:
        comfy.close()


# -- wait ---------------------------------------------------------------------------------------------------
def test_wait_replays_the_recorded_success_trace(server, client):
    answer, messages, history = trace_exchange(load_trace("success"))
    server.prompt_answers.append((200, answer))
    server.history.update(history)
    server.on_prompt = lambda pid, body: server.play(messages)
    prompt_id = client.submit(WORKFLOW)
    started = []
    outcome = client.wait(prompt_id, on_start=lambda: started.append(True), timeout=5)
    assert outcome.status is OutcomeStatus.SUCCESS and outcome.source == "history"
    assert outcome.images == (ImageRef("success_20261127203936_00001_.png", "trace", "output"),)
    assert started == [True]


def test_wait_reports_progress(server, client):
    run_normally(server, progress=4)
    prompt_id = client.submit(WORKFLOW)
    seen = []
    outcome = client.wait(prompt_id, on_progress=lambda v, m: seen.append((v, m)), timeout=5)
    assert outcome.ok and seen and seen[-1] == (3.0, 4.0)


def test_wait_replays_the_execution_error_trace(server, client):
    answer, messages, history = trace_exchange(load_trace("execution_error"))
    server.prompt_answers.append((200, answer))
    server.history.update(history)
    server.on_prompt = lambda pid, body: server.play(messages)
    outcome = client.wait(client.submit(WORKFLOW), timeout=5)
    assert outcome.status is OutcomeStatus.ERROR
    assert (outcome.node_type, outcome.exception_type) == ("SaveImage", "Exception")
    assert "Traceback" not in repr(outcome) and "tensor(" not in repr(outcome)


def test_history_race_is_retried(server, client):
    run_normally(server)
    prompt_id = client.submit(WORKFLOW)
    server.empty_history_reads[prompt_id] = 2
    outcome = client.wait(prompt_id, timeout=5)
    assert outcome.ok and outcome.source == "history"
    assert server.paths().count(f"/history/{prompt_id}") == 3


def test_socket_drop_falls_back_to_polling(server, client):
    def on_prompt(pid, body):
        server.queue["queue_running"] = [[1, pid, WORKFLOW, {}, ["3"]]]
        server.refuse_ws = True

        def finish():
            server.queue["queue_running"] = []
            server.history[pid] = history_entry(pid)

        server.play([events(pid)[1], server.drop_sockets, 0.3, finish])

    server.on_prompt = on_prompt
    started = []
    outcome = client.wait(client.submit(WORKFLOW), on_start=lambda: started.append(1), timeout=5)
    assert outcome.ok and outcome.source == "history"
    assert started == [1]
    assert not client.ws_connected and "/queue" in server.paths("GET")


def test_reconnect_closes_the_old_socket_and_follows_the_prompt(server, client):
    def on_prompt(pid, body):
        server.queue["queue_running"] = [[1, pid, WORKFLOW, {}, ["3"]]]
        run = events(pid)

        def history_written():
            server.queue["queue_running"] = []
            server.history[pid] = history_entry(pid)

        server.play(
            [
                run[1],  # execution_start
                server.drop_sockets,
                lambda: server.until_connects(2),
                0.1,
                {"type": "executing", "data": {"node": "3"}},  # bare, as after a real reconnect (4.7)
                *run[3:-2],  # executed, execution_success
                history_written,
                *run[-2:],  # status, executing null
            ]
        )

    server.on_prompt = on_prompt
    outcome = client.wait(client.submit(WORKFLOW), timeout=5)
    assert outcome.ok and outcome.images == (ImageRef("out_00001_.png", "t2i", "output"),)
    assert outcome.socket_gap  # frames sent while the socket was down may be missing
    assert server.ws_connects == 2 and server.max_open_sockets == 1
    assert client.tracker.generation == 2


def test_prompt_in_neither_queue_nor_history_is_lost(server, client):
    server.on_prompt = lambda pid, body: server.play([events(pid)[1], server.drop_sockets])
    outcome = client.wait(client.submit(WORKFLOW), timeout=5)
    assert outcome.status is OutcomeStatus.LOST


def test_cancel_dequeues_and_interrupts(server, client):
    def on_prompt(pid, body):
        server.queue["queue_pending"] = [[1, pid, WORKFLOW, {}, ["3"]]]

    server.on_prompt = on_prompt
    prompt_id = client.submit(WORKFLOW)
    outcome = client.wait(prompt_id, should_cancel=lambda: True, timeout=5)
    assert outcome.status is OutcomeStatus.INTERRUPTED and outcome.source == "poll"
    assert server.bodies("/queue") == [{"delete": [prompt_id]}]
    assert server.bodies("/interrupt") == [{"prompt_id": prompt_id}]


def test_cancel_of_a_running_prompt_ends_with_the_interrupt_event(server, client):
    def on_prompt(pid, body):
        server.queue["queue_running"] = [[1, pid, WORKFLOW, {}, ["3"]]]
        server.play([events(pid)[1], 0.2])

    server.on_prompt = on_prompt
    prompt_id = client.submit(WORKFLOW)

    def interrupted():
        server.history[prompt_id] = {
            "outputs": {},
            "status": {
                "status_str": "error",
                "messages": [["execution_interrupted", {"node_id": "3", "node_type": "X"}]],
            },
        }
        server.play([{"type": "execution_interrupted", "data": {"prompt_id": prompt_id, "node_id": "3"}}])
        return True

    outcome = client.wait(prompt_id, should_cancel=interrupted, timeout=5)
    assert outcome.status is OutcomeStatus.INTERRUPTED


def test_wait_times_out(server, client):
    server.on_prompt = lambda pid, body: server.queue.update(queue_pending=[[1, pid, WORKFLOW, {}, ["3"]]])
    with pytest.raises(ComfyUIError) as caught:
        client.wait(client.submit(WORKFLOW), timeout=0.3)
    assert caught.value.code == "wait_timeout" and caught.value.retryable


# -- view / interrupt / queue ------------------------------------------------------------------------------
def test_view_returns_the_bytes(server, client):
    server.files[("a.png", "t2i", "output")] = png_bytes()
    assert client.view("a.png", "t2i", "output") == png_bytes()


@pytest.mark.parametrize(
    "status,code,retryable",
    [
        (404, "not_found", False),
        (400, "bad_request", False),
        (403, "forbidden", False),
        (500, "http_error", True),
    ],
)
def test_view_errors(server, client, status, code, retryable):
    server.view_status["bad.png"] = status
    with pytest.raises(ComfyUIError) as caught:
        client.view("bad.png", "t2i")
    assert (caught.value.code, caught.value.retryable) == (code, retryable)


def test_queue_interrupt_and_delete(server, client):
    server.queue["queue_pending"] = [[2, "b", {}, {}, ["3"]]]
    assert client.queue()["queue_pending"][0][1] == "b"
    client.delete_pending(["b"])
    client.interrupt("a")
    assert client.queue()["queue_pending"] == []
    assert server.bodies("/interrupt") == [{"prompt_id": "a"}]
    assert client.history("unknown") is None


# -- binary image frames (workers_app.daemon.socket_images) ---------------------------------------------


def test_the_client_asks_for_frames_that_name_their_node(server, client):
    assert wait_until(lambda: server.ws_received)
    assert server.ws_received[0] == {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


def test_image_frames_reach_the_prompt_that_sent_them(server, client):
    """A type 4 frame names its prompt and node; a type 1 frame belongs to the node running now."""

    def on_prompt(pid, body):
        server.history[pid] = history_entry(pid)
        run = events(pid)
        server.play(
            [
                *run[:3],  # status, execution_start, executing node 3
                type1(png_bytes()),
                type4(b"\x89PNG-second", node_id="7", prompt_id=pid),
                type4(b"\x89PNG-not-ours", node_id="3", prompt_id="someone-else"),
                *run[3:],
            ]
        )

    server.on_prompt = on_prompt
    got = []
    prompt_id = client.submit(
        WORKFLOW,
        on_image=lambda node, image: got.append((node, image.data)),
        extra_data={"preview_method": "auto"},
    )
    outcome = client.wait(prompt_id, timeout=5)
    assert outcome.ok and not outcome.socket_gap
    assert got == [("3", png_bytes()), ("7", b"\x89PNG-second")]
    assert server.bodies("/prompt")[0]["extra_data"] == {"preview_method": "auto"}
