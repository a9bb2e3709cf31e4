"""Server-side rendering time of the web pages over a large gallery (a script, not a test).

    createdb -h 127.0.0.1 -U postgres t2i_bench
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/t2i_bench
    .venv/bin/python manage.py migrate && .venv/bin/python bench/web_pages.py --seed 100000

Seeds (once) 100,000 completed tasks with one image each (bench/seed_gallery.py), then renders
each page in process with Django's test Client many times and prints p50/p95 in milliseconds beside the
target. `--explain` prints the query plans of the gallery queries as well.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("STATIC_ROOT", "/tmp/t2i_bench_static")  # collected below, as a deployment does

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.seed_gallery import seed_gallery  # noqa: E402
from generation import web_selectors  # noqa: E402
from generation.models import Image, Task  # noqa: E402

# name → p50 target in ms (None: shown for information).
TARGETS = {
    "gallery p1": 50,
    "gallery deep (keyset)": 50,
    "search": 150,
    "task page": 50,
    "task JSON status": 10,
}


TRIGRAM_INDEX = "task_prompt_upper_trgm"
# icontains on PostgreSQL compiles to UPPER(prompt) LIKE UPPER('%…%'): the index must be on that expression.
TRIGRAM_DEF = "USING gin (UPPER(prompt) gin_trgm_ops)"


def _has_trigram_index() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [TRIGRAM_INDEX])
        return cursor.fetchone() is not None


def measure(client: Client, url: str, repeat: int) -> tuple[float, float, int]:
    for _ in range(3):  # warm caches, connections and templates
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return statistics.median(samples), p95, len(queries)


def explain(user, label: str, **kwargs) -> None:
    filters = web_selectors.GalleryFilters(**{k: v for k, v in kwargs.items() if k != "before"})
    qs = web_selectors._filtered(web_selectors.images_visible_to(user), user, filters)
    if "before" in kwargs:
        qs = qs.filter(id__lt=kwargs["before"])
    qs = qs.select_related("task").order_by("-id")[: web_selectors.GALLERY_PAGE_SIZE + 1]
    print(f"\n--- plan: {label}\n{qs.explain()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=100_000, help="Images to have (seeded when fewer).")
    parser.add_argument("--repeat", type=int, default=200, help="Requests per page.")
    parser.add_argument("--explain", action="store_true", help="Print the gallery query plans.")
    parser.add_argument(
        "--trigram",
        choices=["add", "drop"],
        help="PostgreSQL: add (or drop) the pg_trgm GIN index on UPPER(prompt) that prompt search can use "
        "(the index a migration would add) before measuring.",
    )
    args = parser.parse_args()

    call_command("collectstatic", interactive=False, verbosity=0)
    have = Image.objects.count()
    if have < args.seed:
        print(f"seeding {args.seed - have} images …", flush=True)
        started = time.perf_counter()
        seed_gallery(count=args.seed - have)
        print(f"seeded in {time.perf_counter() - started:.1f} s")
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")

    if args.trigram and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if args.trigram == "add":
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                cursor.execute(f"CREATE INDEX IF NOT EXISTS {TRIGRAM_INDEX} ON generation_task {TRIGRAM_DEF}")
                cursor.execute("ANALYZE generation_task")
            else:
                cursor.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")

    User = get_user_model()
    user = User.objects.get(username="bench-user-1")
    staff = User.objects.get(username="bench-staff")
    clients = {}
    for who, account in (("user", user), ("staff", staff)):
        clients[who] = Client()
        clients[who].force_login(account)

    oldest_user = Image.objects.filter(task__owner=user).order_by("id").values_list("id", flat=True)[200]
    oldest_all = Image.objects.order_by("id").values_list("id", flat=True)[200]
    done = Task.objects.filter(owner=user, status=Task.Status.COMPLETED).order_by("-id").first()
    waiting = Task.objects.filter(owner=user, status=Task.Status.QUEUED).order_by("-id").first()

    pages = [
        ("gallery p1", "user", "/gallery/"),
        ("gallery p1", "staff", "/gallery/"),
        ("gallery deep (keyset)", "user", f"/gallery/?before={oldest_user}"),
        ("gallery deep (keyset)", "staff", f"/gallery/?before={oldest_all}"),
        ("search", "user", "/gallery/?q=lighthouse"),
        ("search", "staff", "/gallery/?q=lighthouse"),
        ("search", "staff", "/gallery/?q=zebra"),  # no match: the worst case, every row is looked at
        ("search", "staff", "/gallery/?q=fox&checkpoint=dreamshaper-8.safetensors"),
        ("task page", "user", f"/tasks/{done.public_id}/"),
        ("task page", "user", f"/tasks/{waiting.public_id}/"),
        ("task JSON status", "user", f"/api/v1/tasks/{done.public_id}/"),
        ("task JSON status", "user", f"/api/v1/tasks/{waiting.public_id}/"),
    ]
    print(
        f"\n{connection.vendor}: {Image.objects.count()} images, {Task.objects.count()} tasks; "
        f"{args.repeat} requests each, in process (django.test.Client); "
        f"prompt trigram index: {'yes' if _has_trigram_index() else 'no'}\n"
    )
    header = f"{'page':<24} {'as':<6} {'url':<58} {'p50 ms':>7} {'p95 ms':>7} {'target':>7} {'SQL':>4}"
    print(header)
    print("-" * len(header))
    for name, who, url in pages:
        reset_queries()
        p50, p95, queries = measure(clients[who], url, args.repeat)
        target = TARGETS[name]
        verdict = "ok" if p50 <= target else "SLOW"
        shown = url if len(url) <= 58 else url[:55] + "…"
        numbers = f"{p50:7.1f} {p95:7.1f} {'≤' + str(target):>7} {queries:>4}"
        print(f"{name:<24} {who:<6} {shown:<58} {numbers}  {verdict}")

    if args.explain:
        explain(staff, "staff gallery page 1")
        explain(user, "user gallery page 1")
        explain(user, "user deep page", before=oldest_user)
        explain(staff, "staff search 'zebra'", q="zebra")
        explain(user, "user search 'lighthouse'", q="lighthouse")


if __name__ == "__main__":
    main()
