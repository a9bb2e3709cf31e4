"""How the reference design (bench/reference_app, unchanged) is served for the ratio: as the scheduler is.

The scheduler runs under ASGI (t2i_project/gunicorn.conf.py, uvicorn workers) with a connection pool per
process; the reference gets the same: Django's own ASGI handler (t2i_project.asgi names the scheduler's URLs,
which the reference's URLconf lacks) and a pool sized as t2i_project.settings sizes it. Without the pool, the
persistent connections of the reference's settings pile up under ASGI, one per request thread.
"""

from bench.reference_app.settings import *  # noqa: F403 (the reference's own settings, then the pool)
from bench.reference_app.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 8, "timeout": 10.0}}
