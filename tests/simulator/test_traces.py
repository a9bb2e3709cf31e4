"""Replays each recorded scenario against the simulator and compares what a client sees with the trace.

Each test drives the simulator the way the capture's client drove the real ComfyUI 0.3.64 (same
requests, same workflows taken from the trace's http_request lines, same socket actions), then compares
the normalised socket event sequence of every socket and the HTTP exchanges (status, content type, body)
with the recorded ones. Waits replace the capture's fixed sleeps; slow ImageBlur nodes are simulated with
a class delay so that interrupts and reconnects land at the same node as in the trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from workers_app.simulator import SimulatorHandle

from .recorder import Recorder
from .traces import SCENARIOS, http_requests, load_trace, normalize, prompt_bodies

NODE_DELAY = 0.04  # seconds per node
BLUR = 0.2  # extra seconds per ImageBlur: the node an interrupt or a reconnect must land in
TRACE_CONFIG = {
    "checkpoints": (),
    "job_time": 0.0,
    "node_delay": NODE_DELAY,
    "class_delays": {"ImageBlur": BLUR},
}


@pytest.fixture
def trace_sim(make_simulator: Callable[..., SimulatorHandle]) -> SimulatorHandle:
    """Like the capture server: no model files; ~40 ms per node, 200 ms per ImageBlur."""
    return make_simulator(**TRACE_CONFIG)


@pytest.fixture
def rec(trace_sim: SimulatorHandle, make_recorder: Callable[[SimulatorHandle], Recorder]) -> Recorder:
    return make_recorder(trace_sim)


def assert_matches_trace(recorder: Recorder, scenario: str) -> None:
    expected, actual = normalize(load_trace(scenario)), normalize(recorder.lines)
    assert actual["ws"].keys() == expected["ws"].keys()
    for label, events in expected["ws"].items():
        assert [e.get("type", e) for e in actual["ws"][label]] == [e.get("type", e) for e in events], label
        assert actual["ws"][label] == events, label
    assert [x["request"][:2] for x in actual["http"]] == [x["request"][:2] for x in expected["http"]]
    assert actual["http"] == expected["http"]


def run_until_done(url: str, body: dict[str, Any], timeout: float = 10.0) -> str:
    """Submits without recording and polls history until the prompt is finished (warm-up runs)."""
    prompt_id = requests.post(f"{url}/prompt", json=body, timeout=10).json()["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{url}/history/{prompt_id}", timeout=10).json():
            return prompt_id
        time.sleep(0.02)
    raise AssertionError("warm-up prompt did not finish")


def submit_and_finish(rec: Recorder, body: dict[str, Any], ws: str = "ws1") -> str:
    prompt_id = rec.post_prompt(body)["body"]["prompt_id"]
    rec.wait_event("executing", ws=ws, node=None, prompt_id=prompt_id)
    return prompt_id


def fetch_outputs(rec: Recorder, prompt_id: str) -> None:
    """GET /history/{id}, then /view of every image in it (as the capture's client did)."""
    history = rec.http("GET", f"/history/{prompt_id}")["body"]
    for output in history[prompt_id]["outputs"].values():
        for image in output.get("images", []):
            rec.http(
                "GET",
                f"/view?filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}",
            )


def test_every_trace_has_a_replay_test() -> None:
    names = {name.removeprefix("test_trace_") for name in globals() if name.startswith("test_trace_")}
    assert names == set(SCENARIOS)


def test_trace_success(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("success"))
    rec.connect("ws1")
    fetch_outputs(rec, submit_and_finish(rec, body))
    rec.close("ws1")
    assert_matches_trace(rec, "success")


def test_trace_batch2(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("batch2"))
    rec.connect("ws1")
    fetch_outputs(rec, submit_and_finish(rec, body))
    rec.close("ws1")
    assert_matches_trace(rec, "batch2")
    views = [
        line for line in rec.lines if line["dir"] == "http_response" and line["path"].startswith("/view")
    ]
    assert [view["body"]["png_size"] for view in views] == [[512, 512], [512, 512]]
    assert views[0]["body"]["sha256"] != views[1]["body"]["sha256"]


def test_trace_cached_resubmit(trace_sim: SimulatorHandle, rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("cached_resubmit"))
    run_until_done(trace_sim.url, body)  # the capture ran `success` (the same prompt) just before
    files_before = trace_sim.call(lambda sim: sorted((sim.root_dir / "output").rglob("*.png")))
    rec.connect("ws1")
    fetch_outputs(rec, submit_and_finish(rec, body))
    rec.close("ws1")
    assert_matches_trace(rec, "cached_resubmit")
    assert trace_sim.call(lambda sim: sorted((sim.root_dir / "output").rglob("*.png"))) == files_before


def test_trace_validation_errors(rec: Recorder) -> None:
    trace = load_trace("validation_errors")
    rec.connect("ws1")
    for request in http_requests(trace, "POST", "/prompt"):
        if "body_text" in request:
            rec.http("POST", "/prompt", raw=request["body_text"], content_type=request["content_type"])
            continue
        response = rec.post_prompt(request["body"])
        if response["status"] == 200:
            prompt_id = response["body"]["prompt_id"]
            rec.wait_event("executing", node=None, prompt_id=prompt_id)
            rec.http("GET", f"/history/{prompt_id}")
    rec.close("ws1")
    assert_matches_trace(rec, "validation_errors")


def test_trace_execution_error(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("execution_error"))
    rec.connect("ws1")
    prompt_id = submit_and_finish(rec, body)
    rec.http("GET", f"/history/{prompt_id}")
    rec.close("ws1")
    assert_matches_trace(rec, "execution_error")
    error = rec.wait_event("execution_error")["data"]
    assert error["exception_message"].startswith(
        "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "
    )


def test_trace_interrupt_running(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("interrupt_running"))
    rec.connect("ws1")
    prompt_id = rec.post_prompt(body)["body"]["prompt_id"]
    rec.wait_event("executing", node="10")  # the first blur runs
    rec.http("GET", "/queue")
    rec.http("POST", "/interrupt", {"prompt_id": prompt_id})
    rec.wait_event("executing", node=None, prompt_id=prompt_id)
    rec.http("GET", f"/history/{prompt_id}")
    rec.http("GET", "/queue")
    rec.close("ws1")
    assert_matches_trace(rec, "interrupt_running")


def test_trace_delete_pending(rec: Recorder) -> None:
    body_a, body_b = prompt_bodies(load_trace("delete_pending"))
    rec.connect("ws1")
    prompt_a = rec.post_prompt(body_a)["body"]["prompt_id"]
    rec.wait_event("executing", node="1")  # in the capture, B's "queued" status came right after this
    prompt_b = rec.post_prompt(body_b)["body"]["prompt_id"]
    rec.wait_event("executing", node="10")
    rec.http("GET", "/queue")
    rec.http("POST", "/queue", {"delete": [prompt_b]})
    rec.http("GET", "/queue")
    rec.http("GET", "/prompt")
    rec.wait_event("executing", node=None, prompt_id=prompt_a)
    rec.http("GET", f"/history/{prompt_a}")
    rec.http("GET", f"/history/{prompt_b}")
    rec.http("GET", "/queue")
    rec.close("ws1")
    assert_matches_trace(rec, "delete_pending")


def test_trace_ws_reconnect_midrun(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("ws_reconnect_midrun"))
    rec.connect("ws1")
    prompt_id = rec.post_prompt(body)["body"]["prompt_id"]
    rec.wait_event("executing", ws="ws1", node="10")
    node_10_started = time.monotonic()
    rec.close("ws1")
    # Longer than one blur: the socket comes back in the middle of node 11.
    time.sleep(max(0.0, node_10_started + 1.5 * (BLUR + NODE_DELAY) - time.monotonic()))
    rec.connect("ws2")
    rec.wait_event("executing", ws="ws2", node=None, prompt_id=prompt_id)
    fetch_outputs(rec, prompt_id)
    rec.close("ws2")
    assert_matches_trace(rec, "ws_reconnect_midrun")


def test_trace_no_client_id(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("no_client_id"))
    assert "client_id" not in body
    rec.connect("ws1")
    prompt_id = rec.post_prompt(body)["body"]["prompt_id"]
    rec.wait_for(
        lambda line: (
            line["dir"] == "ws_text"
            and line["msg"]["type"] == "progress_state"
            and line["msg"]["data"]["nodes"].get("10", {}).get("state") == "running"
        )
    )
    rec.http("GET", "/queue")
    deadline = time.monotonic() + 10
    while not rec.http("GET", f"/history/{prompt_id}")["body"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fetch_outputs(rec, prompt_id)
    rec.close("ws1")
    assert_matches_trace(rec, "no_client_id")


def test_trace_progress_savews(rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("progress_savews"))
    rec.connect("ws1")
    prompt_id = submit_and_finish(rec, body)
    rec.http("GET", f"/history/{prompt_id}")
    rec.close("ws1")
    assert_matches_trace(rec, "progress_savews")


def test_trace_progress_savews_metadata(trace_sim: SimulatorHandle, rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("progress_savews_metadata"))
    (previous,) = prompt_bodies(load_trace("progress_savews"))
    run_until_done(trace_sim.url, previous)  # the capture ran progress_savews just before: node 1 is cached
    rec.connect("ws1", feature_flags=True)
    prompt_id = submit_and_finish(rec, body)
    rec.http("GET", f"/history/{prompt_id}")
    rec.close("ws1")
    assert_matches_trace(rec, "progress_savews_metadata")


def test_trace_restart_lost(trace_sim: SimulatorHandle, rec: Recorder) -> None:
    (body,) = prompt_bodies(load_trace("restart_lost"))
    rec.connect("ws1")
    prompt_id = rec.post_prompt(body)["body"]["prompt_id"]
    rec.wait_event("executing", node="10")
    rec.http("GET", "/queue")
    trace_sim.restart(downtime=0.3)  # the capture sent SIGTERM and started the server again
    rec.wait_for(lambda line: line["dir"] == "ws_close" and line["ws"] == "ws1")
    deadline = time.monotonic() + 10
    while rec.http("GET", "/system_stats")["status"] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rec.connect("ws2")
    rec.wait_event("status", ws="ws2")
    rec.http("GET", f"/history/{prompt_id}")
    rec.http("GET", "/queue")
    rec.http("GET", "/history")
    rec.http("GET", "/prompt")
    rec.close("ws2")
    assert_matches_trace(rec, "restart_lost")
