"""Inventory that stays true, daemon side: a prompt refused for a missing model, InventoryWatch, and the
loop refreshing on a ComfyUI reconnect, on its timer and after a missing model."""

from __future__ import annotations

import pytest

from tests.daemon.fakes import FakeComfy, FakeScheduler, make_lease, wait_until
from tests.daemon.test_worker import make_worker, running
from workers_app.daemon.comfyui import ComfyUIError, missing_model, parse_prompt_response
from workers_app.daemon.inventory import InventoryWatch
from workers_app.daemon.runner import RunnerSettings, TaskControl, TaskResult, run_task
from workers_app.daemon.scheduler import SchedulerUnavailable

CKPT = "v1-5-pruned-emaonly.safetensors"
WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}},
}


def refusal(input_name: str, value: str, class_type: str = "CheckpointLoaderSimple") -> dict:
    """ComfyUI's 400 for a combo value it does not list (protocol 3.1, the captured sample)."""
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "4": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{input_name}: '{value}' not in []",
                        "extra_info": {
                            "input_name": input_name,
                            "input_config": [[], {"tooltip": "…"}],
                            "received_value": value,
                        },
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": class_type,
            }
        },
    }


def refused(body: dict) -> ComfyUIError:
    with pytest.raises(ComfyUIError) as caught:
        parse_prompt_response(400, body, WORKFLOW)
    return caught.value


def test_a_model_not_in_the_list_is_a_missing_model():
    exc = refused(refusal("ckpt_name", CKPT))
    assert exc.code == "workflow_invalid"
    assert missing_model(exc.details) == {
        "node_id": "4",
        "node_type": "CheckpointLoaderSimple",
        "input": "ckpt_name",
        "value": CKPT,
    }


def test_a_sampler_not_in_the_list_is_a_bad_workflow():
    assert missing_model(refused(refusal("sampler_name", "nope", "KSampler")).details) is None
    body = refusal("ckpt_name", CKPT)
    body["node_errors"]["4"]["errors"].append(
        {"type": "required_input_missing", "message": "Required input is missing", "details": "x"}
    )
    assert missing_model(refused(body).details) is None  # another worker would refuse it too


def test_the_runner_reports_a_missing_model_as_retryable():
    comfy = FakeComfy()
    comfy.submit_errors = [refused(refusal("ckpt_name", CKPT))]
    sched = FakeScheduler()
    control = TaskControl(make_lease())
    result = run_task(
        make_lease(),
        comfy=comfy,
        scheduler=sched,
        control=control,
        settings=RunnerSettings(sleep=lambda s: None),
    )
    assert result is TaskResult.FAILED and control.failure_code == "model_missing"
    (fail,) = sched.calls_of("fail")
    assert (fail["code"], fail["retryable"]) == ("model_missing", True)
    assert fail["details"] == {
        "node_id": "4",
        "node_type": "CheckpointLoaderSimple",
        "input": "ckpt_name",
        "value": CKPT,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_sends_only_a_change_and_on_its_timer():
    comfy, sched, clock = FakeComfy(), FakeScheduler(), Clock()
    watch = InventoryWatch(comfy, sched, interval=300, clock=clock)
    assert not watch.due()  # nothing registered yet
    watch.registered(comfy.capabilities())
    clock.now = 299
    assert not watch.due()
    clock.now = 300
    assert watch.due()
    assert watch.refresh() is False and sched.calls_of("inventory") == []  # unchanged: nothing sent
    assert not watch.due()
    comfy.inventory["checkpoints"].append("new.safetensors")
    clock.now = 600
    assert watch.due() and watch.refresh() is True
    (sent,) = sched.calls_of("inventory")
    assert sent["capabilities"]["checkpoints"] == ["a.safetensors", "new.safetensors"]
    assert watch.refresh(force=True) is True and len(sched.calls_of("inventory")) == 2


def test_the_watch_retries_soon_after_a_failure():
    comfy, sched, clock = FakeComfy(), FakeScheduler(), Clock()
    watch = InventoryWatch(comfy, sched, interval=300, clock=clock)
    watch.registered(comfy.capabilities())
    comfy.inventory["checkpoints"] = []
    comfy.capability_errors = [ComfyUIError("down", retryable=True, code="unreachable")]
    watch.comfy_restarted()
    assert watch.due() and watch.refresh() is False
    sched.errors["inventory"] = [SchedulerUnavailable("502")]
    clock.now = 30
    assert watch.due() and watch.refresh() is False  # read, but the scheduler did not take it
    clock.now = 60
    assert watch.refresh() is True and sched.calls_of("inventory")[-1]["capabilities"]["checkpoints"] == []


def test_the_loop_refreshes_when_comfyui_reconnects():
    comfy, sched = FakeComfy(), FakeScheduler()
    worker = make_worker(comfy, sched, inventory_interval=0)
    with running(worker):
        assert wait_until(lambda: sched.calls_of("register"))
        assert wait_until(lambda: len(sched.calls_of("lease")) > 2)
        assert sched.calls_of("inventory") == []
        comfy.inventory["node_classes"].append("NewNode")
        comfy.connections += 1  # its socket connected again: ComfyUI may have restarted
        assert wait_until(lambda: sched.calls_of("inventory"))
    assert "NewNode" in sched.calls_of("inventory")[0]["capabilities"]["node_classes"]


def test_the_loop_refreshes_on_its_timer():
    comfy, sched = FakeComfy(), FakeScheduler()
    worker = make_worker(comfy, sched, inventory_interval=0.05)
    with running(worker):
        assert wait_until(lambda: sched.calls_of("register"))
        reads = comfy.capability_reads
        assert wait_until(lambda: comfy.capability_reads >= reads + 2)  # re-read, nothing sent: no change
        assert sched.calls_of("inventory") == []
        comfy.inventory["checkpoints"] = ["b.safetensors"]
        assert wait_until(lambda: sched.calls_of("inventory"))


def test_a_missing_model_sends_the_inventory_at_once():
    comfy = FakeComfy()
    comfy.submit_errors = [refused(refusal("ckpt_name", "a.safetensors"))]
    sched = FakeScheduler([make_lease(1)])
    worker = make_worker(comfy, sched, inventory_interval=0)
    with running(worker):
        assert wait_until(
            lambda: sched.calls_of("inventory")
        )  # unchanged, yet sent: the scheduler dropped it
    assert sched.calls_of("fail")[0]["code"] == "model_missing"
    assert sched.names().index("fail") < sched.names().index("inventory")


def test_runworker_reads_the_interval_from_flag_or_env():
    from django.core.management.base import CommandError

    from workers_app.management.commands.runworker import build_config

    base = {"scheduler": "http://127.0.0.1:8000", "token": "t"}
    assert build_config(base, {}).inventory_interval == 300
    assert build_config(base, {"T2I_INVENTORY_INTERVAL": "0"}).inventory_interval == 0
    assert build_config({**base, "inventory_interval": "60"}, {}).inventory_interval == 60
    for bad in ("abc", "-1", "nan"):
        with pytest.raises(CommandError, match="inventory-interval"):
            build_config(base, {"T2I_INVENTORY_INTERVAL": bad})
