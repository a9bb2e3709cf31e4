"""CPU per lease+complete cycle through the scheduler's ASGI application in one process (no HTTP, no server).

    python -m bench.asgi_cpu                       # 600 cycles, 8 workers at a time, PostgreSQL
    python -m bench.asgi_cpu --cycles 1200 --concurrency 8 --db-name t2i_me_asgi
    python -m bench.asgi_cpu --two-requests        # a `POST lease` and a completion per cycle

N workers at a time drive `t2i_project.asgi.application` as uvicorn would call it (scope, receive, send):
each completion carries the next lease (`lease_next`), and every fourth cycle a heartbeat, about what
bench.ratio's workers send. Prints the process's CPU (every thread) per cycle. Between bench.cycle_cpu (the
test client: no ASGI handler, no threads) and bench.ratio (gunicorn, HTTP, two processes on a loaded
machine): the place to see what the ASGI handler and its thread hops cost, and to profile them
(`py-spy record --gil -- python -m bench.asgi_cpu`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench import lease
from bench.common import database_url, setup_django


async def call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    headers = {"host": "127.0.0.1", "content-length": str(len(body)), **headers}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks = 0, []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def measure(args) -> None:
    import requests

    # A worker whose heartbeats happen to fall to the others would go offline in a long run on a busy machine.
    setup_django(database_url("postgres", args.db_name), T2I_WORKER_OFFLINE_AFTER="100000")
    lease.seed_tasks(args.cycles * 2 + args.concurrency * 10 + 200)
    tokens = lease.make_workers(args.concurrency, "asgi")
    from t2i_project.asgi import application

    png = lease.tiny_png()
    done = [0]

    async def worker(token: str, cycles: int) -> None:
        auth = {"authorization": f"Bearer {token}", "t2i-protocol": "3"}
        json_headers = {**auth, "content-type": "application/json"}

        async def lease() -> dict:
            status, body = await call(application, "POST", "/api/v1/worker/lease", json_headers, b"{}")
            assert status == 200, (status, body[:300])
            return json.loads(body)

        held = await lease()
        carry = {} if args.two_requests else {"lease_next": "true"}
        for _ in range(cycles):
            form = requests.Request(
                "POST",
                "http://x/",
                data={"lease_token": held["lease_token"], **carry},
                files=[("images", ("out.png", png, "image/png"))],
            ).prepare()
            path = f"/api/v1/worker/tasks/{held['task_id']}/complete"
            headers = {**auth, "content-type": form.headers["Content-Type"]}
            status, body = await call(application, "POST", path, headers, form.body)
            assert status == 200, (status, body[:300])
            held = await lease() if args.two_requests else json.loads(body)["next"]
            done[0] += 1
            if done[0] % 4 == 0:
                lease_ref = {"task_id": held["task_id"], "lease_token": held["lease_token"]}
                beat = json.dumps({"tasks": [lease_ref]})
                status, body = await call(
                    application, "POST", "/api/v1/worker/heartbeat", json_headers, beat.encode()
                )
                assert status == 200, (status, body[:300])

    async def run() -> None:
        await asyncio.gather(*(worker(t, 5) for t in tokens))  # warm-up: connections, prepared statements
        done[0] = 0
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(worker(t, args.cycles // args.concurrency) for t in tokens))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        print(
            f"asgi_cpu: {done[0]} lease+complete cycles"
            f"{' (two requests)' if args.two_requests else ''}, {args.concurrency} at a time: "
            f"{cpu / done[0] * 1000:.2f} ms of CPU per cycle ({done[0] / wall:.0f} cycles/s)",
            flush=True,
        )

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8, help="workers at a time")
    parser.add_argument("--two-requests", action="store_true", help="a lease request per cycle")
    parser.add_argument("--db-name", default="t2i_bench_asgi", help="the PostgreSQL database (made afresh)")
    main_args = parser.parse_args()
    measure(main_args)


if __name__ == "__main__":
    main()
