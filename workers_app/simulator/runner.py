"""Serving the simulator: in a background thread (tests, demos) or in the foreground (management command).

Usage in a test: `handle = start_in_thread(SimulatorConfig(job_time=0.05))`, then talk to `handle.url`;
`handle.set_faults(error_rate=1.0)` changes knobs at run time, `handle.restart(downtime=0.5)` simulates a
crash (queue and history lost, port refusing connections for 0.5 s), `handle.stop()` ends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from .app import SIMULATOR_KEY, create_app
from .config import SimulatorConfig
from .engine import Simulator, log
from .nodes import SIMULATOR_VERSION

T = TypeVar("T")
START_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0


class SimulatorServer:
    """One app served on host:port. It can go down for a while and listen again on the same port."""

    def __init__(self, config: SimulatorConfig, host: str, port: int) -> None:
        self.app = create_app(config)
        self.simulator: Simulator = self.app[SIMULATOR_KEY]
        self.simulator.downtime_host = self
        self.host = host
        self.port = port
        self.runner = web.AppRunner(self.app, shutdown_timeout=2.0, access_log=None)
        self._site: web.TCPSite | None = None
        self._comeback: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        await self.runner.setup()
        await self._listen()
        self.port = self.runner.addresses[0][1]
        log("listening on http://%s:%d (version %s)", self.host, self.port, SIMULATOR_VERSION)

    async def _listen(self) -> None:
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.listening.set()

    async def go_down(self, seconds: float) -> None:
        """Stops accepting connections now, closes open ones, and listens again after `seconds`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self.listening.clear()
        log("down: connections refused for %.2f s", seconds)
        if self._comeback is not None:
            self._comeback.cancel()
        self._comeback = asyncio.get_running_loop().create_task(self._come_back(seconds))

    async def _come_back(self, seconds: float) -> None:
        server = self.runner.server
        if server is not None:
            await server.shutdown(timeout=1.0)  # the process "died": no connection survives
        await asyncio.sleep(seconds)
        for _ in range(100):
            try:
                await self._listen()
            except OSError:
                await asyncio.sleep(0.05)
                continue
            log("up again on http://%s:%d", self.host, self.port)
            return
        log("could not listen on port %d again", self.port)

    async def stop(self) -> None:
        if self._comeback is not None:
            self._comeback.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._comeback
        await self.runner.cleanup()


class SimulatorHandle:
    """A simulator running in its own thread and event loop. All methods are thread-safe."""

    def __init__(
        self, server: SimulatorServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self._server = server
        self._loop = loop
        self._thread = thread
        self._stopped = False

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def simulator(self) -> Simulator:
        """The state object; read it through `call()` to stay thread-safe."""
        return self._server.simulator

    def _run(self, coro: Any, timeout: float = CALL_TIMEOUT) -> Any:
        if self._stopped:
            coro.close()
            raise RuntimeError("the simulator is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[Simulator], T]) -> T:
        """Runs `fn(simulator)` on the simulator's loop and returns its result."""

        async def invoke() -> T:
            return fn(self._server.simulator)

        return self._run(invoke())

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Changes fault knobs (names as in SimulatorConfig.faults()); returns all of them."""
        return self.call(lambda sim: sim.update_faults(changes))

    def faults(self) -> dict[str, Any]:
        return self.call(lambda sim: sim.config.faults())

    def restart(self, downtime: float = 0.0) -> None:
        """Crash and restart: queue, history and sockets are lost, `number` starts at 0 again. Returns
        once the state is reset and, with a downtime, the port refuses connections."""
        self._run(self._server.simulator.restart(downtime))

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        self._run(asyncio.wait_for(self._server.listening.wait(), timeout), timeout + 1)

    def stop(self) -> None:
        """Stops the server (closing every socket), the loop and the thread; removes temporary files."""
        if self._stopped:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(CALL_TIMEOUT)
        finally:
            self._stopped = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> SimulatorHandle:
    """Starts a simulator in a daemon thread and returns once it accepts connections (port 0: any free)."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[SimulatorServer] = concurrent.futures.Future()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = SimulatorServer(config or SimulatorConfig(), host, port)
            loop.run_until_complete(server.start())
        except BaseException as error:
            started.set_exception(error)
            loop.close()
            return
        started.set_result(server)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=serve, name="comfyui-simulator", daemon=True)
    thread.start()
    server = started.result(START_TIMEOUT)
    return SimulatorHandle(server, loop, thread)


def run_forever(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8188,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serves in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        server = SimulatorServer(config, host, port)
        await server.start()
        if on_ready is not None:
            on_ready(f"http://{server.host}:{server.port}")
        try:
            await stop.wait()
        finally:
            log("shutting down")
            await server.stop()

    asyncio.run(main())
