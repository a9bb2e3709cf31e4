"""The liveness sweep, run by django-q2 (`python manage.py qcluster`) on the schedule in SCHEDULES: workers
silent too long go offline, and expired leases are requeued.

Nothing here is needed for correctness: the lease path reaps expired leases and stale workers lazily
(workers_app.services.maybe_reap); the sweep keeps the farm tidy when nobody is leasing.

django-q2's scheduler looks at its schedules about every 30 seconds and counts intervals in whole minutes,
so the every-few-seconds sweep is one job a minute that repeats its step every MAINTENANCE_EVERY seconds for
30 seconds. It stops there because a stopping cluster waits for its running jobs: Ctrl-C (or `make run`'s
shutdown) never waits longer than that. Between runs the lease path's lazy reaping covers the gap.
"""

import time
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from generation.services import tasks_reap_expired
from workers_app.services import workers_mark_offline

# (schedule name, function, every N minutes): created by migration workers_app/0002 through
# generation.jobs.ensure_schedules, which owns the other jobs' schedules. The name predates this module.
SCHEDULES = [
    ("t2i: workers offline and expired leases", "workers_app.jobs.farm_maintenance", 1),
]


def maintenance_step(*, now: datetime | None = None) -> tuple[int, int]:
    """Workers silent too long go offline; expired leases are requeued. Returns (offline, requeued)."""
    now = now or timezone.now()
    return workers_mark_offline(now=now), tasks_reap_expired(now=now)


def farm_maintenance(duration: float = 30.0) -> str:
    """Run maintenance_step every MAINTENANCE_EVERY seconds for about `duration` seconds. Runs that overlap
    are harmless: both services are conditional UPDATEs."""
    every = settings.T2I["MAINTENANCE_EVERY"]
    deadline = time.monotonic() + duration
    offline = requeued = steps = 0
    while True:
        started = time.monotonic()
        found = maintenance_step()
        offline, requeued, steps = offline + found[0], requeued + found[1], steps + 1
        if started + every >= deadline:
            break
        time.sleep(max(0.0, started + every - time.monotonic()))
    return f"{steps} sweeps: {offline} worker(s) marked offline, {requeued} lease(s) requeued"
