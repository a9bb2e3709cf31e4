"""What waiting costs the production server: many open lease waits add no threads and no database
connections to the scheduler's processes, and one queued task is answered at once to exactly one of them."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import psutil
import pytest
from django.db import connection
from django.utils import timezone

from tests.conftest import make_worker
from tests.e2e.conftest import Farm
from workers_app.models import Worker

pytestmark = pytest.mark.slow

WAITS = 60
WAIT = 5  # the harness's T2I_LEASE_MAX_WAIT; the server ends it after 4 to 5 s


def server_threads(farm: Farm) -> int:
    processes = psutil.Process(farm.scheduler.popen.pid).children()
    return sum(process.num_threads() for process in processes)


def database_connections() -> int | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


async def wait_many(url: str, tokens: list[str], wait: float) -> list[tuple[int, float]]:
    """POST lease with `wait` for every token at once; (status, when the answer came) for each."""
    import aiohttp

    async def one(session, token: str) -> tuple[int, float]:
        headers = {"Authorization": f"Bearer {token}", "T2I-Protocol": "2"}
        async with session.post(f"{url}/api/v1/worker/lease", json={"wait": wait}, headers=headers) as r:
            await r.read()
            return r.status, time.monotonic()

    timeout = aiohttp.ClientTimeout(total=wait + 20)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        return await asyncio.gather(*(one(session, token) for token in tokens))


def test_open_waits_cost_no_threads_and_no_connections(farm: Farm):
    tokens = [make_worker(f"idle-{i}")[1] for i in range(WAITS)]
    # Warm every server process up (first requests import modules, open the pool and its threads, start the
    # waiting room's keeper) before taking the baseline: short real waits until the thread count settles.
    assert farm.api.get(f"{farm.scheduler.url}/healthz", timeout=10).status_code in (200, 503)
    # Live for the whole test: the harness's offline limit is 2 s, and a worker marked offline gets 409s,
    # whose logging runs on the event loop's default executor: threads that have nothing to do with waits.
    Worker.objects.update(last_heartbeat=timezone.now() + timedelta(minutes=2))
    threads_before = server_threads(farm)
    for _ in range(5):
        asyncio.run(wait_many(farm.scheduler.url, tokens[:12], wait=1))
        threads_now = server_threads(farm)
        if threads_now == threads_before:
            break
        threads_before = threads_now
    connections_before = database_connections()

    results: list[tuple[int, float]] = []
    waiting = threading.Thread(
        target=lambda: results.extend(asyncio.run(wait_many(farm.scheduler.url, tokens, wait=WAIT)))
    )
    waiting.start()
    time.sleep(2)  # every wait has made its first attempt and is waiting
    threads_during, connections_during = server_threads(farm), database_connections()

    submitted = time.monotonic()
    response = farm.api.post(
        f"{farm.scheduler.url}/api/v1/tasks/",
        json={"prompt": "one task", "width": 64, "height": 64, "template": "noise-test"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    waiting.join(timeout=30)
    assert not waiting.is_alive()

    assert sorted(status for status, _ in results) == [200] + [204] * (WAITS - 1)
    # A handful of threads at most (the shared step thread, the waiting room's keeper, the event listener),
    # not one per wait.
    assert threads_during - threads_before <= 6, (threads_before, threads_during)
    if connections_before is not None:
        assert connections_during - connections_before <= 4, (connections_before, connections_during)
    leased = [answered for status, answered in results if status == 200]
    assert len(leased) == 1
    assert leased[0] - submitted < 1.5  # woken by the submit, not by the end of its wait
