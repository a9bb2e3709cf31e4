"""gunicorn settings for the scheduler: `gunicorn -c t2i_project/gunicorn.conf.py`.

gunicorn supervises uvicorn workers serving the ASGI application (t2i_project.asgi). A worker daemon's lease
wait is a coroutine there, so the number of GPUs costs no threads: a process serves hundreds of waits, and
synchronous views (DRF, admin, pages) run on a thread only while they work. One process per core. Command-line
flags override these values (e.g. `--bind`, `--workers`); so do GUNICORN_BIND and GUNICORN_WORKERS. Each
process keeps a PostgreSQL pool of DB_POOL_SIZE connections (README, "Sizing").
"""

import ctypes
import ctypes.util
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", str(os.cpu_count() or 2)))
wsgi_app = "t2i_project.asgi:application"
worker_class = "t2i_project.uvicorn_worker.Worker"
timeout = 120  # the master restarts a worker whose event loop stopped answering for this long
# Idle keep-alive connections cost nothing but a socket. gunicorn's default of 2 s closed a daemon's
# connection between two heartbeats (every 5 s), so it reconnected for each one, and a request sent just as
# the server closed its connection failed with a connection reset.
keepalive = 10

MALLOC_ARENAS = 2


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX=count would (an explicit MALLOC_ARENA_MAX wins).

    glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and each arena
    keeps memory it has freed, so more threads per process made its peak RSS larger (bench/README.md). Django
    still runs synchronous views on threads under ASGI.
    Runs in the master at start-up, so the forked workers inherit the cap before any of their threads exist.
    False where there is no glibc (the setting then does nothing).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, count))  # -8 is M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        return False


limit_malloc_arenas()
