"""Fault injection: injected errors, dropped sockets, /view faults, the faults endpoint, restarts, seeds."""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus

import pytest
import requests

from workers_app.simulator import SimulatorConfig, SimulatorHandle

from .recorder import Recorder
from .workflows import CKPT, blur_workflow, noise_workflow, run, sd15_workflow, submit, wait_history

Factory = Callable[..., SimulatorHandle]
RecorderFactory = Callable[[SimulatorHandle], Recorder]


def test_injected_out_of_memory_error_hits_the_sampler(
    make_simulator: Factory, make_recorder: RecorderFactory
) -> None:
    sim = make_simulator(checkpoints=(CKPT,), error_rate=1.0)
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="e")
    prompt_id = submit(sim.url, sd15_workflow(width=64, height=64), client_id="e")["prompt_id"]
    error = recorder.wait_event("execution_error", prompt_id=prompt_id)["data"]
    assert (error["node_id"], error["node_type"]) == ("3", "KSampler")
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert "simulator" in error["exception_message"]
    assert isinstance(error["traceback"], list)
    assert sorted(error["executed"]) == ["4", "5", "6", "7"]
    recorder.wait_event("executing", node=None, prompt_id=prompt_id)
    entry = wait_history(sim.url, prompt_id)
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert entry["status"]["messages"][-1][0] == "execution_error"
    assert (entry["outputs"], entry["meta"]) == ({}, {})


def test_injected_plain_exception(make_simulator: Factory) -> None:
    sim = make_simulator(error_rate=1.0, error_kind="exception")
    entry = run(sim.url, noise_workflow("fail/x"))
    name, error = entry["status"]["messages"][-1]
    assert name == "execution_error"
    assert error["exception_type"] == "Exception"
    assert error["node_type"] in {"EmptyImage", "ImageAddNoise", "SaveImage"}


def test_dropped_sockets_do_not_stop_the_prompt(
    make_simulator: Factory, make_recorder: RecorderFactory
) -> None:
    sim = make_simulator(ws_drop_rate=1.0, node_delay=0.05)
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="drop")
    prompt_id = submit(sim.url, noise_workflow("drop/x"), client_id="drop")["prompt_id"]
    closed = recorder.wait_for(lambda line: line["dir"] == "ws_close")
    assert (closed["initiator"], closed["how"]) == ("server", "exception")
    assert not [m for m in recorder.events() if m["type"] == "execution_success"]
    assert wait_history(sim.url, prompt_id)["status"]["status_str"] == "success"


def test_view_faults(make_simulator: Factory) -> None:
    sim = make_simulator()
    (image,) = run(sim.url, noise_workflow("v/x"))["outputs"]["3"]["images"]
    sim.set_faults(view_fail_rate=1.0)
    failed = requests.get(f"{sim.url}/view", params=image, timeout=10)
    assert failed.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert failed.text == "500 Internal Server Error\n\nServer got itself in trouble"
    sim.set_faults(view_fail_rate=0.0, view_delay=0.2)
    started = time.monotonic()
    assert requests.get(f"{sim.url}/view", params=image, timeout=10).status_code == HTTPStatus.OK
    assert time.monotonic() - started >= 0.2


def test_faults_endpoint_reads_and_changes_the_knobs(simulator: SimulatorHandle) -> None:
    url = f"{simulator.url}/simulator/faults"
    faults = requests.get(url, timeout=10).json()
    assert faults["simulator"] == "0.3.64-simulator"
    assert faults["faults"]["error_rate"] == 0.0
    changed = requests.post(url, json={"error_rate": 1, "error_kind": "exception"}, timeout=10)
    assert changed.status_code == HTTPStatus.OK
    assert changed.json()["faults"]["error_rate"] == 1.0
    assert run(simulator.url, noise_workflow("f/x"))["status"]["status_str"] == "error"
    for bad in (
        {"error_rate": 2},
        {"no_such_knob": 1},
        {"job_time": "slow"},
        {"error_kind": "segfault"},
        [1],
    ):
        response = requests.post(url, json=bad, timeout=10)
        assert response.status_code == HTTPStatus.BAD_REQUEST, bad
        assert response.json()["error"] == "invalid_faults"
    assert requests.get(url, timeout=10).json()["faults"]["error_kind"] == "exception"
    assert simulator.faults()["error_rate"] == 1.0


def test_restart_endpoint_loses_everything_and_refuses_connections_for_a_while(
    make_simulator: Factory, make_recorder: RecorderFactory
) -> None:
    sim = make_simulator(job_time=0.0, class_delays={"ImageBlur": 0.5})
    (image,) = run(sim.url, noise_workflow("keep/x"))["outputs"]["3"]["images"]
    recorder = make_recorder(sim)
    recorder.connect("ws", client_id="r")
    running = submit(sim.url, blur_workflow("r/a"), client_id="r")["prompt_id"]
    pending = submit(sim.url, blur_workflow("r/b", seed=2), client_id="r")
    assert pending["number"] == 2
    recorder.wait_event("executing", node="10", prompt_id=running)
    answer = requests.post(f"{sim.url}/simulator/restart", json={"downtime": 0.4}, timeout=10)
    assert answer.status_code == HTTPStatus.OK
    assert answer.json()["restarted"] is True
    closed = recorder.wait_for(lambda line: line["dir"] == "ws_close")
    assert closed["initiator"] == "server"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.url}/system_stats", timeout=10)
    sim.wait_until_listening()
    assert requests.get(f"{sim.url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
    assert requests.get(f"{sim.url}/history", timeout=10).json() == {}
    assert requests.get(f"{sim.url}/history/{running}", timeout=10).json() == {}
    assert submit(sim.url, noise_workflow("keep/x"))["number"] == 0
    assert (
        requests.get(f"{sim.url}/view", params=image, timeout=10).status_code == HTTPStatus.OK
    )  # files stay


def test_restart_from_the_handle_resets_the_number(simulator: SimulatorHandle) -> None:
    run(simulator.url, noise_workflow("n/x"))
    assert submit(simulator.url, noise_workflow("n/y"))["number"] == 1
    simulator.restart()
    assert simulator.call(lambda sim: (sim.number, dict(sim.history), list(sim.queue))) == (0, {}, [])
    assert run(simulator.url, noise_workflow("n/x"))["prompt"][0] == 0


def test_output_counter_continues_after_a_restart(simulator: SimulatorHandle) -> None:
    run(simulator.url, noise_workflow("probe/basic"))
    simulator.restart()
    entry = run(simulator.url, noise_workflow("probe/basic"))
    assert entry["outputs"]["3"]["images"][0]["filename"] == "basic_00002_.png"


def test_the_random_seed_makes_fault_decisions_reproducible(make_simulator: Factory) -> None:
    def outcomes(seed: int) -> list[str]:
        sim = make_simulator(error_rate=0.5, random_seed=seed, job_time=0.0)
        return [run(sim.url, noise_workflow(f"s/{i}", seed=i))["status"]["status_str"] for i in range(8)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert set(first) == {"success", "error"}


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        SimulatorConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="job_time"):
        SimulatorConfig(job_time=-1)
    with pytest.raises(ValueError, match="unknown fault"):
        SimulatorConfig().with_faults({"checkpoints": ["x"]})


def test_speed_factor_and_model_switch_time(make_simulator: Factory) -> None:
    """A slow GPU takes longer; loading another checkpoint than the last costs `switch_time` (scaled too)."""

    def timed(sim, ckpt: str, seed: int) -> float:
        started = time.monotonic()
        run(sim.url, sd15_workflow(seed=seed, prefix=f"t/s{seed}", ckpt=ckpt))
        return time.monotonic() - started

    slow = make_simulator(job_time=0.2, speed_factor=0.5, checkpoints=(CKPT,))
    assert timed(slow, CKPT, 1) >= 0.4  # 0.2 s of work at half speed

    other = "other-sdxl.safetensors"
    sim = make_simulator(job_time=0.05, switch_time=0.6, speed_factor=2.0, checkpoints=(CKPT, other))
    assert timed(sim, CKPT, 1) >= 0.3  # the first load is a switch: (0.6 + 0.05) / 2
    same = timed(sim, CKPT, 2)
    switched = timed(sim, other, 3)
    assert switched >= 0.3 and switched - same >= 0.2
    with pytest.raises(ValueError, match="speed_factor"):
        SimulatorConfig(speed_factor=0)
