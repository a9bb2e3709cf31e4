"""Replay every recorded ComfyUI trace through the pure message handling and check the client's conclusion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.daemon.fakes import load_trace, trace_names
from workers_app.daemon import prompt_tracker
from workers_app.daemon.comfyui import ComfyUIError, parse_prompt_response
from workers_app.daemon.prompt_tracker import (
    ImageRef,
    OutcomeStatus,
    PromptOutcome,
    PromptTracker,
    outcome_from_history,
    queue_position,
)


@dataclass
class Replay:
    """What a client following the recorded traffic would know at the end."""

    tracker: PromptTracker
    submitted: list[str] = field(default_factory=list)
    rejected: list[ComfyUIError] = field(default_factory=list)
    history: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    queue: dict[str, Any] | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)

    def outcome(self, prompt_id: str) -> PromptOutcome | None:
        """The client's decision: history once done; lost when in neither queue nor history."""
        state = self.tracker.get(prompt_id)
        entry = self.history.get(prompt_id)
        if entry:
            return outcome_from_history(prompt_id, entry)
        if state is not None and state.finished and state.ws_outcome():
            return state.ws_outcome()
        if (
            prompt_id in self.history
            and self.queue is not None
            and queue_position(self.queue, prompt_id) is None
        ):
            return PromptOutcome(OutcomeStatus.LOST, prompt_id, source="poll")
        return None


def replay(name: str, *, delay_prompt_answer: bool = False) -> Replay:
    lines = [line for line in load_trace(name) if line["dir"] not in ("meta", "note")]
    if delay_prompt_answer:  # the POST /prompt answer arrives after every socket event (protocol 13.5)
        answers = [line for line in lines if line["dir"] == "http_response" and line["path"] == "/prompt"]
        lines = [line for line in lines if line not in answers] + answers
    result = Replay(PromptTracker(clock=iter(range(1, 10**6)).__next__))
    requests: dict[int, Any] = {}
    for index, line in enumerate(lines):
        kind = line["dir"]
        if kind == "ws_connect":
            result.tracker.on_connect()
        elif kind == "ws_close":
            result.tracker.on_disconnect()
        elif kind == "ws_text":
            result.tracker.feed(line["msg"])
            _snapshot(result, line["msg"])
        elif kind == "http_request" and line["path"] == "/prompt":
            requests[index] = line.get("body", {}).get("prompt", {}) if "body" in line else {}
        elif kind == "http_response":
            _on_response(result, line, requests)
    return result


def _snapshot(result: Replay, msg: dict[str, Any]) -> None:
    if msg["type"] == "executing" and "prompt_id" not in msg["data"]:
        result.snapshots["bare_executing_attributed_to"] = result.tracker.running
        result.snapshots["bare_executing_node"] = msg["data"]["node"]


def _on_response(result: Replay, line: dict[str, Any], requests: dict[int, Any]) -> None:
    path, body = line["path"], line.get("body")
    if path == "/prompt" and line["method"] == "POST":
        workflow = list(requests.values())[-1] if requests else {}
        workflow = workflow if isinstance(workflow, dict) else {}
        try:
            prompt_id = parse_prompt_response(line["status"], body, workflow)
        except ComfyUIError as exc:
            result.rejected.append(exc)
            return
        result.tracker.track(prompt_id)
        result.submitted.append(prompt_id)
    elif path.startswith("/history/") and line["status"] == 200:
        prompt_id = path.removeprefix("/history/")
        result.history[prompt_id] = body.get(prompt_id) if body else None
    elif path == "/queue" and line["method"] == "GET" and line["status"] == 200:
        result.queue = body


def _kind(error: ComfyUIError) -> str | None:
    return (error.details.get("errors") or [{}])[0].get("type")


def _images(outcome: PromptOutcome | None) -> list[str]:
    assert outcome is not None
    return [f"{ref.subfolder}/{ref.filename}" for ref in outcome.images]


REPLAYED = {
    "success", "cached_resubmit", "batch2", "validation_errors", "execution_error", "interrupt_running",
    "delete_pending", "ws_reconnect_midrun", "no_client_id", "progress_savews", "progress_savews_metadata",
    "restart_lost",
}  # fmt: skip


def test_every_recorded_trace_is_replayed_here():
    assert set(trace_names()) == REPLAYED


@pytest.mark.parametrize("delay_prompt_answer", [False, True])
def test_success(delay_prompt_answer):
    run = replay("success", delay_prompt_answer=delay_prompt_answer)
    (prompt_id,) = run.submitted
    state = run.tracker.get(prompt_id)
    assert state.started and state.finished and state.terminal == "execution_success"
    assert [r.filename for r in state.images] == ["success_20261127203936_00001_.png"]
    outcome = run.outcome(prompt_id)
    assert outcome.status is OutcomeStatus.SUCCESS
    assert outcome.images == (ImageRef("success_20261127203936_00001_.png", "trace", "output"),)


def test_cached_resubmit_points_at_the_first_runs_file():
    run = replay("cached_resubmit")
    (prompt_id,) = run.submitted
    assert run.tracker.get(prompt_id).finished
    assert _images(run.outcome(prompt_id)) == ["trace/success_20261127203936_00001_.png"]


def test_batch2_gives_two_images():
    run = replay("batch2")
    outcome = run.outcome(run.submitted[0])
    assert outcome.ok
    assert _images(outcome) == [
        "trace/batch2_20261127203936_00001_.png",
        "trace/batch2_20261127203936_00002_.png",
    ]


def test_validation_errors_are_workflow_invalid_with_node_detail():
    run = replay("validation_errors")
    errors = run.rejected
    assert len(errors) == 17  # 14 x 400, one 200 with node_errors, two text 500s
    assert all(e.code == "workflow_invalid" and not e.retryable for e in errors)
    by_case = {(e.details.get("node_id"), e.details.get("input")): e for e in errors}
    missing = by_case[("2", "seed")]
    assert missing.details["node_type"] == "ImageAddNoise" and "Required input is missing" in missing.message
    ckpt = by_case[("4", "ckpt_name")]
    assert ckpt.details["node_type"] == "CheckpointLoaderSimple"
    assert "v1-5-pruned-emaonly.safetensors" in ckpt.message and "not in" in ckpt.message
    unknown = errors[0]
    assert unknown.details["error_type"] == "invalid_prompt" and "NoSuchNode" in unknown.message
    assert unknown.details["node_id"] == "1"
    # Addendum 13.1: the fault sits in the upstream node; its real input comes from the workflow.
    upstream = next(e for e in errors if _kind(e) == "exception_during_inner_validation")
    assert upstream.details["node_id"] == "2" and upstream.details["node_type"] == "ImageAddNoise"
    assert upstream.details["input"] == "image" and "'99'" in upstream.message
    direct = [e for e in errors if _kind(e) == "exception_during_validation"]
    assert [(e.details["node_type"], e.details["input"]) for e in direct] == [
        ("SaveImage", "images"),
        ("SaveImage", None),
    ]
    assert "tuple index out of range" in direct[1].message
    partial = next(e for e in errors if e.message.startswith("some outputs failed"))
    assert partial.details["prompt_id"] == "55730cdf-2c45-461e-8976-80192a6f19a3"
    assert [e.message for e in errors[-2:]] == [
        "ComfyUI rejected the request (HTTP 500: 500 Internal Server Error)"
    ] * 2
    assert not any("traceback" in repr(e.details) for e in errors)


def test_execution_error_keeps_node_and_message_but_no_inputs_or_traceback():
    run = replay("execution_error")
    prompt_id = run.submitted[0]
    outcome = run.outcome(prompt_id)
    assert outcome.status is OutcomeStatus.ERROR
    assert (outcome.node_id, outcome.node_type, outcome.exception_type) == ("3", "SaveImage", "Exception")
    assert "Saving image outside the output folder" in outcome.exception_message
    ws_outcome = run.tracker.get(prompt_id).ws_outcome()
    assert ws_outcome.node_type == "SaveImage"
    assert "current_inputs" not in run.tracker.get(prompt_id).terminal_data
    assert "traceback" not in run.tracker.get(prompt_id).terminal_data


def test_interrupt_running():
    run = replay("interrupt_running")
    prompt_id = run.submitted[0]
    assert run.tracker.get(prompt_id).terminal == "execution_interrupted"
    outcome = run.outcome(prompt_id)
    assert outcome.status is OutcomeStatus.INTERRUPTED
    assert (outcome.node_id, outcome.node_type) == ("11", "ImageBlur")


def test_delete_pending_a_succeeds_b_vanishes():
    run = replay("delete_pending")
    a, b = run.submitted
    assert run.outcome(a).ok and _images(run.outcome(a)) == ["trace/delete_20261127203936_A_00001_.png"]
    state_b = run.tracker.get(b)
    assert not state_b.started and not state_b.finished  # no event ever named B
    assert run.outcome(b).status is OutcomeStatus.LOST  # in neither queue nor history


def test_ws_reconnect_midrun_attributes_bare_executing_and_finishes():
    run = replay("ws_reconnect_midrun")
    prompt_id = run.submitted[0]
    assert run.tracker.generation == 2
    assert run.snapshots["bare_executing_attributed_to"] == prompt_id
    assert run.snapshots["bare_executing_node"] == "11"
    assert run.tracker.get(prompt_id).finished
    assert _images(run.outcome(prompt_id)) == ["trace/reconnect_20261127203936_00001_.png"]


def test_no_client_id_is_found_by_polling_history():
    run = replay("no_client_id")
    prompt_id = run.submitted[0]
    state = run.tracker.get(prompt_id)
    assert state.started  # progress_state broadcasts still name it
    assert not state.finished and state.terminal is None  # but no terminal event is ever sent
    assert _images(run.outcome(prompt_id)) == ["trace/noclient_20261127203936_00001_.png"]


@pytest.mark.parametrize("name", ["progress_savews", "progress_savews_metadata"])
def test_progress_savews_reports_progress_and_success_without_files(name):
    run = replay(name)
    prompt_id = run.submitted[0]
    state = run.tracker.get(prompt_id)
    assert state.progress == (3.0, 4.0) and state.progress_seq == 4
    outcome = run.outcome(prompt_id)
    assert outcome.ok and outcome.images == ()  # SaveImageWebsocket leaves nothing to fetch


def test_restart_lost():
    run = replay("restart_lost")
    prompt_id = run.submitted[0]
    state = run.tracker.get(prompt_id)
    assert state.started and state.terminal is None
    assert run.tracker.generation == 2  # dropped by the SIGTERM, connected again after the restart
    assert run.tracker.running is None  # the fresh server's first status says its queue is empty
    assert run.outcome(prompt_id).status is OutcomeStatus.LOST


def test_events_before_tracking_are_kept_and_untracked_ids_are_bounded():
    tracker = PromptTracker(max_untracked=2)
    for n in range(5):
        tracker.feed({"type": "execution_start", "data": {"prompt_id": f"p{n}"}})
    assert tracker.get("p0") is None and tracker.get("p4").started
    assert tracker.track("p4").started


def test_bare_executing_without_a_known_prompt_is_remembered_not_misattributed():
    tracker = PromptTracker()
    assert tracker.feed({"type": "executing", "data": {"node": "11"}}) is None
    assert tracker.orphan_node == "11"


def test_images_carry_the_node_that_saved_them():
    outputs = {
        "9": {"images": [{"filename": "a.png", "subfolder": "t2i", "type": "output"}]},
        "12": {"images": [{"filename": "b.png", "subfolder": "t2i", "type": "output"}]},
    }
    assert [(r.filename, r.node_id) for r in prompt_tracker.images_from_outputs(outputs)] == [
        ("a.png", "9"),
        ("b.png", "12"),
    ]
