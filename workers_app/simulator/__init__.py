"""A ComfyUI SIMULATOR: a faithful stand-in for ComfyUI 0.3.64's HTTP + WebSocket API, for development
and tests (no GPU, no models). It validates prompts like the real server, "executes" them with simulated
timings, writes real PNG files, and can inject faults (dropped sockets, errors, slow history, restarts).

Run it with `python manage.py comfyui_simulator`, or in tests with `start_in_thread(SimulatorConfig(...))`.
"""

from .app import create_app
from .config import SimulatorConfig
from .runner import SimulatorHandle, start_in_thread

__all__ = ["SimulatorConfig", "SimulatorHandle", "create_app", "start_in_thread"]
