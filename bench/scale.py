"""An idle farm of many workers: what waiting costs the scheduler (the scale issue's measurement).

    python -m bench.scale                          # 100, 250 and 500 idle workers, 40 s each, PostgreSQL
    python -m bench.scale --workers 500 --duration 600         # ten minutes at 500

One asyncio process simulates N worker daemons with exactly the requests an idle `manage.py runworker` sends
(docs/worker-api.md, protocol 2): register, `POST lease` with `wait=20` in a loop, and a heartbeat every 5 s
unless an idle lease wait is open (the open wait is the heartbeat; register again on 409 register_required).
`--daemon-protocol 1` sends what the oldest daemons sent: a heartbeat every 5 s whatever it does. Protocol 3
(today's runworker) idles as 2 does: its worker socket carries the calls of a task it runs, and the rare
heartbeat between two waits goes over HTTP here.
A probe submits a small task every second through the REST API and reads its
status; the simulated worker that gets it completes it at once with a tiny PNG of the right size, so the farm
stays idle. The scheduler runs under its production configuration (gunicorn, t2i_project/gunicorn.conf.py).

Prints per N: scheduler CPU (every gunicorn process) and PostgreSQL CPU in % of one core, PostgreSQL
connections at the end, status read p50/p99, submit -> lease answer p50/p99, heartbeats refused (409) and
failed, and workers the scheduler marked offline. Nothing here is tuned for the benchmark: the intervals and
waits are runworker's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

from bench.common import (
    Server,
    add_suite_arguments,
    database_url,
    pct,
    save_figures,
    setup_django,
    staff_api_token,
)
from bench.lease import NODES, make_workers, postgres_cpu, since
from workers_app.daemon.scheduler import PROTOCOL_VERSION

HEARTBEAT_EVERY = 5.0  # runworker's default
LEASE_WAIT = 20.0  # runworker's default long poll when it holds nothing


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 160)).save(out, format="PNG")
    return out.getvalue()


class Farm:
    """The simulated workers and the probe, with what they saw."""

    def __init__(
        self,
        url: str,
        tokens: list[str],
        api_token: str,
        duration: float,
        protocol: int = 2,
        warmup: float = 0,
        probe_url: str | None = None,
    ) -> None:
        self.url, self.tokens, self.api_token, self.duration = url, tokens, api_token, duration
        self.protocol, self.warmup = protocol, warmup
        self.probe_url = probe_url or url  # where the probe submits and reads (bench.instances: elsewhere)
        self.on_measure: list = []  # called once the warm-up (every worker registering) is over
        self.submitted: dict[str, tuple[float, float]] = {}  # task id -> when its submit was sent, returned
        self.early: dict[str, float] = {}  # task id -> when a lease answer had it, before its submit returned
        # Submit returned -> a worker's lease answer carried the task (negative when the lease answer came
        # first: the submit's answer still reads the task back after its commit woke the worker), and the
        # same from when the submit was sent.
        self.dispatch: list[float] = []
        self.dispatch_sent: list[float] = []
        self.status: list[float] = []  # status read latencies
        self.counts: dict[str, int] = {}
        self.image = png(64, 64)

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def run(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=LEASE_WAIT + 30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.stop_at = time.monotonic() + self.duration
            tasks = [asyncio.create_task(self.worker(session, token)) for token in self.tokens]
            await asyncio.sleep(self.warmup)
            for callback in self.on_measure:
                callback()
            self.dispatch.clear()
            self.dispatch_sent.clear()
            self.counts.clear()
            tasks.append(asyncio.create_task(self.probe(session)))
            await asyncio.sleep(self.duration)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def worker(self, session, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "T2I-Protocol": str(self.protocol)}
        await self.register(session, headers)
        waiting = asyncio.Event()  # set while an idle lease wait is open
        beat = asyncio.create_task(self.heartbeats(session, headers, waiting))
        try:
            while True:
                try:
                    waiting.set()
                    async with session.post(
                        f"{self.url}/api/v1/worker/lease", json={"wait": LEASE_WAIT}, headers=headers
                    ) as r:
                        waiting.clear()
                        if r.status == 200:
                            lease = await r.json()
                            self.seen(lease["task_id"])
                            await self.complete(session, headers, lease)
                        elif r.status == 409:
                            self.count("lease refused (409)")
                            await self.register(session, headers)
                        elif r.status != 204:
                            self.count(f"lease HTTP {r.status}")
                            await asyncio.sleep(1)
                except (TimeoutError, OSError) as exc:
                    waiting.clear()
                    self.count(f"lease {type(exc).__name__}")
                    await asyncio.sleep(1)
        finally:
            beat.cancel()

    async def register(self, session, headers: dict) -> None:
        body = {"prefetch": 2, "capabilities": {"node_classes": NODES}}
        async with session.post(f"{self.url}/api/v1/worker/register", json=body, headers=headers) as r:
            if r.status != 200:
                self.count(f"register HTTP {r.status}")

    async def heartbeats(self, session, headers: dict, waiting: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            if self.protocol >= 2 and waiting.is_set():
                continue  # protocol 2: the open lease wait is this worker's heartbeat
            try:
                async with session.post(
                    f"{self.url}/api/v1/worker/heartbeat", json={"tasks": []}, headers=headers
                ) as r:
                    if r.status == 409:
                        self.count("heartbeat refused (409)")
                        await self.register(session, headers)
                    elif r.status != 200:
                        self.count(f"heartbeat HTTP {r.status}")
            except (TimeoutError, OSError) as exc:
                self.count(f"heartbeat {type(exc).__name__}")

    def seen(self, task_id: str) -> None:
        submitted = self.submitted.pop(task_id, None)
        if submitted is None:
            self.early[task_id] = time.monotonic()
        else:
            self.dispatched(submitted, time.monotonic())

    def dispatched(self, submitted: tuple[float, float], leased: float) -> None:
        sent, returned = submitted
        self.dispatch.append(leased - returned)
        self.dispatch_sent.append(leased - sent)

    async def complete(self, session, headers: dict, lease: dict) -> None:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("lease_token", lease["lease_token"])
        form.add_field("images", self.image, filename="out.png", content_type="image/png")
        async with session.post(
            f"{self.url}/api/v1/worker/tasks/{lease['task_id']}/complete", data=form, headers=headers
        ) as r:
            if r.status != 200:
                self.count(f"complete HTTP {r.status}")

    async def probe(self, session) -> None:
        headers = {"Authorization": f"Token {self.api_token}"}
        body = {"prompt": "probe", "width": 64, "height": 64, "template": "noise-test"}
        while True:
            t0 = time.monotonic()
            async with session.post(f"{self.probe_url}/api/v1/tasks/", json=body, headers=headers) as r:
                if r.status != 201:
                    self.count(f"submit HTTP {r.status}")
                    await asyncio.sleep(1)
                    continue
                task_id = (await r.json())["id"]
            submitted = (t0, time.monotonic())
            leased = self.early.pop(task_id, None)
            if leased is None:
                self.submitted[task_id] = submitted
            else:
                self.dispatched(submitted, leased)
            t1 = time.monotonic()
            async with session.get(f"{self.probe_url}/api/v1/tasks/{task_id}/", headers=headers) as r:
                await r.read()
                if r.status == 200:
                    self.status.append(time.monotonic() - t1)
                else:
                    self.count(f"status HTTP {r.status}")
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def pg_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def measure(args) -> list:
    db_url = database_url("postgres", "t2i_bench_scale")
    setup_django(db_url)

    from bench.report import Figure
    from workers_app.models import Worker

    api_token = staff_api_token("bench-probe")
    print(
        f"scale: idle workers as runworker idles (heartbeat {HEARTBEAT_EVERY:g} s, lease wait "
        f"{LEASE_WAIT:g} s, daemon protocol {args.daemon_protocol}), a probe submitting and reading a task "
        f"every second; gunicorn {args.processes} processes, "
        + (f"gthread x {args.threads} (WSGI)" if args.threads else "uvicorn (ASGI)"),
        flush=True,
    )
    heads = (
        "sched CPU",
        "PG CPU",
        "PG conns",
        "RSS/proc",
        "status p50",
        "status p99",
        "lease p50",
        "lease p99",
    )
    print(f"{'idle workers':<13}" + "".join(f"{h:>11}" for h in heads) + "  refused / errors, offline")
    figures = []
    for n in [int(x) for x in args.workers.split(",")]:
        Worker.objects.all().delete()
        tokens = make_workers(n, f"idle{n}")
        with Server(db_url, processes=args.processes, threads=args.threads, log=args.server_log) as server:
            farm = Farm(server.url, tokens, api_token, args.duration, args.daemon_protocol, args.warmup)
            start: dict[str, float] = {}

            def mark(start=start, server=server) -> None:
                start.update(cpu=server.cpu_seconds(), pg=postgres_cpu(), t=time.monotonic())

            farm.on_measure.append(mark)
            asyncio.run(farm.run())
            wall = time.monotonic() - start["t"]
            cpu0, pg0 = start["cpu"], start["pg"]
            sched = (server.cpu_seconds() - cpu0) / wall * 100
            pg = since(pg0) / wall * 100
            conns = pg_connections()
            rss = server.peak_rss_mb()
        offline = Worker.objects.filter(status=Worker.Status.OFFLINE).count()
        refused = sum(v for k, v in farm.counts.items() if "409" in k)
        errors = sum(v for k, v in farm.counts.items() if "409" not in k)
        sp50, sp99 = pct(farm.status, 50) * 1000, pct(farm.status, 99) * 1000
        dp50, dp99 = pct(farm.dispatch, 50) * 1000, pct(farm.dispatch, 99) * 1000
        cells = [f"{sched:.0f} %", f"{pg:.0f} %", str(conns), f"{rss:.0f} MB", f"{sp50:.0f} ms",
                 f"{sp99:.0f} ms", f"{dp50:.0f} ms", f"{dp99:.0f} ms"]  # fmt: skip
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(farm.counts.items()))
        print(
            f"{n:<13}" + "".join(f"{c:>11}" for c in cells) + f"  {refused} / {errors}, {offline}  {detail}"
        )
        label = f"{n} idle workers"
        figures += [
            Figure("scale", f"{label}: scheduler + PostgreSQL CPU", sched + pg, "% of a core", "postgres",
                   "<=", 30),
            Figure("scale", f"{label}: PostgreSQL connections", conns, "", "postgres", "<=", 30),
            Figure("scale", f"{label}: scheduler peak RSS per process", rss, "MB", "postgres", "<=", 150),
            Figure("scale", f"{label}: status read p99", sp99, "ms", "postgres", "<=", 50),
            Figure("scale", f"{label}: submit -> lease answer p50", dp50, "ms", "postgres", "<=", 20),
            Figure("scale", f"{label}: heartbeats and leases refused, workers offline", refused + offline, "",
                   "postgres", "<=", 0),
        ]  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="100,250,500", help="idle worker counts, comma-separated")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per worker count")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds for the workers to register, not measured"
    )
    parser.add_argument(
        "--daemon-protocol",
        type=int,
        default=PROTOCOL_VERSION,
        choices=(1, 2, 3),
        help="the daemons' protocol (an idle farm sends the same calls with 2 and 3)",
    )
    add_suite_arguments(parser)
    args = parser.parse_args()
    save_figures(args.json, measure(args))


if __name__ == "__main__":
    main()
