"""What the submit limit costs a submit: its statements, its CPU (this process's and the PostgreSQL backend's)
and its wall time, now (one row per submitter and window in the database, one conditional UPDATE) against
before (numbered slots in the shared cache, the design up to 2026-12-05, kept here as `cache_claim`).

    python -m bench.submit_cache                  # PostgreSQL (a fresh database t2i_bench_submit_cache)
    python -m bench.submit_cache --db sqlite --submits 300

One process, no HTTP server: `POST /api/v1/tasks/` through Django's test client (the whole request path:
middleware, DRF, the token, the submit limit, the checks, the INSERT). Modes in turns, in rounds of 20
submits, so that drift of the machine's speed hits them alike:

- none: the submit limit off (the baseline);
- cache (before): the old design on Django's database cache (the default without Redis);
- cache redis (before): the same on Redis at --redis (which it clears; skipped if unreachable);
- row (now): generation.services.submit_limit, what a submit runs.

Then the limit alone: --claims calls of each mode's claim, without the request around it.

The limit itself is raised out of the way (T2I_SUBMIT_RATE=1000000/min): every submit does the same work as
a real one, none is refused. All submits come from one user, so a round's submits share a window's row, as
a busy submitter's do. CPU is time.process_time for this process and, on PostgreSQL, the user+system time
of this connection's backend (/proc/<pid>/stat: ticks of 10 ms, so a figure is a mean over many submits).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from datetime import datetime
from pathlib import Path

from bench.common import database_url, pct, setup_django, staff_api_token

ROUND = 20


def cache_claim(*, user, address: str, now: datetime | None = None) -> None:
    """The submit limit before 2026-12-05 (generation.services.submit_limit then): numbered slots of the
    window claimed with `cache.add`, the last one claimed kept as a hint."""
    from django.conf import settings
    from django.core.cache import cache
    from django.utils import timezone

    from generation.exceptions import Throttled
    from generation.services.submit_limit import submitter_key

    limit, period = settings.T2I["SUBMIT_RATE"]
    seconds = (now or timezone.now()).timestamp()
    window = int(seconds // period)
    left = (window + 1) * period - seconds
    key = f"t2i:submit:{submitter_key(user, address)}:{window}"
    timeout = math.ceil(left) + 1
    claimed = cache.get(f"{key}:n") or 0
    for slot in range(claimed + 1, limit + 1):
        if cache.add(f"{key}:{slot}", 1, timeout):
            cache.set(f"{key}:n", slot, timeout)
            return
    raise Throttled("full", retry_after=math.ceil(left))


def no_claim(**_kwargs) -> None:
    """The submit limit off."""


def counted(claim, statements: list[int]):
    """`claim`, appending to `statements` how many it ran (BEGIN and COMMIT too on SQLite, where Django sends
    them; PostgreSQL's are not statements Django logs)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def run(**kwargs) -> None:
        with CaptureQueriesContext(connection) as queries:
            claim(**kwargs)
        statements.append(len(queries))

    return run


def caches(redis_url: str) -> dict[str, dict]:
    found = {"database": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t2i_cache"}}
    if redis_url:
        found["redis"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    return found


def redis_reachable(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:  # any failure means: not measured
        return False


def backend_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of the PostgreSQL backend `pid`, if it runs on this machine; else 0."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--submits", type=int, default=600, help="submits per mode (after a warm-up)")
    parser.add_argument("--claims", type=int, default=3000, help="claims alone per mode (after a warm-up)")
    parser.add_argument("--redis", default=os.environ.get("T2I_REDIS_URL") or "redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    setup_django(
        database_url(args.db, "t2i_bench_submit_cache"),
        DEBUG="0",
        T2I_SUBMIT_RATE="1000000/min",
        T2I_REDIS_URL="",
        DB_POOL_SIZE="0",  # one connection kept for the run: its backend's CPU is what the submits cost
        DB_CONN_MAX_AGE="3600",
    )

    from django.core.cache import caches as cache_handler
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    import generation.services
    from generation.models import SubmitCount
    from workers_app import services as worker_services

    call_command("createcachetable", verbosity=0)
    worker, _ = worker_services.worker_create(name="submit-cache")
    worker_services.worker_register(
        worker=worker,
        capabilities={"checkpoints": ["sim-v1-5.safetensors"], "node_classes": ["EmptyImage", "ImageAddNoise",
                      "SaveImage"], "samplers": ["euler"], "schedulers": ["normal"]},
    )  # fmt: skip
    token = staff_api_token("submit-cache")
    client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "template": "noise-test"}
    real_claim = generation.services.submit_claim
    modes: dict[str, tuple] = {"none": (no_claim, "database")}
    for name in caches(args.redis if redis_reachable(args.redis) else ""):
        modes[f"cache {name} (before)"] = (cache_claim, name)
    modes["row (now)"] = (real_claim, "database")
    cache_configs = caches(args.redis if redis_reachable(args.redis) else "")

    def submit() -> float:
        began = time.perf_counter()
        response = client.post("/api/v1/tasks/", body, content_type="application/json")
        took = time.perf_counter() - began
        if response.status_code != 201:
            raise RuntimeError(f"submit answered {response.status_code}: {response.content[:300]!r}")
        return took

    def backend_pid() -> int | None:
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")  # bench only: which process to read the CPU of
            return cursor.fetchone()[0]

    times: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu = {mode: 0.0 for mode in modes}
    pg_cpu = {mode: 0.0 for mode in modes}
    statements: dict[str, list[int]] = {mode: [] for mode in modes}
    started, load = datetime.now(), os.getloadavg()[0]
    pid = backend_pid()
    rounds = -(-args.submits // ROUND) + 1  # the first round of each mode warms it up
    for round_ in range(rounds):
        for mode, (claim, cache_name) in modes.items():
            with override_settings(CACHES={"default": cache_configs[cache_name]}):
                cache_handler["default"].clear()
                SubmitCount.objects.all().delete()
                generation.services.submit_claim = claim
                try:
                    statements[mode] = []
                    for _ in range(2):  # the window's first submit, then one of the others
                        claimed: list[int] = []
                        generation.services.submit_claim = counted(claim, claimed)
                        with CaptureQueriesContext(connection) as queries:
                            submit()  # counted, not timed: CaptureQueriesContext forces the debug cursor
                        statements[mode].append((claimed[0], len(queries)))
                    generation.services.submit_claim = claim
                    pg0, cpu0 = backend_cpu(pid), time.process_time()
                    took = [submit() for _ in range(ROUND)]
                    cpu1, pg1 = time.process_time(), backend_cpu(pid)
                finally:
                    generation.services.submit_claim = real_claim
            if round_:
                times[mode] += took
                cpu[mode] += cpu1 - cpu0
                pg_cpu[mode] += pg1 - pg0
    if pid is not None and backend_pid() != pid:
        raise RuntimeError("the connection changed during the run: its backend's CPU is not the submits'")
    print(f"\n=== python -m bench.submit_cache ({started:%Y-%m-%d %H:%M}; {args.db}; {os.cpu_count()} cores; "
          f"load average before {load:.2f}) ===")  # fmt: skip
    if not any("redis" in mode for mode in modes):
        print(f"redis: {args.redis} unreachable, not measured")
    n = len(times["none"])
    print(f"{n} submits per mode; statements: the limit's in the window's first submit / in the others, "
          "and the whole submit's (the others)")  # fmt: skip
    print(f"{'mode':<24} {'statements':>12} {'CPU ms':>7} {'PG CPU ms':>9} {'sum ms':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'added p50':>9}")  # fmt: skip
    base = pct(times["none"], 50) * 1000
    for mode in modes:
        (first, _), (ours, whole) = statements[mode]
        shown = f"{first}/{ours} of {whole}"
        own, pg = cpu[mode] / n * 1000, pg_cpu[mode] / n * 1000
        p50, p99 = pct(times[mode], 50) * 1000, pct(times[mode], 99) * 1000
        pg_shown = f"{pg:>9.2f}" if pid is not None else f"{'-':>9}"
        print(f"{mode:<24} {shown:>12} {own:>7.2f} {pg_shown} {own + pg:>7.2f} {p50:>7.2f} {p99:>7.2f} "
              f"{p50 - base:>+9.2f}")  # fmt: skip
    claims_alone(modes, cache_configs, backend_pid, args.claims)


def claims_alone(modes: dict, cache_configs: dict, backend_pid, claims: int) -> None:
    """The submit limit's own cost: `claims` calls of each mode's claim for one user, without the request
    around it, in rounds of 100; CPU per call (this process, the PostgreSQL backend) and wall time."""
    from django.contrib.auth.models import User
    from django.core.cache import caches as cache_handler
    from django.db import connection
    from django.test import override_settings

    from generation.models import SubmitCount

    user = User.objects.get(username="submit-cache")
    pid = backend_pid()
    measured = [mode for mode in modes if mode != "none"]
    cpu = {mode: 0.0 for mode in measured}
    pg_cpu = {mode: 0.0 for mode in measured}
    wall = {mode: 0.0 for mode in measured}
    for round_ in range(-(-claims // 100) + 1):
        for mode in measured:
            claim, cache_name = modes[mode]
            with override_settings(CACHES={"default": cache_configs[cache_name]}):
                cache_handler["default"].clear()
                SubmitCount.objects.all().delete()
                claim(user=user, address="127.0.0.1")  # the window's first: its row or slot hint made
                pg0, cpu0, wall0 = backend_cpu(pid), time.process_time(), time.perf_counter()
                for _ in range(100):
                    claim(user=user, address="127.0.0.1")
                wall1, cpu1, pg1 = time.perf_counter(), time.process_time(), backend_cpu(pid)
            if round_:
                cpu[mode] += cpu1 - cpu0
                pg_cpu[mode] += pg1 - pg0
                wall[mode] += wall1 - wall0
    n = -(-claims // 100) * 100
    print(f"\nthe limit alone: {n} claims per mode ({connection.vendor}), mean per claim")
    print(f"{'mode':<24} {'CPU ms':>7} {'PG CPU ms':>9} {'sum ms':>7} {'wall ms':>7}")
    for mode in measured:
        own, pg = cpu[mode] / n * 1000, pg_cpu[mode] / n * 1000
        pg_shown = f"{pg:>9.3f}" if pid is not None else f"{'-':>9}"
        print(f"{mode:<24} {own:>7.3f} {pg_shown} {own + pg:>7.3f} {wall[mode] / n * 1000:>7.3f}")


if __name__ == "__main__":
    main()
