"""Many ComfyUI simulators in one process, each on its own port (one event loop serves them all).

    python -m bench.simhost --count 32 --job-time 1.0

32 worker daemons each need their own ComfyUI; 32 more Python processes would only measure a 2-core
machine's scheduler, so the scaling benchmark hosts the simulators here. Prints one JSON line
`{"urls": [...]}` once every simulator listens, then serves until SIGTERM or SIGINT. Each simulator is the
real one (`workers_app.simulator`), with its own queue, history, files and `/simulator/*` controls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

from workers_app.simulator.config import SimulatorConfig
from workers_app.simulator.runner import SimulatorServer


async def serve(count: int, config: SimulatorConfig, host: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    servers = [SimulatorServer(config, host, 0) for _ in range(count)]
    for server in servers:
        await server.start()
    print(json.dumps({"urls": [f"http://{s.host}:{s.port}" for s in servers]}), flush=True)
    try:
        await stop.wait()
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--job-time", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.count, SimulatorConfig(job_time=args.job_time), args.host))


if __name__ == "__main__":
    main()
