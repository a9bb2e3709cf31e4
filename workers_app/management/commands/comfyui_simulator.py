"""`manage.py comfyui_simulator`: a fake ComfyUI 0.3.64 server for development and tests (no database,
no GPU, no models). Runs in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from workers_app.simulator.config import ERROR_KINDS, PREVIEW_METHODS, SimulatorConfig
from workers_app.simulator.runner import run_forever


def _class_delay(value: str) -> tuple[str, float]:
    name, sep, seconds = value.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(seconds)
    except ValueError:
        raise ArgumentTypeError(f"expected CLASS=SECONDS, e.g. ImageBlur=1.5, not {value!r}")


def config_from_options(options: dict[str, Any]) -> SimulatorConfig:
    """The SimulatorConfig described by the command's options (ValueError for bad values)."""
    checkpoints = tuple(name.strip() for name in options["checkpoints"].split(",") if name.strip())
    loras = tuple(name.strip() for name in (options.get("loras") or "").split(",") if name.strip())
    return SimulatorConfig(
        checkpoints=checkpoints,
        loras=loras,
        job_time=options["job_time"],
        node_delay=options["node_delay"],
        class_delays=dict(options["class_delay"] or []),
        step_time=options["step_time"],
        ws_drop_rate=options["ws_drop_rate"],
        history_delay=options["history_delay"],
        error_rate=options["error_rate"],
        error_kind=options["error_kind"],
        view_delay=options["view_delay"],
        view_fail_rate=options["view_fail_rate"],
        random_seed=options["seed"],
        output_dir=options["output_dir"],
        check_origin=not options["no_origin_check"],
        speed_factor=options["speed_factor"],
        switch_time=options["switch_time"],
        preview_method=options.get("preview_method") or "none",
    )


class Command(BaseCommand):
    help = (
        "Runs the ComfyUI SIMULATOR: ComfyUI's HTTP + WebSocket API with simulated execution, real PNG "
        "outputs and fault injection (see GET/POST /simulator/faults and POST /simulator/restart)."
    )
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: ArgumentParser) -> None:
        defaults = SimulatorConfig()
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8188, help="port to listen on (default 8188)")
        parser.add_argument(
            "--job-time", type=float, default=defaults.job_time, help="simulated seconds per prompt (0.2)"
        )
        parser.add_argument(
            "--checkpoints",
            default=",".join(defaults.checkpoints),
            help="comma-separated simulated checkpoint names (empty: none, like a server without models)",
        )
        parser.add_argument(
            "--loras", default="", help="comma-separated simulated LoRA names (LoraLoader; default none)"
        )
        parser.add_argument("--node-delay", type=float, default=0.0, help="extra seconds per node that runs")
        parser.add_argument(
            "--class-delay",
            type=_class_delay,
            action="append",
            metavar="CLASS=SECONDS",
            help="extra seconds for one node class, e.g. ImageBlur=1.5 (repeatable)",
        )
        parser.add_argument("--step-time", type=float, default=None, help="seconds per sampler step")
        parser.add_argument(
            "--ws-drop-rate", type=float, default=0.0, help="chance per prompt of dropped sockets"
        )
        parser.add_argument(
            "--history-delay", type=float, default=0.0, help="seconds between the terminal event and history"
        )
        parser.add_argument(
            "--error-rate", type=float, default=0.0, help="chance per prompt of execution_error"
        )
        parser.add_argument("--error-kind", choices=ERROR_KINDS, default="oom", help="injected error type")
        parser.add_argument("--view-delay", type=float, default=0.0, help="seconds before /view answers")
        parser.add_argument("--view-fail-rate", type=float, default=0.0, help="chance of a 500 from /view")
        parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible runs")
        parser.add_argument("--output-dir", default=None, help="folder for files (default: a temporary one)")
        parser.add_argument("--no-origin-check", action="store_true", help="accept any Origin header")
        parser.add_argument(
            "--speed-factor", type=float, default=1.0, help="how fast this GPU is: times are divided by it"
        )
        parser.add_argument(
            "--switch-time",
            type=float,
            default=0.0,
            help="extra seconds to load a checkpoint other than the last one loaded (a model switch)",
        )
        parser.add_argument(
            "--preview-method",
            choices=PREVIEW_METHODS,
            default="none",
            help="latent previews from samplers, as ComfyUI's --preview-method (a prompt may override it)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = config_from_options(options)
        except ValueError as error:
            raise CommandError(str(error))
        if not logging.getLogger().handlers and not logging.getLogger("workers_app.simulator").handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        # A line per prompt at INFO; LOG_LEVEL=WARNING (what `make run` sets) keeps only the problems.
        logging.getLogger("workers_app.simulator").setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())

        def ready(url: str) -> None:
            self.stdout.write(f"ComfyUI simulator (SIMULATED, no models) listening on {url}; Ctrl-C to stop")

        try:
            run_forever(config, options["host"], options["port"], on_ready=ready)
        except OSError as error:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {error}")
