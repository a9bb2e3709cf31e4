"""Faults during an idle farm: slow clients, and the database dropping every connection.

    python -m bench.scale_faults                   # 100 idle workers, 100 slow clients for 30 s, then a drop
    python -m bench.scale_faults --workers 500 --slow-clients 100

The idle farm of bench.scale (simulated protocol-2 daemons long-polling, a probe submitting and reading a task
every second) under the production server configuration on PostgreSQL, and meanwhile:
1. Slow clients: N connections drip a request one byte a second for `--slow-seconds` (half of them the
   headers, half a declared body), as a slow or hostile LAN client would. Target: status p99 <= 100 ms
   meanwhile.
2. A database restart, as the scheduler sees one: every connection to its database is terminated at once
   (pg_terminate_backend: pooled connections, each process's LISTEN connection). Counted: answers other than
   200/201/204 (a 503 is a clean refusal; a 500 is not), workers the scheduler marked offline (target 0), and
   submit -> lease answer after the drop (the listeners must be back: p50 within the idle-farm target).
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench.lease import make_workers
from bench.scale import Farm


async def slow_client(port: int, seconds: float, body: bool) -> None:
    """One connection that sends its request a byte a second and never finishes it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "POST /api/v1/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if body:
        writer.write((head + "Content-Length: 4096\r\n\r\n").encode())
    else:
        writer.write(head.encode())
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            writer.write(b"{" if body else b"X")
            await writer.drain()
            await asyncio.sleep(1)
    except (ConnectionError, OSError):
        pass  # the server gave up on it: fine
    finally:
        writer.close()


def drop_connections(db_url: str) -> int:
    """Terminate every session on the bench database but this one's: what a restart does to the scheduler."""
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        ).fetchall()
    return len(rows)


def measure(args) -> list:
    from bench.report import Figure

    db_url = database_url("postgres", "t2i_bench_scale_faults")
    setup_django(db_url)
    from django.db import connection

    from workers_app.models import Worker

    api_token = staff_api_token("bench-probe")
    tokens = make_workers(args.workers, "faults")
    figures = []
    print(
        f"scale faults: {args.workers} idle protocol-2 workers, a probe every second; gunicorn "
        f"{args.processes} processes, uvicorn (ASGI), PostgreSQL",
        flush=True,
    )
    with Server(db_url, processes=args.processes, threads=args.threads, log=args.server_log) as server:
        # 1. Slow clients.
        farm = Farm(server.url, tokens, api_token, args.slow_seconds, warmup=args.warmup)

        async def with_slow_clients() -> None:
            async def later() -> None:
                await asyncio.sleep(args.warmup)
                await asyncio.gather(
                    *(
                        slow_client(server.port, args.slow_seconds, i % 2 == 1)
                        for i in range(args.slow_clients)
                    )
                )

            await asyncio.gather(farm.run(), later())

        asyncio.run(with_slow_clients())
        p50, p99 = pct(farm.status, 50) * 1000, pct(farm.status, 99) * 1000
        print(
            f"{args.slow_clients} slow clients for {args.slow_seconds:g} s: status p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms (target <= 100 ms); lease p50 {pct(farm.dispatch, 50) * 1000:.0f} ms; "
            f"other answers {dict(sorted(farm.counts.items())) or 'none'}"
        )
        figures.append(
            Figure(
                "scale",
                f"{args.slow_clients} slow clients: status read p99",
                p99,
                "ms",
                "postgres",
                "<=",
                100,
            )
        )

        # 2. Every database connection dropped.
        farm = Farm(server.url, tokens, api_token, args.drop_after * 2, warmup=args.warmup)
        marks: dict[str, float] = {}

        async def with_drop() -> None:
            async def later() -> None:
                await asyncio.sleep(args.warmup + args.drop_after)
                marks["dispatched"] = len(farm.dispatch)
                marks["dropped"] = await asyncio.to_thread(drop_connections, db_url)

            await asyncio.gather(farm.run(), later())

        asyncio.run(with_drop())
        after = farm.dispatch[int(marks["dispatched"]) + 2 :]  # from the third task after the drop
        connection.close()  # this process's connection was dropped too
        offline = Worker.objects.filter(status=Worker.Status.OFFLINE).count()
        unclean = {k: v for k, v in farm.counts.items() if "503" not in k}
        print(
            f"database dropped {marks['dropped']:.0f} connections: submit -> lease after it p50 "
            f"{pct(after, 50) * 1000:.0f} ms over {len(after)} tasks; 503 answers "
            f"{sum(v for k, v in farm.counts.items() if '503' in k)}; other answers {unclean or 'none'}; "
            f"workers marked offline {offline} (target 0)"
        )
        figures += [
            Figure("scale", "connections dropped: workers marked offline", offline, "", "postgres", "<=", 0),
            Figure("scale", "connections dropped: answers other than 2xx/503", sum(unclean.values()), "",
                   "postgres", "<=", 0),
            Figure("scale", "connections dropped: submit -> lease after, p50", pct(after, 50) * 1000, "ms",
                   "postgres", "<=", 20),
        ]  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=100, help="idle workers")
    parser.add_argument("--slow-clients", type=int, default=100)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    parser.add_argument("--drop-after", type=float, default=15.0, help="seconds into the second run")
    parser.add_argument("--warmup", type=float, default=10.0)
    add_suite_arguments(parser)
    args = parser.parse_args()
    save_figures(args.json, measure(args))


if __name__ == "__main__":
    main()
