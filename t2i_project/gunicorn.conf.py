"""gunicorn settings for the scheduler: `gunicorn -c t2i_project/gunicorn.conf.py t2i_project.wsgi`.

Threaded workers (gthread): an idle worker daemon's long-polling lease request holds a thread while it
waits, so the processes x threads must exceed the number of GPUs plus the requests in flight. Four
processes of 16 threads rather than two of 32: fewer threads share each GIL, which cut a lease's median
latency under load (bench/README.md). Command-line flags override these values (e.g. `--bind`,
`--workers`); so do GUNICORN_BIND, GUNICORN_WORKERS and GUNICORN_THREADS.
"""

import ctypes
import ctypes.util
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
worker_class = "gthread"
timeout = 120  # above the longest lease long-poll (T2I_LEASE_MAX_WAIT, at most 120 s)
# Idle keep-alive connections wait in each process's poller, not in a thread. gunicorn's default of 2 s
# closed a daemon's connection between two heartbeats (every 5 s), so it reconnected for each one, and a
# request sent just as the server closed its connection failed with a connection reset.
keepalive = 10

MALLOC_ARENAS = 2


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX=count would (an explicit MALLOC_ARENA_MAX wins).

    glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and each arena
    keeps memory it has freed, so more threads per process made its peak RSS larger (bench/README.md).
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
