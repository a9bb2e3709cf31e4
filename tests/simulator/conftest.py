"""Fixtures of the simulator tests: simulators in background threads and recording clients, all closed
at the end of each test. None of these tests needs the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from workers_app.simulator import SimulatorConfig, SimulatorHandle, start_in_thread

from .recorder import Recorder

FAST = {"job_time": 0.02, "random_seed": 1234}


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., SimulatorHandle]]:
    """Factory: `make_simulator(job_time=..., ...)` starts a simulator with fast defaults."""
    handles: list[SimulatorHandle] = []

    def make(**overrides: Any) -> SimulatorHandle:
        handle = start_in_thread(SimulatorConfig(**{**FAST, **overrides}))
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def simulator(make_simulator: Callable[..., SimulatorHandle]) -> SimulatorHandle:
    return make_simulator()


@pytest.fixture
def make_recorder() -> Iterator[Callable[[SimulatorHandle], Recorder]]:
    """Factory of recording clients; their sockets are closed at teardown."""
    recorders: list[Recorder] = []

    def make(handle: SimulatorHandle) -> Recorder:
        recorder = Recorder(handle.url)
        recorders.append(recorder)
        return recorder

    yield make
    for recorder in recorders:
        recorder.close_all()


@pytest.fixture
def recorder(simulator: SimulatorHandle, make_recorder: Callable[[SimulatorHandle], Recorder]) -> Recorder:
    return make_recorder(simulator)
