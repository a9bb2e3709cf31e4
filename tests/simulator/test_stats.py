"""GET /simulator/stats: per-prompt wall-clock times that the benchmarks read (dispatch latency, idle gap)."""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus

import requests

from workers_app.simulator import SimulatorHandle

from .workflows import noise_workflow, run, submit, wait_history


def stats(handle: SimulatorHandle) -> list[dict]:
    response = requests.get(f"{handle.url}/simulator/stats", timeout=10)
    assert response.status_code == HTTPStatus.OK
    return response.json()["prompts"]


def test_each_prompt_has_its_times_in_order(simulator: SimulatorHandle) -> None:
    before = time.time()
    first = submit(simulator.url, noise_workflow("bench/first"))["prompt_id"]
    second = submit(simulator.url, noise_workflow("bench/second", seed=2))["prompt_id"]
    wait_history(simulator.url, second)
    after = time.time()

    entries = stats(simulator)
    assert [e["prompt_id"] for e in entries] == [first, second]
    assert [e["filename_prefix"] for e in entries] == ["bench/first", "bench/second"]
    for entry in entries:
        assert before <= entry["received"] <= entry["execution_start"] <= entry["execution_success"] <= after
        assert "execution_error" not in entry
    # Queued behind the first one, the second starts only after the first has finished.
    assert entries[1]["execution_start"] >= entries[0]["execution_success"]


def test_failed_and_rejected_prompts(make_simulator: Callable[..., SimulatorHandle]) -> None:
    simulator = make_simulator(error_rate=1.0, error_kind="exception")
    failed = run(simulator.url, noise_workflow("bench/fails"))
    assert failed["status"]["status_str"] == "error"
    bad = requests.post(f"{simulator.url}/prompt", json={"prompt": {"1": {"class_type": "Nope"}}}, timeout=10)
    assert bad.status_code == HTTPStatus.BAD_REQUEST

    (entry,) = stats(simulator)  # the rejected prompt never reached the queue
    assert entry["execution_error"] >= entry["execution_start"] >= entry["received"]
    assert "execution_success" not in entry


def test_a_restart_clears_them(simulator: SimulatorHandle) -> None:
    run(simulator.url, noise_workflow("bench/before-restart"))
    assert len(stats(simulator)) == 1
    simulator.restart()
    assert stats(simulator) == []
