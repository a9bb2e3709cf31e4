"""Settings of one ComfyUI simulator instance: timings, simulated models and fault injection knobs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors",)
ERROR_KINDS = ("oom", "exception")
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")

# Knobs that may change while the simulator runs (POST /simulator/faults, SimulatorHandle.set_faults).
FAULT_FIELDS = (
    "job_time",
    "node_delay",
    "class_delays",
    "step_time",
    "ws_drop_rate",
    "history_delay",
    "error_rate",
    "error_kind",
    "view_delay",
    "view_fail_rate",
    "random_seed",
    "speed_factor",
    "switch_time",
)


@dataclass(frozen=True)
class SimulatorConfig:
    """How a simulator behaves. Times are in seconds, rates are probabilities from 0 to 1.

    - `checkpoints`: the simulated checkpoint file names (`CheckpointLoaderSimple.ckpt_name` choices).
    - `loras`: the simulated LoRA file names (`LoraLoader.lora_name` choices; none by default).
    - `job_time`: simulated execution time of one prompt, spread over the nodes that run (a sampler gets
      most of it, one slice per step). Cached nodes take no time.
    - `node_delay`: extra time for every node that runs; `class_delays`: extra time per class_type,
      e.g. `{"ImageBlur": 1.5}` to imitate a slow node.
    - `step_time`: when set, each sampler step takes this long instead of a share of `job_time`.
    - `ws_drop_rate`: chance per prompt that every WebSocket is dropped in the middle of the run.
    - `history_delay`: wait between the terminal event and the history write (the history race).
    - `error_rate` / `error_kind`: chance per prompt of an injected `execution_error`, either a
      `torch.OutOfMemoryError` ("oom") or a plain `Exception` ("exception").
    - `view_delay` / `view_fail_rate`: slow `/view` answers, and the chance of a 500 from `/view`.
    - `random_seed`: seeds every random choice of the simulator, so that runs are reproducible.
    - `speed_factor`: how fast this simulated GPU is: every node's time is divided by it (2 = twice as fast).
    - `switch_time`: extra seconds for `CheckpointLoaderSimple` when its checkpoint is not the one the last
      prompt loaded (a model switch); the first load after a start or restart counts as one.
    - `preview_method`: the server's `--preview-method` (`none`, `auto`, `latent2rgb`, `taesd`); a prompt's
      `extra_data.preview_method` overrides it for that prompt, as ComfyUI's `set_preview_method` does. With
      previews on, a sampler sends a JPEG preview of 1/8 the image's size with each step (latent2rgb's size).
    - `output_dir`: where output/input/temp files go; None means a fresh temporary folder, removed when
      the simulator stops.
    - `check_origin`: the Origin/Host check of the real server (403 on a mismatch for a loopback host).
    """

    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    loras: tuple[str, ...] = ()
    job_time: float = 0.2
    node_delay: float = 0.0
    class_delays: dict[str, float] = field(default_factory=dict)
    step_time: float | None = None
    ws_drop_rate: float = 0.0
    history_delay: float = 0.0
    error_rate: float = 0.0
    error_kind: str = "oom"
    view_delay: float = 0.0
    view_fail_rate: float = 0.0
    random_seed: int | None = None
    output_dir: str | None = None
    check_origin: bool = True
    speed_factor: float = 1.0
    switch_time: float = 0.0
    preview_method: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(str(name) for name in self.checkpoints))
        object.__setattr__(self, "loras", tuple(str(name) for name in self.loras))
        object.__setattr__(self, "class_delays", dict(self.class_delays))
        if (
            not _is_number(self.speed_factor)
            or not math.isfinite(self.speed_factor)
            or self.speed_factor <= 0
        ):
            raise ValueError(f"speed_factor must be a number > 0, not {self.speed_factor!r}")
        for name in ("job_time", "node_delay", "history_delay", "view_delay", "switch_time"):
            _check_seconds(name, getattr(self, name))
        if self.step_time is not None:
            _check_seconds("step_time", self.step_time)
        for class_type, seconds in self.class_delays.items():
            _check_seconds(f"class_delays[{class_type!r}]", seconds)
        for name in ("ws_drop_rate", "error_rate", "view_fail_rate"):
            _check_rate(name, getattr(self, name))
        if self.preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview_method must be one of {', '.join(PREVIEW_METHODS)}")
        if self.error_kind not in ERROR_KINDS:
            raise ValueError(f"error_kind must be one of {', '.join(ERROR_KINDS)}, not {self.error_kind!r}")
        if self.random_seed is not None and (
            isinstance(self.random_seed, bool) or not isinstance(self.random_seed, int)
        ):
            raise ValueError(f"random_seed must be an integer or None, not {self.random_seed!r}")

    def faults(self) -> dict[str, Any]:
        """The runtime-changeable knobs as a JSON-friendly dict."""
        return {name: _jsonable(getattr(self, name)) for name in FAULT_FIELDS}

    def with_faults(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A copy with some fault knobs changed; raises ValueError for unknown names or bad values."""
        unknown = sorted(set(changes) - set(FAULT_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown fault setting(s): {', '.join(unknown)}; known: {', '.join(FAULT_FIELDS)}"
            )
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **coerced)


def _jsonable(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_seconds(name: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


def _check_rate(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability between 0 and 1, not {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """Checks the JSON type of one fault value; the range checks happen in __post_init__."""
    if name == "class_delays":
        if not isinstance(value, dict):
            raise ValueError("class_delays must be an object mapping class_type to seconds")
        return {str(key): seconds for key, seconds in value.items()}
    if name == "error_kind":
        return value
    if name in ("step_time", "random_seed") and value is None:
        return None
    if name == "random_seed":
        return value
    if not _is_number(value):
        raise ValueError(f"{name} must be a number, not {value!r}")
    return float(value)
