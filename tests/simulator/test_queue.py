"""Queue, numbering, interrupt, history-race and socket-routing semantics of the simulator."""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable
from http import HTTPStatus

import pytest
import requests

from workers_app.simulator import SimulatorHandle

from .recorder import Recorder
from .workflows import CKPT, blur_workflow, noise_workflow, run, sd15_workflow, submit, wait_history

Factory = Callable[..., SimulatorHandle]
RecorderFactory = Callable[[SimulatorHandle], Recorder]


@pytest.fixture
def slow_sim(make_simulator: Factory) -> SimulatorHandle:
    """ImageBlur takes 0.3 s: a blur workflow keeps the executor busy while a test looks at the queue."""
    return make_simulator(job_time=0.0, class_delays={"ImageBlur": 0.3})


def post(url: str, path: str, body: object = None) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=10)


def statuses(recorder: Recorder) -> list[int]:
    return [
        m["data"]["status"]["exec_info"]["queue_remaining"]
        for m in recorder.events()
        if m["type"] == "status"
    ]


def test_number_counts_every_post_except_malformed_json_and_explicit_numbers(
    simulator: SimulatorHandle,
) -> None:
    url = simulator.url
    assert submit(url, noise_workflow("n/a"))["number"] == 0
    assert post(url, "/prompt", {"client_id": "x"}).status_code == HTTPStatus.BAD_REQUEST  # uses 1
    bad = {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}
    assert post(url, "/prompt", bad).status_code == HTTPStatus.BAD_REQUEST  # uses 2
    malformed = requests.post(f"{url}/prompt", data=b"{not json", timeout=10)
    assert malformed.status_code == HTTPStatus.INTERNAL_SERVER_ERROR  # uses none
    assert post(url, "/prompt", {"prompt": [1, 2]}).status_code == HTTPStatus.INTERNAL_SERVER_ERROR  # uses 3
    assert submit(url, noise_workflow("n/b"))["number"] == 4
    assert submit(url, noise_workflow("n/c"), front=True)["number"] == -5
    assert submit(url, noise_workflow("n/d"), number=42.5)["number"] == 42.5  # does not advance the counter
    assert submit(url, noise_workflow("n/e"))["number"] == 6


def test_queue_pending_is_the_heap_array_and_runs_in_number_order(
    slow_sim: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(slow_sim)
    recorder.connect("ws", client_id="q")
    blocker = submit(slow_sim.url, blur_workflow("q/blocker"), client_id="q")["prompt_id"]
    recorder.wait_event("executing", node="10", prompt_id=blocker)
    numbers = [5.0, 3.0, 4.0, 1.0, 2.0]
    ids = [
        submit(slow_sim.url, noise_workflow(f"q/{n}"), client_id="q", number=n)["prompt_id"] for n in numbers
    ]
    queue = requests.get(f"{slow_sim.url}/queue", timeout=10).json()
    heap: list[float] = []
    for number in numbers:
        heapq.heappush(heap, number)
    assert [item[0] for item in queue["queue_pending"]] == heap
    assert [len(item) for item in queue["queue_pending"]] == [5] * 5
    assert queue["queue_running"][0][:2] == [0, blocker]
    for prompt_id in ids:
        wait_history(slow_sim.url, prompt_id)
    recorder.wait_event("executing", node=None, prompt_id=ids[0])  # number 5.0 runs last
    starts = [m["data"]["prompt_id"] for m in recorder.events() if m["type"] == "execution_start"]
    by_number = dict(zip(ids, numbers, strict=True))
    assert starts[1:] == sorted(ids, key=by_number.__getitem__)


def test_deleted_and_cleared_prompts_vanish_with_only_status_events(
    slow_sim: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(slow_sim)
    recorder.connect("ws", client_id="d")
    running = submit(slow_sim.url, blur_workflow("d/run", blurs=2), client_id="d")["prompt_id"]
    recorder.wait_event("executing", node="10")
    a, b, c = (submit(slow_sim.url, noise_workflow(f"d/{x}"), client_id="d")["prompt_id"] for x in "abc")
    recorder.wait_event("status", status={"exec_info": {"queue_remaining": 4}})
    before = len(statuses(recorder))
    assert post(slow_sim.url, "/queue", {"delete": ["unknown-id"]}).status_code == HTTPStatus.OK
    post(slow_sim.url, "/queue", {"delete": [a]})  # not the last pending one: one status
    post(slow_sim.url, "/queue", {"clear": True})  # one status
    recorder.wait_event("executing", node=None, prompt_id=running)
    assert statuses(recorder)[before:] == [3, 1, 0]  # 3 and 1 include the running prompt; 0 after it
    for gone in (a, b, c):
        assert requests.get(f"{slow_sim.url}/history/{gone}", timeout=10).json() == {}
        assert not [m for m in recorder.events() if m["data"].get("prompt_id") == gone]


def test_deleting_the_last_pending_prompt_sends_status_twice(
    slow_sim: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(slow_sim)
    recorder.connect("ws", client_id="d")
    running = submit(slow_sim.url, blur_workflow("d/run"), client_id="d")["prompt_id"]
    recorder.wait_event("executing", node="10")
    pending = submit(slow_sim.url, noise_workflow("d/p"), client_id="d")["prompt_id"]
    recorder.wait_event("status", status={"exec_info": {"queue_remaining": 2}})
    before = len(statuses(recorder))
    post(slow_sim.url, "/queue", {"delete": [pending]})
    recorder.wait_event("executing", node=None, prompt_id=running)
    assert statuses(recorder)[before:] == [1, 1, 0]


def test_interrupt_with_an_id_acts_only_on_the_running_prompt(
    slow_sim: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(slow_sim)
    recorder.connect("ws", client_id="i")
    first = submit(slow_sim.url, blur_workflow("i/a", blurs=2), client_id="i")["prompt_id"]
    recorder.wait_event("executing", node="10", prompt_id=first)
    second = submit(slow_sim.url, blur_workflow("i/b", blurs=2, seed=2), client_id="i")["prompt_id"]
    post(slow_sim.url, "/interrupt", {"prompt_id": second})  # pending: ignored
    post(slow_sim.url, "/interrupt", {"prompt_id": "finished-or-unknown"})  # ignored
    assert wait_history(slow_sim.url, first)["status"]["status_str"] == "success"
    recorder.wait_event("executing", node="10", prompt_id=second)
    post(slow_sim.url, "/interrupt", {"prompt_id": second})
    entry = wait_history(slow_sim.url, second)
    assert entry["status"] == {
        "status_str": "error",
        "completed": False,
        "messages": entry["status"]["messages"],
    }
    name, data = entry["status"]["messages"][-1]
    assert name == "execution_interrupted"
    assert (data["node_id"], data["node_type"], sorted(data["executed"])) == (
        "11",
        "ImageBlur",
        ["10", "2"],  # node 1 (the same EmptyImage as in the first prompt) came from the cache
    )
    assert entry["outputs"] == {}
    assert entry["meta"] == {}


def test_interrupt_while_idle_does_no_harm(simulator: SimulatorHandle) -> None:
    assert post(simulator.url, "/interrupt").status_code == HTTPStatus.OK
    assert run(simulator.url, noise_workflow("idle/x"))["status"]["status_str"] == "success"


def test_interrupt_during_sampling_lands_at_the_next_step(
    make_simulator: Factory, make_recorder: RecorderFactory
) -> None:
    sim = make_simulator(checkpoints=(CKPT,), step_time=0.05)
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="s")
    prompt_id = submit(sim.url, sd15_workflow(steps=20, width=64, height=64), client_id="s")["prompt_id"]
    recorder.wait_event("progress", value=2, node="3")
    post(sim.url, "/interrupt")
    interrupted = recorder.wait_event("execution_interrupted", prompt_id=prompt_id)["data"]
    assert interrupted["node_id"] == "3"
    assert interrupted["node_type"] == "KSampler"
    values = [m["data"]["value"] for m in recorder.events() if m["type"] == "progress"]
    assert values[:2] == [1, 2]
    assert len(values) < 20


def test_history_delay_opens_the_history_race(
    make_simulator: Factory, make_recorder: RecorderFactory
) -> None:
    sim = make_simulator(history_delay=0.3)
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="r")
    prompt_id = submit(sim.url, noise_workflow("race/x"), client_id="r")["prompt_id"]
    recorder.wait_event("execution_success", prompt_id=prompt_id)
    assert requests.get(f"{sim.url}/history/{prompt_id}", timeout=10).json() == {}
    assert requests.get(f"{sim.url}/queue", timeout=10).json()["queue_running"][0][1] == prompt_id
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    assert prompt_id in requests.get(f"{sim.url}/history/{prompt_id}", timeout=10).json()


def test_history_is_written_before_executing_null(simulator: SimulatorHandle, recorder: Recorder) -> None:
    recorder.connect("ws", client_id="h")
    for index in range(5):
        prompt_id = submit(simulator.url, noise_workflow(f"hist/{index}"), client_id="h")["prompt_id"]
        recorder.wait_event("executing", node=None, prompt_id=prompt_id)
        assert prompt_id in requests.get(f"{simulator.url}/history/{prompt_id}", timeout=10).json()


def test_a_repeated_prompt_id_overwrites_the_history_entry(simulator: SimulatorHandle) -> None:
    first = run(simulator.url, noise_workflow("dup/a"), prompt_id="same-id")
    other = run(simulator.url, noise_workflow("dup/other"))
    number = submit(simulator.url, noise_workflow("dup/b"), prompt_id="same-id")["number"]
    deadline = time.monotonic() + 10
    while (entry := wait_history(simulator.url, "same-id"))["prompt"][0] != number:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert entry["outputs"]["3"]["images"][0]["filename"] == "b_00001_.png"
    assert entry["outputs"] != first["outputs"]
    history = requests.get(f"{simulator.url}/history", timeout=10).json()
    assert list(history) == ["same-id", other["prompt"][1]]  # overwritten in place


def test_a_changed_prefix_reruns_only_the_save_node(simulator: SimulatorHandle, recorder: Recorder) -> None:
    recorder.connect("ws", client_id="c")
    run(simulator.url, noise_workflow("cache/a"), client_id="c")
    prompt_id = submit(simulator.url, noise_workflow("cache/b"), client_id="c")["prompt_id"]
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    assert recorder.wait_event("execution_cached", prompt_id=prompt_id)["data"]["nodes"] == ["1", "2"]
    ran = [
        m["data"]["node"]
        for m in recorder.events()
        if m["type"] == "executing" and m["data"].get("prompt_id") == prompt_id
    ]
    assert ran == ["3", None]


def test_a_newer_socket_takes_over_and_the_older_ones_close_silences_it(
    simulator: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(simulator)
    recorder.connect("old", client_id="same")
    recorder.connect("new", client_id="same")
    recorder.wait_event("status", ws="new")
    first = submit(simulator.url, noise_workflow("take/a"), client_id="same")["prompt_id"]
    recorder.wait_event("executing", ws="new", node=None, prompt_id=first)
    assert not [m for m in recorder.events("old") if m["data"].get("prompt_id") == first]
    recorder.close("old")  # quirk: deletes the registration that the newer socket holds
    second = submit(simulator.url, noise_workflow("take/b"), client_id="same")["prompt_id"]
    wait_history(simulator.url, second)
    count = len(recorder.events("new"))
    run(simulator.url, noise_workflow("take/c"))  # even status broadcasts no longer reach it
    assert len(recorder.events("new")) == count
    assert not [m for m in recorder.events("new") if m["data"].get("prompt_id") == second]


def test_a_socket_without_client_id_gets_a_random_sid(simulator: SimulatorHandle, recorder: Recorder) -> None:
    recorder.connect("anon", client_id=None)
    first = recorder.wait_event("status", ws="anon")["data"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["sid"])
    assert first["status"] == {"exec_info": {"queue_remaining": 0}}


def test_without_client_id_previews_are_type_1_broadcasts(
    simulator: SimulatorHandle, make_recorder: RecorderFactory
) -> None:
    recorder = make_recorder(simulator)
    recorder.connect("plain", client_id="p")
    recorder.connect("meta", client_id="m", feature_flags=True)
    recorder.wait_event("feature_flags", ws="meta")
    workflow = noise_workflow(batch=2)
    workflow["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}
    run(simulator.url, workflow)
    for label in ("plain", "meta"):
        # the history is written before the last frames reach the sockets: wait for the closing status
        recorder.wait_count(
            lambda line, ws=label: (
                line.get("ws") == ws
                and line["dir"] == "ws_text"
                and line["msg"]
                == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}
            ),
            1,
        )
        assert [frame["event_type"] for frame in recorder.binaries(label)] == [1, 1]
        types = {m["type"] for m in recorder.events(label)}
        assert {"progress", "progress_state", "status"} <= types
        assert not types & {"execution_start", "executing", "executed", "execution_success"}
