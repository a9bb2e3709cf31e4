"""The `comfyui_simulator` management command: options become a SimulatorConfig; no database needed."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management.base import CommandError

from workers_app.management.commands import comfyui_simulator
from workers_app.simulator import SimulatorConfig


def parse(*argv: str) -> dict[str, Any]:
    parser = comfyui_simulator.Command().create_parser("manage.py", "comfyui_simulator")
    return vars(parser.parse_args(argv))


def test_options_build_the_simulator_config() -> None:
    options = parse(
        "--port", "8190", "--job-time", "0.5", "--checkpoints", "a.safetensors, b.safetensors",
        "--ws-drop-rate", "0.1", "--history-delay", "0.2", "--error-rate", "0.3", "--error-kind", "exception",
        "--view-delay", "0.4", "--view-fail-rate", "0.5", "--seed", "42", "--node-delay", "0.01",
        "--class-delay", "ImageBlur=1.5", "--class-delay", "KSampler=2", "--step-time", "0.05",
    )  # fmt: skip
    config = comfyui_simulator.config_from_options(options)
    assert options["port"] == 8190
    assert config == SimulatorConfig(
        checkpoints=("a.safetensors", "b.safetensors"),
        job_time=0.5,
        node_delay=0.01,
        class_delays={"ImageBlur": 1.5, "KSampler": 2.0},
        step_time=0.05,
        ws_drop_rate=0.1,
        history_delay=0.2,
        error_rate=0.3,
        error_kind="exception",
        view_delay=0.4,
        view_fail_rate=0.5,
        random_seed=42,
    )


def test_defaults_match_the_config_defaults() -> None:
    options = parse()
    assert (options["host"], options["port"]) == ("127.0.0.1", 8188)
    assert comfyui_simulator.config_from_options(options) == SimulatorConfig()
    assert comfyui_simulator.config_from_options(parse("--checkpoints", "")).checkpoints == ()


def test_handle_serves_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[Any, ...]] = []
    monkeypatch.setattr(comfyui_simulator, "run_forever", lambda *args, **kwargs: served.append(args))
    comfyui_simulator.Command().handle(**parse("--host", "0.0.0.0", "--port", "9000", "--seed", "1"))
    ((config, host, port),) = served
    assert (config.random_seed, host, port) == (1, "0.0.0.0", 9000)


def test_bad_values_are_command_errors() -> None:
    with pytest.raises(CommandError, match="error_rate"):
        comfyui_simulator.Command().handle(**parse("--error-rate", "2"))
    with pytest.raises(CommandError, match="expected CLASS=SECONDS"):
        parse("--class-delay", "ImageBlur")
