"""What the shared submit limit costs a submit (issue 13: at most +2 ms at p50, with Redis and with the
database cache).

    python -m bench.submit_cache                  # PostgreSQL (a fresh database t2i_bench_submit_cache)
    python -m bench.submit_cache --db sqlite --submits 300

One process, no HTTP server: `POST /api/v1/tasks/` through Django's test client (the whole request path:
middleware, DRF, the token, the one submit limit shared by the form, REST and /generate, the checks, the
INSERT), timed on the wall clock, so the cache's round trips count. Three caches in turns, in rounds of 20
submits, so that drift of the machine's speed hits them alike:

- memory: Django's per-process memory cache, what the limit counted in before it was shared (the baseline);
- database: Django's database cache (the default without Redis);
- redis: django-redis against --redis (default redis://127.0.0.1:6379/15, which it clears; skipped if
  unreachable).

The limit itself is raised out of the way (T2I_SUBMIT_RATE=1000000/min): every submit does the same cache
work as a real one (read and add its count), none is refused.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime

from bench.common import database_url, pct, setup_django, staff_api_token, verdict

ADDED_P50_MS = 2.0  # the budget
ROUND = 20


def caches(redis_url: str) -> dict[str, dict]:
    modes = {
        "memory": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "bench"},
        "database": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "t2i_cache"},
    }
    if redis_url:
        modes["redis"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    return modes


def redis_reachable(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:  # any failure means: not measured
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--submits", type=int, default=400, help="submits per cache (after a warm-up)")
    parser.add_argument("--redis", default=os.environ.get("T2I_REDIS_URL") or "redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    setup_django(
        database_url(args.db, "t2i_bench_submit_cache"),
        DEBUG="0",
        T2I_SUBMIT_RATE="1000000/min",
        T2I_REDIS_URL="",
    )

    from django.core.cache import caches as cache_handler
    from django.core.management import call_command
    from django.test import Client, override_settings

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
    modes = caches(args.redis if redis_reachable(args.redis) else "")
    times: dict[str, list[float]] = {mode: [] for mode in modes}

    def submit() -> float:
        began = time.perf_counter()
        response = client.post("/api/v1/tasks/", body, content_type="application/json")
        took = time.perf_counter() - began
        if response.status_code != 201:
            raise RuntimeError(f"submit answered {response.status_code}: {response.content[:300]!r}")
        return took

    started, load = datetime.now(), os.getloadavg()[0]
    rounds = -(-args.submits // ROUND) + 1  # the first round of each mode warms it up
    for round_ in range(rounds):
        for mode, config in modes.items():
            with override_settings(CACHES={"default": config}):
                cache_handler["default"].clear()
                took = [submit() for _ in range(ROUND)]
            if round_:
                times[mode] += took
    print(f"\n=== python -m bench.submit_cache ({started:%Y-%m-%d %H:%M}; {args.db}; {os.cpu_count()} cores; "
          f"load average before {load:.2f}) ===")  # fmt: skip
    if "redis" not in modes:
        print(f"redis: {args.redis} unreachable, not measured")
    base = pct(times["memory"], 50) * 1000
    print(f"{len(times['memory'])} submits per cache")
    print(f"{'cache':<10} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10}")
    for mode, values in times.items():
        p50, p99 = pct(values, 50) * 1000, pct(values, 99) * 1000
        added = p50 - base
        goal = "" if mode == "memory" else f"  (<= +{ADDED_P50_MS:g})  {verdict(added <= ADDED_P50_MS)}"
        print(f"{mode:<10} {p50:>8.2f} {p99:>8.2f} {added:>+10.2f}{goal}")


if __name__ == "__main__":
    main()
