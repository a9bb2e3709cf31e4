"""`python manage.py runworker`: the worker daemon (talks HTTP only; needs no database)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers_app.daemon.scheduler import scheduler_urls
from workers_app.daemon.surface import SurfaceConfig
from workers_app.daemon.worker import WorkerLoop, WorkerLoopConfig

ENV = {
    "scheduler": "T2I_SCHEDULER_URL",
    "token": "T2I_WORKER_TOKEN",
    "comfyui": "T2I_COMFYUI_URL",
    "name": "T2I_WORKER_NAME",
    "prefetch": "T2I_PREFETCH",
    "prefetch_lead": "T2I_PREFETCH_LEAD",
    "port": "T2I_WORKER_PORT",
    "listen": "T2I_WORKER_LISTEN",
    "images_dir": "T2I_WORKER_IMAGES_DIR",
    "images_max_age": "T2I_WORKER_IMAGES_MAX_AGE",
    "images_max_mb": "T2I_WORKER_IMAGES_MAX_MB",
    "inventory_interval": "T2I_INVENTORY_INTERVAL",
}


def build_config(options: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> WorkerLoopConfig:
    """Options win over the environment; a missing or bad value fails loudly."""

    def pick(key: str) -> Any:
        value = options.get(key)
        return value if value not in (None, "") else environ.get(ENV[key]) or None

    scheduler, token = pick("scheduler"), pick("token")
    if not scheduler:
        raise CommandError(f"--scheduler (or {ENV['scheduler']}) is required")
    try:
        urls = scheduler_urls(str(scheduler))
    except ValueError as exc:
        raise CommandError(f"--scheduler (or {ENV['scheduler']}): {exc}")
    if not token:
        raise CommandError(f"--token (or {ENV['token']}) is required")
    prefetch_raw = pick("prefetch")
    try:
        prefetch = int(prefetch_raw) if prefetch_raw is not None else 2
    except ValueError:
        raise CommandError(f"{ENV['prefetch']} must be an integer, got {prefetch_raw!r}")
    if prefetch < 1:
        raise CommandError("--prefetch must be at least 1")
    prefetch_lead = _seconds(pick, "prefetch_lead", default="30", most=3600)
    grace = float(options.get("grace") if options.get("grace") is not None else 30.0)
    inventory_interval = _seconds(pick, "inventory_interval", default="300", most=86400)
    config = WorkerLoopConfig(
        scheduler_url=",".join(urls),
        token=str(token),
        comfyui_url=str(pick("comfyui") or "http://127.0.0.1:8188"),
        prefetch=prefetch,
        prefetch_lead=prefetch_lead,
        grace=grace,
        once=bool(options.get("once")),
        inventory_interval=inventory_interval,
    )
    if name := pick("name"):
        config.name = str(name)
    config.surface = _surface_config(pick)
    return config


def _seconds(pick: Any, key: str, *, default: str, most: float) -> float:
    """A number of seconds from 0 to `most` (option or environment), or a CommandError naming both."""
    raw = pick(key) or default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        flag = f"--{key.replace('_', '-')} (or {ENV[key]})"
        raise CommandError(f"{flag} must be 0 to {most:g} seconds, got {raw!r}")
    return value


def _surface_config(pick: Any) -> SurfaceConfig | None:
    """The worker's own HTTP surface: off unless a port is given."""
    port = pick("port")
    if port is None:
        return None

    def number(key: str, kind: type, low: float, high: float, default: str = "") -> Any:
        raw = pick(key) or default
        flag = f"--{key.replace('_', '-')} (or {ENV[key]})"
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise CommandError(f"{flag} must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise CommandError(f"{flag} must be between {low:g} and {high:g}, got {raw!r}")
        return value

    listen = str(pick("listen") or "127.0.0.1")
    return SurfaceConfig(
        port=number("port", int, 0, 65535),
        listen=listen,
        images_dir=str(pick("images_dir") or "images"),
        images_max_age=3600.0 * number("images_max_age", float, 0.01, 24 * 365, "6"),
        images_max_bytes=(1 << 20) * number("images_max_mb", int, 1, 1 << 24, "1024"),
    )


def configure_logging(*, verbose: bool, stream: Any = None) -> None:
    """One line per event on stderr from LOG_LEVEL up (INFO unless set; `make run` sets WARNING);
    ``--verbose`` adds the ComfyUI protocol detail (DEBUG)."""
    log = logging.getLogger("workers_app.daemon")
    log.setLevel(logging.DEBUG if verbose else os.environ.get("LOG_LEVEL", "INFO").upper())
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_formatter())
    log.addHandler(handler)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _formatter() -> logging.Formatter:
    if os.environ.get("LOG_JSON") == "1":
        try:
            from t2i_project.logging import JsonFormatter

            return JsonFormatter()
        except ImportError:
            pass
    return logging.Formatter("%(asctime)s %(levelname)s %(message)s")


@contextmanager
def stop_on_signals(worker: WorkerLoop) -> Iterator[None]:
    """SIGTERM/SIGINT set the worker's stop flag; nothing else happens inside the handler."""

    def handler(signum: int, frame: Any) -> None:
        worker.stop_requested = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Command(BaseCommand):
    help = "Run the worker daemon: lease tasks from the scheduler and render them on a ComfyUI server."
    requires_system_checks: list[str] = []  # HTTP only: no database, no model checks
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--scheduler",
            help="scheduler base URL, e.g. http://HOST:8000, or several separated by commas (instances "
            f"sharing one database: the daemon moves on when one fails; env {ENV['scheduler']})",
        )
        parser.add_argument(
            "--token", help=f"worker token (env {ENV['token']}; prefer the env: argv is visible)"
        )
        parser.add_argument(
            "--comfyui", help=f"ComfyUI base URL (env {ENV['comfyui']}, default http://127.0.0.1:8188)"
        )
        parser.add_argument(
            "--name", help=f"worker name shown in the scheduler (env {ENV['name']}, default hostname)"
        )
        parser.add_argument(
            "--prefetch", type=int, help=f"tasks held at once (env {ENV['prefetch']}, default 2)"
        )
        parser.add_argument(
            "--prefetch-lead",
            help="ask for the task behind the running one just before that one ends (four times what getting "
            "a task takes here lately), at most this many seconds before, so that tasks queued meanwhile can "
            f"still go first (env {ENV['prefetch_lead']}, default 30; 0: at once)",
        )
        parser.add_argument(
            "--grace", type=float, default=30.0, help="seconds the running task gets on shutdown"
        )
        parser.add_argument(
            "--inventory-interval",
            help="seconds between re-reads of ComfyUI's models and node classes, sent to the scheduler when "
            f"they changed (env {ENV['inventory_interval']}, default 300; 0: only when ComfyUI restarts "
            "or a prompt names a model it lacks)",
        )
        surface = parser.add_argument_group(
            "the worker's own HTTP surface (GET /status/ID, /images/NAME, /healthz, /metrics)"
        )
        surface.add_argument(
            "--port",
            help=f"serve it on this port, e.g. 8001 (env {ENV['port']}; off unless given; 0: any free port)",
        )
        surface.add_argument(
            "--listen",
            help=f"address to listen on (env {ENV['listen']}, default 127.0.0.1; beyond loopback every "
            "request needs the worker token as Authorization: Bearer)",
        )
        surface.add_argument(
            "--images-dir",
            help=f"local copies of the images made here (env {ENV['images_dir']}, default images/)",
        )
        surface.add_argument(
            "--images-max-age",
            help=f"hours a local copy is kept (env {ENV['images_max_age']}, default 6)",
        )
        surface.add_argument(
            "--images-max-mb",
            help=f"MiB the local copies may take in all (env {ENV['images_max_mb']}, default 1024)",
        )
        parser.add_argument("--once", action="store_true", help="take at most one task, run it, then exit")
        parser.add_argument("--verbose", action="store_true", help="log ComfyUI protocol detail")

    def handle(self, *args: Any, **options: Any) -> None:
        config = build_config(options)
        configure_logging(verbose=bool(options.get("verbose")))
        worker = WorkerLoop(config)
        with stop_on_signals(worker):
            code = worker.run()
        if code:
            raise CommandError(worker.fatal_error or "worker stopped with an error", returncode=code)
